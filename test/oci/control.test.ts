// src/oci/control.ts: the control socket between runtime commands and a container's
// monitor, over a real unix socket. The monitor side is hostile-input safe (bounded lines,
// checked requests); the client side reports a missing monitor as OCI_MONITOR.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlSocketPath, sendControl, serveControl, type ControlRequest } from '../../src/oci/control.js';
import { TsiboxError } from '../../src/errors.js';

function dir(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'tsibox-oci-ctl-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Sends raw bytes and returns the reply line (or '' when the server closed without one). */
function raw(path: string, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => { s.write(bytes); });
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => { buf += d; });
    s.on('close', () => { resolve(buf); });
    s.on('error', reject);
  });
}

t.test('requests reach the handler; its errors come back with their code', async (t) => {
  const path = controlSocketPath(dir(t));
  const seen: ControlRequest[] = [];
  const server = await serveControl(path, async (req) => {
    seen.push(req);
    if (req.op === 'kill' && req.signal === 10) throw new TsiboxError('INVALID_STATE', 'not now');
    if (req.op === 'kill' && req.signal === 12) throw new TsiboxError('KVM_IOCTL', 'inner detail');
  });
  t.teardown(() => server.close());
  await sendControl(path, { op: 'start' });
  await sendControl(path, { op: 'kill', signal: 15 });
  t.same(seen, [{ op: 'start' }, { op: 'kill', signal: 15 }]);
  await t.rejects(sendControl(path, { op: 'kill', signal: 10 }), { code: 'INVALID_STATE', message: 'not now' });
  await t.rejects(sendControl(path, { op: 'kill', signal: 12 }), { code: 'OCI_MONITOR' }, 'codes outside the reply set are not trusted');
});

t.test('hostile requests are refused, not passed on', async (t) => {
  const path = controlSocketPath(dir(t));
  const seen: ControlRequest[] = [];
  const server = await serveControl(path, async (req) => { seen.push(req); });
  t.teardown(() => server.close());
  for (const bad of ['{"op":"kill","signal":0}\n', '{"op":"kill","signal":65}\n', '{"op":"kill","signal":"9"}\n', '{"op":"exec"}\n', '[1]\n', 'not json\n', '{"op":"kill","signal":1.5}\n']) {
    t.match(JSON.parse(await raw(path, bad)), { ok: false, code: 'INVALID_ARGUMENT' }, JSON.stringify(bad));
  }
  t.match(JSON.parse(await raw(path, 'x'.repeat(5000))), { ok: false, code: 'INVALID_ARGUMENT', error: /too long/ }, 'an endless line is cut off');
  t.same(seen, [], 'nothing reached the handler');
});

t.test('a missing monitor is OCI_MONITOR; an over-long socket path is refused early', async (t) => {
  const d = dir(t);
  await t.rejects(sendControl(join(d, 'ctl'), { op: 'start' }), { code: 'OCI_MONITOR', message: /not running \(ENOENT/ });
  t.throws(() => controlSocketPath(join(d, 'x'.repeat(120))), { code: 'INVALID_ARGUMENT', message: /107 bytes/ });
});
