declare module 'wasmgate:gateway/cluster@0.1.0' {
  /**
   * This node's id.
   */
  export function selfId(): number;
  /**
   * The registered nodes of `node-type` (all with `none`), ordered by id; this node
   * included.
   */
  export function nodes(nodeType: string | undefined): Array<NodeInfo>;
  /**
   * The node with `id`, if registered.
   */
  export function node(id: number): NodeInfo | undefined;
  /**
   * One node of `node-type`, chosen `how` (seed 004's `GetNodeOne`).
   */
  export function pickNode(nodeType: string, how: Pick): NodeInfo | undefined;
  /**
   * Queues `body` (message `msg-id`) for the backend of `dest-id` on node `node`; that
   * backend receives it as a `Relayed` frame from dest 0 ("a script") naming `session-id`
   * (0: none), so its replies reach that session wherever it is. At most once.
   */
  export function sendToNode(node: number, destId: number, sessionId: bigint, msgId: number, body: Uint8Array): void;
  /**
   * Like `send-to-node`, to one node of `node-type` that has `dest-id`, chosen `how`;
   * returns the node's id (seed 004's `SendOne`).
   */
  export function sendToType(nodeType: string, how: Pick, destId: number, sessionId: bigint, msgId: number, body: Uint8Array): number;
  /**
   * Like `send-to-node`, to every node of `node-type` that has `dest-id` (this node unless
   * `exclude-self`); returns how many were queued (seed 004's `SendByType`).
   */
  export function broadcastToType(nodeType: string, destId: number, sessionId: bigint, msgId: number, body: Uint8Array, excludeSelf: boolean): number;
  /**
   * A registered node (docs/cluster.md).
   */
  export interface NodeInfo {
    id: number,
    /**
     * Node type (`gateway`, or another service's own).
     */
    nodeType: string,
    /**
     * Server name.
     */
    name: string,
    /**
     * Open sessions.
     */
    load: bigint,
    version: string,
    /**
     * Dest ids the node has a queue pool for.
     */
    dests: Uint32Array,
  }
  /**
   * How to choose one node of a type.
   * # Variants
   * 
   * ## `"random"`
   * 
   * ## `"least-loaded"`
   */
  export type Pick = 'random' | 'least-loaded';
  /**
   * Why a send was not queued.
   */
  export type SendError = SendErrorNoSuchNode | SendErrorNoSuchDest | SendErrorUnavailable;
  /**
   * No node (of that id, or of that type with the dest) in discovery.
   */
  export interface SendErrorNoSuchNode {
    tag: 'no-such-node',
  }
  /**
   * The chosen node has no queue pool for the dest.
   */
  export interface SendErrorNoSuchDest {
    tag: 'no-such-dest',
  }
  /**
   * The bus queue or the dest's queue is full, or its connection is down; the string
   * says which.
   */
  export interface SendErrorUnavailable {
    tag: 'unavailable',
    val: string,
  }
}
