/**
 * Fuzz targets for what arrives in a frame: the strict MessagePack codec, envelopes (decode and the full open
 * pipeline), payloads, hub control frames, public identities and anonymization attestations.
 *
 * Each target mixes fast-check values (random bytes, random structures) with VALID samples made at run time and
 * mutations of them, and states its oracle: which codes it may throw, and what a returned value must satisfy.
 *
 * @module
 * @example
 * ```ts
 * const t = await codecTarget.create(ctx);
 * await runCase(t, t.generate(rng, 0));
 * ```
 */
import fc from "fast-check";
import { concatBytes, toHex } from "../../src/_bytes.js";
import { isControlFrame, parseControl, encodeControl, type Control } from "../../src/_hub-protocol.js";
import { ANONYMIZER_ROLE, createAttestation, verifyAttestation, type Attestation } from "../../src/attestation.js";
import { assertPlainMsgpack, decodeStrict, encode, type DecodeLimits } from "../../src/codec.js";
import {
  decodeEnvelope,
  decodePayload,
  encodePayload,
  EnvelopeOpener,
  sealEnvelope,
  type Data,
} from "../../src/envelope.js";
import { ERROR_CODES, SealwireError, type ErrorCode } from "../../src/errors.js";
import { parsePublicIdentity, type Identity, type PublicIdentity } from "../../src/identity.js";
import { TrustStore } from "../../src/trust.js";
import {
  bytesArb,
  dataArb,
  deepEqualPlain,
  deterministicProvider,
  fcStream,
  FIXED_NOW,
  fixedIdentity,
  plainArb,
  plainProblem,
  sameBytes,
} from "./fixtures.js";
import { decodeTagged, encodeTagged, type FuzzTarget, type TargetFactory } from "./harness.js";
import { clonePlain, mutateBytes, mutateText, mutateValue, type Plain } from "./mutate.js";
import type { Rng } from "./rng.js";

const DECODE_CODES: readonly ErrorCode[] = ["ERR_DECODE", "ERR_ENVELOPE_TOO_LARGE"];

const rawBytes = {
  encode: (b: Uint8Array) => b,
  decode: (b: Uint8Array) => b,
};

// ---------------------------------------------------------------------------------------------------------------
// codec: decodeStrict / assertPlainMsgpack

/** The limit profiles the codebase uses: default, envelope outer, envelope header, payload. */
function profileLimits(profile: number, len: number): Required<DecodeLimits> {
  switch (profile) {
    case 1: return { maxBytes: 1 << 20, maxDepth: 1, maxItems: 5, copyBytes: false };
    case 2: return { maxBytes: 4096, maxDepth: 3, maxItems: 128, copyBytes: false };
    case 3: return { maxBytes: Math.max(len, 1), maxDepth: 65, maxItems: Math.max(len, 1), copyBytes: true };
    default: return { maxBytes: 1 << 20, maxDepth: 8, maxItems: 4096, copyBytes: false };
  }
}

interface CodecInput {
  profile: number;
  bytes: Uint8Array;
}
type CodecResult = { value: unknown } | { mismatch: string };

/** Samples of every shape the wire carries, encoded by the real encoder. */
function msgpackSamples(rng: Rng, seed: number): Uint8Array[] {
  const values = fcStream(plainArb, seed, "codec-samples", 64);
  const out: Uint8Array[] = [];
  for (let i = 0; i < 48; i++) {
    try {
      out.push(encode(values.next()));
    } catch {
      /* a value msgpackr cannot encode is no sample */
    }
  }
  out.push(encode([1, rng.bytes(200), rng.bytes(300), rng.bytes(64)]));
  out.push(encode({ v: 1, id: rng.bytes(16), from: "alice", to: "bob", ts: FIXED_NOW, tags: { pii: ["pii:email"], anon: false } }));
  out.push(encode(["sw-hello", 1, "alice", rng.bytes(32)]));
  out.push(encode({ a: [1, [2, [3, [4, [5, [6, [7]]]]]]] }));
  out.push(encode([2 ** 53 - 1, -(2 ** 53 - 1), 2 ** 32, -(2 ** 31), 1.5, -0.25, "é", "\u{1f600}", new Uint8Array(70_000)]));
  out.push(encode("x".repeat(70_000)));
  return out;
}

/** Random MessagePack-like token soup: headers of every type with small, plausible lengths. */
function tokenSoup(rng: Rng): Uint8Array {
  const parts: number[] = [];
  const n = 1 + rng.int(24);
  for (let i = 0; i < n; i++) {
    const t = rng.int(256);
    parts.push(t);
    if ([0xc4, 0xd9, 0xcc, 0xd0].includes(t)) parts.push(rng.int(8));
    else if ([0xc5, 0xda, 0xdc, 0xde, 0xcd, 0xd1].includes(t)) parts.push(0, rng.int(8));
    else if ([0xc6, 0xdb, 0xdd, 0xdf, 0xce, 0xd2, 0xca].includes(t)) parts.push(0, 0, 0, rng.int(8));
    if (rng.chance(0.3)) for (let k = rng.int(6); k > 0; k--) parts.push(0x61);
  }
  return Uint8Array.from(parts);
}

export const codecTarget: TargetFactory = {
  name: "codec",
  async create(ctx) {
    const samples = msgpackSamples(ctx.rng, ctx.seed);
    const randomBytes = fcStream(bytesArb(512), ctx.seed, "codec-random");
    const randomValues = fcStream(plainArb, ctx.seed, "codec-values");
    const t: FuzzTarget<CodecInput> = {
      name: "codec",
      limitMs: 250,
      codes: DECODE_CODES,
      generate(rng) {
        const profile = rng.weighted([[5, 0], [2, 1], [2, 2], [3, 3]] as const);
        const kind = rng.weighted([[12, "random"], [8, "value"], [8, "soup"], [10, "sample"], [62, "mutant"]] as const);
        let bytes: Uint8Array;
        if (kind === "random") bytes = randomBytes.next();
        else if (kind === "soup") bytes = tokenSoup(rng);
        else if (kind === "value") {
          try {
            bytes = encode(randomValues.next());
          } catch {
            bytes = tokenSoup(rng);
          }
        } else if (kind === "sample") bytes = rng.pick(samples);
        else bytes = mutateBytes(rng, rng.pick(samples), { others: samples, msgpack: true });
        return { profile, bytes };
      },
      exec({ profile, bytes }): CodecResult {
        const lim = profileLimits(profile, bytes.length);
        let walkerOk = true;
        try {
          assertPlainMsgpack(bytes, lim.maxDepth, lim.maxItems);
        } catch (e) {
          if (!SealwireError.is(e, "ERR_DECODE")) throw e;
          walkerOk = false;
        }
        try {
          return { value: decodeStrict(bytes, lim) };
        } catch (e) {
          // The walker's promise: what it accepts, msgpackr decodes. A disagreement is a finding.
          if (walkerOk && bytes.length > 0 && bytes.length <= lim.maxBytes && SealwireError.is(e, "ERR_DECODE")) {
            return { mismatch: "assertPlainMsgpack accepted bytes that decodeStrict then refused (msgpackr disagrees with the walker)" };
          }
          throw e;
        }
      },
      check({ profile, bytes }, r) {
        const res = r as CodecResult;
        if ("mismatch" in res) return res.mismatch;
        const lim = profileLimits(profile, bytes.length);
        const p = plainProblem(res.value, { maxDepth: lim.maxDepth, maxItems: lim.maxItems });
        if (p) return `decodeStrict returned ${p}`;
        // Round trip: what was decoded re-encodes and decodes to the same value.
        let again: unknown;
        try {
          again = decodeStrict(encode(res.value), { maxBytes: 1 << 22, maxDepth: lim.maxDepth, maxItems: lim.maxItems * 2 + 8 });
        } catch (e) {
          return `a decoded value did not survive encode → decodeStrict: ${(e as Error).message}`;
        }
        return deepEqualPlain(again, res.value) ? undefined : "encode(decodeStrict(x)) decodes to a different value";
      },
      outcome: (r) => ("mismatch" in (r as CodecResult) ? "MISMATCH" : "ok"),
      encode: (i) => concatBytes(Uint8Array.of(i.profile), i.bytes),
      decode: (b) => ({ profile: b[0] ?? 0, bytes: b.subarray(1) }),
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Envelopes

interface Crew {
  alice: Identity;
  bob: Identity;
  carol: Identity;
  mallory: Identity;
  /** bob's trust store: alice, carol (anonymizer), bob, mallory (revoked). */
  trust: TrustStore;
}

function makeCrew(rng: Rng): Crew {
  const det = deterministicProvider(rng);
  const alice = fixedIdentity("alice", det);
  const bob = fixedIdentity("bob");
  const carol = fixedIdentity("carol", det);
  const mallory = fixedIdentity("mallory", det);
  const trust = new TrustStore();
  trust.add(alice.publicIdentity, { clearances: ["pii:email"] });
  trust.add(bob.publicIdentity);
  trust.add(carol.publicIdentity, { roles: [ANONYMIZER_ROLE] });
  trust.add(mallory.publicIdentity);
  trust.revoke("mallory");
  return { alice, bob, carol, mallory, trust };
}

const TAG_SETS = [{}, { pii: ["pii:email"] }, { pii: ["pii:email", "pii:phone"], classification: "internal" }, { anonymized: true }];

/** Sealed envelopes to bob (and a few to others), with varied tags, types, sizes and replies. */
function envelopeSamples(crew: Crew, rng: Rng, seed: number): Uint8Array[] {
  const data = fcStream(dataArb, seed, "envelope-data", 32);
  const out: Uint8Array[] = [];
  const to = crew.trust.require("bob");
  for (let i = 0; i < 24; i++) {
    const sender = i % 6 === 5 ? crew.carol : crew.alice;
    let payload: Uint8Array;
    try {
      payload = i === 7 ? encodePayload(new Uint8Array(60_000)) : encodePayload(data.next() as Data);
    } catch {
      payload = encodePayload("x");
    }
    const opts = {
      tags: rng.pick(TAG_SETS),
      type: rng.pick(["msg", "req", "rep", "app.v1-x"]),
      ttlMs: rng.pick([1000, 300_000, 86_400_000]),
      now: FIXED_NOW - rng.int(500),
      ...(rng.chance(0.3) ? { replyTo: toHex(rng.bytes(16)) } : {}),
    };
    out.push(sealEnvelope(sender, to, payload, opts).bytes);
  }
  // Addressed to someone else, and sent by a revoked peer (before the revocation was known to the sender).
  out.push(sealEnvelope(crew.alice, crew.trust.require("carol"), encodePayload("for carol"), { now: FIXED_NOW }).bytes);
  const malloryView = new TrustStore();
  malloryView.add(crew.bob.publicIdentity);
  out.push(sealEnvelope(crew.mallory, malloryView.require("bob"), encodePayload("from mallory"), { now: FIXED_NOW }).bytes);
  return out;
}

/** An envelope's four parts, or undefined if the outer layer does not decode. */
function splitEnvelope(b: Uint8Array): [unknown, Uint8Array, Uint8Array, Uint8Array] | undefined {
  try {
    const v = decodeStrict(b, { maxBytes: 1 << 21, maxDepth: 1, maxItems: 8 });
    if (Array.isArray(v) && v.length === 4 && v[1] instanceof Uint8Array && v[2] instanceof Uint8Array && v[3] instanceof Uint8Array) {
      return [v[0], new Uint8Array(v[1]), new Uint8Array(v[2]), new Uint8Array(v[3])];
    }
  } catch {
    /* not an envelope */
  }
  return undefined;
}

const SIG_DOMAIN = new TextEncoder().encode("sealwire/v1/envelope:");
function resign(signer: Identity, header: Uint8Array, ct: Uint8Array): Uint8Array {
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, header.length);
  return signer.sign(concatBytes(SIG_DOMAIN, len, header, ct));
}

const HEADER_KEYS = ["v", "id", "from", "to", "skid", "rkid", "ts", "ttl", "type", "tags", "enc", "re", "pii", "cls", "anon"];

/**
 * Mutates one part of an envelope and re-assembles it with the real encoder (so the outer layer is valid and
 * the mutation reaches the header schema, the signature, or the ciphertext). With `signer`, the result is
 * re-signed: a trusted crew member turned hostile, whose envelopes pass the signature check.
 */
function mutateEnvelopePart(rng: Rng, sample: Uint8Array, others: Uint8Array[], signer?: Identity): Uint8Array {
  const parts = splitEnvelope(sample);
  if (!parts) return mutateBytes(rng, sample, { msgpack: true });
  let [ver, header, ct, sig] = parts;
  const which = signer ? rng.weighted([[7, "header"], [3, "ct"]] as const) : rng.weighted([[6, "header"], [2, "ct"], [2, "sig"]] as const);
  if (which === "header") {
    let decoded: unknown;
    try {
      decoded = decodeStrict(header, { maxBytes: 4096, maxDepth: 3, maxItems: 128 });
    } catch {
      decoded = undefined;
    }
    if (decoded !== undefined && rng.chance(0.7)) {
      const m = mutateValue(rng, decoded as Plain, HEADER_KEYS);
      try {
        header = encode(m);
      } catch {
        header = mutateBytes(rng, header, { msgpack: true });
      }
    } else header = mutateBytes(rng, header, { msgpack: true, maxLength: 8192 });
  } else if (which === "ct") {
    const other = splitEnvelope(rng.pick(others));
    ct = rng.chance(0.2) && other ? other[2] : mutateBytes(rng, ct, { maxLength: 1 << 20 });
  } else {
    sig = rng.chance(0.3) ? rng.bytes(rng.pick([0, 63, 64, 65])) : mutateBytes(rng, sig);
  }
  if (signer) sig = resign(signer, header, ct);
  if (rng.chance(0.05)) ver = rng.pick([0, 2, "1", null]);
  const outer: unknown[] = [ver, header, ct, sig];
  if (rng.chance(0.03)) outer.push(rng.bytes(4));
  return encode(outer);
}

export const envelopeDecodeTarget: TargetFactory = {
  name: "envelope-decode",
  async create(ctx) {
    const crew = makeCrew(ctx.rng);
    const samples = envelopeSamples(crew, ctx.rng, ctx.seed);
    const random = fcStream(bytesArb(1024), ctx.seed, "envelope-random");
    const randomHeaders = fcStream(
      fc.record({
        v: fc.oneof(fc.constant(1), fc.integer()),
        id: fc.uint8Array({ minLength: 15, maxLength: 17 }),
        from: fc.oneof(fc.constant("alice"), fc.string()),
        to: fc.oneof(fc.constant("bob"), fc.string()),
        skid: fc.string(),
        rkid: fc.string(),
        ts: fc.oneof(fc.integer(), fc.double()),
        ttl: fc.integer(),
        type: fc.string(),
        tags: fc.record({ pii: fc.array(fc.string()), anon: fc.boolean() }),
        enc: fc.uint8Array({ minLength: 31, maxLength: 33 }),
      }, { requiredKeys: [] }),
      ctx.seed,
      "envelope-headers",
    );
    const t: FuzzTarget<Uint8Array> = {
      name: "envelope-decode",
      limitMs: 250,
      codes: [...DECODE_CODES, "ERR_SCHEMA"],
      generate(rng) {
        const kind = rng.weighted([[6, "random"], [6, "structured"], [8, "sample"], [40, "bytes"], [40, "part"]] as const);
        if (kind === "random") return random.next();
        if (kind === "structured") return encode([1, encode(randomHeaders.next()), rng.bytes(rng.size(100)), rng.bytes(64)]);
        const s = rng.pick(samples);
        if (kind === "sample") return s;
        if (kind === "bytes") return mutateBytes(rng, s, { others: samples, msgpack: true });
        return mutateEnvelopePart(rng, s, samples);
      },
      exec: (b) => decodeEnvelope(b),
      check(_b, r) {
        const env = r as ReturnType<typeof decodeEnvelope>;
        if (!/^[0-9a-f]{32}$/.test(env.header.id)) return "decoded header id is not 32 hex characters";
        if (env.headerBytes.length > 4096) return "decoded header longer than 4096 bytes";
        return Object.isFrozen(env.header) ? undefined : "API header is not frozen";
      },
      ...rawBytes,
    };
    return t;
  },
};

interface OpenInput {
  /** Freshly and honestly sealed for this case: opening may succeed. */
  fresh: boolean;
  bytes: Uint8Array;
}

export const envelopeOpenTarget: TargetFactory = {
  name: "envelope-open",
  async create(ctx) {
    const crew = makeCrew(ctx.rng);
    const samples = envelopeSamples(crew, ctx.rng, ctx.seed);
    // Authentic (header, ciphertext, signature) triples, by header hex.
    const authentic = new Map<string, { ct: Uint8Array; sig: Uint8Array }>();
    for (const s of samples) {
      const p = splitEnvelope(s)!;
      authentic.set(toHex(p[1]), { ct: p[2], sig: p[3] });
    }
    const opener = new EnvelopeOpener({ identity: crew.bob, trust: crew.trust, now: () => FIXED_NOW });
    const hostilePayloads = [
      ...Array.from({ length: 8 }, () => encodePayload(null)),
      encodePayload([1, [2, [3]]]),
      encodePayload(new Uint8Array(100)),
      encodePayload({ a: 1 }, { v: 1, by: "carol" }),
    ];
    const toBob = crew.trust.require("bob");
    let freshId = 0;
    const t: FuzzTarget<OpenInput> = {
      name: "envelope-open",
      limitMs: 250,
      codes: [
        ...DECODE_CODES,
        "ERR_SCHEMA",
        "ERR_UNKNOWN_PEER",
        "ERR_REVOKED_PEER",
        "ERR_BAD_SIGNATURE",
        "ERR_WRONG_RECIPIENT",
        "ERR_EXPIRED",
        "ERR_FROM_FUTURE",
        "ERR_REPLAY",
        "ERR_DECRYPT",
      ],
      generate(rng) {
        const kind = rng.weighted([[4, "sample"], [40, "bytes"], [30, "part"], [18, "resigned"], [8, "fresh"]] as const);
        const s = rng.pick(samples);
        if (kind === "sample") return { fresh: false, bytes: s };
        if (kind === "bytes") return { fresh: false, bytes: mutateBytes(rng, s, { others: samples, msgpack: true }) };
        if (kind === "part") return { fresh: false, bytes: mutateEnvelopePart(rng, s, samples) };
        if (kind === "resigned") {
          const signer = rng.weighted([[8, crew.alice], [1, crew.carol], [1, crew.mallory]] as const);
          return { fresh: false, bytes: mutateEnvelopePart(rng, s, samples, signer) };
        }
        // A trusted sender seals a hostile payload: the whole pipeline runs, decryption included.
        const payload = mutateBytes(rng, rng.pick(hostilePayloads), { msgpack: true, maxLength: 60_000 });
        const id = (freshId++).toString(16).padStart(32, "0");
        return { fresh: true, bytes: sealEnvelope(crew.alice, toBob, payload, { now: FIXED_NOW, id }).bytes };
      },
      exec({ bytes }) {
        const opened = opener.open(bytes);
        // What an agent does next: decode the payload (a hostile sender controls it).
        try {
          decodePayload(opened.plaintext);
          return "opened";
        } catch (e) {
          if (SealwireError.is(e, "ERR_PAYLOAD")) return "opened:ERR_PAYLOAD";
          throw e;
        }
      },
      check({ fresh, bytes }) {
        if (fresh) return undefined;
        const p = splitEnvelope(bytes);
        const a = p && authentic.get(toHex(p[1]));
        if (!p || !a || !sameBytes(a.ct, p[2]) || !sameBytes(a.sig, p[3])) {
          return "a mutated envelope opened: header, ciphertext and signature are not an authentic sample's";
        }
        return undefined;
      },
      outcome: (r) => String(r),
      encode: (i) => concatBytes(Uint8Array.of(i.fresh ? 1 : 0), i.bytes),
      decode: (b) => ({ fresh: b[0] === 1, bytes: b.subarray(1) }),
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Payloads

export const payloadTarget: TargetFactory = {
  name: "payload",
  async create(ctx) {
    const data = fcStream(dataArb, ctx.seed, "payload-data", 64);
    const carol = fixedIdentity("carol");
    const samples: Uint8Array[] = [];
    for (let i = 0; i < 40; i++) {
      try {
        const d = data.next() as Data;
        if (i % 4 === 3) {
          const body = encode(d);
          const att = createAttestation(carol, { id: toHex(ctx.rng.bytes(16)), digest: toHex(ctx.rng.bytes(32)) }, body, "mask-v1", FIXED_NOW);
          samples.push(encodePayload(d, att));
        } else samples.push(encodePayload(d));
      } catch {
        /* skip values encodeData refuses */
      }
    }
    let deep: Data = 1;
    for (let i = 0; i < 63; i++) deep = [deep];
    samples.push(encodePayload(deep), encodePayload("x".repeat(50_000)), encodePayload(new Uint8Array(0)));
    const random = fcStream(bytesArb(256), ctx.seed, "payload-random");
    const t: FuzzTarget<Uint8Array> = {
      name: "payload",
      limitMs: 250,
      codes: ["ERR_PAYLOAD"],
      generate(rng) {
        const kind = rng.weighted([[8, "random"], [8, "sample"], [54, "bytes"], [15, "body"], [15, "attested"]] as const);
        if (kind === "random") return concatBytes(Uint8Array.of(rng.pick([0, 1, 2, 0xff])), random.next());
        const s = rng.pick(samples);
        if (kind === "sample") return s;
        if (kind === "bytes") return mutateBytes(rng, s, { others: samples, msgpack: true });
        if (kind === "body") return concatBytes(s.subarray(0, 1), mutateBytes(rng, s.subarray(1), { msgpack: true }));
        // The attested wrapper is intact; the data bytes it carries are hostile.
        const inner = mutateBytes(rng, rng.pick(samples).subarray(1), { msgpack: true });
        return concatBytes(Uint8Array.of(1), encode([inner, rng.chance(0.5) ? { v: 1 } : rng.bytes(8)]));
      },
      exec: (b) => decodePayload(b),
      check(_b, r) {
        const d = r as ReturnType<typeof decodePayload>;
        // The Data contract: plain values, finite numbers, plain Uint8Arrays (never the decoder's Buffers).
        const p = plainProblem(d.data, { maxDepth: 65, finite: true, noBuffers: true });
        if (p) return `decodePayload returned data with ${p}`;
        if (d.attestation && !(d.attestation.output instanceof Uint8Array)) return "attestation output is not bytes";
        return undefined;
      },
      ...rawBytes,
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Hub control frames

const CONTROL_KINDS = ["sw-hello", "sw-challenge", "sw-auth", "sw-ready", "sw-ack", "sw-delivered", "sw-refused"] as const;

function controlSample(rng: Rng): Control {
  const id = toHex(rng.bytes(16));
  switch (rng.pick(CONTROL_KINDS)) {
    case "sw-hello": return { kind: "sw-hello", agent: rng.pick(["alice", "bob-2", "A", "x".repeat(64)]), nonce: rng.bytes(32) };
    case "sw-challenge": return { kind: "sw-challenge", hub: "hub", nonce: rng.bytes(32), sig: rng.bytes(64) };
    case "sw-auth": return { kind: "sw-auth", sig: rng.bytes(64) };
    case "sw-ready": return { kind: "sw-ready" };
    case "sw-ack": return { kind: "sw-ack", id };
    case "sw-delivered": return { kind: "sw-delivered", id };
    default: return { kind: "sw-refused", id, code: rng.pick(Object.keys(ERROR_CODES) as ErrorCode[]), reason: rng.pick(["", "queue_full", "pii_not_cleared", "a".repeat(64)]) };
  }
}

function controlProblem(c: Control): string | undefined {
  const hex32 = (x: unknown) => typeof x === "string" && /^[0-9a-f]{32}$/.test(x);
  const bytes = (x: unknown, n: number) => x instanceof Uint8Array && x.length === n;
  switch (c.kind) {
    case "sw-hello": return bytes(c.nonce, 32) ? undefined : "hello nonce";
    case "sw-challenge": return bytes(c.nonce, 32) && bytes(c.sig, 64) ? undefined : "challenge fields";
    case "sw-auth": return bytes(c.sig, 64) ? undefined : "auth sig";
    case "sw-ready": return undefined;
    case "sw-ack":
    case "sw-delivered": return hex32(c.id) ? undefined : "id";
    case "sw-refused": return hex32(c.id) && Object.hasOwn(ERROR_CODES, c.code) ? undefined : "refused fields";
    default: return "unknown kind";
  }
}

export const hubControlTarget: TargetFactory = {
  name: "hub-control",
  async create(ctx) {
    const samples = Array.from({ length: 64 }, () => encodeControl(controlSample(ctx.rng)));
    const random = fcStream(bytesArb(128), ctx.seed, "control-random");
    const structured = fcStream(
      fc.array(fc.oneof(fc.constantFrom(...CONTROL_KINDS), fc.constant(1), fc.string({ maxLength: 40 }), fc.uint8Array({ maxLength: 70 }), fc.integer(), fc.constant(null)), { maxLength: 7 }),
      ctx.seed,
      "control-structured",
    );
    const t: FuzzTarget<Uint8Array> = {
      name: "hub-control",
      limitMs: 250,
      neverThrows: true,
      generate(rng) {
        const kind = rng.weighted([[8, "random"], [10, "structured"], [12, "sample"], [40, "bytes"], [30, "value"]] as const);
        if (kind === "random") return random.next();
        if (kind === "structured") return encode(structured.next());
        const s = rng.pick(samples);
        if (kind === "sample") return s;
        if (kind === "bytes") return mutateBytes(rng, s, { others: samples, msgpack: true });
        const v = decodeStrict(s, { maxBytes: 512, maxDepth: 1, maxItems: 8 }) as Plain;
        return encode(mutateValue(rng, v));
      },
      exec: (b) => ({ frame: isControlFrame(b), control: parseControl(b) }),
      check(_b, r) {
        const c = (r as { control: Control | undefined }).control;
        if (c === undefined) return undefined;
        const p = controlProblem(c);
        if (p) return `parseControl returned a malformed ${c.kind}: ${p}`;
        const again = parseControl(encodeControl(c));
        return again && deepEqualPlain({ ...again }, { ...c }) ? undefined : "parseControl(encodeControl(c)) differs from c";
      },
      outcome: (r) => (r as { control: Control | undefined }).control?.kind ?? "refused",
      ...rawBytes,
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Public identities

type IdentityInput = { s: string } | { o: Plain };
const IDENTITY_KEYS = ["v", "id", "kid", "signPub", "sealPub", "fingerprint"];

export const identityTarget: TargetFactory = {
  name: "identity",
  async create(ctx) {
    const ids = ["alice", "bob", "carol", "A", "x_-9", "z".repeat(64)].map((id) => fixedIdentity(id));
    const pubs: PublicIdentity[] = ids.map((i) => i.publicIdentity);
    const texts = pubs.map((p) => JSON.stringify(p));
    const byKid = new Map(pubs.map((p) => [p.kid, p]));
    const randomText = fcStream(fc.oneof(fc.string({ maxLength: 200 }), fc.json({ maxDepth: 3 })), ctx.seed, "identity-text");
    const randomObj = fcStream(
      fc.record(Object.fromEntries(IDENTITY_KEYS.map((k) => [k, fc.oneof(fc.string({ maxLength: 60 }), fc.integer(), fc.constant(null), fc.constant(1))])), { requiredKeys: [] }),
      ctx.seed,
      "identity-obj",
    );
    const t: FuzzTarget<IdentityInput> = {
      name: "identity",
      limitMs: 250,
      codes: ["ERR_INVALID_ARGUMENT"],
      generate(rng) {
        const kind = rng.weighted([[7, "text"], [7, "obj"], [8, "sample"], [39, "mtext"], [39, "mobj"]] as const);
        if (kind === "text") return { s: randomText.next() };
        if (kind === "obj") return { o: randomObj.next() as Plain };
        const i = rng.int(pubs.length);
        if (kind === "sample") return rng.chance(0.5) ? { s: texts[i]! } : { o: clonePlain({ ...pubs[i]! } as Plain) };
        if (kind === "mtext") return { s: mutateText(rng, texts[i]!, texts, IDENTITY_KEYS) };
        let o = { ...pubs[i]! } as Plain;
        if (rng.chance(0.15)) o = { ...pubs[i]!, signPub: pubs[(i + 1) % pubs.length]!.signPub } as Plain;
        return { o: mutateValue(rng, o, IDENTITY_KEYS) };
      },
      exec: (i) => parsePublicIdentity("s" in i ? i.s : i.o),
      check(_i, r) {
        const p = r as PublicIdentity;
        const known = byKid.get(p.kid);
        if (!known || known.id !== p.id || known.signPub !== p.signPub || known.sealPub !== p.sealPub || known.fingerprint !== p.fingerprint) {
          return "a public identity that is not one of the genuine ones was accepted";
        }
        return Object.isFrozen(p) ? undefined : "result not frozen";
      },
      encode: (i) => encodeTagged(i),
      decode: (b) => decodeTagged<IdentityInput>(b),
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Attestations

interface AttestationInput {
  raw: Plain;
  output: Uint8Array;
}
const ATTESTATION_KEYS = ["v", "by", "kid", "in", "ind", "out", "pol", "ts", "sig"];

export const attestationTarget: TargetFactory = {
  name: "attestation",
  async create(ctx) {
    const carol = fixedIdentity("carol"); // anonymizer
    const dave = fixedIdentity("dave"); // trusted, no anonymizer role
    const mallory = fixedIdentity("mallory"); // anonymizer, revoked
    const eve = fixedIdentity("eve"); // unknown
    const trust = new TrustStore();
    trust.add(carol.publicIdentity, { roles: [ANONYMIZER_ROLE] });
    trust.add(dave.publicIdentity, { roles: ["writer"] });
    trust.add(mallory.publicIdentity, { roles: [ANONYMIZER_ROLE] });
    trust.revoke("mallory");
    const samples: { att: Attestation; output: Uint8Array; valid: boolean }[] = [];
    for (let i = 0; i < 24; i++) {
      const signer = i < 16 ? carol : [dave, mallory, eve][i % 3]!;
      const output = ctx.rng.bytes(ctx.rng.size(200));
      const age = i % 8 === 7 ? 20 * 60_000 : i % 8 === 6 ? -60_000 : ctx.rng.int(60_000);
      const att = createAttestation(signer, { id: toHex(ctx.rng.bytes(16)), digest: toHex(ctx.rng.bytes(32)) }, output, ctx.rng.pick(["mask-v1", "p:x.y-1"]), FIXED_NOW - age);
      samples.push({ att, output, valid: signer === carol && age >= 0 && age <= 10 * 60_000 });
    }
    const validBySig = new Map(samples.filter((s) => s.valid).map((s) => [toHex(s.att.sig), s]));
    const random = fcStream(
      fc.oneof(
        plainArb,
        fc.record({
          v: fc.oneof(fc.constant(1), fc.integer()),
          by: fc.constantFrom("carol", "dave", "mallory", "eve", "constructor", "__proto__", "toString"),
          kid: fc.oneof(fc.constant(carol.kid), fc.string()),
          in: fc.string(),
          ind: fc.uint8Array({ minLength: 31, maxLength: 33 }),
          out: fc.uint8Array({ minLength: 31, maxLength: 33 }),
          pol: fc.string(),
          ts: fc.integer(),
          sig: fc.uint8Array({ minLength: 63, maxLength: 65 }),
        }, { requiredKeys: [] }),
      ),
      ctx.seed,
      "attestation-random",
    );
    const t: FuzzTarget<AttestationInput> = {
      name: "attestation",
      limitMs: 250,
      codes: ["ERR_ATTESTATION_INVALID"],
      generate(rng) {
        const s = rng.pick(samples);
        const kind = rng.weighted([[10, "random"], [10, "sample"], [60, "value"], [10, "output"], [10, "swap"]] as const);
        if (kind === "random") return { raw: random.next() as Plain, output: s.output };
        if (kind === "sample") return { raw: { ...s.att } as Plain, output: s.output };
        if (kind === "value") return { raw: mutateValue(rng, { ...s.att } as Plain, ATTESTATION_KEYS), output: s.output };
        if (kind === "output") return { raw: { ...s.att } as Plain, output: mutateBytes(rng, s.output) };
        return { raw: { ...s.att } as Plain, output: rng.pick(samples).output };
      },
      exec: (i) => verifyAttestation(trust, i.raw, i.output, { now: FIXED_NOW }),
      check({ raw, output }) {
        const r = raw as unknown as Attestation;
        const s = r && r.sig instanceof Uint8Array ? validBySig.get(toHex(r.sig)) : undefined;
        if (!s || !sameBytes(s.output, output) || !deepEqualPlain({ ...r }, { ...s.att })) {
          return "verifyAttestation accepted an attestation that is not a genuine, fresh one from the anonymizer";
        }
        return undefined;
      },
      encode: (i) => encodeTagged(i),
      decode: (b) => decodeTagged<AttestationInput>(b),
    };
    return t;
  },
};
