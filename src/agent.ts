/**
 * The agent API: `createAgent` gives an agent that sends signed, sealed, tagged envelopes to other agents over
 * any {@link Transport}, receives them as an async iterator, and does request/reply.
 *
 * Every inbound frame goes through {@link EnvelopeOpener} (size → decode → schema → sender → signature →
 * recipient → time → replay → decrypt) before the application sees anything; refused frames are reported to
 * `onError` with their code and never crash the agent. A connection that keeps sending refused frames is cut.
 * Queues are bounded: a slow consumer slows the sender down through transport backpressure instead of growing
 * memory.
 *
 * @module
 * @example
 * ```ts
 * const a = await createAgent({ identity: alice, trust, transport: net });
 * await a.send("bob", { text: "hi bob" });
 * for await (const msg of b.messages()) { console.log(msg.from, msg.data); break; }
 * ```
 */
import { SealwireError, sealwireError } from "./errors.js";
import {
  DEFAULT_TTL_MS,
  EnvelopeOpener,
  ReplayCache,
  decodePayload,
  encodePayload,
  sealEnvelope,
  type Data,
  type EnvelopeHeader,
  type Tags,
  type TagsInit,
} from "./envelope.js";
import { Identity, assertAgentId } from "./identity.js";
import type { Connection, Listener, Transport } from "./transport.js";
import { isTransport } from "./transport.js";
import type { TrustStore } from "./trust.js";
import { TrustStore as TrustStoreClass } from "./trust.js";

/** Options for {@link createAgent}. */
export interface AgentOptions {
  /** This agent's identity (its own keys: never share one identity between agents). */
  identity: Identity;
  /** Peers this agent trusts. */
  trust: TrustStore;
  /** How frames move. Swap `memory()` for another transport without changing anything else. */
  transport: Transport;
  /**
   * Address to listen at, or `false` to only dial out.
   * @default transport.addressFor(identity.id)
   */
  listen?: string | false;
  /** Explicit addresses for peers (override the trust entry's address and the transport default). */
  addresses?: Record<string, string>;
  /** @default 1 MiB */
  maxEnvelopeBytes?: number;
  /** @default 30 s */
  clockSkewMs?: number;
  /** Time to live of sent envelopes. @default 5 min */
  defaultTtlMs?: number;
  /** Messages held for the application before the agent stops reading from the network. @default 1024 */
  inboxSize?: number;
  /** Called with every refused inbound envelope or connection failure (code, envelope id; never payloads). */
  onError?: (err: SealwireError) => void;
  /** Clock, for tests. @default Date.now */
  now?: () => number;
}

/** Options for {@link Agent.send}. */
export interface SendOptions {
  tags?: TagsInit;
  /** Message type. @default "msg" */
  type?: string;
  ttlMs?: number;
  signal?: AbortSignal;
}

/** Options for {@link Agent.request}. */
export interface RequestOptions extends Omit<SendOptions, "type"> {
  /** @default 30_000 */
  timeoutMs?: number;
}

/** A message delivered to the application: every check passed. */
export interface ReceivedMessage {
  readonly id: string;
  readonly from: string;
  readonly to: string;
  readonly type: string;
  readonly tags: Readonly<Tags>;
  readonly createdAt: number;
  readonly replyTo: string | undefined;
  readonly data: Data;
  /** Sends `data` back to the sender as the reply to this message. */
  reply(data: Data, options?: Omit<SendOptions, "type">): Promise<{ id: string }>;
}

const REFUSED_FRAMES_BEFORE_CUT = 32;

interface Pending {
  to: string;
  resolve: (m: ReceivedMessage) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout;
}

/** A running agent. Create with {@link createAgent}. */
export class Agent {
  readonly id: string;
  readonly #identity: Identity;
  readonly #trust: TrustStore;
  readonly #transport: Transport;
  readonly #opts: AgentOptions;
  readonly #opener: EnvelopeOpener;
  readonly #inbox: ReceivedMessage[] = [];
  readonly #inboxSize: number;
  readonly #inboxWaiters: (() => void)[] = [];
  readonly #spaceWaiters: (() => void)[] = [];
  readonly #outbound = new Map<string, Promise<Connection>>();
  readonly #inbound = new Set<Connection>();
  readonly #pending = new Map<string, Pending>();
  readonly #cleanups: (() => void)[] = [];
  #listener: Listener | undefined;
  #closed = false;

  /** @internal use {@link createAgent} */
  constructor(options: AgentOptions) {
    if (!(options?.identity instanceof Identity)) throw sealwireError("ERR_INVALID_ARGUMENT", "identity must be an Identity (generateIdentity)");
    if (!(options.trust instanceof TrustStoreClass)) throw sealwireError("ERR_INVALID_ARGUMENT", "trust must be a TrustStore");
    if (!isTransport(options.transport)) throw sealwireError("ERR_INVALID_ARGUMENT", "transport must be a sealwire Transport (e.g. memory())");
    if (options.identity.closed) throw sealwireError("ERR_CLOSED", "identity was closed");
    const inboxSize = options.inboxSize ?? 1024;
    if (!Number.isInteger(inboxSize) || inboxSize < 1) throw sealwireError("ERR_INVALID_ARGUMENT", "inboxSize must be a positive integer");
    this.id = options.identity.id;
    this.#identity = options.identity;
    this.#trust = options.trust;
    this.#transport = options.transport;
    this.#opts = options;
    this.#inboxSize = inboxSize;
    this.#opener = new EnvelopeOpener({
      identity: options.identity,
      trust: options.trust,
      replay: new ReplayCache(),
      ...(options.maxEnvelopeBytes !== undefined ? { maxEnvelopeBytes: options.maxEnvelopeBytes } : {}),
      ...(options.clockSkewMs !== undefined ? { clockSkewMs: options.clockSkewMs } : {}),
      ...(options.now !== undefined ? { now: options.now } : {}),
    });
    this.#cleanups.push(
      options.trust.onRevoke((entry) => this.#dropPeer(entry.id)),
      options.identity.onClose(() => void this.close()),
    );
  }

  /** @internal */
  async start(): Promise<void> {
    const listen = this.#opts.listen ?? this.#transport.addressFor?.(this.id);
    if (listen === false) return;
    if (listen === undefined) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `transport "${this.#transport.kind}" has no default address; pass listen: "<address>" or listen: false`);
    }
    this.#listener = await this.#transport.listen(listen);
    void this.#acceptLoop(this.#listener);
  }

  /** The address this agent listens at, if any. */
  get address(): string | undefined {
    return this.#listener?.addr;
  }

  /** True after {@link close}. */
  get closed(): boolean {
    return this.#closed;
  }

  #alive(): void {
    if (this.#closed) throw sealwireError("ERR_CLOSED", `agent "${this.id}" was closed`);
  }

  /**
   * Signs, seals and sends `data` to agent `to`. Resolves with the envelope id once the transport accepted the
   * frame. Throws ERR_UNKNOWN_PEER / ERR_REVOKED_PEER for untrusted recipients, ERR_NO_ROUTE if it cannot connect.
   */
  async send(to: string, data: Data, options: SendOptions = {}): Promise<{ id: string }> {
    const { id } = await this.#send(to, data, options, undefined);
    return { id };
  }

  async #send(to: string, data: Data, options: SendOptions, replyTo: string | undefined): Promise<{ id: string; header: EnvelopeHeader }> {
    this.#alive();
    assertAgentId(to, "recipient");
    options.signal?.throwIfAborted();
    const recipient = this.#trust.require(to);
    const sealed = sealEnvelope(this.#identity, recipient, encodePayload(data), {
      ttlMs: options.ttlMs ?? this.#opts.defaultTtlMs ?? DEFAULT_TTL_MS,
      ...(options.tags !== undefined ? { tags: options.tags } : {}),
      ...(options.type !== undefined ? { type: options.type } : {}),
      ...(replyTo !== undefined ? { replyTo } : {}),
      ...(this.#opts.now ? { now: this.#opts.now() } : {}),
    });
    await this.#deliverFrame(to, sealed.bytes, options.signal);
    return { id: sealed.header.id, header: sealed.header };
  }

  async #deliverFrame(to: string, frame: Uint8Array, signal: AbortSignal | undefined): Promise<void> {
    // One retry: a cached connection may have died since the last send.
    for (let attempt = 0; ; attempt++) {
      let conn: Connection;
      try {
        conn = await this.#connection(to, signal);
      } catch (e) {
        if (SealwireError.is(e, "ERR_ABORTED") || SealwireError.is(e, "ERR_CLOSED")) throw e;
        throw sealwireError("ERR_NO_ROUTE", `cannot reach agent "${to}"; is it running and is its address right?`, { cause: e });
      }
      try {
        if (!conn.send(frame)) await conn.drain(signal ? { signal } : {});
        return;
      } catch (e) {
        if (SealwireError.is(e, "ERR_CONNECTION_CLOSED") || SealwireError.is(e, "ERR_CONNECTION_ABORTED")) {
          this.#outbound.delete(to);
          if (attempt === 0) continue;
        }
        throw e;
      }
    }
  }

  #connection(to: string, signal: AbortSignal | undefined): Promise<Connection> {
    const cached = this.#outbound.get(to);
    if (cached) return cached;
    const addr = this.#opts.addresses?.[to] ?? this.#trust.get(to)?.address ?? this.#transport.addressFor?.(to);
    if (addr === undefined) {
      return Promise.reject(sealwireError("ERR_NO_ROUTE", `no address known for agent "${to}"; pass addresses: { ${to}: "..." }`));
    }
    const p = this.#transport.dial(addr, { remotePeer: to, ...(signal ? { signal } : {}) }).then((conn) => {
      if (this.#closed) {
        conn.abort(sealwireError("ERR_CLOSED", "agent closed"));
        throw sealwireError("ERR_CLOSED", `agent "${this.id}" was closed`);
      }
      // Replies arrive on our own listener; anything the peer sends back on this connection is read the same way.
      void this.#readLoop(conn);
      void conn.closed.then(() => {
        if (this.#outbound.get(to) === p) this.#outbound.delete(to);
      });
      return conn;
    });
    this.#outbound.set(to, p);
    p.catch(() => {
      if (this.#outbound.get(to) === p) this.#outbound.delete(to);
    });
    return p;
  }

  /**
   * Sends a request and resolves with the reply (the recipient answers with `msg.reply(...)`).
   * Rejects with ERR_REQUEST_TIMEOUT after `timeoutMs`.
   */
  async request(to: string, data: Data, options: RequestOptions = {}): Promise<ReceivedMessage> {
    this.#alive();
    const timeoutMs = options.timeoutMs ?? 30_000;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw sealwireError("ERR_INVALID_ARGUMENT", "timeoutMs must be a positive integer");
    let settle!: Pending;
    const reply = new Promise<ReceivedMessage>((resolve, reject) => {
      settle = { to, resolve, reject, timer: undefined as unknown as NodeJS.Timeout };
    });
    const { signal, timeoutMs: _t, ...rest } = options;
    const sent = await this.#send(to, data, { ...rest, type: "req", ...(signal ? { signal } : {}) }, undefined);
    const id = sent.id;
    settle.timer = setTimeout(() => {
      this.#pending.delete(id);
      settle.reject(sealwireError("ERR_REQUEST_TIMEOUT", `no reply from "${to}" to request ${id} within ${timeoutMs} ms`, { envelopeId: id }));
    }, timeoutMs);
    settle.timer.unref?.();
    this.#pending.set(id, settle);
    const onAbort = () => {
      clearTimeout(settle.timer);
      this.#pending.delete(id);
      settle.reject(sealwireError("ERR_ABORTED", `request ${id} was aborted`, { envelopeId: id }));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await reply;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Delivered messages, in arrival order. Several iterators share one inbox (each message goes to one of them).
   * Breaking out of a `for await` loop leaves later messages queued for the next iterator.
   */
  messages(options: { signal?: AbortSignal } = {}): AsyncIterableIterator<ReceivedMessage> {
    const self = this;
    const signal = options.signal;
    let done = false;
    const next = async (): Promise<IteratorResult<ReceivedMessage>> => {
      for (;;) {
        if (done) return { done: true, value: undefined };
        const m = self.#inbox.shift();
        if (m) {
          self.#spaceWaiters.shift()?.();
          return { done: false, value: m };
        }
        if (self.#closed) return { done: true, value: undefined };
        if (signal?.aborted) throw sealwireError("ERR_ABORTED", "message iteration aborted");
        await new Promise<void>((resolve) => {
          const wake = () => {
            signal?.removeEventListener("abort", wake);
            resolve();
          };
          self.#inboxWaiters.push(wake);
          signal?.addEventListener("abort", wake, { once: true });
        });
      }
    };
    return {
      next,
      return: async () => {
        done = true;
        return { done: true, value: undefined };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  async #acceptLoop(listener: Listener): Promise<void> {
    try {
      for await (const conn of listener) {
        if (this.#closed) {
          conn.abort(sealwireError("ERR_CLOSED", "agent closed"));
          continue;
        }
        void this.#readLoop(conn);
      }
    } catch (e) {
      if (!this.#closed) this.#report(e);
    }
  }

  async #readLoop(conn: Connection): Promise<void> {
    this.#inbound.add(conn);
    let refusedInARow = 0;
    try {
      for await (const frame of conn) {
        if (this.#closed) break;
        const ok = await this.#handleFrame(frame);
        refusedInARow = ok ? 0 : refusedInARow + 1;
        if (refusedInARow >= REFUSED_FRAMES_BEFORE_CUT) {
          conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "too many refused envelopes on this connection"));
          break;
        }
      }
    } catch (e) {
      if (!this.#closed && !SealwireError.is(e, "ERR_CONNECTION_ABORTED") && !SealwireError.is(e, "ERR_CONNECTION_CLOSED")) this.#report(e);
    } finally {
      this.#inbound.delete(conn);
    }
  }

  /** Returns false if the frame was refused. */
  async #handleFrame(frame: Uint8Array): Promise<boolean> {
    let msg: ReceivedMessage;
    try {
      const opened = this.#opener.open(frame);
      const h = opened.header;
      let data: Data;
      try {
        data = decodePayload(opened.plaintext);
      } finally {
        opened.plaintext.fill(0);
      }
      msg = this.#message(h, data);
    } catch (e) {
      this.#report(e);
      return false;
    }
    if (msg.type === "rep" && msg.replyTo !== undefined) {
      const pending = this.#pending.get(msg.replyTo);
      if (pending && pending.to === msg.from) {
        this.#pending.delete(msg.replyTo);
        clearTimeout(pending.timer);
        pending.resolve(msg);
        return true;
      }
    }
    while (this.#inbox.length >= this.#inboxSize && !this.#closed) {
      await new Promise<void>((resolve) => this.#spaceWaiters.push(resolve));
    }
    if (this.#closed) return true;
    this.#inbox.push(msg);
    this.#inboxWaiters.shift()?.();
    return true;
  }

  #message(h: EnvelopeHeader, data: Data): ReceivedMessage {
    const agent = this;
    return Object.freeze({
      id: h.id,
      from: h.from,
      to: h.to,
      type: h.type,
      tags: h.tags,
      createdAt: h.createdAt,
      replyTo: h.replyTo,
      data,
      async reply(replyData: Data, options: Omit<SendOptions, "type"> = {}) {
        const { id } = await agent.#send(h.from, replyData, { ...options, type: "rep" }, h.id);
        return { id };
      },
    });
  }

  #report(e: unknown): void {
    const err = SealwireError.is(e) ? e : sealwireError("ERR_CONNECTION_ABORTED", "connection failed", { cause: e });
    try {
      this.#opts.onError?.(err);
    } catch {
      /* the reporter must not break the agent */
    }
  }

  #dropPeer(peer: string): void {
    const c = this.#outbound.get(peer);
    this.#outbound.delete(peer);
    c?.then((conn) => conn.abort(sealwireError("ERR_REVOKED_PEER", `peer "${peer}" was revoked`))).catch(() => {});
    for (const [id, p] of this.#pending) {
      if (p.to === peer) {
        this.#pending.delete(id);
        clearTimeout(p.timer);
        p.reject(sealwireError("ERR_REVOKED_PEER", `peer "${peer}" was revoked`, { envelopeId: id }));
      }
    }
  }

  /** Stops listening, closes every connection, fails pending requests with ERR_CLOSED. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const fn of this.#cleanups) fn();
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(sealwireError("ERR_CLOSED", `agent "${this.id}" closed before the reply to ${id} arrived`, { envelopeId: id }));
    }
    this.#pending.clear();
    for (const w of this.#inboxWaiters.splice(0)) w();
    for (const w of this.#spaceWaiters.splice(0)) w();
    const closing: Promise<unknown>[] = [];
    if (this.#listener) closing.push(this.#listener.close());
    for (const p of this.#outbound.values()) closing.push(p.then((c) => c.close()).catch(() => {}));
    for (const c of this.#inbound) closing.push(c.close().catch(() => {}));
    this.#outbound.clear();
    await Promise.allSettled(closing);
    this.#inbox.length = 0;
  }

  toJSON(): { agent: string } {
    return { agent: this.id };
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Agent(${this.id}${this.#closed ? ", closed" : ""})`;
  }
}

/** Creates and starts an agent (listening at its default address unless `listen: false`). */
export async function createAgent(options: AgentOptions): Promise<Agent> {
  const agent = new Agent(options);
  await agent.start();
  return agent;
}
