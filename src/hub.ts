/**
 * The hub: an optional relay that agents dial (the homelab case: one machine runs it). It routes envelopes by
 * recipient, cannot read bodies (they are sealed end to end), refuses envelopes whose `from` is not the agent on
 * that connection, runs the policy's `relay` stage on headers, queues briefly for agents that are offline, tells
 * senders what happened to what it accepted, and audits.
 *
 * Guarantees to senders: every envelope the hub accepted ends in exactly one notice to its sender, as long as
 * both stay connected: `sw-delivered` (the recipient agent acknowledged it) or `sw-refused` with a code
 * (unknown or revoked recipient, policy, queue full, expired in the queue, …). If the hub dies, agents learn
 * it from their connection, and agents that asked for delivery confirmation get `ERR_DELIVERY_UNCONFIRMED`.
 *
 * Session-mode continuations (`src/session.ts`) carry no signature: the hub accepts one only from the
 * authenticated connection of its `from` agent (still trusted, not revoked) and routes, replay-checks, runs the
 * relay policy on its header and acknowledges it like any envelope. It cannot forge or alter one: the
 * recipient's AEAD check would refuse it.
 *
 * @module
 * @example
 * ```ts
 * const hub = await createHub({ identity: hubId, trust, transport: noise({ transport: webSocket(), identity: hubId, trust }),
 *   listen: "ws://0.0.0.0:7700" });
 * ```
 */
import { authMessage, encodeControl, isControlFrame, parseControl, type Control } from "./_hub-protocol.js";
import type { AuditSink } from "./agent.js";
import { SealwireError, sealwireError, type ErrorCode } from "./errors.js";
import { decodeEnvelope, MAX_ENVELOPE_BYTES, ReplayCache, verifyEnvelopeSignature, type DecodedEnvelope } from "./envelope.js";
import { decodeSessionEnvelope, isSessionFrame, type DecodedSessionEnvelope } from "./session.js";
import { Identity } from "./identity.js";
import { defaultPolicy, evaluate, POLICY_TIMEOUT_MS, type Policy } from "./policy.js";
import type { Connection, Listener, Transport } from "./transport.js";
import { isTransport } from "./transport.js";
import { TrustStore, type StatementResult } from "./trust.js";

/** Options for {@link createHub}. */
export interface HubOptions {
  /** The hub's own identity (authenticates the hub to agents; signs nothing else). */
  identity: Identity;
  /** Agents the hub accepts. Revoking one closes its connection at once. */
  trust: TrustStore;
  transport: Transport;
  /** Address to listen at (e.g. `ws://0.0.0.0:7700` under `noise(webSocket())`). */
  listen: string;
  /** Checked at the `relay` stage on headers. @default defaultPolicy() (PII clearances) */
  policy?: Policy;
  policyTimeoutMs?: number;
  audit?: AuditSink;
  /** Envelopes held per offline recipient. @default 256 */
  maxQueuePerRecipient?: number;
  /** Longest an envelope waits for its recipient (never beyond its own ttl). @default 60_000 */
  queueTtlMs?: number;
  /** @default 1 MiB */
  maxEnvelopeBytes?: number;
  /** Time an unauthenticated connection may take to authenticate. @default 5000 */
  authTimeoutMs?: number;
  /** Refusals and connection failures (codes and ids only). */
  onError?: (err: SealwireError) => void;
  now?: () => number;
}

interface Queued {
  frame: Uint8Array;
  id: string;
  from: string;
  expiresAt: number;
}

const REFUSED_BEFORE_CUT = 32;

/** A running hub. */
export class Hub {
  readonly #o: HubOptions;
  readonly #sessions = new Map<string, Connection>();
  readonly #queues = new Map<string, Queued[]>();
  /** Forwarded, not yet acknowledged: envelope id → sender and expiry. */
  readonly #inflight = new Map<string, { from: string; to: string; expiresAt: number }>();
  readonly #replay = new ReplayCache(200_000);
  readonly #policy: Policy;
  readonly #cleanups: (() => void)[] = [];
  #listener: Listener | undefined;
  #closed = false;
  #sweeper: NodeJS.Timeout | undefined;

  /** @internal use {@link createHub} */
  constructor(o: HubOptions) {
    if (!(o?.identity instanceof Identity)) throw sealwireError("ERR_INVALID_ARGUMENT", "hub identity must be an Identity");
    if (!(o.trust instanceof TrustStore)) throw sealwireError("ERR_INVALID_ARGUMENT", "hub trust must be a TrustStore");
    if (!isTransport(o.transport)) throw sealwireError("ERR_INVALID_ARGUMENT", "hub transport must be a sealwire Transport");
    if (typeof o.listen !== "string") throw sealwireError("ERR_INVALID_ARGUMENT", "hub listen must be an address string");
    for (const [k, v] of [["maxQueuePerRecipient", o.maxQueuePerRecipient], ["queueTtlMs", o.queueTtlMs], ["authTimeoutMs", o.authTimeoutMs]] as const) {
      if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw sealwireError("ERR_INVALID_ARGUMENT", `${k} must be a positive integer`);
    }
    this.#o = o;
    this.#policy = o.policy ?? defaultPolicy();
    this.#cleanups.push(
      o.trust.onRevoke((e) => this.#revoked(e.id)),
      o.identity.onClose(() => void this.close()),
    );
  }

  /** @internal */
  async start(): Promise<void> {
    this.#listener = await this.#o.transport.listen(this.#o.listen);
    this.#sweeper = setInterval(() => this.#sweep(), 1000);
    this.#sweeper.unref();
    void this.#acceptLoop(this.#listener);
  }

  /** The bound address. */
  get address(): string | undefined {
    return this.#listener?.addr;
  }

  /** Agents connected right now. */
  get connected(): string[] {
    return [...this.#sessions.keys()].sort();
  }

  /** Envelopes waiting for offline agents. */
  get queued(): number {
    let n = 0;
    for (const q of this.#queues.values()) n += q.length;
    return n;
  }

  #now(): number {
    return this.#o.now?.() ?? Date.now();
  }

  #report(e: unknown): void {
    const err = SealwireError.is(e) ? e : sealwireError("ERR_CONNECTION_ABORTED", "hub connection failed", { cause: e });
    try {
      this.#o.onError?.(err);
    } catch {
      /* never let a reporter break the hub */
    }
  }

  async #audit(event: Parameters<AuditSink["append"]>[0]): Promise<void> {
    if (this.#o.audit) await this.#o.audit.append(event);
  }

  /** Audits before acting; if the record cannot be written, the sender is refused (fail closed). */
  async #auditOrRefuse(sender: string, id: string, event: Parameters<AuditSink["append"]>[0]): Promise<boolean> {
    try {
      await this.#audit(event);
      return true;
    } catch (e) {
      this.#report(SealwireError.is(e) ? e : sealwireError("ERR_AUDIT_IO", "the hub's audit record could not be written", { cause: e }));
      this.#notify(sender, { kind: "sw-refused", id, code: "ERR_AUDIT_IO", reason: "hub_audit_failed" });
      return false;
    }
  }

  async #acceptLoop(listener: Listener): Promise<void> {
    try {
      for await (const conn of listener) {
        if (this.#closed) {
          conn.abort(sealwireError("ERR_CLOSED", "hub closed"));
          continue;
        }
        void this.#serve(conn);
      }
    } catch (e) {
      if (!this.#closed) this.#report(e);
    }
  }

  /** Authenticates a connection; returns the agent id or throws. */
  async #authenticate(conn: Connection, frames: AsyncIterator<Uint8Array>): Promise<string> {
    const me = this.#o.identity;
    if (conn.remotePeer !== undefined) {
      this.#o.trust.require(conn.remotePeer);
      conn.send(encodeControl({ kind: "sw-ready" }));
      return conn.remotePeer;
    }
    const first = await frames.next();
    const hello = first.done ? undefined : parseControl(first.value);
    if (hello?.kind !== "sw-hello") throw sealwireError("ERR_HUB_AUTH", "expected sw-hello");
    const entry = this.#o.trust.require(hello.agent);
    const nonceH = me.provider.randomBytes(32);
    const sig = me.sign(authMessage("hub", hello.agent, me.id, hello.nonce, nonceH));
    conn.send(encodeControl({ kind: "sw-challenge", hub: me.id, nonce: nonceH, sig }));
    const second = await frames.next();
    const auth = second.done ? undefined : parseControl(second.value);
    if (auth?.kind !== "sw-auth") throw sealwireError("ERR_HUB_AUTH", "expected sw-auth");
    const p = this.#o.trust.provider;
    if (!p.ed25519Verify(p.ed25519Public(entry.signPublicKey), authMessage("agent", hello.agent, me.id, hello.nonce, nonceH), auth.sig)) {
      throw sealwireError("ERR_HUB_AUTH", `agent "${hello.agent}" failed to prove its key`);
    }
    conn.send(encodeControl({ kind: "sw-ready" }));
    return hello.agent;
  }

  async #serve(conn: Connection): Promise<void> {
    const frames = conn[Symbol.asyncIterator]();
    let agent: string;
    let timer: NodeJS.Timeout | undefined;
    try {
      agent = await Promise.race([
        this.#authenticate(conn, frames),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(sealwireError("ERR_TIMEOUT", "agent did not authenticate in time")), this.#o.authTimeoutMs ?? 5000);
        }),
      ]);
    } catch (e) {
      clearTimeout(timer);
      this.#report(e);
      await this.#audit({ event: "handshake_failed", reason: SealwireError.is(e) ? e.code : "ERR_HUB_AUTH" }).catch(() => {});
      conn.abort(SealwireError.is(e) ? e : sealwireError("ERR_HUB_AUTH", "authentication failed"));
      return;
    }
    clearTimeout(timer);
    const previous = this.#sessions.get(agent);
    this.#sessions.set(agent, conn);
    previous?.abort(sealwireError("ERR_CONNECTION_ABORTED", `agent "${agent}" connected again`));
    await this.#audit({ event: "handshake", peer: agent }).catch((e) => this.#report(e));
    this.#flush(agent);
    let refusedInARow = 0;
    try {
      for (;;) {
        const r = await frames.next();
        if (r.done || this.#closed) break;
        const ok = await this.#onFrame(agent, conn, r.value);
        refusedInARow = ok ? 0 : refusedInARow + 1;
        if (refusedInARow >= REFUSED_BEFORE_CUT) {
          conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "too many refused frames"));
          break;
        }
      }
    } catch (e) {
      if (!this.#closed && !SealwireError.is(e, "ERR_CONNECTION_ABORTED") && !SealwireError.is(e, "ERR_CONNECTION_CLOSED")) this.#report(e);
    } finally {
      if (this.#sessions.get(agent) === conn) this.#sessions.delete(agent);
    }
  }

  #notify(agent: string, c: Control): void {
    const conn = this.#sessions.get(agent);
    if (!conn) return;
    try {
      conn.send(encodeControl(c));
    } catch {
      /* the agent's connection is going away; it will see that itself */
    }
  }

  #refuse(from: string, id: string, code: ErrorCode, reason: string): false {
    this.#notify(from, { kind: "sw-refused", id, code, reason });
    this.#report(sealwireError(code, `hub refused ${id} from "${from}": ${reason || code}`, { envelopeId: id, ...(reason ? { reason } : {}) }));
    return false;
  }

  /** Returns false when the frame was refused. */
  async #onFrame(agent: string, conn: Connection, frame: Uint8Array): Promise<boolean> {
    if (isControlFrame(frame)) {
      const c = parseControl(frame);
      if (c?.kind === "sw-statement") {
        try {
          await this.announce(c.statement, agent);
        } catch (e) {
          this.#report(e);
          return false;
        }
        return true;
      }
      if (c?.kind !== "sw-ack" && c?.kind !== "sw-refused") {
        this.#report(sealwireError("ERR_DECODE", `unexpected control frame from "${agent}"`));
        return false;
      }
      const f = this.#inflight.get(c.id);
      if (f && f.to === agent) {
        this.#inflight.delete(c.id);
        // The recipient's verdict goes to the sender: delivered, or refused with the recipient's code.
        this.#notify(f.from, c.kind === "sw-ack" ? { kind: "sw-delivered", id: c.id } : { kind: "sw-refused", id: c.id, code: c.code, reason: c.reason });
      }
      return true;
    }
    let env: DecodedEnvelope | DecodedSessionEnvelope;
    const session = isSessionFrame(frame);
    try {
      const max = this.#o.maxEnvelopeBytes ?? MAX_ENVELOPE_BYTES;
      env = session ? decodeSessionEnvelope(frame, max) : decodeEnvelope(frame, max);
    } catch (e) {
      this.#report(e);
      return false;
    }
    const h = env.header;
    if (h.from !== agent) {
      return this.#refuse(agent, h.id, "ERR_WRONG_SENDER", "from_mismatch");
    }
    let sender;
    try {
      // A session continuation carries no signature (the recipient's AEAD authenticates it end to end): the hub
      // relies on the authenticated connection, which must be the sender's (checked above), still trusted here.
      sender = session ? this.#o.trust.require(h.from) : verifyEnvelopeSignature(env as DecodedEnvelope, this.#o.trust);
    } catch (e) {
      return this.#refuse(agent, h.id, SealwireError.is(e) ? e.code : "ERR_BAD_SIGNATURE", "");
    }
    const now = this.#now();
    if (now > h.createdAt + h.ttlMs) return this.#refuse(agent, h.id, "ERR_EXPIRED", "");
    let recipient;
    try {
      recipient = this.#o.trust.require(h.to);
    } catch (e) {
      return this.#refuse(agent, h.id, SealwireError.is(e) ? e.code : "ERR_UNKNOWN_PEER", "");
    }
    try {
      if (!this.#replay.checkAndAdd(`${h.from}/${h.id}`, h.createdAt + h.ttlMs, now)) return this.#refuse(agent, h.id, "ERR_REPLAY", "");
    } catch (e) {
      return this.#refuse(agent, h.id, "ERR_QUEUE_FULL", "replay_cache_full");
    }
    const d = await evaluate(
      this.#policy,
      { stage: "relay", phase: "header", header: h, sender, recipient, size: env.size, now },
      this.#o.policyTimeoutMs ?? POLICY_TIMEOUT_MS,
    );
    if (!d.allow) {
      if (!(await this.#auditOrRefuse(agent, h.id, { event: "denied", envelopeId: h.id, from: h.from, to: h.to, tags: h.tags.pii, decision: "deny", reason: d.reason }))) return true;
      this.#notify(agent, { kind: "sw-refused", id: h.id, code: "ERR_POLICY_DENIED", reason: d.reason });
      return true; // a policy decision, not garbage: do not count toward cutting the connection
    }
    const expiresAt = Math.min(h.createdAt + h.ttlMs, now + (this.#o.queueTtlMs ?? 60_000));
    const q = this.#queues.get(h.to) ?? [];
    const target = this.#sessions.get(h.to);
    if (!target && q.length >= (this.#o.maxQueuePerRecipient ?? 256)) {
      if (!(await this.#auditOrRefuse(agent, h.id, { event: "denied", envelopeId: h.id, from: h.from, to: h.to, tags: h.tags.pii, decision: "deny", reason: "queue_full" }))) return true;
      this.#refuse(agent, h.id, "ERR_QUEUE_FULL", "recipient_offline");
      return true;
    }
    // Fail closed: nothing is relayed or queued without its record.
    const relayed = { event: "relayed" as const, envelopeId: h.id, from: h.from, to: h.to, tags: h.tags.pii, decision: "allow" as const, ...(target ? {} : { reason: "queued" }) };
    if (!(await this.#auditOrRefuse(agent, h.id, relayed))) return true;
    const live = this.#sessions.get(h.to);
    if (live && this.#forward(live, frame, h.id, h.from, h.to, h.createdAt + h.ttlMs)) return true;
    if (q.length >= (this.#o.maxQueuePerRecipient ?? 256)) {
      this.#refuse(agent, h.id, "ERR_QUEUE_FULL", "recipient_offline");
      return true;
    }
    q.push({ frame, id: h.id, from: h.from, expiresAt });
    this.#queues.set(h.to, q);
    void conn;
    return true;
  }

  /** Sends to a connected agent; false if its connection cannot take it (the caller queues). */
  #forward(conn: Connection, frame: Uint8Array, id: string, from: string, to: string, expiresAt: number): boolean {
    try {
      conn.send(frame); // a `false` (slow reader) still queued the frame inside the transport's bounded buffer
    } catch {
      return false;
    }
    if (this.#inflight.size >= 200_000) this.#inflight.delete(this.#inflight.keys().next().value!);
    this.#inflight.set(id, { from, to, expiresAt });
    return true;
  }

  #flush(agent: string): void {
    const q = this.#queues.get(agent);
    if (!q) return;
    this.#queues.delete(agent);
    const conn = this.#sessions.get(agent);
    const now = this.#now();
    for (const item of q) {
      if (item.expiresAt < now) {
        this.#refuse(item.from, item.id, "ERR_EXPIRED", "expired_in_queue");
        continue;
      }
      if (!conn || !this.#forward(conn, item.frame, item.id, item.from, agent, item.expiresAt)) {
        this.#refuse(item.from, item.id, "ERR_NO_ROUTE", "recipient_gone");
      }
    }
  }

  #sweep(): void {
    const now = this.#now();
    for (const [to, q] of this.#queues) {
      const keep = q.filter((item) => {
        if (item.expiresAt >= now) return true;
        this.#refuse(item.from, item.id, "ERR_EXPIRED", "expired_in_queue");
        return false;
      });
      if (keep.length) this.#queues.set(to, keep);
      else this.#queues.delete(to);
    }
    for (const [id, f] of this.#inflight) if (f.expiresAt < now) this.#inflight.delete(id);
  }

  #revoked(id: string): void {
    this.#sessions.get(id)?.abort(sealwireError("ERR_REVOKED_PEER", `agent "${id}" was revoked`));
    this.#sessions.delete(id);
    const q = this.#queues.get(id);
    this.#queues.delete(id);
    for (const item of q ?? []) this.#refuse(item.from, item.id, "ERR_REVOKED_PEER", "recipient_revoked");
    for (const [to, items] of this.#queues) {
      const keep = items.filter((item) => item.from !== id);
      if (keep.length) this.#queues.set(to, keep);
      else this.#queues.delete(to);
    }
    void this.#audit({ event: "peer_revoked", peer: id }).catch((e) => this.#report(e));
  }

  /**
   * Verifies and applies a key statement (rotation or revocation) to the hub's trust store, audits it, and relays
   * it to every connected agent (except `from`). A revocation closes the revoked agent's connection at once and
   * refuses what is queued to or from it. Throws ERR_STATEMENT_INVALID.
   */
  async announce(statement: Uint8Array, from?: string): Promise<StatementResult> {
    const r = this.#o.trust.applyStatement(statement);
    if (r.applied && r.kind === "rotation") {
      await this.#audit({ event: "key_rotated", peer: r.id, kid: r.newKid, reason: `from:${r.oldKid}` });
    }
    // (revocations are audited by the trust store's onRevoke listener, #revoked)
    if (r.applied) {
      const frame = encodeControl({ kind: "sw-statement", statement });
      for (const [id, conn] of this.#sessions) {
        if (id === from) continue;
        try {
          conn.send(frame);
        } catch {
          /* that agent is going away */
        }
      }
    }
    return r;
  }

  /** Stops accepting, closes every agent connection, refuses what is still queued. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweeper);
    for (const fn of this.#cleanups) fn();
    for (const [, q] of this.#queues) for (const item of q) this.#refuse(item.from, item.id, "ERR_CLOSED", "hub_closed");
    this.#queues.clear();
    const closing: Promise<unknown>[] = [];
    if (this.#listener) closing.push(this.#listener.close());
    for (const c of this.#sessions.values()) closing.push(c.close().catch(() => {}));
    this.#sessions.clear();
    await Promise.allSettled(closing);
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Hub(${this.#o.identity.id}, ${this.#sessions.size} connected)`;
  }
}

/** Creates and starts a hub. */
export async function createHub(options: HubOptions): Promise<Hub> {
  const hub = new Hub(options);
  await hub.start();
  return hub;
}
