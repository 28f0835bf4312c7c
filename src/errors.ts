/** Every error tsibox throws on purpose is a TsiboxError with a stable `code`. */
export type TsiboxErrorCode =
  | 'KVM_UNAVAILABLE'
  | 'KVM_IOCTL'
  | 'SYSCALL'
  | 'GUEST_MEMORY_RANGE'
  | 'INVALID_ARGUMENT'
  | 'INVALID_STATE'
  | 'GUEST_IMAGE'
  | 'VM_ERROR'
  | 'VM_TIMEOUT'
  | 'DEVICE_ERROR'
  /** A guest's virtqueue broke the virtio rules; the device now needs a reset. */
  | 'VIRTQUEUE_INVALID'
  | 'NOT_SUPPORTED'
  /** The engine asked for cannot run here (QEMU missing, ring 0 emulated for KVM). */
  | 'ENGINE_UNAVAILABLE'
  /** Building or locating the guest kernel / initramfs failed. */
  | 'GUEST_BUILD'
  /** A host vsock port already has a listener or bridge. */
  | 'VSOCK_PORT_IN_USE'
  /** The vsock device has its maximum number of connections open (a host-side connect was refused). */
  | 'VSOCK_BUSY'
  /** A port-map entry conflicts with an existing one (same host port or guest port). */
  | 'PORT_MAP_CONFLICT'
  /**
   * The host could not listen for a port-map entry (the port is taken, not permitted,
   * the address is not the host's); `errno` is set when the OS gave one. The entry is
   * taken out of the map (docs/tsi-protocol.md §9).
   */
  | 'PORT_MAP_BIND_FAILED'
  /**
   * `Sandbox.ports.publish`: the host did not listen within the wait (TSI listens when a
   * guest socket listens on the guest port); the entry is taken out of the map again.
   */
  | 'PORT_PUBLISH_TIMEOUT'
  /** A policy rule is malformed (bad CIDR, port range, protocol). */
  | 'POLICY_INVALID'
  /**
   * The external network process (passt, gvproxy) ended while the sandbox ran, or its
   * API failed.
   */
  | 'NETWORK_ERROR'
  /** A TSI peer (simulated guest, tests) broke docs/tsi-protocol.md. */
  | 'TSI_PROTOCOL'
  /**
   * The guest exec agent could not be reached (nothing accepted on its vsock port
   * within the connect timeout: `tsibox.agent=0`, no vsock device, the guest not up),
   * or its connection was lost before the process's exit status came (the VM ended,
   * the agent died, the client was closed). docs/exec-agent.md
   */
  | 'AGENT_UNAVAILABLE'
  /** The guest exec agent runs its maximum number of processes (64); try again later. */
  | 'AGENT_BUSY'
  /** The guest exec agent broke docs/exec-agent.md, or refused a message of ours. */
  | 'AGENT_PROTOCOL'
  /**
   * An exec'd program did not start (`errno` set): the handle's `pid` rejects with it,
   * while `exited` resolves with 125 (setup), 126 (not executable) or 127 (not found).
   */
  | 'AGENT_EXEC_FAILED'
  /**
   * `tsibox oci`: a container's monitor (the process its pid file names, docs/oci.md) is
   * not running, did not answer on its control socket in time, or answered malformed.
   */
  | 'OCI_MONITOR';

export class TsiboxError extends Error {
  readonly code: TsiboxErrorCode;
  /** errno for SYSCALL / KVM_IOCTL errors. */
  readonly errno?: number;

  constructor(code: TsiboxErrorCode, message: string, options?: { cause?: unknown; errno?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TsiboxError';
    this.code = code;
    if (options?.errno !== undefined) this.errno = options.errno;
  }
}
