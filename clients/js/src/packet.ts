/**
 * Client packets (docs/protocol.md, "Packet"): binary frames are `msg_id u32`, `seq u32`
 * (big-endian), then the body; text frames are `{"id", "seq", "data"}` JSON.
 */

/** What a request or send may carry: bytes as they are, a string as UTF-8, anything else as JSON. */
export type Body = Uint8Array | string | object | undefined;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One packet received from the gateway. */
export class Packet {
  constructor(
    readonly msgId: number,
    readonly seq: number,
    readonly body: Uint8Array,
  ) {}

  /** The body as UTF-8 text. */
  text(): string {
    return decoder.decode(this.body);
  }

  /** The body parsed as JSON. Throws a SyntaxError when it is not JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text()) as T;
  }
}

/** The bytes of a body. */
export function bodyBytes(body: Body): Uint8Array {
  if (body === undefined) return new Uint8Array(0);
  if (body instanceof Uint8Array) return body;
  if (typeof body === "string") return encoder.encode(body);
  return encoder.encode(JSON.stringify(body));
}

/** A binary frame: the 8-byte header, then the body. */
export function encodeBinary(msgId: number, seq: number, body: Body): Uint8Array {
  const bytes = bodyBytes(body);
  const frame = new Uint8Array(8 + bytes.length);
  const view = new DataView(frame.buffer);
  view.setUint32(0, msgId >>> 0);
  view.setUint32(4, seq >>> 0);
  frame.set(bytes, 8);
  return frame;
}

/** Decodes a binary frame; throws a RangeError when it is shorter than the header. */
export function decodeBinary(frame: ArrayBuffer | Uint8Array): Packet {
  const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
  if (bytes.length < 8) throw new RangeError(`a ${bytes.length}-byte frame is shorter than the 8-byte header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return new Packet(view.getUint32(0), view.getUint32(4), bytes.subarray(8));
}

/**
 * A text frame. A string body goes as a JSON string, an object as itself, bytes as their UTF-8
 * text (the gateway hands scripts and backends a string's contents, other values' JSON text).
 */
export function encodeJson(msgId: number, seq: number, body: Body): string {
  const packet: { id: number; seq: number; data?: unknown } = { id: msgId, seq };
  if (body instanceof Uint8Array) {
    if (body.length > 0) packet.data = decoder.decode(body);
  } else if (body !== undefined) {
    packet.data = body;
  }
  return JSON.stringify(packet);
}

/** Decodes a text frame: `data` (a string's contents, other values' JSON text) or `data_b64`. */
export function decodeJson(text: string): Packet {
  const value = JSON.parse(text) as { id?: unknown; seq?: unknown; data?: unknown; data_b64?: unknown };
  if (typeof value.id !== "number") throw new SyntaxError("a text frame without a numeric `id`");
  const seq = typeof value.seq === "number" ? value.seq : 0;
  let body: Uint8Array;
  if (typeof value.data_b64 === "string") {
    body = Uint8Array.from(atob(value.data_b64), (c) => c.charCodeAt(0));
  } else if (typeof value.data === "string") {
    body = encoder.encode(value.data);
  } else if (value.data === undefined) {
    body = new Uint8Array(0);
  } else {
    body = encoder.encode(JSON.stringify(value.data));
  }
  return new Packet(value.id, seq, body);
}
