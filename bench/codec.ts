/**
 * The envelope codec: msgpackr (what `src/codec.ts` and `src/envelope.ts` use) beside the alternative we would
 * otherwise use, JSON with base64 for the binary fields, on the same logical content: the outer structure and
 * header of a real 1 KiB envelope (1 KiB payload sealed by `sealEnvelope`, so the ciphertext is 1,041 bytes).
 *
 * One operation = encode the header, encode the outer structure (as `sealEnvelope` does after sealing), then
 * decode both strictly (as `decodeEnvelope` does before any crypto):
 *
 * - **msgpackr**: `encode(header)`, `encode([1, header, ciphertext, signature])`; then `decodeStrict` of the
 *   outer array (size check, the plain-MessagePack walker, msgpackr) with a shape check, and of the header.
 * - **JSON + base64**: the header as JSON text with `id`, `enc` (and `re`) in base64; the outer structure as
 *   `[1, "<header JSON>", "<ciphertext base64>", "<signature base64>"]`, UTF-8 (the header travels as the exact
 *   text the signature would cover, so it is embedded as a string, not re-encoded); then a size check,
 *   `TextDecoder` (fatal), `JSON.parse` of both, shape checks, and `Buffer` base64 decoding with length checks.
 *
 * Two rows: the codec alone, and the codec plus the header schema check (`headerSchema`, zod, the same on both
 * sides), which is what `decodeEnvelope` costs apart from building its API view. The sizes of both encodings
 * are in the note. A decoded envelope is checked once against the original before timing, on both sides.
 *
 * @module
 * @example
 * ```sh
 * npm run bench -- --only codec
 * ```
 * ```ts
 * import { benchCodec } from "./codec.js";
 * rows.push(...(await benchCodec({ quick })));
 * ```
 */
import { pathToFileURL } from "node:url";
import { decodeStrict, encode } from "../src/codec.js";
import { decodeEnvelope, headerSchema, MAX_ENVELOPE_BYTES, sealEnvelope, type WireHeader } from "../src/envelope.js";
import { Identity } from "../src/identity.js";
import { TrustStore } from "../src/trust.js";
import { machine, measurePair, printRows, row, type Row } from "./harness.js";

/** Options for {@link benchCodec}. */
export interface CodecBenchOptions {
  /** Fewer, smaller samples (for tests and CI). @default false */
  quick?: boolean;
}

const PAYLOAD = 1024;
const MAX_HEADER_BYTES = 4096;

/** The parts of an envelope the codec carries. */
interface Parts {
  wire: WireHeader;
  ciphertext: Uint8Array;
  signature: Uint8Array;
}

const b64 = (x: Uint8Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString("base64");
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });
const bad = () => new Error("malformed envelope encoding");

/** base64 → bytes, refusing anything that does not decode to exactly `n` bytes (or 1..max when `n` is a range). */
function unb64(s: unknown, min: number, max = min): Uint8Array {
  if (typeof s !== "string" || s.length > Math.ceil(max / 3) * 4) throw bad();
  const b = Buffer.from(s, "base64");
  if (b.length < min || b.length > max) throw bad();
  return b;
}

// --- msgpackr, as src/envelope.ts --------------------------------------------------------------------------

function msgpackEncode(p: Parts): Uint8Array {
  return encode([1, encode(p.wire), p.ciphertext, p.signature]);
}

function msgpackDecode(bytes: Uint8Array, schema: boolean): Parts {
  const outer = decodeStrict(bytes, { maxBytes: MAX_ENVELOPE_BYTES, maxDepth: 1, maxItems: 5 });
  if (!Array.isArray(outer) || outer.length !== 4 || outer[0] !== 1) throw bad();
  const [, h, ct, sig] = outer as unknown[];
  if (!(h instanceof Uint8Array) || !(ct instanceof Uint8Array) || !(sig instanceof Uint8Array) || h.length > MAX_HEADER_BYTES) throw bad();
  const raw = decodeStrict(h, { maxBytes: MAX_HEADER_BYTES, maxDepth: 3, maxItems: 128 });
  const wire = schema ? checked(raw) : (raw as WireHeader);
  return { wire, ciphertext: ct, signature: sig };
}

function checked(raw: unknown): WireHeader {
  const parsed = headerSchema.safeParse(raw, { reportInput: false });
  if (!parsed.success) throw bad();
  return parsed.data;
}

// --- JSON + base64, the alternative ----------------------------------------------------------------------

function jsonEncode(p: Parts): Uint8Array {
  const { id, enc, re, ...rest } = p.wire;
  const header = JSON.stringify({ ...rest, id: b64(id), enc: b64(enc), ...(re !== undefined ? { re: b64(re) } : {}) });
  return utf8.encode(JSON.stringify([1, header, b64(p.ciphertext), b64(p.signature)]));
}

function jsonDecode(bytes: Uint8Array, schema: boolean): Parts {
  if (bytes.length > MAX_ENVELOPE_BYTES) throw bad();
  const outer: unknown = JSON.parse(fromUtf8.decode(bytes));
  if (!Array.isArray(outer) || outer.length !== 4 || outer[0] !== 1 || typeof outer[1] !== "string" || outer[1].length > MAX_HEADER_BYTES) throw bad();
  const [, h, ct, sig] = outer as [number, string, unknown, unknown];
  const ciphertext = unb64(ct, 16, MAX_ENVELOPE_BYTES);
  const signature = unb64(sig, 64);
  const raw: unknown = JSON.parse(h);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad();
  const o = raw as Record<string, unknown>;
  const decoded: Record<string, unknown> = { ...o, id: unb64(o["id"], 16), enc: unb64(o["enc"], 32) };
  if (o["re"] !== undefined) decoded["re"] = unb64(o["re"], 16);
  const wire = schema ? checked(decoded) : (decoded as unknown as WireHeader);
  return { wire, ciphertext, signature };
}

/** Same logical content? (Checked once, before timing, so a broken codec cannot post a figure.) */
function sameParts(a: Parts, b: Parts): boolean {
  const eq = (x: Uint8Array, y: Uint8Array) => Buffer.compare(x, y) === 0;
  const norm = (w: WireHeader) =>
    JSON.stringify([Object.keys(w).sort(), w.v, b64(w.id), w.from, w.to, w.skid, w.rkid, w.ts, w.ttl, w.type, w.tags, b64(w.enc), w.re ? b64(w.re) : null]);
  return eq(a.ciphertext, b.ciphertext) && eq(a.signature, b.signature) && norm(a.wire) === norm(b.wire);
}

/** Measures the envelope codec, msgpackr beside JSON + base64; returns rows for `bench/index.ts`. */
export async function benchCodec(options: CodecBenchOptions = {}): Promise<Row[]> {
  const quick = options.quick ?? false;
  const alice = Identity.generate("alice");
  const bob = Identity.generate("bob");
  try {
    const trust = new TrustStore();
    trust.add(bob.publicIdentity);
    // A reply with tags, so every header field (re, cls, pii) is present.
    const sealed = sealEnvelope(alice, trust.require("bob"), alice.provider.randomBytes(PAYLOAD + 1), {
      tags: { pii: ["pii:email"], classification: "internal" },
      type: "rep",
      replyTo: "0123456789abcdef0123456789abcdef",
    });
    const env = decodeEnvelope(sealed.bytes);
    const parts: Parts = { wire: env.wire, ciphertext: env.ciphertext, signature: env.signature };
    const mp = msgpackEncode(parts);
    const js = jsonEncode(parts);
    for (const schema of [false, true]) {
      if (!sameParts(msgpackDecode(mp, schema), parts) || !sameParts(jsonDecode(js, schema), parts)) {
        throw new Error("bench codec: a round trip changed the envelope");
      }
    }
    const sizes = `envelope ${mp.length.toLocaleString("en-US")} B as msgpackr vs ${js.length.toLocaleString("en-US")} B as JSON+base64`;
    const opts = { batch: quick ? 500 : 5000, samples: quick ? 3 : 9 };
    const rows: Row[] = [];
    for (const schema of [false, true]) {
      const [a, b] = await measurePair(
        ["msgpackr (src/codec.ts)", () => msgpackDecode(msgpackEncode(parts), schema)],
        ["JSON + base64", () => jsonDecode(jsonEncode(parts), schema)],
        opts,
      );
      const what = schema ? "1 KiB envelope encode + strict decode + header schema" : "1 KiB envelope encode + strict decode (codec only)";
      rows.push(row("codec", what, a, b, "ops/s", undefined, sizes));
    }
    return rows;
  } finally {
    alice.close();
    bob.close();
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire codec bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchCodec({ quick }), process.argv.includes("--markdown")));
}
