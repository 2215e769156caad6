/**
 * Internal byte helpers: concatenation, constant-time comparison, wiping, hex/utf8/base64url.
 *
 * @module
 * @example
 * ```ts
 * const ok = equalBytes(a, b); wipe(secret);
 * ```
 */
import { sealwireError } from "./errors.js";

const te = new TextEncoder();
const td = new TextDecoder("utf-8", { fatal: true });

/** UTF-8 encode. */
export const utf8 = (s: string): Uint8Array => te.encode(s);
/** Strict UTF-8 decode (throws on invalid sequences). */
export const fromUtf8 = (b: Uint8Array): string => td.decode(b);

/** Concatenates byte arrays into a fresh array. */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Constant-time equality for equal-length inputs (length itself is not secret). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** Overwrites every given array with zeros. JavaScript cannot guarantee no other copy exists (see SECURITY). */
export function wipe(...arrays: (Uint8Array | undefined | null)[]): void {
  for (const a of arrays) a?.fill(0);
}

/** Lower-case hex of bytes. Only for public values (ids, public keys, digests). */
export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

/** Strict hex decode; throws ERR_INVALID_ARGUMENT naming `what`. */
export function fromHex(hex: string, what = "hex"): Uint8Array {
  if (typeof hex !== "string" || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be an even-length hex string`);
  }
  return new Uint8Array(Buffer.from(hex, "hex"));
}

/** base64url without padding (public values only). */
export function toBase64url(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("base64url");
}

/** Strict base64url decode; throws ERR_INVALID_ARGUMENT naming `what` and the expected length. */
export function fromBase64url(s: string, length: number, what: string): Uint8Array {
  if (typeof s !== "string" || !/^[A-Za-z0-9_-]*$/.test(s)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be base64url`);
  }
  const b = new Uint8Array(Buffer.from(s, "base64url"));
  if (b.length !== length || toBase64url(b) !== s) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must encode exactly ${length} bytes`);
  }
  return b;
}

/** Throws ERR_INVALID_ARGUMENT unless `b` is a Uint8Array (of `length`, when given). */
export function assertBytes(b: unknown, what: string, length?: number): asserts b is Uint8Array {
  if (!(b instanceof Uint8Array)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be a Uint8Array`);
  }
  if (length !== undefined && b.length !== length) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be ${length} bytes, got ${b.length}`);
  }
}

/** Big-endian encoding of a non-negative integer into `n` bytes (I2OSP, RFC 8017 §4.1). */
export function i2osp(value: number, n: number): Uint8Array {
  if (!Number.isSafeInteger(value) || value < 0 || (n < 7 && value >= 256 ** n)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `i2osp: ${value} does not fit ${n} bytes`);
  }
  const out = new Uint8Array(n);
  let v = value;
  for (let i = n - 1; i >= 0 && v > 0; i--) {
    out[i] = v % 256;
    v = Math.floor(v / 256);
  }
  return out;
}
