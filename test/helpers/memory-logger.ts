// A pino logger whose JSON lines land in `lines` (optionally only those `keep` accepts).
import { Writable } from 'node:stream';
import { pino } from 'pino';

export type LogLine = Record<string, unknown>;

export function memoryLogger(lines: LogLine[], keep: (line: LogLine) => boolean = () => true): pino.Logger {
  const sink = new Writable({
    write(chunk: Buffer, _e, done) {
      for (const l of chunk.toString('utf8').split('\n')) {
        if (l === '') continue;
        const line = JSON.parse(l) as LogLine;
        if (keep(line)) lines.push(line);
      }
      done();
    },
  });
  return pino({ level: 'info' }, sink);
}
