declare module 'wasmgate:gateway/host@0.1.0' {
  /**
   * Writes a line to the gateway's log, tagged with the script name. Messages longer than
   * 4 KiB are truncated.
   */
  export function log(level: Level, message: string): void;
  /**
   * Wall-clock time in milliseconds since the Unix epoch.
   */
  export function nowMs(): bigint;
  /**
   * The ES id (seed 001's edge-server id) of the packet the current `router.route` or
   * `handler.handle` call is about: the `es_id` field of its ES header when the client is on
   * a TCP listener with `tcp.header = "es"` (docs/protocol.md); `none` for every other
   * client, and outside those calls.
   */
  export function packetEsId(): number | undefined;
  /**
   * Adds `value` to the script counter `name`, exported on `/metrics` as
   * `wasmgate_script_events_total{script="..",name=".."}`. Names longer than 64 bytes are
   * truncated; a script may use at most 64 distinct names, further names are ignored (and
   * logged once).
   */
  export function counterAdd(name: string, value: bigint): void;
  /**
   * Log severity.
   * # Variants
   * 
   * ## `"trace"`
   * 
   * ## `"debug"`
   * 
   * ## `"info"`
   * 
   * ## `"warn"`
   * 
   * ## `"error"`
   */
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
}
