import { pino } from 'pino';
import { Sandbox, type EngineChoice } from '../../sandbox.js';
import { UsageError } from '../args.js';
import { expectPositionals, type Command } from '../registry.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'run a program in a microVM (default root: busybox); exits with its status',
  usage: 'run [--engine kvm|qemu|auto] [--cpus N] [--mem MiB] [--kernel PATH] [--initrd PATH] [--env K=V]... [--workdir DIR] [--timeout SEC] [--verbose] -- CMD [ARGS...]',
  options: {
    engine: { type: 'string', value: 'kvm|qemu|auto', choices: ['kvm', 'qemu', 'auto'], description: 'how to run the VM (default auto: KVM where guest ring 0 runs natively, else QEMU)' },
    cpus: { type: 'integer', value: 'N', min: 1, max: 16, description: 'vCPUs (default 1)' },
    mem: { type: 'integer', value: 'MiB', min: 32, max: 65536, description: 'guest RAM (default 256)' },
    kernel: { type: 'string', value: 'PATH', description: 'guest kernel (default: the tsibox kernel, built when missing)' },
    initrd: { type: 'string', value: 'PATH', description: 'guest initramfs (default: the busybox root, built when missing)' },
    env: { type: 'string', value: 'K=V', repeatable: true, description: 'environment variable for CMD (repeatable)' },
    workdir: { type: 'string', value: 'DIR', description: 'working directory in the guest (created when missing)' },
    timeout: { type: 'integer', value: 'SEC', min: 1, description: 'kill the VM after this many seconds' },
    verbose: { type: 'boolean', description: 'say on stderr which engine runs the VM, and why' },
  },
  help: 'Exit status: CMD\'s own; 125 guest setup failed, 126 CMD not executable, 127 CMD not found, 128+N killed by signal N.',
  async run(args, io) {
    expectPositionals(this, args, 1, Infinity);
    const o = args.options;
    const env: Record<string, string> = {};
    for (const kv of Array.isArray(o.env) ? o.env : []) {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new UsageError(`--env wants KEY=VALUE, got ${JSON.stringify(kv)}`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    const verbose = o.verbose === true;
    const logger = pino({ name: 'tsibox', level: 'silent' });
    const stdin = io.stdin ?? process.stdin;
    try {
      const r = await Sandbox.run({
        argv: args.positionals,
        env,
        engine: (typeof o.engine === 'string' ? o.engine : 'auto') as EngineChoice,
        ...(typeof o.cpus === 'number' ? { cpus: o.cpus } : {}),
        ...(typeof o.mem === 'number' ? { memoryMiB: o.mem } : {}),
        ...(typeof o.kernel === 'string' ? { kernel: o.kernel } : {}),
        ...(typeof o.initrd === 'string' ? { initrd: o.initrd } : {}),
        ...(typeof o.workdir === 'string' ? { workdir: o.workdir } : {}),
        ...(typeof o.timeout === 'number' ? { timeoutMs: o.timeout * 1000 } : {}),
        stdin,
        stdout: io.stdout,
        stderr: io.stderr,
        // The one human line --verbose promises; details stay in the (silent) logger.
        logger: verbose ? engineLineLogger((line) => { io.stderr.write(`tsibox: ${line}\n`); }) : logger,
      });
      return r.exitCode;
    } finally {
      stdin.pause();
      if (stdin === process.stdin) process.stdin.destroy();
    }
  },
};

/** A silent logger that prints the engine decision as one plain line. */
function engineLineLogger(print: (line: string) => void): pino.Logger {
  return pino({ level: 'info' }, {
    write(line: string) {
      try {
        const rec = JSON.parse(line) as { engine?: string; reason?: string };
        if (rec.engine !== undefined && rec.reason !== undefined) print(`engine ${rec.engine}: ${rec.reason}`);
      } catch {
        // not ours
      }
    },
  });
}
