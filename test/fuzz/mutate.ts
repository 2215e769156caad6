/**
 * Mutation engine for the fuzzer: turns VALID samples (generated at run time by each target) into hostile
 * neighbours, at three levels.
 *
 * - Bytes: bit flips, interesting bytes and words, insertion, deletion, duplication, truncation, extension, and
 *   splicing two samples together.
 * - MessagePack structure (a tolerant tokenizer finds every value header): length-field inflation (±1, max, a
 *   random value), widening a header to a 32-bit length that lies, huge declared sizes (`0xdd ff ff ff ff`, …),
 *   deep nesting (thousands of `0x91`), replacing a value with another type, and ext/reserved type bytes.
 * - Text and values: JSON-aware edits (parse, mutate a node, re-serialise), interesting strings (`__proto__`,
 *   `constructor`, lone surrogates, NUL, 64 KiB runs), numeric boundaries (2^53 + 1, -0, 1e309), and
 *   non-canonical base64url tails (a different last character that decodes to the same bytes).
 *
 * Every choice comes from the caller's {@link Rng}, so a seed replays the same mutations.
 *
 * @module
 * @example
 * ```ts
 * const m = mutateBytes(rng, sample, { others: samples, msgpack: true });
 * ```
 */
import type { Rng } from "./rng.js";

// ---------------------------------------------------------------------------------------------------------------
// Interesting constants

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6,
  0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xfe, 0xff, 0x0a,
  0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x20] as const;
const INTERESTING_WORDS: readonly number[][] = [
  [0x00, 0x00], [0xff, 0xff], [0x7f, 0xff], [0x80, 0x00], [0x00, 0x01], [0x01, 0x00],
  [0x00, 0x00, 0x00, 0x00], [0xff, 0xff, 0xff, 0xff], [0x7f, 0xff, 0xff, 0xff], [0x80, 0x00, 0x00, 0x00],
  [0x00, 0x01, 0x00, 0x00], [0x00, 0x20, 0x00, 0x00],
  [0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], [0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
  [0xff, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], [0x7f, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
  [0x7f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
];
/** Headers that declare huge or hostile sizes, inserted whole. */
const HOSTILE_HEADERS: readonly number[][] = [
  [0xdd, 0xff, 0xff, 0xff, 0xff], [0xdf, 0xff, 0xff, 0xff, 0xff], [0xc6, 0xff, 0xff, 0xff, 0xff],
  [0xdb, 0xff, 0xff, 0xff, 0xff], [0xdd, 0x7f, 0xff, 0xff, 0xff], [0xdc, 0xff, 0xff], [0xde, 0xff, 0xff],
  [0xc5, 0xff, 0xff], [0xda, 0xff, 0xff], [0xc4, 0xff], [0xd9, 0xff], [0xc7, 0xff, 0x01], [0xc8, 0xff, 0xff, 0xff],
  [0xc9, 0xff, 0xff, 0xff, 0xff, 0x00], [0xd4, 0xff, 0x00], [0xd6, 0xff, 0, 0, 0, 0], [0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
  [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], [0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
  [0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1], [0x81, 0xa9, ...Array.from("__proto__", (c) => c.charCodeAt(0)), 0x80],
  [0x81, 0x01, 0x02], [0x81, 0xc0, 0xc0], [0xa2, 0xc3, 0x28], [0xa3, 0xed, 0xa0, 0x80], [0xa1, 0xff],
];

/** Strings that break naive parsers and validators. */
export const INTERESTING_STRINGS: readonly string[] = [
  "", " ", "\u0000", "\n", "\r\n", "\t", "\\", '"', "'", "\ufeff", "\ud800", "\udfff", "\u2028", "\u00e9", "e\u0301",
  "\ud83d\ude00", "__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "valueOf", "null", "true",
  "NaN", "-0", "1e309", "9007199254740993", "-9007199254740993", "0x10", "00", "1.0", "%s%n", "${x}", "../../etc/passwd",
  "/dev/zero", "C:\\x", "a".repeat(65), "a".repeat(257), "A".repeat(4097), "x".repeat(70_000), "[".repeat(3000),
  "{".repeat(3000), '{"a":'.repeat(2000), "ws://127.0.0.1:1", "pii:email", "pii:", "sw1:", "sealwire-keystore/1",
  "sealwire-keystore/2", "0".repeat(32), "0".repeat(64), "f".repeat(16), "AAAA", "____", "----",
];

export const INTERESTING_NUMBERS: readonly number[] = [0, -0, 1, -1, 2, 7, 8, 9, 10, 16, 17, 20, 21, 31, 32, 33, 63, 64, 65,
  127, 128, 255, 256, 4096, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2,
  -(2 ** 53), 1.5, 0.1, 1e21, 1e308, -1e308, Number.MIN_VALUE, Number.NaN, Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY, 86_400_000, 86_400_001, 1_767_225_600_000];

// ---------------------------------------------------------------------------------------------------------------
// Byte mutations

/** Options for {@link mutateBytes}. */
export interface ByteMutationOptions {
  /** Other valid samples to splice with. */
  others?: readonly Uint8Array[];
  /** Also apply MessagePack-structure mutations. */
  msgpack?: boolean;
  /** Largest output; longer results are cut. @default 1 MiB */
  maxLength?: number;
  /** How many stacked mutations at most. @default 4 */
  maxStack?: number;
}

function insertAt(b: Uint8Array, pos: number, ins: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(b.length + ins.length);
  out.set(b.subarray(0, pos), 0);
  out.set(ins, pos);
  out.set(b.subarray(pos), pos + ins.length);
  return out;
}

function deleteAt(b: Uint8Array, pos: number, n: number): Uint8Array {
  const out = new Uint8Array(b.length - n);
  out.set(b.subarray(0, pos), 0);
  out.set(b.subarray(pos + n), pos);
  return out;
}

function replaceAt(b: Uint8Array, pos: number, n: number, ins: ArrayLike<number>): Uint8Array {
  return insertAt(deleteAt(b, pos, n), pos, ins);
}

type ByteMutator = (rng: Rng, b: Uint8Array, o: ByteMutationOptions) => Uint8Array;

const BYTE_MUTATORS: readonly (readonly [number, ByteMutator])[] = [
  [6, (rng, b) => {
    if (b.length === 0) return Uint8Array.of(rng.int(256));
    const out = Uint8Array.from(b);
    const flips = rng.pick([1, 1, 1, 2, 3, 8]);
    for (let i = 0; i < flips; i++) out[rng.int(out.length)]! ^= 1 << rng.int(8);
    return out;
  }],
  [4, (rng, b) => {
    if (b.length === 0) return Uint8Array.of(rng.pick(INTERESTING_BYTES));
    const out = Uint8Array.from(b);
    out[rng.int(out.length)] = rng.chance(0.7) ? rng.pick(INTERESTING_BYTES) : rng.int(256);
    return out;
  }],
  [2, (rng, b) => {
    const w = rng.pick(INTERESTING_WORDS);
    if (b.length < w.length) return insertAt(b, 0, w);
    const out = Uint8Array.from(b);
    out.set(w, rng.int(b.length - w.length + 1));
    return out;
  }],
  [3, (rng, b) => insertAt(b, rng.int(b.length + 1), rng.bytes(rng.size(64) + 1))],
  [2, (rng, b) => insertAt(b, rng.int(b.length + 1), [rng.pick(INTERESTING_BYTES)])],
  [3, (rng, b) => {
    if (b.length === 0) return b;
    const pos = rng.int(b.length);
    return deleteAt(b, pos, 1 + rng.int(Math.min(b.length - pos, rng.chance(0.5) ? 4 : 64)));
  }],
  [2, (rng, b) => {
    if (b.length === 0) return b;
    const pos = rng.int(b.length);
    const n = 1 + rng.int(Math.min(b.length - pos, 64));
    return insertAt(b, rng.int(b.length + 1), b.slice(pos, pos + n));
  }],
  [3, (rng, b) => b.slice(0, rng.int(b.length + 1))],
  [1, (rng, b) => b.slice(rng.int(b.length + 1))],
  [1, (rng, b) => insertAt(b, b.length, rng.chance(0.5) ? rng.bytes(1 + rng.int(8)) : [0xc0])],
  [3, (rng, b, o) => {
    const other = o.others && o.others.length > 0 ? rng.pick(o.others) : b;
    const cut = rng.int(b.length + 1);
    const from = rng.int(other.length + 1);
    const out = new Uint8Array(cut + other.length - from);
    out.set(b.subarray(0, cut), 0);
    out.set(other.subarray(from), cut);
    return out;
  }],
  [1, (rng, b) => {
    // Overwrite a range with a copy of another range of the same input (moves lengths and tags around).
    if (b.length < 2) return b;
    const n = 1 + rng.int(Math.min(16, b.length - 1));
    const src = rng.int(b.length - n + 1);
    const dst = rng.int(b.length - n + 1);
    const out = Uint8Array.from(b);
    out.set(b.subarray(src, src + n), dst);
    return out;
  }],
];

// ---------------------------------------------------------------------------------------------------------------
// MessagePack structure

/** One MessagePack value header found by {@link tokenize}. */
export interface MsgpackToken {
  /** Offset of the type byte. */
  pos: number;
  /** Offset and width of the length/count field (width 0 for fix types and scalars). */
  lenPos: number;
  lenSize: number;
  kind: "str" | "bin" | "array" | "map" | "scalar" | "ext";
  /** Offset just past the whole value (header + payload; for containers, past the header only). */
  end: number;
}

/** A tolerant walk over MessagePack bytes, returning every value header it can find (stops at garbage). */
export function tokenize(b: Uint8Array, limit = 4096): MsgpackToken[] {
  const out: MsgpackToken[] = [];
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 0;
  const rd = (p: number, n: number): number => {
    if (p + n > b.length) return -1;
    return n === 1 ? dv.getUint8(p) : n === 2 ? dv.getUint16(p) : dv.getUint32(p);
  };
  while (pos < b.length && out.length < limit) {
    const t = b[pos]!;
    let tok: MsgpackToken | undefined;
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) tok = { pos, lenPos: pos, lenSize: 0, kind: "scalar", end: pos + 1 };
    else if (t >= 0xa0 && t <= 0xbf) tok = { pos, lenPos: pos, lenSize: 0, kind: "str", end: pos + 1 + (t & 0x1f) };
    else if (t >= 0x90 && t <= 0x9f) tok = { pos, lenPos: pos, lenSize: 0, kind: "array", end: pos + 1 };
    else if (t >= 0x80 && t <= 0x8f) tok = { pos, lenPos: pos, lenSize: 0, kind: "map", end: pos + 1 };
    else {
      const sized = (kind: MsgpackToken["kind"], n: number, payload: boolean): MsgpackToken | undefined => {
        const len = rd(pos + 1, n);
        if (len < 0) return undefined;
        return { pos, lenPos: pos + 1, lenSize: n, kind, end: pos + 1 + n + (payload ? len : 0) };
      };
      const fixed = (n: number): MsgpackToken => ({ pos, lenPos: pos, lenSize: 0, kind: "scalar", end: pos + 1 + n });
      switch (t) {
        case 0xc4: tok = sized("bin", 1, true); break;
        case 0xc5: tok = sized("bin", 2, true); break;
        case 0xc6: tok = sized("bin", 4, true); break;
        case 0xd9: tok = sized("str", 1, true); break;
        case 0xda: tok = sized("str", 2, true); break;
        case 0xdb: tok = sized("str", 4, true); break;
        case 0xdc: tok = sized("array", 2, false); break;
        case 0xdd: tok = sized("array", 4, false); break;
        case 0xde: tok = sized("map", 2, false); break;
        case 0xdf: tok = sized("map", 4, false); break;
        case 0xca: tok = fixed(4); break;
        case 0xcb: tok = fixed(8); break;
        case 0xcc: case 0xd0: tok = fixed(1); break;
        case 0xcd: case 0xd1: tok = fixed(2); break;
        case 0xce: case 0xd2: tok = fixed(4); break;
        case 0xcf: case 0xd3: tok = fixed(8); break;
        default: tok = { pos, lenPos: pos, lenSize: 0, kind: "ext", end: pos + 1 };
      }
    }
    if (!tok || tok.end > b.length) break;
    out.push(tok);
    pos = tok.end;
  }
  return out;
}

function writeLen(out: Uint8Array, pos: number, size: number, value: number): void {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  if (size === 1) dv.setUint8(pos, value & 0xff);
  else if (size === 2) dv.setUint16(pos, value & 0xffff);
  else dv.setUint32(pos, value >>> 0);
}

function readLen(b: Uint8Array, pos: number, size: number): number {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return size === 1 ? dv.getUint8(pos) : size === 2 ? dv.getUint16(pos) : dv.getUint32(pos);
}

const MSGPACK_MUTATORS: readonly (readonly [number, (rng: Rng, b: Uint8Array, toks: MsgpackToken[]) => Uint8Array])[] = [
  // Length-field inflation / deflation.
  [5, (rng, b, toks) => {
    const sized = toks.filter((t) => t.kind !== "scalar" && t.kind !== "ext");
    if (sized.length === 0) return b;
    const t = rng.pick(sized);
    const out = Uint8Array.from(b);
    if (t.lenSize === 0) {
      // fix types: the count lives in the low bits of the type byte.
      const mask = t.kind === "str" ? 0x1f : 0x0f;
      const cur = out[t.pos]! & mask;
      const next = rng.pick([cur + 1, cur - 1, mask, 0, rng.int(mask + 1)]) & mask;
      out[t.pos] = (out[t.pos]! & ~mask) | next;
      return out;
    }
    const max = 2 ** (8 * t.lenSize) - 1;
    const cur = readLen(b, t.lenPos, t.lenSize);
    writeLen(out, t.lenPos, t.lenSize, rng.pick([cur + 1, cur - 1, max, max >>> 1, 0, rng.int(max + 1), cur * 2]));
    return out;
  }],
  // Widen a header to a 32-bit length that claims far more than is there.
  [2, (rng, b, toks) => {
    const sized = toks.filter((t) => t.kind !== "scalar" && t.kind !== "ext");
    if (sized.length === 0) return b;
    const t = rng.pick(sized);
    const type = { str: 0xdb, bin: 0xc6, array: 0xdd, map: 0xdf }[t.kind as "str" | "bin" | "array" | "map"];
    const huge = rng.pick([0xffffffff, 0x7fffffff, 0x00100000, b.length, b.length + 1]);
    return replaceAt(b, t.pos, 1 + t.lenSize, [type, huge >>> 24, (huge >>> 16) & 0xff, (huge >>> 8) & 0xff, huge & 0xff]);
  }],
  // Insert a hostile header before a value.
  [3, (rng, b, toks) => {
    const at = toks.length > 0 ? rng.pick(toks).pos : rng.int(b.length + 1);
    return insertAt(b, at, rng.pick(HOSTILE_HEADERS));
  }],
  // Deep nesting: thousands of one-element arrays / maps in front of a value.
  [2, (rng, b, toks) => {
    const at = toks.length > 0 ? rng.pick(toks).pos : 0;
    const depth = rng.pick([9, 65, 66, 200, 1000, 10_000]);
    if (rng.chance(0.5)) return insertAt(b, at, new Uint8Array(depth).fill(rng.pick([0x91, 0xdc])));
    const unit = [0x81, 0xa1, 0x61];
    const ins = new Uint8Array(depth * 3);
    for (let i = 0; i < depth; i++) ins.set(unit, i * 3);
    return insertAt(b, at, ins);
  }],
  // Replace a scalar or header byte with another type's.
  [3, (rng, b, toks) => {
    if (toks.length === 0) return b;
    const t = rng.pick(toks);
    const out = Uint8Array.from(b);
    out[t.pos] = rng.pick(INTERESTING_BYTES);
    return out;
  }],
  // Drop a whole value (the container's count now lies).
  [2, (rng, b, toks) => {
    const whole = toks.filter((t) => t.kind !== "array" && t.kind !== "map");
    if (whole.length === 0) return b;
    const t = rng.pick(whole);
    return deleteAt(b, t.pos, t.end - t.pos);
  }],
  // Duplicate a whole value.
  [1, (rng, b, toks) => {
    const whole = toks.filter((t) => t.kind !== "array" && t.kind !== "map");
    if (whole.length === 0) return b;
    const t = rng.pick(whole);
    return insertAt(b, t.end, b.slice(t.pos, t.end));
  }],
];

/** Applies 1..maxStack random mutations to `input` (never modifies it). */
export function mutateBytes(rng: Rng, input: Uint8Array, o: ByteMutationOptions = {}): Uint8Array {
  const maxLength = o.maxLength ?? 1 << 20;
  const stack = 1 + rng.int(o.maxStack ?? 4);
  let b = input;
  for (let i = 0; i < stack; i++) {
    if (o.msgpack && rng.chance(0.45)) {
      b = rng.weighted(MSGPACK_MUTATORS)(rng, b, tokenize(b));
    } else {
      b = rng.weighted(BYTE_MUTATORS)(rng, b, o);
    }
    if (b.length > maxLength) b = b.subarray(0, maxLength);
  }
  return b === input ? Uint8Array.from(input) : b;
}

// ---------------------------------------------------------------------------------------------------------------
// Values (the shapes JSON and MessagePack decode to)

/** A plain value: what JSON.parse / the strict codec can return, plus bytes. */
export type Plain = null | boolean | number | string | Uint8Array | Plain[] | { [k: string]: Plain };

function interestingValue(rng: Rng): Plain {
  switch (rng.int(7)) {
    case 0: return rng.pick(INTERESTING_NUMBERS);
    case 1: return rng.pick(INTERESTING_STRINGS);
    case 2: return rng.pick([null, true, false]);
    case 3: return rng.bytes(rng.pick([0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, rng.size(300)]));
    case 4: return rng.chance(0.5) ? [] : {};
    case 5: return rng.int(2 ** 31);
    default: return rng.bytes(rng.int(12)).reduce((s, x) => s + String.fromCharCode(0x20 + (x % 95)), "");
  }
}

/** One edit of a string: an interesting value, a character changed, a run deleted or inserted, doubled, cut. */
export function mutateString(rng: Rng, s: string): string {
  switch (rng.int(8)) {
    case 0: return rng.pick(INTERESTING_STRINGS);
    case 1: { // replace one character
      if (s.length === 0) return rng.pick(INTERESTING_STRINGS);
      const i = rng.int(s.length);
      return s.slice(0, i) + String.fromCharCode(rng.chance(0.8) ? 0x20 + rng.int(95) : rng.int(0x10000)) + s.slice(i + 1);
    }
    case 2: { // delete a run
      const i = rng.int(s.length + 1);
      return s.slice(0, i) + s.slice(i + 1 + rng.int(4));
    }
    case 3: { // insert something interesting
      const i = rng.int(s.length + 1);
      return s.slice(0, i) + rng.pick(INTERESTING_STRINGS).slice(0, 80) + s.slice(i);
    }
    case 4: return s + s;
    case 5: return s.toUpperCase();
    case 6: return nonCanonicalBase64Tail(rng, s) ?? s.slice(0, -1);
    default: return s.slice(0, rng.int(s.length + 1));
  }
}

function mutateNumber(rng: Rng, n: number): number {
  switch (rng.int(5)) {
    case 0: return rng.pick(INTERESTING_NUMBERS);
    case 1: return n + rng.pick([1, -1, 1000, -1000, 0.5]);
    case 2: return -n;
    case 3: return n * rng.pick([2, 1024, 2 ** 20]);
    default: return rng.int(2 ** 32) - 2 ** 31;
  }
}

/** Sets own property `k` (also `__proto__`, as JSON.parse would) on a plain object. */
function setOwn(o: { [k: string]: Plain }, k: string, v: Plain): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

const INTERESTING_KEYS = ["__proto__", "constructor", "toString", "v", "id", "kid", "sig", "x", "", "a".repeat(300)];

/** Returns a mutated deep copy of `v`: one random node replaced, deleted, retyped, renamed or deepened. */
export function mutateValue(rng: Rng, v: Plain, otherKeys: readonly string[] = []): Plain {
  // Collect the nodes, then choose one to edit: every level is equally likely to be touched.
  const copy = clonePlain(v);
  const nodes: { parent: Plain[] | { [k: string]: Plain } | null; key: string | number; value: Plain }[] = [{ parent: null, key: 0, value: copy }];
  for (let i = 0; i < nodes.length && nodes.length < 2000; i++) {
    const n = nodes[i]!.value;
    if (Array.isArray(n)) n.forEach((x, k) => nodes.push({ parent: n, key: k, value: x }));
    else if (n !== null && typeof n === "object" && !(n instanceof Uint8Array)) {
      for (const k of Object.keys(n)) nodes.push({ parent: n, key: k, value: n[k]! });
    }
  }
  const node = rng.pick(nodes);
  const replace = (x: Plain): Plain => {
    if (node.parent === null) return x;
    if (Array.isArray(node.parent)) node.parent[node.key as number] = x;
    else setOwn(node.parent, node.key as string, x);
    return copy;
  };
  const val = node.value;
  const op = rng.int(10);
  if (op === 0) return replace(interestingValue(rng));
  if (op === 1 && node.parent !== null) {
    // delete
    if (Array.isArray(node.parent)) node.parent.splice(node.key as number, 1);
    else delete node.parent[node.key as string];
    return copy;
  }
  if (op === 2 && node.parent !== null && !Array.isArray(node.parent)) {
    // rename
    const k = rng.chance(0.5) ? rng.pick(INTERESTING_KEYS) : rng.pick([...otherKeys, ...INTERESTING_KEYS]);
    const x = node.parent[node.key as string]!;
    delete node.parent[node.key as string];
    setOwn(node.parent, k, x);
    return copy;
  }
  if (op === 3) {
    // add a member / element to a container
    if (Array.isArray(val)) {
      val.splice(rng.int(val.length + 1), 0, interestingValue(rng));
      return copy;
    }
    if (val !== null && typeof val === "object" && !(val instanceof Uint8Array)) {
      setOwn(val, rng.pick([...otherKeys, ...INTERESTING_KEYS]), interestingValue(rng));
      return copy;
    }
  }
  if (op === 4) {
    // deepen
    let x: Plain = val;
    const depth = rng.pick([1, 2, 70, 1000]);
    for (let i = 0; i < depth; i++) x = rng.chance(0.5) ? [x] : { a: x };
    return replace(x);
  }
  if (typeof val === "string") return replace(mutateString(rng, val));
  if (typeof val === "number") return replace(mutateNumber(rng, val));
  if (typeof val === "boolean") return replace(rng.chance(0.5) ? !val : rng.pick([0, 1, "true", null]));
  if (val instanceof Uint8Array) return replace(rng.chance(0.8) ? mutateBytes(rng, val, { maxStack: 2 }) : Array.from(val));
  if (Array.isArray(val) && val.length > 1 && rng.chance(0.5)) {
    const i = rng.int(val.length);
    const j = rng.int(val.length);
    [val[i], val[j]] = [val[j]!, val[i]!];
    return copy;
  }
  return replace(interestingValue(rng));
}

/** A deep copy of a plain value (own enumerable keys, bytes copied). */
export function clonePlain(v: Plain): Plain {
  if (v instanceof Uint8Array) return Uint8Array.from(v);
  if (Array.isArray(v)) return v.map(clonePlain);
  if (v !== null && typeof v === "object") {
    const o: { [k: string]: Plain } = {};
    for (const k of Object.keys(v)) setOwn(o, k, clonePlain(v[k]!));
    return o;
  }
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// Text

const te = new TextEncoder();
const td = new TextDecoder("utf-8", { fatal: false });

/**
 * If `s` contains a base64url run of 20+ characters whose length leaves spare low bits, returns `s` with the
 * run's last character changed to another that decodes to the same bytes (a non-canonical encoding).
 */
export function nonCanonicalBase64Tail(rng: Rng, s: string): string | undefined {
  const runs = [...s.matchAll(/[A-Za-z0-9_-]{20,}/g)].filter((m) => m[0].length % 4 === 2 || m[0].length % 4 === 3);
  if (runs.length === 0) return undefined;
  const m = rng.pick(runs);
  const run = m[0];
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const last = alphabet.indexOf(run[run.length - 1]!);
  const spare = run.length % 4 === 2 ? 4 : 2; // low bits that do not reach a byte
  const twin = (last & ~((1 << spare) - 1)) | (1 + rng.int((1 << spare) - 1));
  const at = m.index! + run.length - 1;
  return s.slice(0, at) + alphabet[twin] + s.slice(at + 1);
}

/** Mutates text: byte-level on its UTF-8, token-level, or (when it parses) JSON-aware. */
export function mutateText(rng: Rng, s: string, others: readonly string[] = [], jsonKeys: readonly string[] = []): string {
  const stack = 1 + rng.int(3);
  let out = s;
  for (let i = 0; i < stack; i++) {
    const op = rng.int(10);
    if (op <= 2) {
      out = td.decode(mutateBytes(rng, te.encode(out), { others: others.map((x) => te.encode(x)), maxStack: 2 }));
    } else if (op <= 5) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(out);
      } catch {
        out = mutateString(rng, out);
        continue;
      }
      const m = mutateValue(rng, jsonToPlain(parsed), jsonKeys);
      out = JSON.stringify(m, (_k, x: unknown) => (x instanceof Uint8Array ? Buffer.from(x).toString("base64url") : x)) ?? "null";
      if (rng.chance(0.1)) out = JSON.stringify(JSON.parse(out), null, rng.pick([1, 2, "\t"]));
    } else if (op === 6) {
      out = nonCanonicalBase64Tail(rng, out) ?? mutateString(rng, out);
    } else if (op === 7) {
      // Replace a token (a run of digits or of base64url characters) with an interesting value.
      const toks = [...out.matchAll(/[0-9]+|[A-Za-z0-9_-]{2,}/g)];
      if (toks.length === 0) continue;
      const t = rng.pick(toks);
      const rep = rng.chance(0.5) ? String(rng.pick(INTERESTING_NUMBERS)) : rng.pick(INTERESTING_STRINGS).slice(0, 100);
      out = out.slice(0, t.index!) + rep + out.slice(t.index! + t[0].length);
    } else {
      out = mutateString(rng, out);
    }
  }
  return out;
}

/** JSON.parse output as a {@link Plain} (it already is one; this only narrows the type). */
export function jsonToPlain(v: unknown): Plain {
  return v as Plain;
}
