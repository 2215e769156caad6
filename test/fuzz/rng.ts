/**
 * A small seeded PRNG for the fuzzer (sfc32: fast, 128-bit state, good enough statistics for choosing mutations)
 * and the seed derivation that gives every target its own reproducible stream.
 *
 * Not for cryptography: it drives which bytes the fuzzer flips, nothing else.
 *
 * @module
 * @example
 * ```ts
 * const rng = new Rng(deriveSeed(1234, "codec"));
 * const n = rng.int(10); // 0..9
 * ```
 */

/** Derives a 32-bit seed from a run seed and labels (FNV-1a over the labels, mixed with the seed). */
export function deriveSeed(seed: number, ...labels: (string | number)[]): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (const l of labels) {
    const s = String(l);
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    h ^= 0xff;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // Final avalanche (murmur3 fmix32), so nearby seeds give unrelated streams.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/** Parses a `--seed` value: a decimal or 0x-hex uint32, or any other string hashed to one. */
export function parseSeed(text: string): number {
  if (/^[0-9]{1,10}$/.test(text) && Number(text) <= 0xffffffff) return Number(text);
  if (/^0x[0-9a-fA-F]{1,8}$/.test(text)) return Number.parseInt(text.slice(2), 16);
  return deriveSeed(0, text);
}

/** sfc32 (Chris Doty-Humphrey's Small Fast Counting generator). */
export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;

  constructor(seed: number) {
    this.#a = 0x9e3779b9;
    this.#b = 0x243f6a88;
    this.#c = 0xb7e15162;
    this.#d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.u32();
  }

  /** A uniform uint32. */
  u32(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }

  /** A uniform integer in [0, n) for n ≥ 1. */
  int(n: number): number {
    if (n <= 1) return 0;
    if (n <= 0x100000000) return Math.floor((this.u32() / 0x100000000) * n);
    return Math.floor((this.u32() * 0x100000000 + this.u32()) / 2 ** 64 * n);
  }

  /** A uniform integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }

  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** Picks by weight: `[[weight, value], ...]`. */
  weighted<T>(items: readonly (readonly [number, T])[]): T {
    let total = 0;
    for (const [w] of items) total += w;
    let x = (this.u32() / 0x100000000) * total;
    for (const [w, v] of items) {
      if ((x -= w) < 0) return v;
    }
    return items[items.length - 1]![1];
  }

  /** n random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      let v = this.u32();
      for (let k = 0; k < 4 && i + k < n; k++, v >>>= 8) out[i + k] = v & 0xff;
    }
    return out;
  }

  /** A size biased to small values (half below 16), occasionally up to `max`. */
  size(max: number): number {
    const r = this.int(8);
    if (r < 4) return this.int(Math.min(16, max + 1));
    if (r < 7) return this.int(Math.min(256, max + 1));
    return this.int(max + 1);
  }
}
