/**
 * The crypto provider: every primitive sealwire uses, behind one small interface, with two implementations.
 *
 * - `native`: Node's `node:crypto` (OpenSSL). About 15× faster than pure JS for X25519/Ed25519 here.
 * - `noble`: the audited pure-JS `@noble/*` libraries, the portable reference.
 *
 * {@link defaultProvider} is chosen once at load: native when `node:crypto` offers every primitive and passes a
 * known-answer self-test, else noble. `SEALWIRE_CRYPTO=noble` forces the portable path. Nothing here is home-made:
 * HKDF is composed from HMAC exactly as RFC 5869 §2.2–2.3 defines it, because Node has no separate
 * extract/expand and HPKE (RFC 9180 §4) needs both.
 *
 * Keys are opaque handles created once and reused ("cache imported key objects"): importing a raw key into
 * OpenSSL costs 10–90 µs, more than the DH itself. Private key handles never expose their bytes; `destroy()`
 * wipes what JavaScript holds (OpenSSL frees its copy when the KeyObject is collected).
 *
 * @module
 * @example
 * ```ts
 * const p = defaultProvider;
 * const a = p.x25519Generate(), b = p.x25519Generate();
 * p.x25519(a, p.x25519Public(b.publicKey)); // shared secret
 * ```
 */
import * as nc from "node:crypto";
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { ed25519, x25519 } from "@noble/curves/ed25519.js";
import { blake2b } from "@noble/hashes/blake2.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256, sha512 } from "@noble/hashes/sha2.js";
import { concatBytes, equalBytes, toBase64url, toHex, wipe } from "./_bytes.js";
import { sealwireError } from "./errors.js";

/** Hash functions sealwire needs (SHA-256 for HPKE/envelopes/Noise, BLAKE2b-512 and SHA-512 for Noise). */
export type HashName = "sha256" | "sha512" | "blake2b";

/** Output and block lengths, per hash. */
export const HASH_INFO: Record<HashName, { outLen: number; blockLen: number }> = {
  sha256: { outLen: 32, blockLen: 64 },
  sha512: { outLen: 64, blockLen: 128 },
  blake2b: { outLen: 64, blockLen: 128 },
};

/** An X25519 private key handle (with its public key). */
export interface X25519PrivateKey {
  readonly publicKey: Uint8Array;
  /** Wipes the JS-held secret bytes; the handle is unusable afterwards. */
  destroy(): void;
}
/** An imported X25519 public key. */
export interface X25519PublicKey {
  readonly bytes: Uint8Array;
}
/** An Ed25519 private key handle (with its public key). */
export interface Ed25519PrivateKey {
  readonly publicKey: Uint8Array;
  destroy(): void;
}
/** An imported Ed25519 public key. */
export interface Ed25519PublicKey {
  readonly bytes: Uint8Array;
}

/** Every primitive sealwire uses. All inputs are Uint8Arrays; no method mutates its inputs. */
export interface CryptoProvider {
  readonly name: "native" | "noble";
  randomBytes(n: number): Uint8Array;
  hash(alg: HashName, ...parts: Uint8Array[]): Uint8Array;
  hmac(alg: HashName, key: Uint8Array, ...parts: Uint8Array[]): Uint8Array;
  /** ChaCha20-Poly1305 (RFC 8439) with a 12-byte nonce; returns ciphertext || 16-byte tag. */
  aeadSeal(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array): Uint8Array;
  /** Returns the plaintext, or `null` when authentication fails (no detail: attacker input). */
  aeadOpen(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array): Uint8Array | null;
  x25519Generate(): X25519PrivateKey;
  /** Imports a 32-byte secret scalar; the caller keeps (and wipes) its own copy. */
  x25519FromSecret(sk: Uint8Array): X25519PrivateKey;
  /**
   * Imports a public key. `cache: false` for one-time keys (HPKE/Noise ephemerals), so they do not evict the
   * long-lived peer keys from the import cache.
   */
  x25519Public(pk: Uint8Array, cache?: boolean): X25519PublicKey;
  /** X25519(sk, pk). Throws on an all-zero result (low-order point, RFC 7748 §6.1, RFC 9180 §7.1.4). */
  x25519(sk: X25519PrivateKey, pk: X25519PublicKey): Uint8Array;
  ed25519Generate(): { key: Ed25519PrivateKey; seed: Uint8Array };
  /** Imports a 32-byte seed; the caller keeps (and wipes) its own copy. */
  ed25519FromSeed(seed: Uint8Array): Ed25519PrivateKey;
  ed25519Public(pk: Uint8Array): Ed25519PublicKey;
  ed25519Sign(sk: Ed25519PrivateKey, msg: Uint8Array): Uint8Array;
  /** Strict RFC 8032 verification; never throws on malformed input, returns false. */
  ed25519Verify(pk: Ed25519PublicKey, msg: Uint8Array, sig: Uint8Array): boolean;
}

/** HKDF-Extract (RFC 5869 §2.2). */
export function hkdfExtract(p: CryptoProvider, alg: HashName, salt: Uint8Array, ikm: Uint8Array): Uint8Array {
  return p.hmac(alg, salt.length === 0 ? new Uint8Array(HASH_INFO[alg].outLen) : salt, ikm);
}

/** HKDF-Expand (RFC 5869 §2.3). */
export function hkdfExpand(p: CryptoProvider, alg: HashName, prk: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  const hashLen = HASH_INFO[alg].outLen;
  if (length > 255 * hashLen) throw sealwireError("ERR_INVALID_ARGUMENT", "hkdfExpand: length too large");
  const out = new Uint8Array(length);
  let t: Uint8Array = new Uint8Array(0);
  const counter = new Uint8Array(1);
  for (let i = 0, pos = 0; pos < length; i++) {
    counter[0] = i + 1;
    const next = p.hmac(alg, prk, t, info, counter);
    wipe(t);
    t = next;
    out.set(t.subarray(0, Math.min(hashLen, length - pos)), pos);
    pos += hashLen;
  }
  wipe(t);
  return out;
}

const isAllZero = (b: Uint8Array): boolean => {
  let d = 0;
  for (const x of b) d |= x;
  return d === 0;
};

function checkLen(b: Uint8Array, n: number, what: string): void {
  if (!(b instanceof Uint8Array) || b.length !== n) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be a Uint8Array of length ${n}`);
  }
}

function destroyedError(): Error {
  return sealwireError("ERR_CLOSED", "this key was destroyed; create or load it again");
}

const REDACTED = "<redacted>";
/** Makes key handles print as redacted under util.inspect, JSON.stringify and String(). */
abstract class RedactedHandle {
  toJSON(): string {
    return REDACTED;
  }
  toString(): string {
    return REDACTED;
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `${this.constructor.name} ${REDACTED}`;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// noble (portable reference)
// ---------------------------------------------------------------------------------------------------------------

class NobleX25519Private extends RedactedHandle implements X25519PrivateKey {
  #sk: Uint8Array | null;
  readonly publicKey: Uint8Array;
  constructor(sk: Uint8Array) {
    super();
    this.#sk = Uint8Array.from(sk);
    this.publicKey = x25519.getPublicKey(this.#sk);
  }
  get sk(): Uint8Array {
    if (!this.#sk) throw destroyedError();
    return this.#sk;
  }
  destroy(): void {
    wipe(this.#sk);
    this.#sk = null;
  }
}
class NobleEd25519Private extends RedactedHandle implements Ed25519PrivateKey {
  #seed: Uint8Array | null;
  readonly publicKey: Uint8Array;
  constructor(seed: Uint8Array) {
    super();
    this.#seed = Uint8Array.from(seed);
    this.publicKey = ed25519.getPublicKey(this.#seed);
  }
  get seed(): Uint8Array {
    if (!this.#seed) throw destroyedError();
    return this.#seed;
  }
  destroy(): void {
    wipe(this.#seed);
    this.#seed = null;
  }
}
class RawPublic implements X25519PublicKey, Ed25519PublicKey {
  constructor(readonly bytes: Uint8Array) {}
}

const nobleHash = { sha256, sha512, blake2b } as const;

function asNoble<T>(k: unknown, cls: abstract new (...a: never[]) => T): T {
  if (!(k instanceof cls)) throw sealwireError("ERR_CRYPTO_PROVIDER", "key handle belongs to another crypto provider");
  return k;
}

/** The portable `@noble/*` provider. */
export const nobleProvider: CryptoProvider = Object.freeze({
  name: "noble" as const,
  randomBytes: (n: number) => new Uint8Array(nc.randomBytes(n)),
  hash: (alg: HashName, ...parts: Uint8Array[]) => {
    const h = nobleHash[alg].create();
    for (const p of parts) h.update(p);
    return h.digest();
  },
  hmac: (alg: HashName, key: Uint8Array, ...parts: Uint8Array[]) => {
    const h = hmac.create(nobleHash[alg], key);
    for (const p of parts) h.update(p);
    return h.digest();
  },
  aeadSeal: (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array) => {
    checkLen(key, 32, "key");
    checkLen(nonce, 12, "nonce");
    return chacha20poly1305(key, nonce, aad).encrypt(pt);
  },
  aeadOpen: (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array) => {
    checkLen(key, 32, "key");
    checkLen(nonce, 12, "nonce");
    if (ct.length < 16) return null;
    try {
      return chacha20poly1305(key, nonce, aad).decrypt(ct);
    } catch {
      return null;
    }
  },
  x25519Generate: () => {
    const sk = x25519.utils.randomSecretKey();
    try {
      return new NobleX25519Private(sk);
    } finally {
      wipe(sk);
    }
  },
  x25519FromSecret: (sk: Uint8Array) => {
    checkLen(sk, 32, "X25519 secret key");
    return new NobleX25519Private(sk);
  },
  x25519Public: (pk: Uint8Array) => {
    checkLen(pk, 32, "X25519 public key");
    return new RawPublic(Uint8Array.from(pk));
  },
  x25519: (sk: X25519PrivateKey, pk: X25519PublicKey) => {
    let out: Uint8Array;
    try {
      out = x25519.getSharedSecret(asNoble(sk, NobleX25519Private).sk, pk.bytes);
    } catch (e) {
      if (SealwireErrorLike(e)) throw e;
      throw sealwireError("ERR_DECRYPT", "X25519 failed (invalid public key)");
    }
    if (isAllZero(out)) throw sealwireError("ERR_DECRYPT", "X25519 produced the all-zero value (invalid public key)");
    return out;
  },
  ed25519Generate: () => {
    const seed = ed25519.utils.randomSecretKey();
    return { key: new NobleEd25519Private(seed), seed };
  },
  ed25519FromSeed: (seed: Uint8Array) => {
    checkLen(seed, 32, "Ed25519 seed");
    return new NobleEd25519Private(seed);
  },
  ed25519Public: (pk: Uint8Array) => {
    checkLen(pk, 32, "Ed25519 public key");
    return new RawPublic(Uint8Array.from(pk));
  },
  ed25519Sign: (sk: Ed25519PrivateKey, msg: Uint8Array) => ed25519.sign(msg, asNoble(sk, NobleEd25519Private).seed),
  ed25519Verify: (pk: Ed25519PublicKey, msg: Uint8Array, sig: Uint8Array) => {
    if (sig.length !== 64 || pk.bytes.length !== 32) return false;
    try {
      return ed25519.verify(sig, msg, pk.bytes, { zip215: false });
    } catch {
      return false;
    }
  },
});

function SealwireErrorLike(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { name?: unknown }).name === "SealwireError";
}

// ---------------------------------------------------------------------------------------------------------------
// native (node:crypto / OpenSSL)
// ---------------------------------------------------------------------------------------------------------------

// PKCS#8 / SPKI DER prefixes for raw 32-byte keys (RFC 8410). Importing private keys through DER keeps the secret
// in a Buffer we can wipe; JWK would turn it into a JS string, which can never be wiped.
const PKCS8_X25519 = Buffer.from("302e020100300506032b656e04220420", "hex");
const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex");

function importPrivate(prefix: Buffer, raw: Uint8Array): nc.KeyObject {
  const der = Buffer.alloc(prefix.length + 32);
  prefix.copy(der);
  der.set(raw, prefix.length);
  try {
    return nc.createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  } finally {
    der.fill(0);
  }
}
function spkiRaw(key: nc.KeyObject): Uint8Array {
  const der = key.export({ format: "der", type: "spki" });
  return new Uint8Array(der.subarray(der.length - 32));
}

class NativePrivate extends RedactedHandle implements X25519PrivateKey, Ed25519PrivateKey {
  #key: nc.KeyObject | null;
  constructor(
    key: nc.KeyObject,
    readonly publicKey: Uint8Array,
    readonly kind: "x25519" | "ed25519",
  ) {
    super();
    this.#key = key;
  }
  get key(): nc.KeyObject {
    if (!this.#key) throw destroyedError();
    return this.#key;
  }
  destroy(): void {
    // OpenSSL owns the key bytes; dropping the last reference lets it free (and cleanse) them.
    this.#key = null;
  }
}
class NativePublic {
  constructor(
    readonly bytes: Uint8Array,
    readonly key: nc.KeyObject,
  ) {}
}

function asNative(k: unknown, kind: "x25519" | "ed25519"): NativePrivate {
  if (!(k instanceof NativePrivate) || k.kind !== kind) {
    throw sealwireError("ERR_CRYPTO_PROVIDER", "key handle belongs to another crypto provider");
  }
  return k;
}

function importPublic(crv: "X25519" | "Ed25519", pk: Uint8Array): NativePublic {
  // JWK import is ~8 µs against ~90 µs for DER; public keys may become strings.
  const key = nc.createPublicKey({ key: { kty: "OKP", crv, x: toBase64url(pk) }, format: "jwk" });
  return new NativePublic(Uint8Array.from(pk), key);
}

let basePointKey: nc.KeyObject | undefined;
function basePoint(): nc.KeyObject {
  const u9 = new Uint8Array(32);
  u9[0] = 9;
  return (basePointKey ??= importPublic("X25519", u9).key);
}

/** A small bounded cache of imported public keys (public values only), keyed by hex. */
class PublicKeyCache {
  readonly #map = new Map<string, NativePublic>();
  constructor(readonly max: number) {}
  get(crv: "X25519" | "Ed25519", pk: Uint8Array, cache = true): NativePublic {
    if (!cache) return importPublic(crv, pk);
    const id = crv + toHex(pk);
    const hit = this.#map.get(id);
    if (hit) {
      // Least-recently-used order: a hit moves to the back.
      this.#map.delete(id);
      this.#map.set(id, hit);
      return hit;
    }
    const v = importPublic(crv, pk);
    if (this.#map.size >= this.max) this.#map.delete(this.#map.keys().next().value!);
    this.#map.set(id, v);
    return v;
  }
}
const pubCache = new PublicKeyCache(1024);

// @types/node only types the "both encoded" and "neither encoded" forms; Node itself encodes each half independently.
type GeneratePrivateDer = (
  type: "ed25519",
  opts: { privateKeyEncoding: { format: "der"; type: "pkcs8" } },
) => { publicKey: nc.KeyObject; privateKey: Buffer };

const nodeHash: Record<HashName, string> = { sha256: "sha256", sha512: "sha512", blake2b: "blake2b512" };
const u8 = (b: Buffer): Uint8Array => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

/** The `node:crypto` provider. */
export const nativeProvider: CryptoProvider = Object.freeze({
  name: "native" as const,
  randomBytes: (n: number) => u8(nc.randomBytes(n)),
  hash: (alg: HashName, ...parts: Uint8Array[]) => {
    const h = nc.createHash(nodeHash[alg]);
    for (const p of parts) h.update(p);
    return u8(h.digest());
  },
  hmac: (alg: HashName, key: Uint8Array, ...parts: Uint8Array[]) => {
    const h = nc.createHmac(nodeHash[alg], key);
    for (const p of parts) h.update(p);
    return u8(h.digest());
  },
  aeadSeal: (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array) => {
    checkLen(key, 32, "key");
    checkLen(nonce, 12, "nonce");
    const c = nc.createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
    c.setAAD(aad, { plaintextLength: pt.length });
    const out = new Uint8Array(pt.length + 16);
    const a = c.update(pt);
    out.set(a, 0);
    const b = c.final();
    out.set(b, a.length);
    out.set(c.getAuthTag(), pt.length);
    return out;
  },
  aeadOpen: (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array) => {
    checkLen(key, 32, "key");
    checkLen(nonce, 12, "nonce");
    if (ct.length < 16) return null;
    const n = ct.length - 16;
    const d = nc.createDecipheriv("chacha20-poly1305", key, nonce, { authTagLength: 16 });
    d.setAAD(aad, { plaintextLength: n });
    d.setAuthTag(ct.subarray(n));
    const out = new Uint8Array(n);
    const a = d.update(ct.subarray(0, n));
    out.set(a, 0);
    try {
      out.set(d.final(), a.length);
    } catch {
      wipe(out, a);
      return null;
    }
    wipe(a);
    return out;
  },
  x25519Generate: () => {
    // The public key is X25519(sk, 9) (RFC 7748 §6.1), computed with the base point as a cached public key:
    // cheaper than asking OpenSSL to encode the key pair, and it avoids exporting freshly generated KeyObjects,
    // which deadlocked on Node 20.20 in tight loops.
    const { privateKey } = nc.generateKeyPairSync("x25519");
    const pub = u8(nc.diffieHellman({ privateKey, publicKey: basePoint() }));
    return new NativePrivate(privateKey, pub, "x25519");
  },
  x25519FromSecret: (sk: Uint8Array) => {
    checkLen(sk, 32, "X25519 secret key");
    const key = importPrivate(PKCS8_X25519, sk);
    return new NativePrivate(key, spkiRaw(nc.createPublicKey(key)), "x25519");
  },
  x25519Public: (pk: Uint8Array, cache = true) => {
    checkLen(pk, 32, "X25519 public key");
    return pubCache.get("X25519", pk, cache);
  },
  x25519: (sk: X25519PrivateKey, pk: X25519PublicKey) => {
    const priv = asNative(sk, "x25519").key;
    const pub = pk instanceof NativePublic ? pk : pubCache.get("X25519", pk.bytes);
    let out: Uint8Array;
    try {
      out = u8(nc.diffieHellman({ privateKey: priv, publicKey: pub.key }));
    } catch {
      // OpenSSL refuses an all-zero shared secret itself.
      throw sealwireError("ERR_DECRYPT", "X25519 failed (invalid public key)");
    }
    if (isAllZero(out)) throw sealwireError("ERR_DECRYPT", "X25519 produced the all-zero value (invalid public key)");
    return out;
  },
  ed25519Generate: () => {
    const { privateKey } = (nc.generateKeyPairSync as unknown as GeneratePrivateDer)("ed25519", {
      privateKeyEncoding: { format: "der", type: "pkcs8" },
    });
    const seed = new Uint8Array(32);
    seed.set(privateKey.subarray(privateKey.length - 32));
    privateKey.fill(0);
    return { key: nativeProvider.ed25519FromSeed(seed), seed };
  },
  ed25519FromSeed: (seed: Uint8Array) => {
    checkLen(seed, 32, "Ed25519 seed");
    const key = importPrivate(PKCS8_ED25519, seed);
    return new NativePrivate(key, spkiRaw(nc.createPublicKey(key)), "ed25519");
  },
  ed25519Public: (pk: Uint8Array) => {
    checkLen(pk, 32, "Ed25519 public key");
    return pubCache.get("Ed25519", pk);
  },
  ed25519Sign: (sk: Ed25519PrivateKey, msg: Uint8Array) => u8(nc.sign(null, msg, asNative(sk, "ed25519").key)),
  ed25519Verify: (pk: Ed25519PublicKey, msg: Uint8Array, sig: Uint8Array) => {
    if (sig.length !== 64 || pk.bytes.length !== 32) return false;
    try {
      const pub = pk instanceof NativePublic ? pk : pubCache.get("Ed25519", pk.bytes);
      return nc.verify(null, msg, pub.key, sig);
    } catch {
      return false;
    }
  },
});

/**
 * Known-answer self-test run once before trusting the native provider: RFC 7748 §6.1 X25519, RFC 8032 §7.1
 * test 1 Ed25519, RFC 8439 §2.8.2 ChaCha20-Poly1305 (tag only) and a SHA-256 / BLAKE2b agreement with noble.
 */
function nativeSelfTest(): boolean {
  try {
    const h = (s: string) => new Uint8Array(Buffer.from(s, "hex"));
    const p = nativeProvider;
    const a = p.x25519FromSecret(h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
    const bPub = p.x25519Public(h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
    const ss = p.x25519(a, bPub);
    if (toHex(ss) !== "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742") return false;
    const e = p.ed25519FromSeed(h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"));
    const sig = p.ed25519Sign(e, new Uint8Array(0));
    if (
      toHex(sig) !==
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
      return false;
    if (!p.ed25519Verify(p.ed25519Public(e.publicKey), new Uint8Array(0), sig)) return false;
    const key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    const nonce = h("070000004041424344454647");
    const aad = h("50515253c0c1c2c3c4c5c6c7");
    const pt = new TextEncoder().encode(
      "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
    );
    const ct = p.aeadSeal(key, nonce, aad, pt);
    if (toHex(ct.subarray(ct.length - 16)) !== "1ae10b594f09e26a7e902ecbd0600691") return false;
    const back = p.aeadOpen(key, nonce, aad, ct);
    if (!back || !equalBytes(back, pt)) return false;
    for (const alg of ["sha256", "blake2b"] as const) {
      const m = concatBytes(pt, aad);
      if (!equalBytes(p.hash(alg, m), nobleProvider.hash(alg, m))) return false;
      if (!equalBytes(p.hmac(alg, key, m), nobleProvider.hmac(alg, key, m))) return false;
    }
    a.destroy();
    e.destroy();
    return true;
  } catch {
    return false;
  }
}

function chooseProvider(): CryptoProvider {
  const forced = typeof process !== "undefined" ? process.env["SEALWIRE_CRYPTO"] : undefined;
  if (forced === "noble") return nobleProvider;
  if (forced !== undefined && forced !== "native" && forced !== "") {
    throw sealwireError("ERR_CRYPTO_PROVIDER", `SEALWIRE_CRYPTO must be "native" or "noble", got an unknown value`);
  }
  if (nativeSelfTest()) return nativeProvider;
  if (forced === "native") {
    throw sealwireError("ERR_CRYPTO_PROVIDER", "SEALWIRE_CRYPTO=native but node:crypto failed its self-test");
  }
  return nobleProvider;
}

/** The provider chosen once at load (see module docs). */
export const defaultProvider: CryptoProvider = chooseProvider();
