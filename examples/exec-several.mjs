// Run several commands in one sandbox, one after another and at once, each with its
// own output and exit status, while the main program keeps the sandbox up.
//   node examples/exec-several.mjs        (after npm run build)
import { Sandbox } from 'tsibox';

/** All of a stream, as text. */
async function text(stream) {
  let s = '';
  for await (const chunk of stream) s += chunk;
  return s;
}

// The main program only keeps the guest up; stop() ends it (SIGTERM first). (In
// TypeScript, `await using sb = ...` does the stop() at the end of the scope.)
const sb = await Sandbox.start({ argv: ['sleep', '3600'], timeoutMs: 300_000 });
try {
  for (const cmd of [['uname', '-sr'], ['sh', '-c', 'echo "$((6 * 7))"'], ['ls', '/no/such/dir']]) {
    const p = sb.exec(cmd);
    const [out, err, { exitCode }] = await Promise.all([text(p.stdout), text(p.stderr), p.exited]);
    console.log(`$ ${cmd.join(' ')}  -> exit ${exitCode}`);
    if (out) process.stdout.write(out);
    if (err) process.stdout.write(`(stderr) ${err}`);
  }

  // Three at once; stdin given to one of them.
  const together = [
    sb.exec(['sh', '-c', 'sleep 1; echo slow']),
    sb.exec(['sh', '-c', 'echo fast']),
    sb.exec(['tr', 'a-z', 'A-Z'], { stdin: 'shouted through stdin\n' }),
  ];
  const outs = await Promise.all(together.map(async (p) => (await text(p.stdout)).trim()));
  console.log(`at once: ${outs.join(' | ')}`);
} finally {
  const r = await sb.stop();
  console.log(`main program ended: exit ${r.exitCode} (${r.signal ?? 'no signal'})`);
}
