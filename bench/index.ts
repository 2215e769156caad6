/**
 * `npm run bench`: every measurement beside its baseline from the same run, with the ratio, medians of several
 * samples after warm-up. `--markdown` prints a Markdown table; `--quick` takes fewer samples (used by tests);
 * `--only <group>` runs one group (envelope, session, noise, websocket, hub, nats).
 *
 * @module
 * @example
 * ```sh
 * npm run bench
 * npm run bench -- --markdown
 * npm run bench -- --only noise
 * ```
 */
import { existsSync } from "node:fs";
import { benchEnvelopes } from "./envelope.js";
import { machine, printRows, type Row } from "./harness.js";
import { benchNoise } from "./noise.js";
import { benchSession } from "./session.js";
import { benchWebSocket } from "./websocket.js";

const argv = process.argv.slice(2);
const markdown = argv.includes("--markdown");
const quick = argv.includes("--quick");
const onlyAt = argv.indexOf("--only");
const only = onlyAt >= 0 ? argv[onlyAt + 1] : undefined;

type Group = [name: string, run: () => Promise<Row[]>];
const groups: Group[] = [
  ["envelope", () => benchEnvelopes({ quick })],
  ["session", () => benchSession({ quick })],
  ["noise", () => benchNoise({ quick })],
  ["websocket", () => benchWebSocket({ quick })],
];
// Groups whose modules land separately are loaded only when present.
for (const [name, file, fn] of [
  ["hub", "./hub.ts", "benchHub"],
  ["nats", "./nats.ts", "benchNats"],
] as const) {
  if (existsSync(new URL(file, import.meta.url))) {
    groups.push([name, async () => ((await import(file.replace(/\.ts$/, ".js"))) as Record<string, (o: { quick: boolean }) => Promise<Row[]>>)[fn]!({ quick })]);
  }
}

console.log(`sealwire bench — ${machine()}${quick ? " (quick)" : ""}`);
const rows: Row[] = [];
for (const [name, run] of groups) {
  if (only && name !== only) continue;
  const t0 = performance.now();
  const got = await run();
  rows.push(...got);
  if (!markdown) console.error(`  ${name}: ${got.length} rows in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}
console.log(printRows(rows, markdown));
