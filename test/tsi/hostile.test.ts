import t from 'tap';
import { Errno, TsiMessageReader, TSI_MAGIC, GuestErrno, TsiOp, TsiPort, encodeConnect, header } from '../../proxies/protocol.js';
import { rig, tcpServer, until } from './helpers.js';
import type { GuestSocket } from '../support/vsock/guest.js';

/** Sends raw bytes as the first message on a TSI service port and returns the first reply frame (or null on close). */
async function rawFirstReply(sock: GuestSocket, bytes: Buffer): Promise<{ op: number; result: number } | null> {
  const reader = new TsiMessageReader();
  const reply = new Promise<{ op: number; result: number } | null>((resolve) => {
    sock.on('data', (d) => {
      reader.push(d);
      const f = reader.next();
      if (f === null || f instanceof GuestErrno) return;
      resolve({ op: f.op, result: f.bytes.length >= 12 ? f.bytes.readInt32LE(f.op === TsiOp.ERROR || f.op === TsiOp.LISTEN_RESULT ? 12 : 8) : 0 });
    });
    sock.once('close', () => { resolve(null); });
  });
  await sock.write(bytes);
  return reply;
}

t.test('malformed CONNECT messages get errors, never crashes', async (t) => {
  const srv = await tcpServer(t, () => {});
  const { vsock } = await rig(t);
  const cases: Array<[string, Buffer, number]> = [];
  const good = encodeConnect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  const badMagic = Buffer.from(good); badMagic.writeUInt16LE(0xdead, 0);
  cases.push(['bad magic', badMagic, Errno.EPROTO]);
  const badVersion = Buffer.from(good); badVersion[2] = 9;
  cases.push(['future version', badVersion, Errno.EPROTONOSUPPORT]);
  const tooLong = Buffer.from(good); tooLong.writeUInt32LE(1 << 20, 4);
  cases.push(['length past the limit', tooLong, Errno.EMSGSIZE]);
  const tooShort = Buffer.from(good); tooShort.writeUInt32LE(3, 4);
  cases.push(['length below the header', tooShort, Errno.EMSGSIZE]);
  const wrongOp = Buffer.from(good); wrongOp[3] = TsiOp.LISTEN;
  cases.push(['wrong op', wrongOp, Errno.EPROTO]);
  const badFamily = Buffer.from(good); badFamily.writeUInt16LE(99, 16);
  cases.push(['unknown family', badFamily, Errno.EAFNOSUPPORT]);
  const padding = Buffer.from(good); padding[30] = 1;
  cases.push(['nonzero IPv4 padding', padding, Errno.EINVAL]);
  const pathLie = Buffer.from(good); pathLie.writeUInt16LE(50, 10);
  cases.push(['path_len disagrees', pathLie, Errno.EINVAL]);
  const unixLong = encodeConnect({ family: 'unix', path: 'x'.repeat(108) });
  const unixTooLong = Buffer.concat([unixLong, Buffer.alloc(0)]);
  unixTooLong.writeUInt16LE(109, 10);
  cases.push(['unix path_len mismatch', unixTooLong, Errno.EINVAL]);
  const nul = encodeConnect({ family: 'unix', path: 'a\0b' });
  cases.push(['NUL in unix path', nul, Errno.EINVAL]);
  const dgramType = Buffer.from(good); dgramType.writeUInt16LE(2, 8);
  cases.push(['SOCK_DGRAM over the stream service', dgramType, Errno.EPROTOTYPE]);
  for (const [name, bytes, errno] of cases) {
    const sock = await vsock.connect(TsiPort.STREAM);
    const r = await rawFirstReply(sock, bytes);
    t.same(r, { op: TsiOp.CONNECT_RESULT, result: -errno }, name);
    sock.reset();
  }
  t.equal(srv.connections(), 0, 'no malformed request reached the host network');
});

t.test('control channel: garbage, unknown ops, requests before HELLO', async (t) => {
  const { vsock, host } = await rig(t, { hello: false });
  const c = await vsock.connect(TsiPort.CONTROL, 'seqpacket', { localPort: 1000 });
  const unknown = header(77, 16);
  unknown.writeUInt32LE(5, 8);
  t.same(await rawFirstReply(c, unknown), { op: TsiOp.ERROR, result: -Errno.EOPNOTSUPP }, 'unknown op → ERROR -EOPNOTSUPP');
  const c2 = await vsock.connect(TsiPort.CONTROL, 'seqpacket', { localPort: 1001 });
  const listen = header(TsiOp.LISTEN, 48);
  t.same(await rawFirstReply(c2, listen), { op: TsiOp.ERROR, result: -Errno.EPROTO }, 'LISTEN before HELLO → -EPROTO');
  const c3 = await vsock.connect(TsiPort.CONTROL, 'stream', { localPort: 1002 });
  const garbage = Buffer.alloc(64, 0xff);
  t.same(await rawFirstReply(c3, garbage), { op: TsiOp.ERROR, result: -Errno.EPROTO }, 'garbage → ERROR then reset');
  await until(() => c3.state === 'closed', 2000, 'reset after garbage');
  t.equal(host.listener.listeners, 0);
  // A message split across many tiny writes is still understood.
  const c4 = await vsock.connect(TsiPort.CONTROL, 'stream', { localPort: 1003 });
  const hello = header(TsiOp.HELLO, 16);
  hello.writeUInt32LE(1, 8); hello[12] = 1; hello[13] = 1;
  const reader = new TsiMessageReader();
  const got = new Promise<number>((res) => c4.on('data', (d) => { reader.push(d); const f = reader.next(); if (f && !(f instanceof GuestErrno)) res(f.op); }));
  for (const b of hello) await c4.write(Buffer.from([b]));
  t.equal(await got, TsiOp.HELLO_RESULT, 'byte-by-byte HELLO answered');
  t.equal(TSI_MAGIC, 0x4954);
});

t.test('a guest that never finishes its CONNECT is cut off, and ports nobody serves get RST', async (t) => {
  const { vsock } = await rig(t);
  const refused = await vsock.connect(4242).catch((e: NodeJS.ErrnoException) => e.code);
  t.equal(refused, 'ECONNREFUSED', 'unserved host port → RST');
  const s = await vsock.connect(TsiPort.STREAM);
  await s.write(Buffer.from([0x54])); // 1 byte of a header, then silence
  t.equal(s.state, 'connected');
  t.equal(vsock.device.stats().malformed, 0);
});
