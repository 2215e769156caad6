/**
 * A small benchmark harness: warm up, then take several timed samples of a batch and report the median rate.
 * Each measurement is run beside its baseline in the same process so ratios compare like with like.
 *
 * @module
 * @example
 * ```ts
 * const r = await measure("seal", () => seal(), { batch: 200 });
 * console.log(r.median); // ops/s
 * ```
 */
import os from "node:os";

/** One measurement. */
export interface Result {
  name: string;
  /** Median operations per second over the samples. */
  median: number;
  samples: number[];
}

/** Options for {@link measure}. */
export interface MeasureOptions {
  /** Operations per sample. */
  batch: number;
  /** Timed samples. @default 7 */
  samples?: number;
  /** Untimed warm-up batches. @default 2 */
  warmup?: number;
  /**
   * `wall`: samples timed in wall-clock time. `cpu`: in process CPU time (user + system, every thread, so GC helper
   * threads count against the measured code): on a shared, loaded box this estimates what one dedicated core would
   * do. For synchronous functions only. @default "wall"
   */
  clock?: "wall" | "cpu";
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Times `fn` (sync or async), `batch` calls per sample. `fn` receives the call index. */
export async function measure(name: string, fn: (i: number) => unknown, opts: MeasureOptions): Promise<Result> {
  const samples: number[] = [];
  const total = (opts.warmup ?? 2) + (opts.samples ?? 7);
  let i = 0;
  for (let s = 0; s < total; s++) {
    const t0 = performance.now();
    for (let k = 0; k < opts.batch; k++) {
      const r = fn(i++);
      if (r instanceof Promise) await r;
    }
    const dt = performance.now() - t0;
    if (s >= (opts.warmup ?? 2)) samples.push((opts.batch / dt) * 1000);
  }
  return { name, median: median(samples), samples };
}

/**
 * Measures `a` and its baseline `b` with their samples interleaved (a, b, a, b, …), so that a change in machine
 * load during the run hits both sides alike and the ratio stays meaningful.
 */
export async function measurePair(
  a: [string, (i: number) => unknown],
  b: [string, (i: number) => unknown],
  opts: MeasureOptions,
): Promise<[Result, Result]> {
  const sa: number[] = [];
  const sb: number[] = [];
  const warmup = opts.warmup ?? 2;
  const total = warmup + (opts.samples ?? 7);
  let ia = 0;
  let ib = 0;
  const cpu = opts.clock === "cpu";
  const run = async (fn: (i: number) => unknown, start: number) => {
    const t0 = performance.now();
    const c0 = cpu ? process.cpuUsage() : undefined;
    for (let k = 0; k < opts.batch; k++) {
      const r = fn(start + k);
      if (r instanceof Promise) await r;
    }
    if (c0 !== undefined) {
      const c = process.cpuUsage(c0);
      return (opts.batch / Math.max(1, c.user + c.system)) * 1e6;
    }
    return (opts.batch / (performance.now() - t0)) * 1000;
  };
  for (let s = 0; s < total; s++) {
    const ra = await run(a[1], ia);
    ia += opts.batch;
    const rb = await run(b[1], ib);
    ib += opts.batch;
    if (s >= warmup) {
      sa.push(ra);
      sb.push(rb);
    }
  }
  return [
    { name: a[0], median: median(sa), samples: sa },
    { name: b[0], median: median(sb), samples: sb },
  ];
}

/**
 * The machine and runtime, printed at the top of every bench run: CPU model and logical core count, RAM, Node
 * version, OS, and the 1-minute load average. Nothing is pinned (no CPU affinity, no isolated cores, no frequency
 * governor change): figures are what an ordinary process gets on this machine at this moment.
 */
export function machine(): string {
  const cpus = os.cpus();
  const cpu = cpus[0]?.model.trim() ?? "unknown cpu";
  return (
    `${cpu} × ${cpus.length} logical cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Node ${process.version}, ` +
    `${os.platform()} ${os.arch()}; load average ${loadAverage()}; nothing pinned (no CPU affinity or isolated cores)`
  );
}

/** The 1-minute load average, two decimals. */
export function loadAverage(): string {
  return os.loadavg()[0]!.toFixed(2);
}

/** The `p`-th percentile (nearest rank) of `xs`. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** A result measured in calls of `per` operations each, as operations per second. */
export function scale(r: Result, per: number): Result {
  return { name: r.name, median: r.median * per, samples: r.samples.map((x) => x * per) };
}

/** A fixed figure (e.g. a percentile) as a {@link Result}, for {@link row}. */
export function fixed(name: string, value: number, samples: number[]): Result {
  return { name, median: value, samples };
}

/** Something with one round trip to time. */
export interface RoundTripper {
  roundTrip(): Promise<unknown>;
}

/**
 * Round-trip times in ms for each side, taken in interleaved rounds (a few round trips of each side in turn), so
 * that a change in machine load during the run hits every side alike. `warmup` untimed round trips per side first.
 */
export async function latencies(
  sides: readonly (readonly [string, RoundTripper])[],
  perSide: number,
  rounds: number,
  warmup: number,
): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>(sides.map(([n]) => [n, []]));
  for (const [, s] of sides) for (let i = 0; i < warmup; i++) await s.roundTrip();
  const per = Math.ceil(perSide / rounds);
  for (let r = 0; r < rounds; r++) {
    for (const [name, s] of sides) {
      const xs = out.get(name)!;
      for (let i = 0; i < per; i++) {
        const t0 = performance.now();
        await s.roundTrip();
        xs.push(performance.now() - t0);
      }
    }
  }
  return out;
}

/** Integers from 100 up, two decimals from 1, three significant digits below (sub-millisecond latencies). */
const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString("en-US") : n >= 1 ? n.toFixed(2) : n.toPrecision(3));

/** A row: measured beside its ceiling or baseline, with the ratio. */
export interface Row {
  group: string;
  what: string;
  value: number;
  unit: string;
  baselineName: string;
  baseline: number;
  /** value / baseline. */
  ratio: number;
  target?: string;
  /** Extra facts about the row (sizes, MB/s), or why it was skipped. */
  note?: string;
  /** The row could not be measured on this machine (e.g. a missing tool); `note` says why. */
  skipped?: boolean;
}

export function row(group: string, what: string, r: Result, base: Result, unit = "ops/s", target?: string, note?: string): Row {
  return {
    group,
    what,
    value: r.median,
    unit,
    baselineName: base.name,
    baseline: base.median,
    ratio: r.median / base.median,
    ...(target !== undefined ? { target } : {}),
    ...(note !== undefined ? { note } : {}),
  };
}

/** A row that says what could not be measured and why (printed with no figures). */
export function skippedRow(group: string, what: string, baselineName: string, reason: string): Row {
  return { group, what, value: Number.NaN, unit: "", baselineName, baseline: Number.NaN, ratio: Number.NaN, note: `skipped: ${reason}`, skipped: true };
}

/** A newline inside a cell would end the row (in both forms); Markdown also needs `|` escaped. */
const oneLine = (s: string) => s.replace(/[\r\n]+/g, " ");
const cell = (s: string) => s.replace(/\|/g, "\\|");

export function printRows(rows: Row[], markdown: boolean): string {
  const header = ["group", "measurement", "median", "baseline (same run)", "baseline median", "ratio", "target", "note"];
  const lines = rows.map((r) =>
    (r.skipped
      ? [r.group, r.what, "—", r.baselineName, "—", "—", r.target ?? "", r.note ?? ""]
      : [r.group, r.what, `${fmt(r.value)} ${r.unit}`, r.baselineName, `${fmt(r.baseline)} ${r.unit}`, r.ratio.toFixed(2), r.target ?? "", r.note ?? ""]
    ).map(oneLine),
  );
  if (markdown) {
    return [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`, ...lines.map((l) => `| ${l.map(cell).join(" | ")} |`)].join("\n");
  }
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const pad = (l: string[]) => l.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return [pad(header), ...lines.map(pad)].join("\n");
}

/** The marker comments around the generated part of `bench/README.md`. */
export const README_BEGIN = "<!-- bench:begin -->";
export const README_END = "<!-- bench:end -->";

/**
 * Returns `readme` with everything between {@link README_BEGIN} and {@link README_END} replaced by `generated`
 * (markers kept, on their own lines). Throws unless each marker occurs exactly once, begin before end, so a
 * damaged README is reported rather than silently rewritten.
 */
export function replaceGenerated(readme: string, generated: string): string {
  const count = (m: string) => readme.split(m).length - 1;
  if (count(README_BEGIN) !== 1 || count(README_END) !== 1) {
    throw new Error(`bench/README.md must contain ${README_BEGIN} and ${README_END} exactly once each; restore them and run again`);
  }
  const b = readme.indexOf(README_BEGIN);
  const e = readme.indexOf(README_END);
  if (e < b) throw new Error(`bench/README.md: ${README_END} comes before ${README_BEGIN}; restore the order and run again`);
  return `${readme.slice(0, b + README_BEGIN.length)}\n${generated.trim()}\n${readme.slice(e)}`;
}
