/**
 * The Noise `CipherState` (Noise Protocol Framework rev 34 §5.1) for ChaChaPoly (§12.3): a 32-byte key `k` and a
 * 64-bit counter nonce `n`.
 *
 * - Nonce encoding (§12.3): 4 zero bytes then `n` as a 64-bit little-endian integer.
 * - `n = 2^64 − 1` is reserved (§5.1): encrypting or decrypting at it throws `ERR_NONCE_EXHAUSTED`; only
 *   {@link CipherState.rekey} uses it (§4.2, §11.3).
 * - A failed decryption throws `ERR_NOISE_DECRYPT` and leaves `n` unchanged (§5.1), so the caller decides
 *   whether to drop the message or the session.
 * - Every message is bounded by the 65535-byte Noise message limit (§3).
 *
 * Unlike the spec's object, a public `CipherState` always holds a key: the "empty key returns the plaintext" rule
 * of §5.1 exists only inside the handshake (see `symmetric-state.ts`), so a transport can never fall back to
 * plaintext. Once destroyed, every call throws `ERR_CLOSED`.
 *
 * @module
 * @example
 * ```ts
 * const [c1, c2] = handshake.split();
 * const ct = c1.encryptWithAd(new Uint8Array(0), utf8("hello"));
 * const pt = peerC1.decryptWithAd(new Uint8Array(0), ct);
 * ```
 */
import { defaultProvider, type CryptoProvider } from "../../src/_crypto.js";
import { wipe } from "../../src/_bytes.js";
import { sealwireError } from "../../src/errors.js";

/** The Noise message size limit in bytes (§3). */
export const MAX_MESSAGE_BYTES = 65535;
/** The ChaChaPoly authentication tag length in bytes. */
export const TAG_BYTES = 16;
/** The largest plaintext one transport message can carry: {@link MAX_MESSAGE_BYTES} − {@link TAG_BYTES}. */
export const MAX_PLAINTEXT_BYTES = MAX_MESSAGE_BYTES - TAG_BYTES;

const KEY_BYTES = 32;
const U32 = 0x1_0000_0000;
const MAX_U32 = 0xffff_ffff;
const MAX_NONCE = (1n << 64n) - 1n;
const EMPTY = new Uint8Array(0);
const ZEROS32 = new Uint8Array(32);
/** §12.3 encoding of the reserved nonce 2^64 − 1, used only by REKEY (§4.2). */
const REKEY_NONCE = Uint8Array.from([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

function tooLarge(what: string): Error {
  return sealwireError(
    "ERR_FRAME_TOO_LARGE",
    `${what} exceeds the ${MAX_MESSAGE_BYTES}-byte Noise message limit (Noise §3); split the data into smaller messages`,
  );
}

/**
 * A Noise CipherState holding a ChaChaPoly key and its nonce counter. Objects returned by
 * `HandshakeState.split()` are owned by the caller: call {@link CipherState.destroy} when the session ends.
 */
export class CipherState {
  #p: CryptoProvider;
  #k: Uint8Array | null;
  // n as two uint32 halves: plain numbers keep the per-message path free of bigint arithmetic.
  #lo = 0;
  #hi = 0;
  readonly #nonce = new Uint8Array(12);
  readonly #view = new DataView(this.#nonce.buffer);

  /**
   * InitializeKey(key) (§5.1): a copy of `key` with `n = 0`. The caller keeps, and should wipe, its own copy.
   * @param key 32 bytes.
   * @param provider The crypto provider for ChaCha20-Poly1305. @default defaultProvider
   */
  constructor(key: Uint8Array, provider: CryptoProvider = defaultProvider) {
    if (!(key instanceof Uint8Array) || key.length !== KEY_BYTES) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `CipherState key must be a Uint8Array of length ${KEY_BYTES}`);
    }
    this.#p = provider;
    this.#k = Uint8Array.from(key);
  }

  /** HasKey() (§5.1): false only after {@link CipherState.destroy}. */
  hasKey(): boolean {
    return this.#k !== null;
  }

  /** The next nonce `n` to be used. */
  get nonce(): bigint {
    return (BigInt(this.#hi) << 32n) | BigInt(this.#lo);
  }

  /**
   * SetNonce(n) (§5.1). Any value in [0, 2^64 − 1] is accepted; at 2^64 − 1 every encryption and decryption
   * throws `ERR_NONCE_EXHAUSTED`. Moving the nonce backwards makes nonce reuse possible: only use this to follow
   * an out-of-band message number (§11.4), never to retry.
   */
  setNonce(n: bigint): void {
    if (typeof n !== "bigint" || n < 0n || n > MAX_NONCE) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "setNonce: n must be a bigint in [0, 2^64 - 1]");
    }
    this.#lo = Number(n & 0xffff_ffffn);
    this.#hi = Number(n >> 32n);
  }

  /**
   * EncryptWithAd(ad, plaintext) (§5.1): returns `ciphertext || tag` (plaintext length + 16) and increments `n`.
   * @throws `ERR_NONCE_EXHAUSTED` at n = 2^64 − 1, `ERR_FRAME_TOO_LARGE` when the result would exceed 65535
   * bytes, `ERR_CLOSED` after destroy.
   */
  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    const k = this.#key();
    if (!(ad instanceof Uint8Array) || !(plaintext instanceof Uint8Array)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "encryptWithAd: ad and plaintext must be Uint8Arrays");
    }
    if (plaintext.length > MAX_PLAINTEXT_BYTES) throw tooLarge("the encrypted message");
    const out = this.#p.aeadSeal(k, this.#currentNonce(), ad, plaintext);
    this.#increment();
    return out;
  }

  /**
   * DecryptWithAd(ad, ciphertext) (§5.1): returns the plaintext and increments `n`. On authentication failure
   * throws `ERR_NOISE_DECRYPT` and leaves `n` unchanged.
   * @throws also `ERR_NONCE_EXHAUSTED`, `ERR_FRAME_TOO_LARGE`, `ERR_CLOSED` as for encryption.
   */
  decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    const k = this.#key();
    if (!(ad instanceof Uint8Array) || !(ciphertext instanceof Uint8Array)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "decryptWithAd: ad and ciphertext must be Uint8Arrays");
    }
    if (ciphertext.length > MAX_MESSAGE_BYTES) throw tooLarge("the received message");
    const nonce = this.#currentNonce();
    const pt = ciphertext.length < TAG_BYTES ? null : this.#p.aeadOpen(k, nonce, ad, ciphertext);
    if (pt === null) {
      throw sealwireError("ERR_NOISE_DECRYPT", "Noise message failed authentication; drop it (or the session)");
    }
    this.#increment();
    return pt;
  }

  /**
   * Rekey() (§5.1, §4.2): `k = REKEY(k)`, the first 32 bytes of ENCRYPT(k, 2^64 − 1, empty, 32 zero bytes).
   * `n` is unchanged. Both parties must rekey at the same point in the message stream (§11.3).
   */
  rekey(): void {
    const k = this.#key();
    const block = this.#p.aeadSeal(k, REKEY_NONCE, EMPTY, ZEROS32);
    this.#k = block.slice(0, KEY_BYTES);
    wipe(k, block);
  }

  /** Wipes the key. Every later call throws `ERR_CLOSED`. Idempotent. */
  destroy(): void {
    wipe(this.#k, this.#nonce);
    this.#k = null;
  }

  /** Never reveals the key. */
  toJSON(): string {
    return "<redacted>";
  }
  /** Never reveals the key. */
  toString(): string {
    return "CipherState <redacted>";
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  #key(): Uint8Array {
    if (this.#k === null) throw sealwireError("ERR_CLOSED", "this CipherState was destroyed; start a new session");
    return this.#k;
  }

  #currentNonce(): Uint8Array {
    if (this.#lo === MAX_U32 && this.#hi === MAX_U32) {
      throw sealwireError(
        "ERR_NONCE_EXHAUSTED",
        "Noise nonce space exhausted (n = 2^64 - 1 is reserved); start a new session",
      );
    }
    // §12.3: 32 bits of zeros followed by little-endian n. Bytes 0..3 stay zero from allocation.
    this.#view.setUint32(4, this.#lo, true);
    this.#view.setUint32(8, this.#hi, true);
    return this.#nonce;
  }

  #increment(): void {
    if (++this.#lo === U32) {
      this.#lo = 0;
      this.#hi++;
    }
  }
}
