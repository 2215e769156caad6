/**
 * WebSocket transport round trips on loopback, beside raw `ws` doing the same work in the same run (samples
 * interleaved, medians): 1 KiB echo round trips/s with one frame in flight (latency-bound), for `ws://`
 * (sealwire with `insecure: true`, i.e. no secure channel above; Noise adds its own cost, see `latency.ts`) and
 * for `wss://` (TLS 1.3, a throwaway self-signed certificate made with `openssl`, trusted explicitly by both
 * sides; skipped, with a row saying so, if openssl is missing).
 *
 * One-way throughput (frames/s and MB/s at 1 KiB and 64 KiB) for `ws://`, `wss://` and `noise(ws://)` is in the
 * `transports` group (`transports.ts`), with the same raw baselines (`links.ts`).
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
import { pathToFileURL } from "node:url";
import { webSocket } from "../transports/websocket.js";
import { machine, measurePair, printRows, row, skippedRow, type Row } from "./harness.js";
import { makeCert, rawWsLink, sealwireLink, type Tls } from "./links.js";

/** Options for {@link benchWebSocket}. */
export interface WebSocketBenchOptions {
  /** Fewer samples (for tests and CI). @default false */
  quick?: boolean;
}

const FRAME_BYTES = 1024;

/** Measures the WebSocket transport; returns rows for `bench/index.ts` (see the module docs). */
export async function benchWebSocket(options: WebSocketBenchOptions = {}): Promise<Row[]> {
  const quick = options.quick ?? false;
  const samples = quick ? 3 : 7;
  const rows: Row[] = [];
  const tls = makeCert();
  const schemes: [string, Tls | undefined][] = [["ws", undefined]];
  if (tls !== undefined) schemes.push(["wss", tls]);
  else rows.push(skippedRow("websocket", "wss:// 1 KiB echo, one in flight", "raw ws wss", "openssl not installed (needed for the throwaway certificate)"));
  for (const [scheme, t] of schemes) {
    const w = webSocket({
      pingIntervalMs: 0,
      ...(t === undefined ? { insecure: true, logger: { warn: () => {} } } : { tls: { cert: t.cert, key: t.key, ca: t.cert } }),
    });
    const ours = await sealwireLink(w, w, `${scheme}://127.0.0.1:0`);
    const raw = await rawWsLink(t);
    try {
      const [c, d] = await measurePair(
        [`sealwire ${scheme}`, () => ours.ping(FRAME_BYTES)],
        [`raw ws ${scheme}`, () => raw.ping(FRAME_BYTES)],
        { batch: quick ? 200 : 1000, samples, warmup: 1 },
      );
      rows.push(row("websocket", `${scheme}:// 1 KiB echo, one in flight`, c, d, "round trips/s"));
    } finally {
      await ours.close();
      await raw.close();
    }
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire websocket bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchWebSocket({ quick }), process.argv.includes("--markdown")));
}
