import { describe, expect, it } from "vitest";
import { nextMessage, until, world } from "./_agents.js";
import { encodeControl } from "../src/_hub-protocol.js";
import { createHub } from "../src/hub.js";
import { allOf, piiClearance, rateLimit, type PolicyContext } from "../src/policy.js";
import { createAgent, generateIdentity, SealwireError, type ReceivedMessage } from "../src/index.js";

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => "no error",
    (e) => (SealwireError.is(e) ? `${e.code}${e.reason ? `:${e.reason}` : ""}` : `non-coded: ${String(e)}`),
  );

const next = nextMessage;

describe("hub", () => {
  it("relays between agents that only know the hub; request/reply; delivery confirmation", async () => {
    const w = await world();
    const a = await w.start("alice");
    const b = await w.start("bob");
    expect(w.hub.connected).toEqual(["alice", "bob"]);
    await a.send("bob", { hi: 1 }, { waitForDelivery: true });
    expect(((await next(b)) as ReceivedMessage).data).toEqual({ hi: 1 });
    void (async () => {
      for await (const m of b.messages()) if (m.type === "req") await m.reply({ pong: m.data });
    })();
    expect((await a.request("bob", "ping", { timeoutMs: 2000 })).data).toEqual({ pong: "ping" });
    await w.close();
  });

  it("cannot read bodies: the relay policy sees headers only", async () => {
    const seen: PolicyContext[] = [];
    const w = await world({ alice: {}, bob: {} }, { policy: (ctx) => (seen.push(ctx), { allow: true }) });
    const a = await w.start("alice");
    const b = await w.start("bob");
    await a.send("bob", "the body", { waitForDelivery: true });
    await next(b);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.stage).toBe("relay");
    expect(seen[0]!.data).toBeUndefined();
    expect(JSON.stringify(seen[0])).not.toContain("the body");
    await w.close();
  });

  it("refuses an envelope whose from is not the authenticated agent", async () => {
    const w = await world({ alice: {}, bob: {}, mallory: {} });
    await w.start("bob");
    const errs = w.hubErrors;
    // An envelope alice sealed to bob, captured elsewhere; mallory authenticates as herself and forwards it.
    const { sealEnvelope, encodePayload } = await import("../src/envelope.js");
    const { parseControl, authMessage } = await import("../src/_hub-protocol.js");
    const captured = [sealEnvelope(w.ids["alice"]!, w.trust.require("bob"), encodePayload("from alice")).bytes];
    const raw = await w.net.dial("mem://hub");
    raw.send(encodeControl({ kind: "sw-hello", agent: "mallory", nonce: new Uint8Array(32) }));
    const frames = raw[Symbol.asyncIterator]();
    const ch = await frames.next();
    const c = parseControl(ch.value!)!;
    if (c.kind !== "sw-challenge") throw new Error("no challenge");
    raw.send(encodeControl({ kind: "sw-auth", sig: w.ids["mallory"]!.sign(authMessage("agent", "mallory", "hub", new Uint8Array(32), c.nonce)) }));
    expect(parseControl((await frames.next()).value!)?.kind).toBe("sw-ready");
    raw.send(captured[0]!);
    const refusal = parseControl((await frames.next()).value!);
    expect(refusal).toMatchObject({ kind: "sw-refused", code: "ERR_WRONG_SENDER" });
    await until(() => errs.some((e) => e.code === "ERR_WRONG_SENDER"));
    await raw.close();
    await w.close();
  });

  it("authentication: an agent proving the wrong key, or never finishing, is refused", async () => {
    const w = await world({ alice: {} }, { authTimeoutMs: 100 });
    const raw = await w.net.dial("mem://hub");
    raw.send(encodeControl({ kind: "sw-hello", agent: "alice", nonce: new Uint8Array(32) }));
    const frames = raw[Symbol.asyncIterator]();
    await frames.next();
    raw.send(encodeControl({ kind: "sw-auth", sig: new Uint8Array(64) }));
    await raw.closed;
    await until(() => w.hubErrors.some((e) => e.code === "ERR_HUB_AUTH"));
    const silent = await w.net.dial("mem://hub");
    const t0 = Date.now();
    await silent.closed;
    expect(Date.now() - t0).toBeLessThan(1000);
    await until(() => w.hubErrors.some((e) => e.code === "ERR_TIMEOUT"));
    // An agent that expects another hub identity refuses this hub.
    const other = await generateIdentity("otherhub");
    w.trust.add(other.publicIdentity);
    expect(await codeOf(createAgent({ identity: w.ids["alice"]!, trust: w.trust, transport: w.net, hub: "mem://hub", hubPeer: "otherhub" }))).toMatch(
      /ERR_NO_ROUTE|ERR_HUB_AUTH/,
    );
    await w.close();
  });

  it("runs the relay policy on headers: PII to an uncleared agent is refused and the sender told", async () => {
    const w = await world({ alice: {}, bob: {} }, { policy: allOf(piiClearance(), rateLimit({ perPairPerMinute: 5 })) });
    const a = await w.start("alice", { policy: () => ({ allow: true }) }); // a careless sender
    await w.start("bob");
    expect(await codeOf(a.send("bob", "x", { tags: { pii: ["pii:email"] }, waitForDelivery: true }))).toBe("ERR_POLICY_DENIED:pii_not_cleared");
    const results: string[] = [];
    for (let i = 0; i < 6; i++) results.push(await codeOf(a.send("bob", `n${i}`, { waitForDelivery: true })));
    expect(results).toEqual([...Array(5).fill("no error"), "ERR_POLICY_DENIED:rate_limited"]);
    await w.close();
  });

  it("queues briefly for an offline agent and delivers on connect; overflow is refused, not dropped", async () => {
    const w = await world({ alice: {}, bob: {} }, { maxQueuePerRecipient: 3 });
    const a = await w.start("alice");
    const confirmations = [0, 1, 2].map((i) => a.send("bob", { i }, { waitForDelivery: true }));
    await until(() => w.hub.queued === 3);
    expect(await codeOf(a.send("bob", { i: 3 }, { waitForDelivery: true }))).toBe("ERR_QUEUE_FULL:recipient_offline");
    const b = await w.start("bob");
    await Promise.all(confirmations);
    const got: unknown[] = [];
    for await (const m of b.messages()) if (got.push(m.data) === 3) break;
    expect(got).toEqual([{ i: 0 }, { i: 1 }, { i: 2 }]);
    await w.close();
  });

  it("queued envelopes expire with a coded error to the sender", async () => {
    const w = await world({ alice: {}, bob: {} }, { queueTtlMs: 50 });
    const a = await w.start("alice");
    const t0 = Date.now();
    expect(await codeOf(a.send("bob", "late", { waitForDelivery: true }))).toBe("ERR_EXPIRED:expired_in_queue");
    expect(Date.now() - t0).toBeLessThan(3000);
    await w.close();
  });

  it("revoking an agent in the hub's trust store closes its connection and refuses what is queued for it", async () => {
    const w = await world({ alice: {}, bob: {}, carol: {} });
    await w.start("alice");
    const b = await w.start("bob");
    const c = await w.start("carol");
    const pending = codeOf(c.send("dave" as string, "x").catch((e) => Promise.reject(e)));
    expect(await pending).toBe("ERR_UNKNOWN_PEER");
    expect(w.hub.connected).toContain("bob");
    w.trust.revoke("bob");
    await until(() => !w.hub.connected.includes("bob"));
    void b;
    await w.close();
  });

  it("a hub that goes away: unconfirmed sends fail with ERR_DELIVERY_UNCONFIRMED, agents reconnect to the new hub", async () => {
    const w = await world({ alice: {}, bob: {} });
    const a = await w.start("alice");
    const b = await w.start("bob", { inboxSize: 1 });
    // bob does not read: the second message stays unacknowledged at bob (inbox full) → no confirmation yet.
    await a.send("bob", "one", { waitForDelivery: true });
    const stuck = codeOf(a.send("bob", "two", { waitForDelivery: true }));
    await new Promise((r) => setTimeout(r, 50));
    await w.hub.close();
    expect(await stuck).toBe("ERR_DELIVERY_UNCONFIRMED");
    const hub2 = await createHub({ identity: w.ids["hub"]!, trust: w.trust, transport: w.net, listen: "mem://hub" });
    await until(() => hub2.connected.length === 2, 5000);
    const got: unknown[] = [];
    for await (const m of b.messages()) if (got.push(m.data) >= 2) break;
    expect(got[0]).toBe("one");
    await a.send("bob", "three", { waitForDelivery: true });
    expect(((await next(b)) as ReceivedMessage).data).toBe("three");
    await Promise.all([a.close(), b.close()]);
    await hub2.close();
  });
});
