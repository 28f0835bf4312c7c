/**
 * Issue 13, end to end under QEMU: the TSI control session (host vsock port 1023)
 * is for the guest kernel only. The patched kernel opens it from a reserved vsock
 * port (≤ 1023, which only CAP_NET_BIND_SERVICE may bind) even when the first
 * listen() comes from an unprivileged process; the host refuses a control session
 * from any other port, so an unprivileged guest process that connects to port 1023
 * itself (from an ephemeral port) cannot open one and register or take over
 * listeners.
 */
import t from 'tap';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { connect as netConnect } from 'node:net';
import { Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';
import { PortMap } from '../../src/portmap/index.js';

const { skip, tools } = await e2ePrerequisites(t, { tools: true });

// HELLO { magic 0x4954, version 1, op 16, len 16, seq 1, min 1, max 1 }, in octal for busybox printf.
const HELLO = '\\124\\111\\001\\020\\020\\000\\000\\000\\001\\000\\000\\000\\001\\001\\000\\000';
const HELLO_RESULT_PREFIX = '54490111'; // magic, version 1, op 17

t.test('the TSI control session needs a reserved guest vsock port', { skip }, async (t) => {
  const portMap = new PortMap(['127.0.0.1:0:7070']);
  const script = [
    'mkdir -p /etc',
    'echo nobody:x:65534:65534:nobody:/:/bin/sh >> /etc/passwd',
    'echo nogroup:x:65534: >> /etc/group',
    // An unprivileged process speaks the control protocol to port 1023 itself.
    `su nobody -s /bin/sh -c 'echo uid=$(id -u); printf "${HELLO}" | timeout 5 tsibox-vsock connect 2 1023 | od -An -tx1 | tr -d " \\n"; echo " direct=done"'`,
    // An unprivileged process listens: the kernel opens the control session for it.
    `su nobody -s /bin/sh -c 'echo hi-from-nobody | tsibox-tcp -l 7070; echo listen=$?'`,
  ].join('\n');
  const hostSide = (async () => {
    const port = await until(() => portMap.lookupGuest('tcp', 7070)?.boundPort ?? undefined, 40_000);
    return port === undefined ? undefined : await fetch(port);
  })();
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 60_000,
    network: {
      mode: 'tsi', portMap,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: ['127.0.0.0/8'], name: 'host loopback only' }] }),
    },
  });
  const reply = await hostSide;
  const out = r.stdout!.toString();
  const err = r.stderr?.toString() ?? '';
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: err });
  t.match(out, /^uid=65534$/m, 'the probes ran unprivileged');
  t.match(out, / direct=done$/m);
  t.notMatch(out, new RegExp(HELLO_RESULT_PREFIX), 'no HELLO_RESULT for a control session from an ephemeral port', { stdout: out, stderr: err });
  t.equal(reply, 'hi-from-nobody\n', "an unprivileged process's listener is still published");
  t.match(out, /^listen=0$/m);
});

async function until<T>(f: () => T | undefined, ms: number): Promise<T | undefined> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
    const v = f();
    if (v !== undefined) return v;
  }
  return undefined;
}

/**
 * Connects to 127.0.0.1:`port`, half-closes, returns what arrived before the peer closed
 * (or after 60 s, what arrived by then: a stalled guest fails the test, never hangs it).
 */
function fetch(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
    c.setTimeout(60_000, () => { c.destroy(); });
    const chunks: Buffer[] = [];
    c.on('connect', () => { c.end(); });
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => { resolve(Buffer.concat(chunks).toString()); });
  });
}
