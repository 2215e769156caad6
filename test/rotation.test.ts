import { describe, expect, it } from "vitest";
import { until } from "./_agents.js";
import { createHub } from "../src/hub.js";
import {
  createAgent,
  createRevocation,
  EnvelopeOpener,
  encodePayload,
  generateIdentity,
  rotateIdentity,
  sealEnvelope,
  SealwireError,
  TrustStore,
  type Agent,
  type Identity,
  type PublicIdentity,
} from "../src/index.js";
import { memory } from "../transports/memory.js";

const codeOf = (fn: () => unknown) => {
  try {
    fn();
    return "no error";
  } catch (e) {
    return SealwireError.is(e) ? e.code : `non-coded: ${String(e)}`;
  }
};

/** One trust store per node, as on separate machines. */
function storeOf(pubs: PublicIdentity[], extra: Record<string, { roles?: string[]; clearances?: string[] }> = {}) {
  const t = new TrustStore();
  for (const p of pubs) t.add(p, extra[p.id] ?? {});
  return t;
}

describe("rotation statements in the trust store", () => {
  it("rotate: new kid trusted, old kid accepted during the overlap, then ERR_KEY_RETIRED", async () => {
    const alice = await generateIdentity("alice");
    const bob = await generateIdentity("bob");
    const t0 = 1_900_000_000_000;
    const bobTrust = storeOf([alice.publicIdentity, bob.publicIdentity]);
    const aliceTrust = storeOf([alice.publicIdentity, bob.publicIdentity]);
    const before = sealEnvelope(alice, aliceTrust.require("bob"), encodePayload("old key"), { now: t0, ttlMs: 3_600_000 }).bytes;
    const { identity: alice2, statement } = rotateIdentity(alice, t0);
    expect(alice2.kid).not.toBe(alice.kid);
    const r = bobTrust.applyStatement(statement, { overlapMs: 60_000, now: t0 });
    expect(r).toMatchObject({ kind: "rotation", applied: true, oldKid: alice.kid, newKid: alice2.kid });
    expect(bobTrust.applyStatement(statement, { now: t0 }).applied).toBe(false); // idempotent
    const after = sealEnvelope(alice2, aliceTrust.require("bob"), encodePayload("new key"), { now: t0 + 1, ttlMs: 3_600_000 }).bytes;
    const open = (bytes: Uint8Array, now: number) => codeOf(() => new EnvelopeOpener({ identity: bob, trust: bobTrust, now: () => now }).open(bytes));
    expect(open(after, t0 + 10)).toBe("no error");
    expect(open(before, t0 + 59_000)).toBe("no error");
    expect(open(before, t0 + 61_000)).toBe("ERR_KEY_RETIRED");
    expect(bobTrust.require("alice").identity.kid).toBe(alice2.kid);
    expect(bobTrust.findBySealKey(alice2.sealPublicKey)?.id).toBe("alice");
  });

  it("refuses forged, stale and out-of-date rotations without changing anything", async () => {
    const alice = await generateIdentity("alice");
    const mallory = await generateIdentity("mallory");
    const trust = storeOf([alice.publicIdentity, mallory.publicIdentity]);
    const now = Date.now();
    // Mallory "rotates" alice's key: signed with mallory's keys, not alice's.
    const fakeCurrent = (await import("../src/identity.js")).Identity.fromSecrets("alice", mallory.exportSecrets());
    const forged = rotateIdentity(fakeCurrent, now).statement;
    expect(codeOf(() => trust.applyStatement(forged))).toBe("ERR_STATEMENT_INVALID");
    const stale = rotateIdentity(alice, now - 25 * 3_600_000).statement;
    expect(codeOf(() => trust.applyStatement(stale))).toBe("ERR_STATEMENT_INVALID");
    const first = rotateIdentity(alice, now);
    trust.applyStatement(first.statement);
    const fromOldKeyAgain = rotateIdentity(alice, now).statement; // old key tries to rotate again after the fact
    expect(codeOf(() => trust.applyStatement(fromOldKeyAgain))).toBe("ERR_STATEMENT_INVALID");
    expect(trust.require("alice").identity.kid).toBe(first.identity.kid);
    for (let i = 0; i < first.statement.length; i += 7) {
      const bad = Uint8Array.from(first.statement);
      bad[i]! ^= 1;
      const fresh = storeOf([alice.publicIdentity]);
      expect(codeOf(() => fresh.applyStatement(bad))).toMatch(/ERR_STATEMENT_INVALID|no error/);
      if (codeOf(() => storeOf([alice.publicIdentity]).applyStatement(bad)) === "no error") {
        // the only flips that can pass are ones that change nothing signed (none exist): fail loudly
        expect.unreachable(`byte ${i} flip was accepted`);
      }
    }
  });

  it("revocation: by the key itself or a trusted admin; not by anyone else", async () => {
    const [alice, bob, admin, eve] = await Promise.all(["alice", "bob", "admin", "eve"].map((id) => generateIdentity(id)));
    const mk = () => storeOf([alice!, bob!, admin!, eve!].map((i) => i.publicIdentity), { admin: { roles: ["admin"] } });
    const t1 = mk();
    expect(t1.applyStatement(createRevocation(alice!, alice!.publicIdentity, "compromised"))).toMatchObject({ kind: "revocation", applied: true });
    expect(t1.require.bind(t1, "alice")).toThrow(expect.objectContaining({ code: "ERR_REVOKED_PEER" }));
    const t2 = mk();
    t2.applyStatement(createRevocation(admin!, bob!.publicIdentity, "left_the_team"));
    expect(t2.get("bob")!.revoked).toBe(true);
    const t3 = mk();
    expect(codeOf(() => t3.applyStatement(createRevocation(eve!, bob!.publicIdentity)))).toBe("ERR_STATEMENT_INVALID");
    expect(t3.get("bob")!.revoked).toBe(false);
  });
});

describe("rotation between running agents", () => {
  it("direct: peers learn the new key; envelopes to the old key open during the overlap and not after", async () => {
    const net = memory();
    const alice = await generateIdentity("alice");
    const bob = await generateIdentity("bob");
    const pubs = [alice.publicIdentity, bob.publicIdentity];
    const aliceTrust = storeOf(pubs);
    const bobTrust = storeOf(pubs);
    const errors: string[] = [];
    const a = await createAgent({ identity: alice, trust: aliceTrust, transport: net, onError: (e) => errors.push(e.code) });
    const b = await createAgent({ identity: bob, trust: bobTrust, transport: net });
    // bob seals to alice's current key now, delivers after alice rotated.
    const early = sealEnvelope(bob, bobTrust.require("alice"), encodePayload("sealed to the old key"));
    const { identity: alice2 } = await a.rotate({ overlapMs: 300 });
    await until(() => bobTrust.require("alice").identity.kid === alice2.kid);
    await a.send("bob", "after rotation");
    const first = await b.messages().next();
    expect(first.value!.data).toBe("after rotation");
    const raw = await net.dial("mem://alice");
    raw.send(early.bytes);
    const got = await a.messages().next();
    expect(got.value!.data).toBe("sealed to the old key");
    await new Promise((r) => setTimeout(r, 350));
    const late = sealEnvelope(bob, storeOf(pubs).require("alice"), encodePayload("too late"));
    raw.send(late.bytes);
    await until(() => errors.includes("ERR_KEY_RETIRED"));
    expect(alice.closed).toBe(true); // the old identity was wiped when its window ended
    await raw.close();
    await a.close();
    await b.close();
    alice2.close();
  });

  it("hub: a revocation mid-stream closes the revoked agent's session within 1 s and stops its envelopes everywhere", async () => {
    const net = memory();
    const ids: Record<string, Identity> = {};
    for (const id of ["hub", "alice", "bob", "admin"]) ids[id] = await generateIdentity(id);
    const pubs = Object.values(ids).map((i) => i.publicIdentity);
    const roles = { admin: { roles: ["admin"] } };
    const hubTrust = storeOf(pubs, roles);
    const hub = await createHub({ identity: ids["hub"]!, trust: hubTrust, transport: net, listen: "mem://hub" });
    const agents: Record<string, Agent> = {};
    const trusts: Record<string, TrustStore> = {};
    const errors: Record<string, string[]> = {};
    for (const id of ["alice", "bob", "admin"]) {
      trusts[id] = storeOf(pubs, roles);
      errors[id] = [];
      agents[id] = await createAgent({
        identity: ids[id]!,
        trust: trusts[id]!,
        transport: net,
        hub: "mem://hub",
        hubPeer: "hub",
        reconnect: { minMs: 10, maxMs: 50 },
        onError: (e) => errors[id]!.push(e.code),
      });
    }
    // alice streams to bob
    let sent = 0;
    let stop = false;
    const results: string[] = [];
    const stream = (async () => {
      while (!stop) {
        await agents["alice"]!.send("bob", { n: sent++ }, { waitForDelivery: true }).then(
          () => results.push("ok"),
          (e: SealwireError) => results.push(e.code),
        );
        await new Promise((r) => setImmediate(r)); // let timers run even if sends fail fast
      }
    })();
    let received = 0;
    void (async () => {
      for await (const _m of agents["bob"]!.messages()) received++;
    })();
    await until(() => received >= 20);
    const t0 = Date.now();
    await agents["admin"]!.announce(createRevocation(ids["admin"]!, ids["alice"]!.publicIdentity, "compromised"));
    await until(() => !hub.connected.includes("alice") && trusts["bob"]!.get("alice")!.revoked === true, 1000);
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeLessThan(1000);
    stop = true;
    await stream;
    const deliveredBefore = received;
    await new Promise((r) => setTimeout(r, 200));
    expect(received).toBe(deliveredBefore); // nothing from alice after the revocation
    expect(results.filter((r) => r === "ok").length).toBeLessThanOrEqual(received);
    expect(results.slice(-1)[0]).not.toBe("ok");
    // Anything else alice tries is refused (the hub no longer accepts her at all).
    await expect(agents["alice"]!.send("bob", "again", { waitForDelivery: true })).rejects.toBeInstanceOf(SealwireError);
    for (const a of Object.values(agents)) await a.close();
    await hub.close();
  });
});
