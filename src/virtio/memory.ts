// What the virtio layer needs from guest memory. A structural subset of GuestMemory,
// so tests and the fuzzer can interpose a checking wrapper.
import type { GuestMemory } from '../memory/guest-memory.js';

export type VirtioMemory = Pick<GuestMemory,
  'contains' | 'slice' | 'readU16' | 'readU32' | 'writeU16' | 'writeU32'>;
