import { describe, expect, it } from "vitest";
import { nextMessage, until as untilHolds } from "./_agents.js";
import { encode } from "../src/codec.js";
import { createAttestation } from "../src/attestation.js";
import { encodeData } from "../src/envelope.js";
import { decodeEnvelope, encodePayload, sealEnvelope } from "../src/index.js";
import { createAgent, generateIdentity, SealwireError, TrustStore, type Agent, type Identity, type ReceivedMessage } from "../src/index.js";
import { AuditLog, memorySink, verifyAuditLog } from "../src/audit.js";
import {
  allOf,
  allowAll,
  anyOf,
  contentScanner,
  deny,
  evaluate,
  piiClearance,
  rateLimit,
  type Policy,
  type PolicyContext,
} from "../src/policy.js";
import type { Connection, Transport } from "../src/transport.js";
import { transportSymbol } from "../src/transport.js";
import { memory } from "../transports/memory.js";

type Opts = Partial<Parameters<typeof createAgent>[0]>;

async function setup(spec: Record<string, { roles?: string[]; clearances?: string[] }>, transport: Transport = memory()) {
  const trust = new TrustStore();
  const ids: Record<string, Identity> = {};
  for (const [id, o] of Object.entries(spec)) {
    ids[id] = await generateIdentity(id);
    trust.add(ids[id]!.publicIdentity, o);
  }
  const agents: Agent[] = [];
  const errors: Record<string, SealwireError[]> = {};
  const start = async (id: string, opts: Opts = {}) => {
    errors[id] = [];
    const a = await createAgent({ identity: ids[id]!, trust, transport, onError: (e) => errors[id]!.push(e), ...opts });
    agents.push(a);
    return a;
  };
  const close = () => Promise.all(agents.map((a) => a.close()));
  return { trust, ids, start, errors, close, transport };
}

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => "no error",
    (e) => (SealwireError.is(e) ? `${e.code}${e.reason ? `:${e.reason}` : ""}` : `non-coded: ${String(e)}`),
  );

const next = (agent: Agent, timeoutMs = 300) => nextMessage(agent, timeoutMs);

const until = (cond: () => boolean, timeoutMs = 2000) => untilHolds(cond, timeoutMs);

describe("PII clearance", () => {
  it("allowed with clearance; denied at send without it (ERR_POLICY_DENIED, reason, never the data)", async () => {
    const s = await setup({ alice: {}, bob: { clearances: ["pii:email"] }, carol: {} });
    const a = await s.start("alice");
    const b = await s.start("bob");
    await s.start("carol");
    await a.send("bob", { email: "ana@example.org" }, { tags: { pii: ["pii:email"] } });
    expect(((await next(b)) as ReceivedMessage).data).toEqual({ email: "ana@example.org" });
    const err = await a.send("carol", { email: "ana@example.org" }, { tags: { pii: ["pii:email"] } }).catch((e) => e);
    expect(err.code).toBe("ERR_POLICY_DENIED");
    expect(err.reason).toBe("pii_not_cleared");
    expect(String(err.message) + String(err.stack)).not.toContain("ana@example.org");
    await s.close();
  });

  it("a sender that skips its own policy is stopped by the recipient BEFORE decryption, and told", async () => {
    const s = await setup({ mallory: {}, carol: {} });
    const phases: string[] = [];
    const spy: Policy = (ctx) => {
      phases.push(`${ctx.stage}/${ctx.phase}/${ctx.data === undefined ? "no-data" : "data"}`);
      return piiClearance()(ctx);
    };
    const m = await s.start("mallory", { policy: allowAll });
    const c = await s.start("carol", { policy: spy });
    const pending = codeOf(m.request("carol", { email: "ana@example.org" }, { tags: { pii: ["pii:email"] }, timeoutMs: 3000 }));
    expect(await pending).toBe("ERR_POLICY_DENIED:pii_not_cleared"); // the sender learns, through the signed notice
    expect(phases).toEqual(["deliver/header/no-data"]); // denied before decryption: no content phase ran
    expect(s.errors["carol"]!.map((e) => `${e.code}:${e.reason}`)).toEqual(["ERR_POLICY_DENIED:pii_not_cleared"]);
    expect(await next(c, 100)).toBe("none");
    await s.close();
  });

  it("anonymized data reaches an uncleared agent only with a valid attestation from a trusted anonymizer", async () => {
    const s = await setup({
      researcher: {},
      anon: { roles: ["anonymizer"], clearances: ["pii:email"] },
      fake: { clearances: ["pii:email"] }, // not an anonymizer
      writer: {},
    });
    const researcher = await s.start("researcher");
    const anon = await s.start("anon");
    const fake = await s.start("fake");
    const writer = await s.start("writer");
    await researcher.send("anon", { note: "reach ana@example.org" }, { tags: { pii: ["pii:email"] } });
    const input = (await next(anon)) as ReceivedMessage;
    expect(input.digest).toMatch(/^[0-9a-f]{64}$/);
    const masked = { note: "reach [email]" };

    // 1. valid attestation: delivered, with the attestation visible to the writer
    await anon.send("writer", masked, { tags: { pii: ["pii:email"], anonymized: true }, attestation: { input, policy: "mask-emails-v1" } });
    const got = (await next(writer)) as ReceivedMessage;
    expect(got.data).toEqual(masked);
    expect(got.attestation).toMatchObject({ anonymizer: "anon", policy: "mask-emails-v1", inputId: input.id, inputDigest: input.digest });

    // 2. marked anonymized without attestation: denied at content phase
    await anon.send("writer", masked, { tags: { pii: ["pii:email"], anonymized: true } });
    expect(await next(writer, 200)).toBe("none");
    await until(() => s.errors["writer"]!.some((e) => e.reason === "attestation_missing"));

    // 3. attestation by an agent without the anonymizer role: refused
    await fake.send("writer", masked, { tags: { pii: ["pii:email"], anonymized: true }, attestation: { input, policy: "mask-emails-v1" } });
    expect(await next(writer, 200)).toBe("none");
    await until(() => s.errors["writer"]!.some((e) => e.code === "ERR_ATTESTATION_INVALID" && /role/.test(e.message)));

    // 4. without the anonymized mark, the writer is simply not cleared: the anonymizer's own policy refuses
    expect(await codeOf(anon.send("writer", masked, { tags: { pii: ["pii:email"] }, attestation: { input, policy: "p" } }))).toBe(
      "ERR_POLICY_DENIED:pii_not_cleared",
    );
    await s.close();
  });

  it("a stale or replayed-onto-other-data attestation is refused", async () => {
    let clock = Date.now();
    const s = await setup({ researcher: {}, anon: { roles: ["anonymizer"], clearances: ["pii:email"] }, writer: {} });
    const researcher = await s.start("researcher");
    const anon = await s.start("anon", { now: () => clock });
    const writer = await s.start("writer");
    await researcher.send("anon", { note: "x@example.org" }, { tags: { pii: ["pii:email"] } });
    const input = (await next(anon)) as ReceivedMessage;
    // Stale: signed 11 minutes in the past (the default maximum age is 10 minutes).
    clock = Date.now() - 11 * 60_000;
    await anon.send("writer", { note: "[email]" }, { tags: { pii: ["pii:email"], anonymized: true }, attestation: { input, policy: "p" }, ttlMs: 20 * 60_000 });
    clock = Date.now();
    expect(await next(writer, 200)).toBe("none");
    await until(() => s.errors["writer"]!.some((e) => e.code === "ERR_ATTESTATION_INVALID" && /stale/.test(e.message)));

    // A valid attestation for one output, carried with other data (a dishonest anonymizer): refused.
    const att = createAttestation(s.ids["anon"]!, input, encodeData({ note: "[email]" }), "p");
    const sealed = sealEnvelope(s.ids["anon"]!, s.trust.require("writer"), encodePayload({ note: "x@example.org" }, att), {
      tags: { pii: ["pii:email"], anonymized: true },
    });
    const conn = await s.transport.dial("mem://writer");
    conn.send(sealed.bytes);
    expect(await next(writer, 200)).toBe("none");
    await until(() => s.errors["writer"]!.some((e) => e.code === "ERR_ATTESTATION_INVALID" && /output/.test(e.message)));
    await conn.close();
    await s.close();
  });
});

describe("relay tampering with tags", () => {
  it("stripping or editing tags on the path is refused (signature) and never delivered", async () => {
    const inner = memory();
    const rewrite = (frame: Uint8Array): Uint8Array => {
      const d = decodeEnvelope(frame);
      const header = encode({ ...d.wire, tags: { pii: [], anon: false } });
      return encode([1, header, d.ciphertext, d.signature]);
    };
    const evil: Transport = {
      [transportSymbol]: true,
      kind: "memory",
      maxFrameBytes: inner.maxFrameBytes,
      listen: (a, o) => inner.listen(a, o),
      addressFor: (id) => inner.addressFor!(id),
      dial: async (a, o) => {
        const c = await inner.dial(a, o);
        return new Proxy(c, {
          get(t, k) {
            if (k === "send") return (f: Uint8Array) => t.send(rewrite(f));
            const v = Reflect.get(t, k, t);
            return typeof v === "function" ? v.bind(t) : v;
          },
        }) as Connection;
      },
    };
    const s = await setup({ alice: {}, bob: { clearances: ["pii:email"] } }, evil);
    const a = await s.start("alice");
    const b = await s.start("bob");
    await a.send("bob", { email: "ana@example.org" }, { tags: { pii: ["pii:email"] } });
    await until(() => s.errors["bob"]!.length > 0);
    expect(s.errors["bob"]![0]!.code).toBe("ERR_BAD_SIGNATURE");
    expect(await next(b, 100)).toBe("none");
    await s.close();
  });
});

describe("content scanners in the agent", () => {
  it("untagged PII and secrets are denied at send; auto-tagging adds the tag and then clearance decides", async () => {
    const s = await setup({ alice: {}, bob: { clearances: ["pii:email"] }, carol: {} });
    const a = await s.start("alice");
    const b = await s.start("bob");
    await s.start("carol");
    expect(await codeOf(a.send("bob", "write to ana@example.org"))).toBe("ERR_POLICY_DENIED:untagged_pii");
    expect(await codeOf(a.send("bob", { config: { api_key: "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8" } }))).toBe("ERR_POLICY_DENIED:secret_detected");
    const tagger = await (async () => {
      await a.close();
      return s.start("alice", { policy: allOf(contentScanner({ untaggedPii: "tag" }), piiClearance()) });
    })();
    await tagger.send("bob", "write to ana@example.org");
    const m = (await next(b)) as ReceivedMessage;
    expect(m.tags.pii).toEqual(["pii:email"]);
    expect(await codeOf(tagger.send("carol", "write to ana@example.org"))).toBe("ERR_POLICY_DENIED:pii_not_cleared");
    await s.close();
  });

  it("the recipient scans too: untagged PII from a careless sender is not delivered", async () => {
    const s = await setup({ alice: {}, bob: { clearances: ["pii:email"] } });
    const a = await s.start("alice", { policy: allowAll });
    const b = await s.start("bob");
    await a.send("bob", "mail ana@example.org");
    expect(await next(b, 200)).toBe("none");
    await until(() => s.errors["bob"]!.some((e) => e.reason === "untagged_pii"));
    await s.close();
  });
});

describe("policy evaluation fails closed", () => {
  const ctx = { stage: "send", phase: "content", header: {}, size: 1, now: 0 } as unknown as PolicyContext;
  it("a throwing, slow, async-rejecting or garbage-returning policy denies", async () => {
    expect(await evaluate(() => { throw new Error("boom"); }, ctx)).toEqual({ allow: false, reason: "policy_error" });
    expect(await evaluate(() => Promise.reject(new Error("x")), ctx)).toEqual({ allow: false, reason: "policy_error" });
    expect(await evaluate(() => ({ yes: true }) as never, ctx)).toEqual({ allow: false, reason: "policy_error" });
    expect(await evaluate(() => undefined as never, ctx)).toEqual({ allow: false, reason: "policy_error" });
    const t0 = Date.now();
    expect(await evaluate(() => new Promise(() => {}), ctx, 50)).toEqual({ allow: false, reason: "policy_timeout" });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await evaluate(allOf(allowAll, () => deny("nope")), ctx)).toEqual({ allow: false, reason: "nope" });
    expect(await evaluate(anyOf(() => deny("a"), () => { throw new Error(); }), ctx)).toEqual({ allow: false, reason: "a" });
    expect((await evaluate(anyOf(() => deny("a"), allowAll), ctx)).allow).toBe(true);
    expect(deny("Has Spaces").allow === false && (deny("Has Spaces") as { reason: string }).reason).toBe("denied");
  });

  it("in an agent, a throwing or slow policy denies sending", async () => {
    const s = await setup({ alice: {}, bob: {} });
    await s.start("bob");
    const a = await s.start("alice", { policy: () => { throw new Error("policy bug"); } });
    expect(await codeOf(a.send("bob", "hi"))).toBe("ERR_POLICY_DENIED:policy_error");
    await a.close();
    const slow = await s.start("alice", { policy: () => new Promise(() => {}), policyTimeoutMs: 50 });
    expect(await codeOf(slow.send("bob", "hi"))).toBe("ERR_POLICY_DENIED:policy_timeout");
    await s.close();
  });
});

describe("rate limits", () => {
  it("per pair and per data class, per minute", async () => {
    let now = 1_000_000;
    const s = await setup({ alice: {}, bob: { clearances: ["pii:email"] }, carol: {} });
    await s.start("bob");
    await s.start("carol");
    const a = await s.start("alice", {
      policy: allOf(piiClearance(), rateLimit({ perPairPerMinute: 3, perClassPerMinute: { "pii:*": 2 } })),
      now: () => now,
    });
    const results: string[] = [];
    for (let i = 0; i < 4; i++) results.push(await codeOf(a.send("carol", `hello ${i}`)));
    expect(results).toEqual(["no error", "no error", "no error", "ERR_POLICY_DENIED:rate_limited"]);
    const pii: string[] = [];
    for (let i = 0; i < 3; i++) pii.push(await codeOf(a.send("bob", { n: i }, { tags: { pii: ["pii:email"] } })));
    expect(pii).toEqual(["no error", "no error", "ERR_POLICY_DENIED:rate_limited"]);
    now += 60_000;
    expect(await codeOf(a.send("carol", "after a minute"))).toBe("no error");
    await s.close();
  });
});

describe("audit trail from agents", () => {
  it("records sent, delivered and denied with tags and reason, a keyed payload digest, and never the payload", async () => {
    const s = await setup({ alice: {}, bob: { clearances: ["pii:email"] }, carol: {} });
    const canary = "CANARY-7f3a9e-ana@example.org";
    const sink = memorySink();
    const signer = { id: "alice", kid: s.ids["alice"]!.kid, publicKey: s.ids["alice"]!.signPublicKey, sign: (m: Uint8Array) => s.ids["alice"]!.sign(m) };
    const log = await AuditLog.open(sink, { signer, checkpointEvery: 3 });
    const a = await s.start("alice", { audit: log });
    const b = await s.start("bob", { audit: log });
    await s.start("carol", { audit: log });
    await a.send("bob", { text: canary }, { tags: { pii: ["pii:email"] } });
    await next(b);
    await codeOf(a.send("carol", { text: canary }, { tags: { pii: ["pii:email"] } }));
    await log.close();
    const text = sink.text();
    expect(text).not.toContain("CANARY");
    expect(text).not.toContain("ana@example.org");
    const records = text.trim().split("\n").map((l) => JSON.parse(l));
    const events = records.map((r) => `${r.event}${r.reason ? `:${r.reason}` : ""}`).filter((e) => !/checkpoint|segment/.test(e));
    expect(events).toEqual(["sent", "delivered", "denied:pii_not_cleared"]);
    const sent = records.find((r) => r.event === "sent");
    const delivered = records.find((r) => r.event === "delivered");
    expect(sent.payloadDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(delivered.payloadDigest).toBe(sent.payloadDigest); // the same bytes, seen at both ends
    expect(sent.tags).toEqual(["pii:email"]);
    const verdict = await verifyAuditLog(text.trim().split("\n"), { publicKey: s.ids["alice"]!.signPublicKey });
    expect(verdict.ok).toBe(true);
    await s.close();
  });
});
