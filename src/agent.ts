/**
 * The agent API: `createAgent` gives an agent that sends signed, sealed, tagged envelopes to other agents over
 * any {@link Transport}, receives them as an async iterator, and does request/reply.
 *
 * Every inbound frame goes through {@link SessionReceiver} (size → decode → schema → sender → signature or stream →
 * recipient → time → replay → decrypt) before the application sees anything; refused frames are reported to
 * `onError` with their code and never crash the agent. A connection that keeps sending refused frames is cut.
 * Queues are bounded: a slow consumer slows the sender down through transport backpressure instead of growing
 * memory.
 *
 * ## Modes: `signed` and `session`
 * Per agent (`mode`) or per call (`send(..., { mode })`):
 * - `signed` (the default): every envelope has its own HPKE encapsulation and Ed25519 signature. For
 *   audit-critical traffic: each envelope is non-repudiable on its own.
 * - `session`: one stream per recipient (`src/session.ts`). The stream is opened by a signed control envelope
 *   (`sw.open`); every message then rides a continuation sealed with the stream's HPKE context (one AEAD pass),
 *   and the sender signs a checkpoint over the hash chain of what it sent every `checkpointEvery` envelopes or
 *   `checkpointIntervalMs` (a timer sends a checkpoint on an idle stream) and when the stream ends. The recipient
 *   verifies each checkpoint and records it in the audit trail (`session_checkpoint`). For high-rate traffic.
 *   A recipient always accepts both; refusals (tampering, replay, revocation, policy) are the same.
 * - A continuation's header is authenticated by the AEAD, so for continuations the deliver-side header phase of
 *   the policy runs right after the AEAD check (on authenticated metadata, as for signed envelopes); if it
 *   denies, the plaintext is wiped unread.
 * - Streams recover by themselves: a recipient that does not hold a stream (restarted, evicted, expired) refuses
 *   with ERR_UNKNOWN_STREAM and tells the sender (through the hub's refusal, or a signed `sw.refused` notice on
 *   direct transports), which re-opens; a direct connection that is re-dialled ends the stream first. In hub mode
 *   `waitForDelivery` re-sends once on a fresh stream; otherwise the refused message is reported to the sender's
 *   `onError` (and fails a pending request) — never silently dropped.
 *
 * @module
 * @example
 * ```ts
 * const a = await createAgent({ identity: alice, trust, transport: net });
 * await a.send("bob", { text: "hi bob" });
 * for await (const msg of b.messages()) { console.log(msg.from, msg.data); break; }
 * ```
 */
import { toHex } from "./_bytes.js";
import { authMessage, encodeControl, isControlFrame, parseControl } from "./_hub-protocol.js";
import { createAttestation, verifyAttestation, type VerifiedAttestation } from "./attestation.js";
import { sessionAuditEvent, type AuditEvent } from "./audit.js";
import { SealwireError, sealwireError, type ErrorCode } from "./errors.js";
import {
  DEFAULT_CLOCK_SKEW_MS,
  DEFAULT_TTL_MS,
  ReplayCache,
  decodePayload,
  encodeData,
  encodePayload,
  sealEnvelope,
  type Data,
  type EnvelopeHeader,
  type Tags,
  type TagsInit,
} from "./envelope.js";
import { resolveIdentity, type IdentityProvider } from "./keystore.js";
import { SessionReceiver, SessionSender, decodeSessionEnvelope, isSessionFrame, type SessionEvent, type VerifiedSessionEnvelope } from "./session.js";
import type { ReplayGuard } from "./replay-guard.js";
import { DEFAULT_OVERLAP_MS, rotateIdentity } from "./statements.js";
import { POLICY_TIMEOUT_MS, defaultPolicy, evaluate, type Decision, type Policy, type PolicyContext, type PolicyHeader } from "./policy.js";
import { Identity, assertAgentId } from "./identity.js";
import type { Connection, Listener, Transport } from "./transport.js";
import { isTransport } from "./transport.js";
import type { TrustEntry, TrustStore } from "./trust.js";
import { TrustStore as TrustStoreClass } from "./trust.js";

/** How an envelope is protected: see the module docs. */
export type SendMode = "signed" | "session";

/** Session-mode tuning (see `src/session.ts` for the defaults and what each bounds). */
export interface AgentSessionOptions {
  /** Sender: a signed checkpoint after this many envelopes on a stream. @default 256 */
  checkpointEvery?: number;
  /** Sender: a signed checkpoint at least this often while envelopes are uncovered (a timer). @default 1000 */
  checkpointIntervalMs?: number;
  /** Sender: envelopes per stream before it is re-opened with a fresh encapsulation. @default 2^20 */
  maxMessages?: number;
  /** Sender: stream age before it is re-opened. @default 10 min */
  maxAgeMs?: number;
  /** Recipient: streams held at once (LRU). @default 1024 */
  maxStreams?: number;
  /** Recipient: streams held per sender. @default 16 */
  maxStreamsPerSender?: number;
  /** Recipient: replay window in sequence numbers (a power of two, 32 to 65536). @default 1024 */
  replayWindow?: number;
  /** Recipient: envelopes held uncovered by a verified checkpoint before the stream is refused. @default 2048 */
  maxUncheckpointed?: number;
}

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
  /**
   * Hub mode: reach every peer through the hub at this address (one connection, no listener). The agent
   * authenticates to the hub, acknowledges what it processed, and reconnects with jittered backoff.
   */
  hub?: string;
  /** The hub's agent id: the hub must prove this identity (it must be in `trust`). Required in hub mode. */
  hubPeer?: string;
  /** Reconnect backoff in hub mode (full jitter). @default { minMs: 100, maxMs: 1000 } */
  reconnect?: { minMs?: number; maxMs?: number };
  /** @default 1 MiB */
  maxEnvelopeBytes?: number;
  /** @default 30 s */
  clockSkewMs?: number;
  /** Time to live of sent envelopes. @default 5 min */
  defaultTtlMs?: number;
  /**
   * Seen-envelope cache. Pass a `PersistentReplayCache` so an envelope captured before a restart is still refused
   * after it. @default an in-memory ReplayCache
   */
  replay?: ReplayGuard;
  /** Messages held for the application before the agent stops reading from the network. @default 1024 */
  inboxSize?: number;
  /** Called with every refused inbound envelope or connection failure (code, envelope id; never payloads). */
  onError?: (err: SealwireError) => void;
  /**
   * Checked at `send` (before sealing) and at `deliver` (before decryption on the header, after it on the
   * content). @default defaultPolicy(): PII clearances + content scanners
   */
  policy?: Policy;
  /** Time budget of one policy evaluation; over it the policy denies. @default 1000 */
  policyTimeoutMs?: number;
  /** Where sent/delivered/denied events are recorded (an `AuditLog`). Metadata only, payloads as keyed digests. */
  audit?: AuditSink;
  /**
   * Tell the sender when a policy denies its message at delivery (a small signed `sw.denied` notice with the
   * envelope id and reason code; at most 60 a minute per sender). @default true
   */
  notifyDenials?: boolean;
  /** Clock, for tests. @default Date.now */
  now?: () => number;
  /**
   * How this agent's messages are sent unless a call says otherwise: `signed` (every envelope signed, for
   * audit-critical traffic) or `session` (streams with signed checkpoints, for high-rate traffic). Received
   * envelopes of either mode are always accepted. @default "signed"
   */
  mode?: SendMode;
  /** Session-mode tuning. */
  session?: AgentSessionOptions;
}

/** Anything with the `append` of an `AuditLog`. */
export interface AuditSink {
  append(event: AuditEvent): Promise<unknown>;
}

/** Options for {@link Agent.send}. */
export interface SendOptions {
  tags?: TagsInit;
  /** Message type (`sw.*` is reserved). @default "msg" */
  type?: string;
  ttlMs?: number;
  /** `signed` or `session` for this message. @default the agent's `mode` */
  mode?: SendMode;
  signal?: AbortSignal;
  /**
   * Attest that `data` is the anonymized form of `input` (a message this agent received) under the named
   * policy. The recipient accepts PII-tagged, anonymized data without clearance only with a valid attestation
   * from a trusted agent holding the `anonymizer` role.
   */
  attestation?: { input: Pick<ReceivedMessage, "id" | "digest">; policy: string };
  /**
   * Hub mode: resolve only once the recipient agent acknowledged the envelope; reject with the hub's refusal
   * code, or `ERR_DELIVERY_UNCONFIRMED` if the hub connection ends first. Ignored for direct transports, where
   * `send` resolves when the transport accepted the frame.
   */
  waitForDelivery?: boolean;
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
  /** SHA-256 (hex) of the envelope bytes as received: what an attestation or an audit record refers to. */
  readonly digest: string;
  /** The verified anonymization attestation the message carried, if any. */
  readonly attestation: VerifiedAttestation | undefined;
  /** `signed`: the envelope carried its own signature; `session`: a stream continuation (non-repudiable through the stream's checkpoints). */
  readonly mode: SendMode;
  /** Sends `data` back to the sender as the reply to this message. */
  reply(data: Data, options?: Omit<SendOptions, "type">): Promise<{ id: string }>;
}

const REFUSED_FRAMES_BEFORE_CUT = 32;
/** Refusals that concern a stream, not the envelope: the sender should re-open (they get a `sw.refused` notice). */
const STREAM_REFUSALS: ReadonlySet<string> = new Set(["ERR_UNKNOWN_STREAM", "ERR_CHECKPOINT", "ERR_KEY_RETIRED"]);
const SEND_MODES: ReadonlySet<unknown> = new Set(["signed", "session"]);
const ID_RE = /^[0-9a-f]{32}$/;
/** Why the application did not get an envelope (sent back to the hub, which tells the sender). */
interface Refusal {
  code: ErrorCode;
  reason: string;
}
/** Hub connection failures that waiting will not cure. */
const NOT_TRANSIENT: ReadonlySet<string> = new Set(["ERR_HUB_AUTH", "ERR_REVOKED_PEER", "ERR_UNTRUSTED_PEER", "ERR_NOISE_HANDSHAKE", "ERR_TLS"]);
/** Longest a send waits for a reconnecting hub before ERR_NO_ROUTE. */
const HUB_WAIT_MS = 5000;

interface Pending {
  to: string;
  resolve: (m: ReceivedMessage) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout;
}

/** A running agent. Create with {@link createAgent}. */
export class Agent {
  readonly id: string;
  #identity: Identity;
  #unwatchIdentity: () => void = () => {};
  /** Identities rotated out, closed when their overlap window ends (or when the agent closes). */
  readonly #retiring = new Map<NodeJS.Timeout, Identity>();
  readonly #trust: TrustStore;
  readonly #transport: Transport;
  readonly #opts: AgentOptions;
  readonly #receiver: SessionReceiver;
  /** Session mode: one stream sender per recipient, created on first use. */
  readonly #senders = new Map<string, SessionSender>();
  #checkpointTimer: NodeJS.Timeout | undefined;
  /** Session-event audit appends in flight (awaited by close). */
  readonly #sessionAudits = new Set<Promise<void>>();
  readonly #inbox: ReceivedMessage[] = [];
  readonly #inboxSize: number;
  readonly #inboxWaiters: (() => void)[] = [];
  readonly #spaceWaiters: (() => void)[] = [];
  readonly #outbound = new Map<string, Promise<Connection>>();
  readonly #inbound = new Set<Connection>();
  readonly #pending = new Map<string, Pending>();
  readonly #cleanups: (() => void)[] = [];
  readonly #policy: Policy;
  readonly #policyTimeoutMs: number;
  readonly #nacks = new Map<string, { start: number; count: number }>();
  #selfEntry: TrustEntry | undefined;
  #hubConn: Promise<Connection> | undefined;
  #hubReady: Connection | undefined;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #reconnectDelay = 0;
  readonly #hubWaiters = new Set<(err?: Error, conn?: Connection) => void>();
  readonly #deliveryWaiters = new Map<string, { resolve: () => void; reject: (e: unknown) => void }>();
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
    if (options.policy !== undefined && typeof options.policy !== "function") {
      throw sealwireError("ERR_INVALID_ARGUMENT", "policy must be a function (ctx) => Decision");
    }
    this.#policy = options.policy ?? defaultPolicy();
    this.#policyTimeoutMs = options.policyTimeoutMs ?? POLICY_TIMEOUT_MS;
    if (options.mode !== undefined && !SEND_MODES.has(options.mode)) throw sealwireError("ERR_INVALID_ARGUMENT", 'mode must be "signed" or "session"');
    const so = options.session ?? {};
    if (so === null || typeof so !== "object") throw sealwireError("ERR_INVALID_ARGUMENT", "session must be an object of session-mode options");
    this.#receiver = new SessionReceiver({
      identity: options.identity,
      trust: options.trust,
      replay: options.replay ?? new ReplayCache(),
      ...(options.maxEnvelopeBytes !== undefined ? { maxEnvelopeBytes: options.maxEnvelopeBytes } : {}),
      ...(options.clockSkewMs !== undefined ? { clockSkewMs: options.clockSkewMs } : {}),
      ...(options.now !== undefined ? { now: options.now } : {}),
      ...(so.maxStreams !== undefined ? { maxStreams: so.maxStreams } : {}),
      ...(so.maxStreamsPerSender !== undefined ? { maxStreamsPerSender: so.maxStreamsPerSender } : {}),
      ...(so.replayWindow !== undefined ? { replayWindow: so.replayWindow } : {}),
      ...(so.maxUncheckpointed !== undefined ? { maxUncheckpointed: so.maxUncheckpointed } : {}),
      onEvent: (e) => this.#onSessionEvent(e),
    });
    // Sender options are checked now, not at the first send.
    new SessionSender(this.#senderOptions(this.id)).close();
    this.#unwatchIdentity = options.identity.onClose(() => void this.close());
    this.#cleanups.push(
      options.trust.onRevoke((entry) => this.#dropPeer(entry.id)),
      () => this.#unwatchIdentity(),
    );
  }

  /** @internal */
  async start(): Promise<void> {
    if (this.#opts.hub !== undefined) {
      if (typeof this.#opts.hub !== "string") throw sealwireError("ERR_INVALID_ARGUMENT", "hub must be an address string");
      assertAgentId(this.#opts.hubPeer, "hubPeer (the hub's agent id)");
      this.#trust.require(this.#opts.hubPeer);
      await this.#hubConnection(undefined);
      return;
    }
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
    if (options.type !== undefined && typeof options.type === "string" && options.type.startsWith("sw.")) {
      throw sealwireError("ERR_INVALID_ARGUMENT", 'message types starting with "sw." are reserved for sealwire');
    }
    return this.#sendRaw(to, data, options, replyTo, true);
  }

  async #sendRaw(
    to: string,
    data: Data,
    options: SendOptions,
    replyTo: string | undefined,
    checkPolicy: boolean,
  ): Promise<{ id: string; header: EnvelopeHeader }> {
    const recipient = this.#trust.require(to);
    const me = this.#self();
    const mode = options.mode ?? this.#opts.mode ?? "signed";
    if (!SEND_MODES.has(mode)) throw sealwireError("ERR_INVALID_ARGUMENT", 'mode must be "signed" or "session"');
    // In session mode the envelope id is derived from the stream when sealed: the policy sees a provisional one.
    const id = toHex(this.#identity.provider.randomBytes(16));
    const ttlMs = options.ttlMs ?? this.#opts.defaultTtlMs ?? DEFAULT_TTL_MS;
    const now = this.#opts.now?.() ?? Date.now();
    let tags: TagsInit = { ...(options.tags ?? {}) };
    const dataBytes = encodeData(data); // validates data before any policy sees it
    let attestation: unknown;
    if (options.attestation) {
      const { input, policy } = options.attestation;
      attestation = createAttestation(this.#identity, { id: input?.id, digest: input?.digest }, dataBytes, policy, now);
    }
    if (checkPolicy) {
      for (let round = 0; ; round++) {
        const header: PolicyHeader = {
          id,
          from: this.id,
          to,
          type: options.type ?? "msg",
          createdAt: now,
          ttlMs,
          tags: { pii: [...(tags.pii ?? [])], anonymized: tags.anonymized ?? false, ...(tags.classification !== undefined ? { classification: tags.classification } : {}) },
        };
        const d = await evaluate(
          this.#policy,
          { stage: "send", phase: "content", header, sender: me, recipient, data, size: dataBytes.length, now },
          this.#policyTimeoutMs,
        );
        if (!d.allow) {
          await this.#audit({ event: "denied", envelopeId: id, from: this.id, to, tags: tagList(header.tags), decision: "deny", reason: d.reason });
          throw sealwireError("ERR_POLICY_DENIED", `policy denied sending ${id} to "${to}": ${d.reason}`, { envelopeId: id, reason: d.reason });
        }
        const extra = (d.addTags ?? []).filter((t) => !(tags.pii ?? []).includes(t));
        if (extra.length === 0) break;
        if (round > 0) throw sealwireError("ERR_POLICY_DENIED", `policy kept adding tags to ${id}`, { envelopeId: id, reason: "policy_error" });
        tags = { ...tags, pii: [...(tags.pii ?? []), ...extra] };
      }
    }
    // The encoded plaintext is wiped once sealed, in either mode.
    const payload = attestation === undefined ? encodePayload(data) : encodePayload(data, attestation);
    if (mode === "session" && checkPolicy) {
      try {
        return await this.#sendSession(to, payload, dataBytes, tags, ttlMs, options, replyTo);
      } finally {
        payload.fill(0);
      }
    }
    let sealed;
    try {
      sealed = sealEnvelope(this.#identity, recipient, payload, {
        id,
        ttlMs,
        now,
        tags,
        ...(options.type !== undefined ? { type: options.type } : {}),
        ...(replyTo !== undefined ? { replyTo } : {}),
      });
    } finally {
      payload.fill(0);
    }
    // Fail closed: the record is written before the envelope leaves; if it cannot be, nothing is sent.
    await this.#audit({ event: "sent", envelopeId: id, from: this.id, to, tags: tagList(sealed.header.tags), decision: "allow", payload: dataBytes });
    const confirmed = options.waitForDelivery && this.#opts.hub !== undefined ? this.#awaitDelivery(id, ttlMs) : undefined;
    // The hub connection may die while the frame is written (and be retried): never leave this rejection unhandled.
    confirmed?.catch(() => {});
    try {
      await this.#deliverFrame(to, sealed.bytes, options.signal);
    } catch (e) {
      this.#deliveryWaiters.delete(id);
      // The `sent` record stands; this one says it did not leave.
      await this.#audit({ event: "denied", envelopeId: id, from: this.id, to, decision: "deny", reason: SealwireError.is(e) ? e.code : "ERR_NO_ROUTE" }).catch(() => {});
      throw e;
    }
    await confirmed;
    return { id, header: sealed.header };
  }

  /**
   * Session mode: seals on the recipient's stream (opening one if needed) and sends, preceding frames first.
   * The connection is obtained before sealing, so a re-dialled connection ends the old stream first (see
   * {@link #connection}); a frame that could not be written is re-sealed once on a fresh connection, and in hub
   * mode a delivery refused with ERR_UNKNOWN_STREAM is re-sent once on a fresh stream.
   */
  async #sendSession(
    to: string,
    payload: Uint8Array,
    dataBytes: Uint8Array,
    tags: TagsInit,
    ttlMs: number,
    options: SendOptions,
    replyTo: string | undefined,
  ): Promise<{ id: string; header: EnvelopeHeader }> {
    const hub = this.#opts.hub !== undefined;
    for (let attempt = 0; ; attempt++) {
      const conn = await this.#connect(to, options.signal);
      this.#alive();
      const tx = this.#sessionSender(to);
      const sealed = tx.seal(payload, {
        tags,
        ttlMs,
        now: this.#opts.now?.() ?? Date.now(),
        ...(options.type !== undefined ? { type: options.type } : {}),
        ...(replyTo !== undefined ? { replyTo } : {}),
      });
      const id = sealed.header.id;
      let confirmed: Promise<void> | undefined;
      let audited = false;
      try {
        // Stream control first, at once (no application data: the end of an old stream, the opener of a new one),
        // so no continuation can overtake its opener while this one waits for its audit record.
        for (const f of sealed.preceding) conn.send(f);
        // Fail closed: the record is written before the message leaves; if it cannot be, nothing is sent.
        await this.#audit({ event: "sent", envelopeId: id, from: this.id, to, tags: tagList(sealed.header.tags), decision: "allow", payload: dataBytes });
        audited = true;
        confirmed = options.waitForDelivery && hub ? this.#awaitDelivery(id, ttlMs) : undefined;
        confirmed?.catch(() => {});
        if (!conn.send(sealed.bytes)) await conn.drain(options.signal ? { signal: options.signal } : {});
      } catch (e) {
        const lost = SealwireError.is(e, "ERR_CONNECTION_CLOSED") || SealwireError.is(e, "ERR_CONNECTION_ABORTED");
        if (audited) {
          this.#deliveryWaiters.delete(id);
          // The `sent` record stands; this one says it did not leave.
          await this.#audit({ event: "denied", envelopeId: id, from: this.id, to, decision: "deny", reason: SealwireError.is(e) ? e.code : "ERR_NO_ROUTE" }).catch(() => {});
        }
        if (attempt === 0 && lost) {
          this.#connectionLost(to, conn);
          continue;
        }
        throw e;
      }
      try {
        await confirmed;
      } catch (e) {
        // The hub's refusal already made the sender forget the stream (#onHubControl): re-send on a fresh one.
        if (attempt === 0 && SealwireError.is(e, "ERR_UNKNOWN_STREAM")) continue;
        throw e;
      }
      return { id, header: sealed.header };
    }
  }

  /** The recipient's stream sender, created on first use (and the checkpoint timer with the first one). */
  #sessionSender(to: string): SessionSender {
    let tx = this.#senders.get(to);
    if (tx !== undefined && !tx.closed) return tx;
    tx = new SessionSender(this.#senderOptions(to));
    this.#senders.set(to, tx);
    if (this.#checkpointTimer === undefined) {
      const every = this.#opts.session?.checkpointIntervalMs ?? 1000;
      this.#checkpointTimer = setInterval(() => this.#tickStreams(), Math.max(10, Math.min(every, 60_000)));
      this.#checkpointTimer.unref?.();
    }
    return tx;
  }

  #senderOptions(to: string): ConstructorParameters<typeof SessionSender>[0] {
    const so = this.#opts.session ?? {};
    return {
      identity: this.#identity,
      trust: this.#trust,
      to,
      openWithControl: true,
      ...(so.checkpointEvery !== undefined ? { checkpointEvery: so.checkpointEvery } : {}),
      ...(so.checkpointIntervalMs !== undefined ? { checkpointIntervalMs: so.checkpointIntervalMs } : {}),
      ...(so.maxMessages !== undefined ? { maxMessages: so.maxMessages } : {}),
      ...(so.maxAgeMs !== undefined ? { maxAgeMs: so.maxAgeMs } : {}),
      ...(this.#opts.now !== undefined ? { now: this.#opts.now } : {}),
    };
  }

  /** Timer: a checkpoint on each stream with uncovered envelopes, and the end of streams past their age. */
  #tickStreams(): void {
    for (const [to, tx] of this.#senders) {
      if (tx.closed) {
        this.#senders.delete(to);
        continue;
      }
      if (tx.streamId === undefined) continue;
      // Only over a connection that is up: a checkpoint is no reason to dial (the next message re-dials, and a
      // re-dialled direct connection ends the stream with its final checkpoint).
      if (this.#opts.hub !== undefined ? this.#hubReady === undefined : !this.#outbound.has(to)) continue;
      this.#deliverFrame(to, () => tx.tick(), undefined).catch((e) => {
        if (!SealwireError.is(e, "ERR_CONNECTION_CLOSED") && !SealwireError.is(e, "ERR_CONNECTION_ABORTED")) this.#report(e);
      });
    }
  }

  /**
   * Ends every stream (sending the final checkpoints on connections that are up or being dialled, waiting at most
   * a second for those) and forgets the senders.
   */
  #endStreams(): Promise<void> {
    const sends: Promise<void>[] = [];
    for (const [to, tx] of this.#senders) {
      this.#senders.delete(to);
      let fin: Uint8Array | undefined;
      try {
        fin = tx.close();
      } catch (e) {
        this.#report(e);
      }
      if (fin === undefined) continue;
      const conn = this.#opts.hub !== undefined ? Promise.resolve(this.#hubReady) : this.#outbound.get(to);
      if (conn === undefined) continue;
      sends.push(
        conn.then(
          (c) => void c?.send(fin),
          () => {},
        ),
      );
    }
    if (sends.length === 0) return Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([Promise.allSettled(sends), new Promise<void>((r) => (timer = setTimeout(r, 1000)))]).then(() => clearTimeout(timer));
  }

  async #connect(to: string, signal: AbortSignal | undefined): Promise<Connection> {
    try {
      return await this.#connection(to, signal);
    } catch (e) {
      if (SealwireError.is(e, "ERR_ABORTED") || SealwireError.is(e, "ERR_CLOSED")) throw e;
      throw sealwireError("ERR_NO_ROUTE", `cannot reach agent "${to}"; is it running and is its address right?`, { cause: e });
    }
  }

  #connectionLost(to: string, conn: Connection): void {
    if (this.#opts.hub === undefined) this.#outbound.delete(to);
    if (this.#hubReady === conn) this.#hubLost(conn);
  }

  /** Writes `frame` (or what `frame()` seals once the connection is up; nothing if it returns undefined). */
  async #deliverFrame(to: string, frame: Uint8Array | (() => Uint8Array | undefined), signal: AbortSignal | undefined): Promise<void> {
    // One retry: a cached connection may have died since the last send.
    for (let attempt = 0; ; attempt++) {
      const conn = await this.#connect(to, signal);
      const bytes = typeof frame === "function" ? frame() : frame;
      if (bytes === undefined) return;
      try {
        if (!conn.send(bytes)) await conn.drain(signal ? { signal } : {});
        return;
      } catch (e) {
        if (SealwireError.is(e, "ERR_CONNECTION_CLOSED") || SealwireError.is(e, "ERR_CONNECTION_ABORTED")) {
          this.#connectionLost(to, conn);
          if (attempt === 0 && typeof frame !== "function") continue;
        }
        throw e;
      }
    }
  }

  #connection(to: string, signal: AbortSignal | undefined): Promise<Connection> {
    if (this.#opts.hub !== undefined) return this.#hubConnection(signal);
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
      // A re-dialled peer may have restarted and lost our stream: end it (its final checkpoint goes first on the
      // new connection) so the next session-mode message re-opens instead of being refused.
      const tx = this.#senders.get(to);
      if (tx !== undefined && !tx.closed && tx.streamId !== undefined) {
        try {
          const fin = tx.endStream();
          if (fin) conn.send(fin);
        } catch (e) {
          this.#report(e);
        }
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
    let waiting: (() => void) | undefined;
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
            if (waiting === wake) waiting = undefined;
            resolve();
          };
          waiting = wake;
          self.#inboxWaiters.push(wake);
          signal?.addEventListener("abort", wake, { once: true });
        });
      }
    };
    return {
      next,
      return: async () => {
        done = true;
        // A wake-up meant for this iterator must not be lost to the others: leave the queue, and pass on
        // any message that arrived for it.
        if (waiting !== undefined) {
          const i = self.#inboxWaiters.indexOf(waiting);
          if (i >= 0) self.#inboxWaiters.splice(i, 1);
          waiting();
        }
        if (self.#inbox.length > 0) self.#inboxWaiters.shift()?.();
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

  /**
   * Rotates this agent's keys: a new key pair and kid, a statement signed by the old and the new key, applied to
   * this agent's trust store and announced to its peers (through the hub in hub mode, else to every trusted peer).
   * Envelopes sealed to the old key are still opened for `overlapMs`; then the old identity is closed (wiped).
   * A transport with `useIdentity` (a `noise()` transport, or a wrapper that forwards it) is switched to the new
   * identity: new handshakes use the new key, and channels opened with the old one end when it closes. Other
   * transports bound to the old identity must be re-created by the caller. Returns the new identity and the
   * statement.
   */
  async rotate(options: { overlapMs?: number } = {}): Promise<{ identity: Identity; statement: Uint8Array }> {
    this.#alive();
    const overlapMs = options.overlapMs ?? DEFAULT_OVERLAP_MS;
    if (!Number.isSafeInteger(overlapMs) || overlapMs < 0) throw sealwireError("ERR_INVALID_ARGUMENT", "overlapMs must be a non-negative integer");
    const now = this.#opts.now?.() ?? Date.now();
    const old = this.#identity;
    const { identity: next, statement } = rotateIdentity(old, now);
    // Announce while still signing with the old key: peers only trust the new kid once they applied the statement.
    await this.announce(statement);
    if (this.#trust.get(this.id)) this.#trust.applyStatement(statement, { overlapMs, now });
    this.#receiver.rotateTo(next, now + overlapMs);
    this.#identity = next;
    // A noise() transport (or a wrapper that forwards useIdentity) follows the rotation: new handshakes use `next`;
    // only channels opened under `old` end (ERR_KEY_RETIRED) when `old` closes below, not the listener.
    try {
      (this.#transport as { useIdentity?: (i: Identity) => void }).useIdentity?.(next);
    } catch (e) {
      this.#report(e); // the rotation stands (already announced); do not leave it half done
    }
    // Streams signed by the old key end now (their final checkpoints still verify); new ones open with the new key.
    void this.#endStreams();
    this.#selfEntry = undefined;
    this.#unwatchIdentity();
    this.#unwatchIdentity = next.onClose(() => void this.close());
    const t = setTimeout(() => {
      this.#retiring.delete(t);
      old.close();
    }, overlapMs);
    t.unref?.();
    this.#retiring.set(t, old);
    await this.#audit({ event: "key_rotated", peer: this.id, kid: next.kid, reason: `from:${old.kid}` });
    return { identity: next, statement };
  }

  /**
   * Hands a key statement (rotation or revocation, e.g. from `createRevocation`) to the peers: to the hub in hub
   * mode (which verifies it, applies it and relays it to every connected agent), else as a sealed `sw.statement`
   * message to every trusted peer. Resolves with the number of peers (or 1 for the hub) it reached.
   */
  async announce(statement: Uint8Array): Promise<number> {
    this.#alive();
    if (!(statement instanceof Uint8Array)) throw sealwireError("ERR_INVALID_ARGUMENT", "statement must be the Uint8Array from rotateIdentity/createRevocation");
    if (this.#opts.hub !== undefined) {
      const conn = await this.#hubConnection(undefined);
      if (!conn.send(encodeControl({ kind: "sw-statement", statement }))) await conn.drain();
      return 1;
    }
    let reached = 0;
    await Promise.all(
      this.#trust
        .list()
        .filter((e) => !e.revoked && e.id !== this.id)
        .map((e) =>
          this.#sendRaw(e.id, statement, { type: "sw.statement", ttlMs: 60_000 }, undefined, false).then(
            () => reached++,
            () => {},
          ),
        ),
    );
    return reached;
  }

  async #applyStatement(bytes: Uint8Array): Promise<void> {
    try {
      const r = this.#trust.applyStatement(bytes);
      if (r.applied && r.kind === "rotation") await this.#audit({ event: "key_rotated", peer: r.id, kid: r.newKid, reason: `from:${r.oldKid}` });
      if (r.applied && r.kind === "revocation") await this.#audit({ event: "peer_revoked", peer: r.id, kid: r.kid, reason: `by:${r.by}` });
    } catch (e) {
      this.#report(e);
    }
  }

  /** Waits for the hub's verdict, at most until the envelope expires (a lost verdict must not hang the sender). */
  #awaitDelivery(id: string, ttlMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#deliveryWaiters.get(id)?.resolve !== done) return;
        this.#deliveryWaiters.delete(id);
        reject(sealwireError("ERR_DELIVERY_UNCONFIRMED", `no delivery verdict for ${id} before it expired; it may or may not have arrived`, { envelopeId: id }));
      }, ttlMs + DEFAULT_CLOCK_SKEW_MS);
      timer.unref?.();
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#deliveryWaiters.set(id, {
        resolve: done,
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** The authenticated hub connection, (re)connecting as needed. */
  #hubConnection(signal: AbortSignal | undefined, waitForReconnect = true): Promise<Connection> {
    if (this.#closed) return Promise.reject(sealwireError("ERR_CLOSED", `agent "${this.id}" was closed`));
    if (this.#hubConn) return this.#hubConn;
    if (waitForReconnect && this.#reconnectTimer) {
      // A reconnect is scheduled: wait for it (bounded) rather than dialling once per send (a reconnect storm).
      return new Promise<Connection>((resolve, reject) => {
        const timer = setTimeout(() => done(sealwireError("ERR_NO_ROUTE", "the hub is unreachable; still reconnecting")), HUB_WAIT_MS);
        const onAbort = () => done(sealwireError("ERR_ABORTED", "send aborted while waiting for the hub"));
        const done = (err?: Error, conn?: Connection) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          this.#hubWaiters.delete(waiter);
          if (conn) resolve(conn);
          else reject(err);
        };
        const waiter = (err?: Error, conn?: Connection) => done(err, conn);
        this.#hubWaiters.add(waiter);
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    }
    const hubPeer = this.#opts.hubPeer!;
    const p = (async () => {
      const conn = await this.#transport.dial(this.#opts.hub!, { remotePeer: hubPeer, ...(signal ? { signal } : {}) });
      const frames = conn[Symbol.asyncIterator]();
      try {
        await this.#hubAuth(conn, frames, hubPeer);
      } catch (e) {
        // A hub that drops us during authentication refused us (revoked or untrusted here, most likely).
        const err =
          SealwireError.is(e) && e.code !== "ERR_CONNECTION_ABORTED" && e.code !== "ERR_CONNECTION_CLOSED"
            ? e
            : sealwireError("ERR_HUB_AUTH", `the hub "${hubPeer}" closed the connection during authentication; is this agent trusted (and not revoked) there?`, { cause: e });
        conn.abort(err);
        throw err;
      }
      if (this.#closed) {
        conn.abort(sealwireError("ERR_CLOSED", "agent closed"));
        throw sealwireError("ERR_CLOSED", `agent "${this.id}" was closed`);
      }
      this.#hubReady = conn;
      this.#reconnectDelay = 0;
      for (const w of [...this.#hubWaiters]) w(undefined, conn);
      // Notice a lost hub even while the read loop waits for inbox space (a slow application).
      void conn.closed.then(() => this.#hubLost(conn));
      void this.#hubLoop(conn, frames);
      return conn;
    })();
    this.#hubConn = p;
    p.catch((e: unknown) => {
      if (this.#hubConn === p) {
        this.#hubConn = undefined;
        // The hub refused us (revoked, untrusted, wrong hub): senders waiting for a reconnect fail now.
        if (SealwireError.is(e) && NOT_TRANSIENT.has(e.code)) for (const w of [...this.#hubWaiters]) w(e);
        this.#scheduleReconnect();
      }
    });
    return p;
  }

  async #hubAuth(conn: Connection, frames: AsyncIterator<Uint8Array>, hubPeer: string): Promise<void> {
    const deadline = AbortSignal.timeout(10_000);
    const nextFrame = async (): Promise<Uint8Array> => {
      const r = await Promise.race([
        frames.next(),
        new Promise<never>((_, reject) => deadline.addEventListener("abort", () => reject(sealwireError("ERR_TIMEOUT", "hub did not answer in time")), { once: true })),
      ]);
      if (r.done) throw sealwireError("ERR_HUB_AUTH", "the hub closed the connection during authentication");
      return r.value;
    };
    if (conn.remotePeer !== undefined) {
      // The secure channel (Noise) already proved who the hub is.
      if (conn.remotePeer !== hubPeer) throw sealwireError("ERR_HUB_AUTH", `expected hub "${hubPeer}", reached "${conn.remotePeer}"`);
    } else {
      const p = this.#identity.provider;
      const nonceA = p.randomBytes(32);
      conn.send(encodeControl({ kind: "sw-hello", agent: this.id, nonce: nonceA }));
      const ch = parseControl(await nextFrame());
      if (ch?.kind !== "sw-challenge" || ch.hub !== hubPeer) throw sealwireError("ERR_HUB_AUTH", `expected a challenge from hub "${hubPeer}"`);
      const hub = this.#trust.require(hubPeer);
      const tp = this.#trust.provider;
      if (!tp.ed25519Verify(tp.ed25519Public(hub.signPublicKey), authMessage("hub", this.id, hubPeer, nonceA, ch.nonce), ch.sig)) {
        throw sealwireError("ERR_HUB_AUTH", `the hub failed to prove it is "${hubPeer}"`);
      }
      conn.send(encodeControl({ kind: "sw-auth", sig: this.#identity.sign(authMessage("agent", this.id, hubPeer, nonceA, ch.nonce)) }));
    }
    const ready = parseControl(await nextFrame());
    if (ready?.kind !== "sw-ready") throw sealwireError("ERR_HUB_AUTH", "the hub refused this agent (is it in the hub's trust store?)");
  }

  async #hubLoop(conn: Connection, frames: AsyncIterator<Uint8Array>): Promise<void> {
    this.#inbound.add(conn);
    let refusedInARow = 0;
    try {
      for (;;) {
        const r = await frames.next();
        if (r.done || this.#closed) break;
        const frame = r.value;
        if (isControlFrame(frame)) {
          this.#onHubControl(frame);
          continue;
        }
        const ok = await this.#handleFrame(frame, (id, refusal) => {
          try {
            conn.send(encodeControl(refusal ? { kind: "sw-refused", id, code: refusal.code, reason: refusal.reason } : { kind: "sw-ack", id }));
          } catch {
            /* the hub is going away; it will not expect the answer */
          }
        });
        refusedInARow = ok ? 0 : refusedInARow + 1;
        if (refusedInARow >= REFUSED_FRAMES_BEFORE_CUT) {
          conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "too many refused envelopes from the hub"));
          break;
        }
      }
    } catch (e) {
      if (!this.#closed && !SealwireError.is(e, "ERR_CONNECTION_ABORTED") && !SealwireError.is(e, "ERR_CONNECTION_CLOSED")) this.#report(e);
    } finally {
      this.#inbound.delete(conn);
      this.#hubLost(conn);
    }
  }

  #onHubControl(frame: Uint8Array): void {
    const c = parseControl(frame);
    if (c?.kind === "sw-statement") {
      void this.#applyStatement(c.statement);
      return;
    }
    if (c?.kind === "sw-delivered") {
      const w = this.#deliveryWaiters.get(c.id);
      this.#deliveryWaiters.delete(c.id);
      w?.resolve();
    } else if (c?.kind === "sw-refused") {
      if (STREAM_REFUSALS.has(c.code)) this.#streamRefused(undefined, c.id, c.code, c.reason);
      const err = sealwireError(c.code, `the hub refused ${c.id}${c.reason ? `: ${c.reason}` : ""}`, { envelopeId: c.id, ...(c.reason ? { reason: c.reason } : {}) });
      const w = this.#deliveryWaiters.get(c.id);
      this.#deliveryWaiters.delete(c.id);
      w?.reject(err);
      const pending = this.#pending.get(c.id);
      if (pending) {
        this.#pending.delete(c.id);
        clearTimeout(pending.timer);
        pending.reject(err);
      }
      this.#report(err);
    } else {
      this.#report(sealwireError("ERR_DECODE", "unexpected control frame from the hub"));
    }
  }

  /** The hub connection ended: unconfirmed deliveries fail, and the agent reconnects. */
  #hubLost(conn: Connection): void {
    if (this.#hubReady !== conn) return;
    this.#hubReady = undefined;
    this.#hubConn = undefined;
    conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "hub connection lost"));
    for (const [id, w] of this.#deliveryWaiters) {
      w.reject(sealwireError("ERR_DELIVERY_UNCONFIRMED", `the hub connection ended before ${id} was confirmed delivered; it may or may not have arrived`, { envelopeId: id }));
    }
    this.#deliveryWaiters.clear();
    if (!this.#closed) this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.#reconnectTimer || this.#opts.hub === undefined) return;
    const min = this.#opts.reconnect?.minMs ?? 100;
    const max = this.#opts.reconnect?.maxMs ?? 1000;
    this.#reconnectDelay = Math.min(max, Math.max(min, this.#reconnectDelay * 2));
    // Full jitter: spread reconnecting agents so a restarted hub is not hit by all of them at once.
    const delay = Math.round(min + Math.random() * (this.#reconnectDelay - min));
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      this.#hubConnection(undefined, false).catch((e) => this.#report(e));
    }, delay);
    // Not unref'd: a process whose only work is an agent waiting for its hub must stay alive to reconnect.
  }

  /**
   * Returns false if the frame was refused as garbage. `ack` is called once per well-formed envelope with its id
   * and, unless the application got it, the refusal (code and reason) — what the hub tells the sender.
   */
  async #handleFrame(frame: Uint8Array, ack?: (id: string, refusal?: Refusal) => void): Promise<boolean> {
    let env: VerifiedSessionEnvelope;
    try {
      env = this.#receiver.verify(frame);
    } catch (e) {
      this.#report(e);
      if (ack && SealwireError.is(e) && e.envelopeId) ack(e.envelopeId, { code: e.code, reason: "" });
      if (SealwireError.is(e) && STREAM_REFUSALS.has(e.code)) {
        if (!ack) this.#notifyStreamRefusal(frame, e);
        // Through a hub, a stream this agent no longer holds (it restarted, or evicted it) is the sender's fault
        // only in timing: not counted toward cutting the hub connection. On a direct connection it counts (a
        // sender cut off that way re-dials, and a re-dialled connection starts a fresh stream).
        return e.code === "ERR_UNKNOWN_STREAM" && ack !== undefined;
      }
      return false;
    }
    const out: { refusal?: Refusal } = {};
    try {
      return await this.#handleVerified(frame, env, out, !ack);
    } catch (e) {
      // An audit sink that cannot record makes the delivery fail (the application never saw the message).
      const err = SealwireError.is(e) ? e : sealwireError("ERR_INTERNAL", "delivery failed", { cause: e });
      this.#report(err);
      out.refusal = { code: err.code, reason: "" };
      return false;
    } finally {
      ack?.(env.header.id, out.refusal);
    }
  }

  async #handleVerified(frame: Uint8Array, env: VerifiedSessionEnvelope, out: { refusal?: Refusal }, notify: boolean): Promise<boolean> {
    const h = env.header;
    const me = this.#self();
    const system = h.type.startsWith("sw.");
    const now = this.#opts.now?.() ?? Date.now();
    const ctxBase = { stage: "deliver" as const, header: h, sender: env.sender, size: env.size, now };
    if (!system && env.mode === "signed") {
      // Header phase: before decryption (Policy sees only authenticated metadata: the signature covers it).
      const d = await evaluate(this.#policy, { ...ctxBase, phase: "header", recipient: me }, this.#policyTimeoutMs);
      if (!d.allow) return this.#denied(h, d, out);
    }
    let opened;
    try {
      opened = this.#receiver.decrypt(env);
    } catch (e) {
      this.#report(e);
      out.refusal = { code: SealwireError.is(e) ? e.code : "ERR_DECRYPT", reason: "" };
      if (notify && SealwireError.is(e) && STREAM_REFUSALS.has(e.code)) this.#notifyStreamRefusal(frame, e);
      return false;
    }
    const pt = opened.plaintext;
    // Stream control (open, checkpoint, close): verified and recorded by the receiver, nothing to deliver.
    if (opened.control) {
      pt.fill(0);
      return true;
    }
    if (!system && env.mode === "session") {
      // Header phase for a continuation: its header is authenticated by the AEAD just checked. Denied: wiped unread.
      let d: Decision;
      try {
        d = await evaluate(this.#policy, { ...ctxBase, phase: "header", recipient: me }, this.#policyTimeoutMs);
      } catch (e) {
        pt.fill(0);
        throw e;
      }
      if (!d.allow) {
        pt.fill(0);
        return this.#denied(h, d, out);
      }
    }
    let msg: ReceivedMessage;
    let payloadBytes: Uint8Array | undefined;
    try {
      let decoded;
      try {
        decoded = decodePayload(pt);
      } finally {
        pt.fill(0);
      }
      let attestation: VerifiedAttestation | undefined;
      if (decoded.attestation) {
        try {
          attestation = verifyAttestation(this.#trust, decoded.attestation.raw, decoded.attestation.output, { now });
        } catch (e) {
          this.#report(e);
          return this.#denied(h, { allow: false, reason: "attestation_invalid" }, out);
        }
        payloadBytes = decoded.attestation.output;
      }
      const digest = toHex(this.#identity.provider.hash("sha256", frame));
      msg = this.#message(h, decoded.data, digest, attestation, env.mode);
    } catch (e) {
      this.#report(e);
      out.refusal = { code: SealwireError.is(e) ? e.code : "ERR_DECRYPT", reason: "" };
      return false;
    }
    if (system) {
      const ok = this.#handleSystem(msg);
      if (!ok) out.refusal = { code: "ERR_PAYLOAD", reason: "" };
      return ok;
    }
    // Content phase: after decryption, before the application sees anything.
    const ctx: PolicyContext = {
      ...ctxBase,
      phase: "content",
      recipient: me,
      data: msg.data,
      ...(msg.attestation ? { attestation: msg.attestation } : {}),
    };
    const d = await evaluate(this.#policy, ctx, this.#policyTimeoutMs);
    if (!d.allow) return this.#denied(h, d, out);
    await this.#audit({
      event: "delivered",
      envelopeId: h.id,
      from: h.from,
      to: h.to,
      tags: tagList(h.tags),
      decision: "allow",
      payload: payloadBytes ?? encodeData(msg.data),
    });
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

  /** A policy denied delivery: audit it, tell onError and (bounded) the sender. The frame counts as handled. */
  async #denied(h: EnvelopeHeader, d: Decision & { allow: false }, out: { refusal?: Refusal }): Promise<boolean> {
    out.refusal = { code: "ERR_POLICY_DENIED", reason: d.reason };
    await this.#audit({ event: "denied", envelopeId: h.id, from: h.from, to: h.to, tags: tagList(h.tags), decision: "deny", reason: d.reason });
    this.#report(sealwireError("ERR_POLICY_DENIED", `policy denied delivery of ${h.id} from "${h.from}": ${d.reason}`, { envelopeId: h.id, reason: d.reason }));
    if (this.#opts.notifyDenials !== false && this.#nackAllowed(h.from)) {
      this.#sendRaw(h.from, { id: h.id, reason: d.reason }, { type: "sw.denied", ttlMs: 60_000 }, h.id, false).catch(() => {});
    }
    return true;
  }

  /**
   * Direct transports: tell the sender of a continuation refused for its stream (ERR_UNKNOWN_STREAM,
   * ERR_CHECKPOINT, ERR_KEY_RETIRED) so it re-opens; the hub does this with its refusal notice. The continuation
   * is not authenticated, so its `from` may be forged: the notice is rate-limited like denials, and a sender acts
   * on it only for an id on its current stream ({@link SessionSender.holds}). Nothing for stream control frames.
   */
  #notifyStreamRefusal(frame: Uint8Array, e: SealwireError): void {
    if (this.#opts.notifyDenials === false || e.envelopeId === undefined || !isSessionFrame(frame)) return;
    let from: string;
    try {
      const h = decodeSessionEnvelope(frame, this.#opts.maxEnvelopeBytes).header;
      if (h.type.startsWith("sw.")) return;
      from = h.from;
    } catch {
      return;
    }
    if (from === this.id || !this.#nackAllowed(from)) return;
    this.#sendRaw(from, { id: e.envelopeId, code: e.code }, { type: "sw.refused", ttlMs: 60_000, mode: "signed" }, e.envelopeId, false).catch(() => {});
  }

  /** Session receiver events become audit records (metadata and the sender's checkpoint signatures). */
  #onSessionEvent(e: SessionEvent): void {
    if (this.#opts.audit === undefined) return;
    const p = this.#audit(sessionAuditEvent(e, { to: this.id }))
      .catch((err: unknown) => this.#report(SealwireError.is(err) ? err : sealwireError("ERR_AUDIT_IO", "a session audit record could not be written", { cause: err })))
      .finally(() => this.#sessionAudits.delete(p));
    this.#sessionAudits.add(p);
  }

  #nackAllowed(peer: string): boolean {
    const now = Date.now();
    const w = this.#nacks.get(peer);
    if (!w || now - w.start >= 60_000) {
      if (!w && this.#nacks.size >= 10_000) this.#nacks.delete(this.#nacks.keys().next().value!);
      this.#nacks.set(peer, { start: now, count: 1 });
      return true;
    }
    return ++w.count <= 60;
  }

  /** sealwire's own messages (`sw.*`): strict shapes, never delivered to the application. */
  #handleSystem(msg: ReceivedMessage): boolean {
    if (msg.type === "sw.statement") {
      if (!(msg.data instanceof Uint8Array)) {
        this.#report(sealwireError("ERR_PAYLOAD", `malformed key statement message ${msg.id} from "${msg.from}"`, { envelopeId: msg.id }));
        return false;
      }
      void this.#applyStatement(msg.data);
      return true;
    }
    if (msg.type === "sw.denied") {
      const d = msg.data as { id?: unknown; reason?: unknown } | null;
      if (
        d === null || typeof d !== "object" || Array.isArray(d) || Object.keys(d).length !== 2 ||
        typeof d.id !== "string" || !/^[0-9a-f]{32}$/.test(d.id) || typeof d.reason !== "string" || !/^[a-z0-9_:.-]{1,64}$/.test(d.reason)
      ) {
        this.#report(sealwireError("ERR_PAYLOAD", `malformed denial notice ${msg.id} from "${msg.from}"`, { envelopeId: msg.id }));
        return false;
      }
      const err = sealwireError("ERR_POLICY_DENIED", `"${msg.from}" refused ${d.id}: ${d.reason}`, { envelopeId: d.id, reason: d.reason });
      const pending = this.#pending.get(d.id);
      if (pending && pending.to === msg.from) {
        this.#pending.delete(d.id);
        clearTimeout(pending.timer);
        pending.reject(err);
      }
      this.#report(err);
      return true;
    }
    if (msg.type === "sw.refused") {
      const d = msg.data as { id?: unknown; code?: unknown } | null;
      if (
        d === null || typeof d !== "object" || Array.isArray(d) || Object.keys(d).length !== 2 ||
        typeof d.id !== "string" || !ID_RE.test(d.id) || typeof d.code !== "string" || !STREAM_REFUSALS.has(d.code)
      ) {
        this.#report(sealwireError("ERR_PAYLOAD", `malformed stream refusal notice ${msg.id} from "${msg.from}"`, { envelopeId: msg.id }));
        return false;
      }
      this.#streamRefused(msg.from, d.id, d.code as ErrorCode, "");
      return true;
    }
    this.#report(sealwireError("ERR_PAYLOAD", `unknown system message type from "${msg.from}"`, { envelopeId: msg.id }));
    return false;
  }

  /**
   * A recipient refused `id` for its stream: if `id` is on the current stream to it, forget that stream (the next
   * message re-opens) and fail a request waiting for a reply to `id`. `peer` undefined: the hub said so (any stream).
   */
  #streamRefused(peer: string | undefined, id: string, code: ErrorCode, reason: string): void {
    for (const [to, tx] of this.#senders) {
      if ((peer === undefined || to === peer) && !tx.closed && tx.holds(id)) tx.reset();
    }
    if (peer === undefined) return; // the hub path reports and fails requests itself
    const err = sealwireError(code, `"${peer}" refused ${id} (${code}); the stream is re-opened for the next message`, { envelopeId: id, ...(reason ? { reason } : {}) });
    const pending = this.#pending.get(id);
    if (pending && pending.to === peer) {
      this.#pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(err);
    }
    this.#report(err);
  }

  /**
   * This agent's own trust entry (its roles and clearances). An agent missing from its own trust store is
   * treated as having no roles and no clearances: PII addressed to it is denied, never allowed by default.
   */
  #self(): TrustEntry {
    const e = this.#trust.get(this.id);
    if (e && e.identity.kid === this.#identity.kid) return e;
    this.#selfEntry ??= Object.freeze({
      id: this.id,
      identity: this.#identity.publicIdentity,
      signPublicKey: this.#identity.signPublicKey,
      sealPublicKey: this.#identity.sealPublicKey,
      roles: [],
      clearances: [],
      revoked: false,
      address: undefined,
    });
    return this.#selfEntry;
  }

  async #audit(event: AuditEvent): Promise<void> {
    const sink = this.#opts.audit;
    if (!sink) return;
    // Fail closed: an audit sink that cannot record makes the operation fail (the caller sees the error).
    await sink.append(event);
  }

  #message(h: EnvelopeHeader, data: Data, digest: string, attestation: VerifiedAttestation | undefined, mode: SendMode): ReceivedMessage {
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
      digest,
      attestation,
      mode,
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
    const tx = this.#senders.get(peer);
    this.#senders.delete(peer);
    tx?.reset();
    tx?.close();
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
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#checkpointTimer);
    // Final checkpoints go out before the connections close (a graceful close flushes them).
    const ending = this.#endStreams();
    for (const w of [...this.#hubWaiters]) w(sealwireError("ERR_CLOSED", `agent "${this.id}" was closed`));
    for (const [t, old] of this.#retiring) {
      clearTimeout(t);
      old.close();
    }
    this.#retiring.clear();
    for (const [id, w] of this.#deliveryWaiters) w.reject(sealwireError("ERR_CLOSED", `agent closed before ${id} was confirmed`, { envelopeId: id }));
    this.#deliveryWaiters.clear();
    const hubConn = this.#hubConn;
    for (const fn of this.#cleanups) fn();
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(sealwireError("ERR_CLOSED", `agent "${this.id}" closed before the reply to ${id} arrived`, { envelopeId: id }));
    }
    this.#pending.clear();
    for (const w of this.#inboxWaiters.splice(0)) w();
    for (const w of this.#spaceWaiters.splice(0)) w();
    await ending;
    const closing: Promise<unknown>[] = [];
    if (hubConn) closing.push(hubConn.then((c) => c.close()).catch(() => {}));
    if (this.#listener) closing.push(this.#listener.close());
    for (const p of this.#outbound.values()) closing.push(p.then((c) => c.close()).catch(() => {}));
    for (const c of this.#inbound) closing.push(c.close().catch(() => {}));
    this.#outbound.clear();
    await Promise.allSettled(closing);
    // Every stream key is wiped; the receiver reports streams that end uncovered (audited below).
    this.#receiver.close();
    await Promise.allSettled([...this.#sessionAudits]);
    this.#inbox.length = 0;
  }

  toJSON(): { agent: string } {
    return { agent: this.id };
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Agent(${this.id}${this.#closed ? ", closed" : ""})`;
  }
}

function tagList(tags: Tags): string[] {
  return [...tags.pii, ...(tags.anonymized ? ["anonymized"] : []), ...(tags.classification ? [`class:${tags.classification}`] : [])];
}

/** Options for {@link createAgent}: the identity may be a provider (a vault handing keys just in time). */
export type CreateAgentOptions = Omit<AgentOptions, "identity"> & { identity: IdentityProvider };

/**
 * Creates and starts an agent (listening at its default address unless `listen: false`). `identity` may be an
 * `Identity` or a (sync or async) provider function; a provider is called once, here, and the agent holds the
 * identity until it closes (close the agent to drop the keys; rotate with `agent.rotate()`).
 */
export async function createAgent(options: CreateAgentOptions): Promise<Agent> {
  if (options === null || typeof options !== "object") throw sealwireError("ERR_INVALID_ARGUMENT", "createAgent needs { identity, trust, transport }");
  const identity =
    typeof options.identity === "function" ? await resolveIdentity(options.identity) : (options.identity as Identity);
  const agent = new Agent({ ...options, identity });
  try {
    await agent.start();
  } catch (e) {
    // Nothing may keep running (a reconnect timer) for an agent the caller never got a handle to.
    await agent.close();
    throw e;
  }
  return agent;
}
