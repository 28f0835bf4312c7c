// virtio-console MULTIPORT control messages (virtio 1.2 §5.3.6.2): 8 bytes,
// little-endian { u32 id; u16 event; u16 value }, optionally followed by data
// (the port name for PORT_NAME).

export const ConsoleFeature = {
  SIZE: 1n << 0n,
  MULTIPORT: 1n << 1n,
  EMERG_WRITE: 1n << 2n,
} as const;

export const ControlEvent = {
  DEVICE_READY: 0,
  DEVICE_ADD: 1,
  DEVICE_REMOVE: 2,
  PORT_READY: 3,
  CONSOLE_PORT: 4,
  RESIZE: 5,
  PORT_OPEN: 6,
  PORT_NAME: 7,
} as const;

export const CONTROL_HEADER_SIZE = 8;

export interface ControlMessage {
  id: number;
  event: number;
  value: number;
}

export function encodeControl(msg: ControlMessage, payload?: Uint8Array): Uint8Array {
  const out = new Uint8Array(CONTROL_HEADER_SIZE + (payload?.length ?? 0));
  const v = new DataView(out.buffer);
  v.setUint32(0, msg.id >>> 0, true);
  v.setUint16(4, msg.event, true);
  v.setUint16(6, msg.value, true);
  if (payload) out.set(payload, CONTROL_HEADER_SIZE);
  return out;
}

/** Decodes a control message header; null when the buffer is too short. */
export function decodeControl(bytes: Uint8Array): ControlMessage | null {
  if (bytes.length < CONTROL_HEADER_SIZE) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { id: v.getUint32(0, true), event: v.getUint16(4, true), value: v.getUint16(6, true) };
}

/** Queue index of a port's receive queue (host→guest); transmit is the next one. */
export function portRxQueue(portId: number): number {
  return portId === 0 ? 0 : 2 * (portId + 1);
}

export const CONTROL_RX_QUEUE = 2;
export const CONTROL_TX_QUEUE = 3;
