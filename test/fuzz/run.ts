/**
 * `npm run fuzz`: the full fuzz pass (≥ 1,000,000 cases over every decoder that reads bytes from outside).
 *
 * Prints the seed first, then per-target progress, and at the end per-target counts, the outcome histogram, the
 * slowest call and the memory peaks. Exits 1 on any finding, after writing each failing input to
 * `test/fuzz/regressions/<target>-<hash>.bin` (replayed by `test/fuzz.test.ts` from then on).
 *
 * A watchdog thread guards against a decoder that never returns (a synchronous infinite loop cannot be timed
 * out from the thread it blocks): the main thread copies each input into shared memory before the call and
 * bumps a counter after it; if the counter stalls, the watchdog writes the input as a regression file, prints
 * the finding and kills the process.
 *
 * @module
 * @example
 * ```sh
 * npm run fuzz                                # full run, random seed
 * npm run fuzz -- --seed 1234                 # replay a run
 * npm run fuzz -- --cases 50000 --only codec,payload
 * ```
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { formatReport, runFuzz } from "./harness.js";
import { parseSeed } from "./rng.js";
import { CI_SPLIT, FULL_SPLIT, scaleSplit, splitTotal, TARGETS } from "./targets.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const REGRESSIONS = join(HERE, "regressions");
/** A case that has not returned after this long is a hang (async calls time out on their own far earlier). */
const DEFAULT_WATCHDOG_S = 120;
const CAPTURE_BYTES = 4 << 20;

const USAGE = `Usage: npm run fuzz -- [--seed <n>] [--cases <total>] [--only <t1,t2>] [--ci] [--no-write] [--list]
  --seed <n>      run seed (uint32, 0x-hex, or any string); default random, always printed
  --cases <n>     total cases, spread over the targets in the full run's proportions (default ${splitTotal(FULL_SPLIT)})
  --only <list>   comma-separated target names
  --ci            use the CI split (${splitTotal(CI_SPLIT)} cases)
  --no-write      do not write regression files for findings
  --watchdog <s>  a call still running after this many seconds is a hang: the input is saved and the run killed
                  (default ${DEFAULT_WATCHDOG_S})
  --list          list the targets and their share, then exit`;

function parseArgs(argv: string[]) {
  const o: { seed?: string; cases?: number; only?: string[]; ci: boolean; write: boolean; list: boolean; watchdogS: number } = {
    ci: false,
    write: true,
    list: false,
    watchdogS: DEFAULT_WATCHDOG_S,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = () => {
      const v = a.includes("=") ? a.slice(a.indexOf("=") + 1) : argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--seed" || a.startsWith("--seed=")) o.seed = val();
    else if (a === "--cases" || a.startsWith("--cases=")) {
      const n = Number(val());
      if (!Number.isSafeInteger(n) || n < 1) throw new Error("--cases must be a positive integer");
      o.cases = n;
    } else if (a === "--only" || a.startsWith("--only=")) o.only = val().split(",").filter(Boolean);
    else if (a === "--watchdog" || a.startsWith("--watchdog=")) {
      const n = Number(val());
      if (!Number.isFinite(n) || n < 1) throw new Error("--watchdog must be a number of seconds >= 1");
      o.watchdogS = n;
    } else if (a === "--ci") o.ci = true;
    else if (a === "--no-write") o.write = false;
    else if (a === "--list") o.list = true;
    else if (a === "-h" || a === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

/** The watchdog: plain JS in a worker, sharing a counter and the current input with the main thread. */
const WATCHDOG_SOURCE = `
const { workerData } = require("node:worker_threads");
const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const { ctrl, data, names, dir, limitMs, write } = workerData;
const c = new Int32Array(ctrl);
const d = new Uint8Array(data);
let last = Atomics.load(c, 0), since = Date.now();
setInterval(() => {
  const now = Atomics.load(c, 0);
  if (now !== last || Atomics.load(c, 3) === 0) { last = now; since = Date.now(); return; }
  if (Date.now() - since < limitMs) return;
  const name = names[Atomics.load(c, 2)] || "unknown";
  const input = Buffer.from(d.subarray(0, Math.min(Atomics.load(c, 1), d.length)));
  let where = "(not written: --no-write)";
  if (write) {
    fs.mkdirSync(dir, { recursive: true });
    where = path.join(dir, name + "-" + crypto.createHash("sha256").update(input).digest("hex").slice(0, 12) + ".bin");
    fs.writeFileSync(where, input);
  }
  fs.writeSync(2, "\\nFINDING " + name + ": a call did not return within " + limitMs / 1000 + " s (a hang)\\n  input: " + where + "\\n");
  process.kill(process.pid, "SIGKILL");
}, 1000);
`;

async function main(): Promise<number> {
  let o: ReturnType<typeof parseArgs>;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`fuzz: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const base = o.ci ? CI_SPLIT : FULL_SPLIT;
  let split: Record<string, number> = o.cases !== undefined ? scaleSplit(base, o.cases) : { ...base };
  if (o.only) {
    const unknown = o.only.filter((n) => !TARGETS.some((t) => t.name === n));
    if (unknown.length > 0) {
      console.error(`fuzz: unknown target(s) ${unknown.join(", ")}; known: ${TARGETS.map((t) => t.name).join(", ")}`);
      return 2;
    }
    split = Object.fromEntries(Object.entries(split).filter(([k]) => o.only!.includes(k)));
    if (o.cases !== undefined) split = scaleSplit(split, o.cases);
  }
  if (o.list) {
    for (const t of TARGETS) console.log(`${t.name.padEnd(18)} ${split[t.name] ?? 0}`);
    console.log(`${"total".padEnd(18)} ${splitTotal(split)}`);
    return 0;
  }
  const seed = o.seed !== undefined ? parseSeed(o.seed) : randomBytes(4).readUInt32BE(0);
  console.log(`sealwire fuzz: seed ${seed}, ${splitTotal(split)} cases over ${Object.keys(split).length} targets (node ${process.version})`);

  const names = TARGETS.map((t) => t.name);
  const ctrl = new SharedArrayBuffer(16);
  const data = new SharedArrayBuffer(CAPTURE_BYTES);
  const c = new Int32Array(ctrl);
  const d = new Uint8Array(data);
  const watchdog = new Worker(WATCHDOG_SOURCE, {
    eval: true,
    workerData: { ctrl, data, names, dir: REGRESSIONS, limitMs: o.watchdogS * 1000, write: o.write },
  });
  watchdog.unref();

  const tmpDir = mkdtempSync(join(tmpdir(), "sealwire-fuzz-"));
  try {
    const report = await runFuzz({
      seed,
      cases: split,
      factories: TARGETS,
      tmpDir,
      ...(o.write ? { regressionsDir: REGRESSIONS } : {}),
      log: (l) => console.log(l),
      capture(target, _i, input) {
        const bytes = input();
        d.set(bytes.length <= d.length ? bytes : bytes.subarray(0, d.length));
        Atomics.store(c, 1, bytes.length);
        Atomics.store(c, 2, names.indexOf(target));
        Atomics.store(c, 3, 1);
        Atomics.add(c, 0, 1);
      },
    });
    Atomics.store(c, 3, 0);
    console.log("\n" + formatReport(report));
    return report.findings.length > 0 ? 1 : 0;
  } finally {
    await watchdog.terminate();
    rmSync(tmpDir, { recursive: true, force: true });
  }
}

const code = await main();
process.exitCode = code;
// Anything a target left open (a socket, a timer) would keep the process alive: say so, and exit regardless.
const left = process.getActiveResourcesInfo().filter((r) => r !== "TTYWrap" && r !== "PipeWrap" && r !== "FSReqCallback");
if (left.length > 0) console.log(`note: still open at exit: ${left.join(", ")}`);
setTimeout(() => process.exit(code), 2_000).unref();
