import t from 'tap';
import { setImmediate as tick } from 'node:timers/promises';
import { Feature } from '../../src/virtio/constants.js';
import { ConsoleDevice, ConsoleFeature, ControlEvent, PortName } from '../../src/virtio/console/index.js';
import { ConsoleGuest } from './console-guest.js';

function collect(stream: NodeJS.ReadableStream): () => string {
  const chunks: Buffer[] = [];
  stream.on('data', (b: Buffer) => chunks.push(b));
  return () => Buffer.concat(chunks).toString();
}

t.test('multiport handshake names every port', (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  t.equal(g.ports.size, 5);
  t.ok(g.ports.get(0)!.console, 'port 0 is the console');
  t.same([1, 2, 3, 4].map((id) => g.ports.get(id)!.name), [PortName.STDIN, PortName.STDOUT, PortName.STDERR, PortName.STATUS]);
  for (const p of g.ports.values()) t.ok(p.hostOpen, `port ${p.id} host open`);
  t.ok(dev.ports[0]!.guestOpen, 'console opened by the guest');
  t.notOk(dev.port(PortName.STDIN)!.guestOpen, 'stdin not open until a guest process opens it');
  // Config space: cols, rows, max_nr_ports.
  const cfg = Buffer.from(g.h.driver.readConfig(0, 8));
  t.equal(cfg.readUInt16LE(0), 80);
  t.equal(cfg.readUInt16LE(2), 25);
  t.equal(cfg.readUInt32LE(4), 5);
  t.end();
});

t.test('guest to host: console, stdout, stderr', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  const hvc = collect(dev.ports[0]!.output);
  const out = collect(dev.port(PortName.STDOUT)!.output);
  const err = collect(dev.port(PortName.STDERR)!.output);
  g.write(0, 'Linux version 6.1\n');
  g.open(2);
  g.write(2, 'hello ');
  g.write(2, 'world\n');
  g.open(3);
  g.write(3, 'oops\n');
  await tick();
  t.equal(hvc(), 'Linux version 6.1\n');
  t.equal(out(), 'hello world\n');
  t.equal(err(), 'oops\n');
  t.end();
});

t.test('host to guest: stdin waits for the guest to open, EOF after end()', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  const stdin = dev.port(PortName.STDIN)!;
  let written = false;
  stdin.input.write('line one\n', () => { written = true; });
  await tick();
  g.pump();
  t.equal(g.read(1), '', 'nothing before the guest opens the port');
  t.notOk(written, 'write not complete yet');
  g.open(1);
  t.equal(g.read(1), 'line one\n');
  await tick();
  t.ok(written, 'write callback after the guest took the bytes');
  // A chunk larger than one receive buffer spans several buffers.
  const big = 'x'.repeat(1000);
  stdin.input.write(big);
  await tick();
  g.pump();
  t.equal(g.read(1), big);
  const ended = new Promise<void>((resolve) => stdin.input.end('bye', resolve));
  await tick();
  g.pump();
  await ended;
  g.pump();
  t.equal(g.read(1), 'bye');
  t.notOk(g.ports.get(1)!.hostOpen, 'host end closed: the guest sees EOF');
  const last = g.controlLog.at(-1)!;
  t.same(last, { id: 1, event: ControlEvent.PORT_OPEN, value: 0 });
  t.end();
});

t.test('console input goes to hvc0', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  dev.ports[0]!.input.write('ls\n');
  await tick();
  g.pump();
  t.equal(g.read(0), 'ls\n');
  t.end();
});

t.test('status port reports the exit status', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  const got = new Promise<number>((resolve) => dev.once('exit-status', resolve));
  g.open(4);
  g.write(4, 'garbage\n4');
  g.write(4, '2\n');
  t.equal(await got, 42);
  t.equal(dev.exitStatus, 42);
  g.write(4, '7\n');
  await tick();
  t.equal(dev.exitStatus, 42, 'first status wins');
  t.end();
});

t.test('stdout backpressure: the device stops taking buffers until read', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  g.open(2);
  const stdout = dev.port(PortName.STDOUT)!;
  const chunk = 'y'.repeat(400);
  let sent = 0;
  for (let i = 0; i < 60; i++) if (g.write(2, chunk)) sent++;
  // 16 KiB high-water mark: about 41 chunks fit; the rest stay in the tx ring.
  const tx = g.queues[portRxQueue2(2) + 1]!;
  t.ok(tx.inFlight > 0, 'guest buffers held back');
  t.ok(sent < 60, 'guest ran out of descriptors');
  let total = 0;
  stdout.output.on('data', (b: Buffer) => { total += b.length; });
  await tick();
  await tick();
  g.pump();
  t.equal(tx.inFlight, 0, 'drained after the consumer read');
  t.equal(total, sent * chunk.length);
  t.end();
});

function portRxQueue2(id: number): number {
  return id === 0 ? 0 : 2 * (id + 1);
}

t.test('without MULTIPORT only the console exists', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev, Feature.VERSION_1);
  t.teardown(() => { g.close(); });
  t.equal(g.h.transport.negotiatedFeatures & ConsoleFeature.MULTIPORT, 0n);
  const hvc = collect(dev.ports[0]!.output);
  g.write(0, 'early\n');
  dev.ports[0]!.input.write('in');
  await tick();
  g.pump();
  t.equal(hvc(), 'early\n');
  t.equal(g.read(0), 'in');
  t.end();
});

t.test('reset closes the guest ends; pending input survives', async (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  g.open(1);
  t.ok(dev.port(PortName.STDIN)!.guestOpen);
  g.h.driver.reset();
  t.notOk(dev.port(PortName.STDIN)!.guestOpen);
  dev.port(PortName.STDIN)!.input.write('later');
  await tick();
  t.equal(g.h.transport.phase, 'reset');
  t.end();
});

t.test('hostile control traffic is harmless', (t) => {
  const dev = new ConsoleDevice();
  const g = new ConsoleGuest(dev);
  t.teardown(() => { g.close(); });
  const ctl = g.queues[3]!;
  ctl.add([Buffer.from([1, 2, 3])], []); // short
  ctl.add([Buffer.from([99, 0, 0, 0, ControlEvent.PORT_OPEN, 0, 1, 0])], []); // unknown port
  ctl.add([Buffer.from([0, 0, 0, 0, 0x77, 0, 1, 0])], []); // unknown event
  ctl.add([Buffer.from([0, 0, 0, 0, ControlEvent.PORT_READY, 0, 0, 0])], []); // port failed
  ctl.kick();
  g.pump();
  t.equal(g.h.transport.needsResetReason, null);
  t.end();
});
