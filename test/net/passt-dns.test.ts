// DNS through passt's forwarder follows the policy, with the REAL passt: in a mount
// namespace whose /etc/resolv.conf names 127.0.0.53 (a resolver of ours), a query the
// "guest" sends to 10.0.2.3:53 reaches 127.0.0.53:53 only when the policy allows
// udp 127.0.0.53:53, and never 127.0.0.1:53 (where passt sent it when tsibox gave it
// -D). Needs root (unshare -m, port 53); skips otherwise.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findPasst } from '../../proxies/passt.js';

const child = fileURLToPath(new URL('./passt-dns-child.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tsibox-dns-test-'));
t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
const resolv = join(dir, 'resolv.conf');
writeFileSync(resolv, 'nameserver 127.0.0.53\n');

function run(policy: 'deny' | 'allow'): { out: string; err: string; status: number | null } {
  const r = spawnSync('unshare', ['-m', 'sh', '-c', 'mount --bind "$1" /etc/resolv.conf && exec "$2" "$3"', 'sh', resolv, process.execPath, child], {
    env: { ...process.env, POLICY: policy }, encoding: 'utf8', timeout: 30_000,
  });
  return { out: r.stdout, err: r.stderr, status: r.status };
}

function why(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (a mount namespace and port 53)';
  if (findPasst() === undefined) return 'passt is not installed';
  const probe = spawnSync('unshare', ['-m', 'true']);
  if (probe.status !== 0) return 'unshare -m does not work here';
  return false;
}
const skip = why();

t.test('deny-all: the query reaches no resolver; the guest is answered with ICMP unreachable', { skip }, async (t) => {
  const r = run('deny');
  t.equal(r.status, 0, r.err);
  const res = JSON.parse(r.out.trim().split('\n').at(-1)!) as { got: Record<string, number>; toGuest: number; flows: Array<Record<string, unknown>> };
  t.same(res.got, { '127.0.0.53': 0, '127.0.0.1': 0 });
  t.equal(res.toGuest, 1, 'one ICMP port unreachable for the guest');
  t.match(res.flows, [{ protocol: 'udp', decision: 'deny', dst: '10.0.2.3:53', hostDst: '127.0.0.53' }]);
});

t.test('allowed: the query reaches the host resolver (and only it), the answer comes back', { skip }, async (t) => {
  const r = run('allow');
  t.equal(r.status, 0, r.err);
  const res = JSON.parse(r.out.trim().split('\n').at(-1)!) as { got: Record<string, number>; toGuest: number; flows: Array<Record<string, unknown>> };
  t.same(res.got, { '127.0.0.53': 1, '127.0.0.1': 0 });
  t.equal(res.toGuest, 1, 'the answer reached the guest side');
  t.match(res.flows, [{ protocol: 'udp', decision: 'allow', hostDst: '127.0.0.53', bytesToGuest: 11 }]);
});
