/**
 * The benchmark suite (`npm run bench`, issue #8): the harness helpers (percentiles, the Markdown table, the
 * README's generated section) and the CLI itself, run with `--quick` in a child process on the groups that
 * need servers (codec, transports, latency): every expected row is there beside its baseline with a ratio, the
 * header names the machine, and the process exits on its own (nothing left listening). Also run with an empty
 * PATH, so that `nats-server` and `openssl` are missing: their rows must say "skipped" and the run still pass.
 * Usage errors (unknown group, `--write-readme` with `--quick`) exit 2 before measuring and write nothing.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/bench.test.ts
 * ```
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { percentile, printRows, README_BEGIN, README_END, replaceGenerated, row, skippedRow, type Row } from "../bench/harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const tsxCli = fileURLToPath(new URL("../node_modules/tsx/dist/cli.mjs", import.meta.url));
const readmePath = fileURLToPath(new URL("../bench/README.md", import.meta.url));

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True if the process had to be killed: it did not exit on its own in time. */
  killed: boolean;
}

/** Runs `bench/index.ts` with `args` as `npm run bench` does; kills it after `timeoutMs`. */
function bench(args: string[], options: { timeoutMs: number; env?: NodeJS.ProcessEnv }): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [tsxCli, "--conditions=source", "bench/index.ts", ...args], {
      cwd: root,
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let killed = false;
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      killed = true;
      child.kill("SIGKILL");
    }, options.timeoutMs);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, killed });
    });
  });
}

/** The Markdown table rows of a `--markdown` run, as cells (header and separator dropped). */
function tableRows(stdout: string): string[][] {
  const lines = stdout.split("\n").filter((l) => l.startsWith("| "));
  expect(lines[0]).toBe("| group | measurement | median | baseline (same run) | baseline median | ratio | target | note |");
  return lines.slice(1).map((l) => l.slice(2, -2).split(" | "));
}

const r = (median: number) => ({ name: "x", median, samples: [median] });

describe("bench harness", () => {
  it("percentile is the nearest-rank percentile: an element of the sample with at least p% of it at or below", () => {
    expect(percentile([5, 1, 3, 2, 4], 50)).toBe(3);
    expect(percentile([5, 1, 3, 2, 4], 99)).toBe(5);
    expect(percentile([7], 1)).toBe(7);
    expect(percentile([], 50)).toBeNaN();
    fc.assert(
      fc.property(fc.array(fc.double({ noNaN: true, noDefaultInfinity: true }), { minLength: 1, maxLength: 200 }), fc.integer({ min: 1, max: 100 }), (xs, p) => {
        const v = percentile(xs, p);
        expect(xs).toContain(v);
        expect(xs.filter((x) => x <= v).length).toBeGreaterThanOrEqual(Math.ceil((p / 100) * xs.length));
        expect(xs.filter((x) => x < v).length).toBeLessThan(Math.ceil((p / 100) * xs.length));
      }),
    );
  });

  it("prints a Markdown table with one row per measurement, cells escaped, skipped rows without figures", () => {
    const rows: Row[] = [
      row("g", "a | b", r(2000), r(1000), "ops/s", "≥ 1×", "note\nwith newline"),
      row("g", "latency", r(0.01234), r(0.5), "ms"),
      skippedRow("g", "wss", "raw ws", "openssl not installed"),
    ];
    const md = printRows(rows, true).split("\n");
    expect(md).toHaveLength(5);
    // Every line has the same number of unescaped cell separators, whatever the cells held.
    const seps = md.map((l) => l.split(/(?<!\\)\|/).length);
    expect(new Set(seps).size).toBe(1);
    expect(md[2]).toBe("| g | a \\| b | 2,000 ops/s | x | 1,000 ops/s | 2.00 | ≥ 1× | note with newline |");
    expect(md[3]).toContain("| 0.0123 ms | x | 0.500 ms | 0.02 |");
    expect(md[4]).toBe("| g | wss | — | raw ws | — | — |  | skipped: openssl not installed |");
    // The text form carries the same cells.
    const text = printRows(rows, false);
    expect(text).toContain("skipped: openssl not installed");
    expect(text.split("\n")).toHaveLength(4);
  });

  it("replaces only the generated section of the README, and refuses a README whose markers are damaged", () => {
    const doc = `# t\nintro\n${README_BEGIN}\nold table\n${README_END}\nafter\n`;
    const once = replaceGenerated(doc, "| new |\n");
    expect(once).toBe(`# t\nintro\n${README_BEGIN}\n| new |\n${README_END}\nafter\n`);
    expect(replaceGenerated(once, "| new |")).toBe(once); // idempotent
    expect(replaceGenerated(once, "| newer |")).not.toContain("| new |");
    expect(() => replaceGenerated("# no markers", "x")).toThrow(/exactly once/);
    expect(() => replaceGenerated(`${README_BEGIN}\n${README_BEGIN}\n${README_END}`, "x")).toThrow(/exactly once/);
    expect(() => replaceGenerated(`${README_BEGIN}\n${README_END}\n${README_END}`, "x")).toThrow(/exactly once/);
    expect(() => replaceGenerated(`${README_END}\nx\n${README_BEGIN}`, "x")).toThrow(/before/);
  });

  it("bench/README.md has its markers, so --write-readme can regenerate it", () => {
    expect(() => replaceGenerated(readFileSync(readmePath, "utf8"), "x")).not.toThrow();
  });
});

describe("npm run bench", () => {
  it("runs codec, transports and latency with --quick: every row beside its baseline, machine printed, exits on its own", async () => {
    const ran = await bench(["--quick", "--markdown", "--only", "codec,transports,latency"], { timeoutMs: 90_000 });
    expect(ran.killed, `did not exit on its own:\n${ran.stderr}`).toBe(false);
    expect(ran.code, ran.stderr).toBe(0);
    const header = ran.stdout.split("\n")[0]!;
    expect(header).toContain(`Node ${process.version}`);
    expect(header).toMatch(/× \d+ logical cores, \d+ GiB RAM/);
    expect(header).toContain("nothing pinned");
    const rows = tableRows(ran.stdout);
    const groups = (g: string) => rows.filter((c) => c[0] === g);
    const measured = (c: string[]) => {
      expect(c[2]).toMatch(/^[\d,.]+ \S/);
      expect(c[4]).toMatch(/^[\d,.]+ \S/);
      expect(Number(c[5])).toBeGreaterThan(0);
    };

    const codec = groups("codec");
    expect(codec).toHaveLength(2);
    for (const c of codec) {
      measured(c);
      expect(c[3]).toBe("JSON + base64");
      expect(c[7]).toMatch(/^envelope [\d,]+ B as msgpackr vs [\d,]+ B as JSON\+base64$/);
    }

    const transports = groups("transports");
    const names = ["memory()", "noise(memory())", "ws://", "wss:// (TLS 1.3)", "noise(ws://)", "nats() core"];
    expect(transports.map((c) => c[1])).toEqual(names.flatMap((n) => [`${n} 1 KiB frames, one way`, `${n} 64 KiB frames, one way`]));
    for (const c of transports) {
      if (c[7]!.startsWith("skipped: ")) continue; // nats-server or openssl missing on this machine
      measured(c);
      expect(c[3]).toMatch(/^raw /);
      expect(c[7]).toMatch(/^[\d.]+ vs [\d.]+ MB\/s$/);
    }
    // At least the transports that need no external tool were measured.
    for (const c of transports.slice(0, 6).filter((c) => !c[1]!.startsWith("wss"))) measured(c);

    const latency = groups("latency");
    expect(latency).toHaveLength(12);
    for (const c of latency) {
      measured(c);
      expect(c[2]).toMatch(/ ms$/);
      expect(c[3]).toMatch(/^raw .*ping-pong/);
    }
    expect(latency.map((c) => c[1])).toContain("memory() request/reply 1 KiB, p99");
    expect(latency.map((c) => c[1])).toContain("noise(ws://) request/reply 1 KiB, p50");
    expect(latency.map((c) => c[1])).toContain("memory() request/reply 1 KiB, session mode, p50");
  }, 120_000);

  it("says 'skipped' for wss and nats when openssl and nats-server are missing, and still succeeds", async () => {
    const env = { ...process.env, PATH: "/nonexistent" };
    const ran = await bench(["--quick", "--markdown", "--only", "transports"], { timeoutMs: 90_000, env });
    expect(ran.killed, `did not exit on its own:\n${ran.stderr}`).toBe(false);
    expect(ran.code, ran.stderr).toBe(0);
    const rows = tableRows(ran.stdout);
    const skipped = rows.filter((c) => c[7]!.startsWith("skipped: "));
    expect(skipped.map((c) => c[1])).toEqual([
      "wss:// (TLS 1.3) 1 KiB frames, one way",
      "wss:// (TLS 1.3) 64 KiB frames, one way",
      "nats() core 1 KiB frames, one way",
      "nats() core 64 KiB frames, one way",
    ]);
    expect(skipped[2]![7]).toBe("skipped: nats-server not installed");
    for (const c of skipped) expect(c.slice(2, 6)).toEqual(["—", c[3], "—", "—"]);
    expect(rows.length - skipped.length).toBe(8);
  }, 120_000);

  it("refuses usage errors before measuring anything, and never writes the README from a partial run", async () => {
    const before = readFileSync(readmePath, "utf8");
    for (const args of [["--only", "nope"], ["--only"], ["--frobnicate"], ["--write-readme", "--quick"], ["--write-readme", "--only", "codec"]]) {
      const ran = await bench(args, { timeoutMs: 30_000 });
      expect(ran.code, args.join(" ")).toBe(2);
      expect(ran.stderr).toMatch(/^bench: /m);
      expect(ran.stdout).toBe("");
    }
    expect(readFileSync(readmePath, "utf8")).toBe(before);
  }, 60_000);
});
