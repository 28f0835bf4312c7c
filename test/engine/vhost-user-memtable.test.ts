// Issue 13: a hostile front end's SET_MEM_TABLE must not be able to make the back end
// map pages past the end of a file (SIGBUS, the whole process dies). A region larger
// than its memfd, and a memfd that could still be shrunk, are refused.
import t from 'tap';
import { ftruncateSync, openSync } from 'node:fs';
import { VhostUserConnection } from '../../src/engine/vhost-user/backend/connection.js';
import { mapMemTable } from '../../src/engine/vhost-user/backend/memory.js';
import { encodeMemTable, encodeRequest, FLAG_NEED_REPLY, Req, VHOST_USER_VERSION, type MemRegionDesc } from '../../src/engine/vhost-user/protocol.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { closeFd } from '../../src/sys/libc.js';
import { addSeals, fileSeals, Seal } from '../../src/sys/seals.js';
import { FdSocketReader, memfdCreate, sendWithFds, socketPair } from '../../src/sys/socket.js';
import { memoryLogger } from '../helpers/memory-logger.js';

const RAM = 1 << 20;
const region = (size: number, offset = 0): MemRegionDesc =>
  ({ guestPhysAddr: 0x10_0000n, memorySize: BigInt(size), userspaceAddr: 0x7f00_0000_0000n, mmapOffset: BigInt(offset) });

t.test('memfdCreate({ sealed }) seals shrink, grow and the seals', (t) => {
  const fd = memfdCreate('ram', RAM, { sealed: true });
  t.equal(fileSeals(fd), Seal.SHRINK | Seal.GROW | Seal.SEAL);
  t.throws(() => { ftruncateSync(fd, 4096); }, /EPERM/, 'cannot shrink');
  closeFd(fd);
  const plain = memfdCreate('ram', RAM);
  t.equal(fileSeals(plain), Seal.SEAL, 'a plain memfd is sealed against sealing only');
  closeFd(plain);
  t.end();
});

t.test('mapMemTable: the normal case maps', (t) => {
  const fd = memfdCreate('ram', 2 * RAM, { sealed: true });
  const { memory } = mapMemTable([region(RAM, RAM)], [fd]); // second MiB of the file
  t.ok(memory.contains(0x10_0000, RAM));
  memory.writeU32(0x10_0000 + RAM - 4, 0xdeadbeef);
  t.equal(memory.readU32(0x10_0000 + RAM - 4), 0xdeadbeef);
  memory.close();
  t.end();
});

t.test('mapMemTable refuses what could SIGBUS', (t) => {
  const cases: Array<[string, () => number, MemRegionDesc, RegExp]> = [
    ['region larger than its memfd', () => memfdCreate('ram', RAM, { sealed: true }), region(64 * RAM), /past the end of its file/],
    ['offset pushes the region past the end', () => memfdCreate('ram', RAM, { sealed: true }), region(RAM, 4096), /past the end of its file/],
    ['memfd without F_SEAL_SHRINK', () => memfdCreate('ram', RAM), region(RAM), /no F_SEAL_SHRINK/],
    ['not a memfd (/dev/zero)', () => openSync('/dev/zero', 'r+'), region(RAM), /not a sealable memfd/],
  ];
  for (const [name, make, r, reason] of cases) {
    const fd = make();
    t.throws(() => mapMemTable([r], [fd]), { name: 'ProtocolError', message: reason }, name);
  }
  t.end();
});

t.test('over the socket: a too-large region closes the connection; the process survives', async (t) => {
  const [ours, theirs] = socketPair();
  const logger = memoryLogger([]);
  const conn = new VhostUserConnection(ours, { device: new RngDevice({ queueSize: 256 }), logger, name: 'memtable-test' });
  const reader = new FdSocketReader(theirs);
  t.teardown(() => { conn.close(); reader.close(); closeFd(theirs); });
  const closed = new Promise<string | null>((r) => conn.once('close', r));
  sendWithFds(theirs, encodeRequest(Req.SET_OWNER, Buffer.alloc(0), VHOST_USER_VERSION));
  // Claims 1 GiB of RAM behind a 1 MiB memfd: mapping it would succeed, touching a ring there would not.
  const fd = memfdCreate('ram', RAM, { sealed: true });
  sendWithFds(theirs, encodeRequest(Req.SET_MEM_TABLE, encodeMemTable([region(1024 * RAM)]), VHOST_USER_VERSION | FLAG_NEED_REPLY), [fd]);
  closeFd(fd);
  t.match(await closed, /past the end of its file/, 'refused with the reason');
  let kind = reader.read().kind;
  for (let i = 0; i < 100 && kind !== 'eof'; i++) {
    await new Promise((r) => setTimeout(r, 5));
    kind = reader.read().kind;
  }
  t.equal(kind, 'eof', 'the front end sees end of stream; this process lives on');
});

t.test('a memfd sealed after sizing is accepted', (t) => {
  const fd = memfdCreate('ram', RAM, { sealed: true });
  t.throws(() => { addSeals(fd, Seal.WRITE); }, /EPERM/, 'F_SEAL_SEAL: no more seals');
  const { memory } = mapMemTable([region(RAM)], [fd]);
  memory.close();
  t.end();
});
