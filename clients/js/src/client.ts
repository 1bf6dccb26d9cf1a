import { FINAL_CLOSE_CODES } from "./codes.js";
import { BufferFullError, ClosedError, GatewayError, TimeoutError } from "./errors.js";
import { type Body, Packet, decodeBinary, decodeJson, encodeBinary, encodeJson } from "./packet.js";

/** The gateway's built-in route ids (`[routes]` in its config; these are its defaults). */
export interface Routes {
  login: number;
  heartbeat: number;
  close: number;
  error: number;
  join: number;
  leave: number;
  roomMessage: number;
  roomList: number;
  push: number;
}

export const DEFAULT_ROUTES: Routes = {
  login: 1,
  heartbeat: 2,
  close: 3,
  error: 4,
  join: 5,
  leave: 6,
  roomMessage: 7,
  roomList: 8,
  push: 9,
};

/** How the client reconnects after a connection is lost. */
export interface ReconnectOptions {
  /** First delay, milliseconds (default 500). */
  initialMs?: number;
  /** Largest delay, milliseconds (default 10000). */
  maxMs?: number;
  /** Attempts in a row before giving up (default: never give up). */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** The gateway's WebSocket URL, e.g. `ws://127.0.0.1:7100/ws`. */
  url: string;
  /** The login token, or a function giving one (called at each connect, so it can refresh). */
  token?: string | (() => string | Promise<string>);
  /** Log in with `?token=` on the URL instead of a login packet (no login answer then). */
  tokenInQuery?: boolean;
  /** Binary frames (default) or JSON text frames. */
  format?: "binary" | "json";
  /** Heartbeat period, milliseconds (default 10000: half the gateway's default 20 s). */
  heartbeatMs?: number;
  /** How long a request waits for its answer, milliseconds (default 10000). */
  requestTimeoutMs?: number;
  /** Reconnect policy, or `false` to stay closed after a connection is lost. */
  reconnect?: ReconnectOptions | false;
  /** Packets kept while not connected (default 256); more are refused with BufferFullError. */
  maxBuffered?: number;
  /** The gateway's route ids, when its config changes them. */
  routes?: Partial<Routes>;
  /** A WebSocket constructor (default: the global one: browsers, Node >= 22 or with --experimental-websocket). */
  WebSocket?: typeof WebSocket;
}

/** The login answer (docs/protocol.md, built-in route 1). */
export interface Login {
  userId: string;
  sessionId: string;
  nodeId: number;
}

/** A room message as the default rooms script broadcasts it. */
export interface RoomMessage {
  room: string;
  from: string;
  data: unknown;
}

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface Events {
  /** Logged in (again, after a reconnect). */
  open: Login | undefined;
  /** Every packet received that is not the answer to a request, nor a heartbeat answer. */
  packet: Packet;
  /** A packet with seq 0 (a push, a broadcast). */
  push: Packet;
  /** A room message broadcast (route `roomMessage`, seq 0, the default rooms script's JSON). */
  room: RoomMessage;
  /** An error frame that answers no pending request (e.g. the reason before a close). */
  error: GatewayError;
  /** The connection ended. */
  close: ClosedError;
  /** A reconnect is scheduled. */
  reconnecting: { attempt: number; delayMs: number };
  state: State;
}

interface Waiting {
  resolve: (packet: Packet) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Queued {
  msgId: number;
  seq: number;
  body: Body;
}

/**
 * A wasmgate session over WebSocket that survives reconnects.
 *
 * Requests are answered by `seq`: `request()` resolves with the packet whose seq matches, or
 * rejects with a {@link GatewayError} (an error frame), a {@link TimeoutError} or a
 * {@link ClosedError} (the connection ended first: the request is not sent again, since the
 * gateway may have handled it). While not connected, packets wait in order in a buffer of
 * `maxBuffered` and go out after the next login; a full buffer refuses new ones with
 * {@link BufferFullError} (nothing already buffered is dropped).
 */
export class WasmgateClient {
  readonly routes: Routes;
  private readonly options: ClientOptions;
  private readonly WS: typeof WebSocket;
  private ws: WebSocket | undefined;
  private nextSeq = 0;
  private readonly waiting = new Map<number, Waiting>();
  private readonly buffered: Queued[] = [];
  private readonly listeners = new Map<keyof Events, Set<(value: never) => void>>();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private attempt = 0;
  private stopped = false;
  private _state: State = "idle";
  private _login: Login | undefined;

  constructor(options: ClientOptions) {
    this.options = options;
    this.routes = { ...DEFAULT_ROUTES, ...options.routes };
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    if (!WS) throw new Error("no WebSocket implementation: pass options.WebSocket");
    this.WS = WS;
  }

  get state(): State {
    return this._state;
  }

  /** The current login (undefined before it, and with `tokenInQuery`). */
  get login(): Login | undefined {
    return this._login;
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as (value: never) => void);
    return () => set.delete(listener as (value: never) => void);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of this.listeners.get(event) ?? []) (listener as (value: Events[K]) => void)(value);
  }

  private setState(state: State): void {
    if (this._state !== state) {
      this._state = state;
      this.emit("state", state);
    }
  }

  /**
   * Connects and logs in. Resolves with the login answer (undefined with `tokenInQuery` or
   * without a token); rejects when the first login is refused (a GatewayError such as
   * `invalid_token`) or the connection fails. Later losses reconnect on their own.
   */
  connect(): Promise<Login | undefined> {
    this.stopped = false;
    return this.open();
  }

  private async open(): Promise<Login | undefined> {
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    let url = this.options.url;
    if (token !== undefined && this.options.tokenInQuery) {
      url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    }
    const ws = new this.WS(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    return new Promise<Login | undefined>((resolve, reject) => {
      let settled = false;
      const settle = (error?: Error, login?: Login) => {
        if (settled) return;
        settled = true;
        if (error) reject(error);
        else resolve(login);
      };
      ws.onmessage = (event) => this.receive(event.data as ArrayBuffer | string);
      ws.onclose = (event) => {
        const error = new ClosedError(event.code, event.reason);
        this.closed(ws, error);
        settle(error);
      };
      ws.onopen = () => {
        const loggedIn = (login: Login | undefined) => {
          this._login = login;
          this.attempt = 0;
          this.setState("open");
          this.startHeartbeat();
          this.flush();
          this.emit("open", login);
          settle(undefined, login);
        };
        if (token === undefined || this.options.tokenInQuery) return loggedIn(undefined);
        const seq = this.takeSeq();
        this.await(seq, this.options.requestTimeoutMs ?? 10_000, this.routes.login)
          .then((packet) => {
            const body = packet.json<{ user_id: string; session_id: string; node_id: number }>();
            loggedIn({ userId: body.user_id, sessionId: body.session_id, nodeId: body.node_id });
          })
          .catch((error: Error) => settle(error));
        this.write(this.routes.login, seq, token);
      };
    });
  }

  /** Sends a request and waits for the packet answering its seq. */
  request(msgId: number, body?: Body, options?: { timeoutMs?: number }): Promise<Packet> {
    const seq = this.takeSeq();
    const answer = this.await(seq, options?.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000, msgId);
    try {
      this.enqueue(msgId, seq, body);
    } catch (error) {
      this.settle(seq, error as Error);
    }
    return answer;
  }

  /** Sends a packet without waiting for an answer; returns its seq. An error frame answering
   * it arrives as an `error` event. Throws BufferFullError when it cannot be buffered. */
  send(msgId: number, body?: Body): number {
    const seq = this.takeSeq();
    this.enqueue(msgId, seq, body);
    return seq;
  }

  /** Joins a room (route `join`): `{room, members, status}`. */
  async join(room: string, data?: unknown): Promise<{ room: string; members: number; status: string }> {
    return (await this.request(this.routes.join, data === undefined ? { room } : { room, data })).json();
  }

  /** Leaves a room (route `leave`): `{room, members, status}`. */
  async leave(room: string): Promise<{ room: string; members: number; status: string }> {
    return (await this.request(this.routes.leave, { room })).json();
  }

  /** Sends a message to a room the session is in (route `roomMessage`); members receive the
   * rooms script's broadcast as `room` events. Returns the packet's seq. */
  say(room: string, data: unknown): number {
    return this.send(this.routes.roomMessage, { room, data });
  }

  /** The room list (route `roomList`). */
  async rooms(prefix?: string): Promise<{ rooms: { room: string; members: number }[]; total: number }> {
    return (await this.request(this.routes.roomList, prefix === undefined ? undefined : { prefix })).json();
  }

  /** Closes the session (route `close`, then the WebSocket) and stops reconnecting. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    const ws = this.ws;
    if (ws && ws.readyState === ws.OPEN) {
      this.write(this.routes.close, 0, undefined);
      ws.close(1000, "client closed");
    } else {
      this.setState("closed");
    }
    for (const queued of this.buffered.splice(0)) this.settle(queued.seq, new ClosedError(1000, "client closed"));
  }

  private takeSeq(): number {
    this.nextSeq = this.nextSeq >= 0xffff_ffff ? 1 : this.nextSeq + 1;
    return this.nextSeq;
  }

  private await(seq: number, ms: number, msgId: number): Promise<Packet> {
    return new Promise<Packet>((resolve, reject) => {
      const timer = setTimeout(() => {
        const index = this.buffered.findIndex((q) => q.seq === seq);
        if (index >= 0) this.buffered.splice(index, 1);
        this.settle(seq, new TimeoutError(msgId, seq, ms));
      }, ms);
      this.waiting.set(seq, { resolve, reject, timer });
    });
  }

  private settle(seq: number, outcome: Packet | Error): boolean {
    const waiting = this.waiting.get(seq);
    if (!waiting) return false;
    this.waiting.delete(seq);
    clearTimeout(waiting.timer);
    if (outcome instanceof Packet) waiting.resolve(outcome);
    else waiting.reject(outcome);
    return true;
  }

  private enqueue(msgId: number, seq: number, body: Body): void {
    if (this._state === "open" && this.ws?.readyState === this.ws?.OPEN) {
      this.write(msgId, seq, body);
      return;
    }
    if (this.stopped) throw new ClosedError(1000, "client closed");
    const limit = this.options.maxBuffered ?? 256;
    if (this.buffered.length >= limit) throw new BufferFullError(limit);
    this.buffered.push({ msgId, seq, body });
  }

  private flush(): void {
    for (const queued of this.buffered.splice(0)) this.write(queued.msgId, queued.seq, queued.body);
  }

  private write(msgId: number, seq: number, body: Body): void {
    const ws = this.ws;
    if (!ws) return;
    if (this.options.format === "json") ws.send(encodeJson(msgId, seq, body));
    else ws.send(encodeBinary(msgId, seq, body));
  }

  private receive(data: ArrayBuffer | string): void {
    let packet: Packet;
    try {
      packet = typeof data === "string" ? decodeJson(data) : decodeBinary(data);
    } catch {
      return; // The gateway only sends packets; nothing else to do with a frame that is not one.
    }
    if (packet.msgId === this.routes.error) {
      let body: { code?: string; message?: string; result?: number } = {};
      try {
        body = packet.json();
      } catch {
        /* an error frame is JSON; keep what there is */
      }
      const error = new GatewayError(body.code ?? "unknown", body.message ?? "", packet.seq, body.result);
      if (packet.seq === 0 || !this.settle(packet.seq, error)) this.emit("error", error);
      return;
    }
    if (packet.seq !== 0 && this.settle(packet.seq, packet)) return;
    if (packet.msgId === this.routes.heartbeat && packet.seq === 0) return;
    this.emit("packet", packet);
    if (packet.seq === 0) {
      this.emit("push", packet);
      if (packet.msgId === this.routes.roomMessage) {
        try {
          this.emit("room", packet.json<RoomMessage>());
        } catch {
          /* a room message that is not the default script's JSON: the push event has it */
        }
      }
    }
  }

  private startHeartbeat(): void {
    clearInterval(this.heartbeat);
    const period = this.options.heartbeatMs ?? 10_000;
    this.heartbeat = setInterval(() => {
      if (this._state === "open") this.write(this.routes.heartbeat, 0, undefined);
    }, period);
    (this.heartbeat as { unref?: () => void }).unref?.();
  }

  private closed(ws: WebSocket, error: ClosedError): void {
    if (ws !== this.ws) return;
    clearInterval(this.heartbeat);
    this._login = undefined;
    // Requests already written may or may not have been handled: they fail, not resend.
    for (const seq of [...this.waiting.keys()]) {
      if (!this.buffered.some((q) => q.seq === seq)) this.settle(seq, error);
    }
    this.emit("close", error);
    const policy = this.options.reconnect;
    const gaveUp = policy !== false && policy?.maxAttempts !== undefined && this.attempt >= policy.maxAttempts;
    if (this.stopped || policy === false || FINAL_CLOSE_CODES.has(error.code) || gaveUp) {
      this.setState("closed");
      for (const queued of this.buffered.splice(0)) this.settle(queued.seq, error);
      return;
    }
    const initial = policy?.initialMs ?? 500;
    const max = policy?.maxMs ?? 10_000;
    // Exponential back-off with jitter: between half and all of the doubled delay.
    const delayMs = Math.round(Math.min(max, initial * 2 ** this.attempt) * (0.5 + Math.random() / 2));
    this.attempt += 1;
    this.setState("reconnecting");
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    this.retry = setTimeout(() => {
      this.open().catch(() => {
        /* the close handler schedules the next attempt */
      });
    }, delayMs);
  }
}
