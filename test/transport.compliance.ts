/**
 * The shared Transport compliance suite: the semantics `src/transport.ts` promises, as tests every transport must
 * pass (memory, WebSocket over real sockets, Noise over memory or ws, NATS). Not a `*.test.ts` file: each
 * transport's test file calls {@link transportCompliance} with a setup that builds the transport.
 *
 * The suite is generic. It assumes nothing about how a transport is built: it dials the address a listener
 * reports (`listener.addr`, so `ws://127.0.0.1:0` works), gives the remote end a bounded time to notice a close or
 * abort (`eventually`, `within`), never uses a sleep as an assertion, and learns limits (`maxFrameBytes`, when
 * `send` returns `false`) from the transport itself. Keep limits small in the setup (a high-water mark of tens of
 * KiB) so the backpressure tests stay fast; the suite sends at most {@link BACKPRESSURE_CAP_BYTES} per test before
 * declaring that a transport never pushes back.
 *
 * @module
 * @example
 * ```ts
 * import { transportCompliance } from "./transport.compliance.js";
 * import { memory } from "../transports/memory.js";
 *
 * transportCompliance("memory", async () => {
 *   let n = 0;
 *   return {
 *     transport: memory({ highWaterMarkBytes: 16 * 1024 }),
 *     listenAddr: () => `mem://compliance-${n++}`,
 *     cleanup: async () => {},
 *   };
 * });
 * ```
 */
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { SealwireError, type ErrorCode } from "../src/errors.js";
import { isTransport, type Connection, type Listener, type Transport } from "../src/transport.js";

/** What a transport's test file provides for each test. */
export interface ComplianceContext {
  /** The transport under test, configured as the setup likes (small high-water marks keep the suite fast). */
  transport: Transport;
  /** A fresh address to listen at, different on each call (a port of 0 is fine: the suite dials `listener.addr`). */
  listenAddr(): string;
  /** Releases whatever the setup created (servers, brokers). Called after each test, after the suite's own cleanup. */
  cleanup(): Promise<void>;
}

/** How long the remote end may take to notice something (a close, an abort, a frame) before a test fails. */
export const WAIT_MS = 5_000;
/** A transport that accepts this many bytes for a non-reading peer without pushing back fails the suite. */
export const BACKPRESSURE_CAP_BYTES = 64 * 1024 * 1024;
/** How long `drain()` must stay pending before the suite considers the pipe full (see {@link fillUntilBlocked}). */
const BLOCKED_MS = 50;

// ---------------------------------------------------------------------------------------------------------------
// Helpers (exported so transport-specific tests can reuse them).

/** Resolves like `p`, or rejects with a clear message if `p` takes longer than `ms`. Never leaves a timer behind. */
export function within<T>(p: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `cond` until it holds, failing after `ms`: for state the remote end reaches "soon" (e.g. `isOpen`). */
export async function eventually(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Yields to the event loop once (lets a network transport move bytes between two synchronous bursts). */
export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Asserts `err` is a SealwireError with `code` (with a readable diff when it is not) and returns it. */
export function expectCode(err: unknown, code: ErrorCode): SealwireError {
  const e = err as { name?: unknown; code?: unknown; message?: unknown } | undefined;
  expect({ name: e?.name, code: e?.code }, `expected ${code}, got: ${String(e?.message ?? err)}`).toEqual({
    name: "SealwireError",
    code,
  });
  return err as SealwireError;
}

/** Runs `fn`, expecting it to throw (synchronously) a SealwireError with `code`. */
export function throwsCode(fn: () => unknown, code: ErrorCode): SealwireError {
  let caught: unknown;
  let threw = false;
  try {
    fn();
  } catch (err) {
    caught = err;
    threw = true;
  }
  expect(threw, `expected a throw with ${code}`).toBe(true);
  return expectCode(caught, code);
}

/** Awaits `p`, expecting it to reject with a SealwireError with `code`, within {@link WAIT_MS}. */
export async function rejectsCode(p: Promise<unknown>, code: ErrorCode, what: string = code): Promise<SealwireError> {
  const outcome = await within(
    p.then(
      (value) => ({ ok: true as const, value }),
      (err: unknown) => ({ ok: false as const, err }),
    ),
    what,
  );
  expect(outcome.ok, `expected a rejection with ${code}`).toBe(false);
  return expectCode((outcome as { err: unknown }).err, code);
}

/** True if both byte arrays hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  const view = (x: Uint8Array): Buffer => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return Buffer.compare(view(a), view(b)) === 0;
}

/**
 * A self-describing test frame: 4-byte stream tag, 4-byte sequence number, then bytes derived from both, so a
 * frame delivered twice, out of order, to the wrong connection or corrupted is detected.
 */
export function makeFrame(tag: number, seq: number, size: number): Uint8Array {
  const f = new Uint8Array(Math.max(size, 8));
  const v = new DataView(f.buffer);
  v.setUint32(0, tag >>> 0);
  v.setUint32(4, seq >>> 0);
  for (let i = 8; i < f.length; i++) f[i] = (tag * 31 + seq * 7 + i) & 0xff;
  return f;
}

/** Checks a frame made by {@link makeFrame}; returns a description of the first problem, or `undefined`. */
export function checkFrame(f: Uint8Array, tag: number, seq: number, size: number): string | undefined {
  if (f.length !== Math.max(size, 8)) return `frame ${tag}/${seq}: length ${f.length}, expected ${Math.max(size, 8)}`;
  const v = new DataView(f.buffer, f.byteOffset, f.byteLength);
  if (v.getUint32(0) !== tag || v.getUint32(4) !== seq) {
    return `expected frame ${tag}/${seq}, got ${v.getUint32(0)}/${v.getUint32(4)}`;
  }
  for (let i = 8; i < f.length; i++) {
    if (f[i] !== ((tag * 31 + seq * 7 + i) & 0xff)) return `frame ${tag}/${seq}: corrupted at byte ${i}`;
  }
  return undefined;
}

/** One iterator over a connection (connections are single-consumer), read in bounded steps. */
export class FrameReader {
  readonly #it: AsyncIterator<Uint8Array>;
  constructor(conn: Connection) {
    this.#it = conn[Symbol.asyncIterator]();
  }
  /** The next frame, or `undefined` at end of stream. Rejects like the iterator, or after `ms`. */
  async next(what = "the next frame", ms = WAIT_MS): Promise<Uint8Array | undefined> {
    const r = await within(this.#it.next(), what, ms);
    return r.done === true ? undefined : r.value;
  }
  /** Exactly `n` frames (fails on an early end). */
  async take(n: number, what = `${n} frames`, ms = WAIT_MS): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    await within(
      (async () => {
        while (out.length < n) {
          const r = await this.#it.next();
          if (r.done === true) throw new Error(`stream ended after ${out.length} of ${n} frames`);
          out.push(r.value);
        }
      })(),
      what,
      ms,
    );
    return out;
  }
  /** Every frame until the end of stream. */
  async rest(what = "the end of the stream", ms = WAIT_MS): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    await within(
      (async () => {
        for (;;) {
          const r = await this.#it.next();
          if (r.done === true) return;
          out.push(r.value);
        }
      })(),
      what,
      ms,
    );
    return out;
  }
  /** Reads until the stream fails or ends; returns the frames read and the error (or `undefined` on a clean end). */
  async untilError(what = "the stream to fail", ms = WAIT_MS): Promise<{ frames: Uint8Array[]; error: unknown }> {
    const frames: Uint8Array[] = [];
    let error: unknown;
    await within(
      (async () => {
        try {
          for (;;) {
            const r = await this.#it.next();
            if (r.done === true) return;
            frames.push(r.value);
          }
        } catch (err) {
          error = err;
        }
      })(),
      what,
      ms,
    );
    return { frames, error };
  }
  /** Leaves the iteration early (what `break` in a for-await does). */
  async stop(): Promise<void> {
    if (this.#it.return !== undefined) await within(this.#it.return(), "iterator return()");
  }
}

/** Sends `frame`, awaiting `drain()` first whenever the previous send asked for it. */
export async function sendAll(conn: Connection, frames: Iterable<Uint8Array>): Promise<void> {
  for (const f of frames) {
    if (!conn.send(f)) await within(conn.drain(), "drain() while sending");
  }
}

/**
 * Sends tagged frames of `size` bytes to a peer that is not reading until the pipe is full: `send` returned
 * `false` and `drain()` then stayed pending for {@link BLOCKED_MS}. (A network transport may legitimately resolve
 * a first drain as socket buffers and the peer's read-ahead absorb data; this keeps filling until they are full.)
 * Fails if more than {@link BACKPRESSURE_CAP_BYTES} went out without the transport pushing back.
 * @returns how many frames were sent (all accepted by `send`) and the pending `drain()`.
 */
export async function fillUntilBlocked(
  conn: Connection,
  tag: number,
  size: number,
): Promise<{ sent: number; drained: Promise<void> }> {
  let sent = 0;
  for (;;) {
    let ok = true;
    while (ok) {
      ok = conn.send(makeFrame(tag, sent, size));
      sent++;
      if (sent * size > BACKPRESSURE_CAP_BYTES) {
        throw new Error(`sent ${sent * size} bytes to a non-reading peer and send() never returned false`);
      }
      if (sent % 64 === 0) await tick();
    }
    const drained = conn.drain();
    drained.catch(() => {}); // the caller awaits it; this only keeps an abort in cleanup from going unhandled
    const blocked = await Promise.race([
      drained.then(
        () => false,
        () => false,
      ),
      new Promise<boolean>((r) => setTimeout(() => r(true), BLOCKED_MS)),
    ]);
    if (blocked) return { sent, drained };
  }
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * Declares `describe(name + " compliance")` with the tests every transport must pass. `setup` runs before each
 * test and the context's `cleanup` after it (after the suite has aborted the test's connections and closed its
 * listeners).
 */
export function transportCompliance(name: string, setup: () => Promise<ComplianceContext>): void {
  describe(`${name} compliance`, () => {
    let ctx: ComplianceContext;
    let t: Transport;
    const conns: Connection[] = [];
    const listeners: Listener[] = [];

    beforeEach(async () => {
      ctx = await setup();
      t = ctx.transport;
    });

    afterEach(async () => {
      for (const c of conns.splice(0)) c.abort();
      for (const l of listeners.splice(0)) await within(l.close(), "listener close in cleanup");
      await ctx.cleanup();
    });

    const track = <C extends Connection>(c: C): C => {
      conns.push(c);
      return c;
    };

    async function listen(): Promise<Listener> {
      const l = await within(t.listen(ctx.listenAddr()), "listen()");
      listeners.push(l);
      return l;
    }

    /** A listener, one dialled connection (`client`) and the accepted end (`server`). */
    async function pair(): Promise<{ listener: Listener; client: Connection; server: Connection }> {
      const listener = await listen();
      const accepted = listener[Symbol.asyncIterator]().next();
      const client = track(await within(t.dial(listener.addr), "dial()"));
      const r = await within(accepted, "accept");
      expect(r.done).toBe(false);
      const server = track(r.value as Connection);
      return { listener, client, server };
    }

    /** A frame size that is small enough to be quick and large enough to fill buffers in few frames. */
    const chunk = (): number => Math.min(16 * 1024, t.maxFrameBytes);

    it("is a branded transport with sane limits", () => {
      expect(isTransport(t)).toBe(true);
      expect(isTransport({ kind: t.kind })).toBe(false);
      expect(typeof t.kind).toBe("string");
      expect(t.kind.length).toBeGreaterThan(0);
      expect(Number.isSafeInteger(t.maxFrameBytes) && t.maxFrameBytes > 0).toBe(true);
    });

    it("connects, reports both ends and carries frames both ways", async () => {
      const { client, server } = await pair();
      for (const c of [client, server]) {
        expect(c.isOpen).toBe(true);
        expect(typeof c.remoteAddr).toBe("string");
        expect(c.remoteAddr.length).toBeGreaterThan(0);
        expect(c.remotePeer === undefined || typeof c.remotePeer === "string").toBe(true);
        expect(Number.isSafeInteger(c.maxFrameBytes) && c.maxFrameBytes > 0).toBe(true);
        expect(c.maxFrameBytes).toBeLessThanOrEqual(t.maxFrameBytes);
      }
      const ping = new TextEncoder().encode("ping");
      const pong = new TextEncoder().encode("pong");
      client.send(ping);
      const got = await new FrameReader(server).next();
      expect(got).toBeInstanceOf(Uint8Array);
      expect(sameBytes(got!, ping)).toBe(true);
      server.send(pong);
      expect(sameBytes((await new FrameReader(client).next())!, pong)).toBe(true);
    });

    it("delivers many frames whole, in order, exactly once, in both directions at once", async () => {
      const { client, server } = await pair();
      const N = 2000;
      const max = Math.min(4096, t.maxFrameBytes);
      const size = (i: number): number => (i * 977) % (max + 1);
      const frames = (tag: number): Uint8Array[] => Array.from({ length: N }, (_, i) => makeFrame(tag, i, size(i)));
      const readAll = async (c: Connection, tag: number): Promise<void> => {
        const got = await new FrameReader(c).take(N, `${N} frames tagged ${tag}`);
        for (let i = 0; i < N; i++) {
          const problem = checkFrame(got[i]!, tag, i, size(i));
          if (problem !== undefined) expect.fail(problem);
        }
      };
      await Promise.all([
        sendAll(client, frames(1)),
        sendAll(server, frames(2)),
        readAll(server, 1),
        readAll(client, 2),
      ]);
    });

    it("delivers exact bytes: empty, every byte value, and a frame of exactly maxFrameBytes", async () => {
      const { client, server } = await pair();
      const every = Uint8Array.from({ length: 256 }, (_, i) => i);
      const max = new Uint8Array(client.maxFrameBytes);
      for (let i = 0; i < max.length; i++) max[i] = (i * 131 + (i >>> 8)) & 0xff;
      const sent = [new Uint8Array(0), new Uint8Array([0]), every, new Uint8Array(0), max, new Uint8Array([255])];
      const reader = new FrameReader(server);
      const got = (await Promise.all([sendAll(client, sent), reader.take(sent.length)]))[1];
      expect(got.map((f) => f.length)).toEqual(sent.map((f) => f.length));
      for (let i = 0; i < sent.length; i++) {
        expect(got[i]).toBeInstanceOf(Uint8Array);
        expect(sameBytes(got[i]!, sent[i]!), `frame ${i}`).toBe(true);
      }
    });

    it("frames survive the sender reusing or mutating its buffer, and a view sends only its own bytes", async () => {
      const { client, server } = await pair();
      const reader = new FrameReader(server);
      const size = Math.min(1024, client.maxFrameBytes);
      const buf = new Uint8Array(size);
      const N = 100;
      const sending = (async () => {
        for (let i = 0; i < N; i++) {
          buf.fill(i);
          const ok = client.send(buf);
          buf.fill(0xee); // scribble right after send returns: must not reach the wire
          if (!ok) await client.drain();
        }
        // A view into the middle of a larger buffer: only the view's bytes may be sent.
        const big = new Uint8Array(64).fill(0xaa);
        big.set([1, 2, 3], 10);
        client.send(big.subarray(10, 13));
        big.fill(0);
        // A Node Buffer (a Uint8Array subclass) is accepted too.
        client.send(Buffer.from([9, 8, 7]));
      })();
      const got = await reader.take(N + 2);
      await sending;
      for (let i = 0; i < N; i++) {
        expect(got[i]!.length).toBe(size);
        expect(got[i]!.every((b) => b === i), `frame ${i} corrupted`).toBe(true);
      }
      expect([...got[N]!]).toEqual([1, 2, 3]);
      expect([...got[N + 1]!]).toEqual([9, 8, 7]);
    });

    it("property: any sequence of frames arrives whole, in order, exactly once", async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.uint8Array({ maxLength: Math.min(600, t.maxFrameBytes) }), { maxLength: 40 }),
          async (frames) => {
            const { client, server } = await pair();
            const copies = frames.map((f) => Uint8Array.from(f));
            const reader = new FrameReader(server);
            await sendAll(client, frames);
            await client.close();
            const got = await reader.rest();
            expect(got.length).toBe(frames.length);
            for (let i = 0; i < frames.length; i++) expect(sameBytes(got[i]!, frames[i]!)).toBe(true);
            // send must not mutate the caller's frames
            for (let i = 0; i < frames.length; i++) expect(sameBytes(copies[i]!, frames[i]!)).toBe(true);
          },
        ),
        { numRuns: 25 },
      );
    });

    it("send returns false under a non-reading peer and drain resolves once the peer reads", async () => {
      const { client, server } = await pair();
      const size = chunk();
      const { sent, drained } = await fillUntilBlocked(client, 7, size);
      expect(client.isOpen).toBe(true);
      const reader = new FrameReader(server);
      const got = await reader.take(sent);
      await within(drained, "drain() after the peer read everything");
      for (let i = 0; i < sent; i++) {
        const problem = checkFrame(got[i]!, 7, i, size);
        if (problem !== undefined) expect.fail(problem);
      }
      // Once drained, sending works and reports no pressure for a small frame.
      expect(client.send(new Uint8Array([1]))).toBe(true);
      expect([...(await reader.next())!]).toEqual([1]);
    });

    it("drain resolves at once when nothing is buffered, and several concurrent drains all resolve", async () => {
      const { client, server } = await pair();
      await within(client.drain(), "drain() on an idle connection");
      const { sent, drained } = await fillUntilBlocked(client, 3, chunk());
      const more = [client.drain(), client.drain()];
      await new FrameReader(server).take(sent);
      await within(Promise.all([drained, ...more]), "every pending drain()");
    });

    it("drain honours its AbortSignal with ERR_ABORTED (or the signal's SealwireError reason)", async () => {
      const { client, server } = await pair();
      const { sent, drained } = await fillUntilBlocked(client, 4, chunk());
      await rejectsCode(client.drain({ signal: AbortSignal.abort() }), "ERR_ABORTED");
      const ac = new AbortController();
      const pending = client.drain({ signal: ac.signal });
      ac.abort();
      await rejectsCode(pending, "ERR_ABORTED");
      const reason = new SealwireError("ERR_TIMEOUT", "test deadline");
      const err = await rejectsCode(client.drain({ signal: AbortSignal.abort(reason) }), "ERR_TIMEOUT");
      expect(err).toBe(reason);
      // An aborted drain does not harm the connection.
      expect(client.isOpen).toBe(true);
      await new FrameReader(server).take(sent);
      await within(drained, "the first drain()");
    });

    it("a sender that awaits drain never hits the hard limit, even with frames of maxFrameBytes", async () => {
      const { client, server } = await pair();
      const max = client.maxFrameBytes;
      const n = Math.max(3, Math.min(12, Math.floor((24 * 1024 * 1024) / max)));
      const reader = new FrameReader(server);
      let firstFalse!: () => void;
      const pressured = new Promise<void>((r) => (firstFalse = r));
      const sending = (async () => {
        for (let i = 0; i < n; i++) {
          if (!client.send(makeFrame(9, i, max))) {
            firstFalse();
            await within(client.drain(), "drain()");
          }
        }
        firstFalse();
      })();
      // The reader starts only once the sender felt pressure (or finished), so queues really fill up.
      await within(pressured, "the first send() to return false or the end of sending");
      const got = await reader.take(n, `${n} frames of maxFrameBytes`, 20_000);
      await sending;
      for (let i = 0; i < n; i++) {
        const problem = checkFrame(got[i]!, 9, i, max);
        if (problem !== undefined) expect.fail(problem);
      }
    });

    it("past the hard limit send throws ERR_QUEUE_FULL, refusing that frame but losing none it accepted", async () => {
      const { client, server } = await pair();
      const size = chunk();
      let accepted = 0;
      let refusal: unknown;
      while (refusal === undefined) {
        try {
          client.send(makeFrame(5, accepted, size)); // ignores `false` on purpose
          accepted++;
        } catch (err) {
          refusal = err;
        }
        if (accepted * size > BACKPRESSURE_CAP_BYTES) {
          expect.fail(`queued ${accepted * size} bytes for a non-reading peer without ERR_QUEUE_FULL`);
        }
        if (accepted % 64 === 0) await tick();
      }
      expectCode(refusal, "ERR_QUEUE_FULL");
      expect(client.isOpen).toBe(true);
      const reader = new FrameReader(server);
      const got = await reader.take(accepted, `${accepted} accepted frames`);
      for (let i = 0; i < accepted; i++) {
        const problem = checkFrame(got[i]!, 5, i, size);
        if (problem !== undefined) expect.fail(problem);
      }
      // The refused frame was not queued: after a drain, the next frame follows the last accepted one directly.
      await within(client.drain(), "drain() after the reader caught up");
      client.send(makeFrame(6, 0, 8));
      await client.close();
      const tail = await reader.rest();
      expect(tail.length).toBe(1);
      expect(checkFrame(tail[0]!, 6, 0, 8)).toBeUndefined();
    });

    it("graceful close delivers everything sent before it (even under backpressure), then ends the remote iterator", async () => {
      const { client, server } = await pair();
      const size = chunk();
      const { sent, drained } = await fillUntilBlocked(client, 11, size);
      const reader = new FrameReader(server);
      // The pending drain may reject (the connection ends first) or resolve (the peer read): both are fine.
      drained.catch(() => {});
      const [, got] = await Promise.all([within(client.close(), "close()"), reader.rest()]);
      expect(got.length).toBe(sent);
      for (let i = 0; i < sent; i++) {
        const problem = checkFrame(got[i]!, 11, i, size);
        if (problem !== undefined) expect.fail(problem);
      }
      expect(client.isOpen).toBe(false);
      expect(await within(client.closed, "client.closed")).toBeUndefined();
      expect(await within(server.closed, "server.closed")).toBeUndefined();
      await eventually(() => !server.isOpen, "the accepting end is no longer open");
      // A finished iterator stays finished.
      expect(await reader.next()).toBeUndefined();
    });

    it("close works the same from the accepting side", async () => {
      const { client, server } = await pair();
      const reader = new FrameReader(client);
      const frames = Array.from({ length: 50 }, (_, i) => makeFrame(12, i, 100));
      await sendAll(server, frames);
      const [, got] = await Promise.all([within(server.close(), "close()"), reader.rest()]);
      expect(got.length).toBe(50);
      got.forEach((f, i) => expect(checkFrame(f, 12, i, 100)).toBeUndefined());
      expect(await within(client.closed, "client.closed")).toBeUndefined();
      await eventually(() => !client.isOpen, "the dialling end is no longer open");
    });

    it("close is two-way: frames the remote sent before it saw the close still reach the closing side", async () => {
      const { client, server } = await pair();
      const clientReader = new FrameReader(client);
      const serverReader = new FrameReader(server);
      server.send(makeFrame(13, 0, 16));
      server.send(makeFrame(13, 1, 16));
      server.send(makeFrame(13, 2, 16));
      // Reading the first frame proves the server sent all three before the close below.
      expect(checkFrame((await clientReader.next())!, 13, 0, 16)).toBeUndefined();
      const [, rest, serverRest] = await Promise.all([
        within(client.close(), "close()"),
        clientReader.rest(),
        serverReader.rest(),
      ]);
      expect(rest.length).toBe(2);
      expect(checkFrame(rest[0]!, 13, 1, 16)).toBeUndefined();
      expect(checkFrame(rest[1]!, 13, 2, 16)).toBeUndefined();
      expect(serverRest.length).toBe(0);
    });

    it("close is idempotent; send after close throws ERR_CONNECTION_CLOSED on both ends; drain rejects", async () => {
      const { client, server } = await pair();
      const serverReader = new FrameReader(server);
      await within(client.close(), "close()");
      await within(client.close(), "a second close()");
      await within(client.close({ signal: AbortSignal.abort() }), "close() of a closed connection, aborted signal");
      throwsCode(() => client.send(new Uint8Array([1])), "ERR_CONNECTION_CLOSED");
      await expect(within(client.drain(), "drain()")).rejects.toThrow();
      expect(await serverReader.rest()).toEqual([]);
      await eventually(() => !server.isOpen, "the remote end noticed the close");
      throwsCode(() => server.send(new Uint8Array([1])), "ERR_CONNECTION_CLOSED");
      await expect(within(server.drain(), "drain()")).rejects.toThrow();
      // abort after close changes nothing that was already settled
      client.abort(new Error("late"));
      expect(await within(client.closed, "client.closed")).toBeUndefined();
    });

    it("close with an already-aborted signal rejects ERR_ABORTED and still ends the connection", async () => {
      const { client, server } = await pair();
      const reader = new FrameReader(server);
      await rejectsCode(client.close({ signal: AbortSignal.abort() }), "ERR_ABORTED");
      expect(client.isOpen).toBe(false);
      await within(client.closed, "client.closed");
      const { error } = await reader.untilError("the remote stream to end");
      if (error !== undefined) expectCode(error, "ERR_CONNECTION_ABORTED");
      await eventually(() => !server.isOpen, "the remote end noticed");
    });

    it("abort rejects the remote iterator with ERR_CONNECTION_ABORTED and settles closed with the error", async () => {
      const { client, server } = await pair();
      const serverReader = new FrameReader(server);
      const clientReader = new FrameReader(client);
      for (let i = 0; i < 10; i++) client.send(makeFrame(14, i, 64));
      const boom = new Error("test abort");
      client.abort(boom);
      expect(client.isOpen).toBe(false);
      // Local end: the iterator throws exactly the given error, and closed resolves with it.
      await expect(within(clientReader.next(), "local next()")).rejects.toBe(boom);
      expect(await within(client.closed, "client.closed")).toBe(boom);
      // Remote end: what arrived before the abort (if anything) is an in-order prefix, then ERR_CONNECTION_ABORTED.
      const { frames, error } = await serverReader.untilError();
      expect(frames.length).toBeLessThanOrEqual(10);
      frames.forEach((f, i) => expect(checkFrame(f, 14, i, 64)).toBeUndefined());
      expectCode(error, "ERR_CONNECTION_ABORTED");
      expectCode(await within(server.closed, "server.closed"), "ERR_CONNECTION_ABORTED");
      await eventually(() => !server.isOpen, "the remote end noticed the abort");
      // Afterwards: sends are refused, abort and close are harmless no-ops.
      throwsCode(() => client.send(new Uint8Array(1)), "ERR_CONNECTION_CLOSED");
      throwsCode(() => server.send(new Uint8Array(1)), "ERR_CONNECTION_CLOSED");
      client.abort(new Error("again"));
      server.abort();
      await within(client.close(), "close() after abort");
      expect(await client.closed).toBe(boom);
    });

    it("abort() without an error uses ERR_CONNECTION_ABORTED", async () => {
      const { client, server } = await pair();
      const reader = new FrameReader(client);
      server.abort();
      expectCode(await within(server.closed, "server.closed"), "ERR_CONNECTION_ABORTED");
      expectCode((await reader.untilError()).error, "ERR_CONNECTION_ABORTED");
      expectCode(await within(client.closed, "client.closed"), "ERR_CONNECTION_ABORTED");
    });

    it("abort wakes pending reads and drains on both ends", async () => {
      const a = await pair();
      const { drained } = await fillUntilBlocked(a.client, 15, chunk());
      const clientRead = new FrameReader(a.client).next("a read that the abort must wake");
      clientRead.catch(() => {});
      a.server.abort(); // the reading side gives up on a sender it is not reading
      await rejectsCode(drained, "ERR_CONNECTION_ABORTED", "the remote abort to reject drain()");
      await rejectsCode(clientRead, "ERR_CONNECTION_ABORTED", "the remote abort to reject next()");

      const b = await pair();
      const { drained: drained2 } = await fillUntilBlocked(b.client, 16, chunk());
      const boom = new Error("local abort");
      b.client.abort(boom);
      await expect(within(drained2, "local abort to reject drain()")).rejects.toBe(boom);
    });

    it("abort after a completed graceful close takes back nothing", async () => {
      const { client, server } = await pair();
      const reader = new FrameReader(server);
      const frames = Array.from({ length: 20 }, (_, i) => makeFrame(17, i, 200));
      const closing = (async () => {
        await sendAll(client, frames);
        await client.close();
        client.abort(new Error("cleanup in a finally block"));
      })();
      const [, got] = await Promise.all([closing, reader.rest()]);
      expect(got.length).toBe(20);
      got.forEach((f, i) => expect(checkFrame(f, 17, i, 200)).toBeUndefined());
      expect(await within(server.closed, "server.closed")).toBeUndefined();
    });

    it("leaving the iterator early closes the connection", async () => {
      const { client, server } = await pair();
      const serverReader = new FrameReader(server);
      server.send(makeFrame(18, 0, 8));
      for await (const f of client) {
        expect(checkFrame(f, 18, 0, 8)).toBeUndefined();
        break;
      }
      expect(client.isOpen).toBe(false);
      expect(await within(client.closed, "client.closed")).toBeUndefined();
      expect(await serverReader.rest()).toEqual([]);
      await eventually(() => !server.isOpen, "the remote end noticed");
    });

    it("refuses an oversize frame with ERR_FRAME_TOO_LARGE and stays usable", async () => {
      const { client, server } = await pair();
      throwsCode(() => client.send(new Uint8Array(client.maxFrameBytes + 1)), "ERR_FRAME_TOO_LARGE");
      throwsCode(() => server.send(new Uint8Array(server.maxFrameBytes + 1)), "ERR_FRAME_TOO_LARGE");
      expect(client.isOpen && server.isOpen).toBe(true);
      client.send(new Uint8Array([42]));
      expect([...(await new FrameReader(server).next())!]).toEqual([42]);
    });

    it("send refuses anything but a Uint8Array with ERR_INVALID_ARGUMENT", async () => {
      const { client } = await pair();
      const view = new DataView(new ArrayBuffer(4));
      for (const bad of ["text", null, undefined, 7, new ArrayBuffer(4), view, [1, 2], new Uint16Array(2)]) {
        throwsCode(() => client.send(bad as never), "ERR_INVALID_ARGUMENT");
      }
      expect(client.isOpen).toBe(true);
    });

    it("dialling where nothing listens fails with ERR_CONNECTION_REFUSED", async () => {
      const l = await within(t.listen(ctx.listenAddr()), "listen()");
      const addr = l.addr;
      await l.close();
      await rejectsCode(t.dial(addr), "ERR_CONNECTION_REFUSED");
    });

    it("listener close stops new dials, ends its iterator, is idempotent, and keeps open connections", async () => {
      const { listener, client, server } = await pair();
      const l2 = await listen();
      const accepting = (async () => {
        const accepted: Connection[] = [];
        for await (const c of l2) accepted.push(track(c));
        return accepted;
      })();
      await within(listener.close(), "listener close()");
      await within(l2.close(), "listener close()");
      await within(l2.close(), "a second listener close()");
      expect(await within(accepting, "the listener iterator to end")).toEqual([]);
      await rejectsCode(t.dial(listener.addr), "ERR_CONNECTION_REFUSED");
      await rejectsCode(t.dial(l2.addr), "ERR_CONNECTION_REFUSED");
      // the connection accepted before the close still works both ways
      client.send(new Uint8Array([1]));
      server.send(new Uint8Array([2]));
      expect([...(await new FrameReader(server).next())!]).toEqual([1]);
      expect([...(await new FrameReader(client).next())!]).toEqual([2]);
    });

    it("leaving the listener iterator early closes the listener", async () => {
      const l = await listen();
      const accepting = (async () => {
        for await (const c of l) {
          track(c);
          break;
        }
      })();
      track(await within(t.dial(l.addr), "dial()"));
      await within(accepting, "the accept loop");
      await rejectsCode(t.dial(l.addr), "ERR_CONNECTION_REFUSED");
    });

    it("listen on a taken address fails with ERR_ADDRESS_IN_USE; the address is free again after close", async () => {
      const l = await listen();
      await rejectsCode(t.listen(l.addr), "ERR_ADDRESS_IN_USE");
      await l.close();
      const again = await within(t.listen(l.addr), "listen() on the freed address");
      listeners.push(again);
      expect(again.addr).toBe(l.addr);
      const accepted = again[Symbol.asyncIterator]().next();
      track(await within(t.dial(again.addr), "dial()"));
      track((await within(accepted, "accept")).value as Connection);
    });

    it("invalid addresses fail with ERR_INVALID_ARGUMENT", async () => {
      for (const bad of ["", 42, null, undefined, {}]) {
        await rejectsCode(t.listen(bad as never), "ERR_INVALID_ARGUMENT", `listen(${String(bad)})`);
        await rejectsCode(t.dial(bad as never), "ERR_INVALID_ARGUMENT", `dial(${String(bad)})`);
      }
    });

    it("an already-aborted signal fails dial and listen with ERR_ABORTED (or the signal's SealwireError)", async () => {
      const l = await listen();
      await rejectsCode(t.dial(l.addr, { signal: AbortSignal.abort() }), "ERR_ABORTED");
      await rejectsCode(t.listen(ctx.listenAddr(), { signal: AbortSignal.abort() }), "ERR_ABORTED");
      const reason = new SealwireError("ERR_TIMEOUT", "test deadline");
      const err = await rejectsCode(t.dial(l.addr, { signal: AbortSignal.abort(reason) }), "ERR_TIMEOUT");
      expect(err).toBe(reason);
      // No connection was made by the aborted dials: the next accepted connection is the next dial's.
      const accepted = l[Symbol.asyncIterator]().next();
      const c = track(await within(t.dial(l.addr), "dial()"));
      const s = track((await within(accepted, "accept")).value as Connection);
      c.send(new Uint8Array([5]));
      expect([...(await new FrameReader(s).next())!]).toEqual([5]);
    });

    it("concurrent connections: 20 clients x 50 frames, each echoed back to the right client", async () => {
      const l = await listen();
      const CLIENTS = 20;
      const FRAMES = 50;
      const server = (async () => {
        const echoes: Promise<void>[] = [];
        let n = 0;
        for await (const c of l) {
          track(c);
          echoes.push(
            (async () => {
              for await (const f of c) {
                if (!c.send(f)) await c.drain();
              }
            })(),
          );
          if (++n === CLIENTS) break; // also closes the listener
        }
        await Promise.all(echoes);
        return n;
      })();
      const clients = Array.from({ length: CLIENTS }, async (_, id) => {
        const c = track(await t.dial(l.addr));
        const reader = new FrameReader(c);
        const size = 20 + id * 13;
        const [, got] = await Promise.all([
          sendAll(c, Array.from({ length: FRAMES }, (_, i) => makeFrame(100 + id, i, size))),
          reader.take(FRAMES, `echoes for client ${id}`),
        ]);
        got.forEach((f, i) => {
          const problem = checkFrame(f, 100 + id, i, size);
          if (problem !== undefined) expect.fail(problem);
        });
        await c.close();
      });
      await within(Promise.all(clients), "all clients", 10_000);
      expect(await within(server, "the echo server", 10_000)).toBe(CLIENTS);
    });

    it("connections and listeners can be iterated only once", async () => {
      const { listener, client, server } = await pair();
      const reader = new FrameReader(server);
      throwsCode(() => server[Symbol.asyncIterator](), "ERR_INVALID_ARGUMENT");
      // the first iterator is unaffected
      client.send(new Uint8Array([3]));
      expect([...(await reader.next())!]).toEqual([3]);
      throwsCode(() => listener[Symbol.asyncIterator](), "ERR_INVALID_ARGUMENT");
    });
  });
}
