/**
 * Agent → agent through the hub over `noise(webSocket())` on loopback, 1 KiB payloads, beside raw `ws` (no
 * sealwire at all) doing the same work with the same payload size in the same run (issue 5, "Speed"):
 *
 * - **messages/s, pipelined, to delivery**: alice starts a batch of `send("bob", 1 KiB)` calls without waiting
 *   for one before the next; the sample ends when bob's application has read the last one. Everything is in:
 *   the send-side policy (default: PII clearances + content scanners), signing and sealing, the Noise channel to
 *   the hub, the hub's checks (sender, signature, expiry, replay, relay policy) and routing, the Noise channel to
 *   bob, bob's verification, decryption, deliver-side policy, and bob's acknowledgement back to the hub.
 *   The same with `waitForDelivery: true` (the batch ends when every send resolved: confirmed by bob via the hub).
 *   And in session mode (agents with `mode: "session"`: one stream each way, the hub routing continuations it
 *   cannot verify by their sender's connection), beside the raw relay and beside signed mode.
 * - **round-trip latency p50/p99, request/reply**: `alice.request("bob", 1 KiB)` one at a time, bob answers with
 *   the same 1 KiB (`msg.reply`); each sample is one round trip (four hops through the hub).
 *
 * Baselines, raw `ws` (no permessage-deflate) with 1 KiB binary frames: direct client → server (one hop), and a
 * raw relay (client → relay server → client: two hops, the shape of the hub path); pipelined frames/s and echo
 * round trips (`p50`/`p99`). A raw `wss` (TLS 1.3, a throwaway self-signed certificate made with `openssl` in a
 * temporary directory) direct baseline too, when openssl is present. Throughput samples of each pair are
 * interleaved (`measurePair`); latency samples are taken in interleaved rounds. For latency rows the ratio is
 * sealwire ÷ raw (higher is slower); for rates it is sealwire ÷ raw (lower is slower).
 *
 * Everything runs in this one process (hub, both agents, both raw ends), so the figures are one core's worth.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source bench/hub.ts            # prints the rows
 * npx tsx --conditions=source bench/hub.ts --quick
 * npm run bench -- --only hub
 * ```
 * ```ts
 * import { benchHub } from "./hub.js";
 * rows.push(...(await benchHub({ quick })));
 * ```
 */
import { createServer as createHttpServer, type IncomingMessage, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { loadavg } from "node:os";
import { pathToFileURL } from "node:url";
import WebSocket, { WebSocketServer } from "ws";
import { createAgent, type Agent } from "../src/agent.js";
import { createHub, type Hub } from "../src/hub.js";
import { Identity } from "../src/identity.js";
import { TrustStore } from "../src/trust.js";
import { noise } from "../transports/noise/index.js";
import { webSocket } from "../transports/websocket.js";
import { fixed as at, latencies, machine, measurePair, median, percentile, printRows, row, scale, type Row } from "./harness.js";
import { Counter, makeCert, type Tls } from "./links.js";

/** Options for {@link benchHub}. */
export interface HubBenchOptions {
  /** Fewer, smaller samples (for tests and CI). @default false */
  quick?: boolean;
}

const PAYLOAD_BYTES = 1024;

/** What each side of the comparison can do. */
interface Side {
  /** Sends `n` payloads; resolves when the receiving end has read all of them. */
  burst(n: number): Promise<void>;
  /** One payload there and back. */
  roundTrip(): Promise<void>;
  close(): Promise<void>;
}

/** A hub and two agents over `noise(webSocket())` on loopback, sending in `mode`. */
async function hubSide(mode: "signed" | "session" = "signed"): Promise<Side & { confirmedBurst(n: number): Promise<void> }> {
  const trust = new TrustStore();
  const ids: Record<string, Identity> = {};
  for (const id of ["hub", "alice", "bob"]) {
    ids[id] = Identity.generate(id);
    trust.add(ids[id].publicIdentity);
  }
  const wire = (id: string) => noise({ transport: webSocket({ pingIntervalMs: 0 }), identity: ids[id]!, trust });
  const hub: Hub = await createHub({ identity: ids["hub"]!, trust, transport: wire("hub"), listen: "ws://127.0.0.1:0" });
  const agent = (id: string): Promise<Agent> => createAgent({ identity: ids[id]!, trust, transport: wire(id), hub: hub.address!, hubPeer: "hub", mode });
  const alice = await agent("alice");
  const bob = await agent("bob");
  const received = new Counter();
  void (async () => {
    for await (const m of bob.messages()) {
      if (m.type === "req") await m.reply(m.data);
      else received.hit();
    }
  })().catch(() => {});
  const payload = new Uint8Array(PAYLOAD_BYTES).fill(0x61);
  return {
    async burst(n) {
      const done = received.until(n);
      const sends: Promise<unknown>[] = [];
      for (let i = 0; i < n; i++) sends.push(alice.send("bob", payload));
      await Promise.all(sends);
      await done;
    },
    async confirmedBurst(n) {
      const done = received.until(n);
      const sends: Promise<unknown>[] = [];
      for (let i = 0; i < n; i++) sends.push(alice.send("bob", payload, { waitForDelivery: true }));
      await Promise.all(sends);
      await done;
    },
    async roundTrip() {
      await alice.request("bob", payload, { timeoutMs: 10_000 });
    },
    async close() {
      await Promise.allSettled([alice.close(), bob.close()]);
      await hub.close();
      for (const i of Object.values(ids)) i.close();
    },
  };
}

async function serve(tls: Tls | undefined): Promise<{ http: Server; wss: WebSocketServer; url: string }> {
  const http: Server = tls === undefined ? createHttpServer() : createHttpsServer({ cert: tls.cert, key: tls.key });
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false, maxPayload: 1024 * 1024 });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
  return { http, wss, url: `${tls ? "wss" : "ws"}://127.0.0.1:${(http.address() as AddressInfo).port}` };
}

async function connect(url: string, tls: Tls | undefined): Promise<WebSocket> {
  const ws = new WebSocket(url, { perMessageDeflate: false, ...(tls ? { ca: tls.cert } : {}) });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  return ws;
}

/**
 * Raw `ws`. `relay: false`: client → server (the server counts, or echoes frames whose first byte is 1).
 * `relay: true`: client A → relay → client B (B counts, or echoes back through the relay).
 */
async function rawSide(tls: Tls | undefined, relay: boolean): Promise<Side> {
  const { http, wss, url } = await serve(tls);
  const received = new Counter();
  const echoes = new Counter();
  const sockets: WebSocket[] = [];
  // The receiving end: counts, or echoes frames that start with 1.
  const receiver = (ws: WebSocket) =>
    ws.on("message", (data: Buffer) => {
      if (data[0] === 1) ws.send(data);
      else received.hit();
    });
  let a: WebSocket;
  if (!relay) {
    wss.on("connection", receiver);
    a = await connect(url, tls);
  } else {
    const peers = new Map<string, WebSocket>();
    wss.on("connection", (ws: WebSocket, req: IncomingMessage) => {
      const me = req.url === "/a" ? "/a" : "/b";
      const other = me === "/a" ? "/b" : "/a";
      peers.set(me, ws);
      ws.on("message", (data: Buffer) => peers.get(other)?.send(data));
    });
    const b = await connect(`${url}/b`, tls);
    receiver(b);
    sockets.push(b);
    a = await connect(`${url}/a`, tls);
  }
  sockets.push(a);
  a.on("message", () => echoes.hit());
  const data = Buffer.alloc(PAYLOAD_BYTES, 0x61);
  const echo = Buffer.alloc(PAYLOAD_BYTES, 1);
  return {
    async burst(n) {
      const done = received.until(n);
      for (let i = 0; i < n; i++) a.send(data);
      await done;
    },
    async roundTrip() {
      const done = echoes.until(1);
      a.send(echo);
      await done;
    },
    async close() {
      for (const s of sockets) s.terminate();
      for (const c of wss.clients) c.terminate();
      wss.close();
      await new Promise<void>((r) => http.close(() => r()));
    },
  };
}

/** Measures the hub path beside raw WebSockets; returns rows for `bench/index.ts` (see the module docs). */
export async function benchHub(options: HubBenchOptions = {}): Promise<Row[]> {
  const quick = options.quick ?? false;
  const samples = quick ? 3 : 7;
  const batch = quick ? 300 : 1000;
  const rtts = quick ? 200 : 2000;
  const rows: Row[] = [];
  const G = "hub";
  const tls = makeCert();
  const hub = await hubSide();
  const hubSession = await hubSide("session");
  const direct = await rawSide(undefined, false);
  const relay = await rawSide(undefined, true);
  const secure = tls ? await rawSide(tls, false) : undefined;
  try {
    const what = "agent→agent via hub, noise(ws), 1 KiB, pipelined, to delivery";
    const [h1, r1] = await measurePair(["sealwire hub", () => hub.burst(batch)], ["raw ws direct (1 hop)", () => direct.burst(batch)], { batch: 1, samples, warmup: 2 });
    rows.push(row(G, what, scale(h1, batch), scale(r1, batch), "msgs/s"));
    const [h2, r2] = await measurePair(["sealwire hub", () => hub.burst(batch)], ["raw ws relay (2 hops)", () => relay.burst(batch)], { batch: 1, samples, warmup: 1 });
    rows.push(row(G, what, scale(h2, batch), scale(r2, batch), "msgs/s"));
    if (secure) {
      const [h3, r3] = await measurePair(["sealwire hub", () => hub.burst(batch)], ["raw wss direct (1 hop)", () => secure.burst(batch)], { batch: 1, samples, warmup: 1 });
      rows.push(row(G, what, scale(h3, batch), scale(r3, batch), "msgs/s"));
    }
    const [h4, r4] = await measurePair(
      ["sealwire hub", () => hub.confirmedBurst(batch)],
      ["raw ws relay (2 hops)", () => relay.burst(batch)],
      { batch: 1, samples, warmup: 1 },
    );
    rows.push(row(G, "… with waitForDelivery (confirmed by bob via the hub)", scale(h4, batch), scale(r4, batch), "msgs/s"));
    const [h5, r5] = await measurePair(["sealwire hub, session mode", () => hubSession.burst(batch)], ["raw ws relay (2 hops)", () => relay.burst(batch)], { batch: 1, samples, warmup: 1 });
    rows.push(row(G, "… in session mode (streams, AEAD per message)", scale(h5, batch), scale(r5, batch), "msgs/s"));
    const [h6, r6] = await measurePair(["sealwire hub, session mode", () => hubSession.burst(batch)], ["sealwire hub, signed mode", () => hub.burst(batch)], { batch: 1, samples, warmup: 1 });
    rows.push(row(G, "agent→agent via hub, session mode vs signed mode", scale(h6, batch), scale(r6, batch), "msgs/s"));

    const sides: [string, Side][] = [
      ["sealwire hub request/reply", hub],
      ["raw ws direct echo", direct],
      ["raw ws relay echo", relay],
      ...(secure ? ([["raw wss direct echo", secure]] as [string, Side][]) : []),
    ];
    const lat = await latencies(sides, rtts, quick ? 4 : 10, quick ? 20 : 100);
    const ours = lat.get("sealwire hub request/reply")!;
    for (const [name] of sides.slice(1)) {
      const theirs = lat.get(name)!;
      rows.push(row(G, "round trip, 1 KiB request/reply, p50", at("sealwire hub", median(ours), ours), at(name, median(theirs), theirs), "ms"));
      rows.push(row(G, "round trip, 1 KiB request/reply, p99", at("sealwire hub", percentile(ours, 99), ours), at(name, percentile(theirs, 99), theirs), "ms"));
    }
  } finally {
    await hub.close();
    await hubSession.close();
    await direct.close();
    await relay.close();
    await secure?.close();
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire hub bench — ${machine()}${quick ? " (quick)" : ""}; load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  console.log(printRows(await benchHub({ quick }), process.argv.includes("--markdown")));
  console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
}
