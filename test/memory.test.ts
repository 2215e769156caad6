/**
 * Tests for the in-memory transport: the shared compliance suite under three configurations (defaults, small
 * limits, simulated latency), then what only the memory transport promises: isolated networks, address rules,
 * the exact limits its options set, backlog, latency, and that aborted connections drop their frames.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/memory.test.ts
 * ```
 */
import { inspect } from "node:util";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { memory, type MemoryInit } from "sealwire/transports/memory";
import { describe, expect, it } from "vitest";
import { SealwireError } from "../src/errors.js";
import { isTransport, type Connection, type Listener, type Transport } from "../src/transport.js";
import {
  FrameReader,
  checkFrame,
  expectCode,
  makeFrame,
  rejectsCode,
  throwsCode,
  tick,
  transportCompliance,
  within,
} from "./transport.compliance.js";

const KiB = 1024;
const MiB = 1024 * KiB;
/** Bytes of bookkeeping the memory transport charges per queued frame (documented on MemoryInit). */
const OVERHEAD = 16;

function complianceSetup(init?: MemoryInit) {
  return async () => {
    const transport = memory(init);
    let n = 0;
    return { transport, listenAddr: () => `mem://compliance-${n++}`, cleanup: async () => {} };
  };
}

transportCompliance("memory", complianceSetup());
transportCompliance(
  "memory (small limits)",
  complianceSetup({ maxFrameBytes: 32 * KiB, highWaterMarkBytes: 8 * KiB, maxQueuedBytes: 48 * KiB, backlog: 32 }),
);
transportCompliance("memory (latency)", complianceSetup({ latencyMs: 2, highWaterMarkBytes: 64 * KiB }));

/** Opens a listener on `t` at `addr` and returns it with a dialled pair. */
async function pairOn(
  t: Transport,
  addr: string,
): Promise<{ listener: Listener; client: Connection; server: Connection }> {
  const listener = await t.listen(addr);
  const accepted = listener[Symbol.asyncIterator]().next();
  const client = await t.dial(addr);
  const server = (await within(accepted, "accept")).value as Connection;
  return { listener, client, server };
}

describe("memory transport", () => {
  it("identifies itself and maps agent ids to mem:// addresses", () => {
    const t = memory();
    expect(isTransport(t)).toBe(true);
    expect(t.kind).toBe("memory");
    expect(t.maxFrameBytes).toBe(4 * MiB);
    expect(t.addressFor!("alice")).toBe("mem://alice");
    expect(t.addressFor!("agent-ü:7")).toBe("mem://agent-ü:7");
    for (const bad of ["", "a b", "a#b", "tab\t", "nl\n", "nul\0", "x".repeat(257), "\u200b", 42, null]) {
      throwsCode(() => t.addressFor!(bad as never), "ERR_INVALID_ARGUMENT");
    }
    expect(t.addressFor!("x".repeat(256))).toBe(`mem://${"x".repeat(256)}`);
  });

  it("refuses malformed addresses in listen and dial", async () => {
    const t = memory();
    for (const bad of ["mem://", "MEM://a", "mem:/a", "ws://a", "mem://a#1", "mem://a b", " mem://a", "mem://\u0007"]) {
      await rejectsCode(t.listen(bad), "ERR_INVALID_ARGUMENT", `listen(${JSON.stringify(bad)})`);
      await rejectsCode(t.dial(bad), "ERR_INVALID_ARGUMENT", `dial(${JSON.stringify(bad)})`);
    }
  });

  it("each memory() call is an isolated network", async () => {
    const a = memory();
    const b = memory();
    const la = await a.listen("mem://shared");
    await rejectsCode(b.dial("mem://shared"), "ERR_CONNECTION_REFUSED");
    const lb = await b.listen("mem://shared"); // the same name is free on the other network
    const [ca, cb] = await Promise.all([a.dial("mem://shared"), b.dial("mem://shared")]);
    const [sa, sb] = await Promise.all([la[Symbol.asyncIterator]().next(), lb[Symbol.asyncIterator]().next()]);
    ca.send(new Uint8Array([1]));
    cb.send(new Uint8Array([2]));
    expect([...(await new FrameReader(sa.value as Connection).next())!]).toEqual([1]);
    expect([...(await new FrameReader(sb.value as Connection).next())!]).toEqual([2]);
    await Promise.all([la.close(), lb.close()]);
    ca.abort();
    cb.abort();
  });

  it("reports addresses and no authenticated peer", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://bob");
    const second = await t.dial("mem://bob", { remotePeer: "bob" }); // remotePeer is ignored, not verified
    expect(listener.addr).toBe("mem://bob");
    expect(client.remoteAddr).toBe("mem://bob");
    expect(server.remoteAddr).toMatch(/^mem:\/\/bob#\d+$/);
    expect(client.remotePeer).toBeUndefined();
    expect(server.remotePeer).toBeUndefined();
    expect(second.remotePeer).toBeUndefined();
    await listener.close();
    client.abort();
  });

  it("delivered frames are fresh plain Uint8Arrays, owned by the receiver", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://fresh");
    const sent = Buffer.from("hello");
    client.send(sent);
    const got = (await new FrameReader(server).next())!;
    expect(Object.getPrototypeOf(got)).toBe(Uint8Array.prototype);
    expect(got.buffer).not.toBe(sent.buffer);
    expect(got.byteOffset).toBe(0);
    expect(got.buffer.byteLength).toBe(5);
    await listener.close();
    client.abort();
  });

  it("send returns false exactly at the default high-water mark, ERR_QUEUE_FULL at the default hard limit", async () => {
    const t = memory();
    const { listener, client } = await pairOn(t, "mem://limits");
    const frame = new Uint8Array(64 * KiB);
    const cost = frame.length + OVERHEAD;
    const results: boolean[] = [];
    for (let i = 0; i < 16; i++) results.push(client.send(frame));
    // 15 frames stay below 1 MiB; the 16th reaches it.
    expect(results.indexOf(false)).toBe(15);
    expect(15 * cost).toBeLessThan(MiB);
    // Default hard limit: max(8 x 1 MiB, 1 MiB + 4 MiB + 16) = 8 MiB.
    let accepted = 16;
    while (accepted * cost + cost <= 8 * MiB) {
      client.send(frame);
      accepted++;
    }
    throwsCode(() => client.send(frame), "ERR_QUEUE_FULL");
    expect(accepted).toBe(Math.floor((8 * MiB) / cost));
    // A smaller frame that still fits is accepted: the limit is on bytes, not a sticky failure.
    const room = 8 * MiB - accepted * cost - OVERHEAD;
    expect(client.send(new Uint8Array(room))).toBe(false);
    throwsCode(() => client.send(new Uint8Array(0)), "ERR_QUEUE_FULL");
    await listener.close();
    client.abort();
  });

  it("drain resolves once the peer has read down to half the high-water mark", async () => {
    const t = memory({ maxFrameBytes: 1000, highWaterMarkBytes: 1000 });
    const { listener, client, server } = await pairOn(t, "mem://lowwater");
    const frame = new Uint8Array(100 - OVERHEAD); // costs exactly 100
    for (let i = 0; i < 9; i++) expect(client.send(frame)).toBe(true);
    expect(client.send(frame)).toBe(false); // 1000 queued
    let drained = false;
    const draining = client.drain().then(() => (drained = true));
    const reader = new FrameReader(server);
    await reader.take(4); // 600 queued: send would return true, but waking here would cost a wake-up per frame
    await tick();
    expect(drained).toBe(false);
    await reader.take(1); // 500 queued: half the mark
    await within(draining, "drain() at the low-water mark");
    await listener.close();
    client.abort();
  });

  it("bounds a flood of empty frames (each one costs bookkeeping bytes)", async () => {
    const t = memory({ maxFrameBytes: 64, highWaterMarkBytes: 160, maxQueuedBytes: 320 });
    const { listener, client } = await pairOn(t, "mem://empty");
    let accepted = 0;
    let ok = true;
    while (ok && accepted < 1000) {
      ok = client.send(new Uint8Array(0));
      accepted++;
    }
    expect(accepted).toBe(10); // 10 x 16 = 160 reaches the high-water mark
    while (accepted < 20) {
      client.send(new Uint8Array(0));
      accepted++;
    }
    throwsCode(() => client.send(new Uint8Array(0)), "ERR_QUEUE_FULL");
    await listener.close();
    client.abort();
  });

  it("a custom maxQueuedBytes is honoured", async () => {
    const t = memory({ maxFrameBytes: 1000, highWaterMarkBytes: 1000, maxQueuedBytes: 5000 });
    const { listener, client } = await pairOn(t, "mem://custom");
    const frame = new Uint8Array(1000 - OVERHEAD);
    for (let i = 0; i < 5; i++) client.send(frame);
    throwsCode(() => client.send(new Uint8Array(0)), "ERR_QUEUE_FULL");
    await listener.close();
    client.abort();
  });

  it("validates options with ERR_INVALID_ARGUMENT", () => {
    const bad: unknown[] = [
      null,
      42,
      "opts",
      [],
      { maxFrameBytes: 0 },
      { maxFrameBytes: -1 },
      { maxFrameBytes: 1.5 },
      { maxFrameBytes: Number.NaN },
      { maxFrameBytes: Number.POSITIVE_INFINITY },
      { maxFrameBytes: "4096" },
      { maxFrameBytes: 2 * 1024 * MiB },
      { highWaterMarkBytes: 0 },
      { highWaterMarkBytes: 10n },
      { maxQueuedBytes: 1 },
      { maxFrameBytes: 1000, highWaterMarkBytes: 1000, maxQueuedBytes: 2015 }, // needs 2016
      { backlog: 0 },
      { backlog: 1e9 },
      { latencyMs: -1 },
      { latencyMs: Number.NaN },
      { latencyMs: 3_600_000 },
      { latencyMs: "5" },
      { maxFrameByte: 10 }, // typo: unknown options are refused, not ignored
    ];
    for (const init of bad) {
      const err = throwsCode(() => memory(init as never), "ERR_INVALID_ARGUMENT");
      expect(err.message).toMatch(/memory/);
    }
    // The boundary values are accepted.
    expect(() => memory({ maxFrameBytes: 1000, highWaterMarkBytes: 1000, maxQueuedBytes: 2016 })).not.toThrow();
    expect(() => memory({ maxFrameBytes: 1, highWaterMarkBytes: 1, backlog: 1, latencyMs: 0 })).not.toThrow();
    expect(() => memory({ latencyMs: undefined, backlog: undefined })).not.toThrow();
    expect(() => memory(undefined)).not.toThrow();
  });

  it("defaults the hard limit to at least one max frame above the high-water mark", async () => {
    const t = memory({ highWaterMarkBytes: 1000, maxFrameBytes: 100_000 });
    const { listener, client } = await pairOn(t, "mem://bigframes");
    expect(client.send(new Uint8Array(999 - OVERHEAD))).toBe(true);
    // queued: 999 < 1000, so a max frame must still fit: the default is max(8000, 1000 + 100000 + 16).
    expect(client.send(new Uint8Array(100_000))).toBe(false);
    throwsCode(() => client.send(new Uint8Array(1)), "ERR_QUEUE_FULL");
    await listener.close();
    client.abort();
  });

  it("backlog limits dialled-but-unaccepted connections; closing the listener aborts them", async () => {
    const t = memory({ backlog: 2 });
    const l = await t.listen("mem://busy");
    const c1 = await t.dial("mem://busy");
    const c2 = await t.dial("mem://busy");
    const err = await rejectsCode(t.dial("mem://busy"), "ERR_CONNECTION_REFUSED");
    expect(err.message).toMatch(/backlog/);
    const it1 = l[Symbol.asyncIterator]();
    const s1 = (await it1.next()).value as Connection;
    const c3 = await t.dial("mem://busy"); // room again after one accept
    c1.send(new Uint8Array([1]));
    expect([...(await new FrameReader(s1).next())!]).toEqual([1]);
    // c2 and c3 were never accepted: closing the listener aborts them, while the accepted one stays open.
    await l.close();
    for (const c of [c2, c3]) {
      expectCode((await new FrameReader(c).untilError()).error, "ERR_CONNECTION_ABORTED");
      expectCode(await c.closed, "ERR_CONNECTION_ABORTED");
    }
    expect(c1.isOpen && s1.isOpen).toBe(true);
    expect(await it1.next()).toEqual({ done: true, value: undefined });
    c1.abort();
  });

  it("latencyMs delays dial, every frame and the end of stream, preserving order", async () => {
    const latency = 30;
    const t = memory({ latencyMs: latency });
    const l = await t.listen("mem://far");
    const accepted = l[Symbol.asyncIterator]().next();
    let t0 = performance.now();
    const client = await t.dial("mem://far");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(latency - 1);
    const server = (await accepted).value as Connection;
    const reader = new FrameReader(server);
    t0 = performance.now();
    for (let i = 0; i < 5; i++) client.send(makeFrame(1, i, 32));
    const first = await reader.next();
    expect(performance.now() - t0).toBeGreaterThanOrEqual(latency - 1);
    expect(checkFrame(first!, 1, 0, 32)).toBeUndefined();
    const closing = client.close();
    const rest = await reader.rest();
    expect(rest.map((f, i) => checkFrame(f, 1, i + 1, 32))).toEqual([undefined, undefined, undefined, undefined]);
    await closing;
    expect(performance.now() - t0).toBeGreaterThanOrEqual(latency - 1);
    await l.close();
  });

  it("with latency, dial and close honour their AbortSignal", async () => {
    const t = memory({ latencyMs: 5_000 });
    const l = await t.listen("mem://slow");
    const ac = new AbortController();
    const dialing = t.dial("mem://slow", { signal: ac.signal });
    ac.abort();
    await rejectsCode(dialing, "ERR_ABORTED");
    const reason = new SealwireError("ERR_TIMEOUT", "deadline");
    const timed = new AbortController();
    const dialing2 = t.dial("mem://slow", { signal: timed.signal });
    timed.abort(reason);
    expect(await dialing2.catch((e: unknown) => e)).toBe(reason);
    // The aborted dials never reached the listener.
    await l.close();
    expect(await l[Symbol.asyncIterator]().next()).toEqual({ done: true, value: undefined });

    const fast = memory({ latencyMs: 1 });
    const { listener, client, server } = await pairOn(fast, "mem://closing");
    const ac2 = new AbortController();
    const closing = client.close({ signal: ac2.signal });
    ac2.abort();
    await rejectsCode(closing, "ERR_ABORTED");
    await within(client.close(), "a later close() of the ended connection");
    expect(client.isOpen).toBe(false);
    await within(server.closed, "server.closed");
    await listener.close();
  });

  it("abort drops queued frames at once on both ends", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://drop");
    for (let i = 0; i < 100; i++) client.send(makeFrame(2, i, 1024));
    for (let i = 0; i < 100; i++) server.send(makeFrame(3, i, 1024));
    const boom = new Error("local");
    client.abort(boom);
    // Neither end yields the frames that were queued: they were released with the abort.
    const remote = await new FrameReader(server).untilError();
    expect(remote.frames.length).toBe(0);
    expectCode(remote.error, "ERR_CONNECTION_ABORTED");
    const local = await new FrameReader(client).untilError();
    expect(local.frames.length).toBe(0);
    expect(local.error).toBe(boom);
    await listener.close();
  });

  it("abort after a graceful close drops only the local end's unread frames", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://half");
    server.send(makeFrame(4, 0, 16)); // to the client, which will not read it
    client.send(makeFrame(5, 0, 16)); // to the server, which will
    await client.close();
    const boom = new Error("cleanup");
    client.abort(boom);
    const local = await new FrameReader(client).untilError();
    expect(local.frames.length).toBe(0);
    expect(local.error).toBe(boom);
    const got = await new FrameReader(server).rest();
    expect(got.length).toBe(1);
    expect(checkFrame(got[0]!, 5, 0, 16)).toBeUndefined();
    expect(await client.closed).toBeUndefined(); // already settled by the graceful close
    await listener.close();
  });

  it("keeps order across a long queue that is read and refilled (queue compaction)", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://long");
    const reader = new FrameReader(server);
    let seq = 0;
    const sendN = (n: number): void => {
      for (let i = 0; i < n; i++) client.send(makeFrame(6, seq++, 9));
    };
    let expected = 0;
    const readN = async (n: number): Promise<void> => {
      for (const f of await reader.take(n)) {
        const problem = checkFrame(f, 6, expected++, 9);
        if (problem !== undefined) expect.fail(problem);
      }
    };
    sendN(3000);
    await readN(1100);
    sendN(1500);
    await readN(1500);
    sendN(700);
    await readN(2600);
    expect(expected).toBe(seq);
    await listener.close();
    client.abort();
  });

  it("releases queued frames when a connection is aborted or its reader leaves", async () => {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const t = memory({ maxFrameBytes: MiB, highWaterMarkBytes: 64 * MiB, maxQueuedBytes: 128 * MiB });
    // V8 frees ArrayBuffer backing stores concurrently after a GC, so readings are polled (bounded), not taken once.
    const arrayBytes = async (): Promise<number> => {
      gc();
      await new Promise((r) => setTimeout(r, 5));
      return process.memoryUsage().arrayBuffers;
    };
    const settled = async (): Promise<number> => {
      let last = await arrayBytes();
      for (let i = 0; i < 40; i++) {
        const now = await arrayBytes();
        if (now === last) return now;
        last = now;
      }
      return last;
    };
    const releasedSince = async (before: number): Promise<number> => {
      let released = 0;
      for (let i = 0; i < 100 && released <= 24 * MiB; i++) released = before - (await arrayBytes());
      return released;
    };
    const frame = new Uint8Array(MiB);
    for (const how of ["abort", "leave"] as const) {
      const { listener, client, server } = await pairOn(t, `mem://release-${how}`);
      for (let i = 0; i < 32; i++) client.send(frame);
      const before = await settled();
      if (how === "abort") client.abort();
      else await new FrameReader(server).stop();
      expect(await releasedSince(before), `bytes released after ${how}`).toBeGreaterThan(24 * MiB);
      // both ends are still referenced here, so only the connection itself can have let go of the frames
      expect(client.isOpen || server.isOpen).toBe(false);
      await listener.close();
    }
  });

  it("serves overlapping next() calls in order", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://overlap");
    const it1 = server[Symbol.asyncIterator]();
    const p = [it1.next(), it1.next(), it1.next()];
    client.send(new Uint8Array([0]));
    client.send(new Uint8Array([1]));
    await client.close();
    const r = await within(Promise.all(p), "three overlapping next()");
    expect(r.map((x) => (x.done === true ? "end" : x.value[0]))).toEqual([0, 1, "end"]);
    await listener.close();
  });

  it("never shows frame bytes in util.inspect", async () => {
    const t = memory();
    const { listener, client, server } = await pairOn(t, "mem://inspect");
    client.send(new TextEncoder().encode("SECRET-MARKER-123"));
    for (const o of [t, client, server, listener]) {
      const s = inspect(o, { depth: 10, showHidden: true });
      expect(s).not.toMatch(/SECRET|83, 69, 67/);
    }
    await listener.close();
    client.abort();
  });
});
