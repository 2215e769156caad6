/**
 * The Noise secure-channel transport (`noise()` in `transports/noise/channel.ts`): the shared Transport compliance
 * suite over `noise(memory())` with XX and with IK; pattern choice; trust checks both ways (untrusted dialer,
 * wrong or untrusted responder, unknown or revoked `remotePeer`); revocation and identity close mid-stream; key
 * rotation (the overlap window, channels bound to the key they were opened with, revoking the previous key alone);
 * tampered, replayed, dropped and reordered frames; pattern-byte and prologue downgrades; the wire format against
 * a hand-driven HandshakeState; chunking and the 65535-byte message limit; rekeying in step and failing closed
 * when out of step; bounded handshakes (stalled, garbage, half-finished, replayed); audit records; wiping;
 * backpressure; and two agents from `createAgent` talking over it.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-transport.test.ts
 * ```
 */
import { inspect } from "node:util";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { concatBytes, toHex, utf8 } from "../src/_bytes.js";
import { createAgent } from "../src/agent.js";
import { AuditLog, memorySink } from "../src/audit.js";
import { SealwireError } from "../src/errors.js";
import { generateIdentity, type Identity } from "../src/identity.js";
import type { Refusal } from "../src/refusal-counter.js";
import { createRevocation, rotateIdentity } from "../src/statements.js";
import { transportSymbol, type Connection, type Listener, type Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory, type MemoryInit } from "../transports/memory.js";
import {
  CipherState,
  HandshakeState,
  noise,
  noisePrologue,
  type NoiseAuditEvent,
  type NoiseAuditSink,
  type NoiseInit,
} from "../transports/noise/index.js";
import { handshakeSourceOf } from "../transports/noise/channel.js";
import {
  FrameReader,
  checkFrame,
  eventually,
  expectCode,
  makeFrame,
  rejectsCode,
  sameBytes,
  sendAll,
  throwsCode,
  transportCompliance,
  within,
} from "./transport.compliance.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const EMPTY = new Uint8Array(0);

// ---------------------------------------------------------------------------------------------------------------
// Compliance: the suite dials without remotePeer (XX); a thin wrapper adds remotePeer so the same suite runs IK.

const node = await generateIdentity("node");
const selfTrust = new TrustStore();
selfTrust.add(node.publicIdentity);

transportCompliance("noise(memory) XX", async () => {
  let n = 0;
  return {
    transport: noise({ transport: memory({ highWaterMarkBytes: 16 * KiB }), identity: node, trust: selfTrust }),
    listenAddr: () => `mem://noise-xx-${n++}`,
    cleanup: async () => {},
  };
});

/** The same transport, but every dial names `remotePeer` (so auto picks IK). */
function dialingAs(t: Transport, remotePeer: string): Transport {
  return {
    [transportSymbol]: true,
    kind: t.kind,
    maxFrameBytes: t.maxFrameBytes,
    listen: (addr, options) => t.listen(addr, options),
    dial: (addr, options) => t.dial(addr, { ...options, remotePeer }),
  };
}

transportCompliance("noise(memory) IK", async () => {
  let n = 0;
  const t = noise({ transport: memory({ highWaterMarkBytes: 16 * KiB }), identity: node, trust: selfTrust });
  return { transport: dialingAs(t, "node"), listenAddr: () => `mem://noise-ik-${n++}`, cleanup: async () => {} };
});

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/** An audit sink that keeps the events (and can be told to fail). */
class RecordingAudit implements NoiseAuditSink {
  readonly events: NoiseAuditEvent[] = [];
  fail = false;
  async append(event: NoiseAuditEvent): Promise<unknown> {
    if (this.fail) throw new SealwireError("ERR_AUDIT_IO", "test sink is down");
    this.events.push(event);
    return undefined;
  }
  of(kind: NoiseAuditEvent["event"]): NoiseAuditEvent[] {
    return this.events.filter((e) => e.event === kind);
  }
}

interface Peer {
  id: string;
  identity: Identity;
  trust: TrustStore;
  audit: RecordingAudit;
}

async function peer(id: string): Promise<Peer> {
  return { id, identity: await generateIdentity(id), trust: new TrustStore(), audit: new RecordingAudit() };
}

/** `a` trusts `b` (and, with `mutual`, the other way round). */
function trusts(a: Peer, b: Peer, mutual = true): void {
  a.trust.add(b.identity.publicIdentity);
  if (mutual) b.trust.add(a.identity.publicIdentity);
}

function over(p: Peer, inner: Transport, options: Partial<NoiseInit> = {}): Transport {
  return noise({ transport: inner, identity: p.identity, trust: p.trust, audit: p.audit, ...options });
}

/** A listener's one iterator, so tests can accept several times. */
function acceptor(l: Listener): (what?: string, ms?: number) => Promise<Connection> {
  const it = l[Symbol.asyncIterator]();
  return async (what = "an accepted connection", ms?: number) => {
    const r = await within(it.next(), what, ms);
    if (r.done === true) throw new Error("listener ended");
    return r.value;
  };
}

/** Resolves true if `p` settles within `ms`, false otherwise. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    p.then(
      () => true,
      () => true,
    ),
    new Promise<boolean>((res) => (timer = setTimeout(() => res(false), ms))),
  ]);
  clearTimeout(timer);
  return r;
}

type Hook = (index: number, frame: Uint8Array) => Uint8Array[];

interface TapLog {
  /** Frames the dialling side sent on the wire, in order (copies). */
  dialer: Uint8Array[];
  /** Frames the accepting side sent. */
  acceptor: Uint8Array[];
  dials: number;
}

/**
 * A man in the middle: wraps a transport, records every frame each side sends, and lets a hook rewrite, drop or
 * duplicate them. `kind` overrides the reported kind (to test the prologue binding).
 */
function tap(inner: Transport, opts: { kind?: string; dialer?: Hook; acceptor?: Hook } = {}): Transport & { log: TapLog } {
  const log: TapLog = { dialer: [], acceptor: [], dials: 0 };
  const wrap = (c: Connection, side: "dialer" | "acceptor"): Connection => {
    const hook = opts[side];
    let i = 0;
    return {
      get remoteAddr() {
        return c.remoteAddr;
      },
      get remotePeer() {
        return c.remotePeer;
      },
      get maxFrameBytes() {
        return c.maxFrameBytes;
      },
      get isOpen() {
        return c.isOpen;
      },
      closed: c.closed,
      send(frame: Uint8Array): boolean {
        const copy = Uint8Array.from(frame);
        log[side].push(copy);
        const out = hook ? hook(i++, Uint8Array.from(frame)) : [frame];
        let ok = true;
        for (const f of out) ok = c.send(f);
        return ok;
      },
      drain: (o) => c.drain(o),
      close: (o) => c.close(o),
      abort: (e) => c.abort(e),
      [Symbol.asyncIterator]: () => c[Symbol.asyncIterator](),
    };
  };
  return {
    [transportSymbol]: true,
    kind: opts.kind ?? inner.kind,
    maxFrameBytes: inner.maxFrameBytes,
    log,
    async dial(addr, options) {
      log.dials++;
      return wrap(await inner.dial(addr, options), "dialer");
    },
    async listen(addr, options) {
      const l = await inner.listen(addr, options);
      return {
        addr: l.addr,
        close: () => l.close(),
        [Symbol.asyncIterator]() {
          const it = l[Symbol.asyncIterator]();
          return {
            next: async () => {
              const r = await it.next();
              return r.done === true ? r : { done: false, value: wrap(r.value, "acceptor") };
            },
            return: async () => {
              await l.close();
              return { done: true, value: undefined };
            },
          };
        },
      };
    },
  };
}

/** Alice and Bob trust each other; Bob listens at mem://bob over `inner` (default: a fresh memory network). */
async function aliceAndBob(
  opts: { inner?: Transport; alice?: Partial<NoiseInit>; bob?: Partial<NoiseInit>; net?: MemoryInit } = {},
) {
  const alice = await peer("alice");
  const bob = await peer("bob");
  trusts(alice, bob);
  const inner = opts.inner ?? memory(opts.net);
  const ta = over(alice, inner, opts.alice);
  const tb = over(bob, inner, opts.bob);
  const listener = await tb.listen("mem://bob");
  cleanups.push(() => listener.close());
  return { alice, bob, inner, ta, tb, listener, accept: acceptor(listener) };
}

/** Dials bob and accepts: both ends of one established channel. */
async function connected(
  env: Awaited<ReturnType<typeof aliceAndBob>>,
  options: { remotePeer?: string } = { remotePeer: "bob" },
): Promise<{ client: Connection; server: Connection }> {
  const [client, server] = await Promise.all([within(env.ta.dial("mem://bob", options), "dial"), env.accept()]);
  cleanups.push(async () => {
    client.abort();
    server.abort();
  });
  return { client, server };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const c of cleanups.splice(0).reverse()) await c();
});

// ---------------------------------------------------------------------------------------------------------------

describe("noise(): options", () => {
  it("validates options with ERR_INVALID_ARGUMENT (unknown keys, ranges, types) and names itself noise+<inner>", async () => {
    const p = await peer("opt");
    const base = { transport: memory(), identity: p.identity, trust: p.trust };
    const bad: unknown[] = [
      undefined,
      null,
      42,
      {},
      { ...base, transport: {} },
      { ...base, identity: { id: "x" } },
      { ...base, trust: {} },
      { ...base, pattern: "NN" },
      { ...base, maxFrameBytes: 0 },
      { ...base, maxFrameBytes: 1.5 },
      { ...base, maxFrameBytes: 2 * 1024 * MiB },
      { ...base, handshakeTimeoutMs: 0 },
      { ...base, handshakeTimeoutMs: "5000" },
      { ...base, maxHandshakes: 0 },
      { ...base, maxHandshakesPerSource: 0 },
      { ...base, maxHandshakesPerSource: 2.5 },
      { ...base, onRefusal: "audit" },
      { ...base, backlog: -1 },
      { ...base, rekeyAfterMessages: 0 },
      { ...base, rekeyAfterBytes: Number.NaN },
      { ...base, audit: { log: () => {} } },
      { ...base, rekeyAfterMessage: 10 }, // typo
      { ...base, transport: memory({ maxFrameBytes: 255 }) }, // cannot carry the handshake
    ];
    for (const init of bad) {
      const err = throwsCode(() => noise(init as never), "ERR_INVALID_ARGUMENT");
      expect(err.message).toMatch(/noise/);
    }
    const t = noise({ ...base, transport: memory({ maxFrameBytes: 256 }), maxFrameBytes: 5000, pattern: "XX" });
    expect(t.kind).toBe("noise+memory");
    expect(t.maxFrameBytes).toBe(5000);
    expect(t.addressFor?.("bob")).toBe("mem://bob");
    const closed = await generateIdentity("gone");
    closed.close();
    throwsCode(() => noise({ ...base, identity: closed }), "ERR_CLOSED");
  });

  it("noisePrologue binds the version, the inner kind and the pattern, length-prefixed", () => {
    expect(toHex(noisePrologue("memory", "XX"))).toBe(
      toHex(concatBytes(Uint8Array.of(0, 17), utf8("sealwire/noise/v1"), Uint8Array.of(0, 6), utf8("memory"), Uint8Array.of(0, 2), utf8("XX"))),
    );
    const all = ["memory", "ws", "wss", "memoryX", "memor"].flatMap((k) => (["XX", "IK"] as const).map((p) => toHex(noisePrologue(k, p))));
    expect(new Set(all).size).toBe(all.length);
  });
});

describe("noise(): patterns", () => {
  it("IK when the dialer names a trusted remotePeer, XX for first contact; both ends see the verified agent id", async () => {
    const wire = tap(memory());
    const env = await aliceAndBob({ inner: wire });
    const ik = await connected(env, { remotePeer: "bob" });
    expect(wire.log.dialer[0]![0]).toBe(0x02);
    expect(ik.client.remotePeer).toBe("bob");
    expect(ik.server.remotePeer).toBe("alice");
    // IK: msg1 (1 + 96), then alice's key confirmation (17); bob answers with msg2 (48) only.
    expect(wire.log.dialer.slice(0, 2).map((f) => f.length)).toEqual([97, 17]);
    expect(wire.log.acceptor.slice(0, 1).map((f) => f.length)).toEqual([48]);

    wire.log.dialer.length = 0;
    wire.log.acceptor.length = 0;
    const xx = await connected(env, {});
    expect(wire.log.dialer[0]![0]).toBe(0x01);
    expect(xx.client.remotePeer).toBe("bob");
    expect(xx.server.remotePeer).toBe("alice");
    // XX: msg1 (1 + 32), msg3 (64); bob: msg2 (96), then bob's key confirmation (17).
    expect(wire.log.dialer.map((f) => f.length)).toEqual([33, 64]);
    expect(wire.log.acceptor.map((f) => f.length)).toEqual([96, 17]);

    expect(env.alice.audit.of("handshake").map((e) => e.reason)).toEqual(["noise:IK:initiator", "noise:XX:initiator"]);
    expect(env.bob.audit.of("handshake").map((e) => e.reason)).toEqual(["noise:IK:responder", "noise:XX:responder"]);
    expect(env.bob.audit.of("handshake")[0]).toEqual({
      event: "handshake",
      peer: "alice",
      kid: env.alice.identity.kid,
      decision: "allow",
      reason: "noise:IK:responder",
    });
    // Frames flow both ways on both.
    for (const { client, server } of [ik, xx]) {
      client.send(utf8("ping"));
      server.send(utf8("pong"));
      expect(sameBytes((await new FrameReader(server).next())!, utf8("ping"))).toBe(true);
      expect(sameBytes((await new FrameReader(client).next())!, utf8("pong"))).toBe(true);
    }
  });

  it('pattern: "XX" forces XX even with remotePeer (and still checks it); "IK" needs remotePeer; a listener forced to XX refuses IK', async () => {
    const wire = tap(memory());
    const env = await aliceAndBob({ inner: wire });
    const forcedXX = over(env.alice, wire, { pattern: "XX" });
    const [c] = await Promise.all([forcedXX.dial("mem://bob", { remotePeer: "bob" }), env.accept()]);
    expect(wire.log.dialer[0]![0]).toBe(0x01);
    expect(c.remotePeer).toBe("bob");
    c.abort();

    const forcedIK = over(env.alice, wire, { pattern: "IK" });
    const dials = wire.log.dials;
    await rejectsCode(forcedIK.dial("mem://bob"), "ERR_INVALID_ARGUMENT");
    expect(wire.log.dials).toBe(dials); // refused before any wire

    const xxOnly = over(env.bob, wire, { pattern: "XX" });
    const l2 = await xxOnly.listen("mem://bob-xx-only");
    cleanups.push(() => l2.close());
    const accept2 = acceptor(l2);
    await rejectsCode(env.ta.dial("mem://bob-xx-only", { remotePeer: "bob" }), "ERR_NOISE_HANDSHAKE");
    await eventually(() => env.bob.audit.of("handshake_failed").length === 1, "bob audits the refusal");
    expect(env.bob.audit.of("handshake_failed")[0]!.reason).toBe("ERR_NOISE_HANDSHAKE");
    // XX still works there.
    const [c2, s2] = await Promise.all([env.ta.dial("mem://bob-xx-only"), accept2()]);
    expect([c2.remotePeer, s2.remotePeer]).toEqual(["bob", "alice"]);
    c2.abort();
  });
});

describe("noise(): trust", () => {
  it("refuses an untrusted dialer (XX and IK) before any application frame, and audits the refusal", async () => {
    for (const pattern of ["XX", "IK"] as const) {
      const wire = tap(memory());
      const env = await aliceAndBob({ inner: wire });
      const mallory = await peer("mallory");
      trusts(mallory, env.bob, false); // mallory knows bob; bob does not know mallory
      const tm = over(mallory, wire);
      await rejectsCode(tm.dial("mem://bob", pattern === "IK" ? { remotePeer: "bob" } : {}), "ERR_NOISE_HANDSHAKE");
      // Bob never confirmed: XX got only msg2 from him, IK nothing at all.
      expect(wire.log.acceptor.map((f) => f.length)).toEqual(pattern === "XX" ? [96] : []);
      await eventually(() => env.bob.audit.of("handshake_failed").length === 1, "bob's audit record");
      expect(env.bob.audit.events).toEqual([{ event: "handshake_failed", decision: "deny", reason: "ERR_UNTRUSTED_PEER" }]);
      expect(mallory.audit.of("handshake_failed")[0]).toMatchObject({ reason: "ERR_NOISE_HANDSHAKE" });
      // The listener yielded nothing for mallory: the next connection it yields is alice's.
      const [c, s] = await Promise.all([env.ta.dial("mem://bob", { remotePeer: "bob" }), env.accept()]);
      expect(s.remotePeer).toBe("alice");
      c.abort();
    }
  });

  it("refuses a responder that is not the expected remotePeer (IK: it cannot decrypt; XX: checked before our static key is sent)", async () => {
    const net = tap(memory());
    const alice = await peer("alice");
    const bob = await peer("bob");
    const carol = await peer("carol");
    trusts(alice, bob);
    trusts(alice, carol);
    const lc = await over(carol, net).listen("mem://bob"); // carol sits at bob's address
    cleanups.push(() => lc.close());
    const ta = over(alice, net);
    await rejectsCode(ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_NOISE_HANDSHAKE");
    await eventually(() => carol.audit.of("handshake_failed").length === 1, "carol's failed IK");

    net.log.dialer.length = 0;
    const err = await rejectsCode(over(alice, net, { pattern: "XX" }).dial("mem://bob", { remotePeer: "bob" }), "ERR_UNTRUSTED_PEER");
    expect(err.message).toMatch(/"bob"/);
    expect(net.log.dialer.map((f) => f.length)).toEqual([33]); // msg1 only: alice's static key never left
    expect(alice.audit.of("handshake_failed").at(-1)).toEqual({
      event: "handshake_failed",
      peer: "bob",
      decision: "deny",
      reason: "ERR_UNTRUSTED_PEER",
    });

    // First contact with an agent nobody trusts: refused too.
    const stranger = await peer("stranger");
    stranger.trust.add(alice.identity.publicIdentity);
    const ls = await over(stranger, net).listen("mem://stranger");
    cleanups.push(() => ls.close());
    await rejectsCode(ta.dial("mem://stranger"), "ERR_UNTRUSTED_PEER");
  });

  it("refuses an unknown, revoked or malformed remotePeer before touching the wire", async () => {
    const wire = tap(memory());
    const env = await aliceAndBob({ inner: wire });
    const carol = await peer("carol");
    trusts(env.alice, carol);
    env.alice.trust.revoke("carol");
    await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "dave" }), "ERR_UNKNOWN_PEER");
    await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "carol" }), "ERR_REVOKED_PEER");
    await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "not an id!" }), "ERR_INVALID_ARGUMENT");
    expect(wire.log.dials).toBe(0);
  });

  it("revocation aborts open connections to that peer mid-stream within 1 s (dialled and accepted), and they stay refused", async () => {
    for (const side of ["dialer", "listener"] as const) {
      const env = await aliceAndBob();
      const { client, server } = await connected(env);
      // Both directions stream continuously until the channel dies.
      const pump = async (c: Connection, tag: number): Promise<void> => {
        for (let i = 0; c.isOpen; i++) {
          try {
            if (!c.send(makeFrame(tag, i, 512))) await c.drain();
          } catch {
            return;
          }
          if (i % 32 === 0) await new Promise((r) => setImmediate(r));
        }
      };
      const readers = [new FrameReader(client), new FrameReader(server)];
      const streams = [pump(client, 1), pump(server, 2)];
      await readers[0]!.take(50);
      await readers[1]!.take(50);
      const [revoker, local, remote, revokedId] =
        side === "dialer"
          ? ([env.alice, readers[0]!, readers[1]!, "bob"] as const)
          : ([env.bob, readers[1]!, readers[0]!, "alice"] as const);
      const t0 = performance.now();
      revoker.trust.revoke(revokedId);
      const localEnd = await local.untilError("the revoking side to end", 1000);
      expectCode(localEnd.error, "ERR_REVOKED_PEER");
      const remoteEnd = await remote.untilError("the revoked side to end", 1000);
      expectCode(remoteEnd.error, "ERR_CONNECTION_ABORTED");
      expect(performance.now() - t0).toBeLessThan(1000);
      await Promise.all(streams);
      const conn = side === "dialer" ? client : server;
      expectCode(await conn.closed, "ERR_REVOKED_PEER");
      // No new channel either way.
      if (side === "dialer") {
        await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_REVOKED_PEER");
      } else {
        await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_NOISE_HANDSHAKE");
        await eventually(() => env.bob.audit.of("handshake_failed").length === 1, "bob refuses the revoked alice");
        expect(env.bob.audit.of("handshake_failed")[0]!.reason).toBe("ERR_UNTRUSTED_PEER");
      }
    }
  });

  it("revoking another peer leaves the channel open", async () => {
    const env = await aliceAndBob();
    const carol = await peer("carol");
    trusts(env.alice, carol);
    const { client, server } = await connected(env);
    env.alice.trust.revoke("carol");
    client.send(utf8("still here"));
    expect(sameBytes((await new FrameReader(server).next())!, utf8("still here"))).toBe(true);
    expect(client.isOpen).toBe(true);
  });

  it("key rotation: the old key works only within the overlap window (and its channels end with it); the new key works", async () => {
    const env = await aliceAndBob({ alice: { handshakeTimeoutMs: 2000 } });
    const la = await env.ta.listen("mem://alice");
    cleanups.push(() => la.close());
    const acceptAlice = acceptor(la);
    const oldKid = env.bob.identity.kid;
    const { identity: bob2, statement } = rotateIdentity(env.bob.identity);
    env.alice.trust.applyStatement(statement, { overlapMs: 400 });
    // Old bob (still on his old key) reaches alice within the window: accepted, audited under the old kid.
    const oldBob = over(env.bob, env.inner);
    const [c1, s1] = await Promise.all([oldBob.dial("mem://alice"), acceptAlice()]);
    expect(s1.remotePeer).toBe("bob");
    expect(env.alice.audit.of("handshake").at(-1)).toMatchObject({ peer: "bob", kid: oldKid });
    // New bob too, and alice now pins the new key when she dials bob.
    const newBob = over({ ...env.bob, identity: bob2 }, env.inner);
    const lb2 = await newBob.listen("mem://bob2");
    cleanups.push(() => lb2.close());
    const acceptBob2 = acceptor(lb2);
    const [c2, s2] = await Promise.all([env.ta.dial("mem://bob2", { remotePeer: "bob" }), acceptBob2()]);
    expect([c2.remotePeer, s2.remotePeer]).toEqual(["bob", "alice"]);
    expect(env.alice.audit.of("handshake").at(-1)).toMatchObject({ peer: "bob", kid: bob2.kid });
    await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_NOISE_HANDSHAKE"); // old bob's listener
    // When the window ends, the old-key channel ends with it; the new-key channel stays.
    const ended = await new FrameReader(s1).untilError("the old-key channel to end", 2000);
    expectCode(ended.error, "ERR_KEY_RETIRED");
    expectCode((await new FrameReader(c1).untilError()).error, "ERR_CONNECTION_ABORTED");
    expect(c2.isOpen && s2.isOpen).toBe(true);
    // And the old key is refused from then on.
    await rejectsCode(oldBob.dial("mem://alice"), "ERR_NOISE_HANDSHAKE");
    await eventually(() => env.alice.audit.of("handshake_failed").some((e) => e.reason === "ERR_KEY_RETIRED"), "the refusal");
    // A revoked previous key is refused at once, even inside a (new) overlap window.
    const { identity: bob3, statement: s3 } = rotateIdentity(bob2);
    env.alice.trust.applyStatement(s3, { overlapMs: 60_000 });
    const bob2Again = over({ ...env.bob, identity: bob2 }, env.inner);
    const [c3] = await Promise.all([bob2Again.dial("mem://alice"), acceptAlice()]);
    c3.abort();
    env.alice.trust.applyStatement(createRevocation(bob2, { id: "bob", kid: bob2.kid }));
    await rejectsCode(bob2Again.dial("mem://alice"), "ERR_NOISE_HANDSHAKE");
    await eventually(() => env.alice.audit.of("handshake_failed").filter((e) => e.reason === "ERR_UNTRUSTED_PEER").length === 1, "refused");
    bob2.close();
    bob3.close();
  });

  it("revoking only the previous key ends at once the channels opened with it (current or previous then) with ERR_KEY_RETIRED; new-key channels stay", async () => {
    const env = await aliceAndBob();
    const la = await env.ta.listen("mem://alice");
    cleanups.push(() => la.close());
    const acceptAlice = acceptor(la);
    const k1 = env.bob.identity.kid;
    // c0/s0: alice dialled bob while k1 was bob's current key.
    const { client: c0, server: s0 } = await connected(env);
    const retired: [string, string][] = [];
    const revoked: string[] = [];
    const unsubscribe = [
      env.alice.trust.onKeyRetired((id, kid) => retired.push([id, kid])),
      env.alice.trust.onRevoke((e) => revoked.push(e.id)),
    ];
    cleanups.push(() => unsubscribe.forEach((u) => u()));
    const { identity: bob2, statement } = rotateIdentity(env.bob.identity);
    env.alice.trust.applyStatement(statement, { overlapMs: 60_000 });
    // c1/s1: old bob (k1, now the previous key) reaches alice inside the window.
    const oldBob = over(env.bob, env.inner);
    const [c1, s1] = await Promise.all([oldBob.dial("mem://alice"), acceptAlice()]);
    expect(env.alice.audit.of("handshake").at(-1)).toMatchObject({ peer: "bob", kid: k1 });
    // c2/s2: new bob (k2), pinned by alice.
    const newBob = over({ ...env.bob, identity: bob2 }, env.inner);
    const lb2 = await newBob.listen("mem://bob2");
    cleanups.push(() => lb2.close());
    const [c2, s2] = await Promise.all([env.ta.dial("mem://bob2", { remotePeer: "bob" }), acceptor(lb2)()]);
    cleanups.push(() => {
      for (const c of [c1, s1, c2, s2]) c.abort();
    });
    // All three carry traffic (the frames on c0 and s1 also make alice look at the rotated entry).
    c0.send(utf8("c0"));
    c1.send(utf8("c1"));
    c2.send(utf8("c2"));
    const readers = { s0: new FrameReader(s0), s1: new FrameReader(s1), s2: new FrameReader(s2) };
    for (const [name, r] of Object.entries(readers)) expect(sameBytes((await r.next())!, utf8(name.replace("s", "c")))).toBe(true);

    env.alice.trust.applyStatement(createRevocation(env.bob.identity, { id: "bob", kid: k1 }));
    // At once (synchronously), both k1 channels at alice; the k2 channel stays.
    expect([c0.isOpen, s1.isOpen, c2.isOpen]).toEqual([false, false, true]);
    expect(retired).toEqual([["bob", k1]]);
    expect(revoked).toEqual([]);
    expectCode(await c0.closed, "ERR_KEY_RETIRED");
    expectCode(await s1.closed, "ERR_KEY_RETIRED");
    expectCode((await readers.s0.untilError()).error, "ERR_CONNECTION_ABORTED");
    expectCode((await new FrameReader(c1).untilError()).error, "ERR_CONNECTION_ABORTED");
    c2.send(utf8("still here"));
    expect(sameBytes((await readers.s2.next())!, utf8("still here"))).toBe(true);
    // The same revocation again is refused (the store no longer knows k1) and fires nothing; k1 is refused.
    throwsCode(() => env.alice.trust.applyStatement(createRevocation(env.bob.identity, { id: "bob", kid: k1 })), "ERR_STATEMENT_INVALID");
    expect(retired.length).toBe(1);
    await rejectsCode(oldBob.dial("mem://alice"), "ERR_NOISE_HANDSHAKE");
    await eventually(() => env.alice.audit.of("handshake_failed").some((e) => e.reason === "ERR_UNTRUSTED_PEER"), "refused");
    bob2.close();
  });

  it("a channel opened while a key was current ends with that key's overlap window once it is rotated out, also when idle", async () => {
    // Traffic after the rotation makes alice notice it; the channel then ends at the window's end by itself.
    {
      const env = await aliceAndBob();
      const { client, server } = await connected(env);
      const { identity: bob2, statement } = rotateIdentity(env.bob.identity);
      const t0 = Date.now();
      env.alice.trust.applyStatement(statement, { overlapMs: 300 });
      client.send(utf8("after the rotation"));
      const serverReader = new FrameReader(server);
      expect(sameBytes((await serverReader.next())!, utf8("after the rotation"))).toBe(true);
      expect(client.isOpen).toBe(true);
      expectCode(await within(client.closed, "the window's end"), "ERR_KEY_RETIRED");
      expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
      expectCode((await serverReader.untilError()).error, "ERR_CONNECTION_ABORTED");
      bob2.close();
    }
    // Idle past the window: alice's next send is refused with a coded error (an agent re-dials), not sent.
    {
      const env = await aliceAndBob();
      const { client, server } = await connected(env);
      const serverReader = new FrameReader(server);
      const { identity: bob2, statement } = rotateIdentity(env.bob.identity);
      env.alice.trust.applyStatement(statement, { overlapMs: 0 });
      await new Promise((r) => setTimeout(r, 5));
      const err = throwsCode(() => client.send(utf8("too late")), "ERR_CONNECTION_CLOSED");
      expectCode(err.cause, "ERR_KEY_RETIRED");
      expectCode(await client.closed, "ERR_KEY_RETIRED");
      expect((await serverReader.untilError()).frames).toEqual([]);
      bob2.close();
    }
    // Idle past the window, and the peer speaks first: its frame is not delivered under the retired key.
    {
      const env = await aliceAndBob();
      const { client, server } = await connected(env);
      const clientReader = new FrameReader(client);
      const { identity: bob2, statement } = rotateIdentity(env.bob.identity);
      env.alice.trust.applyStatement(statement, { overlapMs: 0 });
      await new Promise((r) => setTimeout(r, 5));
      server.send(utf8("from the old key"));
      const { frames, error } = await clientReader.untilError();
      expect(frames).toEqual([]);
      expectCode(error, "ERR_KEY_RETIRED");
      bob2.close();
    }
  });

  it("TrustStore.onKeyRetired fires only when a revocation drops the previous key (not for the current key, nor twice); listeners are isolated", async () => {
    const trust = new TrustStore();
    const carol = await generateIdentity("carol");
    const dave = await generateIdentity("dave");
    trust.add(carol.publicIdentity);
    trust.add(dave.publicIdentity);
    const seen: string[] = [];
    const revoked: string[] = [];
    const offThrowing = trust.onKeyRetired(() => {
      throw new Error("a failing listener");
    });
    const off = trust.onKeyRetired((id, kid) => seen.push(`${id}:${kid}`));
    trust.onRevoke((e) => revoked.push(e.id));
    const { identity: carol2, statement } = rotateIdentity(carol);
    trust.applyStatement(statement);
    expect(seen).toEqual([]); // a rotation alone retires nothing early
    trust.applyStatement(createRevocation(carol, { id: "carol", kid: carol.kid }));
    expect(seen).toEqual([`carol:${carol.kid}`]);
    expect(trust.get("carol")!.previous).toBeUndefined();
    throwsCode(() => trust.applyStatement(createRevocation(carol, { id: "carol", kid: carol.kid })), "ERR_STATEMENT_INVALID");
    expect(seen.length).toBe(1);
    expect(revoked).toEqual([]);
    trust.applyStatement(createRevocation(dave, { id: "dave", kid: dave.kid })); // the current key: onRevoke
    expect(revoked).toEqual(["dave"]);
    expect(seen.length).toBe(1);
    off();
    offThrowing();
    const { identity: carol3, statement: s3 } = rotateIdentity(carol2);
    trust.applyStatement(s3);
    trust.applyStatement(createRevocation(carol2, { id: "carol", kid: carol2.kid }));
    expect(seen.length).toBe(1); // unsubscribed
    for (const id of [carol, carol2, carol3, dave]) id.close();
  });

  it("closing the identity aborts its channels (ERR_CLOSED), closes its listeners, and refuses new dials and listens", async () => {
    const env = await aliceAndBob();
    const la = await env.ta.listen("mem://alice");
    const { client, server } = await connected(env);
    const reader = new FrameReader(client);
    env.alice.identity.close();
    expectCode((await reader.untilError()).error, "ERR_CLOSED");
    expectCode(await client.closed, "ERR_CLOSED");
    expectCode((await new FrameReader(server).untilError()).error, "ERR_CONNECTION_ABORTED");
    expect(await within(la[Symbol.asyncIterator]().next(), "alice's listener to end")).toEqual({ done: true, value: undefined });
    await rejectsCode(env.ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_CLOSED");
    await rejectsCode(env.ta.listen("mem://alice2"), "ERR_CLOSED");
    // mem://alice is free again: the inner listener was closed too.
    const again = await env.inner.listen("mem://alice");
    await again.close();
  });
});

describe("noise(): tampering and downgrades", () => {
  it("a flipped bit in a transport frame aborts the channel with ERR_NOISE_DECRYPT; earlier frames arrived intact", async () => {
    for (const pattern of ["XX", "IK"] as const) {
      // Dialer frames: 0 = msg1, 1 = msg3 (XX) or key confirmation (IK), then application frames.
      const firstApp = 2;
      const wire = tap(memory(), {
        dialer: (i, f) => {
          if (i === firstApp + 3) f[f.length >> 1]! ^= 0x20;
          return [f];
        },
      });
      const env = await aliceAndBob({ inner: wire });
      const { client, server } = await connected(env, pattern === "IK" ? { remotePeer: "bob" } : {});
      for (let i = 0; i < 6; i++) client.send(makeFrame(7, i, 100));
      const { frames, error } = await new FrameReader(server).untilError();
      expect(frames.map((f, i) => checkFrame(f, 7, i, 100))).toEqual([undefined, undefined, undefined]);
      expectCode(error, "ERR_NOISE_DECRYPT");
      expectCode(await server.closed, "ERR_NOISE_DECRYPT");
      expectCode((await new FrameReader(client).untilError()).error, "ERR_CONNECTION_ABORTED");
    }
  });

  it("a replayed, dropped or reordered transport frame fails closed", async () => {
    // IK dialer frames: 0 = msg1, 1 = key confirmation, 2.. = application frames 0..; frame 4 is app frame 2.
    const edits: Record<string, (i: number, f: Uint8Array, held: Uint8Array[]) => Uint8Array[]> = {
      replayed: (i, f) => (i === 4 ? [f, f] : [f]),
      dropped: (i, f) => (i === 4 ? [] : [f]),
      reordered: (i, f, held) => {
        if (i === 4) {
          held.push(f);
          return [];
        }
        return i === 5 ? [f, held.pop()!] : [f];
      },
    };
    const deliveredBeforeFailure: Record<string, number> = { replayed: 3, dropped: 2, reordered: 2 };
    for (const [name, edit] of Object.entries(edits)) {
      const held: Uint8Array[] = [];
      const env = await aliceAndBob({ inner: tap(memory(), { dialer: (i, f) => edit(i, f, held) }) });
      const { client, server } = await connected(env);
      for (let i = 0; i < 8; i++) client.send(makeFrame(8, i, 64));
      const { frames, error } = await new FrameReader(server).untilError(`the ${name} frame to fail`);
      expect(frames.length, name).toBe(deliveredBeforeFailure[name]);
      frames.forEach((f, i) => expect(checkFrame(f, 8, i, 64)).toBeUndefined());
      expectCode(error, "ERR_NOISE_DECRYPT");
    }
  });

  it("any change to any handshake byte (either direction, both patterns) fails the handshake with a coded error", async () => {
    const wire = { target: "" as "dialer" | "acceptor" | "", index: 0, pos: 0 };
    const hook = (side: "dialer" | "acceptor") => (i: number, f: Uint8Array) => {
      if (wire.target === side && i === wire.index && wire.pos < f.length) f[wire.pos]! ^= 0x01;
      return [f];
    };
    const env = await aliceAndBob({
      inner: tap(memory(), { dialer: hook("dialer"), acceptor: hook("acceptor") }),
      alice: { handshakeTimeoutMs: 2000 },
      bob: { handshakeTimeoutMs: 2000 },
    });
    // Every message of the handshake including the key confirmation.
    const cases = [
      { pattern: "IK", target: "dialer", index: 0, length: 97 },
      { pattern: "IK", target: "acceptor", index: 0, length: 48 },
      { pattern: "IK", target: "dialer", index: 1, length: 17 },
      { pattern: "XX", target: "dialer", index: 0, length: 33 },
      { pattern: "XX", target: "acceptor", index: 0, length: 96 },
      { pattern: "XX", target: "dialer", index: 1, length: 64 },
      { pattern: "XX", target: "acceptor", index: 1, length: 17 },
    ] as const;
    const accepted: Connection[] = [];
    const accepting = (async () => {
      for (;;) {
        const c = await env.accept("any", 60_000).catch(() => undefined);
        if (c === undefined) return;
        accepted.push(c);
      }
    })();
    for (const c of cases) {
      for (let pos = 0; pos < c.length; pos++) {
        Object.assign(wire, { target: c.target, index: c.index, pos });
        const dialing = env.ta.dial("mem://bob", c.pattern === "IK" ? { remotePeer: "bob" } : {});
        const before = accepted.length;
        if (c.pattern === "IK" && c.index === 1) {
          // Alice's dial already succeeded (she confirms last); Bob refuses the bad confirmation and aborts.
          const conn = await within(dialing, "dial");
          const { error } = await new FrameReader(conn).untilError();
          expectCode(error, "ERR_CONNECTION_ABORTED");
        } else {
          const err = await dialing.then(
            () => new Error(`${c.pattern} ${c.target}#${c.index} byte ${pos}: the handshake succeeded`),
            (e: unknown) => e,
          );
          expect(SealwireError.is(err), String(err)).toBe(true);
          expect(["ERR_NOISE_HANDSHAKE", "ERR_UNTRUSTED_PEER"]).toContain((err as SealwireError).code);
        }
        await new Promise((r) => setImmediate(r));
        if (c.pattern === "XX" && c.target === "acceptor" && c.index === 1) {
          // XX: bob hands out his end right after sending the confirmation; alice rejects the tampered one and
          // aborts, so bob's end dies before any application frame.
          for (const conn of accepted.slice(before)) {
            const { frames, error } = await new FrameReader(conn).untilError();
            expect(frames).toEqual([]);
            expectCode(error, "ERR_CONNECTION_ABORTED");
          }
        } else {
          expect(accepted.length, `${c.pattern} ${c.target}#${c.index} byte ${pos}`).toBe(before);
        }
      }
    }
    wire.target = "";
    // Untampered, the same listener still works.
    const before = accepted.length;
    const c = await env.ta.dial("mem://bob", { remotePeer: "bob" });
    await eventually(() => accepted.length === before + 1, "the listener to yield the good connection");
    expect(accepted.at(-1)!.remotePeer).toBe("alice");
    c.abort();
    await env.listener.close();
    await accepting;
  });

  it("a rewritten pattern byte (IK to XX, XX to IK, unknown) breaks the handshake on both sides", async () => {
    const rewrite = { to: -1 };
    const env = await aliceAndBob({
      inner: tap(memory(), {
        dialer: (i, f) => {
          if (i === 0 && rewrite.to >= 0) f[0] = rewrite.to;
          return [f];
        },
      }),
    });
    for (const [remotePeer, to] of [
      ["bob", 0x01],
      [undefined, 0x02],
      [undefined, 0x00],
      ["bob", 0x03],
      ["bob", 0xff],
    ] as const) {
      rewrite.to = to;
      const before = env.bob.audit.of("handshake_failed").length;
      await rejectsCode(env.ta.dial("mem://bob", remotePeer ? { remotePeer } : {}), "ERR_NOISE_HANDSHAKE");
      await eventually(() => env.bob.audit.of("handshake_failed").length === before + 1, "bob's refusal");
    }
    expect(env.bob.audit.of("handshake").length).toBe(0);
  });

  it("the prologue binds the inner transport kind: a dialer and a listener on different kinds never complete a handshake", async () => {
    const net = memory();
    const alice = await peer("alice");
    const bob = await peer("bob");
    trusts(alice, bob);
    // Same wire underneath, but bob's side claims to be "ws" (as a TLS-stripping relay would present it).
    const lb = await over(bob, tap(net, { kind: "ws" })).listen("mem://bob");
    cleanups.push(() => lb.close());
    const accept = acceptor(lb);
    const ta = over(alice, net);
    await rejectsCode(ta.dial("mem://bob", { remotePeer: "bob" }), "ERR_NOISE_HANDSHAKE");
    await rejectsCode(ta.dial("mem://bob"), "ERR_NOISE_HANDSHAKE");
    // Control: when both sides agree on the kind, it works.
    const [c, s] = await Promise.all([over(alice, tap(net, { kind: "ws" })).dial("mem://bob"), accept()]);
    expect(s.remotePeer).toBe("alice");
    c.abort();
  });

  it("speaks the documented wire format: a hand-driven HandshakeState completes XX, checks the confirmation, and sends a frame", async () => {
    const env = await aliceAndBob();
    const secrets = env.alice.identity.exportSecrets();
    for (const [prologue, works] of [
      [noisePrologue("memory", "XX"), true],
      [concatBytes(Uint8Array.of(0, 17), utf8("sealwire/noise/v2"), noisePrologue("memory", "XX").subarray(19)), false],
      [noisePrologue("ws", "XX"), false],
    ] as const) {
      const raw = await env.inner.dial("mem://bob");
      const reader = new FrameReader(raw);
      const hs = HandshakeState.initialize({
        protocolName: "Noise_XX_25519_ChaChaPoly_SHA256",
        initiator: true,
        prologue,
        s: secrets.sealSecret,
      });
      raw.send(concatBytes(Uint8Array.of(0x01), hs.writeMessage(EMPTY))); // -> e
      const m2 = (await reader.next())!;
      if (!works) {
        expect(() => hs.readMessage(m2)).toThrow(/Noise handshake/);
        raw.abort();
        continue;
      }
      expect(hs.readMessage(m2).length).toBe(0); // <- e, ee, s, es
      expect(toHex(hs.remoteStaticKey!)).toBe(toHex(env.bob.identity.sealPublicKey));
      raw.send(hs.writeMessage(EMPTY)); // -> s, se
      const { send, receive } = hs.splitByRole();
      expect([...receive.decryptWithAd(EMPTY, (await reader.next())!)]).toEqual([0x04]); // CONFIRM
      const server = await env.accept();
      const serverReader = new FrameReader(server);
      expect(server.remotePeer).toBe("alice");
      raw.send(send.encryptWithAd(EMPTY, concatBytes(Uint8Array.of(0x00), utf8("hello"))));
      expect(sameBytes((await serverReader.next())!, utf8("hello"))).toBe(true);
      server.send(utf8("hi"));
      expect([...receive.decryptWithAd(EMPTY, (await reader.next())!)]).toEqual([0x00, ...utf8("hi")]);
      raw.send(send.encryptWithAd(EMPTY, Uint8Array.of(0x02))); // END: an authenticated, clean end of stream
      await raw.close();
      expect(await serverReader.rest()).toEqual([]);
      expect(await server.closed).toBeUndefined();
    }
    // Without END, the same clean-looking end of the wire is reported as a cut (truncation is not a close).
    const raw = await env.inner.dial("mem://bob");
    const reader = new FrameReader(raw);
    const hs = HandshakeState.initialize({
      protocolName: "Noise_XX_25519_ChaChaPoly_SHA256",
      initiator: true,
      prologue: noisePrologue("memory", "XX"),
      s: secrets.sealSecret,
    });
    raw.send(concatBytes(Uint8Array.of(0x01), hs.writeMessage(EMPTY)));
    hs.readMessage((await reader.next())!);
    raw.send(hs.writeMessage(EMPTY));
    const { send } = hs.splitByRole();
    await reader.next();
    const server = await env.accept();
    raw.send(send.encryptWithAd(EMPTY, concatBytes(Uint8Array.of(0x00), utf8("one"))));
    await raw.close();
    const { frames, error } = await new FrameReader(server).untilError();
    expect(frames.length).toBe(1);
    expectCode(error, "ERR_CONNECTION_ABORTED");
    secrets.signSeed.fill(0);
    secrets.sealSecret.fill(0);
  });
});

/** Completes an XX handshake as `as` over a raw connection by hand, returning the session keys and bob's end. */
async function handDriven(env: Awaited<ReturnType<typeof aliceAndBob>>, as: Peer) {
  const secrets = as.identity.exportSecrets();
  const raw = await env.inner.dial("mem://bob");
  const reader = new FrameReader(raw);
  const hs = HandshakeState.initialize({
    protocolName: "Noise_XX_25519_ChaChaPoly_SHA256",
    initiator: true,
    prologue: noisePrologue("memory", "XX"),
    s: secrets.sealSecret,
  });
  secrets.signSeed.fill(0);
  secrets.sealSecret.fill(0);
  raw.send(concatBytes(Uint8Array.of(0x01), hs.writeMessage(EMPTY)));
  hs.readMessage((await reader.next())!);
  raw.send(hs.writeMessage(EMPTY));
  const { send, receive } = hs.splitByRole();
  expect([...receive.decryptWithAd(EMPTY, (await reader.next())!)]).toEqual([0x04]);
  const server = await env.accept();
  cleanups.push(() => raw.abort());
  return { raw, send, receive, server };
}

describe("noise(): framing", () => {
  it("splits frames into Noise messages that fit the inner transport (never above 65535 bytes) and reassembles them", async () => {
    for (const innerMax of [4 * MiB, 1000]) {
      const wire = tap(memory({ maxFrameBytes: innerMax }));
      const env = await aliceAndBob({ inner: wire, alice: { maxFrameBytes: 3 * MiB }, bob: { maxFrameBytes: 3 * MiB } });
      const { client, server } = await connected(env);
      const chunk = Math.min(65535, innerMax) - 17;
      const sizes = [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5, 1 * MiB + 3, 3 * MiB];
      const reader = new FrameReader(server);
      const [, got] = await Promise.all([
        sendAll(client, sizes.map((n, i) => makeFrame(9, i, n))),
        reader.take(sizes.length, "the large frames", 20_000),
      ]);
      got.forEach((f, i) => expect(checkFrame(f, 9, i, sizes[i]!)).toBeUndefined());
      const lengths = wire.log.dialer.map((f) => f.length);
      expect(Math.max(...lengths)).toBe(Math.min(65535, innerMax));
      // a 3 MiB frame over 64 KiB messages: 49 messages, each but the last exactly 65535 bytes
      if (innerMax > 65535) expect(lengths.filter((n) => n === 65535).length).toBeGreaterThan(48 + 16);
    }
  });

  it("a frame above the receiver's maxFrameBytes aborts the channel with ERR_FRAME_TOO_LARGE; send refuses it locally", async () => {
    const env = await aliceAndBob({ alice: { maxFrameBytes: 1 * MiB }, bob: { maxFrameBytes: 100 * KiB } });
    const { client, server } = await connected(env);
    throwsCode(() => server.send(new Uint8Array(100 * KiB + 1)), "ERR_FRAME_TOO_LARGE");
    client.send(makeFrame(1, 0, 100 * KiB)); // exactly the limit: fine
    client.send(makeFrame(1, 1, 100 * KiB + 1));
    const { frames, error } = await new FrameReader(server).untilError();
    expect(frames.length).toBe(1);
    expectCode(error, "ERR_FRAME_TOO_LARGE");
    expectCode((await new FrameReader(client).untilError()).error, "ERR_CONNECTION_ABORTED");
  });

  it("an authenticated peer that breaks the framing rules is cut off with ERR_PROTOCOL", async () => {
    const env = await aliceAndBob();
    const cases: Record<string, Uint8Array[]> = {
      "a tiny non-final chunk": [concatBytes(Uint8Array.of(0x01), new Uint8Array(10)), Uint8Array.of(0x00)],
      "an unknown flag": [Uint8Array.of(0x08, 1, 2, 3)],
      "MORE and END together": [Uint8Array.of(0x03)],
      "a second key confirmation": [Uint8Array.of(0x04)],
      "END with a payload": [Uint8Array.of(0x02, 0x42)],
      "END in the middle of a frame": [concatBytes(Uint8Array.of(0x01), new Uint8Array(300)), Uint8Array.of(0x02)],
      "an empty message": [EMPTY],
    };
    for (const [name, plaintexts] of Object.entries(cases)) {
      const { raw, send, server } = await handDriven(env, env.alice);
      raw.send(send.encryptWithAd(EMPTY, concatBytes(Uint8Array.of(0x00), utf8("ok"))));
      for (const pt of plaintexts) raw.send(send.encryptWithAd(EMPTY, pt));
      const { frames, error } = await new FrameReader(server).untilError(name);
      expect(frames.map((f) => [...f]), name).toEqual([[...utf8("ok")]]);
      expect(SealwireError.is(error, "ERR_PROTOCOL"), `${name}: ${String(error)}`).toBe(true);
      expectCode(await within(raw.closed, "the raw end to be aborted"), "ERR_CONNECTION_ABORTED");
    }
  });

  it("send passes the inner connection's backpressure verdict through", async () => {
    // 1000-byte frames cost 1000 + 17 (header, tag) + 16 (memory bookkeeping) = 1033 bytes in the inner queue:
    // the 4th reaches the 4096-byte mark (memory alone would say false only at the 5th).
    const env = await aliceAndBob({ net: { highWaterMarkBytes: 4096 } });
    const { client, server } = await connected(env);
    const verdicts = Array.from({ length: 5 }, () => client.send(new Uint8Array(1000)));
    expect(verdicts).toEqual([true, true, true, false, false]);
    const drained = client.drain();
    expect(await settlesWithin(drained, 30)).toBe(false);
    await new FrameReader(server).take(5);
    await within(drained, "drain after the reader caught up");
    expect(client.send(new Uint8Array(10))).toBe(true);
  });
});

describe("noise(): rekey", () => {
  it("a long stream crosses many rekeys in both directions (message and byte limits, multi-chunk frames)", async () => {
    for (const limits of [{ rekeyAfterMessages: 5 }, { rekeyAfterBytes: 4000 }]) {
      const env = await aliceAndBob({ net: { maxFrameBytes: 1000 }, alice: limits, bob: limits });
      const { client, server } = await connected(env);
      const N = 1500;
      const size = (i: number): number => (i * 389) % 2600; // up to 3 chunks of 983 bytes
      const frames = (tag: number): Uint8Array[] => Array.from({ length: N }, (_, i) => makeFrame(tag, i, size(i)));
      const check = async (c: Connection, tag: number): Promise<void> => {
        const got = await new FrameReader(c).take(N, `${N} frames`, 20_000);
        for (let i = 0; i < N; i++) {
          const problem = checkFrame(got[i]!, tag, i, size(i));
          if (problem !== undefined) expect.fail(problem);
        }
      };
      await Promise.all([sendAll(client, frames(1)), sendAll(server, frames(2)), check(server, 1), check(client, 2)]);
    }
  });

  it("peers that rekey at different points fail closed at the first message past the shorter limit", async () => {
    // Messages from alice (IK initiator): #1 is her key confirmation, then frames 0, 1, ….
    // Alice rekeys after 7 messages, bob after 8: message #8 (frame 6) is under a key bob does not have yet.
    const byCount = await aliceAndBob({ alice: { rekeyAfterMessages: 7 }, bob: { rekeyAfterMessages: 8 } });
    const a = await connected(byCount);
    for (let i = 0; i < 10; i++) a.client.send(makeFrame(3, i, 100));
    const r1 = await new FrameReader(a.server).untilError();
    expect(r1.frames.length).toBe(6);
    expectCode(r1.error, "ERR_NOISE_DECRYPT");

    // Bytes: confirmation 17, then 117 per 100-byte frame; alice's 1000-byte limit is reached after frame 8
    // (17 + 9 × 117 = 1070), so frame 9 is under the new key; bob (2000) still uses the old one.
    const byBytes = await aliceAndBob({ alice: { rekeyAfterBytes: 1000 }, bob: { rekeyAfterBytes: 2000 } });
    const b = await connected(byBytes);
    for (let i = 0; i < 12; i++) b.client.send(makeFrame(4, i, 100));
    const r2 = await new FrameReader(b.server).untilError();
    expect(r2.frames.length).toBe(9);
    expectCode(r2.error, "ERR_NOISE_DECRYPT");
    expectCode((await new FrameReader(b.client).untilError()).error, "ERR_CONNECTION_ABORTED");
  });
});

describe("noise(): bounded handshakes", () => {
  it("200 stalled raw connections: 64 handshakes in flight, the 136 oldest evicted at once, no cryptography; a legitimate dialer still gets in", async () => {
    const net = memory({ backlog: 1024 });
    const refusals: Refusal[] = [];
    const env = await aliceAndBob({ inner: net, bob: { handshakeTimeoutMs: 400, onRefusal: (r) => void refusals.push(r) } });
    const inFlight = (): number => (env.listener as unknown as { handshakesInFlight: number }).handshakesInFlight;
    const init = vi.spyOn(HandshakeState, "initialize");
    const raws = await Promise.all(Array.from({ length: 200 }, () => net.dial("mem://bob")));
    const settled = new Set<Connection>();
    for (const r of raws) void r.closed.then(() => settled.add(r));
    await eventually(() => settled.size === 136, "136 connections to be evicted");
    expect(raws.slice(0, 136).every((r) => settled.has(r)), "the oldest ones are evicted").toBe(true);
    expect(inFlight()).toBe(64);
    expect(init).not.toHaveBeenCalled(); // stalled wires cost no DH, no hashing, no state
    // memory addresses carry no IP address: only the global limit applies, and no source is reported.
    expect(refusals).toEqual(Array.from({ length: 136 }, () => ({ reason: "noise_handshake_evicted" })));
    // A legitimate dialer gets in at once while the listener is saturated: it evicts the oldest stalled handshake.
    const t0 = performance.now();
    const { client, server } = await connected(env);
    expect(performance.now() - t0).toBeLessThan(300);
    expect(server.remotePeer).toBe("alice");
    expect(refusals.length).toBe(137);
    expect(settled.has(raws[136]!)).toBe(true);
    // After the handshake timeout every stalled wire is gone. With onRefusal, evictions and timeouts of
    // unidentified peers are counted there (for aggregated records), not audited one by one.
    await eventually(() => settled.size === 200, "every stalled connection to be aborted", 3000);
    for (const r of raws) expectCode(await r.closed, "ERR_CONNECTION_ABORTED");
    await eventually(() => refusals.filter((r) => r.reason === "noise_handshake_timeout").length === 63, "63 timeouts reported");
    expect(env.bob.audit.of("handshake_failed")).toEqual([]);
    expect(inFlight()).toBe(0);
    // The established channel was never a candidate for eviction.
    expect(client.isOpen && server.isOpen).toBe(true);
    client.send(utf8("still here"));
    expect(await within(server[Symbol.asyncIterator]().next(), "a frame")).toMatchObject({ done: false });
  });

  it("an established connection beyond the backlog is refused and reported as noise_backlog; onRefusal may throw", async () => {
    const refusals: Refusal[] = [];
    const env = await aliceAndBob({
      bob: {
        backlog: 1,
        onRefusal: (r) => {
          refusals.push(r);
          throw new Error("hook failure must not matter");
        },
      },
    });
    const first = await within(env.ta.dial("mem://bob"), "the first dial");
    cleanups.push(() => first.abort());
    // Nobody accepts: the second channel finds the backlog full (XX: the responder refuses instead of confirming).
    await rejectsCode(env.ta.dial("mem://bob"), "ERR_NOISE_HANDSHAKE");
    await eventually(() => refusals.length === 1, "the refusal to be reported");
    expect(refusals).toEqual([{ reason: "noise_backlog" }]);
    expect((await env.accept()).remotePeer).toBe("alice"); // the first one is still there
  });

  it("handshakeSourceOf: the IP address of an inner remoteAddr, or nothing", () => {
    expect(handshakeSourceOf("203.0.113.4:51234")).toBe("203.0.113.4");
    expect(handshakeSourceOf("[2001:DB8::1]:443")).toBe("2001:db8::1");
    expect(handshakeSourceOf("[fe80::1%eth0]:443")).toBe("fe80::1");
    for (const none of ["mem://bob#3", "203.0.113.4", "[::1]", "nats:_INBOX.x", "", "x".repeat(100), 42, undefined]) {
      expect(handshakeSourceOf(none)).toBeUndefined();
    }
  });

  it("garbage first (and second) messages are refused quickly, without a connection, and the listener keeps serving", async () => {
    const net = memory();
    const env = await aliceAndBob({ inner: net, bob: { handshakeTimeoutMs: 150 } });
    const accepted: Connection[] = [];
    void (async () => {
      for (;;) {
        const c = await env.accept("any", 60_000).catch(() => undefined);
        if (c === undefined) return;
        accepted.push(c);
      }
    })();
    const message = fc.oneof(
      fc.uint8Array({ maxLength: 200 }),
      fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => concatBytes(Uint8Array.of(1), b)), // XX-shaped
      fc.uint8Array({ minLength: 96, maxLength: 96 }).map((b) => concatBytes(Uint8Array.of(2), b)), // IK-shaped
      fc.uint8Array({ minLength: 64, maxLength: 64 }), // msg3-shaped
    );
    const attempt = async (msgs: Uint8Array[]): Promise<void> => {
      const raw = await net.dial("mem://bob");
      const reader = new FrameReader(raw);
      for (const m of msgs) {
        if (!raw.isOpen) break;
        raw.send(m);
        await reader.next("a reply or the end", 2000).catch(() => undefined);
      }
      const end = await within(raw.closed, "the listener to drop the garbage", 2000);
      expectCode(end, "ERR_CONNECTION_ABORTED");
    };
    const fixed = [[EMPTY], [Uint8Array.of(0)], [Uint8Array.of(1)], [Uint8Array.of(2)], [new Uint8Array(70_000).fill(1)], [new Uint8Array(97).fill(2)]];
    for (const msgs of fixed) await attempt(msgs);
    await fc.assert(fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 3 }), attempt), { numRuns: 40 });
    expect(accepted).toEqual([]);
    expect(env.bob.audit.of("handshake").length).toBe(0);
    expect(env.bob.audit.of("handshake_failed").length).toBeGreaterThanOrEqual(fixed.length);
    const c = await env.ta.dial("mem://bob", { remotePeer: "bob" });
    await eventually(() => accepted.length === 1, "the legitimate connection");
    expect(accepted[0]!.remotePeer).toBe("alice");
    c.abort();
  });

  it("a peer that stops mid-handshake, or replays a recorded IK first message, is dropped at the timeout without a connection", async () => {
    const recorded: Uint8Array[] = [];
    const net = memory();
    const wire = tap(net, {
      dialer: (i, f) => {
        if (i === 0) recorded.push(f);
        return [f];
      },
    });
    const env = await aliceAndBob({ inner: wire, bob: { handshakeTimeoutMs: 300 } });
    const { client } = await connected(env); // a genuine IK handshake, recorded
    client.abort();
    const secrets = env.alice.identity.exportSecrets();
    // (a) a real XX initiator that goes quiet after message 2
    const hs = HandshakeState.initialize({
      protocolName: "Noise_XX_25519_ChaChaPoly_SHA256",
      initiator: true,
      prologue: noisePrologue("memory", "XX"),
      s: secrets.sealSecret,
    });
    const stalled = await net.dial("mem://bob");
    stalled.send(concatBytes(Uint8Array.of(1), hs.writeMessage(EMPTY)));
    hs.readMessage((await new FrameReader(stalled).next())!);
    // (b) a replay of alice's first IK message: bob answers (IK cannot tell) but never gets a confirmation
    const replay = await net.dial("mem://bob");
    replay.send(recorded[0]!);
    const t0 = performance.now();
    for (const raw of [stalled, replay]) expectCode(await within(raw.closed, "the timeout", 2000), "ERR_CONNECTION_ABORTED");
    expect(performance.now() - t0).toBeGreaterThan(200);
    await eventually(() => env.bob.audit.of("handshake_failed").length === 2, "two timeout records");
    expect(env.bob.audit.of("handshake_failed")).toEqual([
      { event: "handshake_failed", decision: "deny", reason: "ERR_TIMEOUT" },
      { event: "handshake_failed", peer: "alice", decision: "deny", reason: "ERR_TIMEOUT" },
    ]);
    expect(env.bob.audit.of("handshake").length).toBe(1); // only the genuine one
    const next = env.accept("nothing more", 100);
    await expect(next).rejects.toThrow(/timed out/);
    secrets.signSeed.fill(0);
    secrets.sealSecret.fill(0);
  });

  it("a dial to a responder that never answers ends at handshakeTimeoutMs (ERR_TIMEOUT), or at its AbortSignal", async () => {
    const net = memory();
    const alice = await peer("alice");
    const silent = await net.listen("mem://silent");
    cleanups.push(() => silent.close());
    const ta = over(alice, net, { handshakeTimeoutMs: 150 });
    const t0 = performance.now();
    await rejectsCode(ta.dial("mem://silent"), "ERR_TIMEOUT");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(140);
    expect(alice.audit.of("handshake_failed")).toEqual([{ event: "handshake_failed", decision: "deny", reason: "ERR_TIMEOUT" }]);
    const ac = new AbortController();
    const dialing = over(alice, net).dial("mem://silent", { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await rejectsCode(dialing, "ERR_ABORTED");
    const reason = new SealwireError("ERR_TIMEOUT", "caller's deadline");
    const dialing2 = over(alice, net).dial("mem://silent", { signal: AbortSignal.abort(reason) });
    expect(await dialing2.catch((e: unknown) => e)).toBe(reason);
    expect(alice.audit.events.length).toBe(1); // the caller's own aborts are not refusals
  });
});

describe("noise(): audit, wiping, inspection", () => {
  it("records handshakes in a real AuditLog, and refuses the connection when the audit sink fails", async () => {
    const env = await aliceAndBob();
    const bobSigner = {
      id: env.bob.identity.id,
      kid: env.bob.identity.kid,
      publicKey: env.bob.identity.signPublicKey,
      sign: (m: Uint8Array) => env.bob.identity.sign(m),
    };
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer: bobSigner });
    const tb = over(env.bob, env.inner, { audit: log });
    const l = await tb.listen("mem://bob-audited");
    cleanups.push(() => l.close());
    const [c, s] = await Promise.all([env.ta.dial("mem://bob-audited", { remotePeer: "bob" }), acceptor(l)()]);
    expect(s.remotePeer).toBe("alice");
    c.abort();
    const mallory = await peer("mallory");
    trusts(mallory, env.bob, false);
    await rejectsCode(over(mallory, env.inner).dial("mem://bob-audited"), "ERR_NOISE_HANDSHAKE");
    await eventually(() => sink.text().includes("handshake_failed"), "the refusal record");
    const records = sink.lines().map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(records.find((r) => r["event"] === "handshake")).toMatchObject({ peer: "alice", kid: env.alice.identity.kid, decision: "allow" });
    expect(records.find((r) => r["event"] === "handshake_failed")).toMatchObject({ decision: "deny", reason: "ERR_UNTRUSTED_PEER" });
    await log.close();

    // A sink that fails: no connection is handed out on the side that cannot record it.
    env.bob.audit.fail = true;
    await rejectsCode(env.ta.dial("mem://bob"), "ERR_NOISE_HANDSHAKE"); // XX: bob confirms only after recording
    env.bob.audit.fail = false;
    env.alice.audit.fail = true;
    await rejectsCode(env.ta.dial("mem://bob"), "ERR_AUDIT_IO"); // alice records before handing out
  });

  it("with onRefusal too, anonymous handshake failures are counted there instead of one audit record each", async () => {
    const env = await aliceAndBob();
    const sink = memorySink();
    const log = await AuditLog.open(sink, {
      signer: { id: env.bob.identity.id, kid: env.bob.identity.kid, publicKey: env.bob.identity.signPublicKey, sign: (m: Uint8Array) => env.bob.identity.sign(m) },
    });
    const refusals: { reason: string; source?: string | undefined }[] = [];
    const tb = over(env.bob, env.inner, { audit: log, onRefusal: (r: { reason: string; source?: string | undefined }) => void refusals.push(r) });
    const l = await tb.listen("mem://bob-counted");
    cleanups.push(() => l.close());
    const mallory = await peer("mallory");
    trusts(mallory, env.bob, false);
    for (let i = 0; i < 5; i++) await rejectsCode(over(mallory, env.inner).dial("mem://bob-counted"), "ERR_NOISE_HANDSHAKE");
    const raw = await env.inner.dial("mem://bob-counted");
    raw.send(new Uint8Array(40).fill(7)); // garbage first message
    await eventually(() => refusals.length >= 6, "six refusals counted");
    expect(new Set(refusals.map((r) => r.reason))).toEqual(new Set(["noise_handshake_failed"]));
    const [c, s] = await Promise.all([env.ta.dial("mem://bob-counted", { remotePeer: "bob" }), acceptor(l)()]);
    expect(s.remotePeer).toBe("alice");
    c.abort();
    await log.close();
    const events = sink.lines().map((line) => (JSON.parse(line) as { event: string }).event);
    expect(events).toContain("handshake"); // successes are still recorded one by one
    expect(events).not.toContain("handshake_failed");
  });

  it("destroys both CipherStates of each end on abort and on a graceful close", async () => {
    const env = await aliceAndBob();
    const split = vi.spyOn(HandshakeState.prototype, "splitByRole");
    /** The session CipherStates handed to the connections since the last call. */
    const sessionKeys = (): CipherState[] => {
      const out = split.mock.results.flatMap((r) => {
        const v = r.value as { send: CipherState; receive: CipherState };
        return [v.send, v.receive];
      });
      split.mockClear();
      return out;
    };
    const a = await connected(env);
    const keysA = sessionKeys();
    expect(keysA.length).toBe(4);
    expect(keysA.every((k) => k.hasKey())).toBe(true);
    a.client.abort();
    // The aborting end wipes its pair at once (not a tick later); the other end when it learns of the abort.
    expect(keysA.filter((k) => !k.hasKey()).length).toBe(2);
    await new FrameReader(a.server).untilError();
    await a.server.closed;
    expect(keysA.map((k) => k.hasKey())).toEqual([false, false, false, false]);

    const b = await connected(env);
    const keysB = sessionKeys();
    b.client.send(utf8("x"));
    const serverReader = new FrameReader(b.server);
    const clientReader = new FrameReader(b.client);
    await b.client.close();
    expect((await serverReader.rest()).length).toBe(1);
    expect(await clientReader.rest()).toEqual([]);
    expect(keysB.map((k) => k.hasKey())).toEqual([false, false, false, false]);
  });

  it("never shows keys or frames in util.inspect or JSON", async () => {
    const env = await aliceAndBob();
    const { client, server } = await connected(env);
    client.send(utf8("SECRET-MARKER-123"));
    for (const o of [env.ta, client, server, env.listener]) {
      const s = inspect(o, { depth: 10, showHidden: true }) + JSON.stringify(o);
      expect(s).not.toMatch(/SECRET|83, 69, 67/);
    }
    expect(inspect(client)).toBe("NoiseConnection(bob at mem://bob, open)");
  });
});

describe("noise(): agents", () => {
  it("createAgent over noise(memory()) sends, requests and replies; an agent the recipient does not trust gets ERR_NO_ROUTE", async () => {
    const net = memory();
    const ids = await Promise.all(["alice", "bob", "mallory"].map((id) => generateIdentity(id)));
    const [alice, bob, mallory] = ids as [Identity, Identity, Identity];
    const crewTrust = new TrustStore();
    crewTrust.add(alice.publicIdentity);
    crewTrust.add(bob.publicIdentity);
    const malloryTrust = new TrustStore();
    malloryTrust.add(bob.publicIdentity);
    malloryTrust.add(mallory.publicIdentity);
    const audit = new RecordingAudit();
    const agent = (identity: Identity, trust: TrustStore) =>
      createAgent({ identity, trust, transport: noise({ transport: net, identity, trust, audit }) });
    const a = await agent(alice, crewTrust);
    const b = await agent(bob, crewTrust);
    const m = await agent(mallory, malloryTrust);
    cleanups.push(async () => {
      await Promise.all([a.close(), b.close(), m.close()]);
    });
    void (async () => {
      for await (const msg of b.messages()) if (msg.type === "req") await msg.reply({ echo: msg.data });
    })();
    const reply = await a.request("bob", "over noise", { timeoutMs: 5000 });
    expect(reply.from).toBe("bob");
    expect(reply.data).toEqual({ echo: "over noise" });
    const err = await m.send("bob", "let me in").then(
      () => undefined,
      (e: unknown) => e,
    );
    expectCode(err, "ERR_NO_ROUTE");
    expect(audit.of("handshake").map((e) => e.reason).sort()).toEqual([
      "noise:IK:initiator",
      "noise:IK:initiator",
      "noise:IK:responder",
      "noise:IK:responder",
    ]);
    await eventually(() => audit.of("handshake_failed").some((e) => e.reason === "ERR_UNTRUSTED_PEER"), "bob refused mallory");
  });
});
