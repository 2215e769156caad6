/**
 * Connections to measure, sealwire and raw, behind one small interface ({@link Link}) so that every transport
 * row is timed by the same code as its baseline:
 *
 * - {@link sealwireLink}: any sealwire `Transport` (memory, noise(x), ws, wss, nats): one dialled connection, the
 *   listening side counts frames, or echoes those whose first byte is 1.
 * - {@link rawMemoryLink}: the least an in-process transport does — an array queue per direction, frames copied
 *   on send, a high-water mark with a drain at half of it (as `memory()`), one waiting reader.
 * - {@link rawWsLink}: a bare `ws` client and `WebSocketServer` (no permessage-deflate), `ws://` or `wss://`.
 * - {@link rawNatsLink}: bare nats.js publish/subscribe on two connections.
 *
 * Every burst respects backpressure: sealwire connections `await drain()` when `send` returns false; raw `ws`
 * waits for the socket to flush when `bufferedAmount` passes the same 1 MiB mark; raw NATS awaits `flush()`
 * every 256 KiB (the sealwire NATS transport's window). A burst ends when the receiver has read the last frame.
 *
 * @module
 * @example
 * ```ts
 * const net = memory();
 * const ours = await sealwireLink("memory()", net, net, "mem://bench");
 * const raw = rawMemoryLink();
 * await ours.burst(1000, 1024);  // 1000 frames of 1 KiB, one way, to the last one read
 * await raw.ping(1024);          // one frame there and back
 * await Promise.all([ours.close(), raw.close()]);
 * ```
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as natsConnect } from "@nats-io/transport-node";
import WebSocket, { WebSocketServer } from "ws";
import type { Connection, DialOptions, Transport } from "../src/transport.js";

const MiB = 1024 * 1024;
/** The high-water mark of the raw baselines: `memory()`'s and `webSocket()`'s default. */
const RAW_HIGH_WATER_MARK = 1 * MiB;
/** Raw NATS flushes this often: the sealwire NATS transport's default window. */
const RAW_NATS_FLUSH_BYTES = 256 * 1024;

/** A one-way frame pipe with an echo, sealwire or raw. */
export interface Link {
  /** Sends `n` frames of `size` bytes one way (backpressure respected); resolves once the far end read the last. */
  burst(n: number, size: number): Promise<void>;
  /** One frame of `size` bytes to the far end and back. */
  ping(size: number): Promise<void>;
  /** Closes everything the link opened (connections, listeners, servers). */
  close(): Promise<void>;
}

/** Counts arrivals; `until(n)` resolves once `n` more have arrived. One waiter at a time. */
export class Counter {
  #count = 0;
  #target = Number.POSITIVE_INFINITY;
  #resolve: (() => void) | undefined;
  hit(): void {
    if (++this.#count >= this.#target) {
      this.#target = Number.POSITIVE_INFINITY;
      const r = this.#resolve;
      this.#resolve = undefined;
      r?.();
    }
  }
  until(n: number): Promise<void> {
    return new Promise((resolve) => {
      this.#target = this.#count + n;
      this.#resolve = resolve;
    });
  }
}

/** A certificate and its key, PEM. */
export interface Tls {
  cert: Buffer;
  key: Buffer;
}

/**
 * A throwaway self-signed certificate for 127.0.0.1 (EC P-256, one day), made with the installed `openssl` in a
 * temporary directory that is deleted at once; undefined if openssl is missing. Nothing is written to the repo.
 */
export function makeCert(): Tls | undefined {
  const dir = mkdtempSync(join(tmpdir(), "sealwire-bench-"));
  try {
    execFileSync(
      "openssl",
      [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-keyout", "k.pem", "-out", "c.pem", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
      ],
      { cwd: dir, stdio: "ignore" },
    );
    return { cert: readFileSync(join(dir, "c.pem")), key: readFileSync(join(dir, "k.pem")) };
  } catch {
    return undefined;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** True if `cmd` can be run from the PATH (e.g. `nats-server`, `openssl`). */
export function onPath(cmd: string): boolean {
  return spawnSync(cmd, ["--version"], { stdio: "ignore" }).error === undefined;
}

/** Frames by size, built once: byte 0 says count (0) or echo (1); the rest is a fixed pattern. */
function framesOf(): (size: number, echo: boolean) => Uint8Array {
  const cache = new Map<string, Uint8Array>();
  return (size, echo) => {
    const k = `${size}/${echo ? 1 : 0}`;
    let f = cache.get(k);
    if (f === undefined) {
      f = Buffer.alloc(size, 0x61);
      f[0] = echo ? 1 : 0;
      cache.set(k, f);
    }
    return f;
  };
}

/** Bounded wait for a graceful close, then abort: a stuck peer must not keep the bench (and the process) alive. */
async function closeOrAbort(conn: Connection): Promise<void> {
  try {
    await conn.close({ signal: AbortSignal.timeout(2000) });
  } catch {
    conn.abort();
  }
}

/**
 * A connection through `dialer` to a listener of `listener` at `addr` (the two may be one transport, or two
 * Noise transports with different identities over one wire). `dial` is passed to `dial()` (e.g. `remotePeer`).
 */
export async function sealwireLink(dialer: Transport, listener: Transport, addr: string, dial: DialOptions = {}): Promise<Link> {
  const l = await listener.listen(addr);
  const accepted = l[Symbol.asyncIterator]().next();
  let client: Connection;
  try {
    client = await dial_(dialer, l.addr, dial);
  } catch (e) {
    await l.close();
    throw e;
  }
  const server = (await accepted).value as Connection;
  const received = new Counter();
  const echoes = new Counter();
  void (async () => {
    for await (const f of server) {
      if (f[0] === 1) {
        if (!server.send(f)) await server.drain();
      } else received.hit();
    }
  })().catch(() => {});
  void (async () => {
    for await (const _ of client) echoes.hit();
  })().catch(() => {});
  const frame = framesOf();
  return {
    async burst(n, size) {
      const done = received.until(n);
      const f = frame(size, false);
      for (let i = 0; i < n; i++) if (!client.send(f)) await client.drain();
      await done;
    },
    async ping(size) {
      const done = echoes.until(1);
      if (!client.send(frame(size, true))) await client.drain();
      await done;
    },
    async close() {
      await closeOrAbort(client);
      await closeOrAbort(server);
      await l.close();
    },
  };
}

const dial_ = (t: Transport, addr: string, o: DialOptions) => t.dial(addr, { ...o, signal: AbortSignal.timeout(10_000) });

/** One direction of {@link rawMemoryLink}: an array queue with a high-water mark and one waiting reader. */
class RawQueue {
  #q: Uint8Array[] = [];
  #head = 0;
  #bytes = 0;
  #reader: (() => void) | undefined;
  #drainer: (() => void) | undefined;
  /** Copies `f` in (as `memory()` does); false once the high-water mark is reached. */
  push(f: Uint8Array): boolean {
    this.#q.push(new Uint8Array(f)); // a copy (Buffer#slice would be a view), as memory() makes
    this.#bytes += f.length;
    const r = this.#reader;
    this.#reader = undefined;
    r?.();
    return this.#bytes < RAW_HIGH_WATER_MARK;
  }
  /** Resolves once the reader took the queue down to half the mark. */
  drain(): Promise<void> {
    if (this.#bytes <= RAW_HIGH_WATER_MARK / 2) return Promise.resolve();
    return new Promise((r) => (this.#drainer = r));
  }
  /** The next frame, or undefined when the queue is empty (then {@link wait}). */
  shift(): Uint8Array | undefined {
    if (this.#head === this.#q.length) return undefined;
    const f = this.#q[this.#head]!;
    this.#q[this.#head++] = undefined as never;
    if (this.#head > 1024 && this.#head * 2 > this.#q.length) {
      this.#q = this.#q.slice(this.#head);
      this.#head = 0;
    }
    this.#bytes -= f.length;
    if (this.#drainer !== undefined && this.#bytes <= RAW_HIGH_WATER_MARK / 2) {
      const d = this.#drainer;
      this.#drainer = undefined;
      d();
    }
    return f;
  }
  wait(): Promise<void> {
    return new Promise((r) => (this.#reader = r));
  }
  /** Wakes a waiting reader so it can see `stopped`. */
  wake(): void {
    this.#reader?.();
  }
}

/** The raw in-process baseline for `memory()` (see the module docs). */
export function rawMemoryLink(): Link {
  const there = new RawQueue();
  const back = new RawQueue();
  const received = new Counter();
  const echoes = new Counter();
  let stopped = false;
  const reader = async (q: RawQueue, on: (f: Uint8Array) => void | Promise<void>) => {
    while (!stopped) {
      const f = q.shift();
      if (f === undefined) await q.wait();
      else {
        const r = on(f);
        if (r) await r; // no extra microtask per frame when the handler is synchronous
      }
    }
  };
  void reader(there, async (f) => {
    if (f[0] === 1) {
      if (!back.push(f)) await back.drain();
    } else received.hit();
  });
  void reader(back, () => echoes.hit());
  const frame = framesOf();
  return {
    async burst(n, size) {
      const done = received.until(n);
      const f = frame(size, false);
      for (let i = 0; i < n; i++) if (!there.push(f)) await there.drain();
      await done;
    },
    async ping(size) {
      const done = echoes.until(1);
      there.push(frame(size, true));
      await done;
    },
    async close() {
      stopped = true;
      there.wake();
      back.wake();
    },
  };
}

async function wsOpen(url: string, tls: Tls | undefined): Promise<WebSocket> {
  const ws = new WebSocket(url, { perMessageDeflate: false, ...(tls ? { ca: tls.cert } : {}) });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  return ws;
}

/** Sends on a raw `ws` socket; past the high-water mark, waits until this frame reached the kernel. */
function wsSend(ws: WebSocket, f: Uint8Array): void | Promise<void> {
  if (ws.bufferedAmount < RAW_HIGH_WATER_MARK) {
    ws.send(f);
    return;
  }
  return new Promise((resolve, reject) => ws.send(f, (err) => (err ? reject(err) : resolve())));
}

/** The raw `ws` baseline (`ws://`, or `wss://` with `tls`): client → server on loopback. */
export async function rawWsLink(tls: Tls | undefined): Promise<Link> {
  const http: Server = tls === undefined ? createHttpServer() : createHttpsServer({ cert: tls.cert, key: tls.key });
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false, maxPayload: 4 * MiB });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
  const port = (http.address() as AddressInfo).port;
  const received = new Counter();
  const echoes = new Counter();
  wss.on("connection", (ws) => {
    ws.on("message", (data: Buffer) => {
      if (data[0] === 1) void wsSend(ws, data);
      else received.hit();
    });
  });
  const client = await wsOpen(`${tls ? "wss" : "ws"}://127.0.0.1:${port}`, tls);
  client.on("message", () => echoes.hit());
  const frame = framesOf();
  return {
    async burst(n, size) {
      const done = received.until(n);
      const f = frame(size, false);
      for (let i = 0; i < n; i++) {
        const w = wsSend(client, f);
        if (w) await w;
      }
      await done;
    },
    async ping(size) {
      const done = echoes.until(1);
      await wsSend(client, frame(size, true));
      await done;
    },
    async close() {
      client.terminate();
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
      await new Promise<void>((r) => http.close(() => r()));
    },
  };
}

/** The raw NATS baseline: one publishing and one subscribing connection, as two agents would have. */
export async function rawNatsLink(servers: string[], subject: string): Promise<Link> {
  const pub = await natsConnect({ servers });
  const sub = await natsConnect({ servers });
  const received = new Counter();
  const echoes = new Counter();
  sub.subscribe(`${subject}.data`, { callback: () => received.hit() });
  sub.subscribe(`${subject}.ping`, { callback: (_e, m) => sub.publish(`${subject}.pong`, m.data) });
  pub.subscribe(`${subject}.pong`, { callback: () => echoes.hit() });
  await Promise.all([pub.flush(), sub.flush()]);
  const frame = framesOf();
  return {
    async burst(n, size) {
      const done = received.until(n);
      const f = frame(size, false);
      let unflushed = 0;
      for (let i = 0; i < n; i++) {
        pub.publish(`${subject}.data`, f);
        if ((unflushed += size) >= RAW_NATS_FLUSH_BYTES) {
          unflushed = 0;
          await pub.flush();
        }
      }
      await done;
    },
    async ping(size) {
      const done = echoes.until(1);
      pub.publish(`${subject}.ping`, frame(size, true));
      await done;
    },
    async close() {
      await Promise.allSettled([pub.close(), sub.close()]);
    },
  };
}
