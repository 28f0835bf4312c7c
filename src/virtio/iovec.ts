// Gather and scatter over a descriptor chain's buffers (virtio 1.2 §2.7.4: a request
// is a list of readable then writable buffers). The buffers are the zero-copy views of
// guest RAM that Virtqueue.pop() handed out, already bounds-checked through the
// VirtioMemory accessor, so nothing here addresses guest memory itself. Both directions
// copy: bytes a device acts on must not be rewritten under it by another vCPU.

/**
 * Copies the `len` bytes that start `offset` bytes into the scatter list `bufs`. With
 * `into`, they land at its start and `into.subarray(0, len)` is returned (a Buffer for
 * a Buffer); without, a new array of `len` bytes is returned. The caller checks that
 * the list holds `offset + len` bytes: past its end, the result keeps what was there
 * (zeros for a new array).
 */
export function gather(bufs: readonly Uint8Array[], offset: number, len: number): Uint8Array;
export function gather<T extends Uint8Array>(bufs: readonly Uint8Array[], offset: number, len: number, into: T): T;
export function gather(bufs: readonly Uint8Array[], offset: number, len: number, into?: Uint8Array): Uint8Array {
  // Fast path: the range lies inside one buffer.
  let skip = offset;
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    // TypedArray slice always copies (Buffer#slice would return a view of guest RAM).
    if (skip + len <= b.length && into === undefined) return Uint8Array.prototype.slice.call(b, skip, skip + len);
    break;
  }
  const out = into ?? new Uint8Array(len);
  let at = 0;
  skip = offset;
  for (const b of bufs) {
    if (at === len) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, len - at);
    out.set(b.subarray(skip, skip + n), at);
    at += n;
    skip = 0;
  }
  // subarray of a Buffer is a Buffer: the overload's T holds.
  return into === undefined ? out : out.subarray(0, len);
}

/**
 * Writes `header` then each of `payload` across the writable buffers `bufs`, in order,
 * and returns the bytes written: everything, or as much as the buffers hold (the rest
 * is dropped; callers that must not lose bytes check the room first).
 */
export function scatter(bufs: readonly Uint8Array[], header: Uint8Array, payload: readonly Uint8Array[]): number {
  let bi = 0;
  let bo = 0;
  let total = 0;
  const put = (src: Uint8Array): void => {
    let so = 0;
    while (so < src.length && bi < bufs.length) {
      const b = bufs[bi]!;
      const n = Math.min(b.length - bo, src.length - so);
      b.set(n === src.length && so === 0 ? src : src.subarray(so, so + n), bo);
      so += n;
      bo += n;
      total += n;
      if (bo === b.length) {
        bi++;
        bo = 0;
      }
    }
  };
  put(header);
  for (const p of payload) put(p);
  return total;
}
