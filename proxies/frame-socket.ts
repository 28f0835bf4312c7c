// The virtio-net frame backend over a stream socket in the "qemu" framing
// (frame-stream.ts): passt's socketpair and gvproxy's `-listen-qemu unix://` socket are
// the same thing to the device. Also the start-up probe both use: an ARP request for
// the gateway, answered once the network process runs.
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { ArpOp, encodeArp, encodeEthernet, equalBytes, EtherType, ipv4FromString, isMulticastMac, macFromString, parseArp, parseEthernet } from '../netstack/index.js';
import { TsiboxError } from '../src/errors.js';
import type { FrameBackend, FramePort } from '../netstack/frame-port.js';
import { encodeFrame, FrameReader, FramingError } from './frame-stream.js';

/** FrameBackend over a connected stream socket carrying length-prefixed Ethernet frames. */
export class FrameSocketBackend implements FrameBackend {
  readonly #sock: Socket;
  readonly #log: Logger;
  readonly #reader: FrameReader;
  readonly #peer: string;
  #port: FramePort | null = null;
  #closed = false;
  #paused = false;
  #waitingDrain = false;
  framesIn = 0;
  framesOut = 0;

  /**
   * Takes a connected socket (paused); frames flow once attached. `reader` carries
   * bytes already read past the probe; `peer` names the other end in messages.
   */
  constructor(sock: Socket, log: Logger, reader = new FrameReader(), peer = 'passt') {
    this.#sock = sock;
    this.#log = log;
    this.#reader = reader;
    this.#peer = peer;
  }

  attach(port: FramePort): void {
    if (this.#port !== null) throw new TsiboxError('INVALID_STATE', `${this.#peer} backend is already attached`);
    this.#port = port;
    this.#sock.on('data', (chunk: Buffer) => { this.#onData(chunk); });
    this.#sock.once('close', () => { this.#end(this.#closed ? null : `${this.#peer} closed its end of the frame stream`); });
    this.#sock.on('drain', () => {
      if (!this.#waitingDrain) return;
      this.#waitingDrain = false;
      this.#port?.writable();
    });
    if (!this.#paused) this.#sock.resume();
  }

  #onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.#reader.feed(chunk);
    } catch (err) {
      if (!(err instanceof FramingError)) throw err;
      this.#log.warn({ reason: err.message }, `${this.#peer} broke the frame stream: closing it`);
      this.#end(err.message);
      return;
    }
    for (const f of frames) {
      this.framesIn++;
      this.#port?.deliver(f);
    }
  }

  #end(reason: string | null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sock.destroy();
    this.#port?.closed(reason);
  }

  send(frame: Uint8Array): boolean {
    if (this.#closed) return true;
    this.framesOut++;
    const ok = this.#sock.write(encodeFrame(frame));
    if (!ok) this.#waitingDrain = true;
    return ok;
  }

  pause(): void {
    this.#paused = true;
    this.#sock.pause();
  }

  resume(): void {
    this.#paused = false;
    if (this.#port !== null && !this.#closed) this.#sock.resume();
  }

  close(): void {
    this.#end(null);
  }
}

/** An Ethernet ARP request "who has `target`? tell `sender`" from `mac` (6 bytes). */
export function arpRequest(mac: Uint8Array, sender: string, target: string): Buffer {
  const s = ipv4FromString(sender);
  const t = ipv4FromString(target);
  if (s === null || t === null) throw new TsiboxError('INVALID_ARGUMENT', `ARP probe: ${sender} / ${target} are not IPv4 addresses`);
  const arp = encodeArp({ op: ArpOp.Request, senderMac: mac, senderIp: s, targetMac: new Uint8Array(6), targetIp: t });
  return encodeEthernet(new Uint8Array(6).fill(0xff), mac, EtherType.ARP, arp);
}

/** The MAC as bytes, or INVALID_ARGUMENT naming `who`. */
export function macBytes(mac: string, who: string): Uint8Array {
  const b = macFromString(mac);
  if (b === null) throw new TsiboxError('INVALID_ARGUMENT', `${who}: MAC ${JSON.stringify(mac)} is not aa:bb:cc:dd:ee:ff`);
  // A guest NIC's address is unicast (the virtio-net device refuses the rest too).
  if (isMulticastMac(b)) throw new TsiboxError('INVALID_ARGUMENT', `${who}: MAC ${mac} is a multicast address`);
  return b;
}

function isArpReplyFrom(f: Buffer, ip: Uint8Array): boolean {
  const eth = parseEthernet(f);
  if (!eth.ok || eth.value.etherType !== EtherType.ARP) return false;
  const arp = parseArp(f, eth.value.payloadOffset);
  return arp.ok && arp.value.op === ArpOp.Reply && equalBytes(arp.value.senderIp, ip);
}

export interface ArpProbe {
  mac: Uint8Array;
  /** The guest's address (ARP sender) and the gateway that must answer. */
  address: string;
  gateway: string;
  timeoutMs: number;
  /** Settles when the network process has ended (the probe then fails at once). */
  ended: Promise<unknown>;
}

/**
 * Sends the probe on `sock` and waits for the gateway's ARP reply. Resolves 'ok' (the
 * socket is left paused, `reader` holding any partial frame), or why not: 'exit',
 * 'timeout', or a framing error's text.
 */
export async function probeArp(sock: Socket, reader: FrameReader, p: ArpProbe): Promise<'ok' | 'exit' | 'timeout' | string> {
  const gw = ipv4FromString(p.gateway);
  if (gw === null) throw new TsiboxError('INVALID_ARGUMENT', `ARP probe: gateway ${p.gateway} is not IPv4`);
  const probe = arpRequest(p.mac, p.address, p.gateway);
  return new Promise((resolve) => {
    let done = false;
    const timer = setTimeout(() => { finish('timeout'); }, p.timeoutMs);
    const onData = (chunk: Buffer): void => {
      let frames: Buffer[];
      try {
        frames = reader.feed(chunk);
      } catch (err) {
        finish(`broke the framing: ${(err as Error).message}`);
        return;
      }
      if (frames.some((f) => isArpReplyFrom(f, gw))) finish('ok');
    };
    const onClose = (): void => { finish('exit'); };
    function finish(r: string): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.pause(); // later frames wait for the device (attach resumes)
      sock.off('data', onData);
      sock.off('close', onClose);
      resolve(r);
    }
    sock.on('data', onData);
    sock.once('close', onClose);
    void p.ended.then(() => { finish('exit'); });
    sock.write(encodeFrame(probe));
  });
}
