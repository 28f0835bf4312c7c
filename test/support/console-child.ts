// A stand-in for the OCI monitor's use of openConsole, run as its own process by
// test/oci/console.test.ts (detached: a session leader, as the monitor; or not).
// argv: socketPath cols rows [hup]. Reports JSON lines on stdout: {event:'open',
// resizeWatch, pid}, {event:'resize', cols, rows}, {event:'closed'}, {event:'sighup'},
// {event:'input-end'}, {event:'error', code, message} (then exit status 3). Echoes what it reads upper-cased; on a "q" it closes the relay
// and must then exit by itself (nothing may keep the event loop alive). With "hup" it
// handles SIGHUP (as the monitor does) and closes the relay once it saw both the SIGHUP
// and the end of input.
import { openConsole, type ConsoleRelay } from '../../src/oci/console.js';
import type { TsiboxError } from '../../src/errors.js';

function report(o: object): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

const [socketPath, cols, rows, hup] = process.argv.slice(2);
// Node's signal watchers do not keep the process alive; the monitor has other handles
// (the VM), this timer stands in for them until both the SIGHUP and the end were seen.
const seen = new Set<string>();
const keepAlive = hup === 'hup' ? setTimeout(() => {}, 10_000) : null;
function saw(event: string): void {
  report({ event });
  seen.add(event);
  if (keepAlive !== null && seen.has('sighup') && seen.has('input-end')) {
    relay.close();
    clearTimeout(keepAlive);
  }
}
if (hup === 'hup') process.on('SIGHUP', () => { saw('sighup'); });
// Else SIGHUP's default action, as in a monitor with no listener: under tap, its
// processinfo hook (injected into every child) listens for SIGHUP through signal-exit.
else process.removeAllListeners('SIGHUP');
let relay: ConsoleRelay;
try {
  relay = await openConsole(socketPath!, { cols: Number(cols), rows: Number(rows) });
} catch (err) {
  report({ event: 'error', code: (err as TsiboxError).code, message: (err as Error).message });
  // Long enough for a stray SIGHUP (a terminal acquired, then hung up) to end us first.
  setTimeout(() => process.exit(3), 300);
  await new Promise(() => {});
  throw err;
}
report({ event: 'open', resizeWatch: relay.resizeWatch, pid: process.pid });
relay.onResize((c, r) => { report({ event: 'resize', cols: c, rows: r }); });
relay.input.on('data', (d: Buffer) => {
  const s = d.toString('latin1');
  if (s.includes('q')) {
    relay.close();
    report({ event: 'closed' });
    return;
  }
  relay.output.write(s.toUpperCase());
});
relay.input.on('end', () => {
  if (keepAlive === null) relay.close();
  saw('input-end');
});
