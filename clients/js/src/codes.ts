/**
 * The error codes of error frames and the close codes of the wasmgate client protocol
 * (docs/protocol.md, "Error frames" and "Close codes"). A unit test compares these tables with
 * the document's, so they cannot drift apart.
 */

/** Who caused an error, as the gateway reports it. */
export type Blame = "client" | "script" | "upstream" | "gateway";

/** One error frame code: who is to blame, and whether the same request can succeed later. */
export interface ErrorCodeInfo {
  blame: Blame;
  retryable: boolean;
}

/** Every error frame `code` a session can receive (close reasons are in {@link CLOSE_CODES}). */
export const ERROR_CODES = {
  not_logged_in: { blame: "client", retryable: false },
  already_logged_in: { blame: "client", retryable: false },
  bad_request: { blame: "client", retryable: false },
  unknown_message: { blame: "client", retryable: false },
  forbidden: { blame: "client", retryable: false },
  unknown_dest: { blame: "gateway", retryable: false },
  upstream_unavailable: { blame: "upstream", retryable: true },
  upstream_busy: { blame: "upstream", retryable: true },
  upstream_timeout: { blame: "upstream", retryable: true },
  upstream_error: { blame: "upstream", retryable: false },
  script_error: { blame: "script", retryable: true },
  not_in_room: { blame: "client", retryable: false },
  room_full: { blame: "client", retryable: true },
  too_many_rooms: { blame: "client", retryable: false },
  rooms_unavailable: { blame: "script", retryable: true },
  invalid_token: { blame: "client", retryable: false },
  expired: { blame: "client", retryable: false },
  auth_unavailable: { blame: "script", retryable: true },
  duplicate_login: { blame: "client", retryable: true },
  rate_limited: { blame: "client", retryable: true },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** WebSocket close codes the gateway uses, by reason name. */
export const CLOSE_CODES = {
  normal: 1000,
  going_away: 1001,
  node_restarting: 1012,
  malformed_frame: 1002,
  transport_error: 1002,
  malformed_json: 1007,
  invalid_utf8: 1007,
  message_too_big: 1009,
  script_close: 4000,
  login_timeout: 4001,
  heartbeat_timeout: 4002,
  auth_rejected: 4003,
  kicked: 4004,
  slow_consumer: 4005,
  replaced: 4006,
  rate_limited: 4007,
} as const;

export type CloseReason = keyof typeof CLOSE_CODES;

/**
 * Close codes after which reconnecting cannot help without a change on the client's side: a
 * refused login, a kick, a newer login of the same user. The client does not reconnect after
 * these (nor after its own `close()`).
 */
export const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([4003, 4004, 4006]);

/** The reason name of a close code (the first, where two share a code), or undefined. */
export function closeReasonOf(code: number): CloseReason | undefined {
  for (const [name, value] of Object.entries(CLOSE_CODES)) {
    if (value === code) return name as CloseReason;
  }
  return undefined;
}
