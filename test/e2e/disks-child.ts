// Run by disks.test.ts: one sandbox with a disk (argv[2], raw); the guest prints
// "ready" and sleeps; the parent SIGKILLs this process (TMPDIR is the parent's private
// directory) and checks that no qemu-storage-daemon, socket or directory stays.
import { Sandbox } from '../../src/index.js';
import { E2E_ENGINE } from './prerequisites.js';

const [image] = process.argv.slice(2);
await Sandbox.run({
  argv: ['sh', '-c', 'test -b /dev/vda && echo ready; sleep 120'],
  engine: E2E_ENGINE,
  disks: [{ path: image!, format: 'raw' }],
  timeoutMs: 150_000,
  stdout: process.stdout,
});
