/**
 * The Noise secure-channel transport: `noise({ transport, identity, trust })` wraps any {@link Transport} (memory,
 * WebSocket, NATS, another noise()) and returns a Transport with the same interface whose connections are
 * mutually authenticated against the {@link TrustStore}, encrypted and forward-secret. Nothing is handed to the
 * application before the handshake succeeded: a `dial` resolves, and a listener yields a connection, only once both
 * sides accepted each other; the connection's `remotePeer` is then the verified agent id.
 *
 * **Pattern.** `Noise_IK_25519_ChaChaPoly_SHA256` when the dialer knows whom it calls (`dial(addr, { remotePeer })`
 * with a trusted peer: one round trip, the responder's key pinned from the TrustStore), and
 * `Noise_XX_25519_ChaChaPoly_SHA256` for first contact (no `remotePeer`). `pattern: "XX" | "IK"` forces one, for
 * dialling and for what a listener accepts. Our static key `s` is the identity's X25519 sealing key handle
 * (`identity.sealingKey()`), never raw bytes.
 *
 * **Wire format** (one Noise message per frame of the inner transport; every Noise message ≤ 65535 bytes, §3):
 * 1. The dialer's first frame is one clear byte naming the pattern (`0x01` XX, `0x02` IK) and the first handshake
 *    message. All handshake payloads are empty, and every handshake message must have its exact length.
 *    The prologue (§6) binds that choice and the wire: `u16 len ‖ "sealwire/noise/v1" ‖ u16 len ‖ inner kind ‖
 *    u16 len ‖ pattern name` ({@link noisePrologue}), so a rewritten pattern byte or a different inner
 *    transport (a downgrade, a relay from `wss` to `ws`) makes the handshake fail.
 * 2. Key confirmation: the party that read the last handshake message (XX: the responder; IK: the initiator)
 *    sends an empty `CONFIRM` transport message, and its peer hands out the connection only after reading it.
 *    So a dial resolves only after the responder accepted the dialer (an untrusted dialer gets an error, not a
 *    connection whose frames vanish), and an IK responder never hands out a connection for a replayed first
 *    message (IK's first payload is replayable, Noise §7.7).
 * 3. Transport messages (§5.1, empty AD): `ENCRYPT(flags ‖ chunk)`. flags: `MORE` (0x01, another chunk of this
 *    frame follows), `END` (0x02, authenticated end of stream, like TLS close_notify: a wire that ends without it
 *    is reported as truncated), `CONFIRM` (0x04). An application frame larger than one message is split into
 *    chunks and reassembled up to `maxFrameBytes`.
 * 4. Rekey (§11.3): each direction's CipherState calls `rekey()` after `rekeyAfterMessages` messages or
 *    `rekeyAfterBytes` ciphertext bytes since the last rekey, whichever comes first. The sender counts what it
 *    encrypts and the receiver what it decrypts, so both stay in step without signalling; a peer with other
 *    limits fails authentication at the first message past the shorter limit (fail closed).
 * 5. Session age: a channel lives at most `maxSessionAgeMs`; then it ends gracefully so the next `dial`
 *    handshakes again with fresh ephemeral keys (forward secrecy per session, and no session outlives its
 *    schedule whatever the traffic). The responder ends it at `maxSessionAgeMs`, the initiator at
 *    `maxSessionAgeMs + min(maxSessionAgeMs, handshakeTimeoutMs)` (a backstop, should the responder not do so):
 *    one side usually starts the close and the other answers, rather than both at once. The side that ends a
 *    channel for age sends `END` after everything it already accepted, refuses further `send`s with
 *    `ERR_CONNECTION_CLOSED` (so a caller such as an agent re-dials and sends again: nothing is lost silently),
 *    and keeps the wire open and keeps reading until the peer's `END` (at most `handshakeTimeoutMs`): frames the
 *    peer sent before it learnt of the close are still delivered. A side that reads the peer's `END` while open
 *    stops accepting sends, flushes what it already accepted, answers with its own `END` and closes the wire.
 *
 * **Trust.** The remote static key must belong to a trusted, unrevoked agent (`trust.findBySealKey`) and, when the
 * dialer named `remotePeer`, be that agent's key; otherwise the handshake stops before any application frame with
 * `ERR_UNTRUSTED_PEER` (an XX dialer stops before sending its own static key). `trust.onRevoke` aborts open
 * connections to the revoked peer at once with `ERR_REVOKED_PEER`. A channel is bound to the peer key it was
 * opened with: when that key is rotated out, the channel is aborted with `ERR_KEY_RETIRED` at the end of the
 * key's overlap window (a past-window key is refused at the handshake with the same code), and at once when that
 * key alone is revoked (`trust.onKeyRetired`); `identity.onClose` aborts every connection
 * (`ERR_CLOSED`) and closes every listener. When our own key is rotated, `transport.useIdentity(next)` (called by
 * `agent.rotate()`) makes new handshakes use the new key while listeners stay open; channels opened under the old
 * key end with `ERR_KEY_RETIRED` when the old identity closes ({@link NoiseTransport.useIdentity}).
 * With an `audit` sink, each handshake is recorded (`handshake` before the connection is handed out, and a
 * failure to record refuses the connection; `handshake_failed` with the error code otherwise — except, on a
 * listener that also has `onRefusal`, failures before the peer was identified: those are counted there, to be
 * audited in aggregate). Records carry ids, key ids and codes only.
 *
 * **Bounds.** A handshake must finish within `handshakeTimeoutMs`; a listener runs at most `maxHandshakes` at
 * once, and at most `maxHandshakesPerSource` from one remote address (the IP address in the inner connection's
 * `remoteAddr`, when it has one). At either limit a new inbound wire evicts the oldest unfinished handshake (of
 * that address, for the per-source limit), which is aborted before any further cryptography: a flood of stalled
 * handshakes, from one address or many, keeps no new peer out, because a stalled handshake holds its slot only
 * until `maxHandshakes` newer ones arrived, while an honest one needs one or two round trips. Established
 * channels are never evicted. A listener holds at most `backlog` established connections nobody accepted yet.
 * Each eviction, timeout and failure can be counted through `onRefusal` (aggregated auditing, see
 * `src/refusal-counter.ts`). A connection buffers no inbound data of its own (it reads from the
 * inner connection when the application reads) beyond one frame being reassembled, and its outbound spill-over
 * queue (used only when the inner connection refuses a chunk) is bounded; send throws `ERR_QUEUE_FULL` past it.
 * Backpressure passes through: `send` returns the inner connection's verdict and `drain` waits for it.
 * CipherStates are destroyed on close and abort (see SECURITY.md for what wiping can promise in JavaScript).
 *
 * @module
 * @example
 * ```ts
 * import { memory } from "sealwire/transports/memory";
 * import { noise } from "sealwire/noise";
 *
 * const transport = noise({ transport: memory(), identity: alice, trust });
 * const agent = await createAgent({ identity: alice, trust, transport }); // the one line that changes
 * // or directly:
 * const conn = await transport.dial("mem://bob", { remotePeer: "bob" }); // IK, bob's key pinned
 * conn.remotePeer; // "bob", verified
 * // after a rotation of alice's keys (agent.rotate() does this for its transport):
 * const { identity: alice2, statement } = rotateIdentity(alice); // announce `statement` to the peers first
 * transport.useIdentity(alice2); // new handshakes use alice2; old channels end when `alice` closes
 * ```
 */
import { concatBytes, equalBytes, utf8 } from "../../src/_bytes.js";
import { SealwireError, sealwireError } from "../../src/errors.js";
import { reportRefusal, type Refusal } from "../../src/refusal-counter.js";
import { Identity, assertAgentId } from "../../src/identity.js";
import {
  transportSymbol,
  type AbortOptions,
  type Connection,
  type DialOptions,
  type Listener,
  type ListenOptions,
  type Transport,
} from "../../src/transport.js";
import { TrustStore, type TrustEntry } from "../../src/trust.js";
import { MAX_MESSAGE_BYTES, TAG_BYTES, type CipherState } from "./cipher-state.js";
import { HandshakeState } from "./handshake-state.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** The sealwire Noise protocol version string, the first field of every prologue. */
export const NOISE_DOMAIN = "sealwire/noise/v1";
/** Default largest application frame: 1 MiB. */
export const DEFAULT_MAX_FRAME_BYTES = 1 * MiB;
/** Default time limit of one handshake, key confirmation included: 5 s. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 5_000;
/** Default number of handshakes one listener runs at once. */
export const DEFAULT_MAX_HANDSHAKES = 64;
/** Default number of handshakes one listener runs at once for one remote address. */
export const DEFAULT_MAX_HANDSHAKES_PER_SOURCE = 8;
/** Default number of established, not yet accepted connections one listener holds. */
export const DEFAULT_BACKLOG = 128;
/** Default rekey interval in messages per direction: 2^16. */
export const DEFAULT_REKEY_AFTER_MESSAGES = 65_536;
/** Default rekey interval in ciphertext bytes per direction: 1 GiB. */
export const DEFAULT_REKEY_AFTER_BYTES = 1 * GiB;
/** Default longest life of one channel before it is ended and the next dial handshakes again: 1 hour. */
export const DEFAULT_MAX_SESSION_AGE_MS = 3_600_000;
/** Shortest `maxSessionAgeMs` accepted: a channel must live long enough to carry something. */
export const MIN_SESSION_AGE_MS = 100;
/** The inner transport must carry frames of at least this many bytes (the largest handshake message is 97). */
export const MIN_INNER_FRAME_BYTES = 256;

const MAX_FRAME_BYTES_LIMIT = 1 * GiB;
const MAX_HANDSHAKE_TIMEOUT_MS = 600_000;
const MAX_COUNT_LIMIT = 65_536;
const MAX_REKEY_MESSAGES = 2 ** 32;
const MAX_REKEY_BYTES = 2 ** 50;
const MAX_SESSION_AGE_MS = 30 * 24 * 3_600_000;
/** setTimeout holds at most 2^31 − 1 ms; longer waits re-arm ({@link Deadline}). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Transport message header: one flags byte. */
const HEADER_BYTES = 1;
const FLAG_MORE = 0x01;
const FLAG_END = 0x02;
const FLAG_CONFIRM = 0x04;
/**
 * A chunk that announces another one must carry at least this many bytes. Honest senders fill chunks (at least
 * {@link MIN_INNER_FRAME_BYTES} − 17 bytes), so this only stops a peer from growing a reassembly list with tiny
 * chunks.
 */
const MIN_MORE_CHUNK_BYTES = MIN_INNER_FRAME_BYTES - TAG_BYTES - HEADER_BYTES;
/** Bookkeeping charged per message held in the outbound spill-over queue, so empty frames are bounded too. */
const QUEUE_OVERHEAD_BYTES = 16;

type PatternName = "XX" | "IK";
const PATTERN_CODE: Readonly<Record<PatternName, number>> = { XX: 0x01, IK: 0x02 };
const PROTOCOL_NAME: Readonly<Record<PatternName, string>> = {
  XX: "Noise_XX_25519_ChaChaPoly_SHA256",
  IK: "Noise_IK_25519_ChaChaPoly_SHA256",
};
/**
 * Exact handshake message lengths with empty payloads (DH 32 bytes, encrypted static 48, payload tag 16):
 * XX `-> e` 32, `<- e, ee, s, es` 96, `-> s, se` 64; IK `-> e, es, s, ss` 96, `<- e, ee, se` 48. The first
 * message carries the pattern byte in front. Checked before any cryptography, so garbage costs nothing.
 */
const LEN = { XX1: 1 + 32, XX2: 96, XX3: 64, IK1: 1 + 96, IK2: 48 } as const;
const EMPTY = new Uint8Array(0);
/**
 * Where `flags ‖ chunk` is assembled before encryption. Encryption is synchronous and copies its input, so one
 * buffer serves every connection; the bytes used are zeroed right after, so no plaintext lingers in it.
 */
const SCRATCH = new Uint8Array(MAX_MESSAGE_BYTES - TAG_BYTES);
const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });

// ---------------------------------------------------------------------------------------------------------------
// Options

/** A handshake record for an audit sink; the fields are those of `AuditEvent` in `src/audit.ts`. */
export interface NoiseAuditEvent {
  /** `handshake` once a channel is established, `handshake_failed` when one was refused or failed. */
  event: "handshake" | "handshake_failed";
  /** The remote agent id: verified on success; on failure the expected or identified peer, when known. */
  peer?: string;
  /** The remote agent's key id, on success. */
  kid?: string;
  /** `allow` on success, `deny` on failure. */
  decision: "allow" | "deny";
  /** On success `noise:<XX|IK>:<initiator|responder>`; on failure the `ERR_*` code. */
  reason: string;
}

/** Where handshake records go: `AuditLog` from `sealwire` fits, as does anything with this method. */
export interface NoiseAuditSink {
  append(event: NoiseAuditEvent): Promise<unknown>;
}

/** Options for {@link noise}. */
export interface NoiseInit {
  /** The transport to wrap; its frames carry the Noise messages. It must carry frames of at least 256 bytes. */
  transport: Transport;
  /** This node's identity; its X25519 sealing key is the Noise static key. */
  identity: Identity;
  /** Who may connect, and whom we may reach: remote static keys must belong to trusted, unrevoked agents. */
  trust: TrustStore;
  /**
   * `auto`: IK when `dial` names a `remotePeer`, XX otherwise; listeners accept both. `XX` or `IK`: only that
   * pattern, when dialling (IK then requires `remotePeer`) and when accepting.
   * @default "auto"
   */
  pattern?: "auto" | "XX" | "IK" | undefined;
  /**
   * Largest application frame, in bytes, that `send` accepts and that may arrive (reassembled from chunks). A
   * larger one from the network aborts the connection with `ERR_FRAME_TOO_LARGE`.
   * @default 1048576 (1 MiB)
   */
  maxFrameBytes?: number | undefined;
  /** Time limit for one handshake, key confirmation included, in ms. Then `ERR_TIMEOUT`. @default 5000 */
  handshakeTimeoutMs?: number | undefined;
  /**
   * Handshakes one listener runs at once. At the limit a new inbound wire evicts the oldest unfinished handshake
   * (aborted with `ERR_CONNECTION_ABORTED`); established channels are never evicted.
   * @default 64
   */
  maxHandshakes?: number | undefined;
  /**
   * Handshakes one listener runs at once for one remote address (the IP address of the inner connection's
   * `remoteAddr`, such as WebSocket's `203.0.113.4:51234`; inner transports without one, like memory, have only
   * the global limit). At the limit a new wire from that address evicts that address's own oldest handshake, so
   * one address cannot take every slot.
   * @default 8
   */
  maxHandshakesPerSource?: number | undefined;
  /** Established connections a listener holds until the application accepts them; more are aborted. @default 128 */
  backlog?: number | undefined;
  /** Rekey each direction after this many messages since the last rekey. Both peers must agree. @default 65536 */
  rekeyAfterMessages?: number | undefined;
  /** Rekey each direction after this many ciphertext bytes since the last rekey. Both peers must agree. @default 1 GiB */
  rekeyAfterBytes?: number | undefined;
  /**
   * Longest life of one channel, in ms (100 ms to 30 days). Then it is ended gracefully (`END`, then close) and
   * the next `dial` handshakes again with fresh ephemeral keys; a `send` from then on throws
   * `ERR_CONNECTION_CLOSED` (agents re-dial and send again). The responder ends it on time, the initiator a
   * little later as a backstop (see the module notes); peers need not agree.
   * @default 3600000 (1 hour)
   */
  maxSessionAgeMs?: number | undefined;
  /** Records every handshake and refusal (an `AuditLog`). */
  audit?: NoiseAuditSink | undefined;
  /**
   * Listener: told of every handshake it evicted, refused or that failed, for aggregated auditing (pass a
   * `RefusalCounter`'s `onRefusal`). `source` is the remote IP address when the inner transport has one.
   * Reasons:
   * - `noise_handshake_evicted`: evicted at `maxHandshakes` to make room for a new one;
   * - `noise_per_source`: evicted at `maxHandshakesPerSource` (the address's own oldest);
   * - `noise_handshake_timeout`: not finished within `handshakeTimeoutMs`;
   * - `noise_handshake_failed`: malformed, out of turn, untrusted or unexpected peer, or the peer hung up;
   * - `noise_backlog`: established, but `backlog` connections were waiting to be accepted.
   *
   * Called synchronously; a throw or a rejected promise is ignored. Never given key bytes or frames.
   */
  onRefusal?: ((r: Refusal) => unknown) | undefined;
}

interface Config {
  readonly inner: Transport;
  readonly identity: Identity;
  readonly trust: TrustStore;
  readonly pattern: "auto" | PatternName;
  readonly maxFrameBytes: number;
  readonly handshakeTimeoutMs: number;
  readonly maxHandshakes: number;
  readonly maxHandshakesPerSource: number;
  readonly backlog: number;
  readonly rekeyAfterMessages: number;
  readonly rekeyAfterBytes: number;
  readonly maxSessionAgeMs: number;
  readonly audit: NoiseAuditSink | undefined;
  readonly onRefusal: ((r: Refusal) => unknown) | undefined;
  readonly prologue: Readonly<Record<PatternName, Uint8Array>>;
}

const INIT_KEYS: ReadonlySet<string> = new Set([
  "transport",
  "identity",
  "trust",
  "pattern",
  "maxFrameBytes",
  "handshakeTimeoutMs",
  "maxHandshakes",
  "maxHandshakesPerSource",
  "backlog",
  "rekeyAfterMessages",
  "rekeyAfterBytes",
  "maxSessionAgeMs",
  "audit",
  "onRefusal",
]);

function invalid(message: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return sealwireError("ERR_INVALID_ARGUMENT", message);
}

function intOption(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`noise(): ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

function resolveConfig(init: unknown): Config {
  if (typeof init !== "object" || init === null || Array.isArray(init)) {
    throw invalid("noise(init): pass { transport, identity, trust }");
  }
  // Unknown keys are almost always typos, and a silently ignored limit is a missing limit.
  for (const key of Object.keys(init)) if (!INIT_KEYS.has(key)) throw invalid(`noise(): unknown option "${key}"`);
  const o = init as NoiseInit;
  const inner = o.transport;
  if (typeof inner !== "object" || inner === null || (inner as unknown as Record<symbol, unknown>)[transportSymbol] !== true) {
    throw invalid("noise(): transport must be a sealwire Transport (e.g. memory())");
  }
  if (typeof inner.kind !== "string" || inner.kind.length < 1 || inner.kind.length > 256) {
    throw invalid("noise(): the inner transport's kind must be a string of 1 to 256 characters");
  }
  if (!Number.isSafeInteger(inner.maxFrameBytes) || inner.maxFrameBytes < MIN_INNER_FRAME_BYTES) {
    throw invalid(`noise(): the inner transport must carry frames of at least ${MIN_INNER_FRAME_BYTES} bytes`);
  }
  if (!(o.identity instanceof Identity)) throw invalid("noise(): identity must be an Identity (generateIdentity)");
  if (o.identity.closed) throw sealwireError("ERR_CLOSED", "noise(): the identity was closed; load it again");
  if (!(o.trust instanceof TrustStore)) throw invalid("noise(): trust must be a TrustStore");
  const pattern = o.pattern ?? "auto";
  if (pattern !== "auto" && pattern !== "XX" && pattern !== "IK") {
    throw invalid('noise(): pattern must be "auto", "XX" or "IK"');
  }
  const audit = o.audit;
  if (audit !== undefined && (typeof audit !== "object" || audit === null || typeof audit.append !== "function")) {
    throw invalid("noise(): audit must have an append(event) method (e.g. an AuditLog)");
  }
  if (o.onRefusal !== undefined && typeof o.onRefusal !== "function") throw invalid("noise(): onRefusal must be a function");
  return {
    inner,
    identity: o.identity,
    trust: o.trust,
    pattern,
    maxFrameBytes: intOption(o.maxFrameBytes, "maxFrameBytes", 1, MAX_FRAME_BYTES_LIMIT, DEFAULT_MAX_FRAME_BYTES),
    handshakeTimeoutMs: intOption(o.handshakeTimeoutMs, "handshakeTimeoutMs", 1, MAX_HANDSHAKE_TIMEOUT_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS),
    maxHandshakes: intOption(o.maxHandshakes, "maxHandshakes", 1, MAX_COUNT_LIMIT, DEFAULT_MAX_HANDSHAKES),
    maxHandshakesPerSource: intOption(
      o.maxHandshakesPerSource,
      "maxHandshakesPerSource",
      1,
      MAX_COUNT_LIMIT,
      DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    ),
    backlog: intOption(o.backlog, "backlog", 1, MAX_COUNT_LIMIT, DEFAULT_BACKLOG),
    rekeyAfterMessages: intOption(o.rekeyAfterMessages, "rekeyAfterMessages", 1, MAX_REKEY_MESSAGES, DEFAULT_REKEY_AFTER_MESSAGES),
    rekeyAfterBytes: intOption(o.rekeyAfterBytes, "rekeyAfterBytes", 1, MAX_REKEY_BYTES, DEFAULT_REKEY_AFTER_BYTES),
    maxSessionAgeMs: intOption(o.maxSessionAgeMs, "maxSessionAgeMs", MIN_SESSION_AGE_MS, MAX_SESSION_AGE_MS, DEFAULT_MAX_SESSION_AGE_MS),
    audit,
    onRefusal: o.onRefusal,
    prologue: { XX: noisePrologue(inner.kind, "XX"), IK: noisePrologue(inner.kind, "IK") },
  };
}

/**
 * The prologue (Noise §6) both parties mix in before the first message: `u16 len ‖ "sealwire/noise/v1" ‖ u16 len
 * ‖ innerKind ‖ u16 len ‖ pattern` (UTF-8, lengths big-endian). Length prefixes keep every (kind, pattern) pair
 * distinct. Exported for tests and for other implementations of the wire format.
 */
export function noisePrologue(innerKind: string, pattern: "XX" | "IK"): Uint8Array {
  const field = (s: string): Uint8Array => {
    const b = utf8(s);
    if (b.length > 0xffff) throw invalid("noisePrologue: field too long");
    return concatBytes(Uint8Array.of(b.length >>> 8, b.length & 0xff), b);
  };
  return concatBytes(field(NOISE_DOMAIN), field(innerKind), field(pattern));
}

// ---------------------------------------------------------------------------------------------------------------
// Shared helpers

/** The error an aborted wait fails with: the signal's reason if it is a SealwireError, else ERR_ABORTED. */
function abortError(signal: AbortSignal, what: string): SealwireError {
  const reason: unknown = signal.reason;
  if (SealwireError.is(reason)) return reason;
  return sealwireError("ERR_ABORTED", `${what} was aborted by its AbortSignal`, { cause: reason });
}

function handshakeError(message: string, cause?: unknown): SealwireError<"ERR_NOISE_HANDSHAKE"> {
  return sealwireError("ERR_NOISE_HANDSHAKE", message, cause === undefined ? undefined : { cause });
}

/** The peer went away (or refused us) before the handshake finished. */
function hangup(cause?: unknown): SealwireError<"ERR_NOISE_HANDSHAKE"> {
  return handshakeError(
    `the peer closed the connection during the Noise handshake: it may not trust this identity, may not be the ` +
      `expected peer, or may not speak ${NOISE_DOMAIN} over the same transport`,
    cause,
  );
}

function protocolError(what: string): SealwireError<"ERR_PROTOCOL"> {
  return sealwireError("ERR_PROTOCOL", `the peer sent ${what} on the Noise channel; the connection was aborted`);
}

/**
 * Calls `fn` once `clock()` reaches `at` (ms), with unref'd timers (an open channel alone does not keep a process
 * alive) re-armed past setTimeout's 2^31 − 1 ms limit and whenever a timer fires early by that clock.
 */
class Deadline {
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly at: number,
    fn: () => void,
    clock: () => number,
  ) {
    const arm = (): void => {
      const wait = this.at - clock();
      if (wait <= 0) {
        this.#timer = undefined;
        fn();
        return;
      }
      this.#timer = setTimeout(arm, Math.min(Math.ceil(wait), MAX_TIMER_MS));
      this.#timer.unref?.();
    };
    this.#timer = setTimeout(arm, Math.min(Math.max(0, Math.ceil(this.at - clock())), MAX_TIMER_MS));
    this.#timer.unref?.();
  }

  cancel(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

const wallClock = (): number => Date.now();
const monotonicClock = (): number => performance.now();

/** Codes a failed handshake reports as they are; anything else becomes ERR_NOISE_HANDSHAKE. */
const HANDSHAKE_PASS_CODES: ReadonlySet<string> = new Set([
  "ERR_NOISE_HANDSHAKE",
  "ERR_UNTRUSTED_PEER",
  "ERR_UNKNOWN_PEER",
  "ERR_REVOKED_PEER",
  "ERR_TIMEOUT",
  "ERR_ABORTED",
  "ERR_CLOSED",
  "ERR_AUDIT_IO",
  "ERR_CONNECTION_REFUSED",
  "ERR_KEY_RETIRED",
]);

function asHandshakeFailure(e: unknown): SealwireError {
  if (SealwireError.is(e) && HANDSHAKE_PASS_CODES.has(e.code)) return e;
  if (SealwireError.is(e, "ERR_CONNECTION_ABORTED") || SealwireError.is(e, "ERR_CONNECTION_CLOSED")) return hangup(e);
  return handshakeError("the Noise handshake failed; start a new connection", e);
}

/** A remote static key the TrustStore vouches for, and which of the agent's keys it is. */
interface VerifiedPeer {
  readonly entry: TrustEntry;
  /** The key id of the matching key (the previous one during a rotation's overlap window). */
  readonly kid: string;
  /** When the matching key is a rotated-out one: the end of its overlap window (ms since the epoch). */
  readonly retiresAt: number | undefined;
}

function untrusted(): SealwireError<"ERR_UNTRUSTED_PEER"> {
  return sealwireError(
    "ERR_UNTRUSTED_PEER",
    "the remote's static key does not belong to a trusted, unrevoked agent; add its public identity to the TrustStore",
  );
}

function keyRetired(peer: string): SealwireError<"ERR_KEY_RETIRED"> {
  return sealwireError(
    "ERR_KEY_RETIRED",
    `the remote used a key of "${peer}" that was rotated out and whose overlap window has passed`,
  );
}

/**
 * Looks the remote static key up in the TrustStore; refuses unknown, revoked and unexpected peers.
 * `findBySealKey(rs, now)` answers for the current key, and for the previous key only inside its overlap window;
 * a previous key past its window is refused with `ERR_KEY_RETIRED` (found by asking as of the epoch, when every
 * window was open), so the audit says why rather than just "untrusted".
 */
function verifyPeer(trust: TrustStore, rs: Uint8Array | null, expected: string | undefined): VerifiedPeer {
  if (rs === null) throw untrusted();
  const now = Date.now();
  const entry = trust.findBySealKey(rs, now);
  const notExpected = (): SealwireError<"ERR_UNTRUSTED_PEER"> =>
    sealwireError(
      "ERR_UNTRUSTED_PEER",
      `the remote authenticated as another agent, not the expected peer "${expected}"; check the address`,
    );
  if (entry === undefined) {
    const stale = trust.findBySealKey(rs, 0);
    if (stale === undefined || stale.previous === undefined || !equalBytes(rs, stale.previous.sealPublicKey)) throw untrusted();
    if (expected !== undefined && stale.id !== expected) throw notExpected();
    throw keyRetired(stale.id);
  }
  if (expected !== undefined && entry.id !== expected) throw notExpected();
  if (equalBytes(rs, entry.sealPublicKey)) return { entry, kid: entry.identity.kid, retiresAt: undefined };
  const previous = entry.previous;
  if (previous !== undefined && equalBytes(rs, previous.sealPublicKey) && now <= previous.validUntil) {
    return { entry, kid: previous.kid, retiresAt: previous.validUntil };
  }
  throw untrusted(); // not reached with the current TrustStore; fail closed if it ever answers otherwise
}

function expectLength(msg: Uint8Array, n: number): void {
  if (msg.length !== n) throw handshakeError("a Noise handshake message has the wrong length");
}

function expectEmpty(payload: Uint8Array): void {
  // sealwire/noise/v1 sends no handshake payloads; anything else is not our protocol (or a tampering attempt).
  if (payload.length !== 0) throw handshakeError("a Noise handshake payload must be empty");
}

function recordAudit(cfg: Config, event: NoiseAuditEvent): Promise<void> {
  const sink = cfg.audit;
  if (sink === undefined) return Promise.resolve();
  try {
    return Promise.resolve(sink.append(event)).then(
      () => undefined,
      (e: unknown) => Promise.reject(auditFailed(e)),
    );
  } catch (e) {
    return Promise.reject(auditFailed(e));
  }
}

function auditFailed(cause: unknown): SealwireError<"ERR_AUDIT_IO"> {
  return sealwireError(
    "ERR_AUDIT_IO",
    "the audit sink refused the handshake record, so the connection was refused (fail closed); check the audit log",
    { cause },
  );
}

/** Something the transport can end at once: a handshake in progress, a connection, a listener. */
interface Resource {
  /** The remote agent id, once known (revocation ends resources by peer). */
  peer: string | undefined;
  /** The id of the remote key it was authenticated with, once known (revoking that key alone ends it). */
  kid: string | undefined;
  /**
   * The local identity whose static key a handshake or connection uses (closing it after `useIdentity` replaced
   * it ends just these); undefined for listeners, which follow the transport's current identity.
   */
  local?: Identity | undefined;
  kill(err: SealwireError): void;
}

/** What connections, listeners and handshakes share with their transport. */
interface Env {
  readonly cfg: Config;
  /** The identity new handshakes use (`cfg.identity` until `useIdentity` replaces it). */
  identity(): Identity;
  track(r: Resource): void;
  untrack(r: Resource): void;
}

// ---------------------------------------------------------------------------------------------------------------
// The handshake

interface InitiatorRole {
  readonly initiator: true;
  readonly pattern: PatternName;
  /** The agent the dialer expects; its pinned key is `rs` for IK. */
  readonly expected: TrustEntry | undefined;
  readonly signal: AbortSignal | undefined;
}

interface ResponderRole {
  readonly initiator: false;
  /** The handshake's place at its listener, which can end it (eviction, listener close). */
  readonly slot: HandshakeSlot;
  /** Whether the listener has room for one more established connection. */
  readonly admit: () => boolean;
}

/**
 * Runs the handshake and key confirmation over `raw` and returns the established connection. On any failure
 * `raw` is aborted, the failure audited (unless the caller, the listener or the identity ended it) and a coded
 * error thrown.
 */
async function secure(env: Env, raw: Connection, role: InitiatorRole | ResponderRole): Promise<NoiseConnection> {
  const cfg = env.cfg;
  const it = raw[Symbol.asyncIterator]();
  let stop: SealwireError | undefined; // why the handshake was ended from outside (timeout, signal, revoke, …)
  let quiet = false; // ended by its owner (caller's signal, listener close, identity close): nothing to audit
  let conn: NoiseConnection | undefined;
  let hs: HandshakeState | undefined;
  // The whole handshake uses the identity current when it starts, even if useIdentity replaces it meanwhile.
  const identity = env.identity();
  const res: Resource = {
    peer: role.initiator ? role.expected?.id : undefined,
    kid: undefined,
    local: identity,
    kill: (err) => {
      if (stop !== undefined) return;
      stop = err;
      quiet = err.code !== "ERR_TIMEOUT" && err.code !== "ERR_REVOKED_PEER" && err.code !== "ERR_KEY_RETIRED";
      (conn ?? raw).abort(err);
    },
  };
  env.track(res);
  if (!role.initiator) role.slot.kill = res.kill;
  const timer = setTimeout(
    () =>
      res.kill(sealwireError("ERR_TIMEOUT", `the Noise handshake did not finish within ${cfg.handshakeTimeoutMs} ms`)),
    cfg.handshakeTimeoutMs,
  );
  const signal = role.initiator ? role.signal : undefined;
  const onAbort = (): void => res.kill(abortError(signal!, "the Noise handshake"));
  signal?.addEventListener("abort", onAbort, { once: true });

  const read = async (): Promise<Uint8Array> => {
    let r: IteratorResult<Uint8Array>;
    try {
      r = await it.next();
    } catch (e) {
      throw stop ?? hangup(e);
    }
    if (stop !== undefined) throw stop;
    if (r.done === true) throw hangup();
    return r.value;
  };
  const write = (msg: Uint8Array): void => {
    try {
      raw.send(msg); // handshake messages are tiny; backpressure does not apply to them
    } catch (e) {
      throw stop ?? hangup(e);
    }
  };

  let pattern: PatternName | undefined = role.initiator ? role.pattern : undefined;
  try {
    const s = identity.sealingKey(); // throws ERR_CLOSED once the identity is closed
    let verified: VerifiedPeer;
    if (role.initiator) {
      const p = role.pattern;
      hs = HandshakeState.initialize({
        protocolName: PROTOCOL_NAME[p],
        initiator: true,
        prologue: cfg.prologue[p],
        s,
        rs: p === "IK" ? role.expected!.sealPublicKey : undefined,
        provider: identity.provider,
      });
      const m1 = hs.writeMessage(EMPTY); // XX: -> e      IK: -> e, es, s, ss
      const first = new Uint8Array(1 + m1.length);
      first[0] = PATTERN_CODE[p];
      first.set(m1, 1);
      write(first);
      const m2 = await read(); // XX: <- e, ee, s, es      IK: <- e, ee, se
      expectLength(m2, p === "XX" ? LEN.XX2 : LEN.IK2);
      expectEmpty(hs.readMessage(m2));
      // XX: decide on the responder before revealing our own static key in message 3.
      verified = verifyPeer(cfg.trust, hs.remoteStaticKey, role.expected?.id);
      res.peer = verified.entry.id;
      res.kid = verified.kid;
      if (p === "XX") write(hs.writeMessage(EMPTY)); // -> s, se
    } else {
      const m1 = await read();
      const code = m1[0];
      pattern = code === PATTERN_CODE.XX ? "XX" : code === PATTERN_CODE.IK ? "IK" : undefined;
      if (pattern === undefined || (cfg.pattern !== "auto" && cfg.pattern !== pattern)) {
        throw handshakeError("the peer asked for a Noise pattern this listener does not accept");
      }
      expectLength(m1, pattern === "XX" ? LEN.XX1 : LEN.IK1);
      hs = HandshakeState.initialize({
        protocolName: PROTOCOL_NAME[pattern],
        initiator: false,
        prologue: cfg.prologue[pattern],
        s,
        provider: identity.provider,
      });
      expectEmpty(hs.readMessage(m1.subarray(1))); // XX: -> e      IK: -> e, es, s, ss
      if (pattern === "XX") {
        write(hs.writeMessage(EMPTY)); // <- e, ee, s, es
        const m3 = await read();
        expectLength(m3, LEN.XX3);
        expectEmpty(hs.readMessage(m3)); // -> s, se
        verified = verifyPeer(cfg.trust, hs.remoteStaticKey, undefined);
        res.peer = verified.entry.id;
        res.kid = verified.kid;
      } else {
        // IK: refuse an untrusted initiator before answering at all.
        verified = verifyPeer(cfg.trust, hs.remoteStaticKey, undefined);
        res.peer = verified.entry.id;
        res.kid = verified.kid;
        write(hs.writeMessage(EMPTY)); // <- e, ee, se
      }
    }
    const { send, receive } = hs.splitByRole();
    hs.destroy();
    hs = undefined;
    const peerId = verified.entry.id;
    conn = new NoiseConnection(env, raw, it, send, receive, verified, identity);
    if (stop !== undefined) throw stop; // ended (e.g. revoked) between the last read and now
    if (verified.retiresAt !== undefined) conn.retireAt(verified.retiresAt);

    // Key confirmation (see module notes): XX's responder and IK's initiator confirm; the other side waits.
    const success: NoiseAuditEvent = {
      event: "handshake",
      peer: peerId,
      kid: verified.kid,
      decision: "allow",
      reason: `noise:${pattern!}:${role.initiator ? "initiator" : "responder"}`,
    };
    const confirms = (pattern === "XX") !== role.initiator;
    if (confirms) {
      if (!role.initiator && !role.admit()) {
        throw sealwireError("ERR_CONNECTION_REFUSED", "the listener's backlog of unaccepted connections is full");
      }
      await recordAudit(cfg, success);
      if (stop !== undefined) throw stop;
      conn.sendConfirm();
    } else {
      await conn.readConfirm();
      if (stop !== undefined) throw stop;
      if (!role.initiator && !role.admit()) {
        throw sealwireError("ERR_CONNECTION_REFUSED", "the listener's backlog of unaccepted connections is full");
      }
      await recordAudit(cfg, success);
      if (stop !== undefined) throw stop;
    }
    // Established: the session's age counts from here. The responder ends it on time; the initiator only as a
    // backstop a little later, so normally one side closes and the other answers (module notes, item 5).
    const age = cfg.maxSessionAgeMs;
    conn.expireAfter(role.initiator ? age + Math.min(age, cfg.handshakeTimeoutMs) : age);
    return conn;
  } catch (e) {
    const err = stop ?? asHandshakeFailure(conn?.failure ?? e);
    hs?.destroy();
    (conn ?? raw).abort(err);
    // A responder with `onRefusal` counts anonymous failures there (aggregated records): one audit record per
    // failed attempt from an unknown peer would turn a handshake flood into a flood of disk writes.
    const counted = !role.initiator && res.peer === undefined && cfg.onRefusal !== undefined;
    if (!quiet && !counted && err.code !== "ERR_CLOSED" && err.code !== "ERR_ABORTED") {
      recordAudit(cfg, {
        event: "handshake_failed",
        ...(res.peer !== undefined ? { peer: res.peer } : {}),
        decision: "deny",
        reason: err.code,
      }).catch(() => {}); // the refusal stands whether or not it could be recorded
    }
    throw err;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
    env.untrack(res);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Connection

const OPEN = 0;
const CLOSING = 1;
const CLOSED = 2;
const ABORTED = 3;
type State = typeof OPEN | typeof CLOSING | typeof CLOSED | typeof ABORTED;

interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
  cleanup(): void;
}

/** One established secure channel over one inner connection. */
class NoiseConnection implements Connection {
  readonly remoteAddr: string;
  readonly remotePeer: string;
  readonly maxFrameBytes: number;
  readonly closed: Promise<Error | undefined>;

  readonly #env: Env;
  readonly #inner: Connection;
  readonly #it: AsyncIterator<Uint8Array>;
  readonly #resource: Resource;
  /** Largest chunk of application bytes per Noise message. */
  readonly #chunkBytes: number;
  /** Spill-over queue limit (see send). */
  readonly #maxQueuedBytes: number;
  #tx: CipherState | null;
  #rx: CipherState | null;
  #state: State = OPEN;
  #error: Error | undefined;
  #settled = false;
  #resolveClosed!: (err: Error | undefined) => void;
  #closing: Promise<void> | undefined;
  #closedLocally = false;
  // rekey counters (§11.3), per direction since the last rekey
  #txMessages = 0;
  #txBytes = 0;
  #rxMessages = 0;
  #rxBytes = 0;
  // reading
  #iterated = false;
  #readDone = false;
  #readError: Error | undefined;
  #reads = 0;
  #lastRead: Promise<IteratorResult<Uint8Array>> | undefined;
  // writing: ciphertext the inner connection refused (ERR_QUEUE_FULL), sent in order as it drains
  #queue: (Uint8Array | undefined)[] = [];
  #queueHead = 0;
  #queuedBytes = 0;
  #pumping = false;
  #lastVerdict = true;
  #flushWaiters: Set<Waiter> | undefined;
  // the peer key this channel was authenticated with, and the trust entry last checked against it
  readonly #kid: string;
  #entry: TrustEntry;
  /** Set while that key is a rotated-out one: the end of its overlap window. */
  #retire: Deadline | undefined;
  /** The session's end of life (maxSessionAgeMs). */
  #age: Deadline | undefined;
  // graceful end (module notes, item 5)
  /** The peer's authenticated END was read. */
  #remoteEnd = false;
  /** Our close waits for the peer's END before it closes the wire (set by the session-age close). */
  #awaitPeerEnd = false;
  /** Ends that wait early: the peer's END arrived, or the wire ended. */
  #peerEndWaiter: (() => void) | undefined;

  constructor(
    env: Env,
    inner: Connection,
    it: AsyncIterator<Uint8Array>,
    tx: CipherState,
    rx: CipherState,
    verified: VerifiedPeer,
    local: Identity,
  ) {
    const peer = verified.entry.id;
    this.#env = env;
    this.#inner = inner;
    this.#it = it;
    this.#tx = tx;
    this.#rx = rx;
    this.#kid = verified.kid;
    this.#entry = verified.entry;
    this.remoteAddr = inner.remoteAddr;
    this.remotePeer = peer;
    this.maxFrameBytes = env.cfg.maxFrameBytes;
    const messageBytes = Math.min(MAX_MESSAGE_BYTES, inner.maxFrameBytes);
    this.#chunkBytes = Math.max(MIN_MORE_CHUNK_BYTES, messageBytes - TAG_BYTES - HEADER_BYTES);
    this.#maxQueuedBytes = 2 * this.maxFrameBytes + 64 * KiB;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#resource = { peer, kid: verified.kid, local, kill: (err) => this.abort(err) };
    env.track(this.#resource);
    inner.closed.then(
      (e) => this.#innerEnded(e),
      (e: unknown) => this.#innerEnded(e instanceof Error ? e : sealwireError("ERR_CONNECTION_ABORTED", "the inner connection failed")),
    );
  }

  get isOpen(): boolean {
    return this.#state === OPEN && this.#inner.isOpen;
  }

  /** Why the connection ended, if it was aborted (used by the handshake to report the first cause). */
  get failure(): Error | undefined {
    return this.#error;
  }

  send(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array)) throw invalid("send(frame): frame must be a Uint8Array");
    // One Map lookup per frame: entries are replaced on every change, so an unchanged one needs no more thought.
    if (this.#state === OPEN && this.#env.cfg.trust.get(this.remotePeer) !== this.#entry) this.#recheckKey();
    if (this.#state !== OPEN || this.#tx === null || !this.#inner.isOpen) {
      throw sealwireError("ERR_CONNECTION_CLOSED", "send() on a closed connection; dial a new one", { cause: this.#error });
    }
    const length = frame.byteLength;
    if (length > this.maxFrameBytes) {
      throw sealwireError(
        "ERR_FRAME_TOO_LARGE",
        `frame of ${length} bytes exceeds maxFrameBytes (${this.maxFrameBytes}); split it or raise maxFrameBytes`,
      );
    }
    if (this.#queuedBytes > 0) {
      // The inner connection already refused data and the caller kept sending: bound what we hold for it.
      const chunks = Math.max(1, Math.ceil(length / this.#chunkBytes));
      const cost = length + chunks * (HEADER_BYTES + TAG_BYTES + QUEUE_OVERHEAD_BYTES);
      if (this.#queuedBytes + cost > this.#maxQueuedBytes) {
        throw sealwireError(
          "ERR_QUEUE_FULL",
          "the peer is not reading and this connection's queue is full; await drain() whenever send() returns false",
        );
      }
    }
    let off = 0;
    do {
      const n = Math.min(this.#chunkBytes, length - off);
      const end = off + n;
      this.#write(end < length ? FLAG_MORE : 0, frame, off, end);
      off = end;
    } while (off < length);
    return this.#queuedBytes === 0 && this.#lastVerdict;
  }

  drain(options?: AbortOptions): Promise<void> {
    if (this.#state !== OPEN) return Promise.reject(this.#endedError());
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, "drain()"));
    const innerDrain = (): Promise<void> => this.#inner.drain(options).catch((e: unknown) => Promise.reject(this.#error ?? e));
    if (this.#queuedBytes === 0) return innerDrain();
    return this.#flushed(signal).then(innerDrain);
  }

  close(options?: AbortOptions): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    if (this.#state !== OPEN) return Promise.resolve();
    const signal = options?.signal;
    if (signal?.aborted) {
      // Asked to stop waiting before the close began: end the connection anyway (fail closed).
      const err = abortError(signal, "close()");
      this.abort(err);
      return Promise.reject(err);
    }
    this.#state = CLOSING;
    this.#closedLocally = true;
    this.#closing = this.#finishClose(signal);
    return this.#closing;
  }

  abort(err?: Error): void {
    const error = err instanceof Error ? err : sealwireError("ERR_CONNECTION_ABORTED", "the connection was aborted locally");
    if (this.#state === OPEN || this.#state === CLOSING) {
      this.#state = ABORTED;
      this.#error = error;
    }
    if (!this.#readDone) {
      this.#readDone = true;
      this.#readError = error;
    }
    this.#wipe();
    this.#dropQueue(error);
    this.#inner.abort(error);
    this.#settle(error); // no-op after a completed graceful close: abort takes back nothing
    this.#peerEndWaiter?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterated) throw invalid("a connection can be iterated only once");
    this.#iterated = true;
    const iterator: AsyncIterator<Uint8Array> & AsyncIterable<Uint8Array> = {
      next: () => this.#next(),
      // Leaving a for-await early means "I will not read any more": close gracefully, like the memory transport.
      return: () => {
        this.#stopReading();
        return Promise.resolve(DONE);
      },
      throw: (reason?: unknown) => {
        this.#stopReading();
        return Promise.reject(reason);
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NoiseConnection";
  }

  /** Never shows keys or frames. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    const state = ["open", "closing", "closed", "aborted"][this.#state];
    return `NoiseConnection(${this.remotePeer} at ${this.remoteAddr}, ${state})`;
  }

  // ----- handshake phase ----------------------------------------------------------------------------------------

  /**
   * The peer's key for this channel is a rotated-out one: end the channel when its overlap window does
   * (`ERR_KEY_RETIRED`), so a session cannot outlive the key it was opened with.
   */
  retireAt(when: number): void {
    // Past `when`, not at it: findBySealKey still accepts the key at exactly validUntil.
    if (this.#settled || this.#retire?.at === when + 1) return;
    this.#retire?.cancel();
    this.#retire = new Deadline(when + 1, () => this.abort(this.#retiredError()), wallClock);
  }

  /** Ends the channel gracefully `ms` from now (maxSessionAgeMs; module notes, item 5). */
  expireAfter(ms: number): void {
    if (this.#settled) return;
    this.#age?.cancel();
    this.#age = new Deadline(monotonicClock() + ms, () => this.#expire(), monotonicClock);
  }

  #expire(): void {
    if (this.#state !== OPEN) return;
    this.#awaitPeerEnd = true;
    this.close().catch(() => {}); // a failure aborts the connection, which reports it
  }

  #retiredError(): SealwireError<"ERR_KEY_RETIRED"> {
    return sealwireError(
      "ERR_KEY_RETIRED",
      `the key of "${this.remotePeer}" this secure channel was opened with was rotated out or revoked; reconnect`,
    );
  }

  /**
   * The peer's trust entry changed since we last looked (a rotation, a revoked previous key, new roles): is the
   * key this channel was opened with still good? A key that became the previous one ends with its overlap window;
   * a key the entry no longer lists ends the channel now. Returns false after aborting the connection.
   */
  #recheckKey(): boolean {
    const e = this.#env.cfg.trust.get(this.remotePeer);
    let err: SealwireError;
    if (e === undefined || e.revoked) {
      err = sealwireError("ERR_REVOKED_PEER", `peer "${this.remotePeer}" was revoked; its secure channel was closed`);
    } else if (e.identity.kid === this.#kid) {
      this.#entry = e;
      return true;
    } else if (e.previous !== undefined && e.previous.kid === this.#kid && Date.now() <= e.previous.validUntil) {
      this.#entry = e;
      this.retireAt(e.previous.validUntil);
      return true;
    } else {
      err = this.#retiredError();
    }
    this.abort(err);
    return false;
  }

  /** Sends the key confirmation message (handshake phase only). */
  sendConfirm(): void {
    this.#write(FLAG_CONFIRM, EMPTY, 0, 0);
  }

  /** Reads the peer's key confirmation; anything else fails the handshake (handshake phase only). */
  async readConfirm(): Promise<void> {
    const msg = await this.#nextMessage();
    if (msg === undefined) throw hangup();
    const pt = this.#open(msg);
    if (pt.length !== 1 || pt[0] !== FLAG_CONFIRM) {
      throw handshakeError("the peer did not confirm the Noise handshake");
    }
  }

  // ----- writing ------------------------------------------------------------------------------------------------

  /** Encrypts `flags ‖ data[start, end)` as one Noise message and hands it to the inner connection. */
  #write(flags: number, data: Uint8Array, start: number, end: number): void {
    const tx = this.#tx;
    if (tx === null) throw this.#endedError();
    const pt = SCRATCH.subarray(0, HEADER_BYTES + end - start);
    pt[0] = flags;
    if (end > start) pt.set(data.subarray(start, end), HEADER_BYTES);
    let ct: Uint8Array;
    try {
      ct = tx.encryptWithAd(EMPTY, pt);
    } finally {
      pt.fill(0);
    }
    // §11.3: rekey after the N-th message sent (or the byte limit); the receiver does the same after its N-th.
    if (++this.#txMessages >= this.#env.cfg.rekeyAfterMessages || (this.#txBytes += ct.length) >= this.#env.cfg.rekeyAfterBytes) {
      tx.rekey();
      this.#txMessages = 0;
      this.#txBytes = 0;
    }
    if (this.#queuedBytes === 0) {
      try {
        this.#lastVerdict = this.#inner.send(ct);
        return;
      } catch (e) {
        // The message is encrypted (its nonce used): it must go out, after what precedes it, or the stream is dead.
        if (!SealwireError.is(e, "ERR_QUEUE_FULL")) {
          if (!SealwireError.is(e, "ERR_CONNECTION_CLOSED")) this.abort(e instanceof Error ? e : undefined);
          throw e;
        }
      }
    }
    this.#queue.push(ct);
    this.#queuedBytes += ct.length + QUEUE_OVERHEAD_BYTES;
    this.#lastVerdict = false;
    if (!this.#pumping) void this.#pump();
  }

  /** Feeds the spill-over queue to the inner connection as it drains. */
  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      let refusedInARow = 0;
      while (this.#queueHead < this.#queue.length) {
        if (this.#state === ABORTED) return;
        const ct = this.#queue[this.#queueHead]!;
        let ok: boolean;
        try {
          ok = this.#inner.send(ct);
        } catch (e) {
          if (!SealwireError.is(e, "ERR_QUEUE_FULL")) throw e;
          await this.#inner.drain();
          // A transport whose drain resolves before it accepts more must not make this loop spin.
          if (++refusedInARow > 1) await new Promise((r) => setTimeout(r, 1));
          continue;
        }
        refusedInARow = 0;
        this.#queue[this.#queueHead++] = undefined;
        this.#queuedBytes -= ct.length + QUEUE_OVERHEAD_BYTES;
        if (this.#queueHead >= 1024 && this.#queueHead * 2 >= this.#queue.length) {
          this.#queue = this.#queue.slice(this.#queueHead);
          this.#queueHead = 0;
        }
        this.#lastVerdict = ok;
        if (!ok && this.#queueHead < this.#queue.length) await this.#inner.drain();
      }
      this.#queue = [];
      this.#queueHead = 0;
      this.#queuedBytes = 0;
      const waiters = this.#flushWaiters;
      this.#flushWaiters = undefined;
      for (const w of waiters ?? []) {
        w.cleanup();
        w.resolve();
      }
    } catch (e) {
      // After the peer's END, a wire the peer already closed is the end of a graceful close, not a failure: what
      // was still queued is dropped and its drain() callers get ERR_CONNECTION_CLOSED (so they send it again).
      const peerClosed = this.#remoteEnd && SealwireError.is(e, "ERR_CONNECTION_CLOSED");
      if ((this.#state === OPEN || this.#state === CLOSING) && !peerClosed) {
        this.abort(e instanceof Error ? e : sealwireError("ERR_CONNECTION_ABORTED", "the inner connection failed"));
      } else {
        this.#dropQueue(this.#endedError());
      }
    } finally {
      this.#pumping = false;
    }
  }

  /** Resolves once the spill-over queue is empty; rejects if the connection ends first or `signal` aborts. */
  #flushed(signal: AbortSignal | undefined): Promise<void> {
    if (this.#queuedBytes === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiters = (this.#flushWaiters ??= new Set());
      const onAbort = (): void => {
        waiters.delete(waiter);
        reject(abortError(signal!, "the wait for the send queue"));
      };
      const waiter: Waiter = { resolve, reject, cleanup: () => signal?.removeEventListener("abort", onAbort) };
      waiters.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  #dropQueue(err: Error): void {
    this.#queue = [];
    this.#queueHead = 0;
    this.#queuedBytes = 0;
    const waiters = this.#flushWaiters;
    this.#flushWaiters = undefined;
    for (const w of waiters ?? []) {
      w.cleanup();
      w.reject(err);
    }
  }

  async #finishClose(signal: AbortSignal | undefined): Promise<void> {
    try {
      // No await unless something is queued: with nothing to flush, END is written and the wire closed before
      // close() (or #remoteEnded) returns, so an abort() right after (say, by a reader that saw the end) finds the
      // wire already closed gracefully and cannot take back what was sent.
      if (this.#queuedBytes > 0) await this.#flushed(signal);
      if (this.#state === CLOSING && this.#inner.isOpen) {
        this.#write(FLAG_END, EMPTY, 0, 0); // authenticated end of stream
        if (this.#queuedBytes > 0) await this.#flushed(signal);
      }
      // Session-age close: keep reading until the peer answers with its END (or the wire ends, or time is up),
      // so frames the peer sent before it saw ours are delivered, not cut off with the wire.
      if (this.#awaitPeerEnd) {
        await this.#peerEnded();
        if (this.#state === ABORTED) throw this.#error; // aborted while waiting: close() reports it
      }
      await this.#inner.close(signal ? { signal } : undefined);
      if (this.#state === CLOSING) this.#state = CLOSED;
      this.#wipeTx();
      if (this.#readDone) this.#releaseInbox();
    } catch (e) {
      if (this.#state === CLOSED) return; // the peer closed first: the connection is closed all the same
      if (this.#remoteEnd && this.#state === CLOSING && SealwireError.is(e, "ERR_CONNECTION_CLOSED")) {
        // Answering the peer's END, and the peer had already closed the wire: a graceful end all the same.
        this.#state = CLOSED;
        this.#wipeTx();
        this.#inner.close().catch(() => {});
        return;
      }
      const err = this.#error ?? (e instanceof Error ? e : sealwireError("ERR_CONNECTION_ABORTED", "close() failed"));
      this.abort(err);
      throw err;
    }
  }

  /** Resolves when the peer's END was read, the wire ended, or after `handshakeTimeoutMs` (then we stop waiting). */
  #peerEnded(): Promise<void> {
    if (this.#remoteEnd || this.#settled || !this.#inner.isOpen) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        // The peer is not reading (or not answering): close the wire ourselves. Its end is then ours, not a cut.
        this.#awaitPeerEnd = false;
        done();
      }, this.#env.cfg.handshakeTimeoutMs);
      timer.unref?.();
      const done = (): void => {
        clearTimeout(timer);
        this.#peerEndWaiter = undefined;
        resolve();
      };
      this.#peerEndWaiter = done;
    });
  }

  // ----- reading ------------------------------------------------------------------------------------------------

  #next(): Promise<IteratorResult<Uint8Array>> {
    // One frame may span several inner reads: serve overlapping next() calls one after the other.
    this.#reads++;
    const prev = this.#lastRead;
    const p = this.#reads === 1 || prev === undefined ? this.#readFrame() : prev.then(() => this.#readFrame(), () => this.#readFrame());
    this.#lastRead = p;
    return p;
  }

  async #readFrame(): Promise<IteratorResult<Uint8Array>> {
    try {
      let parts: Uint8Array[] | undefined;
      let total = 0;
      for (;;) {
        if (this.#readError !== undefined) throw this.#readError;
        if (this.#readDone) return DONE;
        // Inlined #nextMessage(): one async frame per message on the hot path, not two.
        let r: IteratorResult<Uint8Array>;
        try {
          r = await this.#it.next();
        } catch (e) {
          throw this.#readFailed(e);
        }
        if (this.#readError !== undefined) throw this.#readError;
        const msg = r.done === true ? undefined : r.value;
        if (msg === undefined) {
          this.#readDone = true;
          this.#wipeRx();
          // After our own close the wire's end is ours, unless we are waiting for the peer's END (session age).
          if (parts === undefined && this.#closedLocally && !this.#awaitPeerEnd) return DONE;
          // The wire ended without the peer's END (or mid-frame): someone cut the stream. Say so.
          const err = sealwireError(
            "ERR_CONNECTION_ABORTED",
            "the secure channel ended without the peer's authenticated close; frames may have been cut off",
          );
          this.#readError = err;
          throw err;
        }
        const pt = this.#open(msg);
        if (this.#state <= CLOSING && this.#env.cfg.trust.get(this.remotePeer) !== this.#entry && !this.#recheckKey()) {
          throw this.#readError ?? this.#endedError();
        }
        const flags = pt[0];
        const body = pt.subarray(HEADER_BYTES);
        if (flags === 0 || flags === FLAG_MORE) {
          total += body.length;
          if (total > this.maxFrameBytes) {
            throw this.#fail(
              sealwireError(
                "ERR_FRAME_TOO_LARGE",
                `the peer sent a frame larger than maxFrameBytes (${this.maxFrameBytes}); the connection was aborted`,
              ),
            );
          }
          if (flags === FLAG_MORE) {
            if (body.length < MIN_MORE_CHUNK_BYTES) throw this.#fail(protocolError("an undersized chunk"));
            (parts ??= []).push(body);
            continue;
          }
          if (parts === undefined) return { done: false, value: body };
          parts.push(body);
          return { done: false, value: concatBytes(...parts) };
        }
        if (flags === FLAG_END && body.length === 0 && parts === undefined) {
          this.#remoteEnded();
          return DONE;
        }
        throw this.#fail(protocolError("a malformed message"));
      }
    } finally {
      this.#reads--;
    }
  }

  /** The next inner frame, or `undefined` at the end of the inner stream. */
  async #nextMessage(): Promise<Uint8Array | undefined> {
    let r: IteratorResult<Uint8Array>;
    try {
      r = await this.#it.next();
    } catch (e) {
      throw this.#readFailed(e);
    }
    if (this.#readError !== undefined) throw this.#readError;
    return r.done === true ? undefined : r.value;
  }

  /** The inner read failed: reading is over, with our own abort reason if we caused it. Returns what to throw. */
  #readFailed(e: unknown): Error {
    const err = this.#error ?? (e instanceof Error ? e : sealwireError("ERR_CONNECTION_ABORTED", "the inner connection failed"));
    if (!this.#readDone) {
      this.#readDone = true;
      this.#readError = err;
    }
    this.#wipeRx();
    return this.#readError ?? err;
  }

  /** Decrypts one transport message (and rekeys in step with the sender). Any failure aborts the connection. */
  #open(msg: Uint8Array): Uint8Array {
    const rx = this.#rx;
    if (rx === null) throw this.#readError ?? this.#endedError();
    let pt: Uint8Array;
    try {
      pt = rx.decryptWithAd(EMPTY, msg);
    } catch (e) {
      // Tampered, replayed, reordered, dropped, or keyed differently (e.g. other rekey limits): fail closed.
      const err =
        SealwireError.is(e) && (e.code === "ERR_NOISE_DECRYPT" || e.code === "ERR_FRAME_TOO_LARGE" || e.code === "ERR_NONCE_EXHAUSTED")
          ? e
          : sealwireError("ERR_NOISE_DECRYPT", "a Noise transport message failed authentication", { cause: e });
      throw this.#fail(err);
    }
    if (++this.#rxMessages >= this.#env.cfg.rekeyAfterMessages || (this.#rxBytes += msg.length) >= this.#env.cfg.rekeyAfterBytes) {
      rx.rekey();
      this.#rxMessages = 0;
      this.#rxBytes = 0;
    }
    if (pt.length === 0) throw this.#fail(protocolError("a message without a header"));
    return pt;
  }

  /** Aborts with `err` (the local reader sees `err`, the peer ERR_CONNECTION_ABORTED) and returns it. */
  #fail(err: SealwireError): SealwireError {
    this.abort(err);
    return err;
  }

  /**
   * The peer's authenticated END arrived: its stream is over. If we were open, we stop accepting sends, flush
   * what we accepted, answer with our own END and close the wire (the peer may be waiting for our END: module
   * notes, item 5). If we were closing, our close finishes by itself.
   */
  #remoteEnded(): void {
    this.#readDone = true;
    this.#remoteEnd = true;
    this.#wipeRx();
    this.#peerEndWaiter?.();
    if (this.#state === OPEN) {
      this.#state = CLOSING;
      this.#closing = this.#finishClose(undefined);
      this.#closing.catch(() => {}); // a failure aborts the connection, which reports it
    } else if (this.#state !== CLOSING) {
      this.#inner.close().catch(() => {});
    }
  }

  #stopReading(): void {
    if (!this.#readDone) {
      this.#readDone = true;
      this.#wipeRx();
    }
    if (this.#state === OPEN) this.close().catch(() => {});
    else if (this.#state !== CLOSING) this.#releaseInbox(); // a close in progress releases it when done
  }

  /** Lets the inner connection drop frames nobody will read (after the close, so END went out first). */
  #releaseInbox(): void {
    try {
      void this.#it.return?.()?.catch(() => {});
    } catch {
      /* nothing to release */
    }
  }

  // ----- ending -------------------------------------------------------------------------------------------------

  /** The inner connection ended: gracefully (`undefined`) or with an error. */
  #innerEnded(e: Error | undefined): void {
    this.#peerEndWaiter?.();
    if (e === undefined) {
      if (this.#state === OPEN || this.#state === CLOSING) this.#state = CLOSED;
      this.#wipeTx(); // the receiving key stays until the frames already delivered to us are read
      this.#dropQueue(this.#endedError());
      this.#settle(undefined);
      return;
    }
    if (this.#state !== ABORTED && !(this.#state === CLOSED && this.#settled)) {
      this.#state = ABORTED;
      this.#error ??= e;
    }
    this.#wipe();
    this.#dropQueue(this.#error ?? e);
    this.#settle(this.#error ?? e);
  }

  #settle(err: Error | undefined): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#retire?.cancel();
    this.#age?.cancel();
    this.#resolveClosed(err);
    this.#env.untrack(this.#resource);
  }

  #endedError(): Error {
    return this.#error ?? sealwireError("ERR_CONNECTION_CLOSED", "the connection was closed; dial a new one");
  }

  #wipeTx(): void {
    this.#tx?.destroy();
    this.#tx = null;
  }

  #wipeRx(): void {
    this.#rx?.destroy();
    this.#rx = null;
  }

  #wipe(): void {
    this.#wipeTx();
    this.#wipeRx();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Listener

interface AcceptWaiter {
  resolve(r: IteratorResult<Connection>): void;
  reject(err: unknown): void;
}

/** One inbound handshake's place at its listener, from the wire's arrival until `secure()` settles. */
interface HandshakeSlot {
  /** The remote address it is counted under, when the inner connection has one. */
  readonly source: string | undefined;
  /** Ends the handshake; set by `secure()` as soon as it starts. */
  kill: ((err: SealwireError) => void) | undefined;
  /** Evicted by the listener (already reported; its outcome is not reported again). */
  evicted: boolean;
}

/**
 * The remote address (without port) of an inner connection, from its `remoteAddr`: `203.0.113.4:51234` →
 * `203.0.113.4`, `[2001:db8::1]:443` → `2001:db8::1`. Other forms (`mem://bob#3`, a NATS inbox) have no address,
 * and only the listener's global limit applies to them.
 */
export function handshakeSourceOf(remoteAddr: unknown): string | undefined {
  if (typeof remoteAddr !== "string" || remoteAddr.length > 64) return undefined;
  const v4 = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(remoteAddr);
  if (v4 !== null) return v4[1];
  const v6 = /^\[([0-9A-Fa-f:.]{2,45})(?:%[^\]]*)?\]:\d{1,5}$/.exec(remoteAddr);
  if (v6 !== null) return v6[1]!.toLowerCase();
  return undefined;
}

function firstOf<T>(items: Iterable<T>): T | undefined {
  for (const x of items) return x;
  return undefined;
}

class NoiseListener implements Listener {
  readonly addr: string;
  readonly #env: Env;
  readonly #inner: Listener;
  readonly #ready: NoiseConnection[] = [];
  readonly #acceptors: AcceptWaiter[] = [];
  /** Handshakes in flight, oldest first (a Set keeps insertion order). */
  readonly #handshakes = new Set<HandshakeSlot>();
  /** The same, by remote address (only slots that have one). */
  readonly #bySource = new Map<string, Set<HandshakeSlot>>();
  readonly #resource: Resource;
  #closed = false;
  #closing: Promise<void> | undefined;
  #iterated = false;

  constructor(env: Env, inner: Listener) {
    this.#env = env;
    this.#inner = inner;
    this.addr = inner.addr;
    this.#resource = { peer: undefined, kid: undefined, kill: () => void this.close().catch(() => {}) };
    env.track(this.#resource);
    void this.#acceptLoop();
  }

  /** Handshakes running at this listener now (at most `maxHandshakes`). */
  get handshakesInFlight(): number {
    return this.#handshakes.size;
  }

  async #acceptLoop(): Promise<void> {
    const cfg = this.#env.cfg;
    let failure: unknown;
    try {
      for await (const raw of this.#inner) {
        if (this.#closed) {
          raw.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener is closed"));
          continue;
        }
        this.#admit(raw, cfg);
      }
    } catch (e) {
      failure = e;
    }
    if (!this.#closed) await this.#shut(failure).catch(() => {});
  }

  /**
   * Starts the handshake of one inbound wire, first making room: at `maxHandshakesPerSource` the source's own
   * oldest handshake is evicted, at `maxHandshakes` the oldest of all. Eviction happens before any cryptography
   * for the newcomer, and costs the evicted one an abort.
   */
  #admit(raw: Connection, cfg: Config): void {
    const source = handshakeSourceOf(raw.remoteAddr);
    if (source !== undefined) {
      const mine = this.#bySource.get(source);
      if (mine !== undefined && mine.size >= cfg.maxHandshakesPerSource) this.#evict(firstOf(mine)!, "noise_per_source");
    }
    if (this.#handshakes.size >= cfg.maxHandshakes) this.#evict(firstOf(this.#handshakes)!, "noise_handshake_evicted");
    const slot: HandshakeSlot = { source, kill: undefined, evicted: false };
    this.#handshakes.add(slot);
    if (source !== undefined) {
      let mine = this.#bySource.get(source);
      if (mine === undefined) this.#bySource.set(source, (mine = new Set()));
      mine.add(slot);
    }
    secure(this.#env, raw, {
      initiator: false,
      slot,
      admit: () => !this.#closed && this.#ready.length < cfg.backlog,
    }).then(
      (conn) => {
        this.#release(slot);
        if (slot.evicted) return; // evicted between the handshake's end and now: `conn` is already aborted
        this.#deliver(conn);
      },
      (e: unknown) => {
        this.#release(slot);
        // Refused and (if configured) audited; the listener carries on.
        if (slot.evicted || this.#closed) return;
        const code = SealwireError.is(e) ? e.code : undefined;
        if (code === "ERR_CLOSED" || code === "ERR_ABORTED") return; // ended by its owner, not by the peer
        const reason =
          code === "ERR_TIMEOUT" ? "noise_handshake_timeout" : code === "ERR_CONNECTION_REFUSED" ? "noise_backlog" : "noise_handshake_failed";
        reportRefusal(cfg.onRefusal, reason, source);
      },
    );
  }

  /** Stops counting a handshake (idempotent). */
  #release(slot: HandshakeSlot): void {
    if (!this.#handshakes.delete(slot) || slot.source === undefined) return;
    const mine = this.#bySource.get(slot.source);
    if (mine === undefined) return;
    mine.delete(slot);
    if (mine.size === 0) this.#bySource.delete(slot.source);
  }

  /** Ends an unfinished handshake to make room for a new one; its slot is free at once. */
  #evict(slot: HandshakeSlot, reason: "noise_handshake_evicted" | "noise_per_source"): void {
    this.#release(slot);
    slot.evicted = true;
    reportRefusal(this.#env.cfg.onRefusal, reason, slot.source);
    slot.kill?.(
      sealwireError(
        "ERR_CONNECTION_ABORTED",
        reason === "noise_per_source"
          ? "evicted: too many Noise handshakes in progress from this address (maxHandshakesPerSource)"
          : "evicted: too many Noise handshakes in progress at this listener (maxHandshakes)",
      ),
    );
  }

  #deliver(conn: NoiseConnection): void {
    if (this.#closed) {
      conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
      return;
    }
    const acceptor = this.#acceptors.shift();
    if (acceptor !== undefined) acceptor.resolve({ done: false, value: conn });
    else this.#ready.push(conn);
  }

  close(): Promise<void> {
    return this.#shut(undefined);
  }

  #shut(failure: unknown): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    this.#env.untrack(this.#resource);
    const closing = sealwireError("ERR_CONNECTION_ABORTED", "the listener closed during the Noise handshake");
    for (const h of [...this.#handshakes]) h.kill?.(closing);
    for (const conn of this.#ready.splice(0)) {
      conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
    }
    for (const a of this.#acceptors.splice(0)) {
      if (failure !== undefined) a.reject(failure);
      else a.resolve(DONE);
    }
    this.#closing = this.#inner.close();
    return this.#closing;
  }

  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    if (this.#iterated) throw invalid("a listener can be iterated only once");
    this.#iterated = true;
    const iterator: AsyncIterator<Connection> & AsyncIterable<Connection> = {
      next: () => {
        const conn = this.#ready.shift();
        if (conn !== undefined) return Promise.resolve({ done: false, value: conn });
        if (this.#closed) return Promise.resolve(DONE);
        return new Promise((resolve, reject) => this.#acceptors.push({ resolve, reject }));
      },
      // Leaving the accept loop stops accepting.
      return: async () => {
        await this.close();
        return DONE;
      },
      throw: async (reason?: unknown) => {
        await this.close();
        throw reason;
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NoiseListener";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Transport

/**
 * The Transport {@link noise} returns: a {@link Transport}, plus {@link NoiseTransport.useIdentity} to follow a key
 * rotation without re-creating it.
 */
export interface NoiseTransport extends Transport {
  /**
   * Switches this transport to `next`, the agent's rotated identity (`rotateIdentity`, `agent.rotate()`): the same
   * agent id, a new key pair and kid. Call it once peers can trust the new key (after the rotation statement was
   * announced); `agent.rotate()` does it for the transport it was given.
   *
   * - Every handshake that starts after the call (a `dial`'s handshake, or an inbound wire a listener receives)
   *   uses `next`'s static key and provider. Open listeners keep listening: they are not closed or re-opened.
   * - Handshakes already in flight finish with the identity they started with (a dial whose inner connection was
   *   still being set up when the call came starts its handshake after it, so it uses `next`).
   * - Connections established under the previous identity stay open until that identity closes (`agent.rotate()`
   *   closes it at the end of its overlap window). Then those connections, and handshakes still running under
   *   it, are aborted with `ERR_KEY_RETIRED` ("reconnect": a `send` then throws `ERR_CONNECTION_CLOSED`, and an
   *   agent re-dials under the new key); listeners and connections established under `next` are not touched.
   * - `next` takes over the identity-close watch: closing `next` aborts every connection (`ERR_CLOSED`) and closes
   *   every listener, as closing the original identity did.
   * - It can be called again for a later rotation; each previous identity ends only what was established under
   *   it. Passing the current identity again does nothing.
   *
   * @throws SealwireError `ERR_INVALID_ARGUMENT` unless `next` is an open {@link Identity} of the same agent id;
   * `ERR_CLOSED` if the transport's current identity was already closed (its channels and listeners are gone:
   * create a new noise() transport).
   */
  useIdentity(next: Identity): void;
}

class NoiseTransportImpl implements NoiseTransport {
  readonly [transportSymbol] = true as const;
  readonly kind: string;
  readonly maxFrameBytes: number;
  /** The inner transport's default address for an agent, when it has one (memory: `mem://<id>`). */
  declare readonly addressFor?: (agentId: string) => string;
  readonly #cfg: Config;
  readonly #env: Env;
  readonly #resources = new Set<Resource>();
  #subscriptions: (() => void)[] = [];
  /** The identity new handshakes use: `cfg.identity`, until {@link useIdentity}. */
  #identity: Identity;
  /** The current identity's close watch (set while something is open, like `#subscriptions`). */
  #unwatchIdentity: (() => void) | undefined;
  /** Identities replaced by useIdentity that still have handshakes or connections: their close watches. */
  readonly #previous = new Map<Identity, () => void>();

  constructor(cfg: Config) {
    this.#cfg = cfg;
    this.#identity = cfg.identity;
    this.kind = `noise+${cfg.inner.kind}`;
    this.maxFrameBytes = cfg.maxFrameBytes;
    const inner = cfg.inner;
    if (typeof inner.addressFor === "function") this.addressFor = (agentId: string) => inner.addressFor!(agentId);
    this.#env = { cfg, identity: () => this.#identity, track: (r) => this.#track(r), untrack: (r) => this.#untrack(r) };
  }

  useIdentity(next: Identity): void {
    if (!(next instanceof Identity)) throw invalid("useIdentity(next): next must be an Identity (rotateIdentity)");
    const current = this.#identity;
    if (next.id !== current.id) {
      throw invalid(`useIdentity(next): next must be an identity of agent "${current.id}" (a rotated key), not of another agent`);
    }
    let closed: boolean;
    try {
      closed = next.closed;
    } catch {
      closed = true; // not a real Identity (e.g. a Proxy of one): its keys are out of reach
    }
    if (closed) throw invalid("useIdentity(next): next was closed; pass the open identity rotateIdentity returned");
    this.#assertAlive();
    if (next === current) return;
    this.#identity = next;
    // A previous identity made current again is watched as the current one only.
    this.#previous.get(next)?.();
    this.#previous.delete(next);
    if (this.#resources.size === 0) return; // nothing to watch; #track subscribes to `next` when needed
    this.#unwatchIdentity?.();
    this.#unwatchIdentity = next.onClose(() => this.#identityClosed());
    for (const r of this.#resources) {
      if (r.local === current) {
        this.#watchPrevious(current);
        break;
      }
    }
  }

  async listen(addr: string, options?: ListenOptions): Promise<Listener> {
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "listen()");
    this.#assertAlive();
    const inner = await this.#cfg.inner.listen(addr, { ...(signal ? { signal } : {}), channelSecured: true });
    if (this.#identity.closed) {
      await inner.close();
      this.#assertAlive();
    }
    return new NoiseListener(this.#env, inner);
  }

  async dial(addr: string, options?: DialOptions): Promise<Connection> {
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "dial()");
    this.#assertAlive();
    const remotePeer = options?.remotePeer;
    let expected: TrustEntry | undefined;
    if (remotePeer !== undefined) {
      assertAgentId(remotePeer, "dial(): remotePeer");
      expected = this.#cfg.trust.require(remotePeer); // ERR_UNKNOWN_PEER / ERR_REVOKED_PEER before any wire
    }
    const forced = this.#cfg.pattern;
    const pattern: PatternName = forced === "auto" ? (expected ? "IK" : "XX") : forced;
    if (pattern === "IK" && expected === undefined) {
      throw invalid('dial(): pattern "IK" needs options.remotePeer (the agent whose key to pin)');
    }
    const raw = await this.#cfg.inner.dial(addr, {
      ...(signal ? { signal } : {}),
      ...(remotePeer !== undefined ? { remotePeer } : {}),
      channelSecured: true,
    });
    return secure(this.#env, raw, { initiator: true, pattern, expected, signal });
  }

  get [Symbol.toStringTag](): string {
    return "NoiseTransport";
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `NoiseTransport(${this.kind}, ${this.#identity.id})`;
  }

  #assertAlive(): void {
    if (this.#identity.closed) {
      throw sealwireError("ERR_CLOSED", `identity "${this.#identity.id}" was closed; create a new noise() transport`);
    }
  }

  // Revocation and identity-close listeners are registered only while something is open, so a transport that is
  // no longer used holds no references from the TrustStore or the Identity.
  #track(r: Resource): void {
    if (this.#resources.size === 0) {
      const trust = this.#cfg.trust;
      this.#subscriptions = [
        trust.onRevoke((entry) => this.#revoked(entry.id)),
        trust.onKeyRetired((id, kid) => this.#keyRetired(id, kid)),
      ];
      this.#unwatchIdentity = this.#identity.onClose(() => this.#identityClosed());
    }
    this.#resources.add(r);
    // A connection whose handshake began before a useIdentity call is bound to the identity it began with.
    if (r.local !== undefined && r.local !== this.#identity) this.#watchPrevious(r.local);
  }

  #untrack(r: Resource): void {
    if (this.#resources.delete(r) && this.#resources.size === 0) {
      for (const unsubscribe of this.#subscriptions.splice(0)) unsubscribe();
      this.#unwatchIdentity?.();
      this.#unwatchIdentity = undefined;
      for (const unsubscribe of this.#previous.values()) unsubscribe();
      this.#previous.clear();
    }
  }

  /** Watches a replaced identity: its close ends what was established under it (once; idempotent). */
  #watchPrevious(previous: Identity): void {
    if (this.#previous.has(previous)) return;
    if (previous.closed) {
      // Closed already (its onClose will not fire again): end at once what is bound to it.
      queueMicrotask(() => this.#previousClosed(previous));
      return;
    }
    this.#previous.set(previous, previous.onClose(() => this.#previousClosed(previous)));
  }

  /** A replaced identity closed: end its handshakes and connections; listeners and newer connections stay. */
  #previousClosed(previous: Identity): void {
    this.#previous.get(previous)?.();
    this.#previous.delete(previous);
    if (previous === this.#identity) return; // made current again meanwhile: #identityClosed handles it
    const err = sealwireError(
      "ERR_KEY_RETIRED",
      `the key of "${previous.id}" (kid ${previous.kid}) this secure channel was opened with was rotated out and closed; reconnect`,
    );
    for (const r of [...this.#resources]) if (r.local === previous) r.kill(err);
  }

  #revoked(peer: string): void {
    for (const r of [...this.#resources]) {
      if (r.peer === peer) {
        r.kill(sealwireError("ERR_REVOKED_PEER", `peer "${peer}" was revoked; its secure channel was closed`));
      }
    }
  }

  /** A peer's previous key alone was revoked (its overlap window ended early): end what was opened with it. */
  #keyRetired(peer: string, kid: string): void {
    for (const r of [...this.#resources]) {
      if (r.peer === peer && r.kid === kid) {
        r.kill(sealwireError("ERR_KEY_RETIRED", `the key of "${peer}" this secure channel was opened with was revoked; reconnect`));
      }
    }
  }

  #identityClosed(): void {
    const err = sealwireError("ERR_CLOSED", `identity "${this.#identity.id}" was closed; its secure channels were closed`);
    for (const r of [...this.#resources]) r.kill(err);
  }
}

/**
 * Wraps `init.transport` in the Noise secure channel (see the module notes).
 *
 * @throws SealwireError `ERR_INVALID_ARGUMENT` for a missing or malformed option (unknown keys included),
 * `ERR_CLOSED` for a closed identity.
 */
export function noise(init: NoiseInit): NoiseTransport {
  return new NoiseTransportImpl(resolveConfig(init));
}
