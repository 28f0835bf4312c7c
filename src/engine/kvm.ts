// The in-process KVM engine for a whole sandbox: our Linux loader (with an MP table for
// N vCPUs), our virtio-console (stdio and status ports), virtio-rng and the sandbox's
// own devices (vsock with TSI, virtio-net) over virtio-mmio with ioeventfd
// notifications and irqfd interrupts, external vhost-user back ends (virtiofsd,
// qemu-storage-daemon: guest RAM then a shared memfd), i8042 reset to end the VM. It needs KVM that runs
// guest ring 0 natively; Sandbox checks that before calling.
import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { TsiboxError } from '../errors.js';
import { parseStatusMarker, PORT_STATUS, PORT_STDERR, PORT_STDIN, PORT_STDOUT, type InitConfig } from '../guest/cmdline.js';
import { bootArguments, feedStdin, POWEROFF_GRACE_MS, type GuestRunOptions } from './guest-boot.js';
import { loadLinux } from '../vmm/boot/linux.js';
import { attachVirtioMmio, VIRTIO_GSI_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE } from '../vmm/virtio-mmio-attach.js';
import { Vm } from '../vmm/vm.js';
import { ConsoleDevice } from '../virtio/console/index.js';
import { RngDevice } from '../virtio/rng.js';
import { BalloonDevice } from '../virtio/balloon/index.js';
import type { VirtioDevice } from '../virtio/device.js';
import { attachVhostUserMmio, type VhostUserMmioDevice } from './vhost-user/frontend/kvm-attach.js';

export const KVM_SANDBOX_CMDLINE = [
  'console=ttyS0', 'reboot=k', 'panic=-1', 'nomodule', 'quiet',
  'i8042.noaux', 'i8042.nomux', 'i8042.nopnp', 'i8042.dumbkbd',
].join(' ');

export interface KvmRunOptions extends GuestRunOptions {
  /** More virtio-mmio devices after console and rng (vsock, net), in this order. */
  devices?: readonly VirtioDevice[];
  /** Adds a virtio-balloon with free page reporting after rng (SandboxOptions.balloon). */
  balloon?: boolean;
  /**
   * External vhost-user back ends (virtiofsd, qemu-storage-daemon) as virtio-mmio
   * devices after all others, in this order (the kernel command line's order, which is
   * Linux's probe order: virtio-blk disks are named vda, vdb, ... by it); guest RAM is
   * then a shared memfd. A back end that fails mid-run stops the VM after
   * DEVICE_ERROR_GRACE_MS (unless `abort` names a reason first) and runKvm throws its DEVICE_ERROR.
   */
  vhostUserDevices?: readonly VhostUserMmioDevice[];
}

/** A failed vhost-user back end stops the VM this long after: the supervisor's reason (its exit status) wins. */
const DEVICE_ERROR_GRACE_MS = 1000;

export async function runKvm(opts: KvmRunOptions): Promise<{ exitCode: number; console: string }> {
  let consoleText = '';
  const serial = new Writable({
    write(chunk: Buffer, _enc, done) {
      consoleText = (consoleText + chunk.toString('latin1')).slice(-64 * 1024);
      done();
    },
  });
  const vm = Vm.create({
    memoryMiB: opts.memoryMiB ?? 256, vcpus: opts.cpus ?? 1, serial, serialIrq: true,
    unhandledPio: 'ignore', unhandledMmio: 'ignore', logger: opts.logger,
    sharedMemory: (opts.vhostUserDevices?.length ?? 0) > 0,
  });
  let deviceError: TsiboxError | null = null;
  let deviceErrorTimer: NodeJS.Timeout | null = null;
  try {
    const consoleDev = new ConsoleDevice();
    const balloon = opts.balloon === true ? [new BalloonDevice({ memory: vm.memory })] : [];
    const devices: VirtioDevice[] = [consoleDev, new RngDevice(), ...balloon, ...(opts.devices ?? [])];
    const mmio = devices.map((d, index) => {
      attachVirtioMmio(vm, d, { index });
      return `virtio_mmio.device=4K@0x${(VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_STRIDE).toString(16)}:${VIRTIO_GSI_BASE + index}`;
    });
    for (const [i, dev] of (opts.vhostUserDevices ?? []).entries()) {
      const { base, gsi } = await attachVhostUserMmio(vm, dev, {
        index: devices.length + i, logger: opts.logger,
        onError: (err) => {
          deviceError ??= err;
          deviceErrorTimer ??= setTimeout(() => { void vm.stop(); }, DEVICE_ERROR_GRACE_MS);
        },
      });
      mmio.push(`virtio_mmio.device=4K@0x${base.toString(16)}:${gsi}`);
    }
    const init: InitConfig = { ...opts.init, ports: [PORT_STDIN, PORT_STDOUT, PORT_STDERR, PORT_STATUS] };
    const boot = bootArguments([KVM_SANDBOX_CMDLINE, ...mmio, ...(opts.kernelArgs ?? [])].join(' '), init, opts.initrd, opts.extraArchives);
    const cmdline = boot.cmdline;
    const initrd: Uint8Array = boot.initrd ?? readFileSync(opts.initrd);
    loadLinux(vm, { kernel: opts.kernel, initrd, cmdline });

    const port = (name: string) => consoleDev.port(name)!;
    if (opts.stdout) port(PORT_STDOUT).output.pipe(opts.stdout, { end: false });
    else port(PORT_STDOUT).output.resume();
    if (opts.stderr) port(PORT_STDERR).output.pipe(opts.stderr, { end: false });
    else port(PORT_STDERR).output.resume();
    const unpipeStdin = feedStdin(opts.stdin, port(PORT_STDIN).input);

    const onAbort = (): void => { void vm.stop(); };
    opts.abort?.addEventListener('abort', onAbort, { once: true });
    // Reported: the VM gets POWEROFF_GRACE_MS to end by itself.
    let poweroffTimer: NodeJS.Timeout | null = null;
    let poweroffForced = false;
    consoleDev.once('exit-status', () => {
      poweroffTimer = setTimeout(() => {
        poweroffForced = true;
        void vm.stop();
      }, POWEROFF_GRACE_MS);
    });
    let exit;
    try {
      exit = await vm.run(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs });
    } finally {
      opts.abort?.removeEventListener('abort', onAbort);
      if (poweroffTimer !== null) clearTimeout(poweroffTimer);
    }
    if (poweroffForced) {
      opts.logger.warn({ event: 'vm.poweroff_forced', graceMs: POWEROFF_GRACE_MS }, `the guest reported its exit status but did not end within ${POWEROFF_GRACE_MS} ms; the VM was stopped`);
    }
    unpipeStdin();
    if (opts.abort?.aborted === true) throw opts.abort.reason;
    if (deviceError !== null && exit.reason === 'stopped' && !poweroffForced) throw deviceError;
    if (exit.reason === 'timeout') throw new TsiboxError('VM_TIMEOUT', `the sandbox did not finish within ${opts.timeoutMs} ms`);
    const code = consoleDev.exitStatus ?? parseStatusMarker(consoleText);
    if (code === undefined) {
      throw new TsiboxError('VM_ERROR', `the guest ended (${exit.reason}${exit.detail ? `: ${exit.detail}` : ''}) without reporting an exit status; console:\n${consoleText.split('\n').slice(-30).join('\n')}`);
    }
    return { exitCode: code, console: consoleText };
  } finally {
    if (deviceErrorTimer !== null) clearTimeout(deviceErrorTimer);
    await vm.close();
  }
}
