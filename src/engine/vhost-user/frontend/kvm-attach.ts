// Puts an external vhost-user device on a KVM VM as a virtio-mmio device: connects to
// the back end's socket, does the handshake, and wires the window (register exits to
// VhostUserMmioTransport), one ioeventfd per queue on QueueNotify that only the back
// end reads (kicks never reach Node) and the slot's irqfd as every ring's call fd
// (completions never reach Node). docs/vhost-user-frontend.md.
import { TsiboxError } from '../../../errors.js';
import { Feature, MMIO_WINDOW_SIZE, Reg } from '../../../virtio/constants.js';
import type { Logger } from '../../../virtio/virtio-logger.js';
import { virtioMmioSlot } from '../../../vmm/virtio-mmio-attach.js';
import type { Vm } from '../../../vmm/vm.js';
import { ProtocolFeature } from '../protocol.js';
import { VhostUserFrontend } from './frontend.js';
import type { VhostUserMmioKind } from './mmio-device-kinds.js';
import { VhostUserMmioTransport } from './mmio-transport.js';

/** An external back end to attach: where it listens and what device it serves. */
export interface VhostUserMmioDevice {
  /** The back end's listening unix socket. */
  socket: string;
  kind: VhostUserMmioKind;
  /** Names the device in log lines and errors (e.g. 'virtiofsd for the root /srv/r'). */
  name: string;
}

export interface VhostUserAttachOptions {
  /** virtio-mmio slot (window and GSI: virtioMmioSlot). */
  index: number;
  logger: Logger;
  /** The back end failed while the VM runs (DEVICE_ERROR); the device shows DEVICE_NEEDS_RESET. */
  onError?: (err: TsiboxError) => void;
  /** How long to keep trying to connect, in ms (default 5000). */
  connectTimeoutMs?: number;
  /** Longest wait for any one reply, in ms (default ATTACH_REPLY_TIMEOUT_MS). */
  replyTimeoutMs?: number;
}

/**
 * A freshly started virtiofsd answers its first request only once its sandbox is set
 * up (namespaces, seccomp): measured 5–12 s for three at once in the nested test host
 * (TCG), well under 1 s natively. QEMU waits forever; we wait this long.
 */
export const ATTACH_REPLY_TIMEOUT_MS = 30_000;

export interface VhostUserAttachment {
  readonly transport: VhostUserMmioTransport;
  readonly base: number;
  readonly gsi: number;
}

/**
 * Connects, handshakes and attaches `dev` at slot `opts.index` of `vm`, whose RAM must
 * be shared (VmOptions.sharedMemory). The connection closes when the VM closes.
 * Throws INVALID_ARGUMENT (anonymous RAM, bad slot), DEVICE_ERROR (no connection in
 * time, no VERSION_1, a back end that serves too few queues, a protocol violation),
 * VM_TIMEOUT (a back end that does not answer); nothing is left open then.
 */
export async function attachVhostUserMmio(vm: Vm, dev: VhostUserMmioDevice, opts: VhostUserAttachOptions): Promise<VhostUserAttachment> {
  const { base, gsi } = virtioMmioSlot(opts.index);
  if (vm.memory.backing === null) throw new TsiboxError('INVALID_ARGUMENT', `${dev.name}: a vhost-user device needs shared guest RAM (VmOptions.sharedMemory)`);
  const frontend = await VhostUserFrontend.connect(dev.socket, {
    logger: opts.logger, name: dev.name, replyTimeoutMs: opts.replyTimeoutMs ?? ATTACH_REPLY_TIMEOUT_MS,
    ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}),
  });
  try {
    const hs = await frontend.handshake({ protocolFeatures: ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | (dev.kind.wantsConfig ? ProtocolFeature.CONFIG : 0n) });
    if ((hs.features & Feature.VERSION_1) === 0n) throw new TsiboxError('DEVICE_ERROR', `${dev.name}: the back end does not offer VERSION_1`);
    const queues = dev.kind.queues(hs);
    if (hs.queueNum !== null && hs.queueNum < queues) throw new TsiboxError('DEVICE_ERROR', `${dev.name}: the back end serves ${hs.queueNum} queues, the device needs ${queues}`);
    const config = await dev.kind.config(frontend, hs);
    const irqfd = vm.addIrqFd(gsi);
    const kickFds = Array.from({ length: queues }, (_, q) =>
      vm.addUnwatchedIoEventFd({ address: base + Reg.QueueNotify, length: 4, pio: false, datamatch: BigInt(q) }).fd);
    const transport = new VhostUserMmioTransport({
      frontend, memory: vm.memory, deviceId: dev.kind.deviceId, backendFeatures: hs.features, queueSize: dev.kind.queueSize,
      ...(dev.kind.deviceFeatureMask !== undefined ? { deviceFeatureMask: dev.kind.deviceFeatureMask } : {}),
      ...(dev.kind.configWritable !== undefined ? { configWritable: dev.kind.configWritable } : {}),
      kickFds, callFd: irqfd.fd, config, name: dev.name, logger: opts.logger,
      interrupt: { trigger: () => { if (!irqfd.closed) irqfd.signal(); } },
      ...(opts.onError ? { onError: opts.onError } : {}),
    });
    vm.mmio.register(base, MMIO_WINDOW_SIZE, dev.name, transport);
    // Before the fds and RAM go: the back end sees end of stream (virtiofsd then exits 0).
    vm.onClose(() => { transport.close(); });
    opts.logger.debug({ device: dev.name, base: `0x${base.toString(16)}`, gsi, queues, features: hs.features.toString(16) }, 'vhost-user device attached');
    return { transport, base, gsi };
  } catch (err) {
    frontend.close();
    throw err;
  }
}
