// Run untrusted code that may reach one host service and nothing else. Here the
// "service" is a tiny HTTP server on the host's 127.0.0.1, which the guest reaches as
// 10.0.2.2; the same program's attempt to reach another port is refused (EACCES).
//   node examples/allow-list.mjs        (after npm run build)
import { createServer } from 'node:http';
import { Sandbox, Policy, guestToolsArchive } from 'tsibox';

const allowed = createServer((_req, res) => { res.end('the allowed service\n'); });
const other = createServer((_req, res) => { res.end('should never be seen\n'); });
await Promise.all([allowed, other].map((s) => new Promise((r) => s.listen(0, '127.0.0.1', r))));
const ok = allowed.address().port;
const no = other.address().port;
try {
  const untrusted = `wget -q -O - http://10.0.2.2:${ok}/; echo "allowed: exit $?"; wget -q -O - http://10.0.2.2:${no}/; echo "other: exit $?"`;
  const r = await Sandbox.run({
    argv: ['sh', '-c', untrusted],
    extraArchives: [await guestToolsArchive()],
    network: {
      mode: 'tsi',
      hostLoopbackAlias: '10.0.2.2',
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', ports: ok, name: 'the one service' }] }),
    },
    timeoutMs: 120_000,
  });
  process.stdout.write(r.stdout);
  process.stdout.write(r.stderr.toString().split('\n').filter((l) => l.includes('wget')).map((l) => `guest stderr: ${l}\n`).join(''));
  console.log(`guest exit status ${r.exitCode}`);
} finally {
  allowed.close();
  other.close();
}
