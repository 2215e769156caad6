/**
 * Session mode: end-to-end streams of envelopes from one sender to one recipient, at the cost of one AEAD pass per
 * message instead of an HPKE encapsulation and an Ed25519 signature.
 *
 * ## How a stream works
 * - **Open (seq 0).** The first envelope of a stream is an ordinary signed envelope v1 (`[1, header, ct, sig]`,
 *   see `src/envelope.ts`): HPKE auth mode to the recipient, Ed25519 over the exact bytes. Its id is the stream id
 *   (16 random bytes). Its plaintext is `0x10 ‖ 0x01 ‖ payload`: the `0x10` kind byte (never produced by
 *   `encodePayload`, which writes `0x00`/`0x01`) marks it as opening a stream, `0x01` is the session version.
 *   Both ends keep the HPKE context of that envelope (RFC 9180 §5.2).
 * - **Continuation (seq ≥ 1).** `[2, header: bin, ct: bin]`. `header` is a MessagePack map (schema
 *   {@link sessionHeaderSchema}): `{v: 2, sid, from, to, seq, ts, ttl, type, tags: {pii, cls?, anon}, re?, ck?,
 *   fin?}` — the stream id, the sequence number and the per-message fields, written canonically in that order (see
 *   {@link encodeSessionHeader}). `ct` is `Seal(aad = header, pt = payload)` with the stream's HPKE context at
 *   sequence number `seq`: one key, nonce = base_nonce XOR seq (RFC 9180 §5.2). The header is authenticated by the
 *   AEAD alone, so per-message policy tags stay authenticated without a signature.
 * - **Envelope ids.** `id(sid, seq)` = the 16-byte stream id with its last 8 bytes XORed with `u64be(seq)`, in hex.
 *   So the opening envelope's id is the stream id itself, ids are distinct within a stream (XOR with distinct
 *   values) and, because stream ids are random, across streams; `replyTo` works as for signed envelopes.
 * - **Replay.** A sliding window per stream (RFC 4303 §3.4.3, RFC 6479): the highest accepted seq and a bitmap of
 *   the `replayWindow` (default 1024) seqs below it. A seq inside the window is accepted once, in any order; a seq
 *   older than the window is refused (ERR_REPLAY: it may be a replay and can no longer be told apart). The window
 *   moves only after the AEAD accepted the envelope, so forged envelopes cannot push it.
 * - **Non-repudiation: signed checkpoints.** The AEAD key is shared, so the recipient could forge continuations.
 *   The sender therefore signs a hash chain of what it sent, every `checkpointEvery` envelopes or
 *   `checkpointIntervalMs` (and when the stream ends):
 *   - `d_s = SHA-256(bin(header) ‖ bin(ct))`, the canonical MessagePack encoding of the exact header and
 *     ciphertext bytes of envelope `s` — for a canonical continuation frame, the frame minus its 2-byte prefix
 *     (one hash call); for seq 0, the v1 header and ciphertext (the signature is not included). The outer framing
 *     is not what is hashed, so a relay re-framing an envelope cannot break the chain.
 *   - `c_init = SHA-256("sealwire/v1/session-chain:" ‖ sid)`;
 *     `c = SHA-256("sealwire/v1/session-chain:" ‖ sid ‖ u64be(first) ‖ u64be(last) ‖ prev ‖ d_first ‖ … ‖ d_last)`
 *     where `prev` is the head of the previous checkpoint (or `c_init`). One hash per checkpoint, chained.
 *   - The checkpoint travels in the header (field `ck`, so it is authenticated by the AEAD too) of envelope
 *     `last + 1`: `ck = u64be(first) ‖ prev (32) ‖ sig (64)`, with `sig` = Ed25519 by the sender over
 *     `"sealwire/v1/session-checkpoint:" ‖ sid ‖ skid ‖ rkid ‖ u64be(first) ‖ u64be(last) ‖ prev ‖ c ‖ u8(final)`
 *     (kids as their 16 ASCII hex characters). It covers `[first, last]`; the envelope carrying it is covered by
 *     the next one. `fin: true` marks the final checkpoint: no envelope follows it on that stream.
 *   - The recipient, which may see envelopes out of order, keeps `d_s` of every accepted envelope not yet covered
 *     (a ring of at most `maxUncheckpointed` × 32 bytes per stream), holds checkpoints whose interval is not yet
 *     complete (at most {@link MAX_PENDING_CHECKPOINTS}), verifies them in order, and reports each
 *     ({@link SessionEvent} `checkpoint`, with the digests it covers) for the audit trail. A checkpoint whose
 *     signature, chain link (`prev` must be the head it verified last) or digests do not match is refused
 *     (ERR_CHECKPOINT) and the stream is closed; so is a stream with no verified checkpoint within
 *     `maxUncheckpointed` sequence numbers (a sender that does not checkpoint, or a burst of loss longer than
 *     about `maxUncheckpointed - replayWindow - checkpointEvery` envelopes: the sender then re-opens). An interval that can never be completed (an envelope in it, or the checkpoint before
 *     it, fell out of the replay window unseen) is reported as a `gap`, and the chain resumes from the next
 *     checkpoint's `prev`. Plaintext is released before the checkpoint covering it arrives: non-repudiation
 *     lags by at most `checkpointEvery` envelopes or `checkpointIntervalMs`.
 * - **Stream limits.** The sender re-opens with a fresh encapsulation after `maxMessages` envelopes or
 *   `maxAgeMs` (ending the old stream with a final checkpoint); the recipient enforces its own limits and forgets
 *   streams beyond them (LRU, `maxStreams`, `maxStreamsPerSender`). A continuation for a stream it does not hold
 *   is refused with ERR_UNKNOWN_STREAM: the sender calls {@link SessionSender.reset} and its next envelope
 *   re-opens.
 *
 * ## Checks, in order
 * A continuation is checked, each failure with its own code: size (ERR_ENVELOPE_TOO_LARGE) → decode (ERR_DECODE)
 * → schema (ERR_SCHEMA) → known, unrevoked sender, looked up in the trust store on EVERY envelope
 * (ERR_UNKNOWN_PEER / ERR_REVOKED_PEER) → addressed to me (ERR_WRONG_RECIPIENT) → time window (ERR_EXPIRED /
 * ERR_FROM_FUTURE) → a stream we hold for that sender, within its limits (ERR_UNKNOWN_STREAM), whose opening key
 * is still trusted (ERR_KEY_RETIRED once a rotation's overlap has passed) → replay
 * window (ERR_REPLAY) → [policy, header stage] → decrypt with `openAt(seq)` (ERR_DECRYPT) → checkpoint
 * (ERR_CHECKPOINT). Signed envelopes (v1, stream openers or not) go through {@link EnvelopeOpener} unchanged.
 * Plaintext is released only after every check passed.
 *
 * `close()` on either side wipes the HPKE contexts (key, base nonce, exporter secret); so do eviction, expiry
 * and revocation.
 *
 * @module
 * @example
 * ```ts
 * const tx = new SessionSender({ identity: alice, trust: aliceTrust, to: "bob" });
 * const rx = new SessionReceiver({ identity: bob, trust: bobTrust, onEvent: (e) => audit(e) });
 * for (const data of tokens) {
 *   const { bytes, preceding } = tx.seal(encodePayload(data), { tags: { pii: [] } });
 *   for (const f of [...preceding, bytes]) {
 *     const m = rx.open(f);
 *     if (!m.control) deliver(decodePayload(m.plaintext).data);
 *   }
 * }
 * const fin = tx.close(); if (fin) rx.open(fin);
 * ```
 */
import { z } from "zod";
import { concatBytes, equalBytes, toHex, utf8 } from "./_bytes.js";
import type { CryptoProvider } from "./_crypto.js";
import { decodeStrict } from "./codec.js";
import {
  DEFAULT_CLOCK_SKEW_MS,
  DEFAULT_TTL_MS,
  ENVELOPE_VERSION,
  EnvelopeOpener,
  HPKE_INFO,
  sealWire,
  MAX_ENVELOPE_BYTES,
  MAX_TTL_MS,
  type EnvelopeHeader,
  type OpenerOptions,
  type TagsInit,
  type Tags,
  type VerifiedEnvelope,
  type WireHeader,
} from "./envelope.js";
import { sealwireError, SealwireError } from "./errors.js";
import { setupAuthR, type HpkeContext } from "./hpke.js";
import { AGENT_ID_RE, type Identity } from "./identity.js";
import { PII_TAG_RE, safeId, type TrustEntry, type TrustStore } from "./trust.js";

// ---------------------------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------------------------

/** Wire version of continuation envelopes (`[2, header, ct]`). */
export const SESSION_VERSION = 2;
/** First plaintext byte of a stream-opening signed envelope (beside envelope.ts's 0x00 plain / 0x01 attested). */
export const SESSION_OPEN_KIND = 0x10;
/** Session protocol version, the second plaintext byte of a stream-opening envelope. */
export const SESSION_OPEN_VERSION = 0x01;
/** Largest sequence number (so every seq is a MessagePack uint32 and far below RFC 9180's 2^96 - 1). */
export const MAX_STREAM_SEQ = 0xffff_ffff;
/** Default: the sender re-opens after this many envelopes on one stream; the recipient refuses seq beyond it. */
export const DEFAULT_STREAM_MAX_MESSAGES = 1 << 20;
/** Default: the sender re-opens a stream this old. */
export const DEFAULT_STREAM_MAX_AGE_MS = 10 * 60_000;
/** Default recipient grace beyond the sender's age limit (the last envelopes and the final checkpoint arrive late). */
export const STREAM_AGE_GRACE_MS = 5 * 60_000;
/** Default: a checkpoint after this many envelopes. */
export const DEFAULT_CHECKPOINT_EVERY = 256;
/** Default: a checkpoint at the first envelope sealed this long after the previous one (or on {@link SessionSender.tick}). */
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 1000;
/** Default replay window, in sequence numbers (a multiple of 32). */
export const DEFAULT_REPLAY_WINDOW = 1024;
/** Default number of streams a recipient holds (least recently used evicted first). */
export const DEFAULT_MAX_STREAMS = 1024;
/** Default number of streams a recipient holds per sender. */
export const DEFAULT_MAX_STREAMS_PER_SENDER = 16;
/** Default: most envelopes a recipient holds uncovered by a verified checkpoint, per stream (32 bytes each). */
export const DEFAULT_MAX_UNCHECKPOINTED = 2048;
/**
 * Most checkpoints a recipient holds waiting for missing envelopes, per stream (a checkpoint every 16 envelopes
 * tolerates reordering across a whole 1024-seq window; the default is every 256).
 */
export const MAX_PENDING_CHECKPOINTS = 64;
/** Size of the `ck` header field: u64be(first) ‖ prev head (32) ‖ Ed25519 signature (64). */
export const CHECKPOINT_BYTES = 8 + 32 + 64;
/** Message type of a checkpoint-only control envelope (empty payload). */
export const CHECKPOINT_TYPE = "sw.ckpt";
/** Message type of the control envelope that ends a stream (empty payload, final checkpoint). */
export const CLOSE_TYPE = "sw.close";
/**
 * Message type of a control opening envelope (signed, empty payload): with {@link SessionSenderOptions.openWithControl}
 * every stream is opened by one, so a recipient that refuses a message (by policy) still holds the stream.
 */
export const OPEN_TYPE = "sw.open";
/** Largest continuation header, in bytes (as for v1 headers). */
const MAX_HEADER_BYTES = 4096;

const CHAIN_DOMAIN = utf8("sealwire/v1/session-chain:");
const CKPT_DOMAIN = utf8("sealwire/v1/session-checkpoint:");
const TYPE_RE = /^[a-z][a-z0-9._-]{0,31}$/;
const CLS_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const ID_RE = /^[0-9a-f]{32}$/;
const EMPTY = new Uint8Array(0);
const NO_FRAMES: readonly Uint8Array[] = Object.freeze([]);
const NO_PII: readonly string[] = Object.freeze([]);

// ---------------------------------------------------------------------------------------------------------------
// Header schema (the reference) and its types
// ---------------------------------------------------------------------------------------------------------------

const bytesOf = (n: number) =>
  z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === n, { message: `expected ${n} bytes` });

/**
 * Strict schema of a continuation header, as decoded by `decodeStrict` (zod `strictObject`: unknown fields are
 * refused). This is the reference: the receiver's fast path ({@link decodeSessionHeaderFast}) only accepts bytes
 * this schema accepts, with an equal result (property-tested), and defers everything else to it.
 */
export const sessionHeaderSchema = z.strictObject({
  v: z.literal(SESSION_VERSION),
  sid: bytesOf(16),
  seq: z.number().int().min(1).max(MAX_STREAM_SEQ),
  from: z.string().regex(AGENT_ID_RE),
  to: z.string().regex(AGENT_ID_RE),
  ts: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  ttl: z.number().int().min(1).max(MAX_TTL_MS),
  type: z.string().regex(TYPE_RE),
  tags: z.strictObject({
    pii: z.array(z.string().regex(PII_TAG_RE)).max(32),
    cls: z.string().regex(CLS_RE).optional(),
    anon: z.boolean(),
  }),
  re: bytesOf(16).optional(),
  ck: bytesOf(CHECKPOINT_BYTES).optional(),
  fin: z.literal(true).optional(),
});

/** A continuation header as decoded. */
export type SessionWireHeader = z.infer<typeof sessionHeaderSchema>;

/** Cross-field rules, applied after either parse path: a checkpoint covers a non-empty range before its carrier. */
function headerRulesHold(h: SessionWireHeader): boolean {
  if (h.fin === true && h.ck === undefined) return false;
  if (h.ck !== undefined && u64At(h.ck, 0) >= h.seq) return false;
  return true;
}

/** The authenticated header of a stream envelope, in API form: an {@link EnvelopeHeader} plus its place in the stream. */
export interface SessionHeader extends EnvelopeHeader {
  /** Stream id, 32 hex characters (= the id of the stream's opening envelope). */
  readonly streamId: string;
  /** Sequence number in the stream; 0 is the signed opening envelope. */
  readonly seq: number;
}

// ---------------------------------------------------------------------------------------------------------------
// Byte helpers
// ---------------------------------------------------------------------------------------------------------------

const TWO32 = 0x1_0000_0000;

function u64At(b: Uint8Array, at: number): number {
  const hi = ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
  const lo = ((b[at + 4]! << 24) | (b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!) >>> 0;
  return hi * TWO32 + lo;
}
function putU64(b: Uint8Array, at: number, v: number): void {
  const hi = Math.floor(v / TWO32);
  const lo = v >>> 0;
  b[at] = hi >>> 24;
  b[at + 1] = (hi >>> 16) & 0xff;
  b[at + 2] = (hi >>> 8) & 0xff;
  b[at + 3] = hi & 0xff;
  b[at + 4] = lo >>> 24;
  b[at + 5] = (lo >>> 16) & 0xff;
  b[at + 6] = (lo >>> 8) & 0xff;
  b[at + 7] = lo & 0xff;
}
function u64(v: number): Uint8Array {
  const b = new Uint8Array(8);
  putU64(b, 0, v);
  return b;
}
const HEX_BYTE = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));
function hex8(x: number): string {
  return HEX_BYTE[x >>> 24]! + HEX_BYTE[(x >>> 16) & 0xff]! + HEX_BYTE[(x >>> 8) & 0xff]! + HEX_BYTE[x & 0xff]!;
}

/** The envelope id of `seq` in stream `sid`: the stream id with its last 8 bytes XORed with u64be(seq), as hex. */
export function sessionEnvelopeId(streamId: string, seq: number): string {
  if (!ID_RE.test(streamId)) throw sealwireError("ERR_INVALID_ARGUMENT", "streamId must be 32 lower-case hex characters");
  if (!Number.isSafeInteger(seq) || seq < 0) throw sealwireError("ERR_INVALID_ARGUMENT", "seq must be a non-negative integer");
  return idOf(streamId, parseInt(streamId.slice(16, 24), 16), parseInt(streamId.slice(24, 32), 16), seq);
}
function idOf(sidHex: string, sidHi: number, sidLo: number, seq: number): string {
  if (seq === 0) return sidHex;
  return sidHex.slice(0, 16) + hex8(sidHi ^ Math.floor(seq / TWO32)) + hex8(sidLo ^ (seq >>> 0));
}

// ---------------------------------------------------------------------------------------------------------------
// Chain and checkpoint primitives (exported for auditors and tests)
// ---------------------------------------------------------------------------------------------------------------

/**
 * `d_s`: the digest of one stream envelope, SHA-256 over the canonical MessagePack `bin(header) ‖ bin(ct)` of its
 * exact header and ciphertext bytes (for a canonical continuation frame, the frame without its first two bytes).
 */
export function sessionEnvelopeDigest(p: CryptoProvider, header: Uint8Array, ct: Uint8Array): Uint8Array {
  return p.hash("sha256", encodeSessionFrame(header, ct).subarray(2));
}

/** `c_init`: the chain head before any envelope of stream `sid`. */
export function sessionChainInit(p: CryptoProvider, sid: Uint8Array): Uint8Array {
  return p.hash("sha256", CHAIN_DOMAIN, sid);
}

/**
 * The chain head after `[first, last]`: SHA-256 over the domain, sid, the range, the previous head and the
 * digests in order. `digests` may be given as several byte arrays whose concatenation is the 32-byte digests.
 */
export function sessionChainHead(
  p: CryptoProvider,
  sid: Uint8Array,
  first: number,
  last: number,
  prev: Uint8Array,
  ...digests: Uint8Array[]
): Uint8Array {
  return p.hash("sha256", CHAIN_DOMAIN, sid, u64(first), u64(last), prev, ...digests);
}

/** The bytes a checkpoint signature covers. */
export function checkpointSignedBytes(
  sid: Uint8Array,
  senderKid: string,
  recipientKid: string,
  first: number,
  last: number,
  prev: Uint8Array,
  head: Uint8Array,
  final: boolean,
): Uint8Array {
  return concatBytes(CKPT_DOMAIN, sid, utf8(senderKid), utf8(recipientKid), u64(first), u64(last), prev, head, Uint8Array.of(final ? 1 : 0));
}

/**
 * Verifies a recorded checkpoint (e.g. from the audit trail) against the sender's Ed25519 public key and the
 * digests of the envelopes it covers (`d_first … d_last`, e.g. the `digest` of each opened envelope). For
 * auditors: true only if the sender signed exactly this chain. Across records, also check the links: each
 * checkpoint's `prevHead` is the previous one's `head` (the first one's is {@link sessionChainInit}), unless a
 * `gap` event lies between them.
 */
export function verifySessionCheckpoint(
  p: CryptoProvider,
  cp: Pick<SessionCheckpointEvent, "streamId" | "senderKid" | "recipientKid" | "firstSeq" | "lastSeq" | "prevHead" | "head" | "signature" | "final">,
  signPublicKey: Uint8Array,
  digests: readonly Uint8Array[],
): boolean {
  if (digests.length !== cp.lastSeq - cp.firstSeq + 1) return false;
  const sid = new Uint8Array(Buffer.from(cp.streamId, "hex"));
  const prev = new Uint8Array(Buffer.from(cp.prevHead, "hex"));
  const head = sessionChainHead(p, sid, cp.firstSeq, cp.lastSeq, prev, ...digests);
  if (toHex(head) !== cp.head) return false;
  const msg = checkpointSignedBytes(sid, cp.senderKid, cp.recipientKid, cp.firstSeq, cp.lastSeq, prev, head, cp.final);
  return p.ed25519Verify(p.ed25519Public(signPublicKey), msg, new Uint8Array(Buffer.from(cp.signature, "base64url")));
}

// ---------------------------------------------------------------------------------------------------------------
// Canonical encoding of continuation headers and frames (the exact bytes codec.encode would produce)
// ---------------------------------------------------------------------------------------------------------------
//
// Canonical header: a fixmap with the fields in this order — v, sid, from, to (constant for a stream, so both ends
// cache their encoding), then seq, ts, ttl, type, tags {pii, cls?, anon}, re?, ck?, fin? — written with
// msgpackr's choices: fixint < 0x80, uint8/16/32 above, float64 from 2^32 (msgpackr never writes uint64);
// fixstr < 32 bytes, else str8; bin8/16/32; fixarray < 16, else array16.

const K = (s: string) => Uint8Array.of(0xa0 | s.length, ...utf8(s));
const KEY_V = K("v");
const KEY_SID = K("sid");
const KEY_FROM = K("from");
const KEY_TO = K("to");
const KEY_SEQ = K("seq");
const KEY_TS = K("ts");
const KEY_TTL = K("ttl");
const KEY_TYPE = K("type");
const KEY_TAGS = K("tags");
const KEY_PII = K("pii");
const KEY_CLS = K("cls");
const KEY_ANON = K("anon");
const KEY_RE = K("re");
const KEY_CK = K("ck");
const KEY_FIN = K("fin");
/** `tags: {pii: [], anon: false}`, the common case, pre-encoded. */
const EMPTY_TAGS_BYTES = Uint8Array.of(...KEY_TAGS, 0x82, ...KEY_PII, 0x90, ...KEY_ANON, 0xc2);

// One scratch buffer for header encoding. A valid header is under 2 KiB (ids ≤ 64, 32 tags ≤ 36 characters,
// type and class ≤ 32, a 104-byte checkpoint), so writers below skip per-write bounds checks; callers only
// pass values already checked against the schema's rules.
const SCRATCH = new Uint8Array(8192);
const SCRATCH_DV = new DataView(SCRATCH.buffer);
let wp = 0;

function wBytes(b: Uint8Array): void {
  const n = b.length;
  if (n < 24) for (let i = 0; i < n; i++) SCRATCH[wp + i] = b[i]!;
  else SCRATCH.set(b, wp);
  wp += n;
}
function wUint(v: number): void {
  if (v < 0x80) SCRATCH[wp++] = v;
  else if (v < 0x100) {
    SCRATCH[wp++] = 0xcc;
    SCRATCH[wp++] = v;
  } else if (v < 0x10000) {
    SCRATCH[wp++] = 0xcd;
    SCRATCH[wp++] = v >>> 8;
    SCRATCH[wp++] = v & 0xff;
  } else if (v < TWO32) {
    SCRATCH[wp++] = 0xce;
    SCRATCH_DV.setUint32(wp, v);
    wp += 4;
  } else {
    SCRATCH[wp++] = 0xcb;
    SCRATCH_DV.setFloat64(wp, v);
    wp += 8;
  }
}
function wStr(s: string): void {
  const n = s.length;
  if (n < 0x20) SCRATCH[wp++] = 0xa0 | n;
  else {
    SCRATCH[wp++] = 0xd9;
    SCRATCH[wp++] = n;
  }
  for (let i = 0; i < n; i++) SCRATCH[wp++] = s.charCodeAt(i);
}
function wBin(v: Uint8Array): void {
  binPrefix(SCRATCH, wp, v.length);
  wp += binPrefixLen(v.length);
  wBytes(v);
}

function binPrefixLen(n: number): number {
  return n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
}
function binPrefix(b: Uint8Array, at: number, n: number): void {
  if (n < 0x100) {
    b[at] = 0xc4;
    b[at + 1] = n;
  } else if (n < 0x10000) {
    b[at] = 0xc5;
    b[at + 1] = n >>> 8;
    b[at + 2] = n & 0xff;
  } else {
    b[at] = 0xc6;
    b[at + 1] = n >>> 24;
    b[at + 2] = (n >>> 16) & 0xff;
    b[at + 3] = (n >>> 8) & 0xff;
    b[at + 4] = n & 0xff;
  }
}

/** The constant part of a stream's headers: `v, sid, from, to` (after the map byte). */
function headerPrefix(sid: Uint8Array, from: string, to: string): Uint8Array {
  wp = 0;
  wBytes(KEY_V);
  SCRATCH[wp++] = SESSION_VERSION;
  wBytes(KEY_SID);
  wBin(sid);
  wBytes(KEY_FROM);
  wStr(from);
  wBytes(KEY_TO);
  wStr(to);
  return SCRATCH.slice(0, wp);
}

/** Writes a header into SCRATCH from 0; returns its length. `prefix` = headerPrefix(h.sid, h.from, h.to). */
function writeHeader(h: SessionWireHeader, prefix: Uint8Array): number {
  wp = 0;
  SCRATCH[wp++] = 0x89 + (h.re !== undefined ? 1 : 0) + (h.ck !== undefined ? 1 : 0) + (h.fin !== undefined ? 1 : 0);
  SCRATCH.set(prefix, wp);
  wp += prefix.length;
  wBytes(KEY_SEQ);
  wUint(h.seq);
  wBytes(KEY_TS);
  wUint(h.ts);
  wBytes(KEY_TTL);
  wUint(h.ttl);
  wBytes(KEY_TYPE);
  wStr(h.type);
  const tags = h.tags;
  const pii = tags.pii;
  if (pii.length === 0 && tags.cls === undefined && !tags.anon) wBytes(EMPTY_TAGS_BYTES);
  else {
    wBytes(KEY_TAGS);
    SCRATCH[wp++] = tags.cls !== undefined ? 0x83 : 0x82;
    wBytes(KEY_PII);
    if (pii.length < 16) SCRATCH[wp++] = 0x90 | pii.length;
    else {
      SCRATCH[wp++] = 0xdc;
      SCRATCH[wp++] = pii.length >>> 8;
      SCRATCH[wp++] = pii.length & 0xff;
    }
    for (const t of pii) wStr(t);
    if (tags.cls !== undefined) {
      wBytes(KEY_CLS);
      wStr(tags.cls);
    }
    wBytes(KEY_ANON);
    SCRATCH[wp++] = tags.anon ? 0xc3 : 0xc2;
  }
  if (h.re !== undefined) {
    wBytes(KEY_RE);
    wBin(h.re);
  }
  if (h.ck !== undefined) {
    wBytes(KEY_CK);
    wBin(h.ck);
  }
  if (h.fin !== undefined) {
    wBytes(KEY_FIN);
    SCRATCH[wp++] = 0xc3;
  }
  return wp;
}

/**
 * Encodes a continuation header canonically (see above): the result equals `codec.encode` of the header with its
 * fields in canonical order (property-tested). Throws ERR_INVALID_ARGUMENT unless the header passes the schema.
 */
export function encodeSessionHeader(h: SessionWireHeader): Uint8Array {
  const ok = sessionHeaderSchema.safeParse(h, { reportInput: false });
  if (!ok.success || !headerRulesHold(ok.data)) throw sealwireError("ERR_INVALID_ARGUMENT", "not a valid session header");
  const n = writeHeader(h, headerPrefix(h.sid, h.from, h.to));
  return SCRATCH.slice(0, n);
}

// Continuation frames are carved from a module-private slab: a fresh 1 KiB typed array costs an off-heap,
// zero-filled allocation (~1 µs here), a view on the slab a few tens of ns. The slab only ever holds frames — wire
// bytes, never plaintext or keys — and is 64 KiB, so a frame kept for long retains at most that. Large frames get
// their own buffer. (codec.encode hands out views on msgpackr's slab the same way.)
const SLAB_BYTES = 64 * 1024;
const SLAB_MAX_FRAME = 16 * 1024;
let slab = new Uint8Array(SLAB_BYTES);
let slabAt = 0;
function frameBuffer(n: number): Uint8Array {
  if (n > SLAB_MAX_FRAME) return new Uint8Array(n);
  if (slabAt + n > SLAB_BYTES) {
    slab = new Uint8Array(SLAB_BYTES);
    slabAt = 0;
  }
  const v = slab.subarray(slabAt, slabAt + n);
  slabAt = (slabAt + n + 7) & ~7; // 8-byte aligned starts
  return v;
}

/** Encodes the continuation wire frame `[2, header, ct]` (the bytes codec.encode would produce). */
export function encodeSessionFrame(header: Uint8Array, ct: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + binPrefixLen(header.length) + header.length + binPrefixLen(ct.length) + ct.length);
  out[0] = 0x93;
  out[1] = SESSION_VERSION;
  let at = 2;
  binPrefix(out, at, header.length);
  at += binPrefixLen(header.length);
  out.set(header, at);
  at += header.length;
  binPrefix(out, at, ct.length);
  at += binPrefixLen(ct.length);
  out.set(ct, at);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding: a fast path for the canonical form, deferring to the reference (decodeStrict + zod) for anything else
// ---------------------------------------------------------------------------------------------------------------

/** Reads a canonical bin8/16/32 at `at`: its content starts at the returned offset and ends at `binEnd`; -1 if not. */
let binEnd = 0;
function readBin(b: Uint8Array, at: number): number {
  const t = b[at];
  let len: number;
  let start: number;
  if (t === 0xc4) {
    len = b[at + 1]!;
    start = at + 2;
  } else if (t === 0xc5) {
    len = (b[at + 1]! << 8) | b[at + 2]!;
    if (len < 0x100) return -1;
    start = at + 3;
  } else if (t === 0xc6) {
    len = ((b[at + 1]! << 24) | (b[at + 2]! << 16) | (b[at + 3]! << 8) | b[at + 4]!) >>> 0;
    if (len < 0x10000) return -1;
    start = at + 5;
  } else return -1;
  if (start > b.length || len > b.length - start) return -1;
  binEnd = start + len;
  return start;
}

/** Splits a canonical `[2, header, ct]` frame without copying, or returns undefined (not canonical: use the reference). */
function splitFrameFast(b: Uint8Array): [Uint8Array, Uint8Array, Uint8Array] | undefined {
  if (b.length < 6 || b[0] !== 0x93 || b[1] !== SESSION_VERSION) return undefined;
  const hs = readBin(b, 2);
  if (hs < 0) return undefined;
  const he = binEnd;
  const cs = readBin(b, he);
  if (cs < 0 || binEnd !== b.length || he - hs > MAX_HEADER_BYTES) return undefined;
  return [b.subarray(hs, he), b.subarray(cs), b.subarray(2)];
}

/** A stream's constant header part as already validated: lets the fast path skip re-parsing it. */
export interface KnownHeaderPrefix {
  readonly prefix: Uint8Array;
  readonly sid: Uint8Array;
  readonly from: string;
  readonly to: string;
}

/** Scratch for reading a big-endian float64 without allocating. */
const F64_BYTES = new Uint8Array(8);
const F64_VIEW = new DataView(F64_BYTES.buffer);

/** Fast-path cursor state (module-level: the parser is synchronous and not re-entrant). */
let rb: Uint8Array = EMPTY;
let rp = 0;

function rKey(k: Uint8Array): boolean {
  const n = k.length;
  if (rp + n > rb.length) return false;
  for (let i = 0; i < n; i++) if (rb[rp + i] !== k[i]) return false;
  rp += n;
  return true;
}
// Canonical unsigned integer (see above), or -1.
function rUint(): number {
  const b = rb;
  const p = rp;
  const t = b[p];
  if (t === undefined) return -1;
  if (t < 0x80) {
    rp = p + 1;
    return t;
  }
  if (t === 0xcc) {
    if (p + 2 > b.length || b[p + 1]! < 0x80) return -1;
    rp = p + 2;
    return b[p + 1]!;
  }
  if (t === 0xcd) {
    if (p + 3 > b.length) return -1;
    const v = (b[p + 1]! << 8) | b[p + 2]!;
    if (v < 0x100) return -1;
    rp = p + 3;
    return v;
  }
  if (t === 0xce) {
    if (p + 5 > b.length) return -1;
    const v = ((b[p + 1]! << 24) | (b[p + 2]! << 16) | (b[p + 3]! << 8) | b[p + 4]!) >>> 0;
    if (v < 0x10000) return -1;
    rp = p + 5;
    return v;
  }
  if (t === 0xcb) {
    if (p + 9 > b.length) return -1;
    for (let i = 0; i < 8; i++) F64_BYTES[i] = b[p + 1 + i]!;
    const v = F64_VIEW.getFloat64(0);
    if (!Number.isSafeInteger(v) || v < TWO32) return -1;
    rp = p + 9;
    return v;
  }
  return -1;
}
// Canonical ASCII string (fixstr < 32, str8 ≥ 32) matching `re`, or undefined.
function rStr(re: RegExp): string | undefined {
  const b = rb;
  const p = rp;
  const t = b[p];
  let n: number;
  let start: number;
  if (t !== undefined && t >= 0xa0 && t <= 0xbf) {
    n = t & 0x1f;
    start = p + 1;
  } else if (t === 0xd9) {
    n = b[p + 1] ?? 0;
    if (n < 0x20) return undefined;
    start = p + 2;
  } else return undefined;
  const end = start + n;
  if (end > b.length) return undefined;
  let s = "";
  for (let i = start; i < end; i++) {
    const c = b[i]!;
    if (c >= 0x80) return undefined;
    s += String.fromCharCode(c);
  }
  if (!re.test(s)) return undefined;
  rp = end;
  return s;
}
function rBinOf(n: number): Uint8Array | undefined {
  const b = rb;
  const p = rp;
  if (b[p] !== 0xc4 || b[p + 1] !== n || p + 2 + n > b.length) return undefined;
  rp = p + 2 + n;
  return b.subarray(p + 2, p + 2 + n);
}

/**
 * Parses a continuation header in its canonical form and checks every rule of {@link sessionHeaderSchema}.
 * Returns undefined for anything else — not "invalid", only "not the fast case": the caller then runs the
 * reference. Whenever this returns a header, the reference accepts the same bytes with an equal result
 * (test/session.test.ts checks this property). With `known`, a header that starts with exactly that stream's
 * validated constant part reuses its values instead of parsing them again.
 * @internal
 */
export function decodeSessionHeaderFast(b: Uint8Array, known?: KnownHeaderPrefix): SessionWireHeader | undefined {
  const t0 = b[0];
  if (t0 === undefined || t0 < 0x89 || t0 > 0x8c) return undefined;
  rb = b;
  try {
    return parseFast(b, t0, known);
  } finally {
    rb = EMPTY;
  }
}

function parseFast(b: Uint8Array, t0: number, known: KnownHeaderPrefix | undefined): SessionWireHeader | undefined {
  let sid: Uint8Array | undefined;
  let from: string | undefined;
  let to: string | undefined;
  rp = 1;
  if (known !== undefined && rKey(known.prefix)) {
    sid = known.sid;
    from = known.from;
    to = known.to;
  } else {
    if (!rKey(KEY_V) || b[rp] !== SESSION_VERSION) return undefined;
    rp++;
    if (!rKey(KEY_SID)) return undefined;
    sid = rBinOf(16);
    if (!sid || !rKey(KEY_FROM)) return undefined;
    from = rStr(AGENT_ID_RE);
    if (from === undefined || !rKey(KEY_TO)) return undefined;
    to = rStr(AGENT_ID_RE);
    if (to === undefined) return undefined;
  }
  if (!rKey(KEY_SEQ)) return undefined;
  const seq = rUint();
  if (seq < 1 || seq > MAX_STREAM_SEQ || !rKey(KEY_TS)) return undefined;
  const ts = rUint();
  if (ts < 0 || !rKey(KEY_TTL)) return undefined;
  const ttl = rUint();
  if (ttl < 1 || ttl > MAX_TTL_MS || !rKey(KEY_TYPE)) return undefined;
  const type = rStr(TYPE_RE);
  if (type === undefined) return undefined;
  let tags: SessionWireHeader["tags"];
  if (rKey(EMPTY_TAGS_BYTES)) tags = { pii: [], anon: false };
  else {
    if (!rKey(KEY_TAGS)) return undefined;
    const tm = b[rp];
    if (tm !== 0x82 && tm !== 0x83) return undefined;
    rp++;
    if (!rKey(KEY_PII)) return undefined;
    let np: number;
    const ta = b[rp];
    if (ta !== undefined && ta >= 0x90 && ta <= 0x9f) {
      np = ta & 0x0f;
      rp++;
    } else if (ta === 0xdc) {
      np = ((b[rp + 1] ?? 0) << 8) | (b[rp + 2] ?? 0);
      if (np < 16) return undefined;
      rp += 3;
    } else return undefined;
    if (np > 32) return undefined;
    const pii: string[] = [];
    for (let i = 0; i < np; i++) {
      const s = rStr(PII_TAG_RE);
      if (s === undefined) return undefined;
      pii.push(s);
    }
    let cls: string | undefined;
    if (tm === 0x83) {
      if (!rKey(KEY_CLS)) return undefined;
      cls = rStr(CLS_RE);
      if (cls === undefined) return undefined;
    }
    if (!rKey(KEY_ANON)) return undefined;
    const an = b[rp];
    if (an !== 0xc2 && an !== 0xc3) return undefined;
    rp++;
    tags = cls === undefined ? { pii, anon: an === 0xc3 } : { pii, cls, anon: an === 0xc3 };
  }
  const h: SessionWireHeader = { v: SESSION_VERSION, sid, from, to, seq, ts, ttl, type, tags };
  let extra = t0 - 0x89;
  if (extra > 0 && rKey(KEY_RE)) {
    const re = rBinOf(16);
    if (!re) return undefined;
    h.re = re;
    extra--;
  }
  if (extra > 0 && rKey(KEY_CK)) {
    const ck = rBinOf(CHECKPOINT_BYTES);
    if (!ck) return undefined;
    h.ck = ck;
    extra--;
  }
  if (extra > 0) {
    if (!rKey(KEY_FIN) || b[rp] !== 0xc3) return undefined;
    rp++;
    h.fin = true;
    extra--;
  }
  if (extra !== 0 || rp !== b.length) return undefined;
  return h;
}

/** The reference: decodeStrict (ERR_DECODE) then the zod schema (ERR_SCHEMA). */
function decodeSessionHeaderReference(b: Uint8Array): SessionWireHeader {
  if (b.length > MAX_HEADER_BYTES) throw sealwireError("ERR_DECODE", "malformed envelope encoding");
  const raw = decodeStrict(b, { maxBytes: MAX_HEADER_BYTES, maxDepth: 3, maxItems: 128 });
  const parsed = sessionHeaderSchema.safeParse(raw, { reportInput: false });
  if (!parsed.success) throw sealwireError("ERR_SCHEMA", "session envelope header does not match the v2 schema");
  return parsed.data;
}

/** Parses a continuation header: the fast path, else the reference; then the cross-field rules. */
export function decodeSessionHeader(b: Uint8Array, known?: KnownHeaderPrefix): SessionWireHeader {
  const h = decodeSessionHeaderFast(b, known) ?? decodeSessionHeaderReference(b);
  if (!headerRulesHold(h)) throw sealwireError("ERR_SCHEMA", "session envelope header does not match the v2 schema");
  return h;
}

/**
 * size → decode of the outer frame: [header, ct, the bytes d_s hashes when the frame is canonical (else
 * undefined: {@link sessionEnvelopeDigest} re-encodes)].
 */
function splitFrame(bytes: Uint8Array, maxBytes: number): [Uint8Array, Uint8Array, Uint8Array | undefined] {
  if (!(bytes instanceof Uint8Array)) throw sealwireError("ERR_DECODE", "expected bytes");
  if (bytes.length > maxBytes) {
    throw sealwireError("ERR_ENVELOPE_TOO_LARGE", `envelope of ${bytes.length} bytes exceeds the ${maxBytes}-byte limit`);
  }
  const fast = splitFrameFast(bytes);
  if (fast) return fast;
  const outer = decodeStrict(bytes, { maxBytes, maxDepth: 1, maxItems: 4 });
  if (
    !Array.isArray(outer) ||
    outer.length !== 3 ||
    outer[0] !== SESSION_VERSION ||
    !(outer[1] instanceof Uint8Array) ||
    !(outer[2] instanceof Uint8Array) ||
    outer[1].length > MAX_HEADER_BYTES
  ) {
    throw sealwireError("ERR_DECODE", "malformed envelope encoding");
  }
  return [outer[1], outer[2], undefined];
}

/** A continuation envelope decoded without any key: for relays (route on `header.to`, header-stage policy). */
export interface DecodedSessionEnvelope {
  /** The header in API form. Key ids are not on the continuation wire (they are bound at stream open): empty here. */
  readonly header: SessionHeader;
  readonly wire: SessionWireHeader;
  readonly headerBytes: Uint8Array;
  readonly ciphertext: Uint8Array;
  readonly size: number;
}

/** size → decode → schema for a continuation envelope. Safe on any bytes; verifies nothing cryptographic. */
export function decodeSessionEnvelope(bytes: Uint8Array, maxBytes = MAX_ENVELOPE_BYTES): DecodedSessionEnvelope {
  const [headerBytes, ciphertext] = splitFrame(bytes, maxBytes);
  const wire = decodeSessionHeader(headerBytes);
  const sidHex = toHex(wire.sid);
  const header = apiHeader(wire, sidHex, readU32(wire.sid, 8), readU32(wire.sid, 12), "", "");
  return { header, wire, headerBytes, ciphertext, size: bytes.length };
}

/** True if `bytes` look like a continuation envelope (`[2, …]`), for dispatching frames; checks nothing else. */
export function isSessionFrame(bytes: Uint8Array): boolean {
  return bytes instanceof Uint8Array && bytes.length > 1 && (bytes[0]! & 0xf0) === 0x90 && bytes[1] === SESSION_VERSION;
}

function readU32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}
function wireId(h: SessionWireHeader, sidHex: string): string {
  return idOf(sidHex, readU32(h.sid, 8), readU32(h.sid, 12), h.seq);
}

/** The API form of empty tags, shared (frozen, its array too). */
const EMPTY_API_TAGS: Readonly<Tags> = Object.freeze({ pii: Object.freeze([]) as unknown as string[], anonymized: false });

function apiTags(t: SessionWireHeader["tags"]): Readonly<Tags> {
  if (t.pii.length === 0 && !t.anon && t.cls === undefined) return EMPTY_API_TAGS;
  const tags: Tags = { pii: t.pii.length === 0 ? [] : [...t.pii], anonymized: t.anon };
  if (t.cls !== undefined) tags.classification = t.cls;
  return Object.freeze(tags);
}

function apiHeader(h: SessionWireHeader, sidHex: string, sidHi: number, sidLo: number, skid: string, rkid: string): SessionHeader {
  return Object.freeze({
    id: idOf(sidHex, sidHi, sidLo, h.seq),
    from: h.from,
    to: h.to,
    senderKid: skid,
    recipientKid: rkid,
    createdAt: h.ts,
    ttlMs: h.ttl,
    type: h.type,
    tags: apiTags(h.tags),
    replyTo: h.re ? toHex(h.re) : undefined,
    streamId: sidHex,
    seq: h.seq,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Shared option checks
// ---------------------------------------------------------------------------------------------------------------

function posInt(v: unknown, what: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be an integer from ${min} to ${max}`);
  }
  return v;
}

/** Tags as the wire carries them (same rules as signed envelopes). The empty case allocates nothing new. */
const EMPTY_TAGS: SessionWireHeader["tags"] = Object.freeze({ pii: NO_PII as string[], anon: false }) as SessionWireHeader["tags"];
function normalizeTags(t: TagsInit | undefined): SessionWireHeader["tags"] {
  if (t === undefined) return EMPTY_TAGS;
  if (typeof t !== "object" || t === null) throw sealwireError("ERR_INVALID_ARGUMENT", "tags must be an object");
  const pii = t.pii ?? NO_PII;
  if (!Array.isArray(pii) || pii.length > 32 || !pii.every((x) => typeof x === "string" && PII_TAG_RE.test(x))) {
    throw sealwireError("ERR_INVALID_ARGUMENT", 'tags.pii must be at most 32 names like "pii:email"');
  }
  const anon = t.anonymized ?? false;
  if (typeof anon !== "boolean") throw sealwireError("ERR_INVALID_ARGUMENT", "tags.anonymized must be a boolean");
  const sorted = pii.length === 0 ? (NO_PII as string[]) : [...new Set(pii)].sort();
  if (t.classification === undefined) return { pii: sorted, anon };
  if (typeof t.classification !== "string" || !CLS_RE.test(t.classification)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "tags.classification must be 1-32 lower-case letters, digits, _ or -");
  }
  return { pii: sorted, cls: t.classification, anon };
}

// ---------------------------------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------------------------------

/** Options for {@link SessionSender}. */
export interface SessionSenderOptions {
  /** The sender's identity (signs the openings and checkpoints; its X25519 key authenticates the HPKE setup). */
  identity: Identity;
  /** Trust store holding the recipient; looked up on every envelope, so revocation stops the stream at once. */
  trust: TrustStore;
  /** Recipient agent id. */
  to: string;
  /** Envelopes per stream (the opening included) before a fresh encapsulation. @default DEFAULT_STREAM_MAX_MESSAGES */
  maxMessages?: number;
  /** Stream age before a fresh encapsulation. @default DEFAULT_STREAM_MAX_AGE_MS */
  maxAgeMs?: number;
  /** A signed checkpoint after this many envelopes. Keep it well below the recipient's `maxUncheckpointed`. @default DEFAULT_CHECKPOINT_EVERY */
  checkpointEvery?: number;
  /** A signed checkpoint on the first envelope this long after the previous one. @default DEFAULT_CHECKPOINT_INTERVAL_MS */
  checkpointIntervalMs?: number;
  /** Clock, for tests. @default Date.now */
  now?: () => number;
  /**
   * Open every stream with a control envelope ({@link OPEN_TYPE}: signed, empty payload, put in `preceding`) and
   * carry every payload in a continuation. One more frame per stream, but whether a recipient holds the stream no
   * longer depends on whether it accepted the first message (a policy may refuse that one before decrypting it).
   * @default false
   */
  openWithControl?: boolean;
}

/** Per-envelope options of {@link SessionSender.seal} (as {@link SealOptions}, without `id`: ids are derived). */
export interface SessionSealOptions {
  tags?: TagsInit;
  /** @default "msg" */
  type?: string;
  /** @default DEFAULT_TTL_MS */
  ttlMs?: number;
  /** Envelope id (32 hex) this replies to. */
  replyTo?: string;
  /** Clock, for tests. @default the sender's clock */
  now?: number;
}

/** The result of {@link SessionSender.seal}. */
export interface SessionSealed {
  /** The envelope carrying the payload: a signed opening envelope (seq 0) or a continuation. */
  readonly bytes: Uint8Array;
  readonly header: SessionHeader;
  /** Frames to send BEFORE `bytes`, in order: the final envelope of a stream that reached its limits. Usually empty. */
  readonly preceding: readonly Uint8Array[];
  /** True when a new stream was opened: by `bytes` (a signed envelope), or with `openWithControl` by the last of `preceding`. */
  readonly opened: boolean;
}

/** Sender-side state of one stream. */
class SendStream {
  readonly sidHex: string;
  readonly sidHi: number;
  readonly sidLo: number;
  /** Next sequence number (= ctx.seq). */
  next = 1;
  /** First sequence number not yet covered by a checkpoint. */
  first = 0;
  /** d_first … d_{next-1}, 32 bytes each. */
  digs = new Uint8Array(32 * 64);
  lastCheckpointAt: number;
  /** The last envelope sealed was a checkpoint-only control envelope (nothing new to cover on an idle stream). */
  idle = false;
  /** Encoded `v, sid, from, to`, the constant start of every header of this stream. */
  readonly prefix: Uint8Array;
  constructor(
    readonly ctx: HpkeContext,
    readonly sid: Uint8Array,
    from: string,
    to: string,
    readonly rkid: string,
    readonly openedAt: number,
    public prev: Uint8Array,
  ) {
    this.prefix = headerPrefix(sid, from, to);
    this.sidHex = toHex(sid);
    this.sidHi = readU32(sid, 8);
    this.sidLo = readU32(sid, 12);
    this.lastCheckpointAt = openedAt;
  }
  addDigest(seq: number, d: Uint8Array): void {
    const at = (seq - this.first) * 32;
    if (at + 32 > this.digs.length) {
      const g = new Uint8Array(this.digs.length * 2);
      g.set(this.digs);
      this.digs = g;
    }
    this.digs.set(d, at);
  }
}

/**
 * Seals a stream of envelopes from one identity to one recipient. Not safe to share between recipients; one per
 * (sender, recipient). Call {@link close} when done: it returns the final envelope to send and wipes the keys.
 */
export class SessionSender {
  readonly #identity: Identity;
  readonly #trust: TrustStore;
  readonly #to: string;
  readonly #maxMessages: number;
  readonly #maxAgeMs: number;
  readonly #every: number;
  readonly #intervalMs: number;
  readonly #clock: () => number;
  readonly #p: CryptoProvider;
  readonly #unsubscribe: (() => void)[] = [];
  readonly #openWithControl: boolean;
  #stream: SendStream | undefined;
  #closed = false;

  constructor(options: SessionSenderOptions) {
    if (!options || typeof options !== "object") throw sealwireError("ERR_INVALID_ARGUMENT", "options must be an object");
    const { identity, trust, to } = options;
    if (!identity || typeof identity.sign !== "function") throw sealwireError("ERR_INVALID_ARGUMENT", "identity must be an Identity");
    if (!trust || typeof trust.require !== "function") throw sealwireError("ERR_INVALID_ARGUMENT", "trust must be a TrustStore");
    if (typeof to !== "string" || !AGENT_ID_RE.test(to)) throw sealwireError("ERR_INVALID_ARGUMENT", "to must be an agent id");
    if (identity.closed) throw sealwireError("ERR_CLOSED", `identity "${identity.id}" was closed`);
    this.#identity = identity;
    this.#trust = trust;
    this.#to = to;
    this.#p = identity.provider;
    this.#maxMessages = posInt(options.maxMessages ?? DEFAULT_STREAM_MAX_MESSAGES, "maxMessages", 2, MAX_STREAM_SEQ);
    this.#maxAgeMs = posInt(options.maxAgeMs ?? DEFAULT_STREAM_MAX_AGE_MS, "maxAgeMs", 1, MAX_TTL_MS);
    this.#every = posInt(options.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY, "checkpointEvery", 1, 1 << 20);
    this.#intervalMs = posInt(options.checkpointIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS, "checkpointIntervalMs", 1, MAX_TTL_MS);
    if (options.now !== undefined && typeof options.now !== "function") throw sealwireError("ERR_INVALID_ARGUMENT", "now must be a function");
    this.#clock = options.now ?? Date.now;
    if (options.openWithControl !== undefined && typeof options.openWithControl !== "boolean") {
      throw sealwireError("ERR_INVALID_ARGUMENT", "openWithControl must be a boolean");
    }
    this.#openWithControl = options.openWithControl ?? false;
    this.#unsubscribe.push(
      identity.onClose(() => this.#wipe()),
      trust.onRevoke((e) => {
        if (e.id === this.#to) this.#drop();
      }),
    );
  }

  /** Recipient agent id. */
  get to(): string {
    return this.#to;
  }
  /** The current stream id (32 hex), or undefined before the first envelope / after an end. */
  get streamId(): string | undefined {
    return this.#stream?.sidHex;
  }
  /** The next sequence number on the current stream, or undefined. */
  get seq(): number | undefined {
    return this.#stream?.next;
  }
  /** True after {@link close} (or when the identity closed). */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * True if `envelopeId` (32 hex) is an envelope this sender sealed on its current stream: so a refusal naming it
   * (ERR_UNKNOWN_STREAM from the recipient) concerns the current stream and warrants a {@link reset}, while a
   * refusal naming an older or foreign id does not.
   */
  holds(envelopeId: string): boolean {
    const s = this.#stream;
    if (s === undefined || typeof envelopeId !== "string" || !ID_RE.test(envelopeId)) return false;
    if (envelopeId.slice(0, 16) !== s.sidHex.slice(0, 16)) return false;
    // id = sid with its last 8 bytes XORed with u64be(seq): recover seq from the last 8 bytes.
    const hi = (Number.parseInt(envelopeId.slice(16, 24), 16) ^ s.sidHi) >>> 0;
    const lo = (Number.parseInt(envelopeId.slice(24, 32), 16) ^ s.sidLo) >>> 0;
    return hi === 0 && lo < s.next;
  }

  #alive(): void {
    if (this.#closed || this.#identity.closed) {
      this.#wipe();
      throw sealwireError("ERR_CLOSED", "session sender was closed; create a new one");
    }
  }

  /**
   * Seals `payload` (e.g. from `encodePayload`). Opens a stream with a signed envelope when none is open (or the
   * current one reached its limits, whose final envelope is then in `preceding`); otherwise a continuation, with a
   * signed checkpoint attached when one is due. Throws ERR_UNKNOWN_PEER / ERR_REVOKED_PEER for the recipient,
   * ERR_CLOSED, ERR_INVALID_ARGUMENT.
   */
  seal(payload: Uint8Array, options: SessionSealOptions = {}): SessionSealed {
    this.#alive();
    if (!(payload instanceof Uint8Array)) throw sealwireError("ERR_INVALID_ARGUMENT", "payload must be a Uint8Array");
    const now = options.now ?? this.#clock();
    const type = options.type ?? "msg";
    if (typeof type !== "string" || !TYPE_RE.test(type)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "type must be 1-32 characters: a lower-case letter, then a-z 0-9 . _ -");
    }
    if (type === CHECKPOINT_TYPE || type === CLOSE_TYPE || type === OPEN_TYPE) throw sealwireError("ERR_INVALID_ARGUMENT", `type "${type}" is reserved for sealwire`);
    const ttl = options.ttlMs ?? DEFAULT_TTL_MS;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_MS) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `ttlMs must be an integer from 1 to ${MAX_TTL_MS}`);
    }
    if (!Number.isSafeInteger(now) || now < 0) throw sealwireError("ERR_INVALID_ARGUMENT", "now must be a non-negative integer");
    const tags = normalizeTags(options.tags);
    let re: Uint8Array | undefined;
    if (options.replyTo !== undefined) {
      if (typeof options.replyTo !== "string" || !ID_RE.test(options.replyTo)) {
        throw sealwireError("ERR_INVALID_ARGUMENT", "replyTo must be an envelope id (32 lower-case hex characters)");
      }
      re = new Uint8Array(Buffer.from(options.replyTo, "hex"));
    }
    const recipient = this.#trust.require(this.#to);
    let s = this.#stream;
    let preceding = NO_FRAMES;
    if (s && s.rkid !== recipient.identity.kid) {
      // The recipient's keys changed: the old stream is sealed to a key it may no longer hold.
      this.#drop();
      s = undefined;
    }
    if (s && (s.next >= this.#maxMessages || now - s.openedAt >= this.#maxAgeMs)) {
      preceding = [this.#finish(s, now)];
      s = undefined;
    }
    if (!s && this.#openWithControl) {
      const opener = this.#open(recipient, EMPTY, now, OPEN_TYPE, DEFAULT_TTL_MS, EMPTY_TAGS, undefined, NO_FRAMES);
      preceding = [...preceding, opener.bytes];
      s = this.#stream!;
      const { bytes, wire } = this.#continue(s, payload, now, type, ttl, tags, re, false, false);
      return { bytes, header: apiHeader(wire, s.sidHex, s.sidHi, s.sidLo, this.#identity.kid, s.rkid), preceding, opened: true };
    }
    if (!s) return this.#open(recipient, payload, now, type, ttl, tags, re, preceding);
    const ckDue = s.next - s.first >= this.#every || now - s.lastCheckpointAt >= this.#intervalMs;
    const { bytes, wire } = this.#continue(s, payload, now, type, ttl, tags, re, ckDue, false);
    return { bytes, header: apiHeader(wire, s.sidHex, s.sidHi, s.sidLo, this.#identity.kid, s.rkid), preceding, opened: false };
  }

  #open(
    recipient: TrustEntry,
    payload: Uint8Array,
    now: number,
    type: string,
    ttl: number,
    tags: SessionWireHeader["tags"],
    re: Uint8Array | undefined,
    preceding: readonly Uint8Array[],
  ): SessionSealed {
    const p = this.#p;
    const me = this.#identity;
    const sid = p.randomBytes(16);
    // A v1 header sealed by the same steps as sealEnvelope (sealWire), so EnvelopeOpener accepts it; the HPKE
    // context it returns is kept for the stream.
    const wire: WireHeader = {
      v: ENVELOPE_VERSION,
      id: sid,
      from: me.id,
      to: recipient.id,
      skid: me.kid,
      rkid: recipient.identity.kid,
      ts: now,
      ttl,
      type,
      tags: tags.cls === undefined ? { pii: [...tags.pii], anon: tags.anon } : { pii: [...tags.pii], cls: tags.cls, anon: tags.anon },
      enc: EMPTY,
    };
    if (re !== undefined) wire.re = re;
    const pt = new Uint8Array(payload.length + 2);
    pt[0] = SESSION_OPEN_KIND;
    pt[1] = SESSION_OPEN_VERSION;
    pt.set(payload, 2);
    let sealed: ReturnType<typeof sealWire>;
    try {
      sealed = sealWire(me, recipient, wire, pt); // seq 0
    } finally {
      pt.fill(0);
    }
    const { bytes, headerBytes, ciphertext, ctx } = sealed;
    try {
      const s = new SendStream(ctx, sid, me.id, recipient.id, recipient.identity.kid, now, sessionChainInit(p, sid));
      s.addDigest(0, sessionEnvelopeDigest(p, headerBytes, ciphertext));
      this.#stream = s;
      const h: SessionHeader = Object.freeze({
        id: s.sidHex,
        from: me.id,
        to: recipient.id,
        senderKid: me.kid,
        recipientKid: recipient.identity.kid,
        createdAt: now,
        ttlMs: ttl,
        type,
        tags: apiTags(tags),
        replyTo: re ? toHex(re) : undefined,
        streamId: s.sidHex,
        seq: 0,
      });
      return { bytes, header: h, preceding, opened: true };
    } catch (e) {
      ctx.destroy();
      throw e;
    }
  }

  /** Seals one continuation on `s`, with a checkpoint over every uncovered envelope when `ck` (final when `fin`). */
  #continue(
    s: SendStream,
    payload: Uint8Array,
    now: number,
    type: string,
    ttl: number,
    tags: SessionWireHeader["tags"],
    re: Uint8Array | undefined,
    ck: boolean,
    fin: boolean,
  ): { bytes: Uint8Array; wire: SessionWireHeader } {
    const p = this.#p;
    const seq = s.next;
    const wire: SessionWireHeader = { v: SESSION_VERSION, sid: s.sid, seq, from: this.#identity.id, to: this.#to, ts: now, ttl, type, tags };
    if (re !== undefined) wire.re = re;
    let nextPrev: Uint8Array | undefined;
    if (ck) {
      // Covers [first, seq-1]: non-empty, since the envelope that carried the previous checkpoint is uncovered.
      const first = s.first;
      const last = seq - 1;
      const head = sessionChainHead(p, s.sid, first, last, s.prev, s.digs.subarray(0, (last - first + 1) * 32));
      const sig = this.#identity.sign(checkpointSignedBytes(s.sid, this.#identity.kid, s.rkid, first, last, s.prev, head, fin));
      const blob = new Uint8Array(CHECKPOINT_BYTES);
      putU64(blob, 0, first);
      blob.set(s.prev, 8);
      blob.set(sig, 40);
      wire.ck = blob;
      if (fin) wire.fin = true;
      nextPrev = head;
    }
    // Header → frame buffer; the header inside the frame is the AAD (no second copy).
    const hlen = writeHeader(wire, s.prefix);
    const ctLen = payload.length + 16;
    const hStart = 2 + binPrefixLen(hlen);
    const cStart = hStart + hlen + binPrefixLen(ctLen);
    const frame = frameBuffer(cStart + ctLen); // every byte is written below
    frame[0] = 0x93;
    frame[1] = SESSION_VERSION;
    binPrefix(frame, 2, hlen);
    frame.set(SCRATCH.subarray(0, hlen), hStart);
    binPrefix(frame, hStart + hlen, ctLen);
    const header = frame.subarray(hStart, hStart + hlen);
    if (s.ctx.seq !== seq) throw sealwireError("ERR_INTERNAL", "session sequence out of step with the HPKE context");
    const ct = s.ctx.seal(header, payload);
    frame.set(ct, cStart);
    const d = p.hash("sha256", frame.subarray(2)); // = sessionEnvelopeDigest(p, header, ct): the frame is canonical
    if (nextPrev !== undefined) {
      s.first = seq;
      s.prev = nextPrev;
      s.lastCheckpointAt = now;
    }
    s.addDigest(seq, d);
    s.next = seq + 1;
    s.idle = type === CHECKPOINT_TYPE;
    return { bytes: frame, wire };
  }

  /** Ends `s` with a final checkpoint in a close envelope, wipes its keys, and returns the envelope. */
  #finish(s: SendStream, now: number): Uint8Array {
    try {
      return this.#continue(s, EMPTY, now, CLOSE_TYPE, DEFAULT_TTL_MS, EMPTY_TAGS, undefined, true, true).bytes;
    } finally {
      s.ctx.destroy();
      if (this.#stream === s) this.#stream = undefined;
    }
  }

  /**
   * True when a checkpoint is due by time and some envelope is uncovered (call {@link tick} from a timer). The
   * checkpoint envelope itself is covered only by the next checkpoint: on an idle stream that is left to the final
   * one, so an idle stream is not checkpointed again and again.
   */
  checkpointDue(now = this.#clock()): boolean {
    const s = this.#stream;
    return s !== undefined && s.next > s.first && !s.idle && now - s.lastCheckpointAt >= this.#intervalMs;
  }

  /**
   * For a timer every `checkpointIntervalMs`: ends a stream that reached its age (returning its final envelope),
   * else returns a checkpoint envelope when one is due, else undefined. Send what it returns.
   */
  tick(now = this.#clock()): Uint8Array | undefined {
    this.#alive();
    const s = this.#stream;
    if (!s) return undefined;
    if (now - s.openedAt >= this.#maxAgeMs) return this.#finish(s, now);
    return this.checkpointDue(now) ? this.checkpoint(now) : undefined;
  }

  /** A control envelope (`sw.ckpt`, empty payload) carrying a checkpoint over every uncovered envelope; undefined without a stream. */
  checkpoint(now = this.#clock()): Uint8Array | undefined {
    this.#alive();
    const s = this.#stream;
    if (!s) return undefined;
    if (s.next >= this.#maxMessages) return this.#finish(s, now);
    return this.#continue(s, EMPTY, now, CHECKPOINT_TYPE, DEFAULT_TTL_MS, EMPTY_TAGS, undefined, true, false).bytes;
  }

  /** Ends the current stream: returns its final envelope (`sw.close`, final checkpoint) and wipes its keys. The next seal re-opens. */
  endStream(now = this.#clock()): Uint8Array | undefined {
    this.#alive();
    const s = this.#stream;
    return s ? this.#finish(s, now) : undefined;
  }

  /**
   * Forgets the current stream without a final envelope (wiping its keys): for when the recipient refused it with
   * ERR_UNKNOWN_STREAM (evicted, expired, closed). The next seal re-opens with a fresh encapsulation.
   */
  reset(): void {
    this.#drop();
  }

  #drop(): void {
    const s = this.#stream;
    this.#stream = undefined;
    s?.ctx.destroy();
  }

  #wipe(): void {
    this.#drop();
    this.#closed = true;
    for (const u of this.#unsubscribe.splice(0)) u();
  }

  /**
   * Ends the current stream (returning its final envelope, to send) and wipes every key; later calls throw
   * ERR_CLOSED. Idempotent. If the identity is already closed, the stream is wiped without a final envelope.
   */
  close(now = this.#clock()): Uint8Array | undefined {
    if (this.#closed) return undefined;
    let fin: Uint8Array | undefined;
    try {
      const s = this.#stream;
      if (s && !this.#identity.closed) fin = this.#finish(s, now);
    } finally {
      this.#wipe();
    }
    return fin;
  }

  toJSON(): string {
    return `SessionSender(to ${this.#to}, <redacted>)`;
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toJSON();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------------------------------

/** A checkpoint the recipient verified, for the audit trail. */
export interface SessionCheckpointEvent {
  readonly kind: "checkpoint";
  readonly from: string;
  readonly to: string;
  readonly senderKid: string;
  readonly recipientKid: string;
  /** Stream id (hex). */
  readonly streamId: string;
  readonly firstSeq: number;
  readonly lastSeq: number;
  /** Chain head before `firstSeq` (hex). */
  readonly prevHead: string;
  /** Chain head after `lastSeq` (hex), as signed. */
  readonly head: string;
  /** The sender's Ed25519 signature (base64url). */
  readonly signature: string;
  /** The final checkpoint of the stream. */
  readonly final: boolean;
  /** Envelope digests d_first … d_last (hex), so the record can be re-verified with {@link verifySessionCheckpoint}. */
  readonly digests: readonly string[];
}

/** Something that happened to a stream (for the audit trail and metrics). Listener errors are ignored. */
export type SessionEvent =
  | { readonly kind: "opened"; readonly from: string; readonly to: string; readonly streamId: string; readonly senderKid: string; readonly recipientKid: string }
  | SessionCheckpointEvent
  | {
      /** Envelopes `[firstSeq, lastSeq]` can never be covered by a verified checkpoint: some were lost. */
      readonly kind: "gap";
      readonly from: string;
      readonly streamId: string;
      readonly firstSeq: number;
      readonly lastSeq: number;
    }
  | {
      readonly kind: "closed";
      readonly from: string;
      readonly streamId: string;
      readonly reason: "final" | "evicted" | "expired" | "revoked" | "checkpoint_failed" | "receiver_closed";
      /** Accepted envelopes no verified checkpoint covers (their non-repudiation is lost). */
      readonly uncovered: number;
    };

/** Options for {@link SessionReceiver}: the {@link EnvelopeOpener} options plus the stream limits. */
export interface SessionReceiverOptions extends OpenerOptions {
  /** Streams held at once (LRU). @default DEFAULT_MAX_STREAMS */
  maxStreams?: number;
  /** Streams held per sender (its least recently used is evicted first). @default DEFAULT_MAX_STREAMS_PER_SENDER */
  maxStreamsPerSender?: number;
  /** Highest sequence number accepted on a stream. @default DEFAULT_STREAM_MAX_MESSAGES */
  maxMessages?: number;
  /** Age (receiver clock) after which a stream is forgotten. @default DEFAULT_STREAM_MAX_AGE_MS + STREAM_AGE_GRACE_MS */
  maxStreamAgeMs?: number;
  /** Replay window in sequence numbers, a multiple of 32. @default DEFAULT_REPLAY_WINDOW */
  replayWindow?: number;
  /** Accepted envelopes held uncovered by a verified checkpoint, per stream, before the stream is refused. @default DEFAULT_MAX_UNCHECKPOINTED */
  maxUncheckpointed?: number;
  /** Called synchronously for each {@link SessionEvent}. */
  onEvent?: (event: SessionEvent) => void;
}

interface PendingCheckpoint {
  readonly first: number;
  readonly prev: Uint8Array;
  readonly sig: Uint8Array;
  readonly fin: boolean;
}

/** Recipient-side state of one stream. */
class RecvStream {
  readonly sidHex: string;
  readonly sidHi: number;
  readonly sidLo: number;
  /** Highest accepted seq, and the replay bitmap of the window below it (bit seq mod W). */
  top = 0;
  readonly bits: Uint32Array;
  /** End of the resolved prefix (verified or given up as a gap) and its head when verified. */
  ckptPos = -1;
  ckptHead: Uint8Array | null;
  /** Ring of d_s for accepted seqs in (ckptPos, top], with presence flags. */
  ring: Uint8Array;
  have: Uint8Array;
  cap = 64;
  /** Highest seq whose digest was stored. */
  ringTop = 0;
  readonly pending = new Map<number, PendingCheckpoint>();
  /** The validated constant start of this stream's headers, for the fast header path. */
  readonly known: KnownHeaderPrefix;
  /** Seq of the envelope that carried the final checkpoint (nothing after it is accepted). */
  finalSeq = Infinity;
  dead = false;
  constructor(
    readonly key: string,
    readonly from: string,
    readonly sid: Uint8Array,
    readonly skid: string,
    readonly rkid: string,
    /** The sender's Ed25519 key of `skid` (checkpoints are signed by the key that opened the stream). */
    readonly signPub: Uint8Array,
    readonly ctx: HpkeContext,
    readonly openedAt: number,
    readonly window: number,
    init: Uint8Array,
    to: string,
  ) {
    this.known = { prefix: headerPrefix(sid, from, to), sid, from, to };
    this.sidHex = toHex(sid);
    this.sidHi = readU32(sid, 8);
    this.sidLo = readU32(sid, 12);
    this.bits = new Uint32Array(window >>> 5);
    this.bits[0] = 1; // seq 0, the opening envelope
    this.ckptHead = init;
    this.ring = new Uint8Array(this.cap * 32);
    this.have = new Uint8Array(this.cap);
  }

  /** RFC 4303 §3.4.3: 0 = new, 1 = already seen, 2 = older than the window. */
  seen(seq: number): 0 | 1 | 2 {
    if (seq > this.top) return 0;
    if (this.top - seq >= this.window) return 2;
    const i = seq & (this.window - 1);
    return (this.bits[i >>> 5]! >>> (i & 31)) & 1 ? 1 : 0;
  }
  mark(seq: number): void {
    const w = this.window;
    if (seq > this.top) {
      if (seq - this.top >= w) this.bits.fill(0);
      else {
        for (let s = this.top + 1; s < seq; s++) {
          const i = s & (w - 1);
          this.bits[i >>> 5]! &= ~(1 << (i & 31));
        }
      }
      this.top = seq;
    }
    const i = seq & (w - 1);
    this.bits[i >>> 5]! |= 1 << (i & 31);
  }

  // The ring holds (ckptPos, ringTop] with cap >= ringTop - ckptPos, so an in-range seq owns its slot alone.
  hasDigest(seq: number): boolean {
    return seq > this.ckptPos && seq <= this.ringTop && this.have[seq & (this.cap - 1)] === 1;
  }
  /** Stores d_seq (callers bound seq - ckptPos by maxUncheckpointed first). Resolved seqs are not stored. */
  putDigest(seq: number, d: Uint8Array): void {
    if (seq <= this.ckptPos) return;
    const hi = seq > this.ringTop ? seq : this.ringTop;
    if (hi - this.ckptPos > this.cap) this.grow(hi - this.ckptPos);
    const slot = seq & (this.cap - 1);
    this.ring.set(d, slot * 32);
    this.have[slot] = 1;
    this.ringTop = hi;
  }
  grow(need: number): void {
    let cap = this.cap;
    while (cap < need) cap *= 2;
    const ring = new Uint8Array(cap * 32);
    const have = new Uint8Array(cap);
    for (let s = this.ckptPos + 1; s <= this.ringTop; s++) {
      const o = s & (this.cap - 1);
      if (this.have[o] !== 1) continue;
      const n = s & (cap - 1);
      ring.set(this.ring.subarray(o * 32, o * 32 + 32), n * 32);
      have[n] = 1;
    }
    this.ring.fill(0);
    this.ring = ring;
    this.have = have;
    this.cap = cap;
  }
  /** d_first … d_last as one or two views of the ring (the range is complete). */
  digestParts(first: number, last: number): Uint8Array[] {
    const a = first & (this.cap - 1);
    const b = last & (this.cap - 1);
    if (a <= b) return [this.ring.subarray(a * 32, (b + 1) * 32)];
    return [this.ring.subarray(a * 32), this.ring.subarray(0, (b + 1) * 32)];
  }
  /** Marks everything up to `pos` resolved and frees its digest slots. */
  resolveTo(pos: number, head: Uint8Array | null): void {
    for (let s = Math.max(this.ckptPos + 1, pos - this.cap + 1); s <= pos; s++) this.have[s & (this.cap - 1)] = 0;
    this.ckptPos = pos;
    this.ckptHead = head;
  }
  /** Accepted envelopes not covered by a verified checkpoint. */
  uncovered(): number {
    let n = 0;
    for (let i = 0; i < this.cap; i++) n += this.have[i]!;
    return n;
  }
}

const INTERNAL = Symbol("sealwire.session.internal");

interface SignedInternal {
  readonly kind: "signed";
  readonly env: VerifiedEnvelope;
}
interface ContinuationInternal {
  readonly kind: "session";
  readonly stream: RecvStream;
  readonly wire: SessionWireHeader;
  readonly headerBytes: Uint8Array;
  readonly ciphertext: Uint8Array;
  readonly canonical: Uint8Array | undefined;
}

/** An envelope that passed every check before decryption ({@link SessionReceiver.verify}). */
export interface VerifiedSessionEnvelope {
  /** `signed`: an envelope v1 (it may open a stream, known after decryption); `session`: a continuation. */
  readonly mode: "signed" | "session";
  /** The authenticated header; a {@link SessionHeader} for continuations. */
  readonly header: EnvelopeHeader | SessionHeader;
  readonly sender: TrustEntry;
  /** Total size on the wire. */
  readonly size: number;
  /** @internal */
  readonly [INTERNAL]: SignedInternal | ContinuationInternal;
}

/** The result of {@link SessionReceiver.decrypt} / {@link SessionReceiver.open}. */
export interface OpenedSessionEnvelope {
  /** `signed`: a plain signed envelope; `open`: a signed envelope that opened a stream; `session`: a continuation. */
  readonly mode: "signed" | "open" | "session";
  /** For `open` and `session`, a {@link SessionHeader}. */
  readonly header: EnvelopeHeader | SessionHeader;
  readonly sender: TrustEntry;
  /** The payload as sealed (e.g. for `decodePayload`); empty for control envelopes. The caller may wipe it. */
  readonly plaintext: Uint8Array;
  /** True for sealwire's checkpoint and close envelopes: nothing to deliver to the application. */
  readonly control: boolean;
  /** Envelope digest d_s (for `open` and `session`), as the checkpoints chain it. */
  readonly digest: Uint8Array | undefined;
}

/**
 * Opens signed envelopes and stream envelopes addressed to one identity. Holds the recipient HPKE context of each
 * open stream per (sender, stream id), bounded; call {@link close} to wipe them all.
 */
export class SessionReceiver {
  readonly #opener: EnvelopeOpener;
  #identity: Identity;
  readonly #trust: TrustStore;
  readonly #max: number;
  readonly #skew: number;
  readonly #now: () => number;
  #unsubscribeIdentity: () => void;
  readonly #maxStreams: number;
  readonly #maxPerSender: number;
  readonly #maxMessages: number;
  readonly #maxAgeMs: number;
  readonly #window: number;
  readonly #maxUncovered: number;
  readonly #onEvent: ((e: SessionEvent) => void) | undefined;
  readonly #streams = new Map<string, RecvStream>();
  readonly #perSender = new Map<string, number>();
  readonly #unsubscribe: (() => void)[] = [];
  #mru: RecvStream | undefined;
  #closed = false;

  constructor(options: SessionReceiverOptions) {
    // The opener validates identity, trust, size and skew options and runs the signed-envelope checks unchanged.
    this.#opener = new EnvelopeOpener(options);
    this.#identity = options.identity;
    this.#trust = options.trust;
    this.#max = options.maxEnvelopeBytes ?? MAX_ENVELOPE_BYTES;
    this.#skew = options.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS;
    this.#now = options.now ?? Date.now;
    this.#maxStreams = posInt(options.maxStreams ?? DEFAULT_MAX_STREAMS, "maxStreams", 1, 1 << 20);
    this.#maxPerSender = posInt(options.maxStreamsPerSender ?? DEFAULT_MAX_STREAMS_PER_SENDER, "maxStreamsPerSender", 1, 1 << 20);
    this.#maxMessages = posInt(options.maxMessages ?? DEFAULT_STREAM_MAX_MESSAGES, "maxMessages", 2, MAX_STREAM_SEQ);
    this.#maxAgeMs = posInt(options.maxStreamAgeMs ?? DEFAULT_STREAM_MAX_AGE_MS + STREAM_AGE_GRACE_MS, "maxStreamAgeMs", 1, 7 * MAX_TTL_MS);
    this.#window = posInt(options.replayWindow ?? DEFAULT_REPLAY_WINDOW, "replayWindow", 32, 1 << 16);
    if (this.#window & (this.#window - 1)) throw sealwireError("ERR_INVALID_ARGUMENT", "replayWindow must be a power of two (32 to 65536)");
    this.#maxUncovered = posInt(options.maxUncheckpointed ?? DEFAULT_MAX_UNCHECKPOINTED, "maxUncheckpointed", 2, 1 << 20);
    if (options.onEvent !== undefined && typeof options.onEvent !== "function") throw sealwireError("ERR_INVALID_ARGUMENT", "onEvent must be a function");
    this.#onEvent = options.onEvent;
    this.#unsubscribe.push(this.#trust.onRevoke((e) => this.#dropSender(e.id, "revoked")));
    this.#unsubscribeIdentity = this.#identity.onClose(() => this.close());
  }

  /**
   * After a key rotation: opens new envelopes with `next`, and signed envelopes sealed to the previous identity
   * until `previousUntil` ({@link EnvelopeOpener.rotateTo}). Streams already open keep their keys until they end.
   */
  rotateTo(next: Identity, previousUntil: number): void {
    this.#alive();
    this.#opener.rotateTo(next, previousUntil);
    this.#unsubscribeIdentity();
    this.#identity = next;
    this.#unsubscribeIdentity = next.onClose(() => this.close());
  }

  /** Number of streams held. */
  get streamCount(): number {
    return this.#streams.size;
  }
  /** True if the stream `streamId` (hex) from `from` is held. */
  hasStream(from: string, streamId: string): boolean {
    return this.#streams.has(`${from}:${streamId}`);
  }
  /** True after {@link close}. */
  get closed(): boolean {
    return this.#closed;
  }

  #alive(): void {
    if (this.#closed) throw sealwireError("ERR_CLOSED", "session receiver was closed; create a new one");
  }

  /**
   * Every check before decryption (see the module docs for the order), for signed envelopes and continuations.
   * For a signed envelope the id is recorded as seen (as {@link EnvelopeOpener.verify} does); a continuation's
   * replay window moves only in {@link decrypt}, after the AEAD accepted it.
   */
  verify(bytes: Uint8Array): VerifiedSessionEnvelope {
    this.#alive();
    if (!(bytes instanceof Uint8Array)) throw sealwireError("ERR_DECODE", "expected bytes");
    if (bytes.length > this.#max) {
      throw sealwireError("ERR_ENVELOPE_TOO_LARGE", `envelope of ${bytes.length} bytes exceeds the ${this.#max}-byte limit`);
    }
    if (bytes[1] === SESSION_VERSION && (bytes[0]! & 0xf0) === 0x90) return this.#verifyContinuation(bytes);
    if (!(bytes[0] === 0x94 && bytes[1] === ENVELOPE_VERSION)) {
      // Not the usual shape of either: find the version the strict way (hostile input; not the hot path).
      const outer = decodeStrict(bytes, { maxBytes: this.#max, maxDepth: 1, maxItems: 5 });
      if (Array.isArray(outer) && outer[0] === SESSION_VERSION) return this.#verifyContinuation(bytes);
    }
    const env = this.#opener.verify(bytes);
    return { mode: "signed", header: env.header, sender: env.sender, size: env.size, [INTERNAL]: { kind: "signed", env } };
  }

  #verifyContinuation(bytes: Uint8Array): VerifiedSessionEnvelope {
    const [headerBytes, ciphertext, canonical] = splitFrame(bytes, this.#max);
    const mru = this.#mru;
    const h = decodeSessionHeader(headerBytes, mru !== undefined && !mru.dead ? mru.known : undefined);
    // Trust is looked up on every envelope: a revocation stops open streams at once.
    const sender = this.#trust.require(h.from);
    const sidHex = mru !== undefined && h.sid === mru.sid ? mru.sidHex : toHex(h.sid);
    if (h.to !== this.#identity.id) {
      const id = wireId(h, sidHex);
      throw sealwireError("ERR_WRONG_RECIPIENT", `envelope ${id} is addressed to another agent`, { envelopeId: id });
    }
    const now = this.#now();
    if (now > h.ts + h.ttl + this.#skew) {
      const id = wireId(h, sidHex);
      throw sealwireError("ERR_EXPIRED", `envelope ${id} expired`, { envelopeId: id });
    }
    if (h.ts > now + this.#skew) {
      const id = wireId(h, sidHex);
      throw sealwireError("ERR_FROM_FUTURE", `envelope ${id} was created in the future; check both clocks`, { envelopeId: id });
    }
    const s = this.#lookup(h.from, sidHex, now);
    // The key the stream was opened with must still be trusted (current, or previous within a rotation's overlap:
    // ERR_KEY_RETIRED after it).
    if (s && s.skid !== sender.identity.kid) this.#trust.keysFor(h.from, s.skid, now);
    if (!s || h.seq > this.#maxMessages || h.seq > s.finalSeq) {
      const id = wireId(h, sidHex);
      // Nothing about the stream changes here: this envelope is not authenticated yet.
      throw sealwireError("ERR_UNKNOWN_STREAM", `envelope ${id} belongs to a stream this agent does not hold (evicted, expired or ended); the sender must re-open it`, {
        envelopeId: id,
      });
    }
    const r = s.seen(h.seq);
    if (r !== 0) {
      const id = wireId(h, sidHex);
      throw sealwireError("ERR_REPLAY", r === 1 ? `envelope ${id} was already received` : `envelope ${id} is older than the replay window`, { envelopeId: id });
    }
    const header = apiHeader(h, s.sidHex, s.sidHi, s.sidLo, s.skid, s.rkid);
    return { mode: "session", header, sender, size: bytes.length, [INTERNAL]: { kind: "session", stream: s, wire: h, headerBytes, ciphertext, canonical } };
  }

  /** The held stream, refreshed in LRU order, or undefined (expired streams are dropped here, by the local clock). */
  #lookup(from: string, sidHex: string, now: number): RecvStream | undefined {
    let s = this.#mru;
    if (s === undefined || s.from !== from || s.sidHex !== sidHex || s.dead) {
      s = this.#streams.get(`${from}:${sidHex}`);
      if (!s) return undefined;
      // Least-recently-used order: a hit moves to the back.
      this.#streams.delete(s.key);
      this.#streams.set(s.key, s);
      this.#mru = s;
    }
    if (now - s.openedAt > this.#maxAgeMs) {
      this.#dropStream(s, "expired");
      return undefined;
    }
    return s;
  }

  /**
   * Decrypts a verified envelope. A signed envelope that opens a stream registers it; a continuation moves the
   * replay window, records its digest and processes its checkpoint. Throws ERR_DECRYPT, ERR_PAYLOAD,
   * ERR_UNKNOWN_STREAM (the stream ended since verify), ERR_REPLAY (a copy was accepted since verify),
   * ERR_CHECKPOINT (the stream is then closed).
   */
  decrypt(v: VerifiedSessionEnvelope): OpenedSessionEnvelope {
    this.#alive();
    const internal = v?.[INTERNAL];
    if (internal === undefined) throw sealwireError("ERR_INVALID_ARGUMENT", "decrypt takes what verify returned");
    return internal.kind === "signed" ? this.#decryptSigned(internal.env) : this.#decryptContinuation(v, internal);
  }

  /** verify → decrypt. */
  open(bytes: Uint8Array): OpenedSessionEnvelope {
    return this.decrypt(this.verify(bytes));
  }

  #decryptSigned(env: VerifiedEnvelope): OpenedSessionEnvelope {
    // The identity the envelope is sealed to (during a rotation overlap, the previous one).
    const me = env.recipient;
    const p = me.provider;
    const h = env.header;
    // As EnvelopeOpener.decrypt: setupAuthR fails with ERR_DECRYPT on a bad `enc`, ERR_CLOSED on a closed identity.
    const ctx = setupAuthR(p, env.wire.enc, me.sealingKey(), HPKE_INFO, p.x25519Public(env.sender.sealPublicKey));
    let pt: Uint8Array;
    try {
      pt = ctx.open(env.headerBytes, env.ciphertext);
    } catch (e) {
      ctx.destroy();
      throw sealwireError("ERR_DECRYPT", `envelope ${h.id} could not be decrypted`, { envelopeId: h.id, cause: e });
    }
    if (pt[0] !== SESSION_OPEN_KIND) {
      ctx.destroy();
      return { mode: "signed", header: h, sender: env.sender, plaintext: pt, control: false, digest: undefined };
    }
    if (pt[1] !== SESSION_OPEN_VERSION) {
      ctx.destroy();
      pt.fill(0);
      throw sealwireError("ERR_PAYLOAD", `envelope ${h.id} opens a stream of an unsupported session version`, { envelopeId: h.id });
    }
    const plaintext = pt.slice(2);
    pt.fill(0);
    const key = `${h.from}:${h.id}`;
    if (this.#streams.has(key)) {
      // The replay cache should have refused it already; never let a copy reset a live stream's window.
      ctx.destroy();
      plaintext.fill(0);
      throw sealwireError("ERR_REPLAY", `envelope ${h.id} was already received`, { envelopeId: h.id });
    }
    const sid = new Uint8Array(Buffer.from(h.id, "hex"));
    const s = new RecvStream(
      key,
      h.from,
      sid,
      h.senderKid,
      h.recipientKid,
      Uint8Array.from(env.sender.signPublicKey),
      ctx,
      this.#now(),
      this.#window,
      sessionChainInit(p, sid),
      h.to,
    );
    const digest = sessionEnvelopeDigest(p, env.headerBytes, env.ciphertext);
    s.putDigest(0, digest);
    this.#admit(s);
    this.#emit({ kind: "opened", from: h.from, to: h.to, streamId: s.sidHex, senderKid: h.senderKid, recipientKid: h.recipientKid });
    const header: SessionHeader = Object.freeze({ ...h, streamId: s.sidHex, seq: 0 });
    return { mode: "open", header, sender: env.sender, plaintext, control: h.type === OPEN_TYPE, digest };
  }

  /** Registers a stream, evicting the sender's (then anyone's) least recently used beyond the limits. */
  #admit(s: RecvStream): void {
    const n = this.#perSender.get(s.from) ?? 0;
    if (n >= this.#maxPerSender) {
      for (const o of this.#streams.values()) {
        if (o.from === s.from) {
          this.#dropStream(o, "evicted");
          break;
        }
      }
    }
    if (this.#streams.size >= this.#maxStreams) {
      const oldest = this.#streams.values().next().value;
      if (oldest) this.#dropStream(oldest, "evicted");
    }
    this.#streams.set(s.key, s);
    this.#perSender.set(s.from, (this.#perSender.get(s.from) ?? 0) + 1);
    this.#mru = s;
  }

  #dropStream(s: RecvStream, reason: "final" | "evicted" | "expired" | "revoked" | "checkpoint_failed" | "receiver_closed"): void {
    if (s.dead) return;
    s.dead = true;
    const uncovered = s.uncovered();
    s.ctx.destroy();
    s.ring.fill(0);
    s.pending.clear();
    if (this.#streams.get(s.key) === s) {
      this.#streams.delete(s.key);
      const n = (this.#perSender.get(s.from) ?? 1) - 1;
      if (n <= 0) this.#perSender.delete(s.from);
      else this.#perSender.set(s.from, n);
    }
    if (this.#mru === s) this.#mru = undefined;
    this.#emit({ kind: "closed", from: s.from, streamId: s.sidHex, reason, uncovered });
  }

  #dropSender(from: string, reason: "revoked"): void {
    for (const s of [...this.#streams.values()]) if (s.from === from) this.#dropStream(s, reason);
  }

  #emit(e: SessionEvent): void {
    if (!this.#onEvent) return;
    try {
      this.#onEvent(e);
    } catch {
      /* a listener's failure must not change what was accepted */
    }
  }

  #decryptContinuation(v: VerifiedSessionEnvelope, c: ContinuationInternal): OpenedSessionEnvelope {
    const s = c.stream;
    const h = c.wire;
    const id = v.header.id;
    // Re-checked: the policy hook may have awaited between verify and decrypt.
    if (s.dead || h.seq > s.finalSeq) {
      throw sealwireError("ERR_UNKNOWN_STREAM", `envelope ${id} belongs to a stream that ended; the sender must re-open it`, { envelopeId: id });
    }
    if (s.seen(h.seq) !== 0) throw sealwireError("ERR_REPLAY", `envelope ${id} was already received`, { envelopeId: id });
    let pt: Uint8Array;
    try {
      pt = s.ctx.openAt(h.seq, c.headerBytes, c.ciphertext);
    } catch (e) {
      throw sealwireError("ERR_DECRYPT", `envelope ${id} could not be decrypted`, { envelopeId: id, cause: e });
    }
    // Authentic from here on (only the sender, or we, hold the key): the window and the chain may move.
    s.mark(h.seq);
    const p = this.#identity.provider;
    const digest = c.canonical !== undefined ? p.hash("sha256", c.canonical) : sessionEnvelopeDigest(p, c.headerBytes, c.ciphertext);
    try {
      if (h.seq - s.ckptPos > this.#maxUncovered) {
        // Far ahead of the verified chain: lost intervals may resolve as gaps first; else the sender is not
        // checkpointing and we will not hold its digests without bound.
        if (s.pending.size > 0) this.#resolve(s, id);
        if (!s.dead && h.seq - s.ckptPos > this.#maxUncovered) {
          this.#fail(s, id, `no verified checkpoint within the last ${this.#maxUncovered} sequence numbers (the sender is not checkpointing, or too many envelopes were lost); the sender must re-open`);
        }
      }
      s.putDigest(h.seq, digest);
      if (h.ck !== undefined) {
        if (s.pending.size >= MAX_PENDING_CHECKPOINTS) this.#fail(s, id, "too many checkpoints wait for missing envelopes");
        s.pending.set(h.seq, { first: u64At(h.ck, 0), prev: h.ck.slice(8, 40), sig: h.ck.slice(40, 104), fin: h.fin === true });
        if (h.fin === true) {
          if (s.top > h.seq) this.#fail(s, id, "envelopes follow the final checkpoint");
          s.finalSeq = h.seq;
        }
      }
      if (s.pending.size > 0 && !s.dead) this.#resolve(s, id);
    } catch (e) {
      pt.fill(0);
      throw e;
    }
    const control = h.type === CHECKPOINT_TYPE || h.type === CLOSE_TYPE || h.type === OPEN_TYPE;
    return { mode: "session", header: v.header, sender: v.sender, plaintext: pt, control, digest };
  }

  /** Refuses the envelope and closes the stream: a checkpoint did not verify. */
  #fail(s: RecvStream, id: string, why: string): never {
    this.#dropStream(s, "checkpoint_failed");
    throw sealwireError("ERR_CHECKPOINT", `stream ${s.sidHex} from "${safeId(s.from)}": ${why}; the stream was closed (envelope ${id})`, { envelopeId: id });
  }

  /** Verifies pending checkpoints in order, as far as the received envelopes allow (module docs). */
  #resolve(s: RecvStream, id: string): void {
    const low = s.top - this.#window + 1; // a missing seq below this can never be accepted any more
    for (;;) {
      if (s.dead || s.pending.size === 0) return;
      let carrier = Infinity;
      for (const k of s.pending.keys()) if (k < carrier) carrier = k;
      const ck = s.pending.get(carrier)!;
      if (ck.first <= s.ckptPos) this.#fail(s, id, "a checkpoint overlaps one already verified");
      if (ck.first > s.ckptPos + 1) {
        // The checkpoint before this one travels on envelope `ck.first` (it covers up to ck.first - 1).
        if (s.hasDigest(ck.first)) this.#fail(s, id, "a checkpoint skips envelopes no checkpoint covered");
        if (ck.first >= low) return; // it may still arrive
        this.#gap(s, ck.first - 1);
        continue;
      }
      const last = carrier - 1;
      let missing = -1;
      for (let q = ck.first; q <= last; q++) {
        if (!s.hasDigest(q)) {
          missing = q;
          break;
        }
      }
      if (missing >= 0) {
        let lost = false;
        for (let q = missing; q <= last && !lost; q++) if (q < low && !s.hasDigest(q)) lost = true;
        if (!lost) return;
        s.pending.delete(carrier);
        this.#gap(s, last);
        if (ck.fin) this.#finalDrop(s, carrier);
        continue;
      }
      const p = this.#identity.provider;
      if (s.ckptHead !== null && !equalBytes(s.ckptHead, ck.prev)) this.#fail(s, id, "a checkpoint does not extend the verified chain");
      const parts = s.digestParts(ck.first, last);
      const head = sessionChainHead(p, s.sid, ck.first, last, ck.prev, ...parts);
      const tp = this.#trust.provider;
      const msg = checkpointSignedBytes(s.sid, s.skid, s.rkid, ck.first, last, ck.prev, head, ck.fin);
      if (!tp.ed25519Verify(tp.ed25519Public(s.signPub), msg, ck.sig)) this.#fail(s, id, "a checkpoint signature does not verify");
      s.pending.delete(carrier);
      if (this.#onEvent) {
        const digests: string[] = [];
        for (const part of parts) for (let o = 0; o < part.length; o += 32) digests.push(toHex(part.subarray(o, o + 32)));
        this.#emit({
          kind: "checkpoint",
          from: s.from,
          to: this.#identity.id,
          senderKid: s.skid,
          recipientKid: s.rkid,
          streamId: s.sidHex,
          firstSeq: ck.first,
          lastSeq: last,
          prevHead: toHex(ck.prev),
          head: toHex(head),
          signature: Buffer.from(ck.sig).toString("base64url"),
          final: ck.fin,
          digests: Object.freeze(digests),
        });
      }
      // After the event: resolveTo frees the ring slots `parts` views.
      s.resolveTo(last, head);
      if (ck.fin) this.#finalDrop(s, carrier);
    }
  }

  /** The final checkpoint resolved: the stream ends. Its carrier is by definition covered by no checkpoint. */
  #finalDrop(s: RecvStream, carrier: number): void {
    if (s.hasDigest(carrier)) s.have[carrier & (s.cap - 1)] = 0;
    this.#dropStream(s, "final");
  }

  /** Gives up `(ckptPos, pos]` as unverifiable: the chain restarts from the next checkpoint's given head. */
  #gap(s: RecvStream, pos: number): void {
    const first = s.ckptPos + 1;
    s.resolveTo(pos, null);
    this.#emit({ kind: "gap", from: s.from, streamId: s.sidHex, firstSeq: first, lastSeq: pos });
  }

  /** Wipes every stream's keys and stops listening; later calls throw ERR_CLOSED. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#streams.values()]) this.#dropStream(s, "receiver_closed");
    for (const u of this.#unsubscribe.splice(0)) u();
    this.#unsubscribeIdentity();
  }

  toJSON(): string {
    return `SessionReceiver(${this.#identity.id}, ${this.#streams.size} streams, <redacted>)`;
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toJSON();
  }
}

/** True if `err` says the recipient does not hold the stream: call {@link SessionSender.reset} and send again. */
export function isUnknownStream(err: unknown): boolean {
  return SealwireError.is(err, "ERR_UNKNOWN_STREAM");
}
