/**
 * The transports as they exist, one way, at 1 KiB and 64 KiB frames, each beside the raw transport without
 * sealwire measured in the same run (samples interleaved, medians):
 *
 * | sealwire                    | raw baseline                                               |
 * |-----------------------------|------------------------------------------------------------|
 * | `memory()`                  | an in-process array queue (copy on send, 1 MiB mark)       |
 * | `noise(memory())`           | the same in-process queue                                  |
 * | `webSocket()` on `ws://`    | bare `ws` client and server, `ws://`                       |
 * | `webSocket()` on `wss://`   | bare `ws` over TLS 1.3, same throwaway certificate         |
 * | `noise(webSocket())`        | bare `ws`, `ws://` (Noise replaces TLS)                    |
 * | `nats()` core               | bare nats.js publish/subscribe on the same `nats-server`   |
 *
 * One sample = one burst of frames sent with backpressure respected (see `links.ts`), ended when the receiver
 * has read the last frame. Burst lengths are calibrated per side so that each sample lasts about the same time
 * (~100 ms, ~15 ms with `--quick`), which keeps fast baselines above timer noise. Reported: frames/s, and in
 * the note MB/s of frame bytes (MB = 10^6 bytes). A 64 KiB frame is 65,536 application bytes; Noise carries it
 * as two transport messages (at most 65,535 bytes each, Noise §3), which is part of what is measured.
 *
 * `wss` needs `openssl` (for the certificate) and `nats` needs `nats-server` on the PATH; without them their
 * rows say "skipped" and why, and the run goes on. Everything listens on 127.0.0.1 and is closed at the end.
 *
 * @module
 * @example
 * ```sh
 * npm run bench -- --only transports
 * npx tsx --conditions=source bench/transports.ts --quick
 * ```
 * ```ts
 * import { benchTransports } from "./transports.js";
 * rows.push(...(await benchTransports({ quick })));
 * ```
 */
import { pathToFileURL } from "node:url";
import { startNats, type NatsCluster } from "../examples/nats-cluster/cluster.js";
import { Identity } from "../src/identity.js";
import type { Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory } from "../transports/memory.js";
import { nats } from "../transports/nats.js";
import { noise } from "../transports/noise/index.js";
import { webSocket } from "../transports/websocket.js";
import { machine, measurePair, printRows, row, scale, skippedRow, type Result, type Row } from "./harness.js";
import { makeCert, onPath, rawMemoryLink, rawNatsLink, rawWsLink, sealwireLink, type Link, type Tls } from "./links.js";

/** Options for {@link benchTransports}. */
export interface TransportBenchOptions {
  /** Shorter samples (for tests and CI). @default false */
  quick?: boolean;
}

const KiB = 1024;
const SIZES: readonly [label: string, bytes: number][] = [
  ["1 KiB", KiB],
  ["64 KiB", 64 * KiB],
];
const GROUP = "transports";

/**
 * How many frames one burst should hold so that it lasts about `targetMs`: grows from 8 frames ×4 until a burst
 * takes a quarter of the target (these bursts also warm the path up), then scales. At most `maxN`.
 */
async function calibrate(burst: (n: number) => Promise<void>, targetMs: number, maxN: number): Promise<number> {
  for (let n = 8; ; n *= 4) {
    const t0 = performance.now();
    await burst(n);
    const dt = performance.now() - t0;
    if (dt >= targetMs / 4 || n >= maxN) return Math.max(1, Math.min(maxN, Math.round((n * targetMs) / Math.max(dt, 0.01))));
  }
}

/** One transport under test, beside its raw baseline. */
interface Case {
  /** e.g. `noise(ws)`. */
  name: string;
  rawName: string;
  ours: () => Promise<Link>;
  /** The baseline; shared between cases (one raw `ws` for `ws` and `noise(ws)`), so only created once. */
  raw: () => Promise<Link>;
  /** Set when the case cannot run here: its rows say "skipped: <why>". */
  skip?: string;
}

/** Memoizes a link factory, remembering what was opened so it can be closed once. */
function shared(make: () => Promise<Link>, opened: Link[]): () => Promise<Link> {
  let p: Promise<Link> | undefined;
  return () =>
    (p ??= make().then((l) => {
      opened.push(l);
      return l;
    }));
}

/** Measures the transports beside raw ones; returns rows for `bench/index.ts` (see the module docs). */
export async function benchTransports(options: TransportBenchOptions = {}): Promise<Row[]> {
  const quick = options.quick ?? false;
  const samples = quick ? 3 : 7;
  const warmup = quick ? 1 : 2;
  const targetMs = quick ? 15 : 100;
  /** Frame bytes one burst may hold: bounds memory (raw NATS buffers what the subscriber has not read yet). */
  const maxBurstBytes = (quick ? 8 : 48) * 1024 * KiB;
  const rows: Row[] = [];
  const opened: Link[] = [];
  const identities = ["bench-alice", "bench-bob"].map((id) => Identity.generate(id));
  const [alice, bob] = identities as [Identity, Identity];
  const trust = new TrustStore();
  trust.add(alice.publicIdentity);
  trust.add(bob.publicIdentity);
  const tls: Tls | undefined = makeCert();
  const haveNats = onPath("nats-server");
  let natsServer: NatsCluster | undefined;
  const natsServers = async () => (natsServer ??= await startNats({})).urls();

  const net = memory();
  const wsWire = (t: Tls | undefined): Transport =>
    webSocket({
      pingIntervalMs: 0,
      ...(t === undefined ? { insecure: true, logger: { warn: () => {} } } : { tls: { cert: t.cert, key: t.key, ca: t.cert } }),
    });
  const noiseOver = (wire: Transport, who: Identity) => noise({ transport: wire, identity: who, trust });
  const rawMemory = shared(async () => rawMemoryLink(), opened);
  const rawWs = shared(() => rawWsLink(undefined), opened);
  const rawWss = shared(() => rawWsLink(tls), opened);
  const rawNats = shared(async () => rawNatsLink(await natsServers(), "bench.transports.raw"), opened);

  const cases: Case[] = [
    { name: "memory()", rawName: "raw in-process queue", ours: () => sealwireLink(net, net, "mem://bench-plain"), raw: rawMemory },
    {
      name: "noise(memory())",
      rawName: "raw in-process queue",
      ours: () => sealwireLink(noiseOver(net, alice), noiseOver(net, bob), "mem://bench-noise", { remotePeer: bob.id }),
      raw: rawMemory,
    },
    { name: "ws://", rawName: "raw ws, ws://", ours: () => { const w = wsWire(undefined); return sealwireLink(w, w, "ws://127.0.0.1:0"); }, raw: rawWs },
    {
      name: "wss:// (TLS 1.3)",
      rawName: "raw ws, wss://",
      ours: () => { const w = wsWire(tls); return sealwireLink(w, w, "wss://127.0.0.1:0"); },
      raw: rawWss,
      ...(tls === undefined ? { skip: "openssl not installed (needed for the throwaway certificate)" } : {}),
    },
    {
      name: "noise(ws://)",
      rawName: "raw ws, ws://",
      ours: () => {
        const w = webSocket({ pingIntervalMs: 0 });
        return sealwireLink(noiseOver(w, alice), noiseOver(w, bob), "ws://127.0.0.1:0", { remotePeer: bob.id });
      },
      raw: rawWs,
    },
    {
      name: "nats() core",
      rawName: "raw nats.js pub/sub",
      ours: async () => {
        const servers = await natsServers();
        const tx = nats({ servers, mode: "core", namespace: "benchtransports" });
        const rx = nats({ servers, mode: "core", namespace: "benchtransports" });
        return sealwireLink(tx, rx, rx.addressFor!("bench-rx"));
      },
      raw: rawNats,
      ...(haveNats ? {} : { skip: "nats-server not installed" }),
    },
  ];

  try {
    for (const c of cases) {
      if (c.skip !== undefined) {
        for (const [label] of SIZES) rows.push(skippedRow(GROUP, `${c.name} ${label} frames, one way`, c.rawName, c.skip));
        continue;
      }
      const raw = await c.raw();
      const ours = await c.ours();
      opened.push(ours);
      for (const [label, size] of SIZES) {
        const maxN = Math.max(4, Math.floor(maxBurstBytes / size));
        const nOurs = await calibrate((n) => ours.burst(n, size), targetMs, maxN);
        const nRaw = await calibrate((n) => raw.burst(n, size), targetMs, maxN);
        const [a, b] = await measurePair(
          [`sealwire ${c.name}`, () => ours.burst(nOurs, size)],
          [c.rawName, () => raw.burst(nRaw, size)],
          { batch: 1, samples, warmup },
        );
        const fa = scale(a, nOurs);
        const fb = scale(b, nRaw);
        const mb = (r: Result) => ((r.median * size) / 1e6).toFixed(size >= 64 * KiB ? 0 : 1);
        rows.push(row(GROUP, `${c.name} ${label} frames, one way`, fa, fb, "frames/s", undefined, `${mb(fa)} vs ${mb(fb)} MB/s`));
      }
      await ours.close();
      opened.splice(opened.indexOf(ours), 1);
    }
  } finally {
    for (const l of opened) await l.close().catch(() => {});
    await natsServer?.stop();
    for (const i of identities) i.close();
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire transports bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchTransports({ quick }), process.argv.includes("--markdown")));
}
