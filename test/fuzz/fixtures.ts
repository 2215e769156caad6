/**
 * Shared material for the fuzz targets: fixed identities (so a regression file that carries a signed envelope
 * replays against the same keys on any machine), a deterministic crypto provider for building samples, a
 * key-import cache for the Noise targets, fast-check streams, and oracle helpers (plain-value checks, deep
 * equality).
 *
 * The keys here are test keys derived from public labels. They protect nothing.
 *
 * @module
 * @example
 * ```ts
 * const alice = fixedIdentity("alice");
 * const stream = fcStream(fc.uint8Array(), seed, "codec");
 * const bytes = stream.next();
 * ```
 */
import fc from "fast-check";
import { createHash } from "node:crypto";
import { toHex } from "../../src/_bytes.js";
import { nativeProvider, type CryptoProvider, type X25519PrivateKey } from "../../src/_crypto.js";
import { Identity } from "../../src/identity.js";
import { deriveSeed, type Rng } from "./rng.js";

/** The clock every sample is made against and every opener/verifier runs at (2026-01-01T00:00:00Z). */
export const FIXED_NOW = Date.UTC(2026, 0, 1);

/** 32 bytes derived from a public label: fixed test key material. */
export function fixedSecret(label: string): Uint8Array {
  return new Uint8Array(createHash("sha256").update(`sealwire-fuzz/v1:${label}`).digest());
}

/** An identity with fixed keys (the same on every run and machine). */
export function fixedIdentity(id: string, provider: CryptoProvider = nativeProvider): Identity {
  return Identity.fromSecrets(id, { signSeed: fixedSecret(`${id}:sign`), sealSecret: fixedSecret(`${id}:seal`) }, { provider });
}

/**
 * The native provider with randomness drawn from `rng`: envelope ids and HPKE ephemerals become reproducible
 * from the seed. Only for building samples; the code under test verifies with the real provider.
 */
export function deterministicProvider(rng: Rng): CryptoProvider {
  const base = nativeProvider;
  return Object.freeze({
    ...base,
    randomBytes: (n: number) => rng.bytes(n),
    x25519Generate: () => base.x25519FromSecret(rng.bytes(32)),
    ed25519Generate: () => {
      const seed = rng.bytes(32);
      return { key: base.ed25519FromSeed(seed), seed: Uint8Array.from(seed) };
    },
  });
}

const kInner = Symbol("inner");
interface CachedKey extends X25519PrivateKey {
  readonly [kInner]: X25519PrivateKey;
}

/**
 * The native provider with X25519 secret imports memoised (OpenSSL's PKCS#8 import costs ~1 ms; the DH itself
 * ~70 µs). Each import returns a fresh handle whose `destroy()` only marks that handle dead, so the Noise code's
 * own life cycle (destroy after use, refuse a destroyed key) is unchanged. Used by the Noise targets, where every
 * case replays a handshake prefix with fixed ephemerals; a share of cases runs on the real provider too.
 */
export function cachingProvider(): CryptoProvider {
  const base = nativeProvider;
  const cache = new Map<string, X25519PrivateKey>();
  const unwrap = (k: X25519PrivateKey): X25519PrivateKey => {
    const inner = (k as Partial<CachedKey>)[kInner];
    if (inner === undefined) return k;
    if (dead.has(k)) throw new Error("cachingProvider: key used after destroy()");
    return inner;
  };
  const dead = new WeakSet<object>();
  return Object.freeze({
    ...base,
    x25519FromSecret: (sk: Uint8Array) => {
      const hex = toHex(sk);
      let inner = cache.get(hex);
      if (inner === undefined) {
        inner = base.x25519FromSecret(sk);
        if (cache.size > 4096) cache.clear();
        cache.set(hex, inner);
      }
      const handle: CachedKey = {
        publicKey: inner.publicKey,
        destroy() {
          dead.add(handle);
        },
        [kInner]: inner,
      };
      return handle;
    },
    x25519: (sk: X25519PrivateKey, pk: Parameters<CryptoProvider["x25519"]>[1]) => base.x25519(unwrap(sk), pk),
  });
}

/**
 * Imports a throwaway Ed25519 key through OpenSSL. Node 20 leaves some OpenSSL failures (scrypt parameter errors)
 * on the thread's error queue, where the next unrelated key import picks them up and fails. Returns that stale
 * error's message, or undefined when the import worked; a failure consumes the stale error.
 */
export function staleOpenSslError(): string | undefined {
  try {
    nativeProvider.ed25519FromSeed(CANARY_SEED).destroy();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
const CANARY_SEED = fixedSecret("openssl-canary");

/**
 * Runs `fn`, then checks the OpenSSL error queue ({@link staleOpenSslError}). A stale error after a call that
 * returned or refused cleanly is thrown as a plain Error: the decoder broke the process for whoever comes next.
 */
export async function withOpenSslCanary<T>(fn: () => Promise<T>): Promise<T> {
  let result: T | undefined;
  let error: unknown;
  let failed = false;
  try {
    result = await fn();
  } catch (e) {
    failed = true;
    error = e;
  }
  const stale = staleOpenSslError();
  if (stale !== undefined && (!failed || (error as { name?: string })?.name === "SealwireError")) {
    throw new Error(`the call left an error on the OpenSSL queue; the next, unrelated key import failed with: ${stale}`);
  }
  if (failed) throw error;
  return result as T;
}

/** Endless values from a fast-check arbitrary, drawn in seeded batches (fc.sample is cheap per value in bulk). */
export interface FcStream<T> {
  next(): T;
}

export function fcStream<T>(arb: fc.Arbitrary<T>, seed: number, label: string, batch = 256): FcStream<T> {
  let buf: T[] = [];
  let i = 0;
  let round = 0;
  return {
    next() {
      if (i >= buf.length) {
        buf = fc.sample(arb, { seed: deriveSeed(seed, label, round++) | 0, numRuns: batch });
        i = 0;
      }
      return buf[i++]!;
    },
  };
}

/** Plain data as MessagePack carries it (numbers of every kind, bytes, nested containers). */
export const plainArb: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: false },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double(),
    fc.string({ maxLength: 40 }),
    fc.string({ unit: "binary", maxLength: 20 }),
    fc.uint8Array({ maxLength: 40 }),
    fc.array(tie("v"), { maxLength: 6 }),
    fc.dictionary(fc.string({ maxLength: 8 }), tie("v"), { maxKeys: 6 }),
  ),
})).v;

/** Application data (`Data`): finite numbers only, as `encodeData` accepts. */
export const dataArb: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: false },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.maxSafeInteger(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    fc.string({ maxLength: 60 }),
    fc.uint8Array({ maxLength: 60 }),
    fc.array(tie("v"), { maxLength: 6 }),
    fc.dictionary(
      fc.string({ maxLength: 8 }).filter((k) => k !== "__proto__"),
      tie("v"),
      { maxKeys: 6 },
    ),
  ),
})).v;

/** Byte strings biased toward the lengths decoders care about. */
export function bytesArb(maxLength: number): fc.Arbitrary<Uint8Array> {
  return fc.oneof(fc.uint8Array({ maxLength: Math.min(64, maxLength) }), fc.uint8Array({ maxLength }));
}

/** Byte-for-byte equality. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/** Deep equality for decoded plain data (numbers: NaN equals NaN, -0 equals 0). */
export function deepEqualPlain(a: unknown, b: unknown): boolean {
  if (typeof a === "number" && typeof b === "number") return a === b || (Number.isNaN(a) && Number.isNaN(b));
  if (a instanceof Uint8Array || b instanceof Uint8Array) return a instanceof Uint8Array && b instanceof Uint8Array && sameBytes(a, b);
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqualPlain(x, b[i]));
  }
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object") {
    const ka = Object.keys(a).sort();
    const kb = Object.keys(b).sort();
    return (
      ka.length === kb.length &&
      ka.every((k, i) => k === kb[i] && deepEqualPlain((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
    );
  }
  return a === b;
}

/** Options for {@link plainProblem}. */
export interface PlainRules {
  maxDepth: number;
  maxItems?: number;
  /** Numbers must be finite (the `Data` contract). */
  finite?: boolean;
  /** Byte strings must be plain Uint8Arrays, never Buffers (the `decodePayload` contract). */
  noBuffers?: boolean;
}

/**
 * Why `v` is not plain data within the rules (or undefined if it is): only null, booleans, numbers, strings,
 * Uint8Arrays, arrays and objects whose prototype is Object.prototype without an own `__proto__`; nesting and
 * item count within the limits. Iterative, so hostile depth cannot overflow the oracle.
 */
export function plainProblem(v: unknown, rules: PlainRules): string | undefined {
  const stack: [unknown, number][] = [[v, 0]];
  let items = 0;
  while (stack.length > 0) {
    const [x, depth] = stack.pop()!;
    items++;
    if (x === null || typeof x === "boolean" || typeof x === "string") continue;
    if (typeof x === "number") {
      if (rules.finite && !Number.isFinite(x)) return `non-finite number ${x}`;
      continue;
    }
    if (x instanceof Uint8Array) {
      if (rules.noBuffers && Buffer.isBuffer(x)) return "a Buffer where a plain Uint8Array was promised";
      continue;
    }
    if (typeof x !== "object") return `value of type ${typeof x}`;
    if (depth + 1 > rules.maxDepth) return `nesting deeper than ${rules.maxDepth}`;
    if (Array.isArray(x)) {
      for (const y of x) stack.push([y, depth + 1]);
      continue;
    }
    const proto = Object.getPrototypeOf(x) as unknown;
    if (proto !== Object.prototype) return "an object whose prototype is not Object.prototype";
    if (Object.hasOwn(x, "__proto__")) return "an own __proto__ key";
    for (const k of Object.keys(x)) {
      items++; // keys count as items, as in the walker
      stack.push([(x as Record<string, unknown>)[k], depth + 1]);
    }
  }
  if (rules.maxItems !== undefined && items > rules.maxItems) return `${items} items, more than ${rules.maxItems}`;
  return undefined;
}
