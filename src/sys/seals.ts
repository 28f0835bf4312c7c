// File seals (fcntl F_GET_SEALS / F_ADD_SEALS, memfd_create(2)): a sealed memfd's
// size cannot change, so a mapping of it cannot lose pages under us (SIGBUS).
import koffi from 'koffi';
import { errno, syscallError } from './libc.js';

const libc = koffi.load('libc.so.6');
// fcntl is variadic; declared so, koffi passes the optional argument correctly.
const fcntl = libc.func('int fcntl(int fd, int cmd, ...)');

const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
const EINVAL = 22;

export const Seal = {
  SEAL: 0x1,
  SHRINK: 0x2,
  GROW: 0x4,
  WRITE: 0x8,
} as const;

/** The seals on `fd`, or null when its file system has no seals (EINVAL: not a memfd). */
export function fileSeals(fd: number): number | null {
  const r = fcntl(fd, F_GET_SEALS) as number;
  if (r >= 0) return r;
  const e = errno();
  if (e === EINVAL) return null;
  throw syscallError('fcntl(F_GET_SEALS)', e);
}

/** Adds `seals` to a memfd created with MFD_ALLOW_SEALING. */
export function addSeals(fd: number, seals: number): void {
  if ((fcntl(fd, F_ADD_SEALS, 'int', seals) as number) !== 0) throw syscallError('fcntl(F_ADD_SEALS)');
}
