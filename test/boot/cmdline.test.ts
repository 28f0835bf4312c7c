/**
 * The command-line contract, both sides: the TypeScript encoder (src/guest/cmdline.ts)
 * against init's own parser (`init --parse`, run on the host, not as PID 1).
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import {
  buildCmdline,
  decodeValue,
  encodeValue,
  ensureInitramfs,
  initTokens,
  parseStatusMarker,
  type InitConfig,
} from '../../src/guest/index.js';

t.test('encodeValue keeps safe bytes and escapes the rest', async (t) => {
  t.equal(encodeValue('abc/XYZ-_.~:@+=09'), 'abc/XYZ-_.~:@+=09');
  t.equal(encodeValue('a b,c%d"e\n'), 'a%20b%2Cc%25d%22e%0A');
  t.equal(encodeValue('ü'), '%C3%BC');
  t.equal(encodeValue(''), '');
  t.throws(() => encodeValue('a\0b'), { code: 'INVALID_ARGUMENT' });
  const all = Buffer.from(Array.from({ length: 255 }, (_, i) => i + 1));
  t.same(decodeValue(encodeValue(all)), all);
  t.notMatch(encodeValue(all), /[\s",%](?![0-9A-F]{2})/);
});

t.test('parseStatusMarker takes the last marker', async (t) => {
  t.equal(parseStatusMarker('x\ntsibox: exit-status=3\r\nmore\ntsibox: exit-status=42\r\n'), 42);
  t.equal(parseStatusMarker('no marker here\n'), undefined);
  t.equal(parseStatusMarker('tsibox: exit-status=1'), undefined, 'an unterminated line does not count');
});

t.test('tty: tsibox.tty=COLSxROWS, each 1..65535', async (t) => {
  t.same(initTokens({ tty: { cols: 80, rows: 24 } }), ['tsibox.tty=80x24']);
  t.same(initTokens({ tty: { cols: 65535, rows: 1 } }), ['tsibox.tty=65535x1']);
  for (const tty of [{ cols: 0, rows: 24 }, { cols: 80, rows: 65536 }, { cols: 1.5, rows: 2 }, { cols: Number.NaN, rows: 2 }, { cols: -1, rows: 2 }, { cols: '80', rows: 24 }]) {
    t.throws(() => initTokens({ tty: tty as { cols: number; rows: number } }), { code: 'INVALID_ARGUMENT' }, JSON.stringify(tty));
  }
});

let init = '';
let skip: string | false = false;
try {
  init = join(dirname(await ensureInitramfs()), 'init');
} catch (e) {
  skip = `cannot build init: ${(e as Error).message}`;
}

t.test('init parses what the encoder produces', { skip }, async (t) => {
  const parse = (cmdline: string): string[] =>
    execFileSync(init, ['--parse', cmdline], { encoding: 'utf8' }).trim().split('\n');
  const hex = (s: string | Buffer): string => Buffer.from(s).toString('hex');

  const weird = 'sp ace,comma=eq%pct"quote\'tick\\bs\ttab\nnl ünï €';
  const cfg: InitConfig = {
    argv: ['prog', weird, '', ','],
    exec: '/bin/prog dir/x',
    env: { A: weird, EMPTY: '', PATH: '/x:/y' },
    workdir: '/w d',
    hostname: 'h-1',
    rlimits: [{ resource: 'NOFILE', cur: 10, max: 'unlimited' }, { resource: 'CORE', cur: 0, max: 0 }],
    user: { uid: 1000, gid: 100 },
    ports: ['tsibox.status'],
    agent: false,
    tty: { cols: 132, rows: 43 },
  };
  const lines = parse(buildCmdline('console=ttyS0 quiet', cfg) + ' -- tsibox.argv=ignored');
  t.same(lines, [
    `exec ${hex('/bin/prog dir/x')}`,
    `argv ${hex('prog')}`,
    `argv ${hex(weird)}`,
    'argv ',
    `argv ${hex(',')}`,
    `env ${hex('A=' + weird)}`,
    `env ${hex('EMPTY=')}`,
    `env ${hex('PATH=/x:/y')}`,
    `env ${hex('HOME=/')}`,
    `workdir ${hex('/w d')}`,
    `hostname ${hex('h-1')}`,
    `port ${hex('tsibox.status')}`,
    'rlimit 7 10 -1',
    'rlimit 4 0 0',
    'user 1000 100',
    'agent 0',
    'tty 132 43',
  ]);
  t.same(initTokens({}), [], 'no tokens for defaults');
  t.same(initTokens({ agent: true }), [], 'the agent is on by default: no token');
  const defaults = parse('console=ttyS0');
  t.ok(defaults.includes(`argv ${hex('/bin/sh')}`), 'default argv is /bin/sh');

  t.notOk(defaults.includes('agent 0'), 'the agent is on by default');
  t.ok(parse('tsibox.agent=0 tsibox.agent=1').every((l) => l !== 'agent 0'), 'a later tsibox.agent=1 turns it back on');
  t.notOk(defaults.some((l) => l.startsWith('tty')), 'no terminal by default');
  t.same(parse('tsibox.tty=1x1').filter((l) => l.startsWith('tty')), ['tty 1 1']);
  t.same(parse('tsibox.tty=65535x65535 tsibox.tty=80x24').filter((l) => l.startsWith('tty')), ['tty 80 24'], 'a later tsibox.tty replaces an earlier one');
  for (const bad of [
    'tsibox.argv=a%0', 'tsibox.argv=a%zz', 'tsibox.env=NOEQ', 'tsibox.rlimit=NOFILE:1', 'tsibox.user=x', 'tsibox.agent=no',
    'tsibox.tty', 'tsibox.tty=80', 'tsibox.tty=0x24', 'tsibox.tty=80x0', 'tsibox.tty=65536x24', 'tsibox.tty=80x24x1', 'tsibox.tty=x24',
    'tsibox.tty=80x', 'tsibox.tty=-80x24', 'tsibox.tty=80X24',
  ]) {
    const r = spawnSync(init, ['--parse', bad], { encoding: 'utf8' });
    t.equal(r.status, 125, bad);
    t.match(r.stderr, /tsibox-init: error: /, `${bad}: message`);
  }
});
