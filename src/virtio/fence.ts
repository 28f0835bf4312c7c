// A full memory barrier between our stores to a ring and our next loads from it.
//
// The driver publishes an index and then reads our suppression field (used ring flags or
// avail_event); we publish ours and then read the driver's. x86 may satisfy a load before
// an earlier store leaves the store buffer, so without a full barrier on both sides each
// can read the other's stale value and both decide not to notify: the ring stalls for good
// (virtio 1.2 §2.7.7.2, §2.7.10; Linux virtqueue_kick_prepare uses virtio_mb for this).
// An atomic read-modify-write on a SharedArrayBuffer is sequentially consistent; V8 emits
// a LOCK-prefixed instruction for it, which orders all earlier stores before later loads.
const cell = new Int32Array(new SharedArrayBuffer(4));

/** Orders every store before it before every load after it (a StoreLoad barrier). */
export function fullFence(): void {
  Atomics.add(cell, 0, 0);
}
