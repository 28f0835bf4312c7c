// Entry point of a container monitor process (src/oci/monitor.ts), started by
// `tsibox oci create` as `[nsenter --net=NETNS --] node monitor-main.js ARGS_JSON` with
// a readiness pipe on fd 3: one line, "ok" once the container is created, or "error
// CODE MESSAGE" before exiting 1. Not a command for people.
import { closeSync, writeSync } from 'node:fs';
import { TsiboxError } from '../errors.js';
import { runMonitor, type MonitorArgs } from './monitor.js';

const READY_FD = 3;

/** Writes the readiness line; false when create is gone (EPIPE: killed, or it gave up waiting). */
function report(line: string): boolean {
  try {
    writeSync(READY_FD, line.replace(/\n/g, ' ') + '\n');
    closeSync(READY_FD);
    return true;
  } catch {
    return false;
  }
}

let readied = false;
try {
  const args = JSON.parse(process.argv[2] ?? '') as MonitorArgs;
  const code = await runMonitor(args, () => {
    readied = true;
    // Nobody recorded us: no state names our pid, no engine waits for it. Leave nothing behind.
    if (!report('ok')) process.exit(1);
  });
  process.exit(code);
} catch (err) {
  const code = err instanceof TsiboxError ? err.code : 'OCI_MONITOR';
  const msg = err instanceof Error ? err.message : String(err);
  if (!readied) report(`error ${code} ${msg}`);
  else process.stderr.write(`tsibox-oci: ${msg} [${code}]\n`);
  process.exit(readied ? 125 : 1);
}
