/**
 * Session age in the Noise secure-channel transport (`maxSessionAgeMs` in `transports/noise/channel.ts`): the
 * option's validation; the responder ending a channel on time and the initiator answering (both ends close
 * cleanly, and the next dial handshakes again with fresh ephemeral keys); no frame lost across the close in
 * either direction, whichever side ends it and with latency on the wire (every frame `send` accepted arrives, in
 * order, and the first refused `send` throws ERR_CONNECTION_CLOSED); a peer that does not read (the close waits a
 * bounded time); a wire cut during the close (reported, not taken for a clean end); and two agents streaming over
 * `noise(memory())` across several re-handshakes, directly and through a hub, with nothing lost.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-session-age.test.ts
 * ```
 */
import { afterEach, describe, expect, it } from "vitest";
import { createAgent, type Agent, type ReceivedMessage } from "../src/agent.js";
import { SealwireError } from "../src/errors.js";
import { createHub } from "../src/hub.js";
import { generateIdentity, type Identity } from "../src/identity.js";
import { transportSymbol, type Connection, type Listener, type Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory, type MemoryInit } from "../transports/memory.js";
import { noise, type NoiseAuditEvent, type NoiseAuditSink, type NoiseInit } from "../transports/noise/index.js";
import {
  FrameReader,
  checkFrame,
  expectCode,
  makeFrame,
  rejectsCode,
  throwsCode,
  within,
} from "./transport.compliance.js";

const KiB = 1024;
const DAY_MS = 24 * 3_600_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** An audit sink that keeps the events. */
class RecordingAudit implements NoiseAuditSink {
  readonly events: NoiseAuditEvent[] = [];
  async append(event: NoiseAuditEvent): Promise<unknown> {
    this.events.push(event);
    return undefined;
  }
  handshakes(reason?: string): NoiseAuditEvent[] {
    return this.events.filter((e) => e.event === "handshake" && (reason === undefined || e.reason === reason));
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

interface WireEvent {
  side: "dialer" | "acceptor";
  length: number;
  at: number;
}

/**
 * Wraps a transport and logs every frame each side sends, in one global order, with its time; `drop` may drop a
 * frame (a man in the middle).
 */
function tap(inner: Transport, drop?: (side: WireEvent["side"], index: number, frame: Uint8Array) => boolean) {
  const log: WireEvent[] = [];
  const wrap = (c: Connection, side: WireEvent["side"]): Connection => {
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
        log.push({ side, length: frame.length, at: performance.now() });
        if (drop?.(side, i++, frame) === true) return true;
        return c.send(frame);
      },
      drain: (o) => c.drain(o),
      close: (o) => c.close(o),
      abort: (e) => c.abort(e),
      [Symbol.asyncIterator]: () => c[Symbol.asyncIterator](),
    };
  };
  const transport: Transport = {
    [transportSymbol]: true,
    kind: inner.kind,
    maxFrameBytes: inner.maxFrameBytes,
    async dial(addr, options) {
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
  return { transport, log };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Alice and Bob trust each other; Bob listens at mem://bob. Returns a function that dials and accepts. */
async function aliceAndBob(opts: { inner?: Transport; net?: MemoryInit; alice?: Partial<NoiseInit>; bob?: Partial<NoiseInit> } = {}) {
  const alice = await peer("alice");
  const bob = await peer("bob");
  alice.trust.add(bob.identity.publicIdentity);
  bob.trust.add(alice.identity.publicIdentity);
  const inner = opts.inner ?? memory(opts.net);
  const ta = noise({ transport: inner, identity: alice.identity, trust: alice.trust, audit: alice.audit, ...opts.alice });
  const tb = noise({ transport: inner, identity: bob.identity, trust: bob.trust, audit: bob.audit, ...opts.bob });
  const listener: Listener = await tb.listen("mem://bob");
  cleanups.push(() => listener.close());
  const accepted = listener[Symbol.asyncIterator]();
  const connect = async (): Promise<{ client: Connection; server: Connection; at: number }> => {
    const [client, r] = await Promise.all([within(ta.dial("mem://bob", { remotePeer: "bob" }), "dial"), within(accepted.next(), "accept")]);
    if (r.done === true) throw new Error("listener ended");
    const server = r.value;
    cleanups.push(() => {
      client.abort();
      server.abort();
    });
    return { client, server, at: performance.now() };
  };
  return { alice, bob, ta, tb, connect };
}

/**
 * Sends numbered frames on `c` until `send` throws; awaits drain whenever asked. Returns how many frames `send`
 * accepted and what it threw at the end.
 */
async function pumpUntilRefused(c: Connection, tag: number, size: number): Promise<{ accepted: number; error: unknown }> {
  for (let i = 0; ; i++) {
    let ok: boolean;
    try {
      ok = c.send(makeFrame(tag, i, size));
    } catch (error) {
      return { accepted: i, error };
    }
    if (!ok) await c.drain().catch(() => {}); // a close while waiting: the next send says so
    if (i % 16 === 15) await sleep(1);
  }
}

/** Reads `c` to its end; fails on an error. Checks every frame is the next one of stream `tag`. */
async function readAllInOrder(c: Connection, tag: number, size: number): Promise<number> {
  const frames = await new FrameReader(c).rest("the stream to end cleanly", 10_000);
  frames.forEach((f, i) => {
    const problem = checkFrame(f, tag, i, size);
    if (problem !== undefined) expect.fail(problem);
  });
  return frames.length;
}

// ---------------------------------------------------------------------------------------------------------------

describe("noise(): maxSessionAgeMs", () => {
  it("is validated like the other options (integer from 100 ms to 30 days)", async () => {
    const p = await peer("opt");
    const base = { transport: memory(), identity: p.identity, trust: p.trust };
    for (const bad of [0, 99, -1, 1.5, "1000", Number.NaN, Number.POSITIVE_INFINITY, 30 * DAY_MS + 1, null]) {
      const err = throwsCode(() => noise({ ...base, maxSessionAgeMs: bad as never }), "ERR_INVALID_ARGUMENT");
      expect(err.message).toMatch(/maxSessionAgeMs/);
    }
    for (const ok of [100, 200, 3_600_000, 30 * DAY_MS, undefined]) noise({ ...base, maxSessionAgeMs: ok });
  });

  it("the responder ends the channel on time, the initiator answers; both close cleanly and the next dial handshakes again", async () => {
    const wire = tap(memory());
    const env = await aliceAndBob({ inner: wire.transport, alice: { maxSessionAgeMs: 200 }, bob: { maxSessionAgeMs: 200 } });
    const first = await env.connect();
    const readers = [new FrameReader(first.client), new FrameReader(first.server)];
    first.client.send(makeFrame(1, 0, 100));
    first.server.send(makeFrame(2, 0, 100));
    const [toServer, toClient] = await Promise.all([readers[1]!.rest("server end", 3000), readers[0]!.rest("client end", 3000)]);
    expect([toServer.length, toClient.length]).toEqual([1, 1]);
    expect([await first.client.closed, await first.server.closed]).toEqual([undefined, undefined]);
    const ended = performance.now() - first.at;
    expect(ended).toBeGreaterThanOrEqual(195);
    expect(ended).toBeLessThan(3000);
    expect(first.client.isOpen || first.server.isOpen).toBe(false);
    throwsCode(() => first.client.send(new Uint8Array(1)), "ERR_CONNECTION_CLOSED");
    // Who closed first: the responder's END (its last frame, 17 bytes) precedes the initiator's answer.
    const lastOf = (side: WireEvent["side"]) => wire.log.filter((e) => e.side === side).at(-1)!;
    expect(lastOf("acceptor").length).toBe(17);
    expect(lastOf("dialer").length).toBe(17);
    expect(lastOf("acceptor").at).toBeLessThanOrEqual(lastOf("dialer").at);
    expect(lastOf("acceptor").at - first.at).toBeGreaterThanOrEqual(195);
    // The next dial is a new handshake (audited on both sides).
    const second = await env.connect();
    expect(second.client.isOpen && second.server.isOpen).toBe(true);
    expect(env.alice.audit.handshakes("noise:IK:initiator").length).toBe(2);
    expect(env.bob.audit.handshakes("noise:IK:responder").length).toBe(2);
  });

  it("fresh ephemeral keys per session: the first handshake messages of successive sessions differ", async () => {
    const seen: string[] = [];
    const wire = tap(memory(), (side, index, frame) => {
      if (side === "dialer" && index === 0) seen.push(Buffer.from(frame.subarray(1, 33)).toString("hex")); // IK: -> e
      return false;
    });
    const env = await aliceAndBob({ inner: wire.transport, alice: { maxSessionAgeMs: 100 }, bob: { maxSessionAgeMs: 100 } });
    for (let i = 0; i < 3; i++) {
      const { client, server } = await env.connect();
      // Both read (so each answers the other's END); the session then ends by itself.
      const ends = [new FrameReader(client).rest("alice's end", 3000), new FrameReader(server).rest("bob's end", 3000)];
      expect(await Promise.all(ends)).toEqual([[], []]);
      expect(await within(client.closed, "the session to end for age", 3000)).toBeUndefined();
    }
    expect(seen.length).toBe(3);
    expect(new Set(seen).size).toBe(3);
  });

  for (const [name, alice, bob, net] of [
    ["both ends 200 ms", 200, 200, {}],
    ["only the responder has a short age", undefined, 200, {}],
    ["only the initiator has a short age (its backstop)", 200, undefined, {}],
    ["both ends, 3 ms latency on the wire", 200, 200, { latencyMs: 3 }],
    ["both ends, small buffers (backpressure)", 200, 200, { highWaterMarkBytes: 8 * KiB }],
  ] as const) {
    it(`no frame is lost across the close, both directions at full speed (${name})`, async () => {
      const env = await aliceAndBob({
        net,
        alice: alice === undefined ? {} : { maxSessionAgeMs: alice },
        bob: bob === undefined ? {} : { maxSessionAgeMs: bob },
      });
      const { client, server, at } = await env.connect();
      const [up, down, gotUp, gotDown] = await Promise.all([
        pumpUntilRefused(client, 1, 700),
        pumpUntilRefused(server, 2, 300),
        readAllInOrder(server, 1, 700),
        readAllInOrder(client, 2, 300),
      ]);
      // Every frame send accepted arrived, in order; the first refusal is a coded "closed", not an abort.
      expect(gotUp).toBe(up.accepted);
      expect(gotDown).toBe(down.accepted);
      expect(up.accepted).toBeGreaterThan(10);
      expect(down.accepted).toBeGreaterThan(10);
      expectCode(up.error, "ERR_CONNECTION_CLOSED");
      expectCode(down.error, "ERR_CONNECTION_CLOSED");
      expect([await client.closed, await server.closed]).toEqual([undefined, undefined]);
      expect(performance.now() - at).toBeGreaterThanOrEqual(195);
    });
  }

  it("a peer that does not read: the close waits at most handshakeTimeoutMs for its END, then closes the wire; nothing is lost", async () => {
    const env = await aliceAndBob({ bob: { maxSessionAgeMs: 200, handshakeTimeoutMs: 300 } });
    const { client, server, at } = await env.connect();
    for (let i = 0; i < 5; i++) client.send(makeFrame(1, i, 64));
    server.send(makeFrame(2, 0, 64));
    const serverReader = new FrameReader(server);
    expect((await serverReader.take(5)).every((f, i) => checkFrame(f, 1, i, 64) === undefined)).toBe(true);
    // Alice does not read, so she never answers bob's END: bob gives up after 300 ms and closes the wire.
    expect(await within(server.closed, "bob's close", 3000)).toBeUndefined();
    const took = performance.now() - at;
    expect(took).toBeGreaterThanOrEqual(480);
    expect(took).toBeLessThan(2500);
    expect(await serverReader.rest()).toEqual([]); // bob ended it himself: a clean end for him
    // Alice reads later: bob's frame, then his END (a clean end).
    const late = await new FrameReader(client).rest();
    expect(late.length).toBe(1);
    expect(checkFrame(late[0]!, 2, 0, 64)).toBeUndefined();
    await rejectsCode(client.drain(), "ERR_CONNECTION_CLOSED");
    throwsCode(() => client.send(new Uint8Array(1)), "ERR_CONNECTION_CLOSED");
  });

  it("a wire that ends without the peer's END while the close waits for it is reported as a cut (ERR_CONNECTION_ABORTED)", async () => {
    // The man in the middle drops alice's END (17 bytes, after her first two messages: IK message 1 and CONFIRM).
    const wire = tap(memory(), (side, index, frame) => side === "dialer" && index >= 2 && frame.length === 17);
    const env = await aliceAndBob({ inner: wire.transport, bob: { maxSessionAgeMs: 200 } });
    const { client, server } = await env.connect();
    client.send(makeFrame(1, 0, 64));
    const clientEnd = new FrameReader(client).rest("alice's end");
    const { frames, error } = await new FrameReader(server).untilError("bob's reader", 3000);
    expect(frames.length).toBe(1);
    expectCode(error, "ERR_CONNECTION_ABORTED");
    expect(await clientEnd).toEqual([]);
  });

  it("an established connection nobody accepted yet still ends for age (the listener's backlog)", async () => {
    const env = await aliceAndBob({ bob: { maxSessionAgeMs: 100, handshakeTimeoutMs: 200 } });
    const client = await within(env.ta.dial("mem://bob", { remotePeer: "bob" }), "dial");
    cleanups.push(() => client.abort());
    // Alice reads (and so answers bob's END); bob's side was never taken from the listener.
    expect(await new FrameReader(client).rest("alice's end", 3000)).toEqual([]);
    expect(await within(client.closed, "alice's close")).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Agents

interface Crew {
  ids: Record<string, Identity>;
  trust: TrustStore;
  audits: Record<string, RecordingAudit>;
  errors: SealwireError[];
}

async function crew(names: string[]): Promise<Crew> {
  const trust = new TrustStore();
  const ids: Record<string, Identity> = {};
  const audits: Record<string, RecordingAudit> = {};
  for (const n of names) {
    ids[n] = await generateIdentity(n);
    trust.add(ids[n]!.publicIdentity);
    audits[n] = new RecordingAudit();
  }
  return { ids, trust, audits, errors: [] };
}

/** Collects `n` messages from `agent` (in arrival order), bounded in time. */
async function collect(agent: Agent, n: number, ms: number): Promise<ReceivedMessage[]> {
  const out: ReceivedMessage[] = [];
  await within(
    (async () => {
      for await (const m of agent.messages()) {
        out.push(m);
        if (out.length === n) return;
      }
    })(),
    `${n} messages`,
    ms,
  );
  return out;
}

const idsOf = (ms: ReceivedMessage[]): number[] => ms.map((m) => (m.data as { i: number }).i);

describe("noise(): maxSessionAgeMs under agents", () => {
  it("direct mode: a stream keeps flowing across several re-handshakes, nothing lost, in order (sequential), none lost (pipelined)", async () => {
    const c = await crew(["alice", "bob"]);
    const net = memory();
    const start = (id: string) =>
      createAgent({
        identity: c.ids[id]!,
        trust: c.trust,
        transport: noise({ transport: net, identity: c.ids[id]!, trust: c.trust, audit: c.audits[id]!, maxSessionAgeMs: 200 }),
        onError: (e) => c.errors.push(e),
      });
    const a = await start("alice");
    const b = await start("bob");
    cleanups.push(async () => {
      await Promise.all([a.close(), b.close()]);
    });
    // Sequential: each send awaited, about 1 s in all (five sessions or so).
    const N = 200;
    const got = collect(b, N, 15_000);
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      await a.send("bob", { i });
      if (i % 2 === 1) await sleep(10);
    }
    const received = await got;
    expect(performance.now() - t0).toBeGreaterThan(900);
    expect(idsOf(received)).toEqual(Array.from({ length: N }, (_, i) => i));
    const sessions = c.audits["alice"]!.handshakes("noise:IK:initiator").length;
    expect(sessions).toBeGreaterThanOrEqual(4);
    expect(c.audits["bob"]!.handshakes("noise:IK:responder").length).toBe(sessions);

    // Pipelined: batches of concurrent sends; every one resolves and arrives exactly once.
    const M = 300;
    const got2 = collect(b, M, 15_000);
    for (let i = 0; i < M; i += 25) {
      await Promise.all(Array.from({ length: 25 }, (_, k) => a.send("bob", { i: N + i + k })));
      await sleep(60);
    }
    const ids2 = idsOf(await got2).sort((x, y) => x - y);
    expect(ids2).toEqual(Array.from({ length: M }, (_, k) => N + k));
    expect(c.audits["alice"]!.handshakes("noise:IK:initiator").length).toBeGreaterThanOrEqual(sessions + 3);
    expect(c.errors.map((e) => e.code)).toEqual([]);
  });

  it("hub mode: agents reconnect to the hub as sessions age out; streams both ways through the hub lose nothing", async () => {
    const c = await crew(["hub", "alice", "bob"]);
    const net = memory({ latencyMs: 2 }); // frames in flight when a session ends
    const transport = (id: string) =>
      noise({ transport: net, identity: c.ids[id]!, trust: c.trust, audit: c.audits[id]!, maxSessionAgeMs: 200 });
    const hubErrors: SealwireError[] = [];
    const hub = await createHub({ identity: c.ids["hub"]!, trust: c.trust, transport: transport("hub"), listen: "mem://hub", onError: (e) => hubErrors.push(e) });
    const start = (id: string) =>
      createAgent({
        identity: c.ids[id]!,
        trust: c.trust,
        transport: transport(id),
        hub: "mem://hub",
        hubPeer: "hub",
        reconnect: { minMs: 10, maxMs: 50 },
        onError: (e) => c.errors.push(e),
      });
    const a = await start("alice");
    const b = await start("bob");
    cleanups.push(async () => {
      await Promise.all([a.close(), b.close()]);
      await hub.close();
    });
    // Each agent sends while it receives, so a close always finds frames in flight both ways.
    const N = 160;
    const gotByBob = collect(b, N, 15_000);
    const gotByAlice = collect(a, N, 15_000);
    const stream = async (from: Agent, to: string): Promise<void> => {
      for (let i = 0; i < N; i++) {
        await from.send(to, { i });
        if (i % 2 === 1) await sleep(12);
      }
    };
    const t0 = performance.now();
    await Promise.all([stream(a, "bob"), stream(b, "alice")]);
    const [toBob, toAlice] = await Promise.all([gotByBob, gotByAlice]);
    expect(performance.now() - t0).toBeGreaterThan(900);
    expect(idsOf(toBob)).toEqual(Array.from({ length: N }, (_, i) => i));
    expect(idsOf(toAlice)).toEqual(Array.from({ length: N }, (_, i) => i));
    // Both agents re-handshook with the hub several times.
    expect(c.audits["alice"]!.handshakes("noise:IK:initiator").length).toBeGreaterThanOrEqual(4);
    expect(c.audits["bob"]!.handshakes("noise:IK:initiator").length).toBeGreaterThanOrEqual(4);
    expect(c.errors.map((e) => e.code)).toEqual([]);
    expect(hubErrors.map((e) => e.code)).toEqual([]);
  });
});
