// One side of a store-buffering litmus test (see fence.test.ts). Each round: meet the
// peer, store to our cell, (fence), load the peer's cell, record whether the load saw
// the peer's store of this round.
import { parentPort, workerData } from 'node:worker_threads';
import { fullFence } from '../../src/virtio/fence.js';

interface Job { cells: SharedArrayBuffer; seen: SharedArrayBuffer; role: 0 | 1; rounds: number; fence: boolean }
const { cells, seen, role, rounds, fence } = workerData as Job;
const a = new Int32Array(cells);
const out = new Uint8Array(seen);
// Int32 indices 16 apart: each cell in its own 64-byte cache line.
const mine = role * 16;
const other = (1 - role) * 16;
const go = 32 + role * 16;
const peerGo = 32 + (1 - role) * 16;
for (let i = 1; i <= rounds; i++) {
  Atomics.store(a, go, i);
  while (Atomics.load(a, peerGo) < i) { /* spin: the peer is a moment away */ }
  a[mine] = i;
  if (fence) fullFence();
  out[2 * (i - 1) + role] = a[other] === i ? 1 : 0;
}
parentPort?.postMessage('done');
