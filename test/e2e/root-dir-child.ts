// Run by root-dir.test.ts: one sandbox whose root is a host directory (argv[2]); the
// guest prints "ready" and sleeps; the parent SIGKILLs this process (TMPDIR is the
// parent's private directory) and checks that no virtiofsd, socket or directory stays.
import { Sandbox } from '../../src/index.js';
import { E2E_ENGINE } from './prerequisites.js';

const [root] = process.argv.slice(2);
await Sandbox.run({
  argv: ['sh', '-c', 'echo ready; sleep 120'],
  engine: E2E_ENGINE,
  root: root!,
  mounts: [{ hostPath: root!, guestPath: '/mnt/again', readOnly: true }],
  timeoutMs: 150_000,
  stdout: process.stdout,
});
