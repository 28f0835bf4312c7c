// Logging: pino, structured, silent unless the caller passes a logger or sets TSIBOX_LOG.
import { pino, type Logger } from 'pino';

export const silentLogger: Logger = pino({ level: 'silent' });

/** A logger at TSIBOX_LOG's level (default silent), writing JSON lines to stderr. */
export function defaultLogger(): Logger {
  const level = process.env.TSIBOX_LOG ?? 'silent';
  return pino({ level, name: 'tsibox' }, pino.destination(2));
}
