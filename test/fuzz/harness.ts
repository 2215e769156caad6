/**
 * The fuzz harness: runs targets (one per decoder that reads bytes from outside), applies one oracle to every
 * call, and turns each failure into a regression file.
 *
 * **Oracle.** A call must either return (and pass the target's own `check`, e.g. "a mutated envelope never
 * opens") or throw a {@link SealwireError} whose code the target allows. Anything else is a finding: another
 * exception type, a disallowed code, a call slower than the target's limit (re-measured twice, so a GC pause is
 * not a finding), an async call that never settles, an unhandled rejection or uncaught exception during the
 * target, heap that keeps growing across the target (measured after forced GCs), or a peak beyond the bound.
 *
 * **Regressions.** A failing input is written to `test/fuzz/regressions/<target>-<sha256:12>.bin` (the target's
 * own byte encoding of its input) and replayed by `test/fuzz.test.ts` on every CI run.
 *
 * @module
 * @example
 * ```ts
 * const report = await runFuzz({ seed: 42, cases: { codec: 1000 }, factories: TARGETS, tmpDir });
 * console.log(formatReport(report));
 * ```
 */
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { ERROR_CODES, SealwireError, type ErrorCode } from "../../src/errors.js";
import { deriveSeed, Rng } from "./rng.js";

/** A forced full GC, when the runtime lets us have one (it does: the flag can be set at run time). */
export const forceGc: (() => void) | undefined = (() => {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === "function") return g;
  try {
    setFlagsFromString("--expose-gc");
    const fn = runInNewContext("gc") as unknown;
    return typeof fn === "function" ? (fn as () => void) : undefined;
  } catch {
    return undefined;
  }
})();

/** What every target gets at setup. */
export interface SetupContext {
  /** Run seed. */
  readonly seed: number;
  /** Seeded stream for building the valid samples of this target. */
  readonly rng: Rng;
  /** A private scratch directory for this target (removed by the caller). */
  readonly dir: string;
}

/** One decoder under test. `I` is its input; `encode`/`decode` make inputs into regression files and back. */
export interface FuzzTarget<I = unknown> {
  readonly name: string;
  /** Longest a single call may take, in ms. */
  readonly limitMs: number;
  /** An async call not settled after this long is a hang. @default max(8 × limitMs, 5 s) */
  readonly hangMs?: number;
  /** Codes the decoder may throw for hostile input; any other code is a finding. */
  readonly codes?: readonly ErrorCode[];
  /** The decoder's contract is to never throw (it returns a verdict); any exception is a finding. */
  readonly neverThrows?: boolean;
  /** The next input: random (fast-check), a valid sample, or a mutation of one. */
  generate(rng: Rng, index: number): I;
  /** Calls the decoder. */
  exec(input: I): unknown;
  /** Oracle for a returned value: a finding message, or undefined when the result is acceptable. */
  check?(input: I, result: unknown): string | undefined;
  /** Histogram label for a returned value. @default "ok" */
  outcome?(result: unknown): string;
  encode(input: I): Uint8Array;
  decode(bytes: Uint8Array): I;
  close?(): void | Promise<void>;
}

/** Builds a target (its keys, samples and files) on demand. */
export interface TargetFactory {
  readonly name: string;
  create(ctx: SetupContext): Promise<FuzzTarget<any>>; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** A failure found by the harness. */
export interface Finding {
  readonly target: string;
  readonly message: string;
  readonly input: Uint8Array;
  /** Where the input was written, if it was. */
  file?: string;
  /** How many cases failed with this same message (only the first input is kept). */
  count: number;
}

/** The verdict on one call. */
export interface CaseResult {
  /** `ok` (or the target's label) or the error code. */
  readonly outcome: string;
  readonly ms: number;
  readonly finding?: string;
}

/** Per-target figures. */
export interface TargetReport {
  readonly name: string;
  cases: number;
  outcomes: Record<string, number>;
  maxMs: number;
  totalMs: number;
  /** Wall time of the target's loop (generation, calls, oracle, bookkeeping), setup excluded. */
  wallMs: number;
  setupMs: number;
  heapGrowth: number;
  findings: Finding[];
}

/** The whole run. */
export interface FuzzReport {
  readonly seed: number;
  readonly targets: TargetReport[];
  totalCases: number;
  elapsedMs: number;
  baselineHeap: number;
  peakHeapUsed: number;
  peakArrayBuffers: number;
  peakRss: number;
  findings: Finding[];
}

/** Options for {@link runFuzz}. */
export interface FuzzOptions {
  seed: number;
  /** Cases per target name; targets not listed are skipped. */
  cases: Readonly<Record<string, number>>;
  factories: readonly TargetFactory[];
  /** Scratch space; each target gets a sub-directory. */
  tmpDir: string;
  /** Write each finding's input here (`<target>-<hash>.bin`). */
  regressionsDir?: string;
  /**
   * Distinct findings (by message) per target before it is stopped. A repeat of a known message is only counted,
   * so a known bug does not cut the run short. @default 5
   */
  maxFindingsPerTarget?: number;
  /** Heap that may remain after a target (forced GC), in bytes. @default 64 MiB */
  maxHeapGrowth?: number;
  /** Peak heap / array buffers above the baseline, in bytes. @default 1 GiB */
  maxPeak?: number;
  /** Called with each input before the call (the watchdog keeps a copy in case the call never returns). */
  capture?: (target: string, index: number, input: () => Uint8Array) => void;
  /** Progress lines. */
  log?: (line: string) => void;
}

const SLOW_RECHECKS = 2;
/** An async call that has not settled after this many multiples of its limit is a hang. */
const HANG_FACTOR = 8;

function describeError(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name}: ${e.message.slice(0, 300)}`;
  return `non-Error thrown: ${typeof e} ${String(e).slice(0, 100)}`;
}

/** Marks the harness's own timers, so a target's resource tracking does not count them as the decoder's. */
export const HARNESS_TIMER: unique symbol = Symbol.for("sealwire/fuzz/harness-timer") as never;

function harnessTimer(fn: () => void, ms: number): NodeJS.Timeout {
  const t = setTimeout(fn, ms) as NodeJS.Timeout & { [HARNESS_TIMER]?: true };
  t[HARNESS_TIMER] = true;
  return t;
}

/** Sleeps on a marked timer (see {@link HARNESS_TIMER}). */
export function harnessSleep(ms: number): Promise<void> {
  return new Promise((r) => harnessTimer(r, ms));
}

async function settle(r: unknown, hangMs: number): Promise<{ value?: unknown; error?: unknown; hung?: true }> {
  if (!(r instanceof Promise)) return { value: r };
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<{ hung: true }>((resolve) => {
    timer = harnessTimer(() => resolve({ hung: true }), hangMs);
  });
  try {
    return await Promise.race([r.then((value: unknown) => ({ value }), (error: unknown) => ({ error })), hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs one input through a target and applies the oracle (time included). */
export async function runCase<I>(t: FuzzTarget<I>, input: I): Promise<CaseResult> {
  const once = async (): Promise<CaseResult> => {
    const t0 = performance.now();
    let r: { value?: unknown; error?: unknown; hung?: true };
    try {
      r = await settle(t.exec(input), t.hangMs ?? Math.max(t.limitMs * HANG_FACTOR, 5_000));
    } catch (error) {
      r = { error };
    }
    const ms = performance.now() - t0;
    if (r.hung) return { outcome: "HANG", ms, finding: `did not settle within ${Math.round(ms)} ms` };
    if ("error" in r) {
      const e = r.error;
      if (t.neverThrows) return { outcome: "THROW", ms, finding: `threw although it must return a verdict: ${describeError(e)}` };
      if (!(e instanceof SealwireError) || !Object.hasOwn(ERROR_CODES, e.code)) {
        return { outcome: "CRASH", ms, finding: `threw something other than a SealwireError: ${describeError(e)}` };
      }
      if (t.codes && !t.codes.includes(e.code)) {
        return { outcome: e.code, ms, finding: `threw ${e.code}, which this decoder must not throw: ${e.message.slice(0, 200)}` };
      }
      return { outcome: e.code, ms };
    }
    let finding: string | undefined;
    try {
      finding = t.check?.(input, r.value);
    } catch (e) {
      finding = `oracle check threw: ${describeError(e)}`;
    }
    const outcome = t.outcome ? t.outcome(r.value) : "ok";
    return finding === undefined ? { outcome, ms } : { outcome, ms, finding };
  };
  const first = await once();
  if (first.finding !== undefined || first.ms <= t.limitMs) return first;
  // Slow: measure again, so a GC pause or a busy neighbour is not reported as a decoder bug.
  let best = first.ms;
  for (let i = 0; i < SLOW_RECHECKS && best > t.limitMs; i++) best = Math.min(best, (await once()).ms);
  if (best <= t.limitMs) return first;
  return { outcome: first.outcome, ms: first.ms, finding: `took ${best.toFixed(1)} ms (best of ${SLOW_RECHECKS + 1}), limit ${t.limitMs} ms` };
}

/** `<target>-<first 12 hex of sha256>.bin` */
export function regressionName(target: string, bytes: Uint8Array): string {
  return `${target}-${createHash("sha256").update(bytes).digest("hex").slice(0, 12)}.bin`;
}

/** Writes a finding's input as a regression file; returns the path. */
export function writeRegression(dir: string, target: string, bytes: Uint8Array): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, regressionName(target, bytes));
  writeFileSync(path, bytes);
  return path;
}

/** The target a regression file belongs to, from its name. */
export function regressionTarget(fileName: string): string | undefined {
  return /^(.+)-[0-9a-f]{12}\.bin$/.exec(fileName)?.[1];
}

/** Replays regression files: builds each file's target once, decodes the input, applies the oracle. */
export class RegressionReplayer {
  readonly #factories: readonly TargetFactory[];
  readonly #tmpDir: string;
  readonly #targets = new Map<string, FuzzTarget<unknown>>();

  constructor(factories: readonly TargetFactory[], tmpDir: string) {
    this.#factories = factories;
    this.#tmpDir = tmpDir;
  }

  /** The verdict on one file (`<target>-<hash>.bin`). Throws if the name names no known target. */
  async replay(fileName: string, bytes: Uint8Array): Promise<CaseResult & { target: string }> {
    const name = regressionTarget(fileName);
    const f = this.#factories.find((x) => x.name === name);
    if (name === undefined || f === undefined) throw new Error(`${fileName}: not <target>-<12 hex>.bin for a known target`);
    let t = this.#targets.get(name);
    if (t === undefined) {
      const dir = join(this.#tmpDir, `replay-${name}`);
      mkdirSync(dir, { recursive: true });
      t = (await f.create({ seed: 0, rng: new Rng(deriveSeed(0, name, "setup")), dir })) as FuzzTarget<unknown>;
      this.#targets.set(name, t);
    }
    const strays: string[] = [];
    const release = captureStrays((m) => strays.push(m));
    let r: CaseResult;
    try {
      r = await runCase(t, t.decode(bytes));
      await new Promise<void>((ok) => setImmediate(ok));
      await new Promise<void>((ok) => setTimeout(ok, 5));
    } finally {
      release();
    }
    if (r.finding === undefined && strays.length > 0) return { ...r, finding: strays.join("; "), target: name };
    return { ...r, target: name };
  }

  /** Closes every target built. */
  async close(): Promise<void> {
    for (const t of this.#targets.values()) await t.close?.();
    this.#targets.clear();
  }
}

interface MemoryPeaks {
  heap: number;
  arrayBuffers: number;
  rss: number;
}

function sampleMemory(p: MemoryPeaks): void {
  const m = process.memoryUsage();
  if (m.heapUsed > p.heap) p.heap = m.heapUsed;
  if (m.arrayBuffers > p.arrayBuffers) p.arrayBuffers = m.arrayBuffers;
  if (m.rss > p.rss) p.rss = m.rss;
}

function settledHeap(): number {
  forceGc?.();
  return process.memoryUsage().heapUsed;
}

/** Runs every listed target for its number of cases. Never throws for a finding: they are in the report. */
export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const log = o.log ?? (() => {});
  const maxFindings = o.maxFindingsPerTarget ?? 5;
  const maxGrowth = o.maxHeapGrowth ?? 64 * 1024 * 1024;
  const maxPeak = o.maxPeak ?? 1024 * 1024 * 1024;
  const t0 = performance.now();
  const baselineHeap = settledHeap();
  const peaks: MemoryPeaks = { heap: 0, arrayBuffers: 0, rss: 0 };
  const baseAb = process.memoryUsage().arrayBuffers;
  const report: FuzzReport = {
    seed: o.seed,
    targets: [],
    totalCases: 0,
    elapsedMs: 0,
    baselineHeap,
    peakHeapUsed: 0,
    peakArrayBuffers: 0,
    peakRss: 0,
    findings: [],
  };

  // Unhandled rejections and uncaught exceptions are attributed to the target (and input) running at the time.
  let current: { target: string; input: () => Uint8Array } | undefined;
  const stray: { message: string; target: string; input: Uint8Array }[] = [];
  const release = captureStrays((message) => {
    const c = current;
    stray.push({ message, target: c?.target ?? "(between targets)", input: c ? safeEncode(c.input) : new Uint8Array(0) });
  });

  try {
    for (const f of o.factories) {
      const n = o.cases[f.name];
      if (n === undefined || n <= 0) continue;
      const dir = join(o.tmpDir, f.name);
      mkdirSync(dir, { recursive: true });
      const s0 = performance.now();
      let target: FuzzTarget<unknown>;
      try {
        target = (await f.create({ seed: o.seed, rng: new Rng(deriveSeed(o.seed, f.name, "setup")), dir })) as FuzzTarget<unknown>;
      } catch (e) {
        // A setup that fails (e.g. because an earlier target left the process in a bad state) is a finding too.
        const finding: Finding = { target: f.name, message: `setup failed: ${describeError(e)}`, input: new Uint8Array(0), count: 1 };
        report.findings.push(finding);
        report.targets.push({ name: f.name, cases: 0, outcomes: {}, maxMs: 0, totalMs: 0, wallMs: 0, setupMs: 0, heapGrowth: 0, findings: [finding] });
        log(`FINDING ${f.name}: ${finding.message}`);
        continue;
      }
      const tr: TargetReport = { name: f.name, cases: 0, outcomes: {}, maxMs: 0, totalMs: 0, wallMs: 0, setupMs: performance.now() - s0, heapGrowth: 0, findings: [] };
      report.targets.push(tr);
      const heapBefore = settledHeap();
      const rng = new Rng(deriveSeed(o.seed, f.name));
      const record = (message: string, input: Uint8Array) => {
        const seen = tr.findings.find((x) => x.message === message);
        if (seen) {
          seen.count++;
          return;
        }
        const finding: Finding = { target: f.name, message, input, count: 1 };
        if (o.regressionsDir) finding.file = writeRegression(o.regressionsDir, f.name, input);
        tr.findings.push(finding);
        report.findings.push(finding);
        log(`FINDING ${f.name}: ${message}${finding.file ? ` -> ${finding.file}` : ""}`);
      };
      const tStart = performance.now();
      let lastLog = tStart;
      for (let i = 0; i < n && tr.findings.length < maxFindings; i++) {
        const input = target.generate(rng, i);
        const enc = () => target.encode(input);
        current = { target: f.name, input: enc };
        o.capture?.(f.name, i, enc);
        const r = await runCase(target, input);
        tr.cases++;
        tr.outcomes[r.outcome] = (tr.outcomes[r.outcome] ?? 0) + 1;
        tr.totalMs += r.ms;
        if (r.ms > tr.maxMs) tr.maxMs = r.ms;
        if (r.finding !== undefined) record(r.finding, safeEncode(enc));
        if ((i & 15) === 0) {
          sampleMemory(peaks);
          if (peaks.heap - baselineHeap > maxPeak || peaks.arrayBuffers - baseAb > maxPeak) {
            record(`memory peak beyond the bound: heap ${mb(peaks.heap)}, array buffers ${mb(peaks.arrayBuffers)} (bound +${mb(maxPeak)})`, safeEncode(enc));
            peaks.heap = 0;
            peaks.arrayBuffers = 0;
          }
        }
        // One macrotask turn per case (~3 µs): an unhandled rejection is reported at the end of a turn, so it
        // surfaces while the input that caused it is still "current".
        await new Promise<void>((r) => setImmediate(r));
        while (stray.length > 0) {
          const s = stray.shift()!;
          record(s.message, s.input);
        }
        const now = performance.now();
        if (now - lastLog > 10_000) {
          lastLog = now;
          log(`  ${f.name}: ${i + 1}/${n} cases, ${((i + 1) / ((now - tStart) / 1000)).toFixed(0)}/s`);
        }
      }
      tr.wallMs = performance.now() - tStart;
      await new Promise<void>((r) => setImmediate(r));
      current = undefined;
      await target.close?.();
      await new Promise<void>((r) => setTimeout(r, 10));
      while (stray.length > 0) {
        const s = stray.shift()!;
        record(s.message, s.input);
      }
      tr.heapGrowth = settledHeap() - heapBefore;
      if (tr.heapGrowth > maxGrowth) {
        record(`heap grew by ${mb(tr.heapGrowth)} over ${tr.cases} cases (bound ${mb(maxGrowth)}): a leak`, new Uint8Array(0));
      }
      report.totalCases += tr.cases;
      log(formatTargetLine(tr));
    }
  } finally {
    release();
  }
  sampleMemory(peaks);
  report.peakHeapUsed = peaks.heap;
  report.peakArrayBuffers = peaks.arrayBuffers;
  report.peakRss = peaks.rss;
  report.elapsedMs = performance.now() - t0;
  return report;
}

/**
 * Routes unhandled rejections and uncaught exceptions to `sink` until the returned function is called. Other
 * listeners (a test runner's) are detached meanwhile, so a stray is reported once, as a finding with its input.
 */
export function captureStrays(sink: (message: string) => void): () => void {
  const saved = (["unhandledRejection", "uncaughtException"] as const).map((ev) => {
    const listeners = process.listeners(ev as "unhandledRejection") as ((...a: unknown[]) => void)[];
    process.removeAllListeners(ev);
    return [ev, listeners] as const;
  });
  const onRejection = (e: unknown) => sink(`unhandled rejection: ${describeError(e)}`);
  const onException = (e: unknown) => sink(`uncaught exception: ${describeError(e)}`);
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onException);
  return () => {
    process.off("unhandledRejection", onRejection);
    process.off("uncaughtException", onException);
    for (const [ev, listeners] of saved) for (const l of listeners) process.on(ev as "unhandledRejection", l);
  };
}

function safeEncode(enc: () => Uint8Array): Uint8Array {
  try {
    return enc();
  } catch {
    return new Uint8Array(0);
  }
}

const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

function topOutcomes(outcomes: Record<string, number>, max = 6): string {
  const all = Object.entries(outcomes).sort((a, b) => b[1] - a[1]);
  const shown = all.slice(0, max).map(([k, v]) => `${k} ${v}`);
  if (all.length > max) shown.push(`+${all.length - max} more`);
  return shown.join(", ");
}

function formatTargetLine(t: TargetReport): string {
  const rate = t.wallMs > 0 ? (t.cases / (t.wallMs / 1000)).toFixed(0) : "-";
  const wall = `${(t.wallMs / 1000).toFixed(1)} s`;
  return `  ${t.name.padEnd(18)} ${String(t.cases).padStart(8)} cases ${wall.padStart(8)} ${rate.padStart(7)}/s  max ${t.maxMs.toFixed(1).padStart(7)} ms  heap ${mb(t.heapGrowth).padStart(10)}  ${t.findings.length} finding(s)`;
}

/** A human-readable summary: per-target counts, outcome histogram, max call time, peaks, findings. */
export function formatReport(r: FuzzReport): string {
  const lines = [`sealwire fuzz: seed ${r.seed} (replay with --seed ${r.seed})`, ""];
  lines.push(`  ${"target".padEnd(18)} ${"cases".padStart(8)} ${"wall".padStart(14)} ${"rate".padStart(9)}  ${"max call".padStart(12)}  ${"heap after GC".padStart(15)}`);
  for (const t of r.targets) lines.push(formatTargetLine(t));
  lines.push("", "Outcomes (return or error code):");
  for (const t of r.targets) lines.push(`  ${t.name.padEnd(18)} ${topOutcomes(t.outcomes, 8)}`);
  const slowest = [...r.targets].sort((a, b) => b.maxMs - a.maxMs)[0];
  lines.push(
    "",
    `Total: ${r.totalCases} cases in ${(r.elapsedMs / 1000).toFixed(1)} s; max call ${slowest ? `${slowest.maxMs.toFixed(1)} ms (${slowest.name})` : "-"}`,
    `Memory: heap baseline ${mb(r.baselineHeap)}, peak heapUsed ${mb(r.peakHeapUsed)}, peak array buffers ${mb(r.peakArrayBuffers)}, peak RSS ${mb(r.peakRss)}`,
  );
  if (r.findings.length === 0) lines.push("Findings: none");
  else {
    lines.push(`Findings: ${r.findings.length}`);
    for (const f of r.findings) lines.push(`  ${f.target}: ${f.message}${f.count > 1 ? ` (${f.count} cases)` : ""}${f.file ? `\n    input: ${f.file}` : ""}`);
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------------------------
// Structured inputs as bytes (for regression files): JSON with tagged byte strings.

/** Encodes a value of plain data and Uint8Arrays (and bigint) as UTF-8 JSON; bytes become `{"$b": base64}`. */
export function encodeTagged(v: unknown): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify(v, function (this: unknown, k: string, x: unknown) {
      const raw = (this as Record<string, unknown>)[k];
      if (raw instanceof Uint8Array) return { $b: Buffer.from(raw).toString("base64") };
      if (typeof raw === "bigint") return { $n: raw.toString() };
      if (typeof raw === "number" && !Number.isFinite(raw)) return { $f: String(raw) };
      if (Object.is(raw, -0)) return { $f: "-0" };
      return x;
    }),
  );
}

/** Inverse of {@link encodeTagged}; `__proto__` keys come back as own properties, as JSON.parse makes them. */
export function decodeTagged<T>(bytes: Uint8Array): T {
  return JSON.parse(new TextDecoder().decode(bytes), (_k, x: unknown) => {
    if (x !== null && typeof x === "object" && !Array.isArray(x)) {
      const o = x as Record<string, unknown>;
      const keys = Object.keys(o);
      if (keys.length === 1 && typeof o["$b"] === "string") return new Uint8Array(Buffer.from(o["$b"], "base64"));
      if (keys.length === 1 && typeof o["$n"] === "string") return BigInt(o["$n"]);
      if (keys.length === 1 && typeof o["$f"] === "string") return Number(o["$f"]);
    }
    return x;
  }) as T;
}
