import { type Blame, ERROR_CODES, type ErrorCode, closeReasonOf } from "./codes.js";

/** An error frame the gateway sent in answer to a request (docs/protocol.md, "Error frames"). */
export class GatewayError extends Error {
  override readonly name = "GatewayError";
  /** The frame's `code` (one of {@link ERROR_CODES}, or a close reason's name before a close). */
  readonly code: string;
  /** Who caused it; `undefined` for a code this client does not know. */
  readonly blame: Blame | undefined;
  /** Whether sending the same request again later can succeed. */
  readonly retryable: boolean;
  /** The seq of the packet it answers (0: none). */
  readonly seq: number;
  /** A Thrift backend's `ProtoReply.result` (`upstream_error` only). */
  readonly result: number | undefined;

  constructor(code: string, message: string, seq: number, result?: number) {
    super(`${code}: ${message}`);
    this.code = code;
    const info = (ERROR_CODES as Record<string, { blame: Blame; retryable: boolean }>)[code];
    this.blame = info?.blame;
    this.retryable = info?.retryable ?? false;
    this.seq = seq;
    this.result = result;
  }

  /** Whether this is a known error code. */
  isKnown(): this is GatewayError & { code: ErrorCode } {
    return this.code in ERROR_CODES;
  }
}

/** The connection closed (by the gateway, the network or `close()`). */
export class ClosedError extends Error {
  override readonly name = "ClosedError";
  /** The WebSocket close code (1006: closed without a close frame). */
  readonly code: number;
  /** The close reason's name (docs/protocol.md, "Close codes"), when the code is known. */
  readonly reason: string | undefined;

  constructor(code: number, detail: string) {
    super(`connection closed (${code}${detail ? `: ${detail}` : ""})`);
    this.code = code;
    this.reason = closeReasonOf(code);
  }
}

/** No answer to a request within its timeout. */
export class TimeoutError extends Error {
  override readonly name = "TimeoutError";
  constructor(readonly msgId: number, readonly seq: number, ms: number) {
    super(`no answer to message ${msgId} (seq ${seq}) within ${ms} ms`);
  }
}

/** A send refused because the buffer of packets waiting for a connection is full. */
export class BufferFullError extends Error {
  override readonly name = "BufferFullError";
  constructor(limit: number) {
    super(`${limit} packets already wait for the connection`);
  }
}
