import fc from "fast-check";
import { refusesHostileBytes } from "./_hostile.js";
import { describe, expect, it } from "vitest";
import { nativeProvider, nobleProvider, type CryptoProvider } from "../src/_crypto.js";
import { encode } from "../src/codec.js";
import {
  EnvelopeOpener,
  MAX_ENVELOPE_BYTES,
  ReplayCache,
  decodeEnvelope,
  decodePayload,
  encodePayload,
  sealEnvelope,
} from "../src/envelope.js";
import { Identity } from "../src/identity.js";
import { TrustStore } from "../src/trust.js";

const CI = process.env["CI"] === "true";

function crew(p: CryptoProvider = nativeProvider) {
  const alice = Identity.generate("alice", { provider: p });
  const bob = Identity.generate("bob", { provider: p });
  const mallory = Identity.generate("mallory", { provider: p });
  const trust = new TrustStore({ provider: p });
  trust.add(alice.publicIdentity);
  trust.add(bob.publicIdentity, { clearances: ["pii:email"] });
  trust.add(mallory.publicIdentity);
  return { alice, bob, mallory, trust };
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `non-coded: ${String(e)}`;
  }
  return "no error";
}

describe("envelope round trip", () => {
  it.each([
    ["native→native", nativeProvider, nativeProvider],
    ["noble→noble", nobleProvider, nobleProvider],
    ["native→noble", nativeProvider, nobleProvider],
    ["noble→native", nobleProvider, nativeProvider],
  ] as const)("%s: bytes, strings and JSON survive with header and tags intact", (_n, ps, pr) => {
    const alice = Identity.generate("alice", { provider: ps });
    const secrets = Identity.generate("bob", { provider: pr }).exportSecrets();
    const bobR = Identity.fromSecrets("bob", secrets, { provider: pr });
    const bobS = Identity.fromSecrets("bob", secrets, { provider: ps });
    const trustS = new TrustStore({ provider: ps });
    trustS.add(bobS.publicIdentity);
    const trustR = new TrustStore({ provider: pr });
    trustR.add(alice.publicIdentity);
    const opener = new EnvelopeOpener({ identity: bobR, trust: trustR });
    for (const data of [new Uint8Array([0, 1, 255]), "héllo ✓", { text: "hi", n: [1, 2.5, null, true], deep: { a: {} } }, "", new Uint8Array()]) {
      const env = sealEnvelope(alice, trustS.require("bob"), encodePayload(data), {
        tags: { pii: ["pii:email"], classification: "internal" },
        type: "req",
      });
      const opened = opener.open(env.bytes);
      expect(decodePayload(opened.plaintext).data).toEqual(data);
      expect(opened.header).toEqual(env.header);
      expect(opened.header.tags).toEqual({ pii: ["pii:email"], classification: "internal", anonymized: false });
      expect(opened.header.from).toBe("alice");
      expect(opened.sender.id).toBe("alice");
    }
  });

  it("does not mutate the payload or the envelope bytes it is given", () => {
    const { alice, bob, trust } = crew();
    const payload = encodePayload("abc");
    const copy = Uint8Array.from(payload);
    const env = sealEnvelope(alice, trust.require("bob"), payload);
    expect([...payload]).toEqual([...copy]);
    const envCopy = Uint8Array.from(env.bytes);
    new EnvelopeOpener({ identity: bob, trust }).open(env.bytes);
    expect([...env.bytes]).toEqual([...envCopy]);
  });

  it("JSON payloads refuse non-plain data without echoing it", () => {
    for (const bad of [new Date(), { a: new Map() }, { f: () => 1 }, { n: NaN }, { b: 1n } as unknown, new (class X {})()]) {
      try {
        encodePayload(bad as never);
        expect.unreachable();
      } catch (e) {
        expect((e as { code: string }).code).toBe("ERR_INVALID_ARGUMENT");
      }
    }
    const cyclic: Record<string, unknown> = { secret: "TOPSECRET-cyclic" };
    cyclic["self"] = cyclic;
    try {
      encodePayload(cyclic as never);
      expect.unreachable();
    } catch (e) {
      expect(String((e as Error).message)).not.toContain("TOPSECRET");
      expect((e as { code: string }).code).toBe("ERR_INVALID_ARGUMENT");
    }
  });
});

describe("open refuses, with the code for the first failed check", () => {
  it("every single-byte flip of an envelope is refused (and never decrypts)", () => {
    const { alice, bob, trust } = crew();
    const env = sealEnvelope(alice, trust.require("bob"), encodePayload({ text: "flip me" }), { tags: { pii: ["pii:email"] } });
    const allowed = new Set(["ERR_DECODE", "ERR_SCHEMA", "ERR_UNKNOWN_PEER", "ERR_BAD_SIGNATURE", "ERR_WRONG_RECIPIENT", "ERR_EXPIRED", "ERR_FROM_FUTURE", "ERR_DECRYPT"]);
    const seen = new Map<string, number>();
    for (let i = 0; i < env.bytes.length; i++) {
      for (const mask of [0x01, 0x80]) {
        const bad = Uint8Array.from(env.bytes);
        bad[i]! ^= mask;
        // A fresh opener each time, so a refused copy is never a replay of the original.
        const code = codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(bad));
        expect(allowed.has(code), `byte ${i} mask ${mask}: ${code}`).toBe(true);
        seen.set(code, (seen.get(code) ?? 0) + 1);
      }
    }
    // The signature covers header and ciphertext: most flips must be caught there.
    expect(seen.get("ERR_BAD_SIGNATURE") ?? 0).toBeGreaterThan(env.bytes.length);
  });

  it("a relay that strips or edits tags breaks the signature; re-signing by a trusted insider breaks decryption", () => {
    const { alice, bob, mallory, trust } = crew();
    const env = sealEnvelope(alice, trust.require("bob"), encodePayload("pii here"), { tags: { pii: ["pii:email"] } });
    const d = decodeEnvelope(env.bytes);
    const stripped = { ...d.wire, tags: { pii: [], anon: true } };
    const header = encode(stripped);
    const forged = encode([1, header, d.ciphertext, d.signature]);
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(forged))).toBe("ERR_BAD_SIGNATURE");
    // Mallory, a trusted crew member, re-signs the edited header as herself: the signature verifies, but the HPKE
    // auth-mode key schedule and the AEAD associated data both bind the original header and sender.
    const asMallory = encode({ ...stripped, from: "mallory", skid: mallory.kid });
    const prefix = new TextEncoder().encode("sealwire/v1/envelope:");
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, asMallory.length);
    const msg = new Uint8Array([...prefix, ...len, ...asMallory, ...d.ciphertext]);
    const resigned = encode([1, asMallory, d.ciphertext, mallory.sign(msg)]);
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(resigned))).toBe("ERR_DECRYPT");
  });

  it("wrong recipient (id or kid)", () => {
    const { alice, bob, mallory, trust } = crew();
    const env = sealEnvelope(alice, trust.require("bob"), encodePayload("x"));
    expect(codeOf(() => new EnvelopeOpener({ identity: mallory, trust }).open(env.bytes))).toBe("ERR_WRONG_RECIPIENT");
    const bob2 = Identity.generate("bob"); // same id, other keys
    expect(codeOf(() => new EnvelopeOpener({ identity: bob2, trust }).open(env.bytes))).toBe("ERR_WRONG_RECIPIENT");
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(env.bytes))).toBe("no error");
  });

  it("unknown and revoked senders", () => {
    const { alice, bob, trust } = crew();
    const eve = Identity.generate("eve");
    const evesTrust = new TrustStore();
    evesTrust.add(bob.publicIdentity);
    const fromEve = sealEnvelope(eve, evesTrust.require("bob"), encodePayload("x"));
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(fromEve.bytes))).toBe("ERR_UNKNOWN_PEER");
    const fromAlice = sealEnvelope(alice, trust.require("bob"), encodePayload("x"));
    trust.revoke("alice");
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(fromAlice.bytes))).toBe("ERR_REVOKED_PEER");
    expect(codeOf(() => sealEnvelope(bob, trust.get("alice")!, encodePayload("x")))).toBe("ERR_REVOKED_PEER");
  });

  it("replay, within and across openers sharing a cache", () => {
    const { alice, bob, trust } = crew();
    const env = sealEnvelope(alice, trust.require("bob"), encodePayload("x"));
    const replay = new ReplayCache();
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust, replay }).open(env.bytes))).toBe("no error");
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust, replay }).open(env.bytes))).toBe("ERR_REPLAY");
  });

  it("expired and from the future, with the skew window", () => {
    const { alice, bob, trust } = crew();
    const t0 = 1_800_000_000_000;
    const env = sealEnvelope(alice, trust.require("bob"), encodePayload("x"), { ttlMs: 1000, now: t0 });
    const at = (now: number) => codeOf(() => new EnvelopeOpener({ identity: bob, trust, clockSkewMs: 500, now: () => now }).open(env.bytes));
    expect(at(t0 + 1000 + 500)).toBe("no error");
    expect(at(t0 + 1000 + 501)).toBe("ERR_EXPIRED");
    expect(at(t0 - 500)).toBe("no error");
    expect(at(t0 - 501)).toBe("ERR_FROM_FUTURE");
  });

  it("oversize envelopes are refused before decoding", () => {
    const { alice, bob, trust } = crew();
    const env = sealEnvelope(alice, trust.require("bob"), new Uint8Array(2000));
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust, maxEnvelopeBytes: 1024 }).open(env.bytes))).toBe("ERR_ENVELOPE_TOO_LARGE");
    expect(codeOf(() => new EnvelopeOpener({ identity: bob, trust }).open(new Uint8Array(MAX_ENVELOPE_BYTES + 1)))).toBe(
      "ERR_ENVELOPE_TOO_LARGE",
    );
  });

  it("malformed structures: ext types, records, bad keys, wrong arity, schema violations", () => {
    const { bob, trust } = crew();
    const o = () => new EnvelopeOpener({ identity: bob, trust });
    const cases: [Uint8Array, string][] = [
      [new Uint8Array([0xd4, 0x01, 0x00]), "ERR_DECODE"], // fixext
      [new Uint8Array([0xc7, 0x01, 0x72, 0x00]), "ERR_DECODE"], // ext8 (msgpackr record)
      [new Uint8Array([0xc1]), "ERR_DECODE"],
      [new Uint8Array([0x94, 0x01, 0xc4, 0x00, 0xc4, 0x00]), "ERR_DECODE"], // truncated
      [new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff]), "ERR_DECODE"], // huge array count
      [new Uint8Array([0x81, 0x01, 0x01]), "ERR_DECODE"], // non-string key
      [encode([1, encode({ __proto__x: 1 }), new Uint8Array(), new Uint8Array()]), "ERR_SCHEMA"],
      [encode([1, new Uint8Array([0x81, 0xa9, ...new TextEncoder().encode("__proto__"), 0x01]), new Uint8Array(), new Uint8Array()]), "ERR_DECODE"],
      [encode([2, encode({}), new Uint8Array(), new Uint8Array()]), "ERR_DECODE"],
      [encode([1, encode({}), new Uint8Array()]), "ERR_DECODE"],
      [encode([1, "header", new Uint8Array(), new Uint8Array()]), "ERR_DECODE"],
      [encode([1, encode({ v: 1 }), new Uint8Array(), new Uint8Array()]), "ERR_SCHEMA"],
      [new Uint8Array([...encode([1, encode({}), new Uint8Array(), new Uint8Array()]), 0x00]), "ERR_DECODE"], // trailing byte
    ];
    for (const [bytes, code] of cases) expect(codeOf(() => o().open(bytes)), Buffer.from(bytes).toString("hex")).toBe(code);
  });

  it("property: random bytes and mutated envelopes never crash, hang or open", () => {
    const { alice, bob, trust } = crew();
    const samples = Array.from({ length: 8 }, (_, i) =>
      sealEnvelope(alice, trust.require("bob"), encodePayload({ i, pad: "x".repeat(i * 40) }), { tags: { pii: i % 2 ? ["pii:email"] : [] } }).bytes,
    );
    const opener = new EnvelopeOpener({ identity: bob, trust });
    const coded = (bytes: Uint8Array) => {
      const t = performance.now();
      const code = codeOf(() => opener.open(bytes));
      expect(performance.now() - t).toBeLessThan(250);
      return code;
    };
    const numRuns = CI ? 6000 : 2000;
    refusesHostileBytes((b) => opener.open(b), samples, { numRuns });
    // Structurally valid msgpack of arbitrary plain shapes.
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), fc.uint8Array({ maxLength: 64 }), (v, b) => {
        expect(coded(encode(v))).toMatch(/^ERR_/);
        expect(coded(encode([1, encode(v), b, b]))).toMatch(/^ERR_/);
      }),
      { numRuns: CI ? 2000 : 500 },
    );
  });

  it("the replay cache is bounded and fails closed when full of live ids", () => {
    const cache = new ReplayCache(3);
    expect(cache.checkAndAdd("a", 100, 0)).toBe(true);
    expect(cache.checkAndAdd("a", 100, 0)).toBe(false);
    cache.checkAndAdd("b", 100, 0);
    cache.checkAndAdd("c", 5, 0);
    expect(codeOf(() => cache.checkAndAdd("d", 100, 1))).toBe("ERR_QUEUE_FULL");
    expect(cache.checkAndAdd("d", 100, 6)).toBe(true); // "c" expired and was evicted
    expect(cache.size).toBe(3);
  });
});
