/**
 * HPKE (RFC 9180) for one suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305
 * (kem_id 0x0020, kdf_id 0x0001, aead_id 0x0003). All four modes; composed exactly as the RFC's pseudocode, from
 * the crypto provider's primitives. Checked against the RFC's test vectors in `test/hpke.test.ts`.
 *
 * Envelopes use auth mode (`setupAuthS`/`setupAuthR`): the recipient learns that the sender's static X25519 key
 * took part, on top of the Ed25519 signature over the whole envelope.
 *
 * @module
 * @example
 * ```ts
 * const { enc, ctx } = setupAuthS(p, p.x25519Public(pkR), info, skS);
 * const ct = ctx.seal(aad, pt);
 * const r = setupAuthR(p, enc, skR, info, p.x25519Public(pkS));
 * r.open(aad, ct);
 * ```
 */
import { concatBytes, i2osp, utf8, wipe } from "./_bytes.js";
import {
  hkdfExpand,
  type CryptoProvider,
  type X25519PrivateKey,
  type X25519PublicKey,
} from "./_crypto.js";
import { sealwireError } from "./errors.js";

/** HPKE modes, RFC 9180 §5 Table 1. */
export const MODE_BASE = 0x00;
export const MODE_PSK = 0x01;
export const MODE_AUTH = 0x02;
export const MODE_AUTH_PSK = 0x03;

const KEM_ID = 0x0020;
const KDF_ID = 0x0001;
const AEAD_ID = 0x0003;
/** Nsecret, Nenc, Npk for DHKEM(X25519, HKDF-SHA256) (RFC 9180 §7.1). */
const N_SECRET = 32;
const N_ENC = 32;
/** Nk, Nn, Nh (RFC 9180 §7.2, §7.3). */
const N_K = 32;
const N_N = 12;
const N_H = 32;

const HPKE_V1 = utf8("HPKE-v1");
const SUITE_KEM = concatBytes(utf8("KEM"), i2osp(KEM_ID, 2)); // §4.1
const SUITE_HPKE = concatBytes(utf8("HPKE"), i2osp(KEM_ID, 2), i2osp(KDF_ID, 2), i2osp(AEAD_ID, 2)); // §5.1
const EMPTY = new Uint8Array(0);
const L = (s: string) => utf8(s);
const LBL = {
  eae_prk: L("eae_prk"),
  shared_secret: L("shared_secret"),
  dkp_prk: L("dkp_prk"),
  sk: L("sk"),
  psk_id_hash: L("psk_id_hash"),
  info_hash: L("info_hash"),
  secret: L("secret"),
  key: L("key"),
  base_nonce: L("base_nonce"),
  exp: L("exp"),
  sec: L("sec"),
};

// RFC 9180 §4: LabeledExtract / LabeledExpand. The labeled inputs are fed to HMAC as parts rather than
// concatenated first: the same bytes, fewer copies of secret material.
function labeledExtract(p: CryptoProvider, suite: Uint8Array, salt: Uint8Array, label: Uint8Array, ikm: Uint8Array) {
  // Extract(salt, IKM) = HMAC-Hash(salt, IKM), with an empty salt meaning Nh zero bytes (RFC 5869 §2.2).
  return p.hmac("sha256", salt.length === 0 ? ZERO_SALT : salt, HPKE_V1, suite, label, ikm);
}
function labeledExpand(
  p: CryptoProvider,
  suite: Uint8Array,
  prk: Uint8Array,
  label: Uint8Array,
  info: Uint8Array,
  length: number,
) {
  if (length <= N_H) {
    // One block of HKDF-Expand (RFC 5869 §2.3): T(1) = HMAC(PRK, info || 0x01).
    const t = p.hmac("sha256", prk, i2osp(length, 2), HPKE_V1, suite, label, info, ONE);
    if (length === N_H) return t;
    const out = t.slice(0, length);
    wipe(t);
    return out;
  }
  const labeledInfo = concatBytes(i2osp(length, 2), HPKE_V1, suite, label, info);
  return hkdfExpand(p, "sha256", prk, labeledInfo, length);
}
const ZERO_SALT = new Uint8Array(N_H);
const ONE = Uint8Array.of(1);

// RFC 9180 §4.1 DHKEM ExtractAndExpand.
function extractAndExpand(p: CryptoProvider, dh: Uint8Array, kemContext: Uint8Array): Uint8Array {
  const eaePrk = labeledExtract(p, SUITE_KEM, EMPTY, LBL.eae_prk, dh);
  try {
    return labeledExpand(p, SUITE_KEM, eaePrk, LBL.shared_secret, kemContext, N_SECRET);
  } finally {
    wipe(eaePrk);
  }
}

/**
 * DeriveKeyPair(ikm) for X25519 (RFC 9180 §7.1.3). Returns the raw secret scalar; the caller wipes it.
 */
export function deriveKeyPairSecret(p: CryptoProvider, ikm: Uint8Array): Uint8Array {
  const dkpPrk = labeledExtract(p, SUITE_KEM, EMPTY, LBL.dkp_prk, ikm);
  try {
    return labeledExpand(p, SUITE_KEM, dkpPrk, LBL.sk, EMPTY, 32);
  } finally {
    wipe(dkpPrk);
  }
}

// Encap / AuthEncap (§4.1). `ephemeral` is for known-answer tests only (see `_setupS`).
function encap(
  p: CryptoProvider,
  pkR: X25519PublicKey,
  skS: X25519PrivateKey | undefined,
  ephemeral: X25519PrivateKey | undefined,
): { sharedSecret: Uint8Array; enc: Uint8Array } {
  const skE = ephemeral ?? p.x25519Generate();
  let dh1: Uint8Array | undefined;
  let dh2: Uint8Array | undefined;
  let dh: Uint8Array | undefined;
  try {
    const enc = skE.publicKey;
    dh1 = p.x25519(skE, pkR);
    if (skS) dh2 = p.x25519(skS, pkR);
    dh = dh2 ? concatBytes(dh1, dh2) : dh1;
    const kemContext = skS ? concatBytes(enc, pkR.bytes, skS.publicKey) : concatBytes(enc, pkR.bytes);
    return { sharedSecret: extractAndExpand(p, dh, kemContext), enc: Uint8Array.from(enc) };
  } finally {
    wipe(dh1, dh2, dh);
    if (!ephemeral) skE.destroy();
  }
}

// Decap / AuthDecap (§4.1).
function decap(
  p: CryptoProvider,
  enc: Uint8Array,
  skR: X25519PrivateKey,
  pkS: X25519PublicKey | undefined,
): Uint8Array {
  if (enc.length !== N_ENC) throw sealwireError("ERR_DECRYPT", "the envelope could not be decrypted");
  let dh1: Uint8Array | undefined;
  let dh2: Uint8Array | undefined;
  let dh: Uint8Array | undefined;
  try {
    dh1 = p.x25519(skR, p.x25519Public(enc, false));
    if (pkS) dh2 = p.x25519(skR, pkS);
    dh = dh2 ? concatBytes(dh1, dh2) : dh1;
    const kemContext = pkS ? concatBytes(enc, skR.publicKey, pkS.bytes) : concatBytes(enc, skR.publicKey);
    return extractAndExpand(p, dh, kemContext);
  } catch (e) {
    // Attacker-controlled input: one opaque failure (RFC 9180 §7.1.4 all-zero check lands here too).
    throw sealwireError("ERR_DECRYPT", "the envelope could not be decrypted", { cause: e });
  } finally {
    wipe(dh1, dh2, dh);
  }
}

/** The key-schedule part that depends only on (mode, info, psk_id): cached, it saves two HMACs per message. */
const contextCache = new Map<string, Uint8Array>();
function keyScheduleContext(p: CryptoProvider, mode: number, info: Uint8Array, pskId: Uint8Array): Uint8Array {
  const cacheable = info.length <= 256 && pskId.length === 0;
  const cacheKey = cacheable ? `${p.name}:${mode}:${Buffer.from(info).toString("base64")}` : "";
  if (cacheable) {
    const hit = contextCache.get(cacheKey);
    if (hit) return hit;
  }
  const pskIdHash = labeledExtract(p, SUITE_HPKE, EMPTY, LBL.psk_id_hash, pskId);
  const infoHash = labeledExtract(p, SUITE_HPKE, EMPTY, LBL.info_hash, info);
  const ctx = concatBytes(Uint8Array.of(mode), pskIdHash, infoHash);
  if (cacheable) {
    if (contextCache.size >= 64) contextCache.delete(contextCache.keys().next().value!);
    contextCache.set(cacheKey, ctx);
  }
  return ctx;
}

// §5.1 VerifyPSKInputs + KeySchedule.
function keySchedule(
  p: CryptoProvider,
  mode: number,
  sharedSecret: Uint8Array,
  info: Uint8Array,
  psk: Uint8Array,
  pskId: Uint8Array,
): HpkeContext {
  const gotPsk = psk.length > 0;
  const gotPskId = pskId.length > 0;
  if (gotPsk !== gotPskId) throw sealwireError("ERR_INVALID_ARGUMENT", "HPKE: psk and psk_id must both be given or both empty");
  const pskMode = mode === MODE_PSK || mode === MODE_AUTH_PSK;
  if (gotPsk !== pskMode) throw sealwireError("ERR_INVALID_ARGUMENT", "HPKE: psk given in a non-psk mode or missing in a psk mode");
  if (gotPsk && psk.length < 32) throw sealwireError("ERR_INVALID_ARGUMENT", "HPKE: psk must be at least 32 bytes");
  const ksc = keyScheduleContext(p, mode, info, pskId);
  const secret = labeledExtract(p, SUITE_HPKE, sharedSecret, LBL.secret, psk);
  try {
    const key = labeledExpand(p, SUITE_HPKE, secret, LBL.key, ksc, N_K);
    const baseNonce = labeledExpand(p, SUITE_HPKE, secret, LBL.base_nonce, ksc, N_N);
    const exporterSecret = labeledExpand(p, SUITE_HPKE, secret, LBL.exp, ksc, N_H);
    return new HpkeContext(p, key, baseNonce, exporterSecret);
  } finally {
    wipe(secret);
  }
}

/** Largest sequence number we allow: well inside both Number precision and the RFC's 2^96-1 limit (§5.2). */
const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/**
 * An HPKE encryption context (RFC 9180 §5.2). A sender context only seals, a recipient context only opens;
 * nonces are derived from the sequence number, never supplied by the caller.
 */
export class HpkeContext {
  #key: Uint8Array;
  #baseNonce: Uint8Array;
  #exporterSecret: Uint8Array;
  #seq = 0;
  #destroyed = false;
  readonly #p: CryptoProvider;

  /** @internal */
  constructor(p: CryptoProvider, key: Uint8Array, baseNonce: Uint8Array, exporterSecret: Uint8Array) {
    this.#p = p;
    this.#key = key;
    this.#baseNonce = baseNonce;
    this.#exporterSecret = exporterSecret;
  }

  /** Number of messages sealed/opened so far (the next sequence number). */
  get seq(): number {
    return this.#seq;
  }

  // §5.2 ComputeNonce: base_nonce XOR I2OSP(seq, Nn).
  #nonce(seq: number): Uint8Array {
    const n = Uint8Array.from(this.#baseNonce);
    const s = i2osp(seq, 8);
    for (let i = 0; i < 8; i++) n[N_N - 8 + i]! ^= s[i]!;
    return n;
  }

  #check(): void {
    if (this.#destroyed) throw sealwireError("ERR_CLOSED", "HPKE context was destroyed");
    if (this.#seq >= MAX_SEQ) throw sealwireError("ERR_INVALID_ARGUMENT", "HPKE sequence number overflow; set up a new context");
  }

  /** Seal(aad, pt) (§5.2). */
  seal(aad: Uint8Array, pt: Uint8Array): Uint8Array {
    this.#check();
    const ct = this.#p.aeadSeal(this.#key, this.#nonce(this.#seq), aad, pt);
    this.#seq++;
    return ct;
  }

  /** Open(aad, ct) (§5.2). Throws ERR_DECRYPT, and leaves the sequence number unchanged, on failure. */
  open(aad: Uint8Array, ct: Uint8Array): Uint8Array {
    this.#check();
    const pt = this.#p.aeadOpen(this.#key, this.#nonce(this.#seq), aad, ct);
    if (pt === null) throw sealwireError("ERR_DECRYPT", "the envelope could not be decrypted");
    this.#seq++;
    return pt;
  }

  /** Opens the message with an explicit sequence number (for out-of-order streams); does not move `seq`. */
  openAt(seq: number, aad: Uint8Array, ct: Uint8Array): Uint8Array {
    if (this.#destroyed) throw sealwireError("ERR_CLOSED", "HPKE context was destroyed");
    if (!Number.isSafeInteger(seq) || seq < 0) throw sealwireError("ERR_DECRYPT", "the envelope could not be decrypted");
    const pt = this.#p.aeadOpen(this.#key, this.#nonce(seq), aad, ct);
    if (pt === null) throw sealwireError("ERR_DECRYPT", "the envelope could not be decrypted");
    return pt;
  }

  /** Export(exporter_context, L) (§5.3). */
  export(exporterContext: Uint8Array, length: number): Uint8Array {
    if (this.#destroyed) throw sealwireError("ERR_CLOSED", "HPKE context was destroyed");
    return labeledExpand(this.#p, SUITE_HPKE, this.#exporterSecret, LBL.sec, exporterContext, length);
  }

  /** Wipes the key, base nonce and exporter secret. */
  destroy(): void {
    wipe(this.#key, this.#baseNonce, this.#exporterSecret);
    this.#destroyed = true;
  }

  toJSON(): string {
    return "<redacted>";
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return "HpkeContext <redacted>";
  }
}

/** Options shared by the setup functions. */
export interface SetupOptions {
  psk?: Uint8Array;
  pskId?: Uint8Array;
}

/**
 * Sender setup for any mode (§5.1.1–5.1.4). `ephemeral` exists only for known-answer tests: a caller-chosen
 * ephemeral key destroys HPKE's security, so it is not exported from the package root.
 * @internal
 */
export function _setupS(
  p: CryptoProvider,
  mode: number,
  pkR: X25519PublicKey,
  info: Uint8Array,
  opts: SetupOptions & { skS?: X25519PrivateKey; ephemeral?: X25519PrivateKey },
): { enc: Uint8Array; ctx: HpkeContext } {
  const auth = mode === MODE_AUTH || mode === MODE_AUTH_PSK;
  if (auth !== (opts.skS !== undefined)) throw sealwireError("ERR_INVALID_ARGUMENT", "HPKE: sender key required exactly in auth modes");
  const { sharedSecret, enc } = encap(p, pkR, opts.skS, opts.ephemeral);
  try {
    return { enc, ctx: keySchedule(p, mode, sharedSecret, info, opts.psk ?? EMPTY, opts.pskId ?? EMPTY) };
  } finally {
    wipe(sharedSecret);
  }
}

/** Recipient setup for any mode (§5.1.1–5.1.4). */
export function setupR(
  p: CryptoProvider,
  mode: number,
  enc: Uint8Array,
  skR: X25519PrivateKey,
  info: Uint8Array,
  opts: SetupOptions & { pkS?: X25519PublicKey } = {},
): HpkeContext {
  const auth = mode === MODE_AUTH || mode === MODE_AUTH_PSK;
  if (auth !== (opts.pkS !== undefined)) throw sealwireError("ERR_INVALID_ARGUMENT", "HPKE: sender public key required exactly in auth modes");
  const sharedSecret = decap(p, enc, skR, opts.pkS);
  try {
    return keySchedule(p, mode, sharedSecret, info, opts.psk ?? EMPTY, opts.pskId ?? EMPTY);
  } finally {
    wipe(sharedSecret);
  }
}

/** SetupBaseS (§5.1.1). */
export function setupBaseS(p: CryptoProvider, pkR: X25519PublicKey, info: Uint8Array) {
  return _setupS(p, MODE_BASE, pkR, info, {});
}
/** SetupBaseR (§5.1.1). */
export function setupBaseR(p: CryptoProvider, enc: Uint8Array, skR: X25519PrivateKey, info: Uint8Array) {
  return setupR(p, MODE_BASE, enc, skR, info);
}
/** SetupAuthS (§5.1.3). */
export function setupAuthS(p: CryptoProvider, pkR: X25519PublicKey, info: Uint8Array, skS: X25519PrivateKey) {
  return _setupS(p, MODE_AUTH, pkR, info, { skS });
}
/** SetupAuthR (§5.1.3). */
export function setupAuthR(
  p: CryptoProvider,
  enc: Uint8Array,
  skR: X25519PrivateKey,
  info: Uint8Array,
  pkS: X25519PublicKey,
) {
  return setupR(p, MODE_AUTH, enc, skR, info, { pkS });
}
