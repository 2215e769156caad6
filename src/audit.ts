/**
 * The audit trail: append-only, hash-chained, signed-checkpoint records of *metadata* — never payloads, never keys.
 *
 * Format (one record per line, issue 3 "Audit trail"). Each line is the canonical JSON ({@link canonicalJson}:
 * sorted keys, no whitespace, integers only, every non-ASCII or control character `\uXXXX`-escaped, so a line is
 * pure ASCII and has exactly one spelling) of a record
 * `{ seq, time, event, node, …the event's members, prev, hash }`
 * where `hash = SHA-256("sealwire/v1/audit:" || canonical JSON of the record without "hash")` and `prev` is the
 * previous record's `hash` (64 zeros for the first). `payloadDigest` is HMAC-SHA256 under a per-log key, so a
 * low-entropy payload ("yes", a phone number) cannot be confirmed by hashing guesses.
 *
 * ## Events and their fields
 * Each appendable event takes the members below and no others (`append` refuses any other, a missing required
 * one, or a value out of its syntax with `ERR_INVALID_ARGUMENT`; the verifier refuses such a record as
 * `bad_record`). Syntax: agent ids (`from`, `to`, `peer`) 1–256 printable characters; `kid` `[A-Za-z0-9_.:+/=-]`
 * up to 128, but on session events the sender's kid as identities derive it, 16 lowercase hex; `recipientKid` 16
 * lowercase hex; `reason` `[A-Za-z0-9_.:/-]{1,128}`; `stream` 32 lowercase hex (16 bytes); `firstSeq`, `lastSeq`
 * integers 0..2^32-1 with `firstSeq ≤ lastSeq`; `prevHead`, `head` 64 lowercase hex (SHA-256); `signature` the
 * canonical base64url of 64 bytes (86 characters, no padding, one spelling); `final` a boolean; `count` a safe
 * integer ≥ 0; `source` `[A-Za-z0-9.:[\]_-]{1,64}` (`127.0.0.1`, `[::1]`, `hub.lan`; no port needed) or `*`;
 * `windowMs` an integer 1..3,600,000.
 * - `sent`, `delivered`, `denied`, `relayed`, `handshake`, `handshake_failed`, `key_rotated`, `peer_revoked`
 *   (one message, handshake or key): any of `envelopeId`, `from`, `to`, `peer`, `kid`, `tags`, `decision`,
 *   `reason`, `payload` (recorded as `payloadDigest`), none required.
 * - Session mode (issue 8; one per `SessionEvent` of `src/session.ts`, built by {@link sessionAuditEvent}):
 *   - `session_opened`: `stream`, `from` (sender), `to` (recipient), `kid` (sender's), `recipientKid`; `peer`?.
 *   - `session_checkpoint`: `stream`, `from`, `to`, `kid`, `recipientKid`, `firstSeq`, `lastSeq`, `prevHead`,
 *     `head`, `signature`, `final`; `peer`?. Exactly what the sender's Ed25519 signature covers, so
 *     {@link verifySessionCheckpointRecord} re-checks it from the record alone and the sender's public key. The
 *     recipient's kid gets its own member, `recipientKid`, rather than reusing `peer` (an agent id, not a key id)
 *     or `kid` (the sender's, as on every event that names one key). The envelope digests are not recorded (see
 *     {@link sessionAuditEvent}).
 *   - `session_gap` (envelopes `[firstSeq, lastSeq]` can never be covered by a verified checkpoint): `stream`,
 *     `from`, `firstSeq`, `lastSeq`; `to`?, `kid`?, `recipientKid`?, `peer`?.
 *   - `session_closed`: `stream`, `from`, `reason` (one of {@link SESSION_CLOSE_REASONS}: `final`, `evicted`,
 *     `expired`, `revoked`, `checkpoint_failed`, `receiver_closed`), `count` (envelopes accepted that no verified
 *     checkpoint covers, `uncovered`); `to`?, `kid`?, `recipientKid`?, `peer`?.
 * - `refused_connections` (issue 9; refusals below the hub, added up over a window rather than one record each):
 *   `reason` (`ws_max_connections`, `ws_handshake_timeout`, `noise_handshake_cap`, `noise_handshake_failed`,
 *   `malformed_frame`, … — any reason code), `count` (≥ 1); `source`? (the peer address; `*` for refusals an
 *   aggregator summed over many sources), `windowMs`? (the window the count covers).
 *
 * - **Checkpoints.** Every `checkpointEvery` records and on {@link AuditLog.close} the log appends
 *   `{ event: "checkpoint", count, head, sig, signer, kid, final }`: `head` is the previous record's hash (= its
 *   `prev`), `count` the number of records before it (= its `seq`), `sig` an Ed25519 signature (base64url) over
 *   `"sealwire/v1/audit-checkpoint-record:" || canonical JSON of the checkpoint record without "sig" and "hash"`.
 *   So everything in the checkpoint is signed: `head` and `count`, `final` (what tells a truncated log from a
 *   closed one, see below), and its own `seq`, `time`, `node`, `signer` and `kid` — the final checkpoint is the
 *   last line, and nothing after it would otherwise cover those (found by fuzzing: an earlier format signed only
 *   head, count and final, so a forger could edit the final checkpoint's time or node and re-hash it). Only the
 *   canonical base64url spelling of `sig` is accepted.
 * - **Segments.** Every {@link AuditLog.open} starts a segment with a `segment_start` record: `reason` is `new_log`
 *   (empty sink), `resumed` (the tail ended with a valid final checkpoint), or — only with `newSegment: true` —
 *   `open_tail` (the previous run crashed or was cut after its last checkpoint), `torn_tail` (the file ends in a
 *   partial line; `tornBytes`/`tornDigest` pin that fragment) or `unverified_tail` (the tail did not verify). The
 *   record links to the previous head, and nothing already written is ever rewritten. `hmacKeyId` names the payload
 *   HMAC key in use (a keyed fingerprint, not the key).
 *
 * What {@link verifyAuditLog} detects: an edited record (its hash, or the next record's `prev`, or a checkpoint
 * signature no longer matches), a deleted, inserted or reordered record (`seq` and `prev` stop lining up; a forger
 * who recomputes the chain is stopped by the next signed checkpoint), a torn line, and truncation. **Truncation,
 * honestly:** records after the last checkpoint are protected by the hash chain only, and a chain can be cut
 * anywhere. So a log must end with the *final* checkpoint that `close()` writes; anything else is reported as
 * `ERR_AUDIT_TRUNCATED` unless the caller passes `allowOpenTail`. What no file-only check can catch is a cut made
 * exactly after an earlier final checkpoint (e.g. dropping every segment after a clean restart): for that, keep the
 * latest `count`/`head` elsewhere (a monitoring system) and pass `minRecords`.
 *
 * The payload HMAC key is generated per log by {@link AuditLog.open} unless the owner passes `hmacKey`. It lives in
 * a private field, is never written to the log (only its keyed fingerprint `hmacKeyId`), is wiped on close, and
 * leaves only through {@link AuditLog.exportHmacKey} — persist it in the keystore next to the node identity if you
 * will ever need to prove that a given payload is the one a record digests; losing it loses only that.
 *
 * Sinks: {@link memorySink} and {@link fileSink} (opened `O_APPEND|O_CREAT`, mode 0600, never truncated, never
 * followed through a symlink; `fsync` on every append, on checkpoints in the background, or never: see
 * "Durability"). One writer per file: a second
 * open of the same path in this process is refused (two processes must not share a file either; nothing here can
 * stop that, and the verifier would then report the forked chain).
 *
 * Appends are serialized through one writer with group commit: every append waiting when the writer wakes goes
 * out in one sink write, in call order, and each `append()` resolves only after its record was written. Measured
 * here (Node 20, ext4, 1 KiB payloads, concurrent appends): ~17k appends/s with `fsync: "checkpoint"`; the
 * verifier reads ~33k records/s.
 *
 * ## Durability ({@link fileSink})
 * Whatever the policy, nothing is acted on before its record is written: `append()` resolves only after the
 * write(2) of its batch returned, so the record survives a crash of the process (it is in the OS). What survives a
 * power loss or kernel crash depends on `fsync`:
 * - `always`: each append resolves after the fsync of its batch. Nothing acted on is lost.
 * - `checkpoint` (default): the fsync runs in the background, never on the append path. A batch ending in a
 *   checkpoint starts one; checkpoints written while it runs are covered by one follow-up fsync started when it
 *   ends (one at a time, never a queue of them). So the file is durable up to at least the last checkpoint
 *   whose fsync completed, and what was acted on but may not be durable yet is only what was written since the
 *   start of the last fsync that completed: about two fsync durations of appends. To bound that by count too
 *   (a disk that stalls), once more than {@link MAX_FSYNC_DUE} (4) batches ending in a checkpoint wait for the
 *   follow-up, the next such batch waits for the fsync in flight (one, never more) before it resolves; so at
 *   most about 2 × 5 checkpoint intervals (2 × 5 × `checkpointEvery` records, plus the batch in hand) are ever
 *   at risk. (Before, with the fsync on the append path: about one interval.) `close()` waits for them and
 *   fsyncs once more, so a closed log is durable.
 * - `never`: the OS writes back when it likes (on Linux within about 30 s); `close()` does not fsync.
 * A failed fsync is never retried (after an fsync error Linux may drop the dirty pages and report the next fsync
 * as a success): the sink is dead, the batch waiting on it, every later append and `close()` fail with
 * `ERR_AUDIT_IO`, nothing more is written, and `onError` hears it at once.
 *
 * Why the fsync left the append path (issue 9): `checkpoint` used to await the fsync inside the writer, so every
 * append queued behind a checkpoint waited for the disk, and under load (a checkpoint in most batches) the policy
 * cost as much as `always`. Measured with `bench/audit-fsync.ts` (2-core VM, `checkpointEvery: 100`, appends
 * issued at ~6k/s in 1 ms ticks; p50 / p99 time to resolve; "closed loop": 64 producers each awaiting its append):
 * - ext4 (virtio disk, bare fsync p50 0.4 ms, p99 0.6–15 ms), appends issued while an fsync ran: p50 1.0 ms before
 *   → 0.4–0.6 ms after; 64-producer rate 17–23k/s → 24–25k/s (noisy: other test runs shared the two cores).
 * - tmpfs: no difference beyond noise (fsync is ~0.1 ms there).
 * - the same disk with every fsync made 20 ms slower (`--fsync-delay-ms 20`: an SD card, a busy cloud volume):
 *   before, p50 40 ms / p99 60–65 ms (as slow as `always`); after, p50 0.5–0.6 ms / p99 5–7 ms (as `never`);
 *   64-producer rate 3.7k/s → 16–18k/s.
 *
 * @module
 * @example
 * ```ts
 * const log = await AuditLog.open(fileSink("audit.log"), { signer, checkpointEvery: 100 });
 * await log.append({ event: "sent", envelopeId, from: "alice", to: "bob", tags: ["pii:email"], decision: "allow", payload });
 * await log.close();
 * const res = await verifyAuditLog("audit.log", { publicKey: signer.publicKey });
 * if (!res.ok) console.error(`line ${res.line}: ${res.code} (${res.reason})`);
 * ```
 */
import { constants as fsc, promises as fsp } from "node:fs";
import { resolve as resolvePath } from "node:path";
import { z } from "zod";
import { concatBytes, toBase64url, toHex, utf8, wipe } from "./_bytes.js";
import { type CryptoProvider, defaultProvider } from "./_crypto.js";
import { type ErrorCode, SealwireError, sealwireError } from "./errors.js";
import { containsRegisteredSecret } from "./redact.js";
import { type DetectorName, DETECTORS, scanContent } from "./scanners.js";
import { checkpointSignedBytes, type SessionCheckpointEvent, type SessionEvent } from "./session.js";

// ---------------------------------------------------------------------------------------------------------------
// Types and constants
// ---------------------------------------------------------------------------------------------------------------

/** Events about one message, a handshake or a key: every field is optional (see {@link AuditEvent}). */
export const MESSAGE_EVENTS = [
  "sent",
  "delivered",
  "denied",
  "relayed",
  "handshake",
  "handshake_failed",
  "key_rotated",
  "peer_revoked",
] as const;
/** Events about a session-mode stream (issue 8), one per `SessionEvent` kind of `src/session.ts`. */
export const SESSION_EVENTS = ["session_opened", "session_checkpoint", "session_gap", "session_closed"] as const;
/** Events a caller may append. */
export const APPENDABLE_EVENTS = [...MESSAGE_EVENTS, ...SESSION_EVENTS, "refused_connections"] as const;
/** An event a caller may append. */
export type AppendableEventName = (typeof APPENDABLE_EVENTS)[number];
/** Every event a record can carry (`checkpoint` and `segment_start` are written by the log itself). */
export type AuditEventName = AppendableEventName | "checkpoint" | "segment_start";

/** The `reason` of a `session_closed` event: exactly the reasons a `SessionReceiver` reports. */
export const SESSION_CLOSE_REASONS = ["final", "evicted", "expired", "revoked", "checkpoint_failed", "receiver_closed"] as const;

/** Why a segment started; see the module notes. */
export type SegmentReason = "new_log" | "resumed" | "open_tail" | "torn_tail" | "unverified_tail";
const SEGMENT_REASONS = ["new_log", "resumed", "open_tail", "torn_tail", "unverified_tail"] as const;

/**
 * What a caller appends: metadata only. `payload` is never stored — only its HMAC (`payloadDigest`). Which fields
 * an event takes, and which it requires, is in the module notes ("Events and their fields"); any other field, a
 * missing required one, any value of the wrong shape, or a string that looks like a secret is refused with
 * `ERR_INVALID_ARGUMENT`.
 */
export interface AuditEvent {
  event: AppendableEventName;
  /** Envelope id (hex or base64url, ≤ 128 chars). */
  envelopeId?: string;
  /** Sender agent id. */
  from?: string;
  /** Recipient agent id. */
  to?: string;
  /** The other side of a handshake, or the revoked peer. */
  peer?: string;
  /** A public key id (`key_rotated`, `handshake`); on session events the sender's kid (16 lowercase hex). */
  kid?: string;
  /** Policy tags (`pii:email`, `anonymized`); at most 32. */
  tags?: readonly string[];
  decision?: "allow" | "deny";
  /** A reason *code* (`pii_not_cleared`, `ERR_POLICY_DENIED`), not a sentence: `[A-Za-z0-9_.:/-]{1,128}`. */
  reason?: string;
  /** The plaintext payload; only ever HMACed into `payloadDigest`. */
  payload?: Uint8Array;
  /** Session stream id: 32 lowercase hex (16 bytes). */
  stream?: string;
  /** The recipient's kid on session events: 16 lowercase hex. */
  recipientKid?: string;
  /** First sequence number covered (session checkpoint or gap): an integer 0..2^32-1, ≤ `lastSeq`. */
  firstSeq?: number;
  /** Last sequence number covered: an integer 0..2^32-1, ≥ `firstSeq`. */
  lastSeq?: number;
  /** Session chain head before `firstSeq`: 64 lowercase hex (SHA-256). */
  prevHead?: string;
  /** Session chain head after `lastSeq`, as signed: 64 lowercase hex (SHA-256). */
  head?: string;
  /** The sender's Ed25519 session-checkpoint signature: canonical base64url of 64 bytes (86 chars, no padding). */
  signature?: string;
  /** The stream's final checkpoint. */
  final?: boolean;
  /** A count: uncovered envelopes (`session_closed`, ≥ 0) or refusals (`refused_connections`, ≥ 1). */
  count?: number;
  /**
   * Where refused connections came from: an address or host name without port, `[A-Za-z0-9.:[\]_-]{1,64}`
   * (`127.0.0.1`, `[::1]`, `hub.lan`), or `*` for the sum over sources an aggregator no longer told apart.
   */
  source?: string;
  /** Length of the window a `refused_connections` count covers, in ms: an integer 1..3,600,000. */
  windowMs?: number;
}

/** One record as written (and as returned by {@link AuditLog.append}). */
export interface AuditRecord {
  readonly seq: number;
  readonly time: string;
  readonly event: AuditEventName;
  readonly node: string;
  readonly envelopeId?: string;
  readonly from?: string;
  readonly to?: string;
  readonly peer?: string;
  readonly kid?: string;
  readonly tags?: readonly string[];
  readonly decision?: "allow" | "deny";
  readonly reason?: string;
  readonly payloadDigest?: string;
  // session events (count, head and final are shared with checkpoints)
  readonly stream?: string;
  readonly recipientKid?: string;
  readonly firstSeq?: number;
  readonly lastSeq?: number;
  readonly prevHead?: string;
  readonly signature?: string;
  // refused_connections
  readonly source?: string;
  readonly windowMs?: number;
  // checkpoint (count, head and final also on some events: see the module notes)
  readonly count?: number;
  readonly head?: string;
  readonly sig?: string;
  readonly signer?: string;
  readonly final?: boolean;
  // segment_start
  readonly hmacKeyId?: string;
  readonly tornBytes?: number;
  readonly tornDigest?: string;
  readonly prev: string;
  readonly hash: string;
}

/**
 * Signs checkpoints with Ed25519. The public key may be named `publicKey` or `signPublicKey`, so the core
 * `Identity` (which has `id`, `kid`, `signPublicKey` and `sign()`) can be passed as it is.
 */
export type AuditSigner = {
  readonly id: string;
  readonly kid: string;
  sign(msg: Uint8Array): Uint8Array | Promise<Uint8Array>;
} & ({ readonly publicKey: Uint8Array } | { readonly signPublicKey: Uint8Array });

/** The signer's Ed25519 public key, whichever name it goes by. */
function signerPublicKey(s: AuditSigner): unknown {
  const o = s as { publicKey?: unknown; signPublicKey?: unknown };
  return o.publicKey ?? o.signPublicKey;
}

/** Looks up a checkpoint signer's Ed25519 public key; `undefined` if unknown (the check then fails). */
export type ResolveAuditKey = (signerId: string, kid: string) => Uint8Array | undefined;

/** Options for {@link AuditLog.open}. */
export interface AuditLogOptions {
  /** Signs checkpoints (the node identity). */
  signer: AuditSigner;
  /** A checkpoint after this many records. @default 1000 */
  checkpointEvery?: number;
  /** Payload HMAC key, 32–64 bytes (copied; the caller keeps its own). @default 32 fresh random bytes */
  hmacKey?: Uint8Array;
  /** Start a new segment on a sink whose tail does not verify, instead of refusing. @default false */
  newSegment?: boolean;
  /** The `node` field of every record. @default signer.id */
  node?: string;
  /** Resolves keys of earlier checkpoints (after a key rotation). The signer's own key is always known. */
  resolveKey?: ResolveAuditKey;
  /** Most appends waiting for their turn; more are refused with `ERR_QUEUE_FULL`. @default 10_000 */
  maxPending?: number;
  /** Clock, for tests. @default () => new Date() */
  now?: () => Date;
}

/** Where records go. Implement it to ship records elsewhere; {@link memorySink} and {@link fileSink} are built in. */
export interface AuditSink {
  /** Opens for appending; returns the total size and the last `tailBytes` bytes already held. */
  open(tailBytes: number): Promise<{ size: number; tail: Uint8Array }>;
  /**
   * Appends bytes; resolves once they are written (see "Durability" for what a sink may leave to the background).
   * `checkpoint` is true when the data ends with a checkpoint (a natural fsync point).
   */
  append(data: Uint8Array, checkpoint: boolean): Promise<void>;
  /** Flushes and closes. */
  close(): Promise<void>;
}

/** Successful verification. */
export interface AuditVerifyOk {
  ok: true;
  /** Number of records (lines) verified, checkpoints and segment starts included. */
  records: number;
  /** Number of signed checkpoints verified. */
  checkpoints: number;
  /** Number of segments (opens). */
  segments: number;
  /** Hash of the last record. */
  head: string;
  /** Records after the last checkpoint (only non-zero with `allowOpenTail`). */
  unsignedTail: number;
}
/** Failed verification: the first bad line (1-based; 0 when the file could not be read). */
export interface AuditVerifyFail {
  ok: false;
  line: number;
  code: "ERR_AUDIT_TAMPERED" | "ERR_AUDIT_TRUNCATED" | "ERR_AUDIT_UNKNOWN_SIGNER" | "ERR_AUDIT_IO";
  /**
   * Stable reason: `unparseable_line`, `line_too_long`, `not_canonical`, `bad_record`, `hash_mismatch`,
   * `seq_mismatch`, `prev_mismatch`, `bad_checkpoint`, `bad_signature`, `unknown_signer`, `bad_segment`,
   * `torn_line`, `no_final_checkpoint`, `empty_log`, `too_few_records`, `io_error`.
   */
  reason: string;
}
export type AuditVerifyResult = AuditVerifyOk | AuditVerifyFail;

/** Options for {@link verifyAuditLog}: a key (or resolver) is required. */
export interface AuditVerifyOptions {
  /** The checkpoint signer's Ed25519 public key (when one key signed the whole log). */
  publicKey?: Uint8Array;
  /** Resolves `(signer, kid)` to a public key (rotation, several nodes). Tried after `publicKey`. */
  resolveKey?: ResolveAuditKey;
  /** Accept a log that does not end with a final checkpoint (e.g. a live log). @default false */
  allowOpenTail?: boolean;
  /** Fail with `ERR_AUDIT_TRUNCATED` unless at least this many records are present (anchor kept elsewhere). */
  minRecords?: number;
}

/** Domain prefix of record hashes. */
const HASH_DOMAIN = utf8("sealwire/v1/audit:");
/** Domain prefix of checkpoint signatures. */
const CHECKPOINT_DOMAIN = utf8("sealwire/v1/audit-checkpoint-record:");
const PAYLOAD_DOMAIN = utf8("sealwire/v1/audit-payload:");
const KEY_ID_DOMAIN = utf8("sealwire/v1/audit-hmac-key-id");
const ZERO_HASH = "0".repeat(64);

/** Longest record line the log writes (fields are bounded so a record stays far below). */
export const MAX_RECORD_BYTES = 8 * 1024;
/** Longest line the verifier reads before declaring the file tampered (bounded memory on hostile files). */
export const MAX_LINE_BYTES = 64 * 1024;
/** Bytes read from the end of an existing log on open to check its tail. */
const TAIL_BYTES = 64 * 1024;
const DEFAULT_CHECKPOINT_EVERY = 1000;
const DEFAULT_MAX_PENDING = 10_000;

// ---------------------------------------------------------------------------------------------------------------
// Canonical JSON
// ---------------------------------------------------------------------------------------------------------------

/**
 * The one encoding used to hash and to write records: object keys sorted by UTF-16 code units, no whitespace, only
 * safe integers as numbers, strings with `"` and `\` escaped and every character outside printable ASCII
 * (U+0020–U+007E) written `\uXXXX` (lower-case hex). `undefined` members are omitted. Output is pure ASCII.
 *
 * @throws `ERR_INVALID_ARGUMENT` for values JSON cannot carry canonically (non-integers, functions, …).
 */
export function canonicalJson(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw sealwireError("ERR_INVALID_ARGUMENT", "canonicalJson: only safe integers");
    return String(v);
  }
  if (typeof v === "string") return canonicalString(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  const proto = typeof v === "object" ? (Object.getPrototypeOf(v) as unknown) : undefined;
  if (proto === Object.prototype || proto === null) {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${canonicalString(k)}:${canonicalJson(o[k])}`).join(",")}}`;
  }
  throw sealwireError("ERR_INVALID_ARGUMENT", "canonicalJson: unsupported value");
}

function canonicalString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, "0")}`;
    else out += s[i];
  }
  return out + '"';
}

/** SHA-256 record hash (hex) over the canonical record without its `hash` member. */
export function auditRecordHash(record: Omit<AuditRecord, "hash"> | AuditRecord): string {
  const { hash: _omit, ...rest } = record as AuditRecord;
  return toHex(defaultProvider.hash("sha256", HASH_DOMAIN, utf8(canonicalJson(rest))));
}

/**
 * The message a checkpoint signature covers: the domain, then the canonical JSON of the checkpoint record without
 * `sig` and `hash` (every other member, `head`/`count`/`final` and the record's own `seq`/`time`/`node`/`signer`/
 * `kid`, is signed).
 */
export function auditCheckpointMessage(record: Omit<AuditRecord, "sig" | "hash"> | AuditRecord): Uint8Array {
  const { sig: _sig, hash: _hash, ...rest } = record as AuditRecord;
  return concatBytes(CHECKPOINT_DOMAIN, utf8(canonicalJson(rest)));
}

/** HMAC-SHA256 (hex) of a payload under a log's HMAC key, as stored in `payloadDigest`. */
export function auditPayloadDigest(hmacKey: Uint8Array, payload: Uint8Array): string {
  return toHex(defaultProvider.hmac("sha256", hmacKey, PAYLOAD_DOMAIN, payload));
}

function hmacKeyIdOf(hmacKey: Uint8Array): string {
  return toHex(defaultProvider.hmac("sha256", hmacKey, KEY_ID_DOMAIN).subarray(0, 16));
}

// ---------------------------------------------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------------------------------------------

const HEX64 = z.string().regex(/^[0-9a-f]{64}$/);
const ID = z
  .string()
  .min(1)
  .max(256)
  .regex(/^[^\u0000-\u001f\u007f-\u009f]+$/);
const KID = z.string().regex(/^[A-Za-z0-9_.:+/=-]{1,128}$/);
const TAG = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$/);
const REASON = z.string().regex(/^[A-Za-z0-9_.:/-]{1,128}$/);
const ENVELOPE_ID = z.string().regex(/^[A-Za-z0-9_-]{1,128}$/);
/** A session stream id: 16 bytes in lowercase hex (`src/session.ts`). */
const STREAM_ID = z.string().regex(/^[0-9a-f]{32}$/);
/** A kid as identities derive it (`src/identity.ts`): 16 lowercase hex; session checkpoints sign kids in this form. */
const HEX_KID = /^[0-9a-f]{16}$/;
/** A stream sequence number (`MAX_STREAM_SEQ` in `src/session.ts`). */
const SEQ = z.number().int().min(0).max(0xffff_ffff);
/**
 * 64 bytes in canonical base64url: 86 characters, and the last one's 4 spare bits zero (`A`, `Q`, `g` or `w`), so a
 * signature has one spelling (see {@link verifyCheckpointSig} for what a second spelling would allow).
 */
const SIGNATURE = z.string().regex(/^[A-Za-z0-9_-]{85}[AQgw]$/);
/** A peer address or host name without port (`127.0.0.1`, `[::1]`, `hub.lan`), or `*`: the sum over many sources. */
const SOURCE = z.string().regex(/^(?:\*|[A-Za-z0-9.:[\]_-]{1,64})$/);
const WINDOW_MS = z.number().int().min(1).max(3_600_000);
const COUNT = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** The members of appendable events, with the syntax of each (per-event rules are in {@link EVENT_RULES}). */
const EVENT_MEMBERS = {
  envelopeId: ENVELOPE_ID.optional(),
  from: ID.optional(),
  to: ID.optional(),
  peer: ID.optional(),
  kid: KID.optional(),
  tags: z.array(TAG).max(32).optional(),
  decision: z.enum(["allow", "deny"]).optional(),
  reason: REASON.optional(),
  stream: STREAM_ID.optional(),
  recipientKid: z.string().regex(HEX_KID).optional(),
  firstSeq: SEQ.optional(),
  lastSeq: SEQ.optional(),
  prevHead: HEX64.optional(),
  head: HEX64.optional(),
  signature: SIGNATURE.optional(),
  final: z.boolean().optional(),
  count: COUNT.optional(),
  source: SOURCE.optional(),
  windowMs: WINDOW_MS.optional(),
};

/** What `append` accepts. Strict: unknown members (a `body`, a `key`) are refused. */
const AppendSchema = z.strictObject({
  event: z.enum(APPENDABLE_EVENTS),
  ...EVENT_MEMBERS,
  payload: z.instanceof(Uint8Array).optional(),
});

/** What a line must hold. Per-event members are checked in {@link checkShape}. */
const RecordSchema = z.strictObject({
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  time: z.string().regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/),
  event: z.enum([...APPENDABLE_EVENTS, "checkpoint", "segment_start"]),
  node: ID,
  ...EVENT_MEMBERS,
  payloadDigest: HEX64.optional(),
  sig: z.string().regex(/^[A-Za-z0-9_-]{86}$/).optional(),
  signer: ID.optional(),
  hmacKeyId: z.string().regex(/^[0-9a-f]{32}$/).optional(),
  tornBytes: z.number().int().min(1).max(MAX_LINE_BYTES).optional(),
  tornDigest: HEX64.optional(),
  prev: HEX64,
  hash: HEX64,
});

/** A member an appendable event may carry, as recorded (`payload` is recorded as `payloadDigest`). */
type EventField = keyof typeof EVENT_MEMBERS | "payloadDigest";
/** Which members an appendable event requires and which it may carry, plus the rules that span members. */
interface EventRule {
  readonly required: readonly EventField[];
  readonly optional: readonly EventField[];
  /** A rule across members; returns what is wrong (field names and rules, never values) or null. */
  readonly check?: (r: Partial<Record<EventField, unknown>>) => string | null;
}

const MESSAGE_FIELDS: readonly EventField[] = ["envelopeId", "from", "to", "peer", "kid", "tags", "decision", "reason", "payloadDigest"];

/** Session events name keys by kid, as the sender signed them: 16 lowercase hex, and the range in order. */
function sessionCheck(r: Partial<Record<EventField, unknown>>): string | null {
  if (typeof r.kid === "string" && !HEX_KID.test(r.kid)) return "kid: session events take the sender's 16-hex kid";
  if (typeof r.firstSeq === "number" && typeof r.lastSeq === "number" && r.firstSeq > r.lastSeq) return "firstSeq: must be ≤ lastSeq";
  return null;
}

/** The per-event rules of the module notes ("Events and their fields"); the log and the verifier share them. */
const EVENT_RULES: Readonly<Record<AppendableEventName, EventRule>> = {
  ...(Object.fromEntries(MESSAGE_EVENTS.map((e): [string, EventRule] => [e, { required: [], optional: MESSAGE_FIELDS }])) as Record<
    (typeof MESSAGE_EVENTS)[number],
    EventRule
  >),
  session_opened: { required: ["stream", "from", "to", "kid", "recipientKid"], optional: ["peer"], check: sessionCheck },
  session_checkpoint: {
    required: ["stream", "from", "to", "kid", "recipientKid", "firstSeq", "lastSeq", "prevHead", "head", "signature", "final"],
    optional: ["peer"],
    check: sessionCheck,
  },
  session_gap: { required: ["stream", "from", "firstSeq", "lastSeq"], optional: ["to", "kid", "recipientKid", "peer"], check: sessionCheck },
  session_closed: {
    required: ["stream", "from", "reason", "count"],
    optional: ["to", "kid", "recipientKid", "peer"],
    check: (r) =>
      sessionCheck(r) ??
      ((SESSION_CLOSE_REASONS as readonly unknown[]).includes(r.reason) ? null : `reason: must be one of ${SESSION_CLOSE_REASONS.join(", ")}`),
  },
  refused_connections: {
    required: ["reason", "count"],
    optional: ["source", "windowMs"],
    check: (r) => (typeof r.count === "number" && r.count >= 1 ? null : "count: must be at least 1"),
  },
};

/**
 * What is wrong with the members of an appendable event (a record's, or an event being appended) against its rule:
 * a member it does not take, a missing required one, or a cross-member rule; null when it is right.
 */
function eventRuleViolation(event: AppendableEventName, r: Partial<Record<EventField, unknown>>, present: readonly string[]): string | null {
  const rule = EVENT_RULES[event];
  const extra = present.filter((k) => !(rule.required as readonly string[]).includes(k) && !(rule.optional as readonly string[]).includes(k));
  if (extra.length > 0) return `${extra.slice(0, 5).join(", ")}: not a field of ${event}`;
  const missing = rule.required.filter((k) => r[k] === undefined);
  if (missing.length > 0) return `${missing.slice(0, 5).join(", ")}: required by ${event}`;
  return rule.check?.(r) ?? null;
}

const CHECKPOINT_FIELDS = ["count", "head", "sig", "signer", "kid", "final"] as const;
const SEGMENT_FIELDS = ["reason", "hmacKeyId", "tornBytes", "tornDigest"] as const;
const BASE_FIELDS = ["seq", "time", "event", "node", "prev", "hash"] as const;

/** Per-event member rules; returns false when a record carries members its event does not allow (or lacks one). */
function checkShape(r: AuditRecord): boolean {
  const allowed = new Set<string>(BASE_FIELDS);
  if (r.event === "checkpoint") {
    CHECKPOINT_FIELDS.forEach((f) => allowed.add(f));
    if (CHECKPOINT_FIELDS.some((f) => r[f] === undefined)) return false;
  } else if (r.event === "segment_start") {
    SEGMENT_FIELDS.forEach((f) => allowed.add(f));
    if (r.reason === undefined || !(SEGMENT_REASONS as readonly string[]).includes(r.reason)) return false;
    if (r.hmacKeyId === undefined) return false;
    if ((r.reason === "torn_tail") !== (r.tornBytes !== undefined && r.tornDigest !== undefined)) return false;
  } else {
    const members = Object.keys(r).filter((k) => !(BASE_FIELDS as readonly string[]).includes(k));
    return eventRuleViolation(r.event, r as Partial<Record<EventField, unknown>>, members) === null;
  }
  return Object.keys(r).every((k) => allowed.has(k));
}

const SECRET_DETECTORS = (Object.keys(DETECTORS) as DetectorName[]).filter((d) => DETECTORS[d].kind === "secret");

function invalid(message: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return sealwireError("ERR_INVALID_ARGUMENT", message);
}

/** Free-text members: scanned by the secret detectors and checked against the key registry. */
const TEXT_FIELDS = ["envelopeId", "from", "to", "peer", "kid", "reason", "source"] as const;
/**
 * Fixed-syntax members (hex, base64url): checked against the key registry only. They are random-looking by nature,
 * so pattern detectors would refuse some at random (a signature can contain `ghp_` and 36 letters); a registered
 * key written there in hex or base64url is still caught.
 */
const CODE_FIELDS = ["stream", "recipientKid", "prevHead", "head", "signature"] as const;

/** Validates an appended event; the error names fields and rule codes, never values (zod `reportInput` stays off). */
function parseEvent(ev: unknown): z.infer<typeof AppendSchema> {
  const r = AppendSchema.safeParse(ev);
  if (!r.success) {
    const what = r.error.issues
      .slice(0, 5)
      .map((i) => {
        const keys = i.code === "unrecognized_keys" ? ` (${(i as { keys: string[] }).keys.slice(0, 5).join(", ")})` : "";
        return `${i.path.join(".") || "event"}: ${i.code}${keys}`;
      })
      .join("; ");
    throw invalid(`audit event rejected — metadata fields only, payload as Uint8Array: ${what}`);
  }
  const data = r.data;
  const present = Object.keys(data)
    .filter((k) => k !== "event" && (data as Record<string, unknown>)[k] !== undefined)
    .map((k) => (k === "payload" ? "payloadDigest" : k));
  const members: Partial<Record<EventField, unknown>> = { ...data, ...(data.payload !== undefined ? { payloadDigest: true } : {}) };
  const wrong = eventRuleViolation(data.event, members, present);
  if (wrong !== null) throw invalid(`audit event ${data.event} rejected (see "Events and their fields" in src/audit.ts): ${wrong}`);
  // Never a secret the scanners (or the key registry) recognise, even in a field that should not hold one.
  const strings: [string, string, boolean][] = [];
  for (const k of TEXT_FIELDS) {
    const v = data[k];
    if (v !== undefined) strings.push([k, v, true]);
  }
  data.tags?.forEach((t, i) => strings.push([`tags.${i}`, t, true]));
  for (const k of CODE_FIELDS) {
    const v = data[k];
    if (v !== undefined) strings.push([k, v, false]);
  }
  for (const [k, v, text] of strings) {
    // Nothing a secret detector or the registry recognises is shorter than 8 characters: skip the work for ids.
    if (v.length < 8) continue;
    if ((text && scanContent(v, { detectors: SECRET_DETECTORS }).length > 0) || containsRegisteredSecret(v)) {
      throw invalid(`audit event field ${k} looks like a secret; audit records carry metadata only`);
    }
  }
  return data;
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing and checking lines
// ---------------------------------------------------------------------------------------------------------------

/** The raw bytes of a line read as Latin-1 (one char per byte), for pinning torn fragments byte for byte. */
const latin1Bytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "latin1"));

type LineCheck = { ok: true; record: AuditRecord } | { ok: false; reason: string };

const ASCII_LINE = /^[\x20-\x7e]*$/;

/** Parses one line and checks shape, canonical form and hash (not links or signatures). */
function checkLine(line: string): LineCheck {
  if (line.length > MAX_LINE_BYTES) return { ok: false, reason: "line_too_long" };
  if (!ASCII_LINE.test(line)) return { ok: false, reason: "unparseable_line" };
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    return { ok: false, reason: "unparseable_line" };
  }
  const r = RecordSchema.safeParse(json);
  if (!r.success) return { ok: false, reason: "bad_record" };
  const record = r.data as AuditRecord;
  if (!checkShape(record)) return { ok: false, reason: "bad_record" };
  if (canonicalJson(json) !== line) return { ok: false, reason: "not_canonical" };
  if (auditRecordHash(record) !== record.hash) return { ok: false, reason: "hash_mismatch" };
  return { ok: true, record };
}

function verifyCheckpointSig(r: AuditRecord, key: Uint8Array): boolean {
  try {
    const sig = Buffer.from(r.sig!, "base64url");
    // 86 base64url characters carry 516 bits for 512: the last character has 4 spare bits, so 16 spellings decode
    // to the same signature. Only the canonical one counts; otherwise a forger could re-spell a checkpoint's
    // `sig`, recompute that record's hash (no key needed) and still verify with different bytes (found by fuzzing).
    if (sig.length !== 64 || toBase64url(sig) !== r.sig) return false;
    return defaultProvider.ed25519Verify(
      defaultProvider.ed25519Public(key),
      auditCheckpointMessage(r),
      new Uint8Array(sig),
    );
  } catch {
    return false;
  }
}

/** Streaming chain verifier shared by {@link verifyAuditLog}. */
class ChainVerifier {
  #line = 0;
  #expectSeq = 0;
  #prev = ZERO_HASH;
  #lastFinal = false;
  #pendingBad: { line: number; reason: string; bytes: number; digest: string } | null = null;
  records = 0;
  checkpoints = 0;
  segments = 0;
  unsigned = 0;
  failure: AuditVerifyFail | null = null;

  constructor(private readonly opts: AuditVerifyOptions) {}

  #fail(code: AuditVerifyFail["code"], reason: string, line = this.#line): false {
    this.failure = { ok: false, line, code, reason };
    return false;
  }

  #key(r: AuditRecord): Uint8Array | undefined {
    return this.opts.publicKey ?? this.opts.resolveKey?.(r.signer!, r.kid!);
  }

  /** Feeds one complete line; false once the log has failed. */
  push(line: string): boolean {
    if (this.failure) return false;
    this.#line++;
    const c = checkLine(line);
    if (!c.ok) {
      // One unparseable line is allowed only if the next record is a torn_tail segment start that pins it.
      if (this.#pendingBad) return this.#fail("ERR_AUDIT_TAMPERED", this.#pendingBad.reason, this.#pendingBad.line);
      this.#pendingBad = {
        line: this.#line,
        reason: c.reason,
        bytes: line.length,
        digest: toHex(defaultProvider.hash("sha256", latin1Bytes(line))),
      };
      return true;
    }
    const r = c.record;
    if (this.#pendingBad) {
      const p = this.#pendingBad;
      const pins = r.event === "segment_start" && r.reason === "torn_tail" && r.tornBytes === p.bytes && r.tornDigest === p.digest;
      if (!pins) return this.#fail("ERR_AUDIT_TAMPERED", p.reason, p.line);
    }
    if (r.seq !== this.#expectSeq) return this.#fail("ERR_AUDIT_TAMPERED", "seq_mismatch");
    if (r.prev !== this.#prev) return this.#fail("ERR_AUDIT_TAMPERED", "prev_mismatch");
    if (r.event === "segment_start") {
      const ok =
        r.seq === 0
          ? r.reason === "new_log" || (r.reason === "torn_tail" && this.#pendingBad !== null) // crash in the first write
          : r.reason === "resumed"
            ? this.#lastFinal && !this.#pendingBad
            : r.reason === "open_tail"
              ? !this.#lastFinal && !this.#pendingBad
              : r.reason === "torn_tail"
                ? this.#pendingBad !== null
                : r.reason === "unverified_tail";
      if (!ok) return this.#fail("ERR_AUDIT_TAMPERED", "bad_segment");
      this.segments++;
    } else if (r.seq === 0) {
      return this.#fail("ERR_AUDIT_TAMPERED", "bad_segment");
    }
    if (r.event === "checkpoint") {
      if (r.head !== r.prev || r.count !== r.seq) return this.#fail("ERR_AUDIT_TAMPERED", "bad_checkpoint");
      const key = this.#key(r);
      if (key === undefined) return this.#fail("ERR_AUDIT_UNKNOWN_SIGNER", "unknown_signer");
      if (!verifyCheckpointSig(r, key)) return this.#fail("ERR_AUDIT_TAMPERED", "bad_signature");
      this.checkpoints++;
      this.unsigned = 0;
    } else {
      this.unsigned++;
    }
    this.#pendingBad = null;
    this.#lastFinal = r.event === "checkpoint" && r.final === true;
    this.#prev = r.hash;
    this.#expectSeq++;
    this.records++;
    return true;
  }

  /** Lines fed so far. */
  get lineNo(): number {
    return this.#line;
  }

  /** Ends the input. `fragment`: bytes after the last newline (file mode); `linesMode`: no newline information. */
  finish(fragment: string, linesMode: boolean): AuditVerifyResult {
    if (this.failure) return this.failure;
    const fail = (code: AuditVerifyFail["code"], reason: string, line = this.#line): AuditVerifyFail => {
      this.#fail(code, reason, line);
      return this.failure!;
    };
    if (this.#pendingBad) {
      const p = this.#pendingBad;
      // A file line that ends in "\n" was written whole, so garbage there is an edit; a last array item may be a
      // torn write.
      return linesMode ? fail("ERR_AUDIT_TRUNCATED", "torn_line", p.line) : fail("ERR_AUDIT_TAMPERED", p.reason, p.line);
    }
    if (fragment.length > 0) return fail("ERR_AUDIT_TRUNCATED", "torn_line", this.#line + 1);
    if (this.records === 0) return fail("ERR_AUDIT_TRUNCATED", "empty_log", 0);
    if (!this.#lastFinal && !this.opts.allowOpenTail) return fail("ERR_AUDIT_TRUNCATED", "no_final_checkpoint");
    if (this.opts.minRecords !== undefined && this.records < this.opts.minRecords) {
      return fail("ERR_AUDIT_TRUNCATED", "too_few_records");
    }
    return {
      ok: true,
      records: this.records,
      checkpoints: this.checkpoints,
      segments: this.segments,
      head: this.#prev,
      unsignedTail: this.unsigned,
    };
  }
}

/**
 * Verifies a whole audit log — a file path, or the lines of one — and reports OK or the first bad line.
 *
 * Checks, per line: canonical encoding, schema, record hash, `seq` continuity, `prev` link, segment rules, and each
 * checkpoint's `head`/`count` and signature. At the end: no torn line, and a final checkpoint (unless
 * `allowOpenTail`). Never throws on hostile content; lines longer than {@link MAX_LINE_BYTES} fail as
 * `line_too_long` without being buffered.
 *
 * @throws `ERR_INVALID_ARGUMENT` if neither `publicKey` nor `resolveKey` is given (a caller mistake).
 */
export async function verifyAuditLog(
  source: string | readonly string[],
  options: AuditVerifyOptions,
): Promise<AuditVerifyResult> {
  if (options === null || typeof options !== "object" || (options.publicKey === undefined && options.resolveKey === undefined)) {
    throw invalid("verifyAuditLog: pass options.publicKey or options.resolveKey to check checkpoint signatures");
  }
  if (options.publicKey !== undefined && !(options.publicKey instanceof Uint8Array && options.publicKey.length === 32)) {
    throw invalid("verifyAuditLog: options.publicKey must be a 32-byte Ed25519 public key");
  }
  const v = new ChainVerifier(options);
  if (Array.isArray(source)) {
    for (const line of source as readonly unknown[]) {
      if (!v.push(typeof line === "string" ? line : "\u0000")) break;
    }
    return v.finish("", true);
  }
  if (typeof source !== "string") throw invalid("verifyAuditLog: source must be a path or an array of lines");
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(source, "r");
    const buf = Buffer.alloc(64 * 1024);
    let pending: Buffer[] = [];
    let pendingLen = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      let start = 0;
      for (;;) {
        const nl = buf.indexOf(0x0a, start);
        if (nl < 0 || nl >= bytesRead) break;
        const part = buf.subarray(start, nl);
        const lineBuf = pendingLen > 0 ? Buffer.concat([...pending, part]) : part;
        pending = [];
        pendingLen = 0;
        if (lineBuf.length > MAX_LINE_BYTES) {
          return { ok: false, line: v.lineNo + 1, code: "ERR_AUDIT_TAMPERED", reason: "line_too_long" };
        }
        // latin1 keeps every byte as one char: any non-ASCII byte then fails the ASCII check in checkLine.
        if (!v.push(lineBuf.toString("latin1"))) return v.finish("", false);
        start = nl + 1;
      }
      if (start < bytesRead) {
        pending.push(Buffer.from(buf.subarray(start, bytesRead)));
        pendingLen += bytesRead - start;
        if (pendingLen > MAX_LINE_BYTES) {
          return { ok: false, line: v.lineNo + 1, code: "ERR_AUDIT_TAMPERED", reason: "line_too_long" };
        }
      }
    }
    return v.finish(Buffer.concat(pending).toString("latin1"), false);
  } catch {
    return { ok: false, line: 0, code: "ERR_AUDIT_IO", reason: "io_error" };
  } finally {
    await fh?.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Session mode (issue 8)
// ---------------------------------------------------------------------------------------------------------------

/** Context a `SessionReceiver` event does not carry, for {@link sessionAuditEvent}. */
export interface SessionAuditContext {
  /** The recipient's agent id (this node's agent): recorded as `to` on `session_gap` and `session_closed`. */
  to?: string;
  /** The recipient's kid (16 hex), recorded as `recipientKid` on `session_gap` and `session_closed`. */
  recipientKid?: string;
  /** The transport peer the stream arrived through (a hub), recorded as `peer`. */
  peer?: string;
}

/**
 * The audit event for a {@link SessionEvent} reported by a `SessionReceiver` (its `onEvent`), mapped field for field:
 * `streamId` → `stream`, `senderKid` → `kid`, `uncovered` → `count`, the rest by name. A checkpoint's `digests`
 * are left out: up to `checkpointEvery` × 64 hex characters would not fit a record ({@link MAX_RECORD_BYTES}), and
 * the signature covers the chain head they hash to; an auditor who holds the envelopes recomputes it (see
 * {@link verifySessionCheckpointRecord}).
 *
 * @example
 * ```ts
 * const rx = new SessionReceiver({ identity: bob, trust, onEvent: (e) => void audit.append(sessionAuditEvent(e, { to: bob.id, recipientKid: bob.kid })) });
 * ```
 */
export function sessionAuditEvent(e: SessionEvent, context: SessionAuditContext = {}): AuditEvent {
  const peer = context.peer !== undefined ? { peer: context.peer } : {};
  const local = {
    ...(context.to !== undefined ? { to: context.to } : {}),
    ...(context.recipientKid !== undefined ? { recipientKid: context.recipientKid } : {}),
  };
  switch (e.kind) {
    case "opened":
      return { event: "session_opened", stream: e.streamId, from: e.from, to: e.to, kid: e.senderKid, recipientKid: e.recipientKid, ...peer };
    case "checkpoint":
      return {
        event: "session_checkpoint",
        stream: e.streamId,
        from: e.from,
        to: e.to,
        kid: e.senderKid,
        recipientKid: e.recipientKid,
        firstSeq: e.firstSeq,
        lastSeq: e.lastSeq,
        prevHead: e.prevHead,
        head: e.head,
        signature: e.signature,
        final: e.final,
        ...peer,
      };
    case "gap":
      return { event: "session_gap", stream: e.streamId, from: e.from, firstSeq: e.firstSeq, lastSeq: e.lastSeq, ...local, ...peer };
    case "closed":
      return { event: "session_closed", stream: e.streamId, from: e.from, reason: e.reason, count: e.uncovered, ...local, ...peer };
  }
}

/** A `session_checkpoint` record's members under the names of `SessionCheckpointEvent` (without `digests`). */
export type RecordedSessionCheckpoint = Pick<
  SessionCheckpointEvent,
  "from" | "to" | "senderKid" | "recipientKid" | "streamId" | "firstSeq" | "lastSeq" | "prevHead" | "head" | "signature" | "final"
>;

/**
 * The checkpoint a `session_checkpoint` record holds, named as `verifySessionCheckpoint` (in `src/session.ts`)
 * takes it, so an auditor holding the envelopes' digests can check them against the signed chain head too.
 *
 * @throws `ERR_INVALID_ARGUMENT` if `record` is not a well-formed `session_checkpoint` record.
 */
export function sessionCheckpointOfRecord(record: AuditRecord): RecordedSessionCheckpoint {
  const r = RecordSchema.safeParse(record);
  if (!r.success || r.data.event !== "session_checkpoint" || !checkShape(r.data as AuditRecord)) {
    throw invalid("sessionCheckpointOfRecord: not a well-formed session_checkpoint audit record");
  }
  const d = r.data;
  // checkShape guarantees every required member (EVENT_RULES.session_checkpoint) is present.
  return {
    from: d.from!,
    to: d.to!,
    senderKid: d.kid!,
    recipientKid: d.recipientKid!,
    streamId: d.stream!,
    firstSeq: d.firstSeq!,
    lastSeq: d.lastSeq!,
    prevHead: d.prevHead!,
    head: d.head!,
    signature: d.signature!,
    final: d.final!,
  };
}

/**
 * Checks, from a `session_checkpoint` record alone, that the stream's sender signed it: Ed25519 under
 * `senderSignPublicKey` over `checkpointSignedBytes(stream, kid, recipientKid, firstSeq, lastSeq, prevHead, head,
 * final)` (`src/session.ts`). True only if every one of those members is as the sender signed it. What this does
 * not show: that the envelopes delivered are the ones `head` hashes — for that, recompute it from their digests
 * with `verifySessionCheckpoint(p, sessionCheckpointOfRecord(record), key, digests)`. Look the key up by the
 * record's `from` and `kid` (the sender's key at the time, after a rotation).
 *
 * Never throws on a hostile record (returns false); throws `ERR_INVALID_ARGUMENT` if the key is not 32 bytes.
 */
export function verifySessionCheckpointRecord(
  record: AuditRecord,
  senderSignPublicKey: Uint8Array,
  provider: CryptoProvider = defaultProvider,
): boolean {
  if (!(senderSignPublicKey instanceof Uint8Array) || senderSignPublicKey.length !== 32) {
    throw invalid("verifySessionCheckpointRecord: senderSignPublicKey must be a 32-byte Ed25519 public key");
  }
  let cp: RecordedSessionCheckpoint;
  try {
    cp = sessionCheckpointOfRecord(record);
  } catch {
    return false;
  }
  try {
    const msg = checkpointSignedBytes(
      new Uint8Array(Buffer.from(cp.streamId, "hex")),
      cp.senderKid,
      cp.recipientKid,
      cp.firstSeq,
      cp.lastSeq,
      new Uint8Array(Buffer.from(cp.prevHead, "hex")),
      new Uint8Array(Buffer.from(cp.head, "hex")),
      cp.final,
    );
    // SIGNATURE admits only the canonical spelling, so these are exactly the 64 bytes the record names.
    const sig = new Uint8Array(Buffer.from(cp.signature, "base64url"));
    return provider.ed25519Verify(provider.ed25519Public(senderSignPublicKey), msg, sig);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------------------------------------

/** An in-memory sink; its content survives close, so a test can reopen it or hand its lines to the verifier. */
export interface MemoryAuditSink extends AuditSink {
  /** Everything written, as text. */
  text(): string;
  /** Complete lines (without the newline); a torn last line is not included. */
  lines(): string[];
}

/**
 * An in-memory sink (tests, short-lived crews). `initial` seeds it, as if a file already held that text.
 * @param maxBytes most bytes held; appends beyond fail with `ERR_AUDIT_IO`. @default 64 MiB
 */
export function memorySink(initial = "", maxBytes = 64 * 1024 * 1024): MemoryAuditSink {
  let text = initial;
  let open = false;
  return {
    async open(tailBytes: number) {
      if (open) throw sealwireError("ERR_AUDIT_IO", "this memory sink is already open; close the other AuditLog first");
      open = true;
      const bytes = Buffer.from(text, "latin1");
      return { size: bytes.length, tail: new Uint8Array(bytes.subarray(Math.max(0, bytes.length - tailBytes))) };
    },
    async append(data: Uint8Array) {
      if (!open) throw sealwireError("ERR_AUDIT_IO", "memory sink is closed");
      if (text.length + data.length > maxBytes) throw sealwireError("ERR_AUDIT_IO", "memory sink is full");
      text += Buffer.from(data).toString("latin1");
    },
    async close() {
      open = false;
    },
    text: () => text,
    lines: () => {
      const parts = text.split("\n");
      parts.pop(); // "" after a final newline, or a torn fragment
      return parts;
    },
  };
}

/** When a {@link fileSink} calls fsync. */
export type FsyncPolicy = "always" | "checkpoint" | "never";

/** Options for {@link fileSink}. */
export interface FileSinkOptions {
  /**
   * When to fsync; see "Durability" in the module notes.
   * - `always`: after every append, and the append resolves after its fsync;
   * - `checkpoint`: in the background after each append that ends in a checkpoint (at most one in flight), and
   *   on close; the append resolves once written to the OS;
   * - `never`: only the OS decides.
   * @default "checkpoint"
   */
  fsync?: FsyncPolicy;
  /**
   * Told at once when a background fsync (`fsync: "checkpoint"`) fails. The sink is then dead: every later append,
   * and close, fails with the same `ERR_AUDIT_IO`. Without it, the failure shows at the next append or close.
   */
  onError?: (err: SealwireError<"ERR_AUDIT_IO">) => void;
}

/**
 * With `fsync: "checkpoint"`: how many appended batches ending in a checkpoint may wait for the next fsync while one
 * is in flight before a further one waits for it (see "Durability" in the module notes).
 */
export const MAX_FSYNC_DUE = 4;

/** Paths open for writing in this process: one writer per file, or the chain forks. */
const openPaths = new Set<string>();

function ioError(what: string, cause: unknown): SealwireError<"ERR_AUDIT_IO"> {
  const code = (cause as { code?: unknown } | null)?.code;
  // Only the errno code travels (EACCES, ENOSPC…): OS messages may hold paths, never secrets, but stay terse.
  return sealwireError("ERR_AUDIT_IO", `${what}${typeof code === "string" ? ` (${code})` : ""}; check the path, permissions and disk`);
}

/**
 * A file sink. The file is opened with `O_WRONLY|O_APPEND|O_CREAT|O_NOFOLLOW` and mode 0600: appends only, never
 * truncated, never through a symlink. A file that is group- or world-writable is refused (anyone could append).
 */
export function fileSink(path: string, options: FileSinkOptions = {}): AuditSink {
  if (typeof path !== "string" || path.length === 0) throw invalid("fileSink: path must be a non-empty string");
  const fsync = options.fsync ?? "checkpoint";
  if (fsync !== "always" && fsync !== "checkpoint" && fsync !== "never") {
    throw invalid('fileSink: options.fsync must be "always", "checkpoint" or "never"');
  }
  const onError = options.onError;
  if (onError !== undefined && typeof onError !== "function") throw invalid("fileSink: options.onError must be a function");
  const abs = resolvePath(path);
  let fh: fsp.FileHandle | null = null;
  /** The fsync in flight (`checkpoint` policy); it never rejects: a failure lands in `syncError`. */
  let current: Promise<void> | null = null;
  /** The fsync loop: runs while an fsync is in flight or one is due; null when idle. */
  let running: Promise<void> | null = null;
  /** Batches ending in a checkpoint written since the fsync in flight started: the next fsync covers them. */
  let due = 0;
  /** The first background fsync failure: the sink refuses everything after it (fail closed, never retried). */
  let syncError: SealwireError<"ERR_AUDIT_IO"> | null = null;

  const failSync = (err: unknown): void => {
    syncError ??= ioError("fsync of the audit file failed; records since the last successful fsync may be lost", err);
    try {
      onError?.(syncError);
    } catch {
      // a throwing listener must not turn the failure into an unhandled rejection
    }
  };

  /**
   * One fsync at a time, each covering everything written before it started; checkpoints written meanwhile share
   * the next one. A failed fsync is not retried: after a failure Linux may have dropped the dirty pages and report
   * the next fsync as a success, so a retry would prove nothing.
   */
  const syncLoop = async (h: fsp.FileHandle): Promise<void> => {
    try {
      while (due > 0 && !syncError) {
        due = 0;
        current = h.sync().then(() => {}, failSync);
        await current;
      }
    } finally {
      current = null;
      running = null;
    }
  };

  return {
    async open(tailBytes: number) {
      if (fh || openPaths.has(abs)) throw sealwireError("ERR_AUDIT_IO", "this audit file is already open for writing in this process");
      openPaths.add(abs);
      try {
        const flags = fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | (fsc.O_NOFOLLOW ?? 0);
        fh = await fsp.open(abs, flags, 0o600);
        const st = await fh.stat();
        if (!st.isFile()) throw sealwireError("ERR_AUDIT_IO", "audit path is not a regular file");
        if ((st.mode & 0o022) !== 0) {
          throw sealwireError("ERR_AUDIT_IO", "audit file is writable by group or others; chmod 600 it");
        }
        const n = Math.min(st.size, tailBytes);
        const tail = Buffer.alloc(n);
        if (n > 0) {
          const rh = await fsp.open(abs, fsc.O_RDONLY | (fsc.O_NOFOLLOW ?? 0));
          try {
            let got = 0;
            while (got < n) {
              const { bytesRead } = await rh.read(tail, got, n - got, st.size - n + got);
              if (bytesRead === 0) break;
              got += bytesRead;
            }
          } finally {
            await rh.close();
          }
        }
        return { size: st.size, tail: new Uint8Array(tail) };
      } catch (err) {
        await fh?.close().catch(() => {});
        fh = null;
        openPaths.delete(abs);
        if (SealwireError.is(err)) throw err;
        throw ioError("cannot open the audit file", err);
      }
    },
    async append(data: Uint8Array, checkpoint: boolean) {
      const h = fh;
      if (!h) throw sealwireError("ERR_AUDIT_IO", "audit file is not open");
      if (syncError) throw syncError;
      try {
        let off = 0;
        while (off < data.length) {
          const { bytesWritten } = await h.write(data, off, data.length - off);
          off += bytesWritten;
        }
        if (fsync === "always") await h.sync();
      } catch (err) {
        throw ioError("cannot append to the audit file", err);
      }
      if (fsync === "checkpoint" && checkpoint && !syncError) {
        // The fsync runs in the background (module notes, "Durability"): this batch resolves once written, unless
        // the disk is so far behind that more than MAX_FSYNC_DUE batches wait for the next fsync; then it waits
        // for the one in flight (never more than one), which bounds what is acted on before it is durable.
        due++;
        running ??= syncLoop(h);
        if (due > MAX_FSYNC_DUE && current) await current;
      }
      // An fsync that failed while this batch was written fails it too: nothing resolves after a failure is known.
      if (syncError) throw syncError;
    },
    async close() {
      const h = fh;
      fh = null;
      if (!h) return;
      let failure: unknown = null;
      try {
        while (running) await running;
        if (syncError) throw syncError;
        if (fsync !== "never") await h.sync();
      } catch (err) {
        failure = err;
      }
      // Closed on every path: a failed fsync must not leak the descriptor or keep the path locked.
      try {
        await h.close();
      } catch (err) {
        failure ??= err;
      }
      openPaths.delete(abs);
      if (failure !== null) throw SealwireError.is(failure, "ERR_AUDIT_IO") ? failure : ioError("cannot close the audit file", failure);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// AuditLog
// ---------------------------------------------------------------------------------------------------------------

type TailState =
  | { kind: "empty" }
  | { kind: "clean"; last: AuditRecord }
  | { kind: "open"; last: AuditRecord }
  | { kind: "torn"; last: AuditRecord | null; fragment: string }
  | { kind: "bad"; code: ErrorCode; last: { seq: number; hash: string } | null };

/** Reads what an existing sink ends with (bounded: the last {@link TAIL_BYTES}) and classifies it. */
function analyseTail(size: number, tailBytes: Uint8Array, key: (r: AuditRecord) => Uint8Array | undefined): TailState {
  if (size === 0) return { kind: "empty" };
  let text = Buffer.from(tailBytes).toString("latin1");
  if (size > tailBytes.length) {
    const nl = text.indexOf("\n");
    text = nl < 0 ? "" : text.slice(nl + 1); // the first line is cut by the read window
  }
  const parts = text.split("\n");
  const fragment = parts.pop()!;
  const checked = parts.map(checkLine);
  // Best-effort link for a new segment even when the tail is bad: the last line whose own hash verifies.
  let lastGood: AuditRecord | null = null;
  for (const c of checked) if (c.ok) lastGood = c.record;
  const bad = (code: ErrorCode): TailState => ({ kind: "bad", code, last: lastGood });
  // Every complete line in the window must verify and link to the one before it.
  for (let i = 0; i < checked.length; i++) {
    const c = checked[i]!;
    if (!c.ok) return bad("ERR_AUDIT_TAMPERED");
    const p = checked[i - 1];
    if (p && p.ok && (c.record.prev !== p.record.hash || c.record.seq !== p.record.seq + 1)) return bad("ERR_AUDIT_TAMPERED");
  }
  let last = lastGood;
  if (fragment !== "") {
    // A complete record that lost only its newline is a record; anything else is a torn write.
    const f = checkLine(fragment);
    if (f.ok && (last === null ? f.record.seq === 0 : f.record.prev === last.hash && f.record.seq === last.seq + 1)) {
      last = f.record;
    } else {
      if (last === null && size > fragment.length) return bad("ERR_AUDIT_TAMPERED");
      return { kind: "torn", last, fragment };
    }
  }
  if (last === null) return bad("ERR_AUDIT_TAMPERED");
  if (last.event === "checkpoint" && last.final === true) {
    const k = key(last);
    if (k === undefined) return bad("ERR_AUDIT_UNKNOWN_SIGNER");
    if (!verifyCheckpointSig(last, k)) return bad("ERR_AUDIT_TAMPERED");
    return { kind: "clean", last };
  }
  return { kind: "open", last };
}

const INSPECT = Symbol.for("nodejs.util.inspect.custom");

/** Most records written by one sink append (group commit). */
const MAX_BATCH_RECORDS = 512;

/** A queued unit of work for the single writer. */
type JobSpec = { kind: "event"; name: AuditEventName; fields: Record<string, unknown> } | { kind: "checkpoint"; final: boolean };
type Job = JobSpec & { resolve: (r: AuditRecord) => void; reject: (e: unknown) => void };

/**
 * An append-only, hash-chained audit log with signed checkpoints. Appends are serialized: records get `seq` in call
 * order, whatever the concurrency. After an I/O failure the log refuses every further append (`ERR_AUDIT_IO`):
 * the chain state on disk is unknown, and a silent gap is what an audit trail must never have.
 */
export class AuditLog {
  readonly #sink: AuditSink;
  readonly #signer: AuditSigner;
  /** Copied at open: a signer object whose key field changes later cannot redirect verification. */
  readonly #signerPub: Uint8Array;
  readonly #node: string;
  readonly #every: number;
  readonly #maxPending: number;
  readonly #now: () => Date;
  #hmacKey: Uint8Array;
  readonly #hmacKeyId: string;
  #seq = 0;
  #head = ZERO_HASH;
  #since = 0;
  #jobs: Job[] = [];
  #writer: Promise<void> | null = null;
  #closing = false;
  #closed: Promise<void> | null = null;
  #failed = false;

  private constructor(
    sink: AuditSink,
    o: Required<Pick<AuditLogOptions, "signer" | "checkpointEvery" | "node" | "maxPending" | "now">>,
    hmacKey: Uint8Array,
    signerPub: Uint8Array,
  ) {
    this.#signerPub = signerPub;
    this.#sink = sink;
    this.#signer = o.signer;
    this.#node = o.node;
    this.#every = o.checkpointEvery;
    this.#maxPending = o.maxPending;
    this.#now = o.now;
    this.#hmacKey = hmacKey;
    this.#hmacKeyId = hmacKeyIdOf(hmacKey);
  }

  /**
   * Opens a log on `sink`. An empty sink gets a `new_log` segment. An existing one must end with a valid final
   * checkpoint (then a `resumed` segment follows); otherwise open refuses — `ERR_AUDIT_TRUNCATED` (no final
   * checkpoint, torn line), `ERR_AUDIT_TAMPERED` or `ERR_AUDIT_UNKNOWN_SIGNER` — unless `newSegment: true`, which
   * appends a segment start that records what was found, without rewriting anything.
   *
   * @throws `ERR_INVALID_ARGUMENT` for bad options; the codes above; `ERR_AUDIT_IO` when the sink fails.
   */
  static async open(sink: AuditSink, options: AuditLogOptions): Promise<AuditLog> {
    if (sink === null || typeof sink !== "object" || typeof sink.open !== "function" || typeof sink.append !== "function") {
      throw invalid("AuditLog.open: sink must implement AuditSink (open, append, close)");
    }
    const o = options ?? ({} as AuditLogOptions);
    const signer = o.signer;
    const signerPub = signer !== null && typeof signer === "object" ? signerPublicKey(signer) : undefined;
    if (
      signer === null ||
      typeof signer !== "object" ||
      typeof signer.sign !== "function" ||
      !(signerPub instanceof Uint8Array) ||
      signerPub.length !== 32 ||
      !ID.safeParse(signer.id).success ||
      !KID.safeParse(signer.kid).success
    ) {
      throw invalid("AuditLog.open: options.signer must be { id, kid, publicKey (or signPublicKey): 32 bytes, sign(msg) }");
    }
    const every = o.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY;
    if (!Number.isSafeInteger(every) || every < 1 || every > 1_000_000) {
      throw invalid("AuditLog.open: options.checkpointEvery must be an integer from 1 to 1000000");
    }
    const maxPending = o.maxPending ?? DEFAULT_MAX_PENDING;
    if (!Number.isSafeInteger(maxPending) || maxPending < 1) throw invalid("AuditLog.open: options.maxPending must be a positive integer");
    const node = o.node ?? signer.id;
    if (!ID.safeParse(node).success) throw invalid("AuditLog.open: options.node must be 1–256 printable characters");
    if (o.hmacKey !== undefined && !(o.hmacKey instanceof Uint8Array && o.hmacKey.length >= 32 && o.hmacKey.length <= 64)) {
      throw invalid("AuditLog.open: options.hmacKey must be a Uint8Array of 32–64 bytes");
    }
    if (o.resolveKey !== undefined && typeof o.resolveKey !== "function") throw invalid("AuditLog.open: options.resolveKey must be a function");
    const now = o.now ?? (() => new Date());
    const hmacKey = o.hmacKey ? Uint8Array.from(o.hmacKey) : defaultProvider.randomBytes(32);

    let opened: { size: number; tail: Uint8Array };
    try {
      opened = await sink.open(TAIL_BYTES);
    } catch (err) {
      wipe(hmacKey);
      if (SealwireError.is(err)) throw err;
      throw ioError("cannot open the audit sink", err);
    }
    const log = new AuditLog(sink, { signer, checkpointEvery: every, node, maxPending, now }, hmacKey, Uint8Array.from(signerPub));
    try {
      const keyOf = (r: AuditRecord): Uint8Array | undefined => {
        const resolved = o.resolveKey?.(r.signer!, r.kid!);
        if (resolved !== undefined) return resolved;
        return r.signer === signer.id && r.kid === signer.kid ? log.#signerPub : undefined;
      };
      const state = analyseTail(opened.size, opened.tail, keyOf);
      await log.#start(state, o.newSegment === true, opened);
    } catch (err) {
      log.#failed = true;
      wipe(log.#hmacKey);
      await sink.close().catch(() => {});
      throw err;
    }
    return log;
  }

  async #start(state: TailState, newSegment: boolean, opened: { size: number; tail: Uint8Array }): Promise<void> {
    if (state.kind === "open" || state.kind === "torn" || state.kind === "bad") {
      if (!newSegment) {
        const code = state.kind === "bad" ? state.code : "ERR_AUDIT_TRUNCATED";
        const what =
          state.kind === "open"
            ? "ends without its final signed checkpoint (a crash, or truncation)"
            : state.kind === "torn"
              ? "ends with a torn line"
              : "does not verify";
        throw sealwireError(
          code as "ERR_AUDIT_TRUNCATED",
          `the existing audit log ${what}; run "sealwire audit verify", then reopen with newSegment: true to start a new segment`,
        );
      }
    }
    const last = state.kind === "empty" ? null : state.last;
    const reason: SegmentReason = { empty: "new_log", clean: "resumed", open: "open_tail", torn: "torn_tail", bad: "unverified_tail" }[
      state.kind
    ] as SegmentReason;
    const fields: Record<string, unknown> = { reason, hmacKeyId: this.#hmacKeyId };
    if (state.kind === "torn") {
      fields["tornBytes"] = state.fragment.length;
      fields["tornDigest"] = toHex(defaultProvider.hash("sha256", latin1Bytes(state.fragment)));
    }
    this.#seq = last ? last.seq + 1 : 0;
    this.#head = last ? last.hash : ZERO_HASH;
    const endsWithNewline = opened.size === 0 || opened.tail[opened.tail.length - 1] === 0x0a;
    // A torn fragment (or a record missing its newline) gets its line ended first, so nothing is glued to it.
    await this.#write([this.#build("segment_start", fields)], false, endsWithNewline ? "" : "\n");
  }

  #build(event: AuditEventName, fields: Record<string, unknown>): AuditRecord {
    return this.#seal(this.#body(event, fields));
  }

  /** The next record without its hash (nothing advances until {@link AuditLog.#seal}). */
  #body(event: AuditEventName, fields: Record<string, unknown>): Record<string, unknown> {
    const t = this.#now();
    if (!(t instanceof Date) || Number.isNaN(t.getTime())) throw invalid("AuditLog: the clock returned an invalid Date");
    const body: Record<string, unknown> = { seq: this.#seq, time: t.toISOString(), event, node: this.#node, ...fields, prev: this.#head };
    for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
    return body;
  }

  /** Adds the hash and advances the chain. */
  #seal(body: Record<string, unknown>): AuditRecord {
    const hash = auditRecordHash(body as unknown as AuditRecord);
    const record = Object.freeze({ ...body, hash }) as unknown as AuditRecord;
    this.#seq++;
    this.#head = hash;
    return record;
  }

  async #checkpointRecord(final: boolean): Promise<AuditRecord> {
    const head = this.#head;
    const count = this.#seq;
    // The writer is serialized, so nothing advances the chain while the signer works.
    const body = this.#body("checkpoint", { count, head, signer: this.#signer.id, kid: this.#signer.kid, final });
    const msg = auditCheckpointMessage(body as unknown as AuditRecord);
    let sig: Uint8Array;
    try {
      sig = await this.#signer.sign(msg);
    } catch (err) {
      throw sealwireError("ERR_CRYPTO_PROVIDER", "the audit signer failed to sign a checkpoint", { cause: err });
    }
    // Verify our own signature: a signer with the wrong key would make every checkpoint unverifiable later.
    if (!(sig instanceof Uint8Array) || sig.length !== 64 ||
      !defaultProvider.ed25519Verify(defaultProvider.ed25519Public(this.#signerPub), msg, sig)) {
      throw sealwireError("ERR_CRYPTO_PROVIDER", "the audit signer returned a signature that does not verify under its publicKey");
    }
    this.#since = 0;
    return this.#seal({ ...body, sig: toBase64url(sig) });
  }

  /** Writes records as one append; on failure the log is dead (fail closed). */
  async #write(records: AuditRecord[], checkpoint: boolean, prefix = ""): Promise<void> {
    const text = prefix + records.map((r) => `${canonicalJson(r)}\n`).join("");
    try {
      await this.#sink.append(utf8(text), checkpoint);
    } catch (err) {
      this.#failed = true;
      if (SealwireError.is(err, "ERR_AUDIT_IO")) throw err;
      throw ioError("cannot append to the audit sink", err);
    }
  }

  /**
   * Queues a job for the single writer. Jobs run in call order; the writer takes every job waiting when it wakes
   * (up to {@link MAX_BATCH_RECORDS}) and writes them with one sink append — group commit, so a flood of
   * concurrent appends costs one write (and with `fsync: "always"` one fsync) per batch, not per record.
   */
  #enqueue(job: JobSpec): Promise<AuditRecord> {
    if (this.#jobs.length >= this.#maxPending) {
      return Promise.reject(sealwireError("ERR_QUEUE_FULL", "too many audit appends waiting; slow down or raise maxPending"));
    }
    return new Promise<AuditRecord>((resolve, reject) => {
      this.#jobs.push({ ...job, resolve, reject } as Job);
      this.#writer ??= this.#drain();
    });
  }

  async #drain(): Promise<void> {
    // Yield once so that appends issued in the same tick join the first batch.
    await Promise.resolve();
    while (this.#jobs.length > 0) await this.#runBatch(this.#jobs.splice(0, MAX_BATCH_RECORDS));
    this.#writer = null;
  }

  async #runBatch(batch: Job[]): Promise<void> {
    if (this.#failed) {
      const err = sealwireError("ERR_AUDIT_IO", "the audit log failed earlier and refuses appends; reopen it");
      for (const j of batch) j.reject(err);
      return;
    }
    const saved = { seq: this.#seq, head: this.#head, since: this.#since };
    const records: AuditRecord[] = [];
    const results: AuditRecord[] = [];
    let checkpoint = false;
    try {
      for (const j of batch) {
        if (j.kind === "event") {
          const rec = this.#build(j.name, j.fields);
          records.push(rec);
          results.push(rec);
          if (++this.#since >= this.#every) {
            records.push(await this.#checkpointRecord(false));
            checkpoint = true;
          }
        } else {
          const rec = await this.#checkpointRecord(j.final);
          records.push(rec);
          results.push(rec);
          checkpoint = true;
        }
      }
    } catch (err) {
      // A checkpoint could not be signed: nothing of this batch was written, so the chain stays where the sink is
      // and the whole batch fails (its records would otherwise sit past an unsigned gap).
      this.#seq = saved.seq;
      this.#head = saved.head;
      this.#since = saved.since;
      for (const j of batch) j.reject(err);
      return;
    }
    try {
      await this.#write(records, checkpoint);
    } catch (err) {
      for (const j of batch) j.reject(err);
      return;
    }
    batch.forEach((j, i) => j.resolve(results[i]!));
  }

  /**
   * Appends one event (metadata only; `payload` becomes `payloadDigest`) and resolves once it is written. A
   * checkpoint follows every `checkpointEvery` records, in the same write.
   *
   * @throws `ERR_INVALID_ARGUMENT` (unknown field, bad value, something that looks like a secret), `ERR_CLOSED`,
   *   `ERR_QUEUE_FULL`, `ERR_AUDIT_IO`, `ERR_CRYPTO_PROVIDER` (signer failure).
   */
  append(event: AuditEvent): Promise<AuditRecord> {
    if (this.#closing) return Promise.reject(sealwireError("ERR_CLOSED", "the audit log is closed; open it again to append"));
    let data: z.infer<typeof AppendSchema>;
    try {
      data = parseEvent(event);
    } catch (err) {
      return Promise.reject(err);
    }
    const { payload, event: name, ...meta } = data;
    const fields: Record<string, unknown> = { ...meta };
    if (meta.tags !== undefined) fields["tags"] = Object.freeze([...meta.tags]);
    // The payload is HMACed here, before queueing, and never held by the log.
    if (payload !== undefined) fields["payloadDigest"] = auditPayloadDigest(this.#hmacKey, payload);
    return this.#enqueue({ kind: "event", name, fields });
  }

  /** Appends a (non-final) signed checkpoint now. */
  checkpoint(): Promise<AuditRecord> {
    if (this.#closing) return Promise.reject(sealwireError("ERR_CLOSED", "the audit log is closed"));
    return this.#enqueue({ kind: "checkpoint", final: false });
  }

  /**
   * Writes the final signed checkpoint, closes the sink and wipes the HMAC key. Idempotent. Appends already
   * accepted are written first; later ones fail with `ERR_CLOSED`. After an earlier I/O failure it only closes
   * the sink (the log then ends without a final checkpoint, which the verifier reports).
   */
  close(): Promise<void> {
    if (this.#closed) return this.#closed;
    this.#closing = true;
    const final = this.#failed ? null : this.#enqueue({ kind: "checkpoint", final: true });
    const done = (async () => {
      try {
        await final;
      } finally {
        await this.#writer;
        wipe(this.#hmacKey);
        await this.#sink.close();
      }
    })();
    this.#closed = done;
    return done;
  }

  /** HMAC of `payload` under this log's key, to find the records about a payload you hold. */
  payloadDigest(payload: Uint8Array): string {
    if (this.#closed) throw sealwireError("ERR_CLOSED", "the audit log is closed and its HMAC key wiped");
    if (!(payload instanceof Uint8Array)) throw invalid("payloadDigest: payload must be a Uint8Array");
    return auditPayloadDigest(this.#hmacKey, payload);
  }

  /** A copy of the payload HMAC key, to store in the keystore (see the module notes). Wipe your copy after use. */
  exportHmacKey(): Uint8Array {
    if (this.#closed) throw sealwireError("ERR_CLOSED", "the audit log is closed and its HMAC key wiped");
    return Uint8Array.from(this.#hmacKey);
  }

  /** Keyed fingerprint of the HMAC key (as in `segment_start.hmacKeyId`). */
  get hmacKeyId(): string {
    return this.#hmacKeyId;
  }
  /** Hash of the last record written (or about to be, for queued appends). */
  get head(): string {
    return this.#head;
  }
  /** Number of records in the log so far (= the next `seq`). */
  get count(): number {
    return this.#seq;
  }

  toJSON(): string {
    return "<AuditLog>";
  }
  [INSPECT](): string {
    return `AuditLog { node: ${JSON.stringify(this.#node)}, count: ${this.#seq} }`;
  }
}
