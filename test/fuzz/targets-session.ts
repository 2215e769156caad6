/**
 * Fuzz targets for session-mode envelopes (`src/session.ts`): continuation frames `[2, header, ct]` and the
 * receiver that opens them.
 *
 * - `session-decode` (differential): `decodeSessionEnvelope` on mutated frames, and the hand-written fast header
 *   parser `decodeSessionHeaderFast` against the reference (strict codec + `sessionHeaderSchema`) on mutated
 *   headers. Oracle: coded refusals only; whenever the fast path returns a header, the reference accepts the same
 *   bytes with an equal value; whenever the frame decodes, the strict codec splits it into the same header and
 *   ciphertext.
 * - `session-open`: a fresh `SessionReceiver` opens a real stream (alice → bob), accepts a random subset of its
 *   authentic continuations in random order, then gets one hostile frame (mutated, re-framed, replayed, or a
 *   part edited). Oracle: coded refusals only; the authentic frames are all accepted whatever their order; and a
 *   frame is accepted only if its header and ciphertext are an authentic, not yet accepted envelope's.
 *
 * @module
 * @example
 * ```ts
 * const t = await sessionOpenTarget.create(ctx);
 * ```
 */
import { concatBytes, toHex } from "../../src/_bytes.js";
import { decodeStrict, encode } from "../../src/codec.js";
import { encodePayload } from "../../src/envelope.js";
import { SealwireError, type ErrorCode } from "../../src/errors.js";
import {
  decodeSessionEnvelope,
  decodeSessionHeaderFast,
  sessionHeaderSchema,
  SessionReceiver,
  SessionSender,
  type SessionWireHeader,
} from "../../src/session.js";
import { TrustStore } from "../../src/trust.js";
import { deepEqualPlain, deterministicProvider, FIXED_NOW, fixedIdentity, sameBytes } from "./fixtures.js";
import { decodeTagged, encodeTagged, type FuzzTarget, type TargetFactory } from "./harness.js";
import { mutateBytes, mutateValue, type Plain } from "./mutate.js";
import type { Rng } from "./rng.js";

const SESSION_KEYS = ["v", "sid", "seq", "from", "to", "ts", "ttl", "type", "tags", "pii", "cls", "anon", "re", "ck", "fin"];

interface Stream {
  /** The signed envelope that opens the stream. */
  open: Uint8Array;
  /** Its continuations, in order (the last one may be the final checkpoint). */
  conts: Uint8Array[];
}

function makeStreams(rng: Rng): { streams: Stream[]; bob: ReturnType<typeof fixedIdentity>; bobTrust: TrustStore } {
  const alice = fixedIdentity("alice", deterministicProvider(rng));
  const bob = fixedIdentity("bob");
  const aliceTrust = new TrustStore();
  aliceTrust.add(bob.publicIdentity);
  const bobTrust = new TrustStore();
  bobTrust.add(alice.publicIdentity, { clearances: ["pii:email"] });
  bobTrust.add(bob.publicIdentity);
  const streams: Stream[] = [];
  for (const every of [3, 5, 256]) {
    const tx = new SessionSender({ identity: alice, trust: aliceTrust, to: "bob", checkpointEvery: every, now: () => FIXED_NOW });
    const frames: Uint8Array[] = [];
    const n = 6 + rng.int(10);
    for (let i = 0; i < n; i++) {
      const s = tx.seal(encodePayload(rng.chance(0.5) ? `m${i}` : rng.bytes(rng.size(200))), {
        tags: rng.pick([{}, { pii: ["pii:email"] }, { classification: "internal", anonymized: true }]),
        type: rng.pick(["msg", "req", "app.x"]),
        ...(rng.chance(0.2) ? { replyTo: toHex(rng.bytes(16)) } : {}),
        now: FIXED_NOW,
      });
      frames.push(...s.preceding, s.bytes);
    }
    const fin = tx.close();
    if (fin) frames.push(fin);
    streams.push({ open: frames[0]!, conts: frames.slice(1) });
  }
  return { streams, bob, bobTrust };
}

/** Header and ciphertext of a continuation by the strict codec (the reference split), or undefined. */
function refSplit(b: Uint8Array): [Uint8Array, Uint8Array] | undefined {
  try {
    const v = decodeStrict(b, { maxBytes: 1 << 21, maxDepth: 1, maxItems: 4 });
    if (Array.isArray(v) && v.length === 3 && v[0] === 2 && v[1] instanceof Uint8Array && v[2] instanceof Uint8Array) {
      return [new Uint8Array(v[1]), new Uint8Array(v[2])];
    }
  } catch {
    /* not a continuation */
  }
  return undefined;
}

/** The reference header parse (what `decodeSessionHeader` falls back to). */
function refHeader(h: Uint8Array): SessionWireHeader | undefined {
  try {
    const raw = decodeStrict(h, { maxBytes: 4096, maxDepth: 3, maxItems: 128 });
    const p = sessionHeaderSchema.safeParse(raw, { reportInput: false });
    return p.success ? p.data : undefined;
  } catch {
    return undefined;
  }
}

/** A continuation re-framed in a valid but non-canonical outer encoding (bin16 for both parts). */
function reframe(header: Uint8Array, ct: Uint8Array): Uint8Array {
  const bin16 = (b: Uint8Array) => concatBytes(Uint8Array.of(0xc5, b.length >>> 8, b.length & 0xff), b);
  return concatBytes(Uint8Array.of(0x93, 0x02), bin16(header), ct.length <= 0xffff ? bin16(ct) : encode(ct));
}

/** Mutates one part of a continuation (header value, header bytes, ciphertext) and re-frames it canonically. */
function mutatePart(rng: Rng, frame: Uint8Array): Uint8Array {
  const parts = refSplit(frame);
  if (!parts) return mutateBytes(rng, frame, { msgpack: true });
  let [h, ct] = parts;
  const r = rng.int(10);
  if (r < 5) {
    const v = refHeader(h);
    if (v) {
      try {
        h = encode(mutateValue(rng, v as unknown as Plain, SESSION_KEYS));
      } catch {
        h = mutateBytes(rng, h, { msgpack: true });
      }
    } else h = mutateBytes(rng, h, { msgpack: true });
  } else if (r < 8) h = mutateBytes(rng, h, { msgpack: true, maxLength: 5000 });
  else ct = mutateBytes(rng, ct);
  return encode([2, h, ct]);
}

// ---------------------------------------------------------------------------------------------------------------

interface DecodeInput {
  /** 0: a whole frame; 1: a header only (fast parser vs reference). */
  mode: number;
  bytes: Uint8Array;
}

export const sessionDecodeTarget: TargetFactory = {
  name: "session-decode",
  async create(ctx) {
    const { streams } = makeStreams(ctx.rng);
    const frames = streams.flatMap((s) => s.conts);
    const headers = frames.map((f) => refSplit(f)![0]);
    const t: FuzzTarget<DecodeInput> = {
      name: "session-decode",
      limitMs: 250,
      codes: ["ERR_DECODE", "ERR_SCHEMA", "ERR_ENVELOPE_TOO_LARGE"],
      generate(rng) {
        if (rng.chance(0.5)) {
          const kind = rng.weighted([[8, "sample"], [50, "bytes"], [42, "part"]] as const);
          const f = rng.pick(frames);
          return { mode: 0, bytes: kind === "sample" ? f : kind === "bytes" ? mutateBytes(rng, f, { others: frames, msgpack: true }) : mutatePart(rng, f) };
        }
        const h = rng.pick(headers);
        const kind = rng.weighted([[8, "sample"], [50, "bytes"], [42, "value"]] as const);
        if (kind === "sample") return { mode: 1, bytes: h };
        if (kind === "bytes") return { mode: 1, bytes: mutateBytes(rng, h, { others: headers, msgpack: true }) };
        const v = refHeader(h)!;
        try {
          return { mode: 1, bytes: encode(mutateValue(rng, v as unknown as Plain, SESSION_KEYS)) };
        } catch {
          return { mode: 1, bytes: mutateBytes(rng, h, { msgpack: true }) };
        }
      },
      exec(i) {
        if (i.mode === 0) return { frame: decodeSessionEnvelope(i.bytes) };
        return { fast: decodeSessionHeaderFast(i.bytes), ref: refHeader(i.bytes) };
      },
      check(i, r) {
        const res = r as { frame?: ReturnType<typeof decodeSessionEnvelope>; fast?: SessionWireHeader; ref?: SessionWireHeader };
        if (i.mode === 0) {
          const ref = refSplit(i.bytes);
          const f = res.frame!;
          if (!ref) return "decodeSessionEnvelope accepted a frame the strict codec refuses";
          if (!sameBytes(ref[0], f.headerBytes) || !sameBytes(ref[1], f.ciphertext)) return "the fast frame split and the strict codec disagree on header or ciphertext";
          const h = refHeader(f.headerBytes);
          if (!h || !deepEqualPlain({ ...h }, { ...f.wire })) return "decodeSessionEnvelope's header differs from the reference parse";
          return undefined;
        }
        if (res.fast === undefined) return undefined;
        if (res.ref === undefined) return "decodeSessionHeaderFast accepted a header the reference schema refuses";
        return deepEqualPlain({ ...res.fast }, { ...res.ref }) ? undefined : "decodeSessionHeaderFast and the reference parse disagree";
      },
      outcome: (r) => ("frame" in (r as object) ? "frame" : (r as { fast?: unknown }).fast ? "header:fast" : (r as { ref?: unknown }).ref ? "header:reference" : "header:refused"),
      encode: (i) => concatBytes(Uint8Array.of(i.mode), i.bytes),
      decode: (b) => ({ mode: b[0] ?? 0, bytes: b.subarray(1) }),
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------

interface OpenInput {
  open: Uint8Array;
  /** Authentic continuations accepted first (any order). */
  prior: Uint8Array[];
  msg: Uint8Array;
  /** The stream's authentic continuations (for the oracle). */
  authentic: Uint8Array[];
}

const OPEN_CODES: readonly ErrorCode[] = [
  "ERR_ENVELOPE_TOO_LARGE", "ERR_DECODE", "ERR_SCHEMA", "ERR_UNKNOWN_PEER", "ERR_REVOKED_PEER", "ERR_BAD_SIGNATURE",
  "ERR_WRONG_RECIPIENT", "ERR_EXPIRED", "ERR_FROM_FUTURE", "ERR_UNKNOWN_STREAM", "ERR_KEY_RETIRED", "ERR_REPLAY",
  "ERR_DECRYPT", "ERR_CHECKPOINT", "ERR_PAYLOAD",
];

export const sessionOpenTarget: TargetFactory = {
  name: "session-open",
  async create(ctx) {
    const { streams, bob, bobTrust } = makeStreams(ctx.rng);
    const t: FuzzTarget<OpenInput> = {
      name: "session-open",
      limitMs: 250,
      codes: OPEN_CODES,
      generate(rng) {
        const s = rng.pick(streams);
        // Prior: a random subset of the non-final continuations, shuffled (the receiver accepts any order).
        const pool = s.conts.slice(0, -1).filter(() => rng.chance(0.5));
        for (let i = pool.length - 1; i > 0; i--) {
          const j = rng.int(i + 1);
          [pool[i], pool[j]] = [pool[j]!, pool[i]!];
        }
        const target = rng.pick(s.conts);
        const kind = rng.weighted([[10, "authentic"], [6, "reframed"], [6, "replay"], [34, "bytes"], [34, "part"], [5, "opener"], [5, "other-stream"]] as const);
        let msg: Uint8Array;
        if (kind === "authentic") msg = target;
        else if (kind === "reframed") {
          const p = refSplit(target)!;
          msg = reframe(p[0], p[1]);
        } else if (kind === "replay") msg = pool.length > 0 ? rng.pick(pool) : s.open;
        else if (kind === "bytes") msg = mutateBytes(rng, target, { others: s.conts, msgpack: true });
        else if (kind === "part") msg = mutatePart(rng, target);
        else if (kind === "opener") msg = rng.chance(0.5) ? s.open : mutateBytes(rng, s.open, { msgpack: true });
        else msg = rng.pick(rng.pick(streams).conts);
        return { open: s.open, prior: pool, msg, authentic: s.conts };
      },
      exec(i) {
        const rx = new SessionReceiver({ identity: bob, trust: bobTrust, now: () => FIXED_NOW });
        try {
          try {
            rx.open(i.open);
            for (const p of i.prior) rx.open(p);
          } catch (e) {
            throw new Error(`an authentic frame of the stream was refused (${SealwireError.is(e) ? e.code : (e as Error).message})`);
          }
          const o = rx.open(i.msg);
          return o.control ? "control" : o.mode;
        } finally {
          rx.close();
        }
      },
      check(i) {
        const p = refSplit(i.msg);
        if (!p) return "accepted a frame that is not a continuation";
        const same = (f: Uint8Array) => {
          const q = refSplit(f);
          return q !== undefined && sameBytes(q[0], p[0]) && sameBytes(q[1], p[1]);
        };
        if (i.prior.some(same)) return "accepted a replay of a continuation already accepted";
        if (!i.authentic.some(same)) return "accepted a continuation whose header and ciphertext are not an authentic envelope's";
        return undefined;
      },
      outcome: (r) => String(r),
      encode: (i) => encodeTagged(i),
      decode: (b) => decodeTagged<OpenInput>(b),
    };
    return t;
  },
};
