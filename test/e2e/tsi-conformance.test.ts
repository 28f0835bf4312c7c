/**
 * End to end: the differential socket-conformance probe (issue 14, item 13).
 *
 * native/guest-tools/tsibox-sockprobe runs the same battery of AF_INET/AF_INET6
 * scenarios twice against the same loopback servers (test/helpers/conformance-servers.ts):
 * once on the host directly (127.0.0.1 / ::1), once in the guest through TSI (the
 * host-loopback aliases 10.0.2.2 / fd00::2). Its output names addresses by relation, so
 * the two runs must print the same lines. Every difference is a bug or a documented
 * limit: the test fails on a difference that is not in test/e2e/tsi-conformance-known.ts
 * and on a listed difference that no longer differs (the list can only shrink).
 *
 * TSIBOX_CONFORMANCE_KERNEL=/path/to/bzImage runs the guest side on another kernel
 * (default: the project's kernel for this tree's native/kernel/patches);
 * TSIBOX_CONFORMANCE_OUT=DIR keeps both outputs there (host.txt, guest.txt).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { KNOWN_DIFFERENCES } from './tsi-conformance-known.js';
import { startProbeServersBoth } from '../helpers/conformance-servers.js';
import { ensureGuestTools, Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';

// About 65 s here (host probe 17 s, guest boot + probe 46 s); tap's default is 120 s.
// Set before the prerequisites, which raise it further when the kernel must be built.
t.setTimeout(300_000);
const { skip, tools } = await e2ePrerequisites(t, { tools: true });

const ALIAS4 = '10.0.2.2';
const ALIAS6 = 'fd00::2';
const KERNEL = process.env['TSIBOX_CONFORMANCE_KERNEL'];
const OUT_DIR = process.env['TSIBOX_CONFORMANCE_OUT'];

/** The probe's lines as an ordered key → value map (a repeated key would be a probe bug). */
function parse(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const eq = line.indexOf('=');
    if (eq <= 0 || !/^v[46]\./.test(line)) continue;
    const key = line.slice(0, eq);
    m.set(m.has(key) ? `${key}#dup` : key, line.slice(eq + 1));
  }
  return m;
}

function runHost(probe: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(probe, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    c.on('error', reject);
    c.on('close', (code) => { resolve({ code, stdout, stderr }); });
  });
}

/** Listed keys, with `v*.` expanded to the families this run has. */
function expandKnown(families: string[]): Map<string, { item: string; reason: string }> {
  const m = new Map<string, { item: string; reason: string }>();
  for (const [k, v] of Object.entries(KNOWN_DIFFERENCES)) {
    if (k.startsWith('v*.')) { for (const f of families) m.set(`${f}.${k.slice(3)}`, v); } else if (families.includes(k.slice(0, 2))) m.set(k, v);
  }
  return m;
}

t.test('socket conformance: the host stack vs the guest through TSI', { skip: KERNEL !== undefined && !existsSync(KERNEL) ? `TSIBOX_CONFORMANCE_KERNEL=${KERNEL} does not exist` : skip }, async (t) => {
  const probe = (await ensureGuestTools())['tsibox-sockprobe'];
  const { s4, s6 } = await startProbeServersBoth(t, probe);
  const families = s6 ? ['v4', 'v6'] : ['v4'];
  const hostArgs = [s4.target('127.0.0.1'), ...(s6 ? [s6.target('::1')] : [])];
  const guestArgs = [s4.target(ALIAS4), ...(s6 ? [s6.target(ALIAS6)] : [])];

  let started = performance.now();
  const host = await runHost(probe, hostArgs);
  const hostMs = performance.now() - started;
  t.equal(host.code, 0, 'the probe ran on the host', { stderr: host.stderr });
  const h = parse(host.stdout);
  const hostBad = [...h].filter(([k, v]) => k.endsWith('.status') && v !== 'ok');
  t.same(hostBad, [], 'every scenario completes on the host (a host failure makes the comparison meaningless)');

  started = performance.now();
  const r = await Sandbox.run({
    engine: E2E_ENGINE,
    ...(KERNEL !== undefined ? { kernel: KERNEL } : {}),
    argv: ['tsibox-sockprobe', ...guestArgs],
    extraArchives: [tools!],
    network: {
      mode: 'tsi',
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['tcp', 'udp'], direction: 'outbound', cidr: ['127.0.0.0/8', '::1/128'], name: 'host loopback only' }] }),
      hostLoopbackAlias: ALIAS4,
      hostLoopbackAlias6: ALIAS6,
    },
    timeoutMs: 240_000,
  });
  const guestMs = performance.now() - started;
  const guestOut = r.stdout!.toString();
  t.equal(r.exitCode, 0, 'the probe ran in the guest', { stderr: r.stderr?.toString() });
  const g = parse(guestOut);
  if (OUT_DIR !== undefined) {
    mkdirSync(OUT_DIR, { recursive: true });
    writeFileSync(join(OUT_DIR, 'host.txt'), host.stdout);
    writeFileSync(join(OUT_DIR, 'guest.txt'), guestOut);
  }
  t.comment(`probe on the host: ${hostMs.toFixed(0)} ms, ${h.size} lines; in the guest (${E2E_ENGINE}, boot included): ${guestMs.toFixed(0)} ms, ${g.size} lines`);

  // Key by key, in the host's order, then keys only the guest printed.
  const diffs = new Map<string, { host: string; guest: string }>();
  for (const [k, v] of h) if (g.get(k) !== v) diffs.set(k, { host: v, guest: g.get(k) ?? '(missing)' });
  for (const [k, v] of g) if (!h.has(k)) diffs.set(k, { host: '(missing)', guest: v });
  const known = expandKnown(families);

  const unexpected = [...diffs].filter(([k]) => !known.has(k)).map(([k, d]) => `${k}: host ${d.host}, guest ${d.guest}`);
  t.same(unexpected, [], 'no difference outside tsi-conformance-known.ts');
  const fixed = [...known].filter(([k]) => !diffs.has(k)).map(([k, v]) => `${k} (${v.item}): host and guest now agree (${h.get(k) ?? '(missing)'}): remove it from tsi-conformance-known.ts`);
  t.same(fixed, [], 'every listed difference still differs');
  for (const [k, d] of diffs) if (known.has(k)) t.comment(`known ${known.get(k)!.item}: ${k}: host ${d.host}, guest ${d.guest}`);
  if (unexpected.length > 0 || fixed.length > 0) t.comment(`guest output:\n${guestOut}`);
});
