// tsibox.net: the host's encoder (netToken / InitConfig.net) against init's parser
// (`init --parse`, run on the host), and the malformed values init refuses with 125.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { buildCmdline, ensureInitramfs, netToken } from '../../src/guest/index.js';

let init = '';
let skip: string | false = false;
try {
  init = join(dirname(await ensureInitramfs()), 'init');
} catch (e) {
  skip = `cannot build init: ${(e as Error).message}`;
}

t.test('netToken validates and encodes', (t) => {
  t.equal(netToken({ address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', dns: ['10.0.2.3'] }), 'tsibox.net=10.0.2.15/24,10.0.2.2,10.0.2.3');
  t.equal(netToken({ address: '192.168.7.2', prefix: 30, gateway: '192.168.7.1' }), 'tsibox.net=192.168.7.2/30,192.168.7.1');
  t.throws(() => netToken({ address: '10.0.2.256', prefix: 24, gateway: '10.0.2.2' }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => netToken({ address: '10.0.2.15', prefix: 31, gateway: '10.0.2.2' }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => netToken({ address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', dns: ['1.1.1.1', '1.1.1.2', '1.1.1.3', '1.1.1.4'] }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => netToken({ address: '10.0.2.15 tsibox.argv=x', prefix: 24, gateway: '10.0.2.2' }), { code: 'INVALID_ARGUMENT' }, 'no token injection');
  t.end();
});

t.test('init parses tsibox.net and refuses bad values', { skip }, (t) => {
  const parse = (cmdline: string): string[] => execFileSync(init, ['--parse', cmdline], { encoding: 'utf8' }).trim().split('\n');
  const lines = parse(buildCmdline('console=ttyS0', { argv: ['true'], net: { address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', dns: ['10.0.2.3', '9.9.9.9'] } }));
  t.ok(lines.includes('net 10.0.2.15/24 10.0.2.2 10.0.2.3 9.9.9.9'), lines.join('\n'));
  t.notOk(parse('console=ttyS0').some((l) => l.startsWith('net ')), 'no net line without the token');
  for (const bad of [
    'tsibox.net=10.0.2.15,10.0.2.2', 'tsibox.net=10.0.2.15/24', 'tsibox.net=10.0.2.15/0,10.0.2.2', 'tsibox.net=10.0.2.15/31,10.0.2.2',
    'tsibox.net=10.0.2.15/24,10.0.3.2', 'tsibox.net=10.0.2.15/24,10.0.2.2,x', 'tsibox.net=10.0.2.15/24,10.0.2.2,1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4',
    'tsibox.net=a/24,10.0.2.2', 'tsibox.net=10.0.2.15/2x,10.0.2.2',
  ]) {
    const r = spawnSync(init, ['--parse', bad], { encoding: 'utf8' });
    t.equal(r.status, 125, bad);
    t.match(r.stderr, /tsibox-init: error: tsibox\.net: /, `${bad}: message`);
  }
  t.end();
});
