/**
 * WebSocket transport throughput on loopback, each figure beside raw `ws` doing the same work in the same run
 * (samples interleaved, medians):
 *
 * - 1 KiB frames/s, one direction, pipelined: the sender sends a batch of 1000 frames (honouring `send() ===
 *   false` with `drain()`), the sample ends when the receiver has read the last one. Baseline: a bare `ws` client
 *   and `WebSocketServer` (no permessage-deflate) sending the same batch.
 * - 1 KiB echo round trips/s with one frame in flight (latency-bound).
 *
 * Each for `ws://` (sealwire with `insecure: true`, i.e. no secure channel above; Noise adds its own cost) and for
 * `wss://` (TLS 1.3, a throwaway self-signed certificate made with `openssl` in a temporary directory, trusted
 * explicitly by both sides, deleted afterwards).
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source bench/websocket.ts            # prints the rows
 * npx tsx --conditions=source bench/websocket.ts --quick
 * ```
 * ```ts
 * import { benchWebSocket } from "./websocket.js";
 * rows.push(...(await benchWebSocket({ quick })));
 * ```
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createHttpServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import WebSocket, { WebSocketServer } from "ws";
import type { Connection, Listener } from "../src/transport.js";
import { webSocket } from "../transports/websocket.js";
import { machine, measurePair, printRows, row, type Result, type Row } from "./harness.js";

/** Options for {@link benchWebSocket}. */
export interface WebSocketBenchOptions {
  /** Fewer samples (for tests and CI). @default false */
  quick?: boolean;
}

const FRAME_BYTES = 1024;
const BATCH = 1000;

interface Pair {
  /** Sends `n` frames and resolves when the receiver has read all of them. */
  burst(n: number): Promise<void>;
  /** One frame to the echo side and back. */
  roundTrip(): Promise<void>;
  close(): Promise<void>;
}

interface Tls {
  cert: Buffer;
  key: Buffer;
}

/** A throwaway self-signed certificate for 127.0.0.1 (EC P-256), or undefined if openssl is missing. */
function makeCert(): { tls: Tls; cleanup(): void } | undefined {
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
    return {
      tls: { cert: readFileSync(join(dir, "c.pem")), key: readFileSync(join(dir, "k.pem")) },
      cleanup: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
}

/** Counts frames arriving on one side; `until(n)` resolves once `n` more have arrived. */
class Counter {
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

async function sealwirePair(tls: Tls | undefined): Promise<Pair> {
  const t = webSocket({
    insecure: tls === undefined,
    logger: { warn: () => {} }, // the insecure warning is expected here
    pingIntervalMs: 0,
    ...(tls !== undefined ? { tls: { cert: tls.cert, key: tls.key, ca: tls.cert } } : {}),
  });
  const listener: Listener = await t.listen(tls === undefined ? "ws://127.0.0.1:0" : "wss://127.0.0.1:0");
  const accepted = listener[Symbol.asyncIterator]().next();
  const client = await t.dial(listener.addr);
  const server = (await accepted).value as Connection;
  const received = new Counter();
  const echoes = new Counter();
  // Server: the first byte says whether to count (0) or echo (1).
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
  const data = new Uint8Array(FRAME_BYTES);
  const echo = new Uint8Array(FRAME_BYTES).fill(1);
  return {
    async burst(n) {
      const done = received.until(n);
      for (let i = 0; i < n; i++) if (!client.send(data)) await client.drain();
      await done;
    },
    async roundTrip() {
      const done = echoes.until(1);
      client.send(echo);
      await done;
    },
    async close() {
      client.abort();
      await listener.close();
    },
  };
}

async function rawPair(tls: Tls | undefined): Promise<Pair> {
  const http: Server = tls === undefined ? createHttpServer() : createHttpsServer({ cert: tls.cert, key: tls.key });
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false, maxPayload: 1024 * 1024 });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
  const port = (http.address() as AddressInfo).port;
  const received = new Counter();
  const echoes = new Counter();
  wss.on("connection", (ws) => {
    ws.on("message", (data: Buffer) => {
      if (data[0] === 1) ws.send(data);
      else received.hit();
    });
  });
  const client =
    tls === undefined
      ? new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false })
      : new WebSocket(`wss://127.0.0.1:${port}`, { perMessageDeflate: false, ca: tls.cert });
  await new Promise<void>((resolve, reject) => {
    client.once("open", () => resolve());
    client.once("error", reject);
  });
  client.on("message", () => echoes.hit());
  const data = Buffer.alloc(FRAME_BYTES);
  const echo = Buffer.alloc(FRAME_BYTES, 1);
  return {
    async burst(n) {
      const done = received.until(n);
      for (let i = 0; i < n; i++) client.send(data);
      await done;
    },
    async roundTrip() {
      const done = echoes.until(1);
      client.send(echo);
      await done;
    },
    async close() {
      client.terminate();
      for (const c of wss.clients) c.terminate();
      wss.close();
      await new Promise<void>((r) => http.close(() => r()));
    },
  };
}

/** A result measured in batches of `per` operations, as operations per second. */
function scale(r: Result, per: number): Result {
  return { name: r.name, median: r.median * per, samples: r.samples.map((x) => x * per) };
}

/** Measures the WebSocket transport; returns rows for `bench/index.ts` (see the module docs). */
export async function benchWebSocket(options: WebSocketBenchOptions = {}): Promise<Row[]> {
  const quick = options.quick ?? false;
  const samples = quick ? 3 : 7;
  const rows: Row[] = [];
  const cert = makeCert();
  try {
    const schemes: [string, Tls | undefined][] = [["ws", undefined]];
    if (cert !== undefined) schemes.push(["wss", cert.tls]);
    for (const [scheme, tls] of schemes) {
      const ours = await sealwirePair(tls);
      const raw = await rawPair(tls);
      try {
        const [a, b] = await measurePair(
          [`sealwire ${scheme}`, () => ours.burst(BATCH)],
          [`raw ws ${scheme}`, () => raw.burst(BATCH)],
          { batch: 1, samples, warmup: 2 },
        );
        rows.push(row("websocket", `${scheme}:// 1 KiB frames, pipelined`, scale(a, BATCH), scale(b, BATCH), "frames/s"));
        const rtBatch = quick ? 200 : 1000;
        const [c, d] = await measurePair(
          [`sealwire ${scheme}`, () => ours.roundTrip()],
          [`raw ws ${scheme}`, () => raw.roundTrip()],
          { batch: rtBatch, samples, warmup: 1 },
        );
        rows.push(row("websocket", `${scheme}:// 1 KiB echo, one in flight`, c, d, "round trips/s"));
      } finally {
        await ours.close();
        await raw.close();
      }
    }
  } finally {
    cert?.cleanup();
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire websocket bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchWebSocket({ quick }), process.argv.includes("--markdown")));
}
