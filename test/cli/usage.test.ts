import t from 'tap';
import { PassThrough } from 'node:stream';
import { runCli } from '../../src/cli/run.js';
import { parseArgs, UsageError } from '../../src/cli/args.js';
import { registerCommand } from '../../src/cli/registry.js';
import { TsiboxError } from '../../src/errors.js';
import { capture, tsibox } from './helpers.js';

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = capture();
  const stderr = capture();
  const code = await runCli(argv, { stdout, stderr });
  return { code, out: stdout.text(), err: stderr.text() };
}

t.test('usage errors exit 2 with a tsibox: message', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /usage: tsibox <command>/],
    [['frobnicate'], /^tsibox: unknown command "frobnicate"/],
    [['bench'], /^tsibox: bench: missing argument/],
    [['bench', 'nope'], /^tsibox: unknown bench "nope" \(one of: exits, ioeventfd/],
    [['bench', 'exits', 'extra'], /^tsibox: bench: unexpected argument "extra"/],
    [['bench', 'exits', '--iterations'], /^tsibox: --iterations needs a value/],
    [['bench', 'exits', '--iterations', 'many'], /^tsibox: --iterations must be a whole number/],
    [['bench', 'exits', '--iterations', '5'], /^tsibox: --iterations must be at least 10/],
    [['bench', 'exits', '--runs', '0'], /^tsibox: --runs must be at least 1/],
    [['bench', 'exits', '--cpl', '1'], /^tsibox: --cpl must be one of 0, 3/],
    [['bench', 'exits', '--bogus'], /^tsibox: unknown option --bogus/],
    [['doctor', '--json=yes'], /^tsibox: --json takes no value/],
    [['doctor', '--json', '--json'], /^tsibox: --json given twice/],
    [['doctor', 'now'], /^tsibox: doctor: unexpected argument "now"/],
    [['help', 'nope'], /^tsibox: unknown command "nope"/],
    [['run', '--net', 'passt', '--publish', '8080:80', '--', 'true'], /^tsibox: --host-alias and --publish need --net tsi/],
    [['run', '--net', 'passt', '--host-alias', '10.0.2.2', '--', 'true'], /^tsibox: --host-alias and --publish need --net tsi/],
    [['run', '--net', 'passt', '--allow', 'nope', '--', 'true'], /^tsibox: --allow wants CIDR/],
    [['run', '--allow', '127.0.0.1', '--', 'true'], /^tsibox: --allow needs --net tsi or passt; --host-alias, --publish, --allow-unix and the limit flags need --net tsi/],
    [['run', '--max-connections', '5', '--', 'true'], /^tsibox: the limit flags need --net tsi/],
    [['run', '--net', 'tsi', '--on-publish-error', 'warn', '--', 'true'], /^tsibox: --on-publish-error needs --publish/],
    [['run', '--net', 'tsi', '--publish', '1:80', '--on-publish-error', 'maybe', '--', 'true'], /^tsibox: --on-publish-error must be one of stop, warn/],
    [['run', '--net', 'passt', '--allow-unix', '/run/x.sock', '--', 'true'], /^tsibox: --allow-unix needs --net tsi/],
    [['run', '--net', 'passt', '--connect-rate', '5', '--', 'true'], /^tsibox: --connect-rate needs --net tsi/],
    [['run', '--net', 'tsi', '--allow-unix', 'relative.sock', '--', 'true'], /^tsibox: --allow-unix wants an absolute path/],
    [['run', '--net', 'tsi', '--max-listeners', '0', '--', 'true'], /^tsibox: --max-listeners must be at least 1/],
  ];
  for (const [argv, message] of cases) {
    const r = await cli(...argv);
    t.equal(r.code, 2, `tsibox ${argv.join(' ')} exits 2`);
    t.match(r.err, message, `tsibox ${argv.join(' ')} says why`);
    t.equal(r.out, '', 'nothing on stdout');
  }
});

t.test('help lists commands and benches', async (t) => {
  const all = await cli('help');
  t.equal(all.code, 0);
  t.match(all.out, /doctor/);
  t.match(all.out, /bench/);
  const bench = await cli('bench', '--help');
  t.equal(bench.code, 0);
  t.match(bench.out, /usage: tsibox bench <name>/);
  t.match(bench.out, /exits .*\n.*ioeventfd/);
});

t.test('a TsiboxError exits 1 as "tsibox: <message>"; other errors exit 1 too', async (t) => {
  registerCommand({
    name: 'test-fail', summary: 'fails', usage: 'test-fail', options: {},
    async run(args) {
      if (args.positionals[0] === 'plain') throw new Error('plain failure');
      throw new TsiboxError('KVM_UNAVAILABLE', 'no KVM here');
    },
  });
  const r = await cli('test-fail');
  t.equal(r.code, 1);
  t.equal(r.err, 'tsibox: no KVM here [KVM_UNAVAILABLE]\n');
  const p = await cli('test-fail', 'plain');
  t.equal(p.code, 1);
  t.match(p.err, /^tsibox: Error: plain failure/);
});

t.test('parseArgs', async (t) => {
  const specs = { n: { type: 'integer', description: '' }, s: { type: 'string', description: '' }, b: { type: 'boolean', description: '' } } as const;
  t.same(parseArgs(['x', '--n', '12', '--s=a=b', '--b', '--', '--n'], specs), { positionals: ['x', '--n'], options: { n: 12, s: 'a=b', b: true } });
  t.throws(() => parseArgs(['-x'], specs), UsageError);
  t.throws(() => parseArgs(['--constructor', '1'], specs), /unknown option --constructor/);
  t.same(parseArgs(['-'], specs).positionals, ['-']);
});

t.test('parseArgs: one-letter aliases', async (t) => {
  const specs = {
    tty: { type: 'boolean', short: 't', description: '' },
    interactive: { type: 'boolean', short: 'i', description: '' },
    name: { type: 'string', short: 'n', description: '' },
  } as const;
  t.same(parseArgs(['-t', '--', 'sh'], specs), { positionals: ['sh'], options: { tty: true } });
  t.same(parseArgs(['-it', 'x'], specs), { positionals: ['x'], options: { interactive: true, tty: true } }, 'boolean ones group');
  t.same(parseArgs(['-tn', 'v', 'x'], specs), { positionals: ['x'], options: { tty: true, name: 'v' } }, 'the last one may take a value');
  t.throws(() => parseArgs(['-x'], specs), /unknown option -x/);
  t.throws(() => parseArgs(['-tx'], specs), /unknown option -x in -tx/);
  t.throws(() => parseArgs(['-nt', 'v'], specs), /-n \(--name\) needs a value/);
  t.throws(() => parseArgs(['-n'], specs), /-n \(--name\) needs a value/);
  t.throws(() => parseArgs(['-t', '--tty'], specs), /--tty given twice/);
});

t.test('run -t needs a terminal on stdin (no VM is started)', async (t) => {
  const stdout = capture();
  const stderr = capture();
  const code = await runCli(['run', '-t', '--', 'sh'], { stdout, stderr, stdin: new PassThrough() });
  t.equal(code, 2);
  t.match(stderr.text(), /^tsibox: -t: the input device is not a TTY/);
  t.equal(stdout.text(), '');
  const help = await cli('run', '--help');
  t.match(help.out, /-t, --tty {2,}give CMD a terminal/);
  t.match(help.out, /usage: tsibox run \[-i\] \[-t\]/);
});

t.test('the installed bin maps a usage error to exit status 2', async (t) => {
  const r = await tsibox(['bench', 'nope']);
  t.equal(r.code, 2);
  t.match(r.stderr, /^tsibox: unknown bench "nope"/);
});
