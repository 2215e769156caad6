/**
 * Rotating the local key under a live `noise()` transport (`useIdentity` in `transports/noise/channel.ts`): after
 * the call, dials and the listeners already open present the new static key (the peer's audit records the new
 * kid; an IK dial pinned to the new key gets in); channels opened under the old key keep working until the old
 * identity closes, then only they end (`ERR_KEY_RETIRED`) while listeners and new-key channels stay; a handshake
 * in flight at the call finishes with the old key; a later rotation works the same; hostile arguments (another
 * agent's identity, a closed identity, look-alikes) are refused; an identity the peers never learnt of fails
 * closed; inspection stays redacted; and two agents keep talking across `agent.rotate()`, which calls `useIdentity`.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-rotation.test.ts
 * ```
 */
import { inspect } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { toHex, utf8 } from "../src/_bytes.js";
import { createAgent } from "../src/agent.js";
import { generateIdentity, Identity } from "../src/identity.js";
import { rotateIdentity } from "../src/statements.js";
import { transportSymbol, type Connection, type Listener, type Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory } from "../transports/memory.js";
import { noise, type NoiseAuditEvent, type NoiseAuditSink, type NoiseInit, type NoiseTransport } from "../transports/noise/index.js";
import { FrameReader, eventually, expectCode, rejectsCode, sameBytes, throwsCode, within } from "./transport.compliance.js";

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/** An audit sink that keeps the events. */
class RecordingAudit implements NoiseAuditSink {
  readonly events: NoiseAuditEvent[] = [];
  async append(event: NoiseAuditEvent): Promise<unknown> {
    this.events.push(event);
    return undefined;
  }
  of(kind: NoiseAuditEvent["event"]): NoiseAuditEvent[] {
    return this.events.filter((e) => e.event === kind);
  }
  /** The last successful handshake record. */
  last(): NoiseAuditEvent | undefined {
    return this.of("handshake").at(-1);
  }
}

interface Peer {
  id: string;
  identity: Identity;
  trust: TrustStore;
  audit: RecordingAudit;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A fresh identity, closed after the test. */
async function identityOf(id: string): Promise<Identity> {
  const identity = await generateIdentity(id);
  cleanups.push(() => identity.close());
  return identity;
}

/** `rotateIdentity`, with the new identity closed after the test. */
function rotated(current: Identity): { identity: Identity; statement: Uint8Array } {
  const r = rotateIdentity(current);
  cleanups.push(() => r.identity.close());
  return r;
}

async function peer(id: string): Promise<Peer> {
  return { id, identity: await identityOf(id), trust: new TrustStore(), audit: new RecordingAudit() };
}

function over(p: Peer, inner: Transport, options: Partial<NoiseInit> = {}): NoiseTransport {
  return noise({ transport: inner, identity: p.identity, trust: p.trust, audit: p.audit, ...options });
}

/** Accepts from a listener's one iterator (kept, so a test can also see it end). */
function acceptor(l: Listener): { accept: () => Promise<Connection>; it: AsyncIterator<Connection> } {
  const it = l[Symbol.asyncIterator]();
  return {
    it,
    accept: async () => {
      const r = await within(it.next(), "an accepted connection");
      if (r.done === true) throw new Error("listener ended");
      return r.value;
    },
  };
}

/** Both ends of one channel, each with its one reader. */
interface Pair {
  client: Connection;
  server: Connection;
  cr: FrameReader;
  sr: FrameReader;
}

function pair(client: Connection, server: Connection): Pair {
  cleanups.push(() => {
    client.abort();
    server.abort();
  });
  return { client, server, cr: new FrameReader(client), sr: new FrameReader(server) };
}

/** One frame each way: the channel still carries traffic in both directions. */
async function talk(p: Pair, text: string): Promise<void> {
  p.client.send(utf8(`${text}>`));
  expect(sameBytes((await p.sr.next(`${text}: client to server`))!, utf8(`${text}>`))).toBe(true);
  p.server.send(utf8(`<${text}`));
  expect(sameBytes((await p.cr.next(`${text}: server to client`))!, utf8(`<${text}`))).toBe(true);
}

/**
 * Alice and Bob trust each other and both listen (mem://alice, mem://bob) over one memory network (or `inner`).
 * `aliceDials` and `bobDials` open one channel each way.
 */
async function world(inner: Transport = memory()) {
  const alice = await peer("alice");
  const bob = await peer("bob");
  alice.trust.add(bob.identity.publicIdentity);
  bob.trust.add(alice.identity.publicIdentity);
  const ta = over(alice, inner);
  const tb = over(bob, inner);
  const la = await ta.listen("mem://alice");
  const lb = await tb.listen("mem://bob");
  cleanups.push(async () => {
    await la.close();
    await lb.close();
  });
  const a = acceptor(la);
  const b = acceptor(lb);
  return {
    alice,
    bob,
    ta,
    tb,
    listenerA: a.it,
    acceptB: b.accept,
    aliceDials: async (options: { remotePeer?: string } = { remotePeer: "bob" }): Promise<Pair> => {
      const [c, s] = await Promise.all([within(ta.dial("mem://bob", options), "alice's dial"), b.accept()]);
      return pair(c, s);
    },
    bobDials: async (options: { remotePeer?: string } = { remotePeer: "alice" }): Promise<Pair> => {
      const [c, s] = await Promise.all([within(tb.dial("mem://alice", options), "bob's dial"), a.accept()]);
      return pair(c, s);
    },
    /** Rotates alice's key and has bob apply the statement (as an announcement would). */
    rotateAlice: (overlapMs = 60_000): Identity => {
      const { identity, statement } = rotated(alice.identity);
      bob.trust.applyStatement(statement, { overlapMs });
      return identity;
    },
  };
}

/**
 * An inner transport whose listeners hold each inbound wire until the gate opens: a dialer's Noise handshake has
 * started (its first message is on the wire) but stays unanswered.
 */
function gated(inner: Transport): Transport & { dialled: number; open(): void } {
  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  const t = {
    [transportSymbol]: true as const,
    kind: inner.kind,
    maxFrameBytes: inner.maxFrameBytes,
    dialled: 0,
    open: () => openGate(),
    async dial(addr: string, options?: Parameters<Transport["dial"]>[1]): Promise<Connection> {
      const c = await inner.dial(addr, options);
      t.dialled++;
      return c;
    },
    async listen(addr: string, options?: Parameters<Transport["listen"]>[1]): Promise<Listener> {
      const l = await inner.listen(addr, options);
      const it = l[Symbol.asyncIterator]();
      return {
        addr: l.addr,
        close: () => l.close(),
        [Symbol.asyncIterator]: () => ({
          next: async () => {
            const r = await it.next();
            await gate;
            return r;
          },
          return: async () => {
            await l.close();
            return { done: true as const, value: undefined };
          },
        }),
      };
    },
  };
  return t;
}

/** The secret bytes of `identity` as they could leak: hex and base64 forms of both secrets. */
function secretForms(identity: Identity): string[] {
  const { signSeed, sealSecret } = identity.exportSecrets();
  try {
    return [signSeed, sealSecret].flatMap((b) => [toHex(b), Buffer.from(b).toString("base64"), Buffer.from(b).toString("base64url")]);
  } finally {
    signSeed.fill(0);
    sealSecret.fill(0);
  }
}

// ---------------------------------------------------------------------------------------------------------------

describe("noise(): useIdentity after a rotation of the local key", () => {
  it("new dials and the open listener use the new key; old-key channels work until the old identity closes, then only they end", async () => {
    const w = await world();
    const oldKid = w.alice.identity.kid;
    const out0 = await w.aliceDials(); // alice → bob, old key
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid, reason: "noise:IK:responder" });
    const in0 = await w.bobDials(); // bob → alice's listener, old key
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid, reason: "noise:IK:initiator" });

    const alice2 = w.rotateAlice();
    const alice2Twin = await identityOf("alice"); // an open identity of alice, for the very end
    expect(alice2.kid).not.toBe(oldKid);
    // Before the switch alice still answers with the old key, so bob (who now pins the new one) cannot get in:
    // what useIdentity fixes. And alice's own dials still show the old kid.
    await rejectsCode(w.tb.dial("mem://alice", { remotePeer: "alice" }), "ERR_NOISE_HANDSHAKE");
    await w.aliceDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid });

    w.ta.useIdentity(alice2);
    // Dials (IK and XX) present the new static key: bob verifies it as alice's current one.
    const out1 = await w.aliceDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid, reason: "noise:IK:responder" });
    expect(out1.server.remotePeer).toBe("alice");
    const out1x = await w.aliceDials({});
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid, reason: "noise:XX:responder" });
    // The listener opened before the switch answers with the new key too (IK pinned to it gets in, and XX).
    const in1 = await w.bobDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid, reason: "noise:IK:initiator" });
    expect([in1.client.remotePeer, in1.server.remotePeer]).toEqual(["alice", "bob"]);
    const in1x = await w.bobDials({});
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid, reason: "noise:XX:initiator" });
    // The old-key channels still carry traffic both ways.
    for (const [name, p] of Object.entries({ out0, in0, out1, in1 })) await talk(p, name);

    // The old identity closes (the end of the overlap window): only the channels opened under it end.
    w.alice.identity.close();
    expectCode(await within(out0.client.closed, "alice's old outbound channel to end"), "ERR_KEY_RETIRED");
    expectCode(await within(in0.server.closed, "alice's old inbound channel to end"), "ERR_KEY_RETIRED");
    expectCode((await out0.sr.untilError()).error, "ERR_CONNECTION_ABORTED"); // bob's ends see the wire go
    expectCode((await in0.cr.untilError()).error, "ERR_CONNECTION_ABORTED");
    throwsCode(() => out0.client.send(utf8("late")), "ERR_CONNECTION_CLOSED");
    for (const [name, p] of Object.entries({ out1, out1x, in1, in1x })) {
      expect(p.client.isOpen && p.server.isOpen).toBe(true);
      await talk(p, `${name} after`);
    }
    // The listener was never closed: it still accepts, under the new key; dials still work.
    const in2 = await w.bobDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid });
    await talk(in2, "in2");
    const out2 = await w.aliceDials();
    await talk(out2, "out2");

    // Closing the new identity ends everything, as closing the only identity did before.
    alice2.close();
    for (const c of [out1.client, out1x.client, out2.client, in1.server, in1x.server, in2.server]) {
      expectCode(await within(c.closed, "alice's end of a channel to end"), "ERR_CLOSED");
    }
    expect(await within(w.listenerA.next(), "alice's listener to end")).toEqual({ done: true, value: undefined });
    await rejectsCode(w.ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_CLOSED");
    await rejectsCode(w.ta.listen("mem://alice-again"), "ERR_CLOSED");
    throwsCode(() => w.ta.useIdentity(rotated(w.bob.identity).identity), "ERR_INVALID_ARGUMENT");
    throwsCode(() => w.ta.useIdentity(new Proxy(alice2, {})), "ERR_INVALID_ARGUMENT");
    throwsCode(() => w.ta.useIdentity(rotated(alice2Twin).identity), "ERR_CLOSED"); // a dead transport stays dead
  });

  it("a handshake in flight at the call finishes with the old key and ends with it; one in flight when the old identity closes fails with ERR_KEY_RETIRED", async () => {
    // In flight at the call: completes under the old key, bound to it.
    {
      const net = memory();
      const g = gated(net);
      const alice = await peer("alice");
      const bob = await peer("bob");
      alice.trust.add(bob.identity.publicIdentity);
      bob.trust.add(alice.identity.publicIdentity);
      const ta = over(alice, g);
      const lb = await over(bob, g).listen("mem://bob");
      cleanups.push(() => lb.close());
      const { accept } = acceptor(lb);
      const oldKid = alice.identity.kid;
      const dialing = ta.dial("mem://bob", { remotePeer: "bob" });
      // alice's wire is up and her first message on it; bob's listener has not seen it yet.
      await eventually(() => g.dialled === 1, "alice's wire to be up");
      const { identity: alice2, statement } = rotated(alice.identity);
      bob.trust.applyStatement(statement, { overlapMs: 60_000 });
      ta.useIdentity(alice2);
      g.open();
      const early = pair(await within(dialing, "the in-flight dial"), await accept());
      expect(bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid });
      const late = pair(await within(ta.dial("mem://bob", { remotePeer: "bob" }), "a dial after the call"), await accept());
      expect(bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid });
      await talk(early, "early");
      alice.identity.close();
      expectCode(await within(early.client.closed, "the old-key channel to end"), "ERR_KEY_RETIRED");
      expect(late.client.isOpen).toBe(true);
      await talk(late, "late");
    }
    // In flight when the old identity closes: ended at once (its key is gone), not left to time out.
    {
      const net = memory();
      const g = gated(net);
      const alice = await peer("alice");
      const bob = await peer("bob");
      alice.trust.add(bob.identity.publicIdentity);
      bob.trust.add(alice.identity.publicIdentity);
      const ta = over(alice, g, { handshakeTimeoutMs: 10_000 });
      const lb = await over(bob, g).listen("mem://bob");
      cleanups.push(() => lb.close());
      const dialing = ta.dial("mem://bob", { remotePeer: "bob" });
      await eventually(() => g.dialled === 1, "alice's wire to be up");
      ta.useIdentity(rotated(alice.identity).identity);
      const t0 = performance.now();
      alice.identity.close();
      const err = await rejectsCode(dialing, "ERR_KEY_RETIRED");
      expect(performance.now() - t0).toBeLessThan(1000);
      expect(err.message).not.toMatch(/[0-9a-f]{64}/);
      g.open();
      await eventually(() => alice.audit.of("handshake_failed").some((e) => e.reason === "ERR_KEY_RETIRED"), "the failure to be audited");
      expect(bob.audit.of("handshake")).toEqual([]);
    }
  });

  it("a later rotation works the same: each previous identity ends only what was opened under it", async () => {
    const w = await world();
    const k1 = await w.aliceDials();
    const alice2 = w.rotateAlice();
    w.ta.useIdentity(alice2);
    const k2 = await w.aliceDials();
    const k2in = await w.bobDials();
    // Rotate again (bob learns alice3 from a statement signed by alice2).
    const { identity: alice3, statement } = rotated(alice2);
    w.bob.trust.applyStatement(statement, { overlapMs: 60_000 });
    w.ta.useIdentity(alice3);
    const k3 = await w.aliceDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice3.kid });
    const k3in = await w.bobDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice3.kid });
    // The middle identity first: only its channels end. (k1 stays open at alice's end; bob would now refuse its
    // traffic himself, since his trust store keeps only alice's previous key, alice2.)
    alice2.close();
    expectCode(await within(k2.client.closed, "k2"), "ERR_KEY_RETIRED");
    expectCode(await within(k2in.server.closed, "k2in"), "ERR_KEY_RETIRED");
    for (const [name, p] of Object.entries({ k3, k3in })) await talk(p, name);
    expect(k1.client.isOpen).toBe(true);
    // Then the first one.
    w.alice.identity.close();
    expectCode(await within(k1.client.closed, "k1"), "ERR_KEY_RETIRED");
    for (const [name, p] of Object.entries({ k3, k3in })) await talk(p, `${name} again`);
    await talk(await w.bobDials(), "the listener still accepts");
    alice3.close();
    expectCode(await within(k3.client.closed, "k3"), "ERR_CLOSED");
    expectCode(await within(k3in.server.closed, "k3in"), "ERR_CLOSED");
  });

  it("refuses another agent's identity, a closed one and look-alikes (ERR_INVALID_ARGUMENT) and keeps its key; the same identity again is a no-op", async () => {
    const w = await world();
    const open = await w.aliceDials();
    const oldKid = w.alice.identity.kid;
    const bobNext = rotated(w.bob.identity).identity;
    const closedAlice = await generateIdentity("alice");
    closedAlice.close();
    const { identity: alice2 } = rotated(w.alice.identity);
    const leaks = [...secretForms(w.alice.identity), ...secretForms(alice2), ...secretForms(w.bob.identity)];
    const hostile: unknown[] = [
      w.bob.identity, // another agent
      bobNext, // another agent's rotated key
      closedAlice, // the right agent id, closed
      undefined,
      null,
      "alice",
      {},
      w.alice.identity.publicIdentity, // public half only
      { id: "alice", kid: alice2.kid, closed: false, provider: alice2.provider, sealingKey: () => alice2.sealingKey() }, // duck-typed
      Object.create(Identity.prototype) as Identity, // passes instanceof, has nothing
      new Proxy(alice2, {}), // passes instanceof and the id check; its private state is unreachable
    ];
    for (const bad of hostile) {
      const err = throwsCode(() => w.ta.useIdentity(bad as Identity), "ERR_INVALID_ARGUMENT");
      for (const s of leaks) expect(err.message + String(err.stack)).not.toContain(s);
    }
    // Nothing changed: dials and the listener still use the old key, and the open channel still works.
    await w.aliceDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid });
    await w.bobDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid });
    await talk(open, "open");
    // The current identity again: nothing to do.
    w.ta.useIdentity(w.alice.identity);
    await w.aliceDials();
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: oldKid });
    await talk(open, "still open");
  });

  it("fails closed with an identity the peers never learnt of, and can switch back; a transport with nothing open just switches", async () => {
    const net = memory();
    const w = await world(net);
    const good = await w.aliceDials();
    // Same agent id, but no rotation statement vouches for it: the peer refuses it both ways.
    const impostor = await identityOf("alice");
    w.ta.useIdentity(impostor);
    await rejectsCode(w.ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_NOISE_HANDSHAKE");
    await eventually(() => w.bob.audit.of("handshake_failed").some((e) => e.reason === "ERR_UNTRUSTED_PEER"), "bob's refusal");
    await rejectsCode(w.tb.dial("mem://alice", { remotePeer: "alice" }), "ERR_NOISE_HANDSHAKE"); // pinned to the real key
    const bobXX = w.tb.dial("mem://alice");
    await rejectsCode(bobXX, "ERR_UNTRUSTED_PEER"); // XX: bob checks alice's key before revealing his own
    await talk(good, "the real key's channel is untouched");
    // Back to the real identity: the impostor's close then ends nothing.
    w.ta.useIdentity(w.alice.identity);
    impostor.close();
    await talk(good, "still");
    await talk(await w.bobDials(), "the listener is back on the real key");

    // With nothing open, useIdentity just switches; the old identity's close then ends nothing.
    const lone = over(w.alice, net);
    const alice2 = w.rotateAlice();
    w.ta.useIdentity(alice2);
    lone.useIdentity(alice2);
    w.alice.identity.close();
    await talk(await w.aliceDials(), "after the old identity closed");
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid });
    const [c, s] = await Promise.all([within(lone.dial("mem://bob", { remotePeer: "bob" }), "lone's dial"), w.acceptB()]);
    await talk(pair(c, s), "lone");
    expect(w.bob.audit.last()).toMatchObject({ peer: "alice", kid: alice2.kid });
    const l = await lone.listen("mem://lone");
    await l.close();
  });

  it("util.inspect and JSON of the transport and its channels stay redacted after a rotation", async () => {
    const w = await world();
    const out0 = await w.aliceDials();
    const alice2 = w.rotateAlice();
    w.ta.useIdentity(alice2);
    const out1 = await w.aliceDials();
    const in1 = await w.bobDials();
    out1.client.send(utf8("SECRET-MARKER-123"));
    await out1.sr.next();
    const leaks = [...secretForms(w.alice.identity), ...secretForms(alice2)];
    for (const o of [w.ta, out0.client, out1.client, in1.server]) {
      const s = inspect(o, { depth: 10, showHidden: true }) + JSON.stringify(o);
      expect(s).not.toMatch(/SECRET|83, 69, 67/);
      for (const leak of leaks) expect(s).not.toContain(leak);
    }
    expect(inspect(w.ta)).toBe("NoiseTransport(noise+memory, alice)");
    expect(Object.keys(w.ta).sort()).toEqual(["addressFor", "kind", "maxFrameBytes"]); // no identity, no keys
  });
});

describe("noise(): agents across agent.rotate()", () => {
  it("agent.rotate() switches its noise() transport (useIdentity): two agents keep talking before and after the old identity closes", async () => {
    const net = memory();
    const alice = await identityOf("alice");
    const bob = await identityOf("bob");
    // One trust store per node, as on separate machines.
    const store = (): TrustStore => {
      const t = new TrustStore();
      t.add(alice.publicIdentity);
      t.add(bob.publicIdentity);
      return t;
    };
    const aliceTrust = store();
    const bobTrust = store();
    const bobAudit = new RecordingAudit();
    const ta = noise({ transport: net, identity: alice, trust: aliceTrust });
    const a = await createAgent({ identity: alice, trust: aliceTrust, transport: ta });
    const b = await createAgent({ identity: bob, trust: bobTrust, transport: noise({ transport: net, identity: bob, trust: bobTrust, audit: bobAudit }) });
    cleanups.push(async () => {
      await Promise.all([a.close(), b.close()]);
    });
    void (async () => {
      for await (const msg of b.messages()) if (msg.type === "req") await msg.reply({ echo: msg.data });
    })();
    expect((await a.request("bob", "before", { timeoutMs: 5000 })).data).toEqual({ echo: "before" });

    const { identity: alice2 } = await a.rotate({ overlapMs: 300 });
    cleanups.push(() => alice2.close());
    // agent.rotate() called ta.useIdentity(alice2) itself: the transport's new handshakes use the new key.
    await eventually(() => bobTrust.get("alice")?.identity.kid === alice2.kid, "bob to apply the rotation");
    expect((await a.request("bob", "in the overlap", { timeoutMs: 5000 })).data).toEqual({ echo: "in the overlap" });
    await eventually(() => alice.closed, "the old identity to close at the end of the overlap", 3000);
    // After the old identity closed: alice re-dials with the new key, bob's replies reach her listener.
    expect((await a.request("bob", "after", { timeoutMs: 5000 })).data).toEqual({ echo: "after" });
    expect(bobAudit.of("handshake").filter((e) => e.peer === "alice" && e.kid === alice2.kid).length).toBeGreaterThanOrEqual(1);
    expect(bobAudit.of("handshake").some((e) => e.peer === "alice" && e.kid === alice2.kid && e.reason === "noise:IK:initiator")).toBe(true);
  });
});
