// The control channel between the runtime commands (`start`, `kill`, `delete --force`,
// short-lived processes) and a container's monitor (the long-lived process the pid file
// names): a unix stream socket `<root>/<id>/ctl`, reachable by root only (the state
// directory is 0700). One request per connection, one JSON line each way:
//   {"op":"start"}            → {"ok":true}
//   {"op":"kill","signal":15} → {"ok":true}
//   failure                   → {"ok":false,"code":"INVALID_STATE","error":"..."}
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { TsiboxError, type TsiboxErrorCode } from '../errors.js';
import { isObject, parseJsonText } from './json-fields.js';

export type ControlRequest = { op: 'start' } | { op: 'kill'; signal: number };

/** Codes a monitor's refusal may carry through; anything else reads as OCI_MONITOR. */
const REPLY_CODES: ReadonlySet<string> = new Set<TsiboxErrorCode>(['INVALID_STATE', 'INVALID_ARGUMENT', 'NOT_SUPPORTED', 'AGENT_UNAVAILABLE']);

/** A request or reply line longer than this is refused. */
const MAX_LINE = 4096;
/** sun_path holds 108 bytes, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

/** The control socket of a container whose state directory is `dir`. */
export function controlSocketPath(dir: string): string {
  const p = join(dir, 'ctl');
  if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
    throw new TsiboxError('INVALID_ARGUMENT', `the control socket path ${p} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket path allows: use a shorter --root or container id`);
  }
  return p;
}

/**
 * Sends one request and waits for the reply (at most `timeoutMs`, default 10 s).
 * Errors: OCI_MONITOR when nothing listens (the monitor is gone), it did not answer or
 * answered malformed; the reply's code (INVALID_STATE, ...) when it refused.
 */
export async function sendControl(path: string, req: ControlRequest, timeoutMs = 10_000): Promise<void> {
  const line = await new Promise<string>((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new TsiboxError('OCI_MONITOR', `the container monitor did not answer ${req.op} within ${timeoutMs} ms`)); }, timeoutMs);
    const done = (f: () => void): void => { clearTimeout(timer); sock.destroy(); f(); };
    sock.setEncoding('utf8');
    sock.on('connect', () => { sock.write(JSON.stringify(req) + '\n'); });
    sock.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) done(() => { resolve(buf.slice(0, nl)); });
      else if (buf.length > MAX_LINE) done(() => { reject(new TsiboxError('OCI_MONITOR', 'the container monitor sent an over-long reply')); });
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      done(() => {
        reject(err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? new TsiboxError('OCI_MONITOR', `the container monitor is not running (${err.code} on ${path})`, { cause: err })
            : new TsiboxError('OCI_MONITOR', `control socket ${path}: ${err.message}`, { cause: err }));
      });
    });
    sock.on('end', () => { done(() => { reject(new TsiboxError('OCI_MONITOR', 'the container monitor closed the control connection without a reply')); }); });
  });
  const reply = parseJsonText(line, 'control reply');
  if (!isObject(reply) || typeof reply['ok'] !== 'boolean') throw new TsiboxError('OCI_MONITOR', 'the container monitor sent a malformed reply');
  if (reply['ok'] === true) return;
  const code = typeof reply['code'] === 'string' && REPLY_CODES.has(reply['code']) ? reply['code'] as TsiboxErrorCode : 'OCI_MONITOR';
  throw new TsiboxError(code, typeof reply['error'] === 'string' ? reply['error'].slice(0, 1000) : 'the container monitor refused');
}

/**
 * Serves the control socket at `path`: each request line is checked, then passed to
 * `handle`, whose result (or TsiboxError) becomes the reply. Resolves once listening.
 */
export async function serveControl(path: string, handle: (req: ControlRequest) => Promise<void>): Promise<Server> {
  const server = createServer((sock: Socket) => {
    let buf = '';
    let answered = false;
    sock.setEncoding('utf8');
    sock.setTimeout(10_000, () => sock.destroy());
    const reply = (r: { ok: true } | { ok: false; code: TsiboxErrorCode; error: string }): void => {
      answered = true;
      sock.end(JSON.stringify(r) + '\n');
    };
    sock.on('data', (d: string) => {
      if (answered) return;
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_LINE) reply({ ok: false, code: 'INVALID_ARGUMENT', error: 'request too long' });
        return;
      }
      let req: ControlRequest;
      try {
        req = parseRequest(buf.slice(0, nl));
      } catch (err) {
        reply({ ok: false, code: 'INVALID_ARGUMENT', error: (err as Error).message });
        return;
      }
      answered = true;
      handle(req).then(
        () => { reply({ ok: true }); },
        (err: unknown) => {
          reply(err instanceof TsiboxError ? { ok: false, code: err.code, error: err.message } : { ok: false, code: 'OCI_MONITOR', error: String(err) });
        },
      );
    });
    sock.on('error', () => { /* the client went away; nothing to answer */ });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => { server.off('error', reject); resolve(); });
  });
  return server;
}

function parseRequest(line: string): ControlRequest {
  const r = parseJsonText(line, 'control request');
  if (!isObject(r)) throw new TsiboxError('INVALID_ARGUMENT', 'control request must be an object');
  if (r['op'] === 'start') return { op: 'start' };
  if (r['op'] === 'kill' && typeof r['signal'] === 'number' && Number.isInteger(r['signal']) && r['signal'] >= 1 && r['signal'] <= 64) {
    return { op: 'kill', signal: r['signal'] };
  }
  throw new TsiboxError('INVALID_ARGUMENT', `unknown control request ${line.slice(0, 100)}`);
}
