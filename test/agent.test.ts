import { describe, expect, it } from "vitest";
import { createAgent, generateIdentity, SealwireError, TrustStore, type Agent, type Identity } from "../src/index.js";
import { memory } from "../transports/memory.js";

async function crew(ids = ["alice", "bob"], init?: Parameters<typeof memory>[0]) {
  const net = memory(init);
  const trust = new TrustStore();
  const identities: Record<string, Identity> = {};
  for (const id of ids) {
    identities[id] = await generateIdentity(id);
    trust.add(identities[id]!.publicIdentity);
  }
  return { net, trust, identities };
}

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => "no error",
    (e) => (SealwireError.is(e) ? e.code : `non-coded: ${String(e)}`),
  );

describe("agent API over memory()", () => {
  it("delivers bytes, strings and JSON in order with authenticated metadata", async () => {
    const { net, trust, identities } = await crew();
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    const b = await createAgent({ identity: identities["bob"]!, trust, transport: net });
    const sent = [new Uint8Array([1, 2, 3]), "two", { three: [3] }];
    for (const d of sent) await a.send("bob", d, { tags: { classification: "internal" } });
    const got: unknown[] = [];
    for await (const m of b.messages()) {
      expect(m.from).toBe("alice");
      expect(m.to).toBe("bob");
      expect(m.tags.classification).toBe("internal");
      got.push(m.data);
      if (got.length === 3) break;
    }
    expect(got).toEqual(sent);
    await a.close();
    await b.close();
  });

  it("request/reply, and a request nobody answers times out with ERR_REQUEST_TIMEOUT", async () => {
    const { net, trust, identities } = await crew();
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    const b = await createAgent({ identity: identities["bob"]!, trust, transport: net });
    const t0 = Date.now();
    expect(await codeOf(a.request("bob", "anyone?", { timeoutMs: 100 }))).toBe("ERR_REQUEST_TIMEOUT");
    expect(Date.now() - t0).toBeLessThan(1000);
    void (async () => {
      for await (const m of b.messages()) if (m.type === "req") await m.reply({ echo: m.data });
    })();
    const r = await a.request("bob", "ping", { timeoutMs: 2000 });
    expect(r.data).toEqual({ echo: "ping" });
    expect(r.from).toBe("bob");
    const many = await Promise.all(Array.from({ length: 50 }, (_, i) => a.request("bob", i, { timeoutMs: 5000 })));
    expect(many.map((m) => (m.data as { echo: number }).echo)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    await a.close();
    await b.close();
  });

  it("refuses untrusted recipients, bad ids, closed agents; unreachable peers give ERR_NO_ROUTE", async () => {
    const { net, trust, identities } = await crew(["alice", "bob", "carol"]);
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    expect(await codeOf(a.send("dave", "x"))).toBe("ERR_UNKNOWN_PEER");
    expect(await codeOf(a.send("../etc", "x"))).toBe("ERR_INVALID_ARGUMENT");
    expect(await codeOf(a.send("carol", "x"))).toBe("ERR_NO_ROUTE"); // trusted, but not running
    expect(await codeOf(a.send("bob", (() => 1) as never))).toBe("ERR_INVALID_ARGUMENT");
    await a.close();
    expect(await codeOf(a.send("bob", "x"))).toBe("ERR_CLOSED");
  });

  it("an iterator abandoned while waiting does not swallow the next message (its wake-up is passed on)", async () => {
    const { net, trust, identities } = await crew();
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    const b = await createAgent({ identity: identities["bob"]!, trust, transport: net });
    const stale = b.messages();
    const pending = stale.next();
    await stale.return!();
    expect(await pending).toEqual({ done: true, value: undefined });
    await a.send("bob", "for the next reader");
    const r = await Promise.race([b.messages().next(), new Promise<"none">((res) => setTimeout(() => res("none"), 1000))]);
    expect(r === "none" ? r : r.value?.data).toBe("for the next reader");
    await a.close();
    await b.close();
  });

  it("close() fails pending requests with ERR_CLOSED and ends message iterators", async () => {
    const { net, trust, identities } = await crew();
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    const b = await createAgent({ identity: identities["bob"]!, trust, transport: net });
    const pending = codeOf(a.request("bob", "x", { timeoutMs: 10_000 }));
    const iter = a.messages();
    const next = iter.next();
    await new Promise((r) => setTimeout(r, 20));
    await a.close();
    expect(await pending).toBe("ERR_CLOSED");
    expect((await next).done).toBe(true);
    await b.close();
  });

  it("revoking a peer rejects pending requests to it", async () => {
    const { net, trust, identities } = await crew();
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    const b = await createAgent({ identity: identities["bob"]!, trust, transport: net });
    const pending = codeOf(a.request("bob", "x", { timeoutMs: 10_000 }));
    await new Promise((r) => setTimeout(r, 20));
    trust.revoke("bob");
    expect(await pending).toBe("ERR_REVOKED_PEER");
    await a.close();
    await b.close();
  });

  it("a slow consumer backpressures the sender instead of growing memory", async () => {
    const { net, trust, identities } = await crew(["alice", "bob"], { highWaterMarkBytes: 16 * 1024 });
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    const b = await createAgent({ identity: identities["bob"]!, trust, transport: net, inboxSize: 4 });
    const payload = new Uint8Array(1000);
    let accepted = 0;
    const sending = (async () => {
      for (let i = 0; i < 200; i++) {
        await a.send("bob", payload);
        accepted++;
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    // Inbox (4) + transport high-water mark (16 KiB ≈ 12 envelopes) + one in flight: far below 200.
    expect(accepted).toBeLessThan(40);
    let received = 0;
    for await (const _m of b.messages()) if (++received === 200) break;
    await sending;
    expect(accepted).toBe(200);
    await a.close();
    await b.close();
  });

  it("garbage frames are refused with codes, never delivered, and a peer that only sends garbage is cut off", async () => {
    const { net, trust, identities } = await crew();
    const errors: string[] = [];
    const b: Agent = await createAgent({ identity: identities["bob"]!, trust, transport: net, onError: (e) => errors.push(e.code) });
    const conn = await net.dial("mem://bob");
    for (let i = 0; i < 40; i++) conn.send(new Uint8Array([0x94, i, 0xc4]));
    await conn.closed;
    expect(errors.filter((c) => c === "ERR_DECODE").length).toBe(32);
    expect(conn.isOpen).toBe(false);
    const probe = b.messages();
    const r = await Promise.race([probe.next(), new Promise((res) => setTimeout(() => res("none"), 50))]);
    expect(r).toBe("none");
    await b.close();
  });

  it("validates options with coded errors", async () => {
    const { net, trust, identities } = await crew();
    await expect(createAgent({ identity: {} as Identity, trust, transport: net })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(createAgent({ identity: identities["alice"]!, trust: {} as TrustStore, transport: net })).rejects.toMatchObject({
      code: "ERR_INVALID_ARGUMENT",
    });
    await expect(createAgent({ identity: identities["alice"]!, trust, transport: {} as never })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    await expect(createAgent({ identity: identities["alice"]!, trust, transport: net })).rejects.toMatchObject({ code: "ERR_ADDRESS_IN_USE" });
    await a.close();
    identities["bob"]!.close();
    await expect(createAgent({ identity: identities["bob"]!, trust, transport: net })).rejects.toMatchObject({ code: "ERR_CLOSED" });
  });

  it("accepts an identity provider (a vault handing keys just in time); a failing provider fails closed", async () => {
    const { net, trust, identities } = await crew();
    let calls = 0;
    const a = await createAgent({ identity: async () => (calls++, identities["alice"]!), trust, transport: net });
    const b = await createAgent({ identity: () => identities["bob"]!, trust, transport: net });
    await a.send("bob", "via provider");
    expect((await b.messages().next()).value!.data).toBe("via provider");
    expect(calls).toBe(1);
    await a.close();
    await b.close();
    const failing = createAgent({ identity: async () => { throw new SealwireError("ERR_NO_PASSPHRASE", "vault locked"); }, trust, transport: net });
    await expect(failing).rejects.toMatchObject({ code: "ERR_NO_PASSPHRASE" });
    identities["alice"]!.close();
    await expect(createAgent({ identity: async () => identities["alice"]!, trust, transport: net })).rejects.toMatchObject({ code: "ERR_CLOSED" });
  });

  it("with a PersistentReplayCache, an envelope captured before the agent restarted is still refused", async () => {
    const { mkdtempSync, rmSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const { PersistentReplayCache } = await import("../src/replay-store.js");
    const { sealEnvelope, encodePayload } = await import("../src/envelope.js");
    const dir = mkdtempSync(join(tmpdir(), "agent-replay-"));
    try {
      const { net, trust, identities } = await crew();
      const captured = sealEnvelope(identities["alice"]!, trust.require("bob"), encodePayload("once")).bytes;
      const start = async () => {
        const errors: string[] = [];
        const replay = await PersistentReplayCache.open(join(dir, "bob.replay"));
        const b = await createAgent({ identity: identities["bob"]!, trust, transport: net, replay, onError: (e) => errors.push(e.code) });
        return { b, errors, replay };
      };
      const first = await start();
      const c1 = await net.dial("mem://bob");
      c1.send(captured);
      expect((await first.b.messages().next()).value!.data).toBe("once");
      await c1.close();
      await first.b.close();
      await first.replay.close();
      const second = await start();
      const c2 = await net.dial("mem://bob");
      c2.send(captured);
      const t0 = Date.now();
      while (!second.errors.includes("ERR_REPLAY") && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 5));
      expect(second.errors).toEqual(["ERR_REPLAY"]);
      await c2.close();
      await second.b.close();
      await second.replay.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("closing the identity closes the agent", async () => {
    const { net, trust, identities } = await crew();
    const a = await createAgent({ identity: identities["alice"]!, trust, transport: net });
    identities["alice"]!.close();
    expect(a.closed).toBe(true);
    expect(await codeOf(a.send("bob", "x"))).toBe("ERR_CLOSED");
  });
});
