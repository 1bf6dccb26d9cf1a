/// <reference path="./wasmgate-gateway-types.d.ts" />
declare module 'wasmgate:gateway/router@0.1.0' {
  /**
   * Called once per instance before any other call, and again on a fresh instance every
   * time `message_map.json` changes. `config` is the script's JSON configuration;
   * `message-map` is the whole current map. Returns an error message when unusable: at start
   * the gateway refuses to start, on a reload it keeps the running router and map.
   */
  export function init(config: string, messageMap: Array<MessageRoute>): void;
  /**
   * Decides what happens to `packet`, sent by a logged-in `session`.
   */
  export function route(session: Session, packet: Packet): Decision;
  export type Session = import('wasmgate:gateway/types@0.1.0').Session;
  export type Packet = import('wasmgate:gateway/types@0.1.0').Packet;
  /**
   * One entry of `message_map.json`: message id -> dest id (seed 000 step 5.2).
   */
  export interface MessageRoute {
    msgId: number,
    destId: number,
  }
  /**
   * A message the gateway sends back to the client that sent the packet.
   */
  export interface Reply {
    msgId: number,
    body: Uint8Array,
  }
  /**
   * Why a packet is refused; the client receives an error frame with the code name
   * (`unknown_message`, `bad_request`, `forbidden`) and the packet's seq. The session stays
   * open.
   */
  export type RouteError = RouteErrorUnknownMessage | RouteErrorBadRequest | RouteErrorForbidden;
  /**
   * No route for this message id.
   */
  export interface RouteErrorUnknownMessage {
    tag: 'unknown-message',
  }
  /**
   * The packet is malformed for its message id; the string says how.
   */
  export interface RouteErrorBadRequest {
    tag: 'bad-request',
    val: string,
  }
  /**
   * The session may not send this message.
   */
  export interface RouteErrorForbidden {
    tag: 'forbidden',
    val: string,
  }
  /**
   * What to do with a packet.
   */
  export type Decision = DecisionForward | DecisionReply | DecisionDrop | DecisionClose | DecisionReject;
  /**
   * Send the packet to the upstream queue pool of this dest id (`dest_map.json`).
   * If the dest has no pool or is down the client gets an `upstream_unavailable` error.
   */
  export interface DecisionForward {
    tag: 'forward',
    val: number,
  }
  /**
   * Answer the client directly; the reply carries the packet's seq.
   */
  export interface DecisionReply {
    tag: 'reply',
    val: Reply,
  }
  /**
   * Discard the packet silently (the script decided so; counted in metrics).
   */
  export interface DecisionDrop {
    tag: 'drop',
  }
  /**
   * Close the session with this reason (WebSocket close code 4000, reason text
   * truncated to 120 bytes).
   */
  export interface DecisionClose {
    tag: 'close',
    val: string,
  }
  /**
   * Refuse the packet with an error frame; the session stays open.
   */
  export interface DecisionReject {
    tag: 'reject',
    val: RouteError,
  }
}
