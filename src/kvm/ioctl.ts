// One place where KVM ioctls are issued and their failures turned into TsiboxErrors.
import { TsiboxError } from '../errors.js';
import { sys, errno, errnoName } from '../sys/libc.js';

export function ioctlError(name: string, e: number): TsiboxError {
  return new TsiboxError('KVM_IOCTL', `KVM_${name} failed: ${errnoName(e)} (${sys.strerror(e)})`, { errno: e });
}

/** ioctl with an integer argument; returns the non-negative result. */
export function ioctlInt(fd: number, name: string, request: number, arg = 0): number {
  const r = sys.ioctlInt(fd, request, arg) as number;
  if (r < 0) throw ioctlError(name, errno());
  return r;
}

/** ioctl with a buffer the kernel reads and/or fills. */
export function ioctlBuf(fd: number, name: string, request: number, buf: Uint8Array): number {
  const r = sys.ioctlBuf(fd, request, buf) as number;
  if (r < 0) throw ioctlError(name, errno());
  return r;
}
