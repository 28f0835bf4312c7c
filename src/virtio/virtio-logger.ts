// The virtio layer's logger. Quiet by default: a hostile guest must not be able to
// flood the host's logs; set TSIBOX_VIRTIO_LOG=debug (or pass a logger) to see reasons.
import { pino, type Logger } from 'pino';

export type { Logger };

let shared: Logger | null = null;

/** The default virtio logger (level from TSIBOX_VIRTIO_LOG, else silent). */
export function virtioLogger(): Logger {
  shared ??= pino({ name: 'tsibox.virtio', level: process.env['TSIBOX_VIRTIO_LOG'] ?? 'silent' });
  return shared;
}
