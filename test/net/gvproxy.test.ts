// The gvproxy launcher and its API client against the real gvproxy (no guest): start-up
// probe, private directory, expose / unexpose / conflicts as TsiboxErrors, and close()
// leaving nothing behind. Host listeners are on 127.0.0.1 only.
import t from 'tap';
import { existsSync, statSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { pino } from 'pino';
import { findGvproxy, gvproxyArgs, startGvproxy } from '../../proxies/gvproxy.js';
import { endpoint } from '../../proxies/gvproxy-ports.js';
import { TsiboxError } from '../../src/errors.js';
import { alive } from '../helpers/processes.js';

const logger = pino({ level: 'silent' });
const skip = findGvproxy() === undefined ? 'gvproxy is not installed (Debian 13 package gvproxy; scripts/install-guest-deps.sh)' : false;

t.test('gvproxy argv: qemu and API sockets in the directory, no SSH listener', async (t) => {
  const a = gvproxyArgs('/run/x');
  t.same(a.slice(0, 6), ['-listen-qemu', 'unix:///run/x/qemu.sock', '-listen', 'unix:///run/x/api.sock', '-ssh-port', '-1']);
  t.equal(endpoint('::1', 80), '[::1]:80');
  t.equal(endpoint('127.0.0.1', 80), '127.0.0.1:80');
});

t.test('a missing binary is ENGINE_UNAVAILABLE', async (t) => {
  await t.rejects(startGvproxy({ binary: '/nonexistent/gvproxy', logger }), { code: 'ENGINE_UNAVAILABLE', message: /gvproxy/ });
});

t.test('start, API, conflicts, close', { skip }, async (t) => {
  const gv = await startGvproxy({ logger });
  const blocker = createServer();
  t.teardown(async () => {
    await gv.close();
    await new Promise<void>((r) => { blocker.close(() => { r(); }); });
  });
  t.equal(statSync(gv.dir).mode & 0o777, 0o700, 'the private directory is 0700');
  t.ok(existsSync(`${gv.dir}/api.sock`));
  t.same(await gv.api.list(), []);
  t.type((await gv.api.stats()), 'object');

  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const free = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => { probe.close(() => { r(); }); });
  await gv.api.expose({ local: `127.0.0.1:${free}`, remote: '192.168.127.2:80', protocol: 'tcp' });
  t.same(await gv.api.list(), [{ local: `127.0.0.1:${free}`, remote: '192.168.127.2:80', protocol: 'tcp' }]);
  await t.rejects(gv.api.expose({ local: `127.0.0.1:${free}`, remote: '192.168.127.2:81', protocol: 'tcp' }), { code: 'PORT_MAP_BIND_FAILED', errno: 98 }, 'gvproxy holds it');

  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  const taken = (blocker.address() as AddressInfo).port;
  const err = await gv.api.expose({ local: `127.0.0.1:${taken}`, remote: '192.168.127.2:82', protocol: 'tcp' }).catch((e: unknown) => e);
  t.ok(err instanceof TsiboxError && err.code === 'PORT_MAP_BIND_FAILED' && err.errno === 98, `someone else holds it: ${String(err)}`);

  await gv.api.unexpose(`127.0.0.1:${free}`, 'tcp');
  t.same(await gv.api.list(), []);
  await t.rejects(gv.api.unexpose(`127.0.0.1:${free}`, 'tcp'), { code: 'NETWORK_ERROR', message: /proxy not found/ });

  const { pid, dir } = gv;
  await gv.close();
  t.notOk(alive(pid), 'gvproxy (its keeper) is gone');
  t.notOk(existsSync(dir), 'the private directory is gone');
  await t.rejects(gv.api.list(), { code: 'INVALID_STATE' });
});
