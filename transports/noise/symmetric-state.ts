/**
 * The Noise `SymmetricState` (Noise Protocol Framework rev 34 §5.2) and the Noise HKDF (§4.3). Internal to the
 * handshake: it holds the chaining key `ck` and handshake hash `h`, and a {@link CipherState} once a key exists.
 *
 * HKDF(ck, ikm, n) (§4.3) is built from the provider's HMAC: `temp = HMAC(ck, ikm)`, `out1 = HMAC(temp, 0x01)`,
 * `out_i = HMAC(temp, out_{i-1} || i)`. For BLAKE2b this is RFC 2104 HMAC over plain BLAKE2b-512 (§4.3 requires
 * HMAC, not BLAKE2b's keyed mode), which is what `provider.hmac("blake2b", …)` computes.
 *
 * Secrets it produces (`ck`, the HKDF temporaries, DH outputs passed to `mixKey`) are wiped as soon as they are
 * replaced; `destroy()` wipes the rest.
 *
 * @module
 * @example
 * ```ts
 * const ss = new SymmetricState(parseProtocolName("Noise_NN_25519_ChaChaPoly_SHA256"), defaultProvider);
 * ss.mixHash(prologue);
 * ss.mixKey(dhOutput);
 * const ct = ss.encryptAndHash(payload);
 * ```
 */
import { HASH_INFO, type CryptoProvider, type HashName } from "../../src/_crypto.js";
import { utf8, wipe } from "../../src/_bytes.js";
import { CipherState } from "./cipher-state.js";
import type { NoiseProtocol } from "./protocol-name.js";

const BYTE_1 = Uint8Array.of(1);
const BYTE_2 = Uint8Array.of(2);
const BYTE_3 = Uint8Array.of(3);
const EMPTY = new Uint8Array(0);
const KEY_BYTES = 32;

/**
 * HKDF(chaining_key, input_key_material, num_outputs) from Noise §4.3, for 2 or 3 outputs of HASHLEN bytes.
 * The caller owns (and wipes) the outputs.
 */
export function noiseHkdf(p: CryptoProvider, alg: HashName, ck: Uint8Array, ikm: Uint8Array, n: 2 | 3): Uint8Array[] {
  const temp = p.hmac(alg, ck, ikm);
  try {
    const o1 = p.hmac(alg, temp, BYTE_1);
    const o2 = p.hmac(alg, temp, o1, BYTE_2);
    return n === 2 ? [o1, o2] : [o1, o2, p.hmac(alg, temp, o2, BYTE_3)];
  } finally {
    wipe(temp);
  }
}

/** §5.2: "If HASHLEN is 64, then truncates temp_k to 32 bytes." Wipes the rest of the input. */
function truncateKey(tempK: Uint8Array): Uint8Array {
  if (tempK.length === KEY_BYTES) return tempK;
  const k = tempK.slice(0, KEY_BYTES);
  wipe(tempK);
  return k;
}

/** The SymmetricState object of Noise §5.2. */
export class SymmetricState {
  readonly #p: CryptoProvider;
  readonly #alg: HashName;
  #ck: Uint8Array;
  #h: Uint8Array;
  #cs: CipherState | null = null;

  /** InitializeSymmetric(protocol_name) (§5.2). */
  constructor(protocol: NoiseProtocol, provider: CryptoProvider) {
    this.#p = provider;
    this.#alg = protocol.hash;
    const name = utf8(protocol.name);
    const hashLen = HASH_INFO[protocol.hash].outLen;
    if (name.length <= hashLen) {
      // Pad with zero bytes to HASHLEN.
      this.#h = new Uint8Array(hashLen);
      this.#h.set(name);
    } else {
      this.#h = provider.hash(this.#alg, name);
    }
    this.#ck = Uint8Array.from(this.#h);
  }

  /** True once MixKey or MixKeyAndHash has run (the CipherState has a key, §5.1 HasKey). */
  hasKey(): boolean {
    return this.#cs !== null;
  }

  /** MixKey(input_key_material) (§5.2). The caller still owns (and wipes) `ikm`. */
  mixKey(ikm: Uint8Array): void {
    const [ck, tempK] = noiseHkdf(this.#p, this.#alg, this.#ck, ikm, 2) as [Uint8Array, Uint8Array];
    this.#setCk(ck);
    this.#initializeKey(truncateKey(tempK));
  }

  /** MixHash(data) (§5.2): h = HASH(h || data). */
  mixHash(data: Uint8Array): void {
    this.#h = this.#p.hash(this.#alg, this.#h, data);
  }

  /** MixKeyAndHash(input_key_material) (§5.2), used for `psk` tokens. */
  mixKeyAndHash(ikm: Uint8Array): void {
    const [ck, tempH, tempK] = noiseHkdf(this.#p, this.#alg, this.#ck, ikm, 3) as [Uint8Array, Uint8Array, Uint8Array];
    this.#setCk(ck);
    this.mixHash(tempH);
    wipe(tempH);
    this.#initializeKey(truncateKey(tempK));
  }

  /** GetHandshakeHash() (§5.2): a copy of h. */
  getHandshakeHash(): Uint8Array {
    return Uint8Array.from(this.#h);
  }

  /** EncryptAndHash(plaintext) (§5.2). Without a key the "ciphertext" is a copy of the plaintext (§5.1). */
  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    const ct = this.#cs ? this.#cs.encryptWithAd(this.#h, plaintext) : Uint8Array.from(plaintext);
    this.mixHash(ct);
    return ct;
  }

  /**
   * DecryptAndHash(ciphertext) (§5.2). Throws `ERR_NOISE_DECRYPT` when authentication fails; `h` is then
   * unchanged, but the handshake is dead anyway (§5.3: abort on any error).
   */
  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    const pt = this.#cs ? this.#cs.decryptWithAd(this.#h, ciphertext) : Uint8Array.from(ciphertext);
    this.mixHash(ciphertext);
    return pt;
  }

  /**
   * Split() (§5.2): `[c1, c2]` from HKDF(ck, zerolen, 2). c1 encrypts initiator → responder, c2 the reverse.
   * Wipes `ck` and the handshake CipherState; `h` stays readable for channel binding (§11.2).
   */
  split(): [CipherState, CipherState] {
    const [t1, t2] = noiseHkdf(this.#p, this.#alg, this.#ck, EMPTY, 2) as [Uint8Array, Uint8Array];
    const k1 = truncateKey(t1);
    const k2 = truncateKey(t2);
    try {
      return [new CipherState(k1, this.#p), new CipherState(k2, this.#p)];
    } finally {
      wipe(k1, k2);
      this.#wipeKeys();
    }
  }

  /** Wipes ck, the handshake key and h. The object must not be used afterwards. */
  destroy(): void {
    this.#wipeKeys();
    wipe(this.#h);
  }

  #wipeKeys(): void {
    wipe(this.#ck);
    this.#cs?.destroy();
    this.#cs = null;
  }

  #setCk(ck: Uint8Array): void {
    wipe(this.#ck);
    this.#ck = ck;
  }

  /** InitializeKey(k) (§5.1): a fresh CipherState with n = 0. Takes ownership of (and wipes) `k`. */
  #initializeKey(k: Uint8Array): void {
    this.#cs?.destroy();
    this.#cs = new CipherState(k, this.#p);
    wipe(k);
  }

  /** Never reveals ck, k or h. */
  toJSON(): string {
    return "<redacted>";
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return "SymmetricState <redacted>";
  }
}

