/**
 * CipherState (Noise §5.1, §12.3, §4.2) and the Noise HKDF (§4.3): nonce encoding and exhaustion, nonce kept on
 * failed decryption, rekey, the 65535-byte limit, destroy, and HKDF against RFC 5869.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-cipher-state.test.ts
 * ```
 */
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { toHex, utf8 } from "../src/_bytes.js";
import { hkdfExpand, hkdfExtract, nativeProvider, nobleProvider, HASH_INFO, type HashName } from "../src/_crypto.js";
import { SealwireError, type ErrorCode } from "../src/errors.js";
import { CipherState, MAX_MESSAGE_BYTES, MAX_PLAINTEXT_BYTES } from "../transports/noise/index.js";
import { noiseHkdf } from "../transports/noise/symmetric-state.js";

const EMPTY = new Uint8Array(0);
const key = (b: number): Uint8Array => new Uint8Array(32).fill(b);

function code(f: () => unknown): ErrorCode | "no error" | "not a SealwireError" {
  try {
    f();
    return "no error";
  } catch (e) {
    return SealwireError.is(e) ? e.code : "not a SealwireError";
  }
}

/** §12.3 nonce: 4 zero bytes, then n as 64-bit little-endian. Built independently of the module. */
function nonceBytes(n: bigint): Uint8Array {
  const b = new Uint8Array(12);
  new DataView(b.buffer).setBigUint64(4, n, true);
  return b;
}

describe.each([nativeProvider, nobleProvider])("CipherState ($name)", (p) => {
  it("encrypts with the §12.3 nonce encoding, across the 32-bit boundary, and round-trips", () => {
    const a = new CipherState(key(7), p);
    const b = new CipherState(key(7), p);
    const ad = utf8("ad");
    for (const n of [0n, 1n, 0xffff_fffen, 0xffff_ffffn, 0x1_0000_0000n, 0x1_2345_6789_abcdn, 2n ** 64n - 2n]) {
      a.setNonce(n);
      b.setNonce(n);
      const pt = utf8(`message at ${n}`);
      const ct = a.encryptWithAd(ad, pt);
      expect(toHex(ct)).toBe(toHex(p.aeadSeal(key(7), nonceBytes(n), ad, pt)));
      expect(a.nonce).toBe(n + 1n);
      expect(toHex(b.decryptWithAd(ad, ct))).toBe(toHex(pt));
      expect(b.nonce).toBe(n + 1n);
    }
  });

  it("increments the nonce by one per message, so a replayed message fails", () => {
    const a = new CipherState(key(1), p);
    const b = new CipherState(key(1), p);
    const c0 = a.encryptWithAd(EMPTY, utf8("zero"));
    const c1 = a.encryptWithAd(EMPTY, utf8("one"));
    expect(toHex(c0)).not.toBe(toHex(c1));
    b.decryptWithAd(EMPTY, c0);
    expect(code(() => b.decryptWithAd(EMPTY, c0))).toBe("ERR_NOISE_DECRYPT"); // replay
    expect(toHex(b.decryptWithAd(EMPTY, c1))).toBe(toHex(utf8("one")));
  });

  it("reserves n = 2^64 - 1: encryption and decryption there throw ERR_NONCE_EXHAUSTED", () => {
    const a = new CipherState(key(2), p);
    a.setNonce(2n ** 64n - 2n);
    const last = a.encryptWithAd(EMPTY, utf8("last")); // the final usable nonce
    expect(a.nonce).toBe(2n ** 64n - 1n);
    expect(code(() => a.encryptWithAd(EMPTY, utf8("x")))).toBe("ERR_NONCE_EXHAUSTED");
    expect(a.nonce).toBe(2n ** 64n - 1n); // does not wrap to 0
    const b = new CipherState(key(2), p);
    b.setNonce(2n ** 64n - 1n);
    expect(code(() => b.decryptWithAd(EMPTY, last))).toBe("ERR_NONCE_EXHAUSTED");
    b.setNonce(2n ** 64n - 2n);
    expect(toHex(b.decryptWithAd(EMPTY, last))).toBe(toHex(utf8("last")));
  });

  it("rejects invalid setNonce values", () => {
    const a = new CipherState(key(3), p);
    for (const bad of [-1n, 2n ** 64n, 5 as unknown as bigint, "1" as unknown as bigint]) {
      expect(code(() => a.setNonce(bad))).toBe("ERR_INVALID_ARGUMENT");
    }
    expect(a.nonce).toBe(0n);
  });

  it("leaves the nonce unchanged after a failed decryption (§5.1), then accepts the genuine message", () => {
    const a = new CipherState(key(4), p);
    const b = new CipherState(key(4), p);
    const ad = utf8("header");
    const ct = a.encryptWithAd(ad, utf8("payload"));
    for (let i = 0; i < ct.length; i++) {
      const bad = Uint8Array.from(ct);
      bad[i]! ^= 0x01;
      expect(code(() => b.decryptWithAd(ad, bad))).toBe("ERR_NOISE_DECRYPT");
      expect(b.nonce).toBe(0n);
    }
    expect(code(() => b.decryptWithAd(utf8("other"), ct))).toBe("ERR_NOISE_DECRYPT"); // wrong AD
    expect(code(() => b.decryptWithAd(ad, ct.subarray(0, 15)))).toBe("ERR_NOISE_DECRYPT"); // shorter than a tag
    expect(code(() => b.decryptWithAd(ad, EMPTY))).toBe("ERR_NOISE_DECRYPT");
    expect(b.nonce).toBe(0n);
    expect(toHex(b.decryptWithAd(ad, ct))).toBe(toHex(utf8("payload")));
    expect(b.nonce).toBe(1n);
  });

  it("does not mutate its inputs", () => {
    const k = key(5);
    const a = new CipherState(k, p);
    k.fill(9); // the CipherState holds its own copy
    const ad = utf8("ad");
    const pt = utf8("plaintext");
    const ct = a.encryptWithAd(ad, pt);
    expect(toHex(pt)).toBe(toHex(utf8("plaintext")));
    expect(toHex(ad)).toBe(toHex(utf8("ad")));
    const ctCopy = Uint8Array.from(ct);
    new CipherState(key(5), p).decryptWithAd(ad, ct);
    expect(toHex(ct)).toBe(toHex(ctCopy));
  });

  it("rekey() follows §4.2 (first 32 bytes of ENCRYPT(k, 2^64-1, empty, zeros)), keeps n, and must happen on both sides", () => {
    const a = new CipherState(key(6), p);
    const b = new CipherState(key(6), p);
    b.decryptWithAd(EMPTY, a.encryptWithAd(EMPTY, utf8("before")));
    const expected = p.aeadSeal(key(6), nonceBytes(2n ** 64n - 1n), EMPTY, new Uint8Array(32)).slice(0, 32);
    a.rekey();
    expect(a.nonce).toBe(1n);
    const ct = a.encryptWithAd(EMPTY, utf8("after"));
    const ref = new CipherState(expected, p);
    ref.setNonce(1n);
    expect(toHex(ref.encryptWithAd(EMPTY, utf8("after")))).toBe(toHex(ct));
    // Without rekey the peer cannot read it, and its nonce stays put.
    expect(code(() => b.decryptWithAd(EMPTY, ct))).toBe("ERR_NOISE_DECRYPT");
    expect(b.nonce).toBe(1n);
    b.rekey();
    expect(toHex(b.decryptWithAd(EMPTY, ct))).toBe(toHex(utf8("after")));
    // Repeated rekeys stay in step over a long stream.
    for (let i = 0; i < 50; i++) {
      if (i % 7 === 0) {
        a.rekey();
        b.rekey();
      }
      const m = utf8(`m${i}`);
      expect(toHex(b.decryptWithAd(EMPTY, a.encryptWithAd(EMPTY, m)))).toBe(toHex(m));
    }
  });

  it("enforces the 65535-byte Noise message limit on both directions", () => {
    const a = new CipherState(key(8), p);
    const b = new CipherState(key(8), p);
    const ct = a.encryptWithAd(EMPTY, new Uint8Array(MAX_PLAINTEXT_BYTES));
    expect(ct.length).toBe(MAX_MESSAGE_BYTES);
    expect(b.decryptWithAd(EMPTY, ct).length).toBe(MAX_PLAINTEXT_BYTES);
    expect(code(() => a.encryptWithAd(EMPTY, new Uint8Array(MAX_PLAINTEXT_BYTES + 1)))).toBe("ERR_FRAME_TOO_LARGE");
    expect(a.nonce).toBe(1n);
    expect(code(() => b.decryptWithAd(EMPTY, new Uint8Array(MAX_MESSAGE_BYTES + 1)))).toBe("ERR_FRAME_TOO_LARGE");
    expect(b.nonce).toBe(1n);
  });

  it("destroy() wipes the key: every later call throws ERR_CLOSED", () => {
    const a = new CipherState(key(10), p);
    expect(a.hasKey()).toBe(true);
    a.destroy();
    a.destroy(); // idempotent
    expect(a.hasKey()).toBe(false);
    expect(code(() => a.encryptWithAd(EMPTY, EMPTY))).toBe("ERR_CLOSED");
    expect(code(() => a.decryptWithAd(EMPTY, new Uint8Array(16)))).toBe("ERR_CLOSED");
    expect(code(() => a.rekey())).toBe("ERR_CLOSED");
  });

  it("refuses bad arguments with ERR_INVALID_ARGUMENT", () => {
    expect(code(() => new CipherState(new Uint8Array(31), p))).toBe("ERR_INVALID_ARGUMENT");
    expect(code(() => new CipherState("k" as unknown as Uint8Array, p))).toBe("ERR_INVALID_ARGUMENT");
    const a = new CipherState(key(11), p);
    expect(code(() => a.encryptWithAd(null as unknown as Uint8Array, EMPTY))).toBe("ERR_INVALID_ARGUMENT");
    expect(code(() => a.decryptWithAd(EMPTY, [1, 2] as unknown as Uint8Array))).toBe("ERR_INVALID_ARGUMENT");
    expect(a.nonce).toBe(0n);
  });

  it("never prints its key", () => {
    const a = new CipherState(key(0xab), p);
    const hexKey = toHex(key(0xab));
    for (const s of [inspect(a, { showHidden: true, depth: 5 }), JSON.stringify({ a }), String(a)]) {
      expect(s).not.toContain(hexKey);
      expect(s).not.toContain("171,171");
      expect(s).toContain("redacted");
    }
  });
});

describe("Noise HKDF (§4.3)", () => {
  it.each(["sha256", "sha512", "blake2b"] as HashName[])("%s equals RFC 5869 HKDF with empty info", (alg) => {
    const len = HASH_INFO[alg].outLen;
    for (const p of [nativeProvider, nobleProvider]) {
      for (const ikmLen of [0, 32, 100]) {
        const ck = p.randomBytes(len);
        const ikm = p.randomBytes(ikmLen);
        const out = noiseHkdf(p, alg, ck, ikm, 3);
        const ref = hkdfExpand(p, alg, hkdfExtract(p, alg, ck, ikm), EMPTY, 3 * len);
        expect(out.map(toHex).join("")).toBe(toHex(ref));
        const two = noiseHkdf(p, alg, ck, ikm, 2);
        expect(two.map(toHex).join("")).toBe(toHex(ref.subarray(0, 2 * len)));
      }
    }
  });
});
