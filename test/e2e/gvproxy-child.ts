// Run by gvproxy-lifetime.test.ts: one gvproxy sandbox whose guest prints "ready" and
// sleeps; the parent SIGKILLs this process and checks that nothing stays behind.
// argv: RUNTIME_DIR ENGINE
import { Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';

const [runtimeDir, engine] = process.argv.slice(2);
await Sandbox.run({
  argv: ['sh', '-c', 'echo ready; sleep 120'],
  engine: engine === 'kvm' ? 'kvm' : 'qemu',
  timeoutMs: 150_000,
  stdout: process.stdout,
  network: { mode: 'gvproxy', policy: Policy.denyAll(), runtimeDir: runtimeDir! },
});
