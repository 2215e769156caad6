/**
 * Envelope v1: signed (Ed25519) and sealed (HPKE auth mode) to one recipient, with a policy-tagged header that
 * relays can read and route on but cannot change.
 *
 * Wire format (MessagePack): `[1, header: bin, ciphertext: bin, signature: bin]`.
 * - `header` is the MessagePack encoding of {@link EnvelopeHeader}. The exact bytes are the AEAD associated data
 *   and are covered by the signature, so a relay that strips or edits a tag breaks both.
 * - `ciphertext` is HPKE `Seal(aad = header, pt = payload)` with `info = "sealwire/v1/envelope"`, auth mode, to the
 *   recipient's X25519 key, from the sender's X25519 key; the encapsulated key is `header.enc`.
 * - `signature` is Ed25519 over `"sealwire/v1/envelope:" || u32be(len(header)) || header || ciphertext`, by the
 *   sender's signing key: the bytes that travel, never a re-encoding.
 *
 * `open` checks, in this order, each failing closed with its own code: size (ERR_ENVELOPE_TOO_LARGE) → decode
 * (ERR_DECODE) → schema (ERR_SCHEMA) → known, unrevoked sender (ERR_UNKNOWN_PEER / ERR_REVOKED_PEER) → signature
 * (ERR_BAD_SIGNATURE) → addressed to me, id and kid (ERR_WRONG_RECIPIENT) → not expired / not from the future
 * (ERR_EXPIRED / ERR_FROM_FUTURE) → not replayed (ERR_REPLAY) → [policy, header stage] → decrypt (ERR_DECRYPT) →
 * payload (ERR_PAYLOAD). Plaintext is released only after every check passed.
 *
 * @module
 * @example
 * ```ts
 * const { bytes } = sealEnvelope(alice, trust.require("bob"), encodePayload({ hi: 1 }), { tags: { pii: [] } });
 * const opener = new EnvelopeOpener({ identity: bob, trust });
 * const { header, plaintext } = opener.open(bytes);
 * ```
 */
import { z } from "zod";
import { concatBytes, toHex, utf8 } from "./_bytes.js";
import { decodeStrict, encode } from "./codec.js";
import { sealwireError } from "./errors.js";
import { setupAuthR, setupAuthS, type HpkeContext } from "./hpke.js";
import { AGENT_ID_RE, type Identity } from "./identity.js";
import type { ReplayGuard } from "./replay-guard.js";
import { PII_TAG_RE, type TrustEntry, type TrustStore } from "./trust.js";

/** Envelope format version. */
export const ENVELOPE_VERSION = 1;
/** Default largest envelope accepted, in bytes (checked before decoding). */
export const MAX_ENVELOPE_BYTES = 1024 * 1024;
/** Default time to live. */
export const DEFAULT_TTL_MS = 5 * 60_000;
/** Largest time to live an envelope may carry (bounds the replay cache). */
export const MAX_TTL_MS = 24 * 60 * 60_000;
/** Default tolerated clock difference between sender and recipient. */
export const DEFAULT_CLOCK_SKEW_MS = 30_000;

const SIG_DOMAIN = utf8("sealwire/v1/envelope:");
/** HPKE `info`: binds the key schedule to this protocol and version. */
export const HPKE_INFO = utf8("sealwire/v1/envelope");

/** Policy tags, carried in the signed header. */
export interface Tags {
  /** PII classes present in the payload, e.g. `["pii:email"]`. */
  pii: string[];
  /** Free-form data classification label (e.g. `internal`, `confidential`). */
  classification?: string;
  /** The payload was anonymized (requires an attestation under the policy rules). */
  anonymized: boolean;
}

const bytesOf = (n: number) =>
  z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === n, { message: `expected ${n} bytes` });

/** Strict schema for the decoded header (zod `strictObject`: unknown fields are refused). */
export const headerSchema = z.strictObject({
  v: z.literal(ENVELOPE_VERSION),
  id: bytesOf(16),
  from: z.string().regex(AGENT_ID_RE),
  to: z.string().regex(AGENT_ID_RE),
  skid: z.string().regex(/^[0-9a-f]{16}$/),
  rkid: z.string().regex(/^[0-9a-f]{16}$/),
  ts: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  ttl: z.number().int().min(1).max(MAX_TTL_MS),
  type: z.string().regex(/^[a-z][a-z0-9._-]{0,31}$/),
  tags: z.strictObject({
    pii: z.array(z.string().regex(PII_TAG_RE)).max(32),
    cls: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,31}$/).optional(),
    anon: z.boolean(),
  }),
  enc: bytesOf(32),
  re: bytesOf(16).optional(),
});

/** The wire header as decoded. */
export type WireHeader = z.infer<typeof headerSchema>;

/** The authenticated header, in API form (ids as hex). */
export interface EnvelopeHeader {
  /** Envelope id, 32 hex characters. */
  readonly id: string;
  readonly from: string;
  readonly to: string;
  /** Sender and recipient key ids. */
  readonly senderKid: string;
  readonly recipientKid: string;
  /** Creation time, ms since the epoch (sender's clock). */
  readonly createdAt: number;
  readonly ttlMs: number;
  /** Message type (`msg`, `req`, `rep`, or an application type). */
  readonly type: string;
  readonly tags: Readonly<Tags>;
  /** The id this envelope replies to, if any. */
  readonly replyTo: string | undefined;
}

function toApiHeader(h: WireHeader): EnvelopeHeader {
  const tags: Tags = { pii: [...h.tags.pii], anonymized: h.tags.anon };
  if (h.tags.cls !== undefined) tags.classification = h.tags.cls;
  return Object.freeze({
    id: toHex(h.id),
    from: h.from,
    to: h.to,
    senderKid: h.skid,
    recipientKid: h.rkid,
    createdAt: h.ts,
    ttlMs: h.ttl,
    type: h.type,
    tags: Object.freeze(tags),
    replyTo: h.re ? toHex(h.re) : undefined,
  });
}

/** Tags as callers may give them. */
export interface TagsInit {
  pii?: string[];
  classification?: string;
  anonymized?: boolean;
}

/** Options for {@link sealEnvelope}. */
export interface SealOptions {
  tags?: TagsInit;
  /** @default "msg" */
  type?: string;
  /** @default DEFAULT_TTL_MS */
  ttlMs?: number;
  /** Envelope id (hex) this replies to. */
  replyTo?: string;
  /** Envelope id (32 hex characters) chosen by the caller. @default 16 random bytes */
  id?: string;
  /** Clock, for tests. @default Date.now */
  now?: number;
}

function normalizeTags(t: TagsInit | undefined): WireHeader["tags"] {
  if (t !== undefined && (typeof t !== "object" || t === null)) throw sealwireError("ERR_INVALID_ARGUMENT", "tags must be an object");
  const pii = t?.pii ?? [];
  if (!Array.isArray(pii) || pii.length > 32 || !pii.every((x) => typeof x === "string" && PII_TAG_RE.test(x))) {
    throw sealwireError("ERR_INVALID_ARGUMENT", 'tags.pii must be at most 32 names like "pii:email"');
  }
  const out: WireHeader["tags"] = { pii: [...new Set(pii)].sort(), anon: t?.anonymized ?? false };
  if (typeof out.anon !== "boolean") throw sealwireError("ERR_INVALID_ARGUMENT", "tags.anonymized must be a boolean");
  if (t?.classification !== undefined) {
    if (typeof t.classification !== "string" || !/^[a-z0-9][a-z0-9_-]{0,31}$/.test(t.classification)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "tags.classification must be 1-32 lower-case letters, digits, _ or -");
    }
    out.cls = t.classification;
  }
  return out;
}

function parseId(id: unknown, what: string): Uint8Array {
  if (typeof id !== "string" || !/^[0-9a-f]{32}$/.test(id)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be an envelope id (32 lower-case hex characters)`);
  }
  return new Uint8Array(Buffer.from(id, "hex"));
}

function signedBytes(header: Uint8Array, ct: Uint8Array): Uint8Array {
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, header.length);
  return concatBytes(SIG_DOMAIN, len, header, ct);
}

/** A sealed envelope ready for the wire. */
export interface SealedEnvelope {
  readonly bytes: Uint8Array;
  readonly header: EnvelopeHeader;
}

/**
 * Seals `payload` from `sender` to `recipient`. Throws ERR_REVOKED_PEER for a revoked recipient, ERR_CLOSED for a
 * closed identity, ERR_INVALID_ARGUMENT for bad options.
 */
export function sealEnvelope(sender: Identity, recipient: TrustEntry, payload: Uint8Array, options: SealOptions = {}): SealedEnvelope {
  if (recipient.revoked) throw sealwireError("ERR_REVOKED_PEER", `peer "${recipient.id}" was revoked`);
  const p = sender.provider;
  const ttl = options.ttlMs ?? DEFAULT_TTL_MS;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_MS) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `ttlMs must be an integer from 1 to ${MAX_TTL_MS}`);
  }
  const type = options.type ?? "msg";
  if (typeof type !== "string" || !/^[a-z][a-z0-9._-]{0,31}$/.test(type)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "type must be 1-32 characters: a lower-case letter, then a-z 0-9 . _ -");
  }
  const wire: WireHeader = {
    v: ENVELOPE_VERSION,
    id: options.id !== undefined ? parseId(options.id, "id") : p.randomBytes(16),
    from: sender.id,
    to: recipient.id,
    skid: sender.kid,
    rkid: recipient.identity.kid,
    ts: options.now ?? Date.now(),
    ttl,
    type,
    tags: normalizeTags(options.tags),
    enc: new Uint8Array(0), // set below
  };
  if (options.replyTo !== undefined) wire.re = parseId(options.replyTo, "replyTo");
  const sealed = sealWire(sender, recipient, wire, payload);
  sealed.ctx.destroy();
  return { bytes: sealed.bytes, header: toApiHeader(wire) };
}

/**
 * @internal The v1 sealing steps for a prepared header (its `enc` is set here): HPKE auth-mode setup to the
 * recipient, `Seal(aad = header, pt)` at sequence 0, Ed25519 over the exact header and ciphertext bytes. Returns the
 * wire bytes, the header and ciphertext as signed, and the sender's HPKE context, which the CALLER must destroy
 * (session mode keeps it for the stream, `sealEnvelope` destroys it at once).
 */
export function sealWire(
  sender: Identity,
  recipient: TrustEntry,
  wire: WireHeader,
  pt: Uint8Array,
): { bytes: Uint8Array; headerBytes: Uint8Array; ciphertext: Uint8Array; ctx: HpkeContext } {
  const p = sender.provider;
  const { enc, ctx } = setupAuthS(p, p.x25519Public(recipient.sealPublicKey), HPKE_INFO, sender.sealingKey());
  try {
    wire.enc = enc;
    const headerBytes = encode(wire);
    const ciphertext = ctx.seal(headerBytes, pt);
    const sig = sender.sign(signedBytes(headerBytes, ciphertext));
    return { bytes: encode([ENVELOPE_VERSION, headerBytes, ciphertext, sig]), headerBytes, ciphertext, ctx };
  } catch (e) {
    ctx.destroy();
    throw e;
  }
}

/** An envelope whose size, encoding, schema and signature were checked (no recipient checks yet). */
export interface DecodedEnvelope {
  readonly header: EnvelopeHeader;
  readonly wire: WireHeader;
  readonly headerBytes: Uint8Array;
  readonly ciphertext: Uint8Array;
  readonly signature: Uint8Array;
  /** Total size on the wire. */
  readonly size: number;
}

/**
 * size → decode → schema. Safe on any bytes. Does NOT verify the signature: see {@link verifyEnvelopeSignature}.
 */
export function decodeEnvelope(bytes: Uint8Array, maxBytes = MAX_ENVELOPE_BYTES): DecodedEnvelope {
  const outer = decodeStrict(bytes, { maxBytes, maxDepth: 1, maxItems: 5 });
  if (
    !Array.isArray(outer) ||
    outer.length !== 4 ||
    outer[0] !== ENVELOPE_VERSION ||
    !(outer[1] instanceof Uint8Array) ||
    !(outer[2] instanceof Uint8Array) ||
    !(outer[3] instanceof Uint8Array)
  ) {
    throw sealwireError("ERR_DECODE", "malformed envelope encoding");
  }
  const [, headerBytes, ciphertext, signature] = outer as [number, Uint8Array, Uint8Array, Uint8Array];
  if (headerBytes.length > 4096) throw sealwireError("ERR_DECODE", "malformed envelope encoding");
  const raw = decodeStrict(headerBytes, { maxBytes: 4096, maxDepth: 3, maxItems: 128 });
  const parsed = headerSchema.safeParse(raw, { reportInput: false });
  if (!parsed.success) throw sealwireError("ERR_SCHEMA", "envelope header does not match the v1 schema");
  const wire = parsed.data;
  return { header: toApiHeader(wire), wire, headerBytes, ciphertext, signature, size: bytes.length };
}

/**
 * known, unrevoked sender → signature. Returns the sender's trust entry. For relays (the hub) and recipients.
 */
export function verifyEnvelopeSignature(env: DecodedEnvelope, trust: TrustStore, now = Date.now()): TrustEntry {
  const h = env.header;
  // The current key, or the previous one during a rotation's overlap window (ERR_KEY_RETIRED after it).
  const keys = trust.keysFor(h.from, h.senderKid, now);
  const p = trust.provider;
  const ok = p.ed25519Verify(p.ed25519Public(keys.signPublicKey), signedBytes(env.headerBytes, env.ciphertext), env.signature);
  if (!ok) throw sealwireError("ERR_BAD_SIGNATURE", `envelope ${h.id} has an invalid signature`, { envelopeId: h.id });
  // Decryption must use the sealing key of the same key set.
  return keys.kid === keys.entry.identity.kid ? keys.entry : Object.freeze({ ...keys.entry, signPublicKey: keys.signPublicKey, sealPublicKey: keys.sealPublicKey });
}

/** Bounded set of accepted envelope ids, each kept until its ttl window (plus skew) has passed. */
export class ReplayCache implements ReplayGuard {
  readonly #seen = new Map<string, number>();
  readonly maxEntries: number;
  constructor(maxEntries = 100_000) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw sealwireError("ERR_INVALID_ARGUMENT", "maxEntries must be a positive integer");
    this.maxEntries = maxEntries;
  }
  /** Records `id` until `expiresAt`. Returns false if it was already seen. Throws ERR_QUEUE_FULL if full. */
  checkAndAdd(id: string, expiresAt: number, now: number): boolean {
    const prev = this.#seen.get(id);
    if (prev !== undefined && prev >= now) return false;
    if (this.#seen.size >= this.maxEntries) this.#evict(now);
    if (this.#seen.size >= this.maxEntries) {
      // Fail closed: if we cannot remember it, we cannot prove a later copy is a replay.
      throw sealwireError("ERR_QUEUE_FULL", "replay cache is full; the envelope was refused (raise maxEntries or lower ttls)");
    }
    this.#seen.set(id, expiresAt);
    return true;
  }
  #evict(now: number): void {
    for (const [k, exp] of this.#seen) if (exp < now) this.#seen.delete(k);
  }
  get size(): number {
    return this.#seen.size;
  }
}

/** Options for {@link EnvelopeOpener}. */
export interface OpenerOptions {
  identity: Identity;
  trust: TrustStore;
  /** @default MAX_ENVELOPE_BYTES */
  maxEnvelopeBytes?: number;
  /** @default DEFAULT_CLOCK_SKEW_MS */
  clockSkewMs?: number;
  /** @default a new ReplayCache() (in memory); a PersistentReplayCache survives restarts */
  replay?: ReplayGuard;
  /** Clock, for tests. @default Date.now */
  now?: () => number;
}

/** An envelope that passed every check before decryption. */
export interface VerifiedEnvelope extends DecodedEnvelope {
  /** The sender's entry, with the key set the envelope's kid names. */
  readonly sender: TrustEntry;
  /** The identity (current or, during a rotation overlap, previous) the envelope is sealed to. */
  readonly recipient: Identity;
}

/** The result of {@link EnvelopeOpener.open}. */
export interface OpenedEnvelope {
  readonly header: EnvelopeHeader;
  readonly sender: TrustEntry;
  readonly plaintext: Uint8Array;
}

/** Opens envelopes addressed to one identity, in the documented order of checks. */
export class EnvelopeOpener {
  #identity: Identity;
  #previous: { identity: Identity; until: number } | undefined;
  readonly #trust: TrustStore;
  readonly #max: number;
  readonly #skew: number;
  readonly #replay: ReplayGuard;
  readonly #now: () => number;

  constructor(options: OpenerOptions) {
    this.#identity = options.identity;
    this.#trust = options.trust;
    this.#max = options.maxEnvelopeBytes ?? MAX_ENVELOPE_BYTES;
    this.#skew = options.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS;
    this.#replay = options.replay ?? new ReplayCache();
    this.#now = options.now ?? Date.now;
    if (!Number.isInteger(this.#max) || this.#max < 64) throw sealwireError("ERR_INVALID_ARGUMENT", "maxEnvelopeBytes must be an integer >= 64");
    if (!Number.isInteger(this.#skew) || this.#skew < 0) throw sealwireError("ERR_INVALID_ARGUMENT", "clockSkewMs must be a non-negative integer");
  }

  /**
   * Switches to a new identity (after a rotation) while still opening envelopes sealed to the previous one until
   * `previousUntil`. The caller closes the previous identity after that.
   */
  rotateTo(next: Identity, previousUntil: number): void {
    if (next.id !== this.#identity.id) throw sealwireError("ERR_INVALID_ARGUMENT", "a rotated identity must keep the agent id");
    this.#previous = { identity: this.#identity, until: previousUntil };
    this.#identity = next;
  }

  /** Every check up to and including replay. Records the id as seen. */
  verify(bytes: Uint8Array): VerifiedEnvelope {
    const now = this.#now();
    const env = decodeEnvelope(bytes, this.#max);
    const sender = verifyEnvelopeSignature(env, this.#trust, now);
    const h = env.header;
    let me = this.#identity;
    if (this.#previous && h.recipientKid === this.#previous.identity.kid && h.to === me.id) {
      if (now > this.#previous.until || this.#previous.identity.closed) {
        throw sealwireError("ERR_KEY_RETIRED", `envelope ${h.id} is sealed to a retired key of "${me.id}"`, { envelopeId: h.id });
      }
      me = this.#previous.identity;
    }
    if (h.to !== me.id || h.recipientKid !== me.kid) {
      throw sealwireError("ERR_WRONG_RECIPIENT", `envelope ${h.id} is addressed to another agent or key`, { envelopeId: h.id });
    }
    if (now > h.createdAt + h.ttlMs + this.#skew) {
      throw sealwireError("ERR_EXPIRED", `envelope ${h.id} expired`, { envelopeId: h.id });
    }
    if (h.createdAt > now + this.#skew) {
      throw sealwireError("ERR_FROM_FUTURE", `envelope ${h.id} was created in the future; check both clocks`, { envelopeId: h.id });
    }
    // Replays are keyed by sender and id; kept until no copy could pass the expiry check anyway.
    if (!this.#replay.checkAndAdd(`${h.from}/${h.id}`, h.createdAt + h.ttlMs + this.#skew, now)) {
      throw sealwireError("ERR_REPLAY", `envelope ${h.id} was already received`, { envelopeId: h.id });
    }
    return { ...env, sender, recipient: me };
  }

  /** Decrypts a verified envelope. */
  decrypt(env: VerifiedEnvelope): Uint8Array {
    const me = env.recipient;
    const p = me.provider;
    const ctx = setupAuthR(p, env.wire.enc, me.sealingKey(), HPKE_INFO, p.x25519Public(env.sender.sealPublicKey));
    try {
      return ctx.open(env.headerBytes, env.ciphertext);
    } catch (e) {
      throw sealwireError("ERR_DECRYPT", `envelope ${env.header.id} could not be decrypted`, { envelopeId: env.header.id, cause: e });
    } finally {
      ctx.destroy();
    }
  }

  /** verify → decrypt. */
  open(bytes: Uint8Array): OpenedEnvelope {
    const env = this.verify(bytes);
    return { header: env.header, sender: env.sender, plaintext: this.decrypt(env) };
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Payloads: what the application sends, encoded inside the ciphertext.
// ---------------------------------------------------------------------------------------------------------------

/**
 * Application data: bytes, a string, or a plain value built from null, booleans, finite numbers, strings, bytes,
 * arrays and plain objects (JSON plus bytes). Encoded as MessagePack inside the ciphertext.
 */
export type Data = null | boolean | number | string | Uint8Array | Data[] | { [key: string]: Data };

/** Deepest nesting accepted in application data. */
export const MAX_DATA_DEPTH = 64;

const PAYLOAD_PLAIN = 0x00;
const PAYLOAD_ATTESTED = 0x01;

/** Checks that `data` is plain and encodes it as MessagePack (no framing byte). */
export function encodeData(data: Data): Uint8Array {
  try {
    assertPlain(data, 0);
  } catch (e) {
    if (e && (e as { name?: string }).name === "SealwireError") throw e;
    // Never attach the cause: its message could quote the data.
    throw sealwireError("ERR_INVALID_ARGUMENT", "data must be bytes, a string or a plain value (JSON plus Uint8Array)");
  }
  return encode(data);
}

/**
 * Encodes application data as the sealed payload: `0x00 ‖ msgpack(data)`, or, with an anonymization attestation,
 * `0x01 ‖ msgpack([dataBytes, attestation])` so the attestation covers the exact output bytes.
 */
export function encodePayload(data: Data, attestation?: unknown): Uint8Array {
  const body = encodeData(data);
  if (attestation === undefined) return concatBytes(Uint8Array.of(PAYLOAD_PLAIN), body);
  return concatBytes(Uint8Array.of(PAYLOAD_ATTESTED), encode([body, attestation]));
}

function assertPlain(v: unknown, depth: number): void {
  if (depth > MAX_DATA_DEPTH) throw sealwireError("ERR_INVALID_ARGUMENT", `data is nested more than ${MAX_DATA_DEPTH} levels deep`);
  if (v === null || typeof v === "string" || typeof v === "boolean" || v instanceof Uint8Array) return;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw sealwireError("ERR_INVALID_ARGUMENT", "data contains a non-finite number");
    if (Number.isInteger(v) && !Number.isSafeInteger(v)) throw sealwireError("ERR_INVALID_ARGUMENT", "data contains an integer beyond 2^53");
    return;
  }
  if (Array.isArray(v)) {
    for (const x of v) assertPlain(x, depth + 1);
    return;
  }
  if (typeof v === "object") {
    const proto = Object.getPrototypeOf(v);
    if (proto !== Object.prototype && proto !== null) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "data objects must be plain objects (no class instances, Dates or Maps)");
    }
    for (const k of Object.keys(v)) {
      if (k === "__proto__") throw sealwireError("ERR_INVALID_ARGUMENT", "data must not contain a __proto__ key");
      assertPlain((v as Record<string, unknown>)[k], depth + 1);
    }
    return;
  }
  throw sealwireError("ERR_INVALID_ARGUMENT", `data contains a value of type ${typeof v}`);
}

/** Buffers from the decoder become plain Uint8Arrays (views on the decoder's private copies). */
function plainBytes(v: unknown): Data {
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = plainBytes(v[i]);
    return v as Data[];
  }
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) o[k] = plainBytes(o[k]);
    return o as { [key: string]: Data };
  }
  return v as Data;
}

/** A decoded payload. */
export interface DecodedPayload {
  readonly data: Data;
  /** The raw attestation (unverified) and the exact bytes it claims to cover, if the payload carries one. */
  readonly attestation?: { readonly raw: unknown; readonly output: Uint8Array };
}

/**
 * Decodes a payload with the same strict walker as headers (the sender is authenticated, but may be a malicious
 * crew member). Throws ERR_PAYLOAD, never echoing content.
 */
export function decodePayload(pt: Uint8Array): DecodedPayload {
  try {
    const kind = pt[0];
    const body = pt.subarray(1);
    const limits = { maxBytes: body.length, maxDepth: MAX_DATA_DEPTH + 1, maxItems: body.length, copyBytes: true };
    if (kind === PAYLOAD_PLAIN) return { data: plainBytes(decodeStrict(body, limits)) };
    if (kind === PAYLOAD_ATTESTED) {
      const outer = decodeStrict(body, { ...limits, maxDepth: 3 });
      if (!Array.isArray(outer) || outer.length !== 2 || !(outer[0] instanceof Uint8Array)) throw new Error("shape");
      const output = new Uint8Array(outer[0]);
      const data = plainBytes(decodeStrict(output, { ...limits, maxBytes: output.length, maxItems: output.length }));
      return { data, attestation: { raw: outer[1], output } };
    }
  } catch {
    /* fall through: one opaque failure */
  }
  throw sealwireError("ERR_PAYLOAD", "the decrypted payload is malformed");
}
