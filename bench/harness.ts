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
  const run = async (fn: (i: number) => unknown, start: number) => {
    const t0 = performance.now();
    for (let k = 0; k < opts.batch; k++) {
      const r = fn(start + k);
      if (r instanceof Promise) await r;
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

/** The machine and runtime, printed at the top of every bench run. */
export function machine(): string {
  const cpu = os.cpus()[0]?.model ?? "unknown cpu";
  return `${cpu} × ${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.platform()} ${os.arch()}`;
}

const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(2));

/** A row: measured beside its ceiling, with the ratio. */
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
}

export function row(group: string, what: string, r: Result, base: Result, unit = "ops/s", target?: string): Row {
  return {
    group,
    what,
    value: r.median,
    unit,
    baselineName: base.name,
    baseline: base.median,
    ratio: r.median / base.median,
    ...(target !== undefined ? { target } : {}),
  };
}

export function printRows(rows: Row[], markdown: boolean): string {
  const header = ["group", "measurement", "median", "baseline (same run)", "baseline median", "ratio", "target"];
  const lines = rows.map((r) => [r.group, r.what, `${fmt(r.value)} ${r.unit}`, r.baselineName, `${fmt(r.baseline)} ${r.unit}`, r.ratio.toFixed(2), r.target ?? ""]);
  if (markdown) {
    return [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`, ...lines.map((l) => `| ${l.join(" | ")} |`)].join("\n");
  }
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const pad = (l: string[]) => l.map((c, i) => c.padEnd(widths[i]!)).join("  ");
  return [pad(header), ...lines.map(pad)].join("\n");
}
