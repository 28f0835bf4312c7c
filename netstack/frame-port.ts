// What the virtio-net device needs from whatever carries its Ethernet frames (passt,
// gvproxy, a test double). Frames are whole Ethernet frames without
// the virtio-net header. Flow control works both ways:
//  - guest → network: `send` returns false when the backend is full; the device then
//    stops taking tx buffers from the guest until the backend calls `writable()`.
//  - network → guest: the device calls `pause()` when it holds too many frames the
//    guest has no buffers for, and `resume()` once it drained them.

/** The device's side, given to the backend by `attach`. */
export interface FramePort {
  /** A frame for the guest. The device copies it (or queues this Buffer; do not reuse it). */
  deliver(frame: Buffer): void;
  /** The backend can take frames again after `send` returned false. */
  writable(): void;
  /** The backend ended (peer gone, error); `reason` null for an orderly end. */
  closed(reason: string | null): void;
}

export interface FrameBackend {
  /** Called once, before any other call. */
  attach(port: FramePort): void;
  /**
   * Takes one frame from the guest. `frame` is a copy the guest can no longer change
   * (never a view of guest memory: another vCPU could rewrite it between a decision
   * and its use), so a backend may judge it and forward it as it is. It is valid only
   * during the call (the device reuses the buffer): copy what you keep. Returns false
   * when the backend is now full: the frame was taken, but no more should come until
   * `writable()`.
   */
  send(frame: Uint8Array): boolean;
  /** Stop delivering frames until `resume()`. */
  pause(): void;
  resume(): void;
  /** Releases the backend (idempotent). */
  close(): void;
}
