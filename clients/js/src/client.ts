import { Backoff, backoffDelay, defaultBackoff, retryHint } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { decode, encode } from "./msgpack.js";

/** The encoding on the wire: wsd.json (default) or wsd.msgpack. */
export type Protocol = "json" | "msgpack";

export type State = "disconnected" | "connecting" | "connected";

/** A place in a channel's stream. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface ClientOptions {
  /** "json" (default) or "msgpack". */
  protocol?: Protocol;
  /** A JWT, sent as the `token` query parameter (browsers cannot set headers on a WebSocket). */
  token?: string;
  /**
   * getToken returns a fresh token. It is called `refreshBefore` ms before
   * the current token's `exp` (the new one is sent with a `refresh`
   * message, the connection stays up), before connecting when there is no
   * token or it has expired, and after the server closed with 4001
   * (token expired).
   */
  getToken?: () => string | Promise<string>;
  /** How long before `exp` to refresh, in ms (default 30000). */
  refreshBefore?: number;
  /** Reconnect delays: exponential backoff with full jitter. */
  backoff?: Partial<Backoff>;
  /** How long a request (publish, presence, history, subscribe…) may wait for its reply, in ms (default 10000). */
  requestTimeout?: number;
  /**
   * Close codes after which the client does not reconnect (default
   * [1008]: a policy violation, which reconnecting would only repeat).
   */
  noReconnectCodes?: number[];
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** The random source of the jitter (default Math.random). */
  random?: () => number;
}

/** The part of the WHATWG WebSocket the client uses. */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** A publication on a channel. */
export interface Publication {
  channel: string;
  offset: number;
  epoch: string;
  data: unknown;
}

/** A presence entry, and who joined or left. */
export interface ClientInfo {
  client: string;
  user: string;
  info?: unknown;
}

export interface ConnectingEvent {
  /** Reconnect attempts since the last stable connection (0: the first). */
  attempt: number;
}
export interface ConnectedEvent {
  /** The subprotocol the server chose ("wsd.json" or "wsd.msgpack"). */
  protocol: string;
}
export interface DisconnectedEvent {
  /** The close code (1006 when the connection was lost without one). */
  code: number;
  reason: string;
  /** Whether the client will reconnect, and after how many ms. */
  reconnect: boolean;
  delay: number;
}

export interface ClientEvents {
  state: State;
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  /** A server error that answers no request, or a failed token refresh. */
  error: Error;
}

export interface SubscribedEvent extends StreamPosition {
  /** The subscribe asked to recover from a position (a resubscribe, or the `since` option). */
  recovering: boolean;
  /**
   * With recovering: every publication since that position follows (true),
   * or they could not all be recovered (false: refetch the state, the
   * stream goes on from offset/epoch).
   */
  recovered: boolean;
}

export interface SubscriptionEvents {
  subscribed: SubscribedEvent;
  publication: Publication;
  join: ClientInfo;
  leave: ClientInfo;
  /** The server unsubscribed the client (`POST /api/unsubscribe`). */
  unsubscribed: { channel: string };
  /** The subscribe was refused (the subscription is then dropped). */
  error: WsdError;
}

/** An error reply from wsd (`code` is one of its error codes). */
export class WsdError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "WsdError";
  }
}

/** A request that was not answered within requestTimeout. */
export class TimeoutError extends Error {
  constructor(readonly request: string) {
    super(`no reply to ${request} in time`);
    this.name = "TimeoutError";
  }
}

/** The connection closed before the request was answered. */
export class DisconnectedError extends Error {
  constructor() {
    super("disconnected before the reply");
    this.name = "DisconnectedError";
  }
}

// Codes of refusals that retrying the same subscribe would not change.
const permanent = new Set(["FORBIDDEN", "INVALID_CHANNEL", "TOO_MANY_CHANNELS", "ALREADY_SUBSCRIBED"]);

type Reply = Record<string, unknown>;

interface Pending {
  done: (err: Error | null, m?: Reply) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** Subscription is one channel of a Client; it lives across reconnects. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The position of the last publication received (or the subscribe's). */
  offset: number | undefined;
  epoch: string | undefined;
  state: "subscribing" | "subscribed" | "unsubscribed" = "subscribing";

  constructor(
    readonly channel: string,
    private readonly client: Client,
    since?: StreamPosition,
  ) {
    super();
    if (since) {
      this.offset = since.offset;
      this.epoch = since.epoch;
    }
  }

  /** unsubscribe leaves the channel. */
  unsubscribe(): Promise<void> {
    return this.client.unsubscribe(this.channel);
  }

  /** @internal */
  _emit<K extends keyof SubscriptionEvents>(name: K, ev: SubscriptionEvents[K]): void {
    this.emit(name, ev);
  }
}

/**
 * Client is one connection to wsd's /ws endpoint that reconnects by itself
 * and keeps its subscriptions (recovering what it missed) across
 * reconnects.
 */
export class Client extends Emitter<ClientEvents> {
  state: State = "disconnected";
  private readonly opts: Required<Omit<ClientOptions, "token" | "getToken" | "backoff" | "WebSocket">> & {
    getToken?: ClientOptions["getToken"];
    backoff: Backoff;
    WebSocket: WebSocketConstructor;
  };
  private token: string | undefined;
  private ws: WebSocketLike | null = null;
  private msgpack = false;
  private wanted = false; // connect() called, disconnect() not since
  private attempt = 0;
  private openedAt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly subs = new Map<string, Subscription>();
  private tokenExpired = false;
  // Requests made while not connected: sent once connected, in order.
  private queued: { id: number; msg: Reply }[] = [];

  constructor(
    readonly url: string,
    options: ClientOptions = {},
  ) {
    super();
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new Error("no WebSocket: pass options.WebSocket (Node 20: run with --experimental-websocket, or use the ws package)");
    }
    this.opts = {
      protocol: options.protocol ?? "json",
      refreshBefore: options.refreshBefore ?? 30000,
      requestTimeout: options.requestTimeout ?? 10000,
      noReconnectCodes: options.noReconnectCodes ?? [1008],
      random: options.random ?? Math.random,
      getToken: options.getToken,
      backoff: { ...defaultBackoff, ...options.backoff },
      WebSocket: WS,
    };
    this.token = options.token;
  }

  /** connect opens the connection (and keeps it open until disconnect). */
  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.attempt = 0;
    void this.open();
  }

  /** disconnect closes the connection for good (connect may be called again). */
  disconnect(): void {
    const was = this.wanted;
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    const ws = this.ws;
    if (ws) {
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      ws.close(1000, "client disconnect");
    }
    // Also while waiting to reconnect: what waits for a connection is
    // rejected, and "disconnected" says there will be no reconnect.
    if (was || ws) this.closed(1000, "client disconnect");
  }

  /** subscribe joins a channel; events come on the returned Subscription. */
  subscribe(channel: string, options: { since?: StreamPosition } = {}): Subscription {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(channel, this, options.since);
    this.subs.set(channel, sub);
    if (this.state === "connected") this.sendSubscribe(sub);
    return sub;
  }

  /** getSubscription returns the channel's subscription, if any. */
  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** unsubscribe leaves a channel. */
  async unsubscribe(channel: string): Promise<void> {
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel);
    sub.state = "unsubscribed";
    if (this.state !== "connected") return;
    try {
      await this.request({ type: "unsubscribe", channel });
    } catch (err) {
      if (!(err instanceof WsdError && err.code === "NOT_SUBSCRIBED") && !(err instanceof DisconnectedError)) throw err;
    }
  }

  /** publish publishes data (any JSON value) to a channel and resolves with its position. */
  async publish(channel: string, data: unknown): Promise<StreamPosition> {
    const m = await this.request({ type: "publish", channel, data });
    return { offset: m.offset as number, epoch: m.epoch as string };
  }

  /** presence lists who is subscribed to a channel (channels with presence on). */
  async presence(channel: string): Promise<ClientInfo[]> {
    const m = await this.request({ type: "presence", channel });
    return (m.presence as ClientInfo[]) ?? [];
  }

  /**
   * history returns a channel's kept publications: the newest `limit`, or
   * everything after `since` (then `recovered` says whether that was all).
   */
  async history(
    channel: string,
    options: { limit?: number; since?: StreamPosition } = {},
  ): Promise<{ publications: { offset: number; data: unknown }[]; offset: number; epoch: string; recovered?: boolean }> {
    const req: Reply = { type: "history", channel };
    if (options.limit !== undefined) req.limit = options.limit;
    if (options.since) req.since = options.since;
    const m = await this.request(req);
    return {
      publications: (m.publications as { offset: number; data: unknown }[]) ?? [],
      offset: m.offset as number,
      epoch: m.epoch as string,
      recovered: m.recovered as boolean | undefined,
    };
  }

  /**
   * request sends a message with a new id and resolves with its ack (or
   * rejects with a WsdError, TimeoutError or DisconnectedError). While the
   * client is (re)connecting it waits for the connection, within the same
   * timeout.
   */
  request(msg: Reply): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => this.call(msg, (err, m) => (err ? reject(err) : resolve(m!))));
  }

  // call is request with a callback, run synchronously with the reply: a
  // subscribe's ack must take effect before the next message is read (the
  // publications it lets through follow it at once, and a WebSocket may
  // fire several message events before any promise callback runs).
  private call(msg: Reply, done: (err: Error | null, m?: Reply) => void): void {
    const id = this.nextId++;
    const timer = setTimeout(() => {
      this.pending.delete(id);
      done(new TimeoutError(String(msg.type)));
    }, this.opts.requestTimeout);
    this.pending.set(id, { done, timer });
    if (this.state === "connected") this.send({ ...msg, id });
    else this.queued.push({ id, msg: { ...msg, id } });
  }

  private send(msg: Reply): void {
    const ws = this.ws;
    if (!ws) return;
    ws.send(this.msgpack ? encode(msg) : JSON.stringify(msg));
  }

  private setState(s: State): void {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", s);
  }

  private async open(): Promise<void> {
    if (!this.wanted) return;
    this.setState("connecting");
    this.emit("connecting", { attempt: this.attempt });
    if (this.opts.getToken && (this.token === undefined || this.tokenExpired || expiresWithin(this.token, 0))) {
      try {
        this.token = await this.opts.getToken();
        this.tokenExpired = false;
      } catch (err) {
        this.emit("error", err instanceof Error ? err : new Error(String(err)));
        this.scheduleReconnect(1006, "getToken failed", 0);
        return;
      }
      if (!this.wanted) return;
    }
    let url = this.url;
    if (this.token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this.token);
    const proto = this.opts.protocol === "msgpack" ? "wsd.msgpack" : "wsd.json";
    let ws: WebSocketLike;
    try {
      ws = new this.opts.WebSocket(url, proto);
    } catch (err) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
      this.scheduleReconnect(1006, "cannot connect", 0);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.opened(ws);
    ws.onmessage = (ev) => this.received(ev.data);
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.closed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // A connection that fails before it opens (refused, or answered
      // with 503 by a pacing server) is lost: browsers fire close after
      // this error, but Node 20's WebSocket fires no close for a non-101
      // answer, and the client would wait forever. A close that does
      // follow finds this.ws changed and is ignored.
      if (this.ws !== ws || ws.readyState !== 0 /* CONNECTING */) return;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      try {
        ws.close();
      } catch {
        // closing a socket that failed may throw; it is gone either way
      }
      this.closed(1006, "connection failed");
    };
  }

  private opened(ws: WebSocketLike): void {
    // The server may not speak MessagePack (it answered without it): the
    // encoding is the one it chose.
    this.msgpack = ws.protocol === "wsd.msgpack";
    this.openedAt = Date.now();
    this.setState("connected");
    this.emit("connected", { protocol: ws.protocol || "wsd.json" });
    for (const sub of this.subs.values()) this.sendSubscribe(sub);
    const q = this.queued;
    this.queued = [];
    for (const item of q) if (this.pending.has(item.id)) this.send(item.msg);
    this.scheduleRefresh();
  }

  private closed(code: number, reason: string): void {
    clearTimeout(this.refreshTimer);
    const stop =
      !this.wanted || this.opts.noReconnectCodes.includes(code) || (code === 4001 && !this.opts.getToken);
    // Requests sent on this connection lost their replies with it; those
    // still queued (made while connecting) wait for the next connection,
    // within their timeout, unless there will be none.
    const unsent = new Set(stop ? [] : this.queued.map((q) => q.id));
    for (const [id, p] of this.pending) {
      if (unsent.has(id)) continue;
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.done(new DisconnectedError());
    }
    if (stop) this.queued = [];
    for (const sub of this.subs.values()) sub.state = "subscribing";
    // A connection that held for a minute was a success: the next
    // reconnect starts the backoff from the beginning.
    if (this.openedAt && Date.now() - this.openedAt >= 60000) this.attempt = 0;
    this.openedAt = 0;
    if (code === 4001) this.tokenExpired = true;
    if (stop) {
      this.wanted = false;
      this.setState("disconnected");
      this.emit("disconnected", { code, reason, reconnect: false, delay: 0 });
      return;
    }
    let hint = retryHint(reason);
    // 1001 (going away: a drain) and 1013 (try again later: overload)
    // ask the client to come back later, never at once.
    if (code === 1001 || code === 1013) hint = Math.max(hint, this.opts.backoff.min);
    this.scheduleReconnect(code, reason, hint);
  }

  private scheduleReconnect(code: number, reason: string, hint: number): void {
    const delay = backoffDelay(this.opts.backoff, this.attempt, hint, this.opts.random);
    this.attempt++;
    this.setState("disconnected");
    this.emit("disconnected", { code, reason, reconnect: true, delay });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
  }

  private received(data: unknown): void {
    let m: Reply;
    try {
      const v = typeof data === "string" ? JSON.parse(data) : decode(new Uint8Array(data as ArrayBuffer));
      if (v === null || typeof v !== "object") throw new Error("not an object");
      m = v as Reply;
    } catch (err) {
      this.emit("error", new Error(`unreadable message from the server: ${String(err)}`));
      return;
    }
    const id = m.id;
    if (typeof id === "number" && this.pending.has(id)) {
      const p = this.pending.get(id)!;
      this.pending.delete(id);
      clearTimeout(p.timer);
      if (m.type === "error") p.done(new WsdError(String(m.code), String(m.message)));
      else p.done(null, m);
      return;
    }
    switch (m.type) {
      case "message":
        this.publication(m);
        return;
      case "join":
      case "leave": {
        const sub = this.subs.get(m.channel as string);
        sub?._emit(m.type, m.info as ClientInfo);
        return;
      }
      case "unsubscribed": {
        const sub = this.subs.get(m.channel as string);
        if (sub) {
          this.subs.delete(sub.channel);
          sub.state = "unsubscribed";
          sub._emit("unsubscribed", { channel: sub.channel });
        }
        return;
      }
      case "error":
        this.emit("error", new WsdError(String(m.code), String(m.message)));
        return;
    }
  }

  private publication(m: Reply): void {
    const sub = this.subs.get(m.channel as string);
    if (!sub || sub.state !== "subscribed") return;
    const offset = m.offset as number;
    const epoch = m.epoch as string;
    // wsd sends each publication once; this only guards the position.
    if (sub.epoch === epoch && sub.offset !== undefined && offset <= sub.offset) return;
    sub.offset = offset;
    sub.epoch = epoch;
    sub._emit("publication", { channel: sub.channel, offset, epoch, data: m.data });
  }

  private sendSubscribe(sub: Subscription): void {
    const recovering = sub.offset !== undefined;
    const msg: Reply = { type: "subscribe", channel: sub.channel };
    if (recovering) msg.since = { offset: sub.offset, epoch: sub.epoch ?? "" };
    sub.state = "subscribing";
    this.call(msg, (err, ack) => {
      if (this.subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
      if (err) {
        if (err instanceof DisconnectedError) return; // resubscribed on reconnect
        if (err instanceof WsdError && permanent.has(err.code)) {
          this.subs.delete(sub.channel);
          sub.state = "unsubscribed";
          sub._emit("error", err);
          return;
        }
        // Busy or timed out: try again while connected.
        const delay = backoffDelay(this.opts.backoff, 1, 0, this.opts.random);
        setTimeout(() => {
          if (this.subs.get(sub.channel) === sub && this.state === "connected" && sub.state === "subscribing") {
            this.sendSubscribe(sub);
          }
        }, delay);
        return;
      }
      const recovered = recovering && ack!.recovered === true;
      // A recovered subscribe's missed publications follow the ack: the
      // position moves as they arrive, so a drop in between loses none.
      if (!recovered) sub.offset = ack!.offset as number;
      sub.epoch = ack!.epoch as string;
      sub.state = "subscribed";
      sub._emit("subscribed", { recovering, recovered, offset: ack!.offset as number, epoch: ack!.epoch as string });
    });
  }

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    const exp = this.token ? tokenExpiry(this.token) : undefined;
    if (!this.opts.getToken || exp === undefined) return;
    const delay = Math.max(0, exp * 1000 - Date.now() - this.opts.refreshBefore);
    this.refreshTimer = setTimeout(() => void this.refresh(), Math.min(delay, 0x7fffffff));
  }

  private async refresh(): Promise<void> {
    try {
      const token = await this.opts.getToken!();
      this.token = token;
      if (this.state !== "connected") return; // the next connect uses it
      await this.request({ type: "refresh", token });
      this.scheduleRefresh();
    } catch (err) {
      this.emit("error", err instanceof Error ? err : new Error(String(err)));
    }
  }
}

/** tokenExpiry reads a JWT's `exp` (Unix seconds), undefined if none. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

function expiresWithin(token: string, ms: number): boolean {
  const exp = tokenExpiry(token);
  return exp !== undefined && exp * 1000 - Date.now() <= ms;
}
