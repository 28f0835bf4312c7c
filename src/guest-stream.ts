// The guest end of a stream, as the host-side consumers (the TSI proxies, the vsock ↔
// unix-socket bridge) see it. src/virtio/vsock implements these shapes; the consumers
// import only this file, so proxies/ builds on no device code (docs/architecture.md).
import type { EventEmitter } from 'node:events';

/** Coarse lifecycle a consumer acts on (the device keeps finer named states). */
export type ConnectionState = 'connecting' | 'connected' | 'closed';

/** Why a connection ended (the close reason in logs). */
export type CloseReason =
  | 'closed'            // both sides shut down cleanly
  | 'reset-by-guest'    // guest sent RST
  | 'refused'           // guest answered our REQUEST with RST
  | 'reset-by-host'     // host called destroy()
  | 'protocol-error'    // guest broke the vsock rules (credit overrun, bad op)
  | 'connect-timeout'   // guest did not answer our REQUEST in time
  | 'transport-reset'   // transport reset event (guest CID change, VMM request)
  | 'device-reset';     // driver reset the device

export interface ConnectionEvents {
  connect: [];
  /** Bytes from the guest (a copy). `eom` marks a SEQPACKET message end. Call consumed() later. */
  data: [data: Buffer, eom: boolean];
  /** The guest will send no more (SHUTDOWN with SEND). */
  end: [];
  /** Queued host→guest bytes fell below the high-water mark. */
  drain: [];
  close: [reason: CloseReason, detail: string];
}

/**
 * One guest connection with credit-based flow control both ways (virtio 1.2 §5.10.6.3):
 * bytes from the guest count against the credit we advertise until `consumed(n)`;
 * `write()` returns false above `highWater` and 'drain' follows.
 */
export interface GuestStream extends EventEmitter<ConnectionEvents> {
  readonly guestPort: number;
  /** Bytes queued toward the guest above which write() returns false. */
  readonly highWater: number;
  readonly state: ConnectionState;
  /** Host→guest bytes queued and not yet sent. */
  readonly bufferedToGuest: number;
  /** Guest→host bytes received and not yet consumed(). */
  readonly unconsumed: number;
  /** The guest will send no more. */
  readonly guestEnded: boolean;
  /** We will send no more (end(), destroy() or a pending reset). */
  readonly hostEnded: boolean;
  /** Bytes moved each way (for connection records). */
  readonly bytesFromGuest: number;
  readonly bytesToGuest: number;
  /** Queues bytes for the guest; `eom` ends a SEQPACKET message. False: pause the source. */
  write(data: Uint8Array, eom?: boolean): boolean;
  /** Half-close: the host sends no more. */
  end(): void;
  /** Resets now (RST), dropping queued bytes. */
  destroy(detail?: string): void;
  /** Resets once the bytes queued so far reached the guest, or after `graceMs`. */
  resetAfterQueued(detail?: string, graceMs?: number): void;
  /** `n` bytes from the guest have left the VMM: return them as credit. */
  consumed(n: number): void;
}

/** What accepts guest connections and opens host-initiated ones (the vsock device). */
export interface GuestStreamPorts {
  /** Whether the driver accepted SEQPACKET. */
  readonly seqpacketNegotiated: boolean;
  /**
   * Accepts guest connections to host port `port`; returns a function that stops listening.
   * @throws TsiboxError INVALID_ARGUMENT (not a u32 port), VSOCK_PORT_IN_USE.
   */
  listen(port: number, handler: (conn: GuestStream) => void, opts?: { type?: 'stream' | 'seqpacket' }): () => void;
  /**
   * Opens a connection to guest port `guestPort`; 'connect' or 'close' ('refused') follows.
   * @throws TsiboxError INVALID_ARGUMENT, VSOCK_BUSY (connection limit).
   */
  connect(guestPort: number, opts?: { type?: 'stream' | 'seqpacket' }): GuestStream;
}
