/**
 * Session mode through the agent API (issue #8): the same guarantees as signed mode — tampering, replay and
 * revocation refused the same way — plus stream recovery (a recipient that restarted or evicted the stream), the
 * checkpoint timer and its audit records, per-call mode, and the hub relaying continuations.
 */
import { describe, expect, it } from "vitest";
import { nextMessage, until, world } from "./_agents.js";
import { AuditLog, memorySink, verifyAuditLog, verifySessionCheckpointRecord, type AuditEvent, type AuditRecord } from "../src/audit.js";
import { decodeEnvelope, encodePayload, sealEnvelope } from "../src/envelope.js";
import type { HubOptions } from "../src/hub.js";
import { createAgent, generateIdentity, SealwireError, TrustStore, type Agent, type Identity, type ReceivedMessage } from "../src/index.js";
import { piiClearance, type PolicyContext } from "../src/policy.js";
import { decodeSessionEnvelope, isSessionFrame } from "../src/session.js";
import { createRevocation } from "../src/statements.js";
import { transportSymbol, type Connection, type Transport } from "../src/transport.js";
import { memory } from "../transports/memory.js";

type Mode = "signed" | "session";
const MODES: Mode[] = ["signed", "session"];

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => "no error",
    (e) => (SealwireError.is(e) ? e.code : `non-coded: ${String(e)}`),
  );

const next = nextMessage;

/** A capturing audit sink (AuditLog's validation is tested in audit.test.ts; here: which events, with what). */
function sink() {
  const events: AuditEvent[] = [];
  return { events, append: async (e: AuditEvent) => void events.push(e) };
}

/** A transport that lets a test see, change or copy every frame agents send. */
function tap(
  inner: Transport,
  onSend: (frame: Uint8Array, to: string) => Uint8Array | undefined = (f) => f,
): { transport: Transport; frames: { to: string; frame: Uint8Array }[]; conns: Connection[] } {
  const frames: { to: string; frame: Uint8Array }[] = [];
  const conns: Connection[] = [];
  const transport: Transport = {
    [transportSymbol]: true,
    kind: inner.kind,
    maxFrameBytes: inner.maxFrameBytes,
    listen: (a, o) => inner.listen(a, o),
    addressFor: (id) => inner.addressFor!(id),
    dial: async (a, o) => {
      const c = await inner.dial(a, o);
      conns.push(c);
      return new Proxy(c, {
        get(t, k) {
          if (k === "send")
            return (f: Uint8Array) => {
              frames.push({ to: a, frame: f.slice() });
              const out = onSend(f, a);
              return out === undefined ? true : t.send(out);
            };
          const v = Reflect.get(t, k, t);
          return typeof v === "function" ? v.bind(t) : v;
        },
      }) as Connection;
    },
  };
  return { transport, frames, conns };
}

/** Agents on one memory network; `wrap` may put a tap around it (the test then also dials `net` directly). */
async function crew(ids: string[] = ["alice", "bob"], wrap?: (net: Transport) => Transport, net = memory()) {
  const transport = wrap?.(net);
  const trust = new TrustStore();
  const identities: Record<string, Identity> = {};
  for (const id of ids) {
    identities[id] = await generateIdentity(id);
    trust.add(identities[id]!.publicIdentity, { clearances: ["pii:email"] });
  }
  const errors: Record<string, SealwireError[]> = {};
  const agents: Agent[] = [];
  const start = async (id: string, extra: Partial<Parameters<typeof createAgent>[0]> = {}) => {
    errors[id] ??= [];
    const a = await createAgent({ identity: identities[id]!, trust, transport: transport ?? net, onError: (e) => errors[id]!.push(e), ...extra });
    agents.push(a);
    return a;
  };
  return { net, trust, identities, errors, start, close: () => Promise.all(agents.map((a) => a.close())) };
}

describe("session mode through the agent", () => {
  it("delivers in order with authenticated metadata; request/reply; every message after the opener is a continuation", async () => {
    let t!: ReturnType<typeof tap>;
    const c = await crew(["alice", "bob"], (net) => (t = tap(net)).transport);
    const a = await c.start("alice", { mode: "session" });
    const b = await c.start("bob", { mode: "session" });
    const sent = [new Uint8Array([1, 2, 3]), "two", { three: [3] }, null];
    for (const d of sent) await a.send("bob", d, { tags: { classification: "internal", pii: ["pii:email"] } });
    const got: ReceivedMessage[] = [];
    for await (const m of b.messages()) {
      got.push(m);
      if (got.length === sent.length) break;
    }
    expect(got.map((m) => m.data)).toEqual(sent);
    for (const m of got) {
      expect([m.from, m.to, m.mode, m.tags.classification, m.tags.pii]).toEqual(["alice", "bob", "session", "internal", ["pii:email"]]);
      expect(m.id).toMatch(/^[0-9a-f]{32}$/);
    }
    expect(new Set(got.map((m) => m.id)).size).toBe(sent.length);
    // The wire: one signed control opener (sw.open), then continuations only.
    const toBob = t.frames.filter((f) => f.to === "mem://bob").map((f) => f.frame);
    expect(isSessionFrame(toBob[0]!)).toBe(false);
    expect(decodeEnvelope(toBob[0]!).header.type).toBe("sw.open");
    expect(toBob.slice(1, 1 + sent.length).every(isSessionFrame)).toBe(true);
    // Request/reply both ways in session mode, concurrently.
    void (async () => {
      for await (const m of b.messages()) if (m.type === "req") await m.reply({ echo: m.data });
    })();
    const many = await Promise.all(Array.from({ length: 40 }, (_, i) => a.request("bob", i, { timeoutMs: 5000 })));
    expect(many.map((m) => [(m.data as { echo: number }).echo, m.mode])).toEqual(Array.from({ length: 40 }, (_, i) => [i, "session"]));
    await c.close();
  });

  it("mode per call overrides the agent's, and bad modes are refused", async () => {
    const c = await crew();
    const a = await c.start("alice"); // default: signed
    const b = await c.start("bob", { mode: "session" });
    await a.send("bob", 1);
    await a.send("bob", 2, { mode: "session" });
    await b.send("alice", 3, { mode: "signed" });
    await b.send("alice", 4);
    expect([(await next(b)) as ReceivedMessage, (await next(b)) as ReceivedMessage].map((m) => [m.data, m.mode])).toEqual([
      [1, "signed"],
      [2, "session"],
    ]);
    expect([(await next(a)) as ReceivedMessage, (await next(a)) as ReceivedMessage].map((m) => [m.data, m.mode])).toEqual([
      [3, "signed"],
      [4, "session"],
    ]);
    expect(await codeOf(a.send("bob", 5, { mode: "fast" as Mode }))).toBe("ERR_INVALID_ARGUMENT");
    expect(await codeOf(c.start("carol" as string, { mode: "fast" as Mode }))).not.toBe("no error");
    const { identities, trust, net } = c;
    expect(await codeOf(createAgent({ identity: identities["alice"]!, trust, transport: net, listen: false, mode: "fast" as Mode }))).toBe("ERR_INVALID_ARGUMENT");
    expect(await codeOf(createAgent({ identity: identities["alice"]!, trust, transport: net, listen: false, session: { checkpointEvery: 0 } }))).toBe(
      "ERR_INVALID_ARGUMENT",
    );
    await c.close();
  });

  for (const mode of MODES) {
    it(`${mode}: every byte flip on the path is refused and nothing tampered is delivered`, async () => {
      let flip = -1;
      const wrap = (net: Transport) => tap(net, (f) => {
        // Flip one byte of the next frame once a test sets `flip` (the message; in session mode a continuation).
        if (flip < 0) return f;
        const g = f.slice();
        const at = flip % g.length;
        g[at] = g[at]! ^ 0x01;
        flip = -1;
        return g;
      }).transport;
      const c = await crew(["alice", "bob"], wrap);
      const a = await c.start("alice", { mode });
      const b = await c.start("bob");
      await a.send("bob", "warm-up");
      expect(((await next(b)) as ReceivedMessage).data).toBe("warm-up");
      const codes = new Set<string>();
      // Fewer than the 32 refusals in a row after which a connection is cut (tested in agent.test.ts).
      for (let i = 0; i < 24; i++) {
        flip = (i * 7919) % 4096;
        const before = c.errors["bob"]!.length;
        await a.send("bob", `tampered ${i}`);
        await until(() => c.errors["bob"]!.length > before);
        codes.add(c.errors["bob"]![before]!.code);
        // The flipped frame is gone; in session mode the stream may need re-opening (a refused continuation).
      }
      expect(await next(b, 100)).toBe("none");
      for (const code of codes) expect(["ERR_DECODE", "ERR_SCHEMA", "ERR_BAD_SIGNATURE", "ERR_DECRYPT", "ERR_UNKNOWN_STREAM", "ERR_WRONG_RECIPIENT", "ERR_UNKNOWN_PEER", "ERR_EXPIRED", "ERR_FROM_FUTURE", "ERR_PAYLOAD", "ERR_REPLAY"]).toContain(code);
      // The agent recovers: the next untouched message is delivered.
      await a.send("bob", "after");
      expect(((await next(b)) as ReceivedMessage).data).toBe("after");
      await c.close();
    });

    it(`${mode}: a replayed envelope is refused with ERR_REPLAY, on the same and on a new connection`, async () => {
      let t!: ReturnType<typeof tap>;
      const c = await crew(["alice", "bob"], (net) => (t = tap(net)).transport);
      const a = await c.start("alice", { mode });
      const b = await c.start("bob");
      await a.send("bob", "once");
      expect(((await next(b)) as ReceivedMessage).data).toBe("once");
      const frame = t.frames.filter((f) => f.to === "mem://bob").at(-1)!.frame;
      const conn = await c.net.dial("mem://bob");
      conn.send(frame);
      conn.send(frame);
      await until(() => c.errors["bob"]!.filter((e) => e.code === "ERR_REPLAY").length === 2);
      expect(await next(b, 100)).toBe("none");
      await conn.close();
      await c.close();
    });

    it(`${mode}: revoking the sender mid-stream refuses what follows with ERR_REVOKED_PEER`, async () => {
      const c = await crew(["alice", "bob"]);
      // Bob has his own trust store, so only he revokes alice.
      const bobTrust = new TrustStore();
      bobTrust.add(c.identities["alice"]!.publicIdentity);
      bobTrust.add(c.identities["bob"]!.publicIdentity);
      const a = await c.start("alice", { mode });
      const b = await c.start("bob", { trust: bobTrust });
      await a.send("bob", 1);
      expect(((await next(b)) as ReceivedMessage).data).toBe(1);
      // Alice's key is revoked at bob (self-revocation, as after a compromise); alice does not know yet.
      const alice = c.identities["alice"]!;
      expect(bobTrust.applyStatement(createRevocation(alice, { id: "alice", kid: alice.kid }, "compromised")).applied).toBe(true);
      await a.send("bob", 2).catch(() => {});
      await until(() => c.errors["bob"]!.some((e) => e.code === "ERR_REVOKED_PEER"));
      expect(await next(b, 100)).toBe("none");
      await c.close();
    });
  }

  it("a recipient that restarted (direct): the re-dialled connection re-opens the stream, nothing after the restart is lost", async () => {
    const c = await crew();
    const a = await c.start("alice", { mode: "session" });
    let b = await c.start("bob");
    for (let i = 0; i < 5; i++) await a.send("bob", i);
    for (let i = 0; i < 5; i++) expect(((await next(b)) as ReceivedMessage).data).toBe(i);
    await b.close();
    b = await c.start("bob");
    for (let i = 5; i < 10; i++) await a.send("bob", i);
    for (let i = 5; i < 10; i++) expect(((await next(b)) as ReceivedMessage).data).toBe(i);
    expect(c.errors["bob"]!.filter((e) => e.code !== "ERR_UNKNOWN_STREAM")).toEqual([]);
    await c.close();
  });

  it("a recipient that evicted the stream tells the sender (sw.refused): the refused message is reported, the next re-opens", async () => {
    const c = await crew(["alice", "bob", "carol"]);
    const a = await c.start("alice", { mode: "session" });
    const carol = await c.start("carol", { mode: "session" });
    const b = await c.start("bob", { session: { maxStreams: 1 } });
    await a.send("bob", "a1");
    expect(((await next(b)) as ReceivedMessage).data).toBe("a1");
    await carol.send("bob", "c1"); // evicts alice's stream at bob
    expect(((await next(b)) as ReceivedMessage).data).toBe("c1");
    const { id } = await a.send("bob", "a2");
    await until(() => c.errors["alice"]!.some((e) => e.code === "ERR_UNKNOWN_STREAM" && e.envelopeId === id));
    expect(c.errors["bob"]!.some((e) => e.code === "ERR_UNKNOWN_STREAM")).toBe(true);
    await a.send("bob", "a3");
    expect(((await next(b)) as ReceivedMessage).data).toBe("a3");
    // A request refused that way fails at once instead of timing out. Carol's stream was evicted by alice's
    // re-opening: her c2 is refused (and reported to her), c3 re-opens and evicts alice's again.
    await carol.send("bob", "c2");
    await until(() => c.errors["carol"]!.some((e) => e.code === "ERR_UNKNOWN_STREAM"));
    await carol.send("bob", "c3");
    expect(((await next(b)) as ReceivedMessage).data).toBe("c3");
    const t0 = Date.now();
    expect(await codeOf(a.request("bob", "q", { timeoutMs: 5000 }))).toBe("ERR_UNKNOWN_STREAM");
    expect(Date.now() - t0).toBeLessThan(2000);
    await c.close();
  });

  it("a forged sw.refused for an id not on the current stream changes nothing; a malformed one is refused", async () => {
    let t!: ReturnType<typeof tap>;
    const c = await crew(["alice", "bob", "mallory"], (net) => (t = tap(net)).transport);
    const a = await c.start("alice", { mode: "session" });
    const b = await c.start("bob");
    await a.send("bob", 1);
    expect(((await next(b)) as ReceivedMessage).data).toBe(1);
    // The API refuses sw.* types; mallory (trusted, but hostile) seals notices herself, as a modified client would.
    expect(await codeOf(b.send("alice", { id: "0".repeat(32), code: "ERR_UNKNOWN_STREAM" }, { type: "sw.refused" }))).toBe("ERR_INVALID_ARGUMENT");
    const mallory = c.identities["mallory"]!;
    const conn = await c.net.dial("mem://alice");
    const notice = (data: unknown) => sealEnvelope(mallory, c.trust.require("alice"), encodePayload(data as never), { type: "sw.refused" }).bytes;
    conn.send(notice({ id: "0".repeat(32), code: "ERR_UNKNOWN_STREAM" })); // not an id on alice's stream: reported, no reset
    conn.send(notice({ id: "0".repeat(32), code: "ERR_POLICY_DENIED" })); // not a stream refusal: malformed
    conn.send(notice({ id: "0".repeat(32), code: "ERR_UNKNOWN_STREAM", extra: 1 }));
    await until(() => c.errors["alice"]!.filter((e) => e.code === "ERR_PAYLOAD").length === 2);
    await a.send("bob", 2);
    expect(((await next(b)) as ReceivedMessage).data).toBe(2);
    const openers = t.frames.filter((f) => f.to === "mem://bob" && !isSessionFrame(f.frame));
    expect(openers).toHaveLength(1); // still the first stream
    await conn.close();
    await c.close();
  });

  it("a policy that denies one message (header phase) does not lose the stream; the sender is told", async () => {
    const c = await crew(["alice", "bob"]);
    c.trust.add((await generateIdentity("x")).publicIdentity);
    const a = await c.start("alice", { mode: "session", policy: () => ({ allow: true }) });
    const b = await c.start("bob", {
      policy: (ctx) => (ctx.phase === "header" && ctx.header.tags.classification === "secret" ? { allow: false, reason: "no_secrets" } : { allow: true }),
    });
    const { id } = await a.send("bob", "classified", { tags: { classification: "secret" } });
    await until(() => c.errors["alice"]!.some((e) => e.code === "ERR_POLICY_DENIED" && e.envelopeId === id));
    await a.send("bob", "fine");
    expect(((await next(b)) as ReceivedMessage).data).toBe("fine");
    // The first message of a stream may be denied too: the opener carried no message.
    await a.close();
    const a2 = await c.start("alice", { mode: "session", policy: () => ({ allow: true }) });
    await a2.send("bob", "classified", { tags: { classification: "secret" } });
    await a2.send("bob", "fine again");
    expect(((await next(b)) as ReceivedMessage).data).toBe("fine again");
    await c.close();
  });

  it("PII policy applies per message in a stream: tags stay authenticated and differ per envelope", async () => {
    const c = await crew(["alice", "bob", "carol"]);
    c.trust.add(c.identities["carol"]!.publicIdentity, { clearances: [] }); // carol has no clearance
    const a = await c.start("alice", { mode: "session", policy: () => ({ allow: true }) }); // a careless sender
    const carol = await c.start("carol", { policy: piiClearance() });
    await a.send("carol", "public");
    await a.send("carol", { email: "ana@example.org" }, { tags: { pii: ["pii:email"] } });
    await a.send("carol", "public again");
    expect(((await next(carol)) as ReceivedMessage).data).toBe("public");
    expect(((await next(carol)) as ReceivedMessage).data).toBe("public again");
    expect(await next(carol, 100)).toBe("none");
    expect(c.errors["carol"]!.some((e) => e.code === "ERR_POLICY_DENIED")).toBe(true);
    await c.close();
  });

  it("checkpoints: the timer signs idle streams, close() sends the final one; the recipient audits each, nothing left uncovered", async () => {
    const c = await crew();
    // Bob's records go to a real AuditLog too: they must pass its validation and verify, and each checkpoint must
    // be re-verifiable from the record and alice's public key alone.
    const bobId = c.identities["bob"]!;
    const mem = memorySink();
    const log = await AuditLog.open(mem, { signer: { id: bobId.id, kid: bobId.kid, publicKey: bobId.signPublicKey, sign: (m: Uint8Array) => bobId.sign(m) } });
    const capture = sink();
    const audB = { events: capture.events, append: async (e: AuditEvent) => (await capture.append(e), await log.append(e)) };
    const a = await c.start("alice", { mode: "session", session: { checkpointIntervalMs: 30, checkpointEvery: 4 } });
    const b = await c.start("bob", { audit: audB });
    for (let i = 0; i < 10; i++) await a.send("bob", i);
    for (let i = 0; i < 10; i++) await next(b);
    // checkpointEvery 4: two in-band checkpoints; then the timer covers the idle tail.
    await until(() => audB.events.filter((e) => e.event === "session_checkpoint").some((e) => (e as { lastSeq?: number }).lastSeq! >= 10));
    const opened = audB.events.filter((e) => e.event === "session_opened");
    expect(opened).toHaveLength(1);
    // Idle now: no more checkpoints (the last checkpoint envelope waits for the final one).
    await new Promise((r) => setTimeout(r, 150));
    const idle = audB.events.length;
    await new Promise((r) => setTimeout(r, 150));
    expect(audB.events.length).toBe(idle);
    await a.close();
    await until(() => audB.events.some((e) => e.event === "session_checkpoint" && (e as { final?: boolean }).final === true));
    await until(() => audB.events.some((e) => e.event === "session_closed"));
    const closed = audB.events.find((e) => e.event === "session_closed") as { reason?: string; count?: number };
    expect([closed.reason, closed.count]).toEqual(["final", 0]);
    const cks = audB.events.filter((e) => e.event === "session_checkpoint") as { firstSeq: number; lastSeq: number; signature: string; head: string }[];
    // Contiguous and complete: every envelope 0..last is covered exactly once.
    for (let i = 1; i < cks.length; i++) expect(cks[i]!.firstSeq).toBe(cks[i - 1]!.lastSeq + 1);
    expect(cks[0]!.firstSeq).toBe(0);
    for (const k of cks) expect(k.signature).toMatch(/^[A-Za-z0-9_-]{86}$/);
    await c.close();
    await log.close();
    const lines = mem.lines();
    expect((await verifyAuditLog(lines, { publicKey: bobId.signPublicKey })).ok).toBe(true);
    const recorded = lines.map((l) => JSON.parse(l) as AuditRecord).filter((r) => r.event === "session_checkpoint");
    expect(recorded).toHaveLength(cks.length);
    const alicePub = c.identities["alice"]!.signPublicKey;
    for (const r of recorded) expect(verifySessionCheckpointRecord(r, alicePub)).toBe(true);
    expect(verifySessionCheckpointRecord({ ...recorded[0]!, lastSeq: recorded[0]!.lastSeq! + 1 }, alicePub)).toBe(false);
    expect(verifySessionCheckpointRecord(recorded[0]!, bobId.signPublicKey)).toBe(false);
    // Session records carry metadata only.
    for (const e of audB.events.filter((e) => e.event.startsWith("session_"))) expect(Object.keys(e)).not.toContain("payload");
    await c.close();
  });

  it("concurrent sends with an audit sink that answers out of order: the opener always leads, nothing is lost", async () => {
    const c = await crew();
    const slow = { append: (_e: AuditEvent) => new Promise<void>((r) => setTimeout(r, Math.floor(Math.random() * 15))) };
    const a = await c.start("alice", { mode: "session", audit: slow });
    const b = await c.start("bob");
    const sent = Array.from({ length: 30 }, (_, i) => i);
    await Promise.all(sent.map((i) => a.send("bob", i)));
    const got: number[] = [];
    for await (const m of b.messages()) {
      got.push(m.data as number);
      if (got.length === sent.length) break;
    }
    expect([...got].sort((x, y) => x - y)).toEqual(sent);
    expect(c.errors["bob"]).toEqual([]);
    expect(c.errors["alice"]).toEqual([]);
    await c.close();
  });

  it("fails closed when the audit sink fails: send rejects and nothing is delivered; the stream carries on afterwards", async () => {
    const c = await crew();
    let fail = true;
    const sinkA = { append: async (_e: AuditEvent) => void (fail ? (() => { throw new SealwireError("ERR_AUDIT_IO", "disk full") })() : undefined) };
    const a = await c.start("alice", { mode: "session", audit: sinkA });
    const b = await c.start("bob");
    expect(await codeOf(a.send("bob", "unaudited"))).toBe("ERR_AUDIT_IO");
    expect(await next(b, 150)).toBe("none");
    fail = false;
    await a.send("bob", "audited");
    expect(((await next(b)) as ReceivedMessage).data).toBe("audited");
    await c.close();
  });

  it("an idle stream to a peer that went away: checkpoint ticks do not dial it or report errors", async () => {
    const c = await crew();
    const a = await c.start("alice", { mode: "session", session: { checkpointIntervalMs: 20 } });
    const b = await c.start("bob");
    await a.send("bob", "x");
    await next(b);
    await b.close();
    await new Promise((r) => setTimeout(r, 250));
    expect(c.errors["alice"]!.map((e) => e.code)).toEqual([]);
    await c.close();
  });

  it("rotate(): streams signed by the old key end; new ones open with the new key", async () => {
    const c = await crew();
    const a = await c.start("alice", { mode: "session" });
    const b = await c.start("bob");
    await a.send("bob", "before");
    expect(((await next(b)) as ReceivedMessage).data).toBe("before");
    await a.rotate({ overlapMs: 1000 });
    await a.send("bob", "after");
    expect(((await next(b)) as ReceivedMessage).data).toBe("after");
    expect(c.errors["bob"]).toEqual([]);
    await c.close();
  });

  it("close() wipes the streams: nothing prints key material; a closed agent refuses to send", async () => {
    const c = await crew();
    const a = await c.start("alice", { mode: "session" });
    const b = await c.start("bob");
    await a.send("bob", "x");
    await next(b);
    const { inspect } = await import("node:util");
    expect(inspect(a, { depth: 10, showHidden: true })).toBe("Agent(alice)");
    expect(JSON.stringify(a)).toBe('{"agent":"alice"}');
    await a.close();
    expect(await codeOf(a.send("bob", "y"))).toBe("ERR_CLOSED");
    await c.close();
  });
});

describe("session mode through the hub", () => {
  const hubWorld = (hubOpts: Partial<HubOptions> = {}) => world({ alice: {}, bob: {}, carol: {} }, hubOpts);

  it("relays continuations with delivery confirmation; request/reply; the hub refuses a continuation from the wrong connection", async () => {
    const w = await hubWorld();
    const a = await w.start("alice", { mode: "session" });
    const b = await w.start("bob", { mode: "session" });
    for (let i = 0; i < 20; i++) await a.send("bob", i, { waitForDelivery: true });
    for (let i = 0; i < 20; i++) {
      const m = (await next(b)) as ReceivedMessage;
      expect([m.data, m.mode]).toEqual([i, "session"]);
    }
    void (async () => {
      for await (const m of b.messages()) if (m.type === "req") await m.reply({ pong: m.data });
    })();
    expect((await a.request("bob", "ping", { timeoutMs: 3000 })).data).toEqual({ pong: "ping" });
    await w.close();
  });

  it("a recipient that restarted behind the hub: waitForDelivery re-sends once on a fresh stream; without it, the refusal is reported", async () => {
    const w = await hubWorld();
    const a = await w.start("alice", { mode: "session" });
    let b = await w.start("bob");
    await a.send("bob", "one", { waitForDelivery: true });
    expect(((await next(b)) as ReceivedMessage).data).toBe("one");
    await b.close();
    b = await w.start("bob");
    await until(() => w.hub.connected.includes("bob"));
    await a.send("bob", "two", { waitForDelivery: true });
    expect(((await next(b)) as ReceivedMessage).data).toBe("two");
    expect(w.errors["alice"]!.some((e) => e.code === "ERR_UNKNOWN_STREAM")).toBe(true);
    await b.close();
    b = await w.start("bob");
    await until(() => w.hub.connected.includes("bob"));
    const { id } = await a.send("bob", "three");
    await until(() => w.errors["alice"]!.some((e) => e.code === "ERR_UNKNOWN_STREAM" && e.envelopeId === id));
    await a.send("bob", "four");
    expect(((await next(b)) as ReceivedMessage).data).toBe("four");
    // The refusals did not count as garbage: bob's hub connection was never cut.
    expect(w.hub.connected).toContain("bob");
    await w.close();
  });

  it("the hub checks continuations by their header: wrong connection, replay, relay policy; it never sees a payload", async () => {
    const seen: PolicyContext[] = [];
    const w = await hubWorld({
      policy: (ctx) => {
        seen.push(ctx);
        return ctx.header.tags.pii.length > 0 ? { allow: false, reason: "no_pii_here" } : { allow: true };
      },
    });
    const ta = tap(w.net);
    const a = await w.start("alice", { mode: "session", transport: ta.transport, policy: () => ({ allow: true }) });
    const b = await w.start("bob");
    const tc = tap(w.net);
    await w.start("carol", { transport: tc.transport });
    await a.send("bob", "canary-7c1f", { waitForDelivery: true });
    expect(((await next(b)) as ReceivedMessage).data).toBe("canary-7c1f");
    const cont = ta.frames.map((f) => f.frame).filter(isSessionFrame).at(-1)!;
    expect(decodeSessionEnvelope(cont).header.type).toBe("msg");
    // Relay policy on the continuation's header (tags authenticated end to end; the hub sees no data).
    expect(await codeOf(a.send("bob", { email: "ana@example.org" }, { tags: { pii: ["pii:email"] }, waitForDelivery: true }))).toBe("ERR_POLICY_DENIED");
    const relayed = seen.filter((c) => c.header.type === "msg");
    expect(relayed.length).toBe(2);
    for (const c of relayed) expect(Object.keys(c)).not.toContain("data");
    // The stream survives a relay denial.
    await a.send("bob", "after", { waitForDelivery: true });
    expect(((await next(b)) as ReceivedMessage).data).toBe("after");
    // Replay of alice's continuation on her own connection: refused; on carol's connection: wrong sender.
    ta.conns[0]!.send(cont);
    await until(() => w.errors["alice"]!.some((e) => e.code === "ERR_REPLAY"));
    tc.conns[0]!.send(cont);
    await until(() => w.errors["carol"]!.some((e) => e.code === "ERR_WRONG_SENDER"));
    expect(await next(b, 100)).toBe("none");
    expect(JSON.stringify(seen.map((c) => c.header))).not.toContain("canary");
    await w.close();
  });
});
