import { inspect } from "node:util";
import fc from "fast-check";
import { refusesHostileBytes } from "./_hostile.js";
import { describe, expect, it } from "vitest";
import { nativeProvider, nobleProvider, type CryptoProvider } from "../src/_crypto.js";
import { decodeStrict, encode } from "../src/codec.js";
import {
  EnvelopeOpener,
  HPKE_INFO,
  MAX_TTL_MS,
  decodeEnvelope,
  decodePayload,
  encodePayload,
  sealEnvelope,
  type Data,
} from "../src/envelope.js";
import { setupAuthR, type HpkeContext } from "../src/hpke.js";
import { Identity } from "../src/identity.js";
import { rotateIdentity } from "../src/statements.js";
import {
  CHECKPOINT_BYTES,
  DEFAULT_CHECKPOINT_EVERY,
  MAX_PENDING_CHECKPOINTS,
  SessionReceiver,
  SessionSender,
  checkpointSignedBytes,
  decodeSessionEnvelope,
  decodeSessionHeader,
  decodeSessionHeaderFast,
  encodeSessionFrame,
  encodeSessionHeader,
  isSessionFrame,
  isUnknownStream,
  sessionChainHead,
  sessionChainInit,
  sessionEnvelopeDigest,
  sessionEnvelopeId,
  sessionHeaderSchema,
  verifySessionCheckpoint,
  type OpenedSessionEnvelope,
  type SessionCheckpointEvent,
  type SessionEvent,
  type SessionHeader,
  type SessionReceiverOptions,
  type SessionSenderOptions,
  type SessionWireHeader,
} from "../src/session.js";
import { TrustStore } from "../src/trust.js";

const CI = process.env["CI"] === "true";
const T0 = 1_800_000_000_000;

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `non-coded: ${String(e)}`;
  }
  return "no error";
}

interface Crew {
  alice: Identity;
  bob: Identity;
  mallory: Identity;
  /** Alice's trust store (bob, mallory) and Bob's (alice, mallory). */
  trustA: TrustStore;
  trustB: TrustStore;
  tx: SessionSender;
  rx: SessionReceiver;
  events: SessionEvent[];
  clock: { t: number };
}

function crew(
  p: CryptoProvider = nativeProvider,
  senderOpts: Partial<SessionSenderOptions> = {},
  receiverOpts: Partial<SessionReceiverOptions> = {},
): Crew {
  const clock = { t: T0 };
  const alice = Identity.generate("alice", { provider: p });
  const bob = Identity.generate("bob", { provider: p });
  const mallory = Identity.generate("mallory", { provider: p });
  const trustA = new TrustStore({ provider: p });
  trustA.add(bob.publicIdentity);
  trustA.add(mallory.publicIdentity);
  const trustB = new TrustStore({ provider: p });
  trustB.add(alice.publicIdentity);
  trustB.add(mallory.publicIdentity);
  const events: SessionEvent[] = [];
  const now = () => clock.t;
  const tx = new SessionSender({ identity: alice, trust: trustA, to: "bob", now, ...senderOpts });
  const rx = new SessionReceiver({ identity: bob, trust: trustB, now, onEvent: (e) => events.push(e), ...receiverOpts });
  return { alice, bob, mallory, trustA, trustB, tx, rx, events, clock };
}

/** Seals `n` envelopes (the first opens the stream) and returns every frame in order, preceding frames included. */
function stream(c: Crew, n: number, data: (i: number) => Data = (i) => ({ i })): Uint8Array[] {
  const frames: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const s = c.tx.seal(encodePayload(data(i)));
    frames.push(...s.preceding, s.bytes);
  }
  return frames;
}

const checkpoints = (events: SessionEvent[]) => events.filter((e): e is SessionCheckpointEvent => e.kind === "checkpoint");
const dataOf = (m: OpenedSessionEnvelope) => decodePayload(m.plaintext).data;
const seqOf = (frame: Uint8Array) => (isSessionFrame(frame) ? decodeSessionEnvelope(frame).wire.seq : 0);

/** Deterministic shuffle (the property tests cover random orders). */
function shuffle<T>(xs: T[], seed: number): T[] {
  const a = [...xs];
  let s = seed >>> 0 || 1;
  for (let i = a.length - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = (s >>> 0) % (i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/**
 * Someone holding the stream key — the recipient itself, or anyone it leaked to — forging continuations: the
 * threat signed checkpoints exist for. Builds the recipient's HPKE context from the opening envelope and seals
 * with it at any sequence number.
 */
class Forger {
  #ctx: HpkeContext;
  readonly sid: Uint8Array;
  constructor(
    readonly c: Crew,
    readonly open: Uint8Array,
  ) {
    const env = decodeEnvelope(open);
    const p = c.bob.provider;
    this.sid = env.wire.id;
    this.#ctx = setupAuthR(p, env.wire.enc, c.bob.sealingKey(), HPKE_INFO, p.x25519Public(c.alice.sealPublicKey));
  }
  /** A continuation at `seq` with the given header fields. */
  seal(seq: number, fields: Partial<SessionWireHeader> = {}, payload: Uint8Array = encodePayload("forged")): Uint8Array {
    if (this.#ctx.seq > seq) throw new Error("forger: sequence numbers must increase");
    while (this.#ctx.seq < seq) this.#ctx.seal(new Uint8Array(0), new Uint8Array(0));
    const wire: SessionWireHeader = {
      v: 2,
      sid: this.sid,
      from: "alice",
      to: "bob",
      seq,
      ts: this.c.clock.t,
      ttl: 60_000,
      type: "msg",
      tags: { pii: [], anon: false },
      ...fields,
    };
    const header = encodeSessionHeader(wire);
    return encodeSessionFrame(header, this.#ctx.seal(header, payload));
  }
}

/** The digests of frames as the chain sees them. */
function digestOf(p: CryptoProvider, frame: Uint8Array): Uint8Array {
  if (isSessionFrame(frame)) {
    const d = decodeSessionEnvelope(frame);
    return sessionEnvelopeDigest(p, d.headerBytes, d.ciphertext);
  }
  const d = decodeEnvelope(frame);
  return sessionEnvelopeDigest(p, d.headerBytes, d.ciphertext);
}

/** A `ck` field: u64be(first) ‖ prev ‖ sig. */
function ckField(first: number, prev: Uint8Array, sig: Uint8Array): Uint8Array {
  const b = new Uint8Array(CHECKPOINT_BYTES);
  new DataView(b.buffer).setBigUint64(0, BigInt(first));
  b.set(prev, 8);
  b.set(sig, 40);
  return b;
}

// ---------------------------------------------------------------------------------------------------------------

describe("session round trip", () => {
  it.each([
    ["native→native", nativeProvider, nativeProvider],
    ["noble→noble", nobleProvider, nobleProvider],
    ["native→noble", nativeProvider, nobleProvider],
    ["noble→native", nobleProvider, nativeProvider],
  ] as const)("%s: an opening envelope then continuations, headers and per-envelope tags intact", (_n, ps, pr) => {
    const alice = Identity.generate("alice", { provider: ps });
    const secrets = Identity.generate("bob", { provider: pr }).exportSecrets();
    const bobR = Identity.fromSecrets("bob", secrets, { provider: pr });
    const bobS = Identity.fromSecrets("bob", secrets, { provider: ps });
    const trustS = new TrustStore({ provider: ps });
    trustS.add(bobS.publicIdentity);
    const trustR = new TrustStore({ provider: pr });
    trustR.add(alice.publicIdentity);
    const tx = new SessionSender({ identity: alice, trust: trustS, to: "bob", checkpointEvery: 3 });
    const rx = new SessionReceiver({ identity: bobR, trust: trustR });
    const cases: [Data, Parameters<SessionSender["seal"]>[1]][] = [
      [new Uint8Array([0, 1, 255]), { tags: { pii: ["pii:email"], classification: "internal" }, type: "req" }],
      ["héllo ✓", {}],
      [{ text: "hi", n: [1, 2.5, null, true] }, { tags: { anonymized: true }, ttlMs: 1234 }],
      ["", { replyTo: "00112233445566778899aabbccddeeff", type: "rep" }],
      [new Uint8Array(), { tags: { pii: ["pii:phone", "pii:email", "pii:email"] } }],
      ["six", {}],
      ["seven", { type: "tool.result" }],
    ];
    const ids = new Set<string>();
    let streamId: string | undefined;
    for (const [i, [data, opts]] of cases.entries()) {
      const sealed = tx.seal(encodePayload(data), opts);
      expect(sealed.preceding).toEqual([]);
      expect(sealed.opened).toBe(i === 0);
      const opened = rx.open(sealed.bytes);
      expect(opened.mode).toBe(i === 0 ? "open" : "session");
      expect(opened.control).toBe(false);
      expect(dataOf(opened)).toEqual(data);
      expect(opened.header).toEqual(sealed.header);
      const h = opened.header as SessionHeader;
      streamId ??= h.streamId;
      expect(h.streamId).toBe(streamId);
      expect(h.seq).toBe(i);
      expect(h.id).toBe(sessionEnvelopeId(streamId, i));
      expect(h.from).toBe("alice");
      expect(h.senderKid).toBe(alice.kid);
      expect(h.recipientKid).toBe(bobR.kid);
      expect(opened.digest).toEqual(digestOf(pr, sealed.bytes));
      ids.add(h.id);
    }
    expect(ids.size).toBe(cases.length);
    expect(sessionEnvelopeId(streamId!, 0)).toBe(streamId);
    const tags = (i: number) => {
      const s = tx.seal(encodePayload(i), { tags: i % 2 ? { pii: ["pii:email"] } : {} });
      return rx.open(s.bytes).header.tags;
    };
    expect(tags(1)).toEqual({ pii: ["pii:email"], anonymized: false });
    expect(tags(2)).toEqual({ pii: [], anonymized: false });
    const fin = tx.close();
    expect(fin).toBeInstanceOf(Uint8Array);
    expect(rx.open(fin!).control).toBe(true);
    expect(rx.streamCount).toBe(0);
    rx.close();
  });

  it("the opening envelope is an ordinary signed envelope: EnvelopeOpener accepts it", () => {
    const c = crew();
    const first = c.tx.seal(encodePayload("hello"));
    const plain = new EnvelopeOpener({ identity: c.bob, trust: c.trustB, now: () => c.clock.t }).open(first.bytes);
    expect(plain.header.id).toBe(first.header.id);
    expect(plain.plaintext[0]).toBe(0x10); // the stream-opening kind byte, then the session version
    expect(plain.plaintext[1]).toBe(0x01);
    expect(decodePayload(plain.plaintext.subarray(2)).data).toBe("hello");
  });

  it("plain signed envelopes still open through the receiver (mode signed), and keep no stream", () => {
    const c = crew();
    const env = sealEnvelope(c.alice, c.trustA.require("bob"), encodePayload({ a: 1 }), { now: c.clock.t });
    const m = c.rx.open(env.bytes);
    expect(m.mode).toBe("signed");
    expect(dataOf(m)).toEqual({ a: 1 });
    expect(m.digest).toBeUndefined();
    expect(c.rx.streamCount).toBe(0);
    expect(codeOf(() => c.rx.open(env.bytes))).toBe("ERR_REPLAY");
  });

  it("does not mutate the payload or the frames it is given", () => {
    const c = crew();
    stream(c, 2).forEach((f) => c.rx.open(f));
    const payload = encodePayload("abc");
    const copy = Uint8Array.from(payload);
    const s = c.tx.seal(payload);
    expect([...payload]).toEqual([...copy]);
    const frameCopy = Uint8Array.from(s.bytes);
    c.rx.open(s.bytes);
    expect([...s.bytes]).toEqual([...frameCopy]);
  });

  it("the wire: [2, header, ct] with the canonical header, ids derived from stream id and seq", () => {
    const c = crew();
    const [open, f1] = stream(c, 2);
    expect(open![1]).toBe(1); // [1, …]: a signed envelope
    const d = decodeSessionEnvelope(f1!);
    expect(isSessionFrame(f1!)).toBe(true);
    expect(decodeStrict(f1!, { maxBytes: 1 << 20, maxDepth: 1 })).toEqual([2, d.headerBytes, d.ciphertext]);
    expect(Buffer.compare(encode([2, d.headerBytes, d.ciphertext]), f1!)).toBe(0);
    expect(Object.keys(decodeStrict(d.headerBytes, { maxBytes: 4096 }) as object)).toEqual(["v", "sid", "from", "to", "seq", "ts", "ttl", "type", "tags"]);
    const sid = decodeEnvelope(open!).header.id;
    const id1 = sessionEnvelopeId(sid, 1);
    expect(d.header.id).toBe(id1);
    expect(id1.slice(0, 16)).toBe(sid.slice(0, 16));
    expect(BigInt(`0x${id1.slice(16)}`) ^ BigInt(`0x${sid.slice(16)}`)).toBe(1n);
    expect(sessionEnvelopeId(sid, 2 ** 40 + 5).slice(16)).toBe((BigInt(`0x${sid.slice(16)}`) ^ BigInt(2 ** 40 + 5)).toString(16).padStart(16, "0"));
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("continuations are refused, with the code of the first failed check", () => {
  it("every single-byte flip of a continuation (one carrying a checkpoint) is refused and changes nothing", () => {
    const c = crew(nativeProvider, { checkpointEvery: 2 });
    const frames = stream(c, 5); // seq 2 carries the checkpoint over [0, 1], seq 4 the one over [2, 3]
    for (const f of frames.slice(0, 4)) c.rx.open(f);
    const target = frames[4]!;
    expect(decodeSessionEnvelope(target).wire.ck).toBeDefined();
    const allowed = new Set([
      "ERR_DECODE",
      "ERR_SCHEMA",
      "ERR_UNKNOWN_PEER",
      "ERR_WRONG_RECIPIENT",
      "ERR_EXPIRED",
      "ERR_FROM_FUTURE",
      "ERR_UNKNOWN_STREAM",
      "ERR_REPLAY",
      "ERR_DECRYPT",
    ]);
    const seen = new Map<string, number>();
    for (let i = 0; i < target.length; i++) {
      for (const mask of [0x01, 0x80]) {
        const bad = Uint8Array.from(target);
        bad[i]! ^= mask;
        // The same receiver throughout: a refused envelope must not move its window or touch its chain.
        const code = codeOf(() => c.rx.open(bad));
        expect(allowed.has(code), `byte ${i} mask ${mask}: ${code}`).toBe(true);
        seen.set(code, (seen.get(code) ?? 0) + 1);
      }
    }
    // The AEAD covers header and ciphertext: most flips are caught there, the checkpoint bytes included.
    expect(seen.get("ERR_DECRYPT") ?? 0).toBeGreaterThan(target.length);
    expect(checkpoints(c.events)).toHaveLength(1); // only the one carried by seq 2
    expect(c.events.some((e) => e.kind === "closed")).toBe(false);
    const m = c.rx.open(target);
    expect(dataOf(m)).toEqual({ i: 4 });
    expect(checkpoints(c.events).map((e) => [e.firstSeq, e.lastSeq])).toEqual([
      [0, 1],
      [2, 3],
    ]);
  });

  it("a relay that strips or edits tags breaks the AEAD (the header is its associated data)", () => {
    const c = crew();
    const [open, f1] = stream(c, 2, () => "pii here");
    c.rx.open(open!);
    const d = decodeSessionEnvelope(f1!);
    for (const edit of [{ tags: { pii: [], anon: true } }, { type: "rep" }, { ttl: MAX_TTL_MS }]) {
      const header = encodeSessionHeader({ ...d.wire, ...edit });
      expect(codeOf(() => c.rx.open(encodeSessionFrame(header, d.ciphertext)))).toBe("ERR_DECRYPT");
    }
    expect(codeOf(() => c.rx.open(f1!))).toBe("no error");
  });

  it("wrong recipient (id), and another key under the same id holds no such stream", () => {
    const c = crew();
    const [open, f1] = stream(c, 2);
    const malloryTrust = new TrustStore();
    malloryTrust.add(c.alice.publicIdentity);
    const atMallory = new SessionReceiver({ identity: c.mallory, trust: malloryTrust, now: () => c.clock.t });
    expect(codeOf(() => atMallory.open(open!))).toBe("ERR_WRONG_RECIPIENT");
    expect(codeOf(() => atMallory.open(f1!))).toBe("ERR_WRONG_RECIPIENT");
    const bob2 = Identity.generate("bob");
    const atBob2 = new SessionReceiver({ identity: bob2, trust: c.trustB, now: () => c.clock.t });
    expect(codeOf(() => atBob2.open(open!))).toBe("ERR_WRONG_RECIPIENT");
    expect(codeOf(() => atBob2.open(f1!))).toBe("ERR_UNKNOWN_STREAM");
    expect(codeOf(() => c.rx.open(open!))).toBe("no error");
    expect(codeOf(() => c.rx.open(f1!))).toBe("no error");
  });

  it("unknown senders, and revocation mid-stream on both sides", () => {
    const c = crew();
    const eve = Identity.generate("eve");
    const evesTrust = new TrustStore();
    evesTrust.add(c.bob.publicIdentity);
    const fromEve = new SessionSender({ identity: eve, trust: evesTrust, to: "bob", now: () => c.clock.t });
    const [eOpen, e1] = [fromEve.seal(encodePayload(1)).bytes, fromEve.seal(encodePayload(2)).bytes];
    expect(codeOf(() => c.rx.open(eOpen))).toBe("ERR_UNKNOWN_PEER");
    expect(codeOf(() => c.rx.open(e1))).toBe("ERR_UNKNOWN_PEER");

    const frames = stream(c, 6);
    for (const f of frames.slice(0, 3)) c.rx.open(f);
    c.trustB.revoke("alice");
    // Looked up on every envelope, before the stream: refused as revoked, not merely as an unknown stream.
    for (const f of frames.slice(3)) expect(codeOf(() => c.rx.open(f))).toBe("ERR_REVOKED_PEER");
    expect(c.events.some((e) => e.kind === "closed" && e.reason === "revoked")).toBe(true);
    expect(c.rx.streamCount).toBe(0);
    // Sender side: the recipient's revocation stops the stream at once.
    c.trustA.revoke("bob");
    expect(c.tx.streamId).toBeUndefined();
    expect(codeOf(() => c.tx.seal(encodePayload("x")))).toBe("ERR_REVOKED_PEER");
  });

  it("replays: a continuation, the opening envelope, and a copy accepted between verify and decrypt", () => {
    const c = crew();
    const [open, f1, f2] = stream(c, 3);
    c.rx.open(open!);
    c.rx.open(f1!);
    expect(codeOf(() => c.rx.open(f1!))).toBe("ERR_REPLAY");
    expect(codeOf(() => c.rx.open(open!))).toBe("ERR_REPLAY");
    // A fresh replay cache does not let a copy of the opening envelope reset the live stream's window.
    const rx2 = new SessionReceiver({ identity: c.bob, trust: c.trustB, now: () => c.clock.t });
    rx2.open(open!);
    expect(codeOf(() => rx2.open(open!))).toBe("ERR_REPLAY");
    const v1 = c.rx.verify(f2!);
    const v2 = c.rx.verify(f2!); // both pass: the window moves only after the AEAD
    c.rx.decrypt(v1);
    expect(codeOf(() => c.rx.decrypt(v2))).toBe("ERR_REPLAY");
  });

  it("expired and from the future, with the skew window", () => {
    const c = crew(nativeProvider, {}, { clockSkewMs: 500 });
    const [open] = stream(c, 1);
    c.rx.open(open!);
    const f = c.tx.seal(encodePayload("x"), { ttlMs: 1000, now: T0 + 10_000 }).bytes;
    const at = (t: number) => {
      c.clock.t = t;
      return codeOf(() => c.rx.verify(f));
    };
    expect(at(T0 + 10_000 + 1000 + 500)).toBe("no error");
    expect(at(T0 + 10_000 + 1000 + 501)).toBe("ERR_EXPIRED");
    expect(at(T0 + 10_000 - 500)).toBe("no error");
    expect(at(T0 + 10_000 - 501)).toBe("ERR_FROM_FUTURE");
  });

  it("oversize envelopes are refused before decoding", () => {
    const c = crew(nativeProvider, {}, { maxEnvelopeBytes: 1024 });
    const [open, big] = stream(c, 2, (i) => (i === 0 ? "small" : new Uint8Array(2000)));
    c.rx.open(open!);
    expect(codeOf(() => c.rx.open(big!))).toBe("ERR_ENVELOPE_TOO_LARGE");
    const huge = new Uint8Array(1 << 21);
    huge[0] = 0x93;
    huge[1] = 2;
    expect(codeOf(() => crew().rx.open(huge))).toBe("ERR_ENVELOPE_TOO_LARGE");
  });

  it("malformed structures: ext types, wrong arity, bad headers, schema and cross-field violations", () => {
    const c = crew();
    const [open, f1] = stream(c, 2);
    c.rx.open(open!);
    const d = decodeSessionEnvelope(f1!);
    const w = d.wire;
    const ct = d.ciphertext;
    const withHeader = (h: unknown) => encode([2, encode(h), ct]);
    const bin = (n: number) => new Uint8Array(n);
    const cases: [Uint8Array, string][] = [
      [new Uint8Array([0x93, 0x02, 0xd4, 0x01, 0x00, 0xc4, 0x00]), "ERR_DECODE"], // fixext header
      [new Uint8Array([0x93, 0x02, 0xc7, 0x01, 0x72, 0x00, 0xc4, 0x00]), "ERR_DECODE"], // ext8 (msgpackr record)
      [new Uint8Array([0x93, 0x02, 0xc4, 0x05, 0x00]), "ERR_DECODE"], // truncated
      [encode([2, d.headerBytes]), "ERR_DECODE"],
      [encode([2, d.headerBytes, ct, bin(96)]), "ERR_DECODE"], // no 4th element on the continuation wire
      [encode([2, "header", ct]), "ERR_DECODE"],
      [encode([2, d.headerBytes, "ct"]), "ERR_DECODE"],
      [new Uint8Array([...f1!, 0x00]), "ERR_DECODE"], // trailing byte
      [encode([2, bin(5000), ct]), "ERR_DECODE"], // header beyond 4096 bytes
      [encode([2, new Uint8Array([0x81, 0xa9, ...new TextEncoder().encode("__proto__"), 0x01]), ct]), "ERR_DECODE"],
      [withHeader([1, 2, 3]), "ERR_SCHEMA"],
      [withHeader({ ...w, extra: 1 }), "ERR_SCHEMA"],
      [withHeader({ ...w, v: 1 }), "ERR_SCHEMA"],
      [withHeader({ ...w, seq: 0 }), "ERR_SCHEMA"],
      [withHeader({ ...w, seq: 1.5 }), "ERR_SCHEMA"],
      [withHeader({ ...w, seq: -1 }), "ERR_SCHEMA"],
      [withHeader({ ...w, seq: 2 ** 32 }), "ERR_SCHEMA"],
      [withHeader({ ...w, sid: bin(15) }), "ERR_SCHEMA"],
      [withHeader({ ...w, from: "al ice" }), "ERR_SCHEMA"],
      [withHeader({ ...w, type: "Msg" }), "ERR_SCHEMA"],
      [withHeader({ ...w, ttl: MAX_TTL_MS + 1 }), "ERR_SCHEMA"],
      [withHeader({ ...w, tags: { pii: ["email"], anon: false } }), "ERR_SCHEMA"],
      [withHeader({ ...w, tags: { pii: [], anon: false, x: 1 } }), "ERR_SCHEMA"],
      [withHeader({ ...w, re: bin(15) }), "ERR_SCHEMA"],
      [withHeader({ ...w, ck: bin(CHECKPOINT_BYTES - 1) }), "ERR_SCHEMA"],
      [withHeader({ ...w, fin: false }), "ERR_SCHEMA"],
      [withHeader({ ...w, fin: true }), "ERR_SCHEMA"], // a final flag needs a checkpoint
      [withHeader({ ...w, ck: ckField(w.seq, bin(32), bin(64)) }), "ERR_SCHEMA"], // must cover seqs before its carrier
      [withHeader({ ...w, ts: 2 ** 63 }), "ERR_SCHEMA"],
    ];
    for (const [bytes, code] of cases) expect(codeOf(() => c.rx.open(bytes)), Buffer.from(bytes.subarray(0, 40)).toString("hex")).toBe(code);
    expect(codeOf(() => c.rx.open(f1!))).toBe("no error");
  });

  it("a non-canonical but equivalent outer encoding still opens, and the chain does not depend on it", () => {
    const c = crew(nativeProvider, { checkpointEvery: 2 });
    const frames = stream(c, 3);
    c.rx.open(frames[0]!);
    const d = decodeSessionEnvelope(frames[1]!);
    // array16 instead of fixarray, bin16 instead of bin8 for the header.
    const h = d.headerBytes;
    const reframed = new Uint8Array([0xdc, 0x00, 0x03, 0x02, 0xc5, h.length >> 8, h.length & 0xff, ...h, ...frames[1]!.subarray(2 + 2 + h.length)]);
    expect(decodeSessionEnvelope(reframed).headerBytes).toEqual(h);
    const m = c.rx.open(reframed);
    expect(dataOf(m)).toEqual({ i: 1 });
    expect(m.digest).toEqual(digestOf(nativeProvider, frames[1]!));
    c.rx.open(frames[2]!); // carries the checkpoint over [0, 1]
    expect(checkpoints(c.events).map((e) => [e.firstSeq, e.lastSeq])).toEqual([[0, 1]]);
  });

  it("property: random bytes and mutated continuations never crash, hang or open", () => {
    const c = crew(nativeProvider, { checkpointEvery: 3 });
    const frames = stream(c, 9, (i) => ({ i, pad: "x".repeat(i * 40) }));
    c.rx.open(frames[0]!);
    const samples = frames.slice(1);
    const coded = (bytes: Uint8Array) => {
      const t = performance.now();
      const code = codeOf(() => c.rx.open(bytes));
      expect(performance.now() - t).toBeLessThan(250);
      return code;
    };
    const numRuns = CI ? 4000 : 1000;
    refusesHostileBytes((b) => c.rx.open(b), samples, { numRuns });
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), fc.uint8Array({ maxLength: 64 }), (v, b) => {
        expect(coded(encode([2, encode(v), b]))).toMatch(/^ERR_/);
        expect(coded(encode([2, b, b]))).toMatch(/^ERR_/);
      }),
      { numRuns: CI ? 2000 : 500 },
    );
    // Nothing above moved the stream: the genuine envelopes open in order, with every checkpoint.
    for (const f of samples) expect(codeOf(() => c.rx.open(f))).toBe("no error");
    expect(checkpoints(c.events).map((e) => e.lastSeq)).toEqual([2, 5]);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("streams: reordering, loss, the replay window, expiry and re-opening", () => {
  it("reordered envelopes are each accepted once, and every checkpoint verifies once its interval is complete", () => {
    const c = crew(nativeProvider, { checkpointEvery: 16 });
    const frames = stream(c, 300);
    c.rx.open(frames[0]!);
    const rest = frames.slice(1);
    const got = new Set<number>();
    for (const f of shuffle(rest, 7)) got.add((dataOf(c.rx.open(f)) as { i: number }).i);
    expect(got.size).toBe(299);
    const cps = checkpoints(c.events);
    expect(cps.length).toBe(Math.floor(299 / 16));
    // In order, contiguous, chained.
    for (const [k, e] of cps.entries()) {
      expect(e.firstSeq).toBe(k === 0 ? 0 : cps[k - 1]!.lastSeq + 1);
      if (k > 0) expect(e.prevHead).toBe(cps[k - 1]!.head);
    }
    expect(c.events.some((e) => e.kind === "gap")).toBe(false);
    for (const f of shuffle(rest, 9).slice(0, 50)) expect(codeOf(() => c.rx.open(f))).toBe("ERR_REPLAY");
  });

  it("property: any order of a stream's envelopes delivers each once and verifies every checkpoint", () => {
    const c = crew(nativeProvider, { checkpointEvery: 5 });
    const frames = stream(c, 40);
    fc.assert(
      fc.property(fc.integer(), (seed) => {
        const rx = new SessionReceiver({ identity: c.bob, trust: c.trustB, now: () => c.clock.t, onEvent: (e) => ev.push(e) });
        const ev: SessionEvent[] = [];
        rx.open(frames[0]!);
        for (const f of shuffle(frames.slice(1), seed)) rx.open(f);
        expect(checkpoints(ev).map((e) => e.lastSeq)).toEqual([4, 9, 14, 19, 24, 29, 34]);
        rx.close();
      }),
      { numRuns: CI ? 60 : 20 },
    );
  });

  it("loss: the rest is delivered; intervals with a lost envelope become gaps once the window passes; later checkpoints verify", () => {
    const c = crew(nativeProvider, { checkpointEvery: 8 }, { replayWindow: 32 });
    const frames = stream(c, 120);
    const lost = new Set([11, 12, 40, 57]); // seq 40 carries the checkpoint over [32, 39]
    expect(decodeSessionEnvelope(frames[40]!).wire.ck).toBeDefined();
    let delivered = 0;
    for (const f of frames) {
      if (lost.has(seqOf(f))) continue;
      c.rx.open(f);
      delivered++;
    }
    expect(delivered).toBe(116);
    const gaps = c.events.filter((e) => e.kind === "gap").map((e) => (e.kind === "gap" ? [e.firstSeq, e.lastSeq] : []));
    // [8,15] lost 11 and 12; [32,39] lost its checkpoint (on 40); [40,47] lost 40; [56,63] lost 57.
    expect(gaps).toEqual([
      [8, 15],
      [32, 39],
      [40, 47],
      [56, 63],
    ]);
    const verified = checkpoints(c.events).map((e) => [e.firstSeq, e.lastSeq]);
    expect(verified).toContainEqual([0, 7]);
    expect(verified).toContainEqual([16, 23]);
    expect(verified).toContainEqual([64, 71]);
    expect(verified).toContainEqual([104, 111]);
    // A late copy of a lost envelope, now older than the window, is refused.
    expect(codeOf(() => c.rx.open(frames[12]!))).toBe("ERR_REPLAY");
  });

  it("window edges: the oldest seq inside the window is accepted once, one older is refused (default 1024 and 32)", () => {
    for (const W of [1024, 32]) {
      // No checkpoints in the way: this is about the window alone.
      const c = crew(nativeProvider, { checkpointEvery: 1 << 20, checkpointIntervalMs: MAX_TTL_MS }, { replayWindow: W, maxUncheckpointed: 4096 });
      const frames = stream(c, W + 80);
      c.rx.open(frames[0]!);
      const top = W + 79;
      c.rx.open(frames[top]!);
      const oldestIn = top - W + 1;
      const v = c.rx.verify(frames[oldestIn]!);
      expect((v.header as SessionHeader).seq).toBe(oldestIn);
      expect(codeOf(() => c.rx.decrypt(v))).toBe("no error");
      expect(codeOf(() => c.rx.open(frames[oldestIn]!))).toBe("ERR_REPLAY");
      try {
        c.rx.open(frames[oldestIn - 1]!);
        expect.unreachable();
      } catch (e) {
        expect((e as { code: string }).code).toBe("ERR_REPLAY");
        expect((e as Error).message).toMatch(/older than the replay window/);
      }
      expect(codeOf(() => c.rx.open(frames[top - 1]!))).toBe("no error");
    }
  });

  it("the sender re-opens after maxMessages: the old stream ends with a final checkpoint before the new one opens", () => {
    const c = crew(nativeProvider, { maxMessages: 5 });
    const results = Array.from({ length: 12 }, (_, i) => c.tx.seal(encodePayload(i)));
    expect(results.map((r) => r.opened)).toEqual([true, false, false, false, false, true, false, false, false, false, true, false]);
    expect(results[5]!.preceding).toHaveLength(1);
    const streams = new Set(results.map((r) => r.header.streamId));
    expect(streams.size).toBe(3);
    const delivered: Data[] = [];
    for (const r of results) {
      for (const f of [...r.preceding, r.bytes]) {
        const m = c.rx.open(f);
        if (!m.control) delivered.push(dataOf(m));
      }
    }
    expect(delivered).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    const finals = checkpoints(c.events).filter((e) => e.final);
    expect(finals.map((e) => [e.firstSeq, e.lastSeq])).toEqual([
      [0, 4],
      [0, 4],
    ]);
    expect(c.events.filter((e) => e.kind === "closed" && e.reason === "final")).toHaveLength(2);
    expect(c.rx.streamCount).toBe(1);
    // An envelope of an ended stream is refused: the sender would have to re-open.
    expect(codeOf(() => c.rx.open(results[3]!.bytes))).toBe("ERR_UNKNOWN_STREAM");
  });

  it("the sender re-opens after maxAgeMs, and tick() ends an idle stream on time", () => {
    const c = crew(nativeProvider, { maxAgeMs: 1000 });
    const a = c.tx.seal(encodePayload(1));
    c.rx.open(a.bytes);
    c.clock.t += 999;
    expect(c.tx.seal(encodePayload(2)).opened).toBe(false);
    c.clock.t += 1;
    const b = c.tx.seal(encodePayload(3));
    expect(b.opened).toBe(true);
    expect(b.preceding).toHaveLength(1);
    expect(b.header.streamId).not.toBe(a.header.streamId);
    c.clock.t += 1000;
    const fin = c.tx.tick();
    expect(fin).toBeDefined();
    expect(decodeSessionEnvelope(fin!).wire.fin).toBe(true);
    expect(c.tx.streamId).toBeUndefined();
    expect(c.tx.tick()).toBeUndefined();
  });

  it("time-based checkpoints: on the first envelope after checkpointIntervalMs, and from tick() when idle", () => {
    const c = crew(nativeProvider, { checkpointIntervalMs: 1000 });
    const frames = stream(c, 3);
    frames.forEach((f) => c.rx.open(f));
    expect(c.tx.checkpointDue()).toBe(false);
    expect(c.tx.tick()).toBeUndefined();
    c.clock.t += 1000;
    expect(c.tx.checkpointDue()).toBe(true);
    const ck = c.tx.tick()!;
    expect(decodeSessionEnvelope(ck).header.type).toBe("sw.ckpt");
    const m = c.rx.open(ck);
    expect(m.control).toBe(true);
    expect(m.plaintext.length).toBe(0);
    expect(checkpoints(c.events).map((e) => [e.firstSeq, e.lastSeq])).toEqual([[0, 2]]);
    // Idle: the checkpoint envelope alone is not checkpointed again (the final one covers it).
    c.clock.t += 5000;
    expect(c.tx.checkpointDue()).toBe(false);
    expect(c.tx.tick()).toBeUndefined();
    c.clock.t -= 5000;
    c.clock.t += 999;
    c.rx.open(c.tx.seal(encodePayload("x")).bytes);
    c.clock.t += 1;
    c.rx.open(c.tx.seal(encodePayload("y")).bytes); // carries the next one, over [3, 4]
    expect(checkpoints(c.events).map((e) => [e.firstSeq, e.lastSeq])).toEqual([
      [0, 2],
      [3, 4],
    ]);
  });

  it("receiver limits: seq beyond maxMessages and age beyond maxStreamAgeMs are refused; reset() re-opens", () => {
    const c = crew(nativeProvider, {}, { maxMessages: 3, maxStreamAgeMs: 5000 });
    const frames = stream(c, 5);
    for (const f of frames.slice(0, 4)) c.rx.open(f);
    let err: unknown;
    try {
      c.rx.open(frames[4]!);
    } catch (e) {
      err = e;
    }
    expect(isUnknownStream(err)).toBe(true);
    c.tx.reset();
    const again = c.tx.seal(encodePayload("again"));
    expect(again.opened).toBe(true);
    expect(dataOf(c.rx.open(again.bytes))).toBe("again");
    c.clock.t += 5001;
    expect(codeOf(() => c.rx.open(c.tx.seal(encodePayload("late")).bytes))).toBe("ERR_UNKNOWN_STREAM");
    expect(c.events.some((e) => e.kind === "closed" && e.reason === "expired")).toBe(true);
  });

  it("streams are bounded: LRU eviction overall and per sender; an evicted stream is refused until re-opened", () => {
    const c = crew(nativeProvider, {}, { maxStreams: 2, maxStreamsPerSender: 2 });
    const senders = ["carol", "dave"].map((id) => {
      const me = Identity.generate(id);
      c.trustB.add(me.publicIdentity);
      const t = new TrustStore();
      t.add(c.bob.publicIdentity);
      return new SessionSender({ identity: me, trust: t, to: "bob", now: () => c.clock.t });
    });
    c.rx.open(c.tx.seal(encodePayload("a0")).bytes);
    for (const s of senders) c.rx.open(s.seal(encodePayload("x")).bytes);
    expect(c.rx.streamCount).toBe(2);
    const late = c.tx.seal(encodePayload("a1")).bytes;
    expect(codeOf(() => c.rx.open(late))).toBe("ERR_UNKNOWN_STREAM");
    expect(c.events.some((e) => e.kind === "closed" && e.reason === "evicted")).toBe(true);
    c.tx.reset();
    expect(dataOf(c.rx.open(c.tx.seal(encodePayload("a2")).bytes))).toBe("a2");
    // Per sender: alice's third stream evicts her own oldest, not someone else's.
    const c2 = crew(nativeProvider, {}, { maxStreamsPerSender: 2 });
    const txs = [c2.tx, ...[1, 2].map(() => new SessionSender({ identity: c2.alice, trust: c2.trustA, to: "bob", now: () => c2.clock.t }))];
    const opens = txs.map((t) => t.seal(encodePayload(0)));
    opens.forEach((o) => c2.rx.open(o.bytes));
    expect(c2.rx.streamCount).toBe(2);
    expect(c2.rx.hasStream("alice", opens[0]!.header.streamId)).toBe(false);
    expect(c2.rx.hasStream("alice", opens[2]!.header.streamId)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("signed checkpoints", () => {
  it("every checkpoint event can be re-verified from the recorded digests (audit), and only with the right ones", () => {
    const c = crew(nativeProvider, { checkpointEvery: 4 });
    const digests = new Map<number, Uint8Array>();
    for (const f of stream(c, 13)) {
      const m = c.rx.open(f);
      digests.set((m.header as SessionHeader).seq, m.digest!);
    }
    const fin = c.tx.close()!;
    c.rx.open(fin);
    const cps = checkpoints(c.events);
    expect(cps.map((e) => [e.firstSeq, e.lastSeq, e.final])).toEqual([
      [0, 3, false],
      [4, 7, false],
      [8, 11, false],
      [12, 12, true],
    ]);
    for (const e of cps) {
      const ds = Array.from({ length: e.lastSeq - e.firstSeq + 1 }, (_, k) => digests.get(e.firstSeq + k)!);
      expect(e.digests).toEqual(ds.map((d) => Buffer.from(d).toString("hex")));
      expect(verifySessionCheckpoint(nativeProvider, e, c.alice.signPublicKey, ds)).toBe(true);
      expect(verifySessionCheckpoint(nativeProvider, e, c.mallory.signPublicKey, ds)).toBe(false);
      expect(verifySessionCheckpoint(nativeProvider, e, c.alice.signPublicKey, [...ds].reverse())).toBe(ds.length === 1);
      expect(verifySessionCheckpoint(nativeProvider, { ...e, final: !e.final }, c.alice.signPublicKey, ds)).toBe(false);
    }
    expect(cps[0]!.prevHead).toBe(Buffer.from(sessionChainInit(nativeProvider, Buffer.from(cps[0]!.streamId, "hex"))).toString("hex"));
    expect(c.events.at(-1)).toMatchObject({ kind: "closed", reason: "final", uncovered: 0 });
  });

  it("a forged checkpoint (someone holding the stream key, signing as another) is refused and closes the stream", () => {
    for (const sig of ["mallory", "random"] as const) {
      const c = crew();
      const frames = stream(c, 4);
      frames.forEach((f) => c.rx.open(f));
      const forger = new Forger(c, frames[0]!);
      const p = nativeProvider;
      const ds = frames.map((f) => digestOf(p, f));
      const prev = sessionChainInit(p, forger.sid);
      const head = sessionChainHead(p, forger.sid, 0, 3, prev, ...ds);
      const msg = checkpointSignedBytes(forger.sid, c.alice.kid, c.bob.kid, 0, 3, prev, head, false);
      const s = sig === "mallory" ? c.mallory.sign(msg) : p.randomBytes(64);
      const forged = forger.seal(4, { ck: ckField(0, prev, s) });
      expect(codeOf(() => c.rx.open(forged))).toBe("ERR_CHECKPOINT");
      expect(c.events.at(-1)).toMatchObject({ kind: "closed", reason: "checkpoint_failed" });
      expect(checkpoints(c.events)).toHaveLength(0);
      expect(codeOf(() => c.rx.open(c.tx.seal(encodePayload("next")).bytes))).toBe("ERR_UNKNOWN_STREAM");
    }
  });

  it("a checkpoint over a wrong chain is refused, even signed by the real sender: wrong digest, wrong link, overlap", () => {
    const p = nativeProvider;
    const variants = ["wrong digest", "wrong prev", "overlap"] as const;
    for (const v of variants) {
      const c = crew(p, { checkpointEvery: 3 });
      const frames = stream(c, 5); // seq 3 carries the genuine checkpoint over [0, 2]
      frames.forEach((f) => c.rx.open(f));
      expect(checkpoints(c.events)).toHaveLength(1);
      const forger = new Forger(c, frames[0]!);
      const ds = frames.map((f) => digestOf(p, f));
      const goodHead = Buffer.from(checkpoints(c.events)[0]!.head, "hex");
      let first = 3;
      let prev: Uint8Array = goodHead;
      let cover = ds.slice(3, 5);
      if (v === "wrong digest") cover = [cover[0]!, p.randomBytes(32)];
      if (v === "wrong prev") prev = p.randomBytes(32);
      if (v === "overlap") {
        first = 2;
        prev = p.randomBytes(32);
        cover = ds.slice(2, 5);
      }
      const head = sessionChainHead(p, forger.sid, first, 4, prev, ...cover);
      // The sender's own key: what a buggy or equivocating sender could produce.
      const sig = c.alice.sign(checkpointSignedBytes(forger.sid, c.alice.kid, c.bob.kid, first, 4, prev, head, false));
      expect(codeOf(() => c.rx.open(forger.seal(5, { ck: ckField(first, prev, sig) }))), v).toBe("ERR_CHECKPOINT");
      expect(c.rx.streamCount).toBe(0);
    }
  });

  it("the forged envelope's plaintext is never released, and a genuine checkpoint from the same forger setup verifies", () => {
    const c = crew();
    const frames = stream(c, 3);
    frames.forEach((f) => c.rx.open(f));
    const forger = new Forger(c, frames[0]!);
    const p = nativeProvider;
    const ds = frames.map((f) => digestOf(p, f));
    const prev = sessionChainInit(p, forger.sid);
    const head = sessionChainHead(p, forger.sid, 0, 2, prev, ...ds);
    // Signed by alice over the right chain: accepted (the forger only relayed what alice signed).
    const sig = c.alice.sign(checkpointSignedBytes(forger.sid, c.alice.kid, c.bob.kid, 0, 2, prev, head, false));
    const ok = c.rx.open(forger.seal(3, { ck: ckField(0, prev, sig) }, encodePayload("carried")));
    expect(dataOf(ok)).toBe("carried");
    expect(checkpoints(c.events).map((e) => e.head)).toEqual([Buffer.from(head).toString("hex")]);
  });

  it("a sender that never checkpoints is cut off at maxUncheckpointed; pending checkpoints are bounded", () => {
    const c = crew(nativeProvider, { checkpointEvery: 1 << 20, checkpointIntervalMs: MAX_TTL_MS }, { maxUncheckpointed: 64 });
    const frames = stream(c, 70);
    let code = "no error";
    let at = -1;
    for (const [i, f] of frames.entries()) {
      code = codeOf(() => c.rx.open(f));
      if (code !== "no error") {
        at = i;
        break;
      }
    }
    expect(code).toBe("ERR_CHECKPOINT");
    expect(at).toBe(64); // seq 0-63 held uncovered; the 65th is one too many
    expect(c.rx.streamCount).toBe(0);

    // Checkpoints waiting for a missing envelope: at most MAX_PENDING_CHECKPOINTS per stream.
    const d = crew(nativeProvider, { checkpointEvery: 1 }); // a checkpoint on every envelope
    const fs = stream(d, MAX_PENDING_CHECKPOINTS + 3);
    d.rx.open(fs[0]!);
    let code2 = "no error";
    let n = 0;
    for (const f of fs.slice(2)) {
      code2 = codeOf(() => d.rx.open(f)); // seq 1 missing: every checkpoint from seq 2 waits
      if (code2 !== "no error") break;
      n++;
    }
    expect(code2).toBe("ERR_CHECKPOINT");
    expect(n).toBe(MAX_PENDING_CHECKPOINTS);
  });

  it("envelopes after the final checkpoint are refused", () => {
    const c = crew();
    const frames = stream(c, 3);
    frames.forEach((f) => c.rx.open(f));
    const forger = new Forger(c, frames[0]!);
    const fin = c.tx.close()!; // seq 3, final
    const after = forger.seal(4);
    c.rx.open(fin);
    expect(codeOf(() => c.rx.open(after))).toBe("ERR_UNKNOWN_STREAM");
    // Delivered before the final one, an envelope beyond it is a sender breaking the stream.
    const c2 = crew();
    const fr2 = stream(c2, 3);
    fr2.forEach((f) => c2.rx.open(f));
    const forger2 = new Forger(c2, fr2[0]!);
    const fin2 = c2.tx.close()!;
    c2.rx.open(forger2.seal(4));
    expect(codeOf(() => c2.rx.open(fin2))).toBe("ERR_CHECKPOINT");
  });
});

// ---------------------------------------------------------------------------------------------------------------

/** A provider that records the AEAD key arrays it is handed: the HPKE context's own key buffer. */
function spying(base: CryptoProvider): { provider: CryptoProvider; sealKeys: Set<Uint8Array>; openKeys: Set<Uint8Array> } {
  const sealKeys = new Set<Uint8Array>();
  const openKeys = new Set<Uint8Array>();
  const provider: CryptoProvider = Object.freeze({
    ...base,
    aeadSeal: (k: Uint8Array, n: Uint8Array, a: Uint8Array, pt: Uint8Array) => {
      sealKeys.add(k);
      return base.aeadSeal(k, n, a, pt);
    },
    aeadOpen: (k: Uint8Array, n: Uint8Array, a: Uint8Array, ct: Uint8Array) => {
      openKeys.add(k);
      return base.aeadOpen(k, n, a, ct);
    },
  });
  return { provider, sealKeys, openKeys };
}
const allZero = (b: Uint8Array) => b.every((x) => x === 0);

describe("session keys do not survive close", () => {
  it.each([
    ["native", nativeProvider],
    ["noble", nobleProvider],
  ] as const)("%s: close() wipes the HPKE contexts on both sides, and both refuse afterwards", (_n, base) => {
    const spyA = spying(base);
    const spyB = spying(base);
    const alice = Identity.generate("alice", { provider: spyA.provider });
    const bob = Identity.generate("bob", { provider: spyB.provider });
    const trustA = new TrustStore({ provider: base });
    trustA.add(bob.publicIdentity);
    const trustB = new TrustStore({ provider: base });
    trustB.add(alice.publicIdentity);
    const tx = new SessionSender({ identity: alice, trust: trustA, to: "bob" });
    const rx = new SessionReceiver({ identity: bob, trust: trustB });
    const frames = [0, 1, 2].map((i) => tx.seal(encodePayload(i)).bytes);
    frames.forEach((f) => rx.open(f));
    const pending = tx.seal(encodePayload("after close")).bytes;
    // One key per stream, reused: the context's own buffer, held here by reference.
    expect(spyA.sealKeys.size).toBe(1);
    expect(spyB.openKeys.size).toBe(1);
    const [txKey] = [...spyA.sealKeys];
    const [rxKey] = [...spyB.openKeys];
    expect(allZero(txKey!)).toBe(false);
    expect(allZero(rxKey!)).toBe(false);
    const fin = tx.close();
    expect(allZero(txKey!)).toBe(true);
    expect(codeOf(() => tx.seal(encodePayload("x")))).toBe("ERR_CLOSED");
    expect(tx.close()).toBeUndefined();
    expect(allZero(rxKey!)).toBe(false);
    rx.close();
    expect(allZero(rxKey!)).toBe(true);
    expect(codeOf(() => rx.open(pending))).toBe("ERR_CLOSED");
    expect(codeOf(() => rx.open(fin!))).toBe("ERR_CLOSED");
    // A fresh receiver cannot open the stream either: the keys existed nowhere else.
    const rx2 = new SessionReceiver({ identity: bob, trust: trustB });
    expect(codeOf(() => rx2.open(pending))).toBe("ERR_UNKNOWN_STREAM");
  });

  it("eviction, a final checkpoint, revocation, identity close and reset() each wipe the key too", () => {
    const spyA = spying(nativeProvider);
    const spyB = spying(nativeProvider);
    const alice = Identity.generate("alice", { provider: spyA.provider });
    const bob = Identity.generate("bob", { provider: spyB.provider });
    const trustA = new TrustStore();
    trustA.add(bob.publicIdentity);
    const trustB = new TrustStore();
    trustB.add(alice.publicIdentity);
    const rx = new SessionReceiver({ identity: bob, trust: trustB, maxStreamsPerSender: 1 });
    const keyAfter = (f: () => void) => {
      spyB.openKeys.clear();
      f();
      return [...spyB.openKeys].at(-1)!;
    };
    // final checkpoint
    const tx1 = new SessionSender({ identity: alice, trust: trustA, to: "bob" });
    const k1 = keyAfter(() => [tx1.seal(encodePayload(1)).bytes, tx1.seal(encodePayload(2)).bytes].forEach((f) => rx.open(f)));
    rx.open(tx1.close()!);
    expect(allZero(k1)).toBe(true);
    // eviction (one stream per sender)
    const tx2 = new SessionSender({ identity: alice, trust: trustA, to: "bob" });
    const tx3 = new SessionSender({ identity: alice, trust: trustA, to: "bob" });
    const k2 = keyAfter(() => [tx2.seal(encodePayload(1)).bytes, tx2.seal(encodePayload(2)).bytes].forEach((f) => rx.open(f)));
    rx.open(tx3.seal(encodePayload(1)).bytes);
    expect(allZero(k2)).toBe(true);
    // sender reset()
    spyA.sealKeys.clear();
    tx3.seal(encodePayload(2));
    const k3 = [...spyA.sealKeys][0]!;
    tx3.reset();
    expect(allZero(k3)).toBe(true);
    // identity close wipes the sender's stream
    spyA.sealKeys.clear();
    const tx4 = new SessionSender({ identity: alice, trust: trustA, to: "bob" });
    const f4 = [tx4.seal(encodePayload(1)).bytes, tx4.seal(encodePayload(2)).bytes];
    const k4 = [...spyA.sealKeys][0]!;
    const k4r = keyAfter(() => f4.forEach((f) => rx.open(f)));
    alice.close();
    expect(allZero(k4)).toBe(true);
    expect(tx4.closed).toBe(true);
    // revocation wipes the receiver's stream
    trustB.revoke("alice");
    expect(allZero(k4r)).toBe(true);
    expect(rx.streamCount).toBe(0);
  });

  it("senders and receivers print as redacted", () => {
    const c = crew();
    stream(c, 2).forEach((f) => c.rx.open(f));
    for (const o of [c.tx, c.rx]) {
      expect(inspect(o)).toContain("<redacted>");
      expect(JSON.stringify({ o })).toContain("<redacted>");
    }
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("the fast header path is equivalent to decodeStrict + the zod schema", () => {
  const LIMITS = { maxBytes: 4096, maxDepth: 3, maxItems: 128 };
  const reference = (b: Uint8Array) => {
    try {
      const r = sessionHeaderSchema.safeParse(decodeStrict(b, LIMITS), { reportInput: false });
      return r.success ? { ok: true as const, value: r.data } : { ok: false as const, code: "ERR_SCHEMA" };
    } catch (e) {
      return { ok: false as const, code: (e as { code: string }).code };
    }
  };
  const bytes = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
  const validHeader: fc.Arbitrary<SessionWireHeader> = fc
    .record({
      sid: bytes(16),
      from: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/),
      to: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/),
      seq: fc.oneof(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1, max: 2 ** 32 - 1 })),
      ts: fc.oneof(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 2 ** 32, max: Number.MAX_SAFE_INTEGER }), fc.constant(T0)),
      ttl: fc.integer({ min: 1, max: MAX_TTL_MS }),
      type: fc.stringMatching(/^[a-z][a-z0-9._-]{0,31}$/),
      pii: fc.array(fc.stringMatching(/^pii:[a-z0-9][a-z0-9_-]{0,31}$/), { maxLength: 32 }),
      cls: fc.option(fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,31}$/), { nil: undefined }),
      anon: fc.boolean(),
      re: fc.option(bytes(16), { nil: undefined }),
      ck: fc.option(fc.tuple(fc.nat(), bytes(96), fc.boolean()), { nil: undefined }),
    })
    .map((r) => {
      // Canonical field order.
      const h: SessionWireHeader = {
        v: 2,
        sid: r.sid,
        from: r.from,
        to: r.to,
        seq: r.seq,
        ts: r.ts,
        ttl: r.ttl,
        type: r.type,
        tags: r.cls === undefined ? { pii: r.pii, anon: r.anon } : { pii: r.pii, cls: r.cls, anon: r.anon },
      };
      if (r.re) h.re = r.re;
      if (r.ck) {
        const ck = new Uint8Array(CHECKPOINT_BYTES);
        new DataView(ck.buffer).setBigUint64(0, BigInt(r.ck[0] % r.seq));
        ck.set(r.ck[1], 8);
        h.ck = ck;
        if (r.ck[2]) h.fin = true;
      }
      return h;
    });
  const knownFor = (h: SessionWireHeader) => {
    // The constant part as the receiver caches it: the canonical encoding of v, sid, from, to.
    const full = encode({ v: 2, sid: h.sid, from: h.from, to: h.to });
    return { prefix: full.subarray(1), sid: Uint8Array.from(h.sid), from: h.from, to: h.to };
  };
  const assertImplies = (b: Uint8Array, known?: ReturnType<typeof knownFor>) => {
    const fast = decodeSessionHeaderFast(b, known);
    if (fast === undefined) return false;
    const ref = reference(b);
    expect(ref.ok).toBe(true);
    if (ref.ok) expect(fast).toStrictEqual(ref.value);
    return true;
  };

  it("valid headers: the encoder writes exactly msgpackr's bytes, and the fast path returns what the reference returns", () => {
    fc.assert(
      fc.property(validHeader, (h) => {
        const b = encodeSessionHeader(h);
        expect(b).toEqual(encode(h));
        expect(assertImplies(b)).toBe(true);
        expect(assertImplies(b, knownFor(h))).toBe(true);
        expect(decodeSessionHeader(b)).toStrictEqual(reference(b).ok ? (reference(b) as { value: unknown }).value : undefined);
      }),
      { numRuns: CI ? 3000 : 400 },
    );
  });

  it("near-valid objects (fields dropped, added, retyped, reordered): whenever the fast path accepts, so does the reference, equally", () => {
    const fieldNames = ["v", "sid", "from", "to", "seq", "ts", "ttl", "type", "tags", "re", "ck", "fin", "x"];
    const weird = fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      fc.uint8Array({ maxLength: 120 }),
      fc.double(),
      fc.integer({ min: -(2 ** 40), max: 2 ** 53 }),
      fc.constantFrom(0, 1, -1, 2 ** 32, 2 ** 32 - 1, 127, 128, 255, 256, 65535, 65536, true, false, null, "", "pii:x", "msg"),
      fc.record({ pii: fc.array(fc.string({ maxLength: 40 }), { maxLength: 34 }), anon: fc.boolean() }),
    );
    let accepted = 0;
    fc.assert(
      fc.property(
        validHeader,
        fc.array(fc.tuple(fc.constantFrom(...fieldNames), fc.option(weird, { nil: undefined }), fc.boolean()), { maxLength: 3 }),
        fc.boolean(),
        (h, edits, shuffleKeys) => {
          const o: Record<string, unknown> = { ...h, tags: { ...h.tags } };
          for (const [k, val, del] of edits) {
            if (del) delete o[k];
            else o[k] = val;
          }
          const entries = Object.entries(o);
          const ordered = Object.fromEntries(shuffleKeys ? shuffle(entries, entries.length * 31 + edits.length) : entries);
          const b = encode(ordered);
          if (assertImplies(b)) accepted++;
          assertImplies(b, knownFor(h));
        },
      ),
      { numRuns: CI ? 4000 : 1000 },
    );
    expect(accepted).toBeGreaterThan(0);
  });

  it("mutated header bytes: whenever the fast path accepts, so does the reference, equally", () => {
    fc.assert(
      fc.property(validHeader, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 3 }), (h, flips) => {
        const b = Uint8Array.from(encodeSessionHeader(h));
        for (const [pos, mask] of flips) b[pos % b.length]! ^= mask;
        assertImplies(b);
        assertImplies(b, knownFor(h));
      }),
      { numRuns: CI ? 4000 : 1000 },
    );
  });

  it("canonical but invalid values are left to the reference, which refuses them with its own code", () => {
    const h = fc.sample(validHeader, { numRuns: 1, seed: 42 })[0]!;
    for (const bad of [{ seq: 0 }, { ttl: 0 }, { type: "A" }, { from: "-x" }]) {
      const b = encode({ ...h, ...bad });
      expect(decodeSessionHeaderFast(b)).toBeUndefined();
      expect(codeOf(() => decodeSessionHeader(b))).toBe("ERR_SCHEMA");
    }
  });

  it("sender-produced headers always take the fast path (the optimisation is really used)", () => {
    const c = crew(nativeProvider, { checkpointEvery: 2 });
    for (const [i, f] of stream(c, 20, (i) => i).entries()) {
      if (i === 0) continue;
      const d = decodeSessionEnvelope(f);
      expect(decodeSessionHeaderFast(d.headerBytes)).toBeDefined();
    }
    const s = c.tx.seal(encodePayload(1), { tags: { pii: ["pii:email", "pii:ssn"], classification: "secret", anonymized: true }, replyTo: "ab".repeat(16) });
    expect(decodeSessionHeaderFast(decodeSessionEnvelope(s.bytes).headerBytes)).toBeDefined();
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("caller mistakes", () => {
  it("options and arguments are checked with ERR_INVALID_ARGUMENT", () => {
    const c = crew();
    const bad: [() => unknown, string][] = [
      [() => new SessionSender({ ...({} as SessionSenderOptions) }), "ERR_INVALID_ARGUMENT"],
      [() => new SessionSender({ identity: c.alice, trust: c.trustA, to: "not an id" }), "ERR_INVALID_ARGUMENT"],
      [() => new SessionSender({ identity: c.alice, trust: c.trustA, to: "bob", maxMessages: 1 }), "ERR_INVALID_ARGUMENT"],
      [() => new SessionSender({ identity: c.alice, trust: c.trustA, to: "bob", checkpointEvery: 0 }), "ERR_INVALID_ARGUMENT"],
      [() => new SessionReceiver({ identity: c.bob, trust: c.trustB, replayWindow: 100 }), "ERR_INVALID_ARGUMENT"],
      [() => new SessionReceiver({ identity: c.bob, trust: c.trustB, maxStreams: 0 }), "ERR_INVALID_ARGUMENT"],
      [() => c.tx.seal("x" as unknown as Uint8Array), "ERR_INVALID_ARGUMENT"],
      [() => c.tx.seal(encodePayload(1), { type: "sw.ckpt" }), "ERR_INVALID_ARGUMENT"],
      [() => c.tx.seal(encodePayload(1), { type: "Bad" }), "ERR_INVALID_ARGUMENT"],
      [() => c.tx.seal(encodePayload(1), { ttlMs: 0 }), "ERR_INVALID_ARGUMENT"],
      [() => c.tx.seal(encodePayload(1), { replyTo: "xyz" }), "ERR_INVALID_ARGUMENT"],
      [() => c.tx.seal(encodePayload(1), { tags: { pii: ["email"] } }), "ERR_INVALID_ARGUMENT"],
      [() => c.rx.decrypt({} as never), "ERR_INVALID_ARGUMENT"],
      [() => sessionEnvelopeId("xyz", 1), "ERR_INVALID_ARGUMENT"],
      [() => encodeSessionHeader({ v: 2 } as SessionWireHeader), "ERR_INVALID_ARGUMENT"],
    ];
    for (const [fn, code] of bad) expect(codeOf(fn)).toBe(code);
    expect(DEFAULT_CHECKPOINT_EVERY).toBe(256);
  });

  it("key rotation: a stream opened under the sender's previous key lives until the overlap ends (ERR_KEY_RETIRED)", () => {
    const c = crew(nativeProvider, { checkpointEvery: 2 });
    const frames = stream(c, 3);
    frames.forEach((f) => c.rx.open(f));
    const { identity: alice2, statement } = rotateIdentity(c.alice, c.clock.t);
    expect(c.trustB.applyStatement(statement, { overlapMs: 1000, now: c.clock.t }).applied).toBe(true);
    // The old stream (old key, its checkpoints signed by the old key) still works during the overlap…
    const more = stream(c, 2);
    more.forEach((f) => c.rx.open(f));
    expect(checkpoints(c.events).map((e) => e.lastSeq)).toEqual([1, 3]);
    // …and not after it.
    c.clock.t += 1001;
    expect(codeOf(() => c.rx.open(c.tx.seal(encodePayload("late")).bytes))).toBe("ERR_KEY_RETIRED");
    // The rotated identity opens a new stream.
    const tx2 = new SessionSender({ identity: alice2, trust: c.trustA, to: "bob", now: () => c.clock.t });
    const m = c.rx.open(tx2.seal(encodePayload("new key")).bytes);
    expect(m.mode).toBe("open");
    expect(m.header.senderKid).toBe(alice2.kid);
  });

  it("key rotation: when the recipient rotates, the sender re-opens to the new key; the receiver follows with rotateTo", () => {
    const c = crew();
    stream(c, 2).forEach((f) => c.rx.open(f));
    const oldStream = c.tx.streamId;
    const { identity: bob2, statement } = rotateIdentity(c.bob, c.clock.t);
    c.trustA.applyStatement(statement, { now: c.clock.t });
    c.rx.rotateTo(bob2, c.clock.t + 60_000);
    const s = c.tx.seal(encodePayload("to the new key"));
    expect(s.opened).toBe(true);
    expect(s.header.recipientKid).toBe(bob2.kid);
    expect(c.tx.streamId).not.toBe(oldStream);
    const m = c.rx.open(s.bytes);
    expect(dataOf(m)).toBe("to the new key");
    expect(m.header.recipientKid).toBe(bob2.kid);
    expect(dataOf(c.rx.open(c.tx.seal(encodePayload("next")).bytes))).toBe("next");
    // Closing the previous identity after the overlap does not close the receiver.
    c.bob.close();
    expect(c.rx.closed).toBe(false);
    bob2.close();
    expect(c.rx.closed).toBe(true);
  });
});

describe("openWithControl and holds()", () => {
  it("every stream opens with a signed, empty sw.open control envelope; payloads ride continuations", () => {
    const c = crew(nativeProvider, { openWithControl: true, maxMessages: 4 });
    const sealed = Array.from({ length: 6 }, (_, i) => c.tx.seal(encodePayload({ i })));
    // First seal: [opener] + continuation seq 1; the 4th message reaches maxMessages: [close, opener] + seq 1.
    expect(sealed.map((s) => [s.preceding.length, s.opened, s.header.seq])).toEqual([
      [1, true, 1],
      [0, false, 2],
      [0, false, 3],
      [2, true, 1],
      [0, false, 2],
      [0, false, 3],
    ]);
    const got: Data[] = [];
    const controls: string[] = [];
    for (const s of sealed) {
      for (const f of [...s.preceding, s.bytes]) {
        const m = c.rx.open(f);
        if (m.control) {
          controls.push(m.header.type);
          expect(m.plaintext.length).toBe(0);
        } else got.push(dataOf(m));
      }
    }
    expect(got).toEqual([0, 1, 2, 3, 4, 5].map((i) => ({ i })));
    expect(controls).toEqual(["sw.open", "sw.close", "sw.open"]);
    // The opener is an ordinary signed envelope (EnvelopeOpener verifies it) of type sw.open.
    expect(decodeEnvelope(sealed[0]!.preceding[0]!).header.type).toBe("sw.open");
    expect(codeOf(() => c.tx.seal(encodePayload(1), { type: "sw.open" }))).toBe("ERR_INVALID_ARGUMENT");
    expect(codeOf(() => new SessionSender({ identity: c.alice, trust: c.trustA, to: "bob", openWithControl: "yes" as unknown as boolean }))).toBe(
      "ERR_INVALID_ARGUMENT",
    );
  });

  it("a recipient that refuses the first message still holds the stream (the opener carried none)", () => {
    const c = crew(nativeProvider, { openWithControl: true });
    const a = c.tx.seal(encodePayload("refused by policy"));
    const b = c.tx.seal(encodePayload("accepted"));
    c.rx.open(a.preceding[0]!);
    // The recipient never decrypts `a` (say a policy refused it on its header); `b` still opens.
    expect(dataOf(c.rx.open(b.bytes))).toBe("accepted");
  });

  it("holds(id) is true exactly for ids sealed on the current stream", () => {
    const c = crew();
    const ids = Array.from({ length: 5 }, () => c.tx.seal(encodePayload(0)).header.id);
    for (const id of ids) expect(c.tx.holds(id)).toBe(true);
    const sid = c.tx.streamId!;
    expect(c.tx.holds(sessionEnvelopeId(sid, 5))).toBe(false); // not sealed yet
    expect(c.tx.holds(sessionEnvelopeId(sid, 2 ** 32 + 1))).toBe(false);
    expect(c.tx.holds((sid[0] === "0" ? "1" : "0") + sid.slice(1))).toBe(false); // another stream's id space
    for (const bad of ["", "zz", sid.toUpperCase(), 42 as unknown as string]) expect(c.tx.holds(bad)).toBe(false);
    c.tx.reset();
    for (const id of ids) expect(c.tx.holds(id)).toBe(false);
  });
});
