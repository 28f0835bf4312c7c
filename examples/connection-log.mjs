// Capture every connection a sandbox makes or receives to a JSON-lines file, with the
// policy's decision, the rule that decided, bytes each way and how it ended.
//   node examples/connection-log.mjs [FILE]        (after npm run build; default connections.jsonl)
import { createWriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { Sandbox, Policy, guestToolsArchive } from 'tsibox';

const file = process.argv[2] ?? 'connections.jsonl';
const out = createWriteStream(file);
const server = createServer((s) => { s.end('hi\n'); });
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const port = server.address().port;
try {
  const sb = await Sandbox.start({
    argv: ['sh', '-c', `for i in 1 2 3; do tsibox-tcp 10.0.2.2 ${port} < /dev/null; done; tsibox-tcp 10.0.2.2 1 < /dev/null; tsibox-tcp 192.0.2.1 80 < /dev/null; true`],
    extraArchives: [await guestToolsArchive()],
    network: {
      mode: 'tsi', hostLoopbackAlias: '10.0.2.2',
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', name: 'host loopback' }] }),
    },
    stdout: process.stdout,
    timeoutMs: 120_000,
  });
  let n = 0;
  for await (const e of sb.connections()) {
    out.write(`${JSON.stringify(e)}\n`);
    n++;
  }
  const r = await sb.exited;
  console.log(`${n} connection records in ${file}; guest exit status ${r.exitCode}`);
} finally {
  out.end();
  server.close();
}
