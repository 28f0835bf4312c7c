/**
 * The exec agent's frame codec (src/agent/protocol.ts, docs/exec-agent.md): layout,
 * every message both ways, the limits checked on the header, and that a decoder
 * answers garbage with an AgentPeerFault instead of throwing.
 */
import t from 'tap';
import {
  AGENT_PORT, AgentPeerFault, EXEC_FIXED, FrameDecoder, HEADER_SIZE, MAX_DATA, MAX_EXEC_PAYLOAD, MAX_TEXT, MsgType,
  STDIN_WINDOW, decodeGuestMessage, decodeHostMessage, encodeExec, encodeSignal, encodeStdin, encodeStdinEof, encodeWinsize, guestFrames,
  signalName, signalNumber, type Frame,
} from '../../src/agent/protocol.js';

function one(from: 'guest' | 'host', bytes: Uint8Array): Frame | AgentPeerFault | null {
  const d = new FrameDecoder(from);
  d.push(bytes);
  return d.next();
}

function frameOf(from: 'guest' | 'host', bytes: Uint8Array): Frame {
  const f = one(from, bytes);
  if (f === null || f instanceof AgentPeerFault) throw new Error(`not a frame: ${f === null ? 'incomplete' : f.reason}`);
  return f;
}

t.test('header layout: magic EX, version 1, type, u32 LE length', async (t) => {
  const b = encodeStdin(Buffer.from('hello'));
  t.same([...b.subarray(0, HEADER_SIZE)], [0x45, 0x58, 1, MsgType.STDIN, 5, 0, 0, 0]);
  t.equal(b.subarray(HEADER_SIZE).toString(), 'hello');
  t.equal(AGENT_PORT, 52);
  t.same([...encodeStdinEof()], [0x45, 0x58, 1, MsgType.STDIN_EOF, 0, 0, 0, 0]);
  t.same([...encodeSignal(9)], [0x45, 0x58, 1, MsgType.SIGNAL, 4, 0, 0, 0, 9, 0, 0, 0]);
});

t.test('EXEC round trip: flags, ids, counts, NUL-terminated workdir, argv, env', async (t) => {
  const b = encodeExec({ argv: ['sh', '-c', 'echo "a b" ü', ''], env: { A: '1', EMPTY: '', 'K.X': 'v=w' }, workdir: '/w d', user: { uid: 1000, gid: 100 } });
  const p = b.subarray(HEADER_SIZE);
  t.equal(p.readUInt32LE(0), 1, 'flags: USER');
  t.equal(p.readUInt32LE(4), 1000);
  t.equal(p.readUInt32LE(8), 100);
  t.equal(p.readUInt32LE(12), 4, 'argc');
  t.equal(p.readUInt32LE(16), 3, 'envc');
  t.equal(p.subarray(EXEC_FIXED).toString('utf8'), '/w d\0sh\0-c\0echo "a b" ü\0\0A=1\0EMPTY=\0K.X=v=w\0');
  const m = decodeHostMessage(frameOf('host', b));
  t.same(m, {
    type: 'exec', argv: ['sh', '-c', 'echo "a b" ü', ''], env: [['A', '1'], ['EMPTY', ''], ['K.X', 'v=w']], workdir: '/w d', user: { uid: 1000, gid: 100 },
  });
  const plain = decodeHostMessage(frameOf('host', encodeExec({ argv: ['true'] })));
  t.same(plain, { type: 'exec', argv: ['true'], env: [], workdir: '' }, 'no user, no env, the workload\'s workdir');
  t.same(decodeHostMessage(frameOf('host', encodeExec({ argv: ['id'], user: { uid: 7 } }))), { type: 'exec', argv: ['id'], env: [], workdir: '', user: { uid: 7, gid: 7 } }, 'gid defaults to uid');
});

t.test('EXEC arguments the agent would refuse are INVALID_ARGUMENT before anything is sent', async (t) => {
  t.throws(() => encodeExec({ argv: [] }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['a\0b'] }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x'], env: { 'A=B': '1' } }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x'], env: { '': '1' } }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x'], env: { A: 'x\0' } }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x'], workdir: '/a\0' }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x'], user: { uid: -1 } }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x'], user: { uid: 1.5 } }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeExec({ argv: ['x', 'y'.repeat(MAX_EXEC_PAYLOAD)] }), { code: 'INVALID_ARGUMENT', message: /limit/ });
  t.throws(() => encodeExec({ argv: new Array<string>(4097).fill('a') }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => encodeStdin(Buffer.alloc(MAX_DATA + 1)), { code: 'INVALID_ARGUMENT' });
  const big = encodeExec({ argv: ['x', 'y'.repeat(MAX_EXEC_PAYLOAD - EXEC_FIXED - 4)] });
  t.equal(big.length, HEADER_SIZE + MAX_EXEC_PAYLOAD, 'exactly the limit is fine');
  t.type(decodeHostMessage(frameOf('host', big)), 'object');
});

t.test('malformed EXEC payloads decode to errors (the agent\'s checks)', async (t) => {
  const exec = (p: Buffer): ReturnType<typeof decodeHostMessage> => decodeHostMessage({ type: MsgType.EXEC, payload: p });
  const fixed = (flags: number, argc: number, envc: number): Buffer => {
    const b = Buffer.alloc(EXEC_FIXED);
    b.writeUInt32LE(flags, 0);
    b.writeUInt32LE(argc, 12);
    b.writeUInt32LE(envc, 16);
    return b;
  };
  const cases: Array<[string, Buffer]> = [
    ['unknown flag', Buffer.concat([fixed(2, 1, 0), Buffer.from('\0x\0')])],
    ['argc 0', Buffer.concat([fixed(0, 0, 0), Buffer.from('\0')])],
    ['argc over 4096', Buffer.concat([fixed(0, 4097, 0), Buffer.from('\0x\0')])],
    ['no workdir', fixed(0, 1, 0)],
    ['argv cut short', Buffer.concat([fixed(0, 2, 0), Buffer.from('\0x\0')])],
    ['unterminated argv', Buffer.concat([fixed(0, 1, 0), Buffer.from('\0x')])],
    ['env without =', Buffer.concat([fixed(0, 1, 1), Buffer.from('\0x\0NOEQ\0')])],
    ['env starting with =', Buffer.concat([fixed(0, 1, 1), Buffer.from('\0x\0=v\0')])],
    ['trailing bytes', Buffer.concat([fixed(0, 1, 0), Buffer.from('\0x\0junk')])],
  ];
  for (const [what, p] of cases) t.type(exec(p), AgentPeerFault, what);
  t.type(decodeHostMessage({ type: MsgType.SIGNAL, payload: Buffer.from([0, 0, 0, 0]) }), AgentPeerFault, 'signal 0');
  t.type(decodeHostMessage({ type: MsgType.SIGNAL, payload: Buffer.from([65, 0, 0, 0]) }), AgentPeerFault, 'signal 65');
});

t.test('WINSIZE: cols and rows, u32 LE each, 1..65535', async (t) => {
  t.same([...encodeWinsize(132, 43)], [0x45, 0x58, 1, MsgType.WINSIZE, 8, 0, 0, 0, 132, 0, 0, 0, 43, 0, 0, 0]);
  t.same(decodeHostMessage(frameOf('host', encodeWinsize(65535, 1))), { type: 'winsize', cols: 65535, rows: 1 });
  for (const [c, r] of [[0, 24], [80, 0], [65536, 24], [80, 65536], [1.5, 2], [Number.NaN, 2], [-1, 2]] as const) {
    t.throws(() => encodeWinsize(c, r), { code: 'INVALID_ARGUMENT' }, `${c}x${r}`);
  }
  const raw = (c: number, r: number): Buffer => { const b = Buffer.alloc(8); b.writeUInt32LE(c, 0); b.writeUInt32LE(r, 4); return b; };
  t.type(decodeHostMessage({ type: MsgType.WINSIZE, payload: raw(0, 24) }), AgentPeerFault, 'cols 0');
  t.type(decodeHostMessage({ type: MsgType.WINSIZE, payload: raw(80, 65536) }), AgentPeerFault, 'rows 65536');
  const short = one('host', Buffer.from([0x45, 0x58, 1, MsgType.WINSIZE, 4, 0, 0, 0, 80, 0, 0, 0]));
  t.type(short, AgentPeerFault, 'a WINSIZE of 4 bytes is refused on its header');
  t.match((short as AgentPeerFault).reason, /length 4 outside 8\.\.8/);
  t.match((one('guest', encodeWinsize(80, 24)) as AgentPeerFault).reason, /unknown message type 5/, 'a host type from the guest');
});

t.test('guest messages round trip', async (t) => {
  const dec = (b: Buffer): ReturnType<typeof decodeGuestMessage> => decodeGuestMessage(frameOf('guest', b));
  t.same(dec(guestFrames.started(42)), { type: 'started', pid: 42 });
  t.same(dec(guestFrames.startFailed(127, 2, 'exec nosuch: No such file or directory')),
    { type: 'start-failed', status: 127, errno: 2, message: 'exec nosuch: No such file or directory' });
  t.same(dec(guestFrames.stdout(Buffer.from('out'))), { type: 'stdout', data: Buffer.from('out') });
  t.same(dec(guestFrames.stderr(Buffer.from('err'))), { type: 'stderr', data: Buffer.from('err') });
  t.same(dec(guestFrames.stdinAck(4096)), { type: 'stdin-ack', bytes: 4096 });
  t.same(dec(guestFrames.exit(3)), { type: 'exit', status: 3, signal: 0 });
  t.same(dec(guestFrames.exit(137, 9)), { type: 'exit', status: 137, signal: 9 });
  t.same(dec(guestFrames.error(1, 'too many execs running')), { type: 'error', code: 1, message: 'too many execs running' });
  t.equal(guestFrames.startFailed(126, 13, 'x'.repeat(2000)).length, HEADER_SIZE + 8 + MAX_TEXT, 'messages are cut to MAX_TEXT');
});

t.test('guest values out of range are protocol errors', async (t) => {
  const dec = (b: Buffer): ReturnType<typeof decodeGuestMessage> => decodeGuestMessage(frameOf('guest', b));
  t.type(dec(guestFrames.started(0)), AgentPeerFault, 'pid 0');
  t.type(dec(guestFrames.startFailed(0, 0, '')), AgentPeerFault, 'start failure with status 0');
  t.type(dec(guestFrames.startFailed(128, 0, '')), AgentPeerFault, 'start failure with status 128');
  t.type(dec(guestFrames.exit(256)), AgentPeerFault, 'status 256');
  t.type(dec(guestFrames.exit(3, 9)), AgentPeerFault, 'a signal that does not match the status');
  t.type(dec(guestFrames.exit(128 + 65, 65)), AgentPeerFault, 'signal 65');
  t.type(dec(guestFrames.stdinAck(0)), AgentPeerFault, 'ack of 0');
  t.type(dec(guestFrames.stdinAck(STDIN_WINDOW + 1)), AgentPeerFault, 'ack over the window');
});

t.test('the decoder checks the header before buffering a payload', async (t) => {
  const bad = (from: 'guest' | 'host', b: Uint8Array, reason: RegExp, what: string): void => {
    const r = one(from, b);
    t.type(r, AgentPeerFault, what);
    t.match((r as AgentPeerFault).reason, reason, what);
  };
  bad('guest', Buffer.from([0x45, 0x59, 1, MsgType.EXIT, 8, 0, 0, 0]), /magic/, 'bad magic');
  bad('guest', Buffer.from([0x45, 0x58, 2, MsgType.EXIT, 8, 0, 0, 0]), /version 2/, 'version 2');
  bad('guest', Buffer.from([0x45, 0x58, 1, 99, 0, 0, 0, 0]), /unknown message type 99/, 'unknown type');
  bad('guest', encodeStdin(Buffer.from('x')), /unknown message type 2/, 'a host type from the guest');
  bad('host', guestFrames.exit(0), /unknown message type 21/, 'a guest type from the host');
  bad('guest', guestFrames.raw(MsgType.STDOUT, Buffer.alloc(0)), /length 0/, 'empty STDOUT');
  bad('guest', guestFrames.raw(MsgType.EXIT, Buffer.alloc(4)), /length 4/, 'short EXIT');
  const huge = Buffer.from([0x45, 0x58, 1, MsgType.STDOUT, 0xff, 0xff, 0xff, 0xff]);
  bad('guest', huge, /length 4294967295/, 'a 4 GiB STDOUT is refused on its header alone');
  bad('guest', Buffer.from([0x45, 0x58, 1, MsgType.STDOUT, 1, 0, 1, 0]), /outside 1\.\.65536/, 'MAX_DATA + 1');

  const d = new FrameDecoder('guest');
  d.push(Buffer.from([0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]));
  t.type(d.next(), AgentPeerFault);
  d.push(guestFrames.exit(0));
  t.type(d.next(), AgentPeerFault, 'a failed decoder stays failed');
  t.equal(d.buffered, 0, 'and holds nothing');
});

t.test('frames split at every byte and glued together decode the same', async (t) => {
  const frames = [guestFrames.started(7), guestFrames.stdout(Buffer.alloc(MAX_DATA, 1)), guestFrames.stderr(Buffer.from('e')),
    guestFrames.stdinAck(10), guestFrames.exit(0)];
  const all = Buffer.concat(frames);
  const expect = frames.map((f) => frameOf('guest', f));
  for (const step of [1, 3, 8, 4096, all.length]) {
    const d = new FrameDecoder('guest');
    const got: Frame[] = [];
    let maxHeld = 0;
    for (let i = 0; i < all.length; i += step) {
      d.push(all.subarray(i, i + step));
      maxHeld = Math.max(maxHeld, d.buffered);
      for (let f = d.next(); f !== null; f = d.next()) {
        if (f instanceof AgentPeerFault) throw new Error(f.reason);
        got.push(f);
      }
    }
    t.same(got.map((f) => [f.type, f.payload.length]), expect.map((f) => [f.type, f.payload.length]), `chunks of ${step}`);
    t.ok(maxHeld <= HEADER_SIZE + MAX_DATA + step, `holds at most one frame plus a chunk (${maxHeld})`);
  }
});

t.test('random bytes never throw', async (t) => {
  let seed = 12345;
  const rnd = (): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed >>> 8; };
  let frames = 0;
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.alloc(rnd() % 64);
    for (let j = 0; j < b.length; j++) b[j] = rnd() & 0xff;
    // Half of them get a plausible header (right magic and version, a small length).
    if (b.length >= HEADER_SIZE && rnd() % 2 === 0) {
      b[0] = 0x45; b[1] = 0x58; b[2] = 1; b[3] = rnd() % 2 === 0 ? 1 + (rnd() % 4) : 16 + (rnd() % 8);
      b.writeUInt32LE(rnd() % (b.length - HEADER_SIZE + 1), 4);
    }
    for (const from of ['guest', 'host'] as const) {
      const d = new FrameDecoder(from);
      d.push(b);
      for (let f = d.next(); f !== null && !(f instanceof AgentPeerFault); f = d.next()) {
        frames++;
        if (from === 'guest') decodeGuestMessage(f);
        else decodeHostMessage(f);
      }
    }
  }
  t.pass(`2000 random buffers, ${frames} frames decoded, nothing thrown`);
});

t.test('signals: names and numbers (Linux x86-64)', async (t) => {
  t.equal(signalNumber('SIGKILL'), 9);
  t.equal(signalNumber('SIGTERM'), 15);
  t.equal(signalNumber('SIGWINCH'), 28);
  t.equal(signalNumber(34), 34, 'real-time signals by number');
  t.throws(() => signalNumber(0), { code: 'INVALID_ARGUMENT' });
  t.throws(() => signalNumber(65), { code: 'INVALID_ARGUMENT' });
  t.throws(() => signalNumber('SIGBREAK'), { code: 'INVALID_ARGUMENT' }, 'not a Linux signal');
  t.equal(signalName(9), 'SIGKILL');
  t.equal(signalName(6), 'SIGABRT');
  t.equal(signalName(29), 'SIGIO');
  t.equal(signalName(40), undefined);
});
