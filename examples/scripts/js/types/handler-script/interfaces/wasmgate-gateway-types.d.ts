declare module 'wasmgate:gateway/types@0.1.0' {
  /**
   * How a client reached the gateway.
   * # Variants
   * 
   * ## `"websocket"`
   * 
   * WebSocket (RFC 6455), binary or text frames.
   * ## `"tcp"`
   * 
   * Plain TCP with length-prefixed frames.
   */
  export type Transport = 'websocket' | 'tcp';
  /**
   * What the host knows about a connection when it asks a script about it.
   */
  export interface Session {
    /**
     * Gateway-wide unique session id (node id, creation time, sequence; see
     * docs/protocol.md). Stable for the life of the connection.
     */
    id: bigint,
    /**
     * Id of the gateway node that holds the connection.
     */
    nodeId: number,
    /**
     * Transport the client used.
     */
    transport: Transport,
    /**
     * Remote address as `ip:port`.
     */
    peerAddr: string,
    /**
     * User id, once the session has logged in; `none` before.
     */
    userId?: string,
  }
  /**
   * One client message: the gateway's client packet without its framing.
   */
  export interface Packet {
    /**
     * Message id (the key of `message_map`).
     */
    msgId: number,
    /**
     * Client-chosen sequence number, echoed in replies and error frames.
     */
    seq: number,
    /**
     * Payload bytes, opaque to the gateway. For WebSocket text frames this is the JSON
     * `data` value (a JSON string's contents, otherwise its JSON text).
     */
    body: Uint8Array,
  }
}
