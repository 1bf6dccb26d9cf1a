/// <reference path="./wasmgate-gateway-types.d.ts" />
declare module 'wasmgate:gateway/handler@0.1.0' {
  /**
   * Called once per instance before any other call, with the `config` table of the
   * script's manifest entry as JSON text. An error refuses the script (the deploy or the
   * `message_map` reload that brought it in is rejected; the running version stays).
   */
  export function init(config: string): void;
  /**
   * Handles `packet` (one of this script's message ids) from a logged-in `session`.
   */
  export function handle(session: Session, packet: Packet): Outcome;
  /**
   * The state the script keeps between calls, as bytes of its own format. Called only for
   * scripts the manifest marks `stateful` (they run as one instance), on the live instance
   * just before it is replaced by a new version; no call runs between `snapshot` and the
   * swap. A stateless script returns an empty list. An error refuses the swap.
   */
  export function snapshot(): Uint8Array;
  /**
   * Called on the new version's instance, after `init`, with the old version's snapshot
   * (an empty list when the old version had no live instance: its state was lost to a
   * trap). An error (a format it cannot read, say) refuses the swap: the old version stays
   * live with its state.
   */
  export function restore(state: Uint8Array): void;
  export type Session = import('wasmgate:gateway/types@0.1.0').Session;
  export type Packet = import('wasmgate:gateway/types@0.1.0').Packet;
  /**
   * A packet back to the sender; it carries the request's seq.
   */
  export interface Answer {
    msgId: number,
    body: Uint8Array,
  }
  /**
   * Why a packet is refused; the client gets an error frame with the case name
   * (`bad_request`, `forbidden`) and the packet's seq. The session stays open.
   */
  export type HandlerError = HandlerErrorBadRequest | HandlerErrorForbidden;
  export interface HandlerErrorBadRequest {
    tag: 'bad-request',
    val: string,
  }
  export interface HandlerErrorForbidden {
    tag: 'forbidden',
    val: string,
  }
  /**
   * What to do with a packet (the router's `decision`, minus `unknown-message`: the map
   * sent the packet here).
   */
  export type Outcome = OutcomeForward | OutcomeReply | OutcomeDrop | OutcomeClose | OutcomeReject;
  /**
   * Send the packet to the upstream queue pool of this dest id (`dest_map.json`).
   */
  export interface OutcomeForward {
    tag: 'forward',
    val: number,
  }
  /**
   * Answer the client directly.
   */
  export interface OutcomeReply {
    tag: 'reply',
    val: Answer,
  }
  /**
   * Discard the packet (counted in metrics).
   */
  export interface OutcomeDrop {
    tag: 'drop',
  }
  /**
   * Close the session (WebSocket close code 4000, reason truncated to 120 bytes).
   */
  export interface OutcomeClose {
    tag: 'close',
    val: string,
  }
  /**
   * Refuse the packet with an error frame.
   */
  export interface OutcomeReject {
    tag: 'reject',
    val: HandlerError,
  }
}
