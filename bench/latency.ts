/**
 * Request/reply round-trip latency at 1 KiB, p50 and p99, between two agents talking directly (no hub):
 * `alice.request("bob", 1 KiB)` one at a time, bob answering `msg.reply(msg.data)`. Everything is in: the
 * default policy on both sides, signing and sealing, the transport both ways, verification, decryption, and the
 * inbox — in signed mode and in session mode (a stream per direction, AEAD per message, signed checkpoints). Over:
 *
 * - `memory()` — beside a raw in-process queue ping-pong of a 1 KiB frame (see `links.ts`);
 * - `noise(webSocket())` on `ws://` loopback — beside a raw `ws` ping-pong of a 1 KiB frame.
 *
 * Also, to show where the time goes, the sealwire transport alone (a 1 KiB frame echoed over `memory()` /
 * `noise(ws)`, no envelopes) beside the same raw ping-pong. Round trips of all sides are taken in interleaved
 * rounds, so load changes hit every side alike. For these rows the ratio is sealwire ÷ raw: higher is slower.
 *
 * @module
 * @example
 * ```sh
 * npm run bench -- --only latency
 * npx tsx --conditions=source bench/latency.ts --quick
 * ```
 * ```ts
 * import { benchLatency } from "./latency.js";
 * rows.push(...(await benchLatency({ quick })));
 * ```
 */
import { pathToFileURL } from "node:url";
import { createAgent, type Agent } from "../src/agent.js";
import { Identity } from "../src/identity.js";
import type { Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory } from "../transports/memory.js";
import { noise } from "../transports/noise/index.js";
import { webSocket } from "../transports/websocket.js";
import { fixed, latencies, machine, median, percentile, printRows, row, type RoundTripper, type Row } from "./harness.js";
import { rawMemoryLink, rawWsLink, sealwireLink, type Link } from "./links.js";

/** Options for {@link benchLatency}. */
export interface LatencyBenchOptions {
  /** Fewer round trips (for tests and CI). @default false */
  quick?: boolean;
}

const PAYLOAD = 1024;

/** Two agents, bob answering every request with its data; `roundTrip` is one `alice.request`. */
async function agentPair(
  wire: (id: Identity, trust: TrustStore) => Transport,
  listen: string | undefined,
  mode: "signed" | "session" = "signed",
): Promise<RoundTripper & { close(): Promise<void> }> {
  const alice = Identity.generate("bench-alice");
  const bob = Identity.generate("bench-bob");
  const trust = new TrustStore();
  trust.add(alice.publicIdentity);
  trust.add(bob.publicIdentity);
  const agents: Agent[] = [];
  try {
    for (const id of [alice, bob]) {
      agents.push(await createAgent({ identity: id, trust, transport: wire(id, trust), mode, ...(listen !== undefined ? { listen } : {}) }));
    }
  } catch (e) {
    await Promise.allSettled(agents.map((a) => a.close()));
    alice.close();
    bob.close();
    throw e;
  }
  const [a, b] = agents as [Agent, Agent];
  // Port 0 becomes a real port only once listening: tell each side where the other is.
  if (listen !== undefined) {
    trust.add(alice.publicIdentity, { address: a.address! });
    trust.add(bob.publicIdentity, { address: b.address! });
  }
  void (async () => {
    for await (const m of b.messages()) if (m.type === "req") await m.reply(m.data);
  })().catch(() => {});
  const payload = new Uint8Array(PAYLOAD).fill(0x61);
  return {
    async roundTrip() {
      await a.request(bob.id, payload, { timeoutMs: 10_000 });
    },
    async close() {
      await Promise.allSettled([a.close(), b.close()]);
      alice.close();
      bob.close();
    },
  };
}

const pinger = (l: Link): RoundTripper => ({ roundTrip: () => l.ping(PAYLOAD) });

/** Measures request/reply latency beside raw round trips; returns rows for `bench/index.ts` (see module docs). */
export async function benchLatency(options: LatencyBenchOptions = {}): Promise<Row[]> {
  const quick = options.quick ?? false;
  const perSide = quick ? 100 : 2000;
  const rounds = quick ? 4 : 10;
  const warmup = quick ? 20 : 200;
  const rows: Row[] = [];
  const G = "latency";

  const cases: {
    name: string;
    rawName: string;
    agents: (mode: "signed" | "session") => ReturnType<typeof agentPair>;
    transport: () => Promise<Link>;
    raw: () => Promise<Link>;
  }[] = [
    {
      name: "memory()",
      rawName: "raw in-process queue ping-pong",
      agents: (mode) => {
        const net = memory();
        return agentPair(() => net, undefined, mode);
      },
      transport: () => {
        const net = memory();
        return sealwireLink(net, net, "mem://bench-echo");
      },
      raw: async () => rawMemoryLink(),
    },
    {
      name: "noise(ws://)",
      rawName: "raw ws ping-pong, ws://",
      agents: (mode) => agentPair((id, trust) => noise({ transport: webSocket({ pingIntervalMs: 0 }), identity: id, trust }), "ws://127.0.0.1:0", mode),
      transport: async () => {
        const ids = [Identity.generate("bench-a"), Identity.generate("bench-b")] as const;
        const trust = new TrustStore();
        for (const i of ids) trust.add(i.publicIdentity);
        const w = webSocket({ pingIntervalMs: 0 });
        const link = await sealwireLink(noise({ transport: w, identity: ids[0], trust }), noise({ transport: w, identity: ids[1], trust }), "ws://127.0.0.1:0", {
          remotePeer: ids[1].id,
        });
        return { ...link, close: async () => (await link.close(), ids.forEach((i) => i.close())) };
      },
      raw: () => rawWsLink(undefined),
    },
  ];

  for (const c of cases) {
    const closers: (() => Promise<void>)[] = [];
    try {
      const agents = await c.agents("signed");
      closers.push(() => agents.close());
      const sessionAgents = await c.agents("session");
      closers.push(() => sessionAgents.close());
      const transport = await c.transport();
      closers.push(() => transport.close());
      const raw = await c.raw();
      closers.push(() => raw.close());
      const ours = `sealwire agents, ${c.name}`;
      const oursSession = `sealwire agents in session mode, ${c.name}`;
      const frames = `sealwire ${c.name} frame echo`;
      const lat = await latencies(
        [
          [ours, agents],
          [oursSession, sessionAgents],
          [frames, pinger(transport)],
          [c.rawName, pinger(raw)],
        ],
        perSide,
        rounds,
        warmup,
      );
      const base = lat.get(c.rawName)!;
      const p50 = (name: string) => fixed(name, median(lat.get(name)!), lat.get(name)!);
      const p99 = (name: string) => fixed(name, percentile(lat.get(name)!, 99), lat.get(name)!);
      const n = `${base.length} round trips per side`;
      rows.push(
        row(G, `${c.name} request/reply 1 KiB, p50`, p50(ours), fixed(c.rawName, median(base), base), "ms", undefined, n),
        row(G, `${c.name} request/reply 1 KiB, p99`, p99(ours), fixed(c.rawName, percentile(base, 99), base), "ms", undefined, n),
        row(G, `${c.name} request/reply 1 KiB, session mode, p50`, p50(oursSession), fixed(c.rawName, median(base), base), "ms", undefined, n),
        row(G, `${c.name} request/reply 1 KiB, session mode, p99`, p99(oursSession), fixed(c.rawName, percentile(base, 99), base), "ms", undefined, n),
        row(G, `${c.name} transport alone, 1 KiB echo, p50`, p50(frames), fixed(c.rawName, median(base), base), "ms", undefined, n),
        row(G, `${c.name} transport alone, 1 KiB echo, p99`, p99(frames), fixed(c.rawName, percentile(base, 99), base), "ms", undefined, n),
      );
    } finally {
      for (const close of closers.reverse()) await close().catch(() => {});
    }
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire latency bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchLatency({ quick }), process.argv.includes("--markdown")));
}
