/**
 * `npm run evidence`: runs the tests behind each security control (the mapping in `test/evidence/controls.json`)
 * with vitest's JSON reporter, and writes `evidence/report.md` and `evidence/report.json` (git-ignored output):
 * for each control its claim, the SOC 2 / ISO 27001 criteria it supports (with what each means), every test
 * behind it with pass/fail and duration, the date, the commit and the measured figures of the flood and fault
 * tests. A control whose tests fail, were skipped or are missing is FAILING (see `evaluate.ts`). Exits 1 when any
 * control is failing, so CI can gate on it.
 *
 * Options: `--control <id>` (repeatable) runs only those controls' tests; `--out <dir>` (default `evidence/`).
 *
 * @module
 * @example
 * ```sh
 * npm run evidence
 * npm run evidence -- --control replay --control dos
 * ```
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { evaluate, parseControls, renderMarkdown, resultsFromVitestJson, type Controls, type FileError, type TestResult } from "./evaluate.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const VITEST = join(ROOT, "node_modules", "vitest", "vitest.mjs");

const { values } = parseArgs({ options: { control: { type: "string", multiple: true }, out: { type: "string" } }, strict: true });
const out = resolve(ROOT, values.out ?? "evidence");
mkdirSync(out, { recursive: true });

let controls: Controls = parseControls(readFileSync(join(ROOT, "test", "evidence", "controls.json"), "utf8"));
if (values.control?.length) {
  const unknown = values.control.filter((id) => !controls.controls.some((c) => c.id === id));
  if (unknown.length) {
    process.stderr.write(`evidence: unknown control(s) ${unknown.join(", ")}; known: ${controls.controls.map((c) => c.id).join(", ")}\n`);
    process.exit(2);
  }
  controls = { ...controls, controls: controls.controls.filter((c) => values.control!.includes(c.id)) };
}
const files = [...new Set(controls.controls.flatMap((c) => c.tests.map((t) => t.file)))].sort();

// Figures files from an earlier run must not pass for this run's.
const FIGURES = ["floods.json", "faults.json"];
for (const f of FIGURES) rmSync(join(out, f), { force: true });
const resultsFile = join(out, "vitest-results.json");
rmSync(resultsFile, { force: true });

const git = (...args: string[]) => spawnSync("git", args, { cwd: ROOT, encoding: "utf8" });
const commit = git("rev-parse", "HEAD").stdout.trim() || "unknown (not a git checkout)";
const dirty = git("status", "--porcelain", "--untracked-files=no").stdout.trim().length > 0;
const date = new Date().toISOString();
const args = ["run", "--config", "test/vitest.config.ts", "--reporter=json", `--outputFile.json=${resultsFile}`, "--reporter=dot", ...files.map((f) => `test/${f}`)];
const command = `vitest ${args.filter((a) => !a.startsWith("--outputFile")).join(" ")}`;

process.stderr.write(`evidence: ${controls.controls.length} controls, ${files.length} test files; running vitest…\n`);
const t0 = Date.now();
const code = await new Promise<number>((done) => {
  const child = spawn(process.execPath, [VITEST, ...args], { cwd: ROOT, env: { ...process.env, SEALWIRE_EVIDENCE_DIR: out }, stdio: ["ignore", "inherit", "inherit"] });
  child.on("exit", (c, sig) => done(c ?? (sig ? 128 : 1)));
});
const durationMs = Date.now() - t0;

let run: { results: TestResult[]; fileErrors: FileError[] };
if (existsSync(resultsFile)) {
  run = resultsFromVitestJson(JSON.parse(readFileSync(resultsFile, "utf8")), ROOT);
} else {
  // vitest died before writing results: every selector is missing, with the reason.
  run = { results: [], fileErrors: files.map((file) => ({ file, message: `vitest exited ${code} without writing results` })) };
}

const figures: Record<string, unknown> = {};
for (const f of FIGURES) {
  const p = join(out, f);
  if (existsSync(p)) figures[f.replace(/\.json$/, "")] = JSON.parse(readFileSync(p, "utf8"));
}

const report = evaluate(controls, run, { date, commit, dirty, node: process.version, durationMs, figures, command });
writeFileSync(join(out, "report.json"), JSON.stringify(report, null, 1) + "\n");
writeFileSync(join(out, "report.md"), renderMarkdown(report));

const w = Math.max(...report.controls.map((c) => c.title.length));
process.stdout.write(`\nevidence (${date}, ${commit.slice(0, 12)}${dirty ? ", dirty tree" : ""}, ${(durationMs / 1000).toFixed(1)} s):\n`);
for (const c of report.controls) {
  process.stdout.write(`  ${c.title.padEnd(w)}  ${c.status}  ${c.passed}/${c.selectors.length}\n`);
  for (const s of c.selectors.filter((x) => x.status !== "passed")) process.stdout.write(`      ${s.status.toUpperCase()}: ${s.file} “${s.match}” — ${s.reason ?? ""}\n`);
}
process.stdout.write(`wrote ${join(out, "report.md")} and ${join(out, "report.json")}: ${report.passing} passing, ${report.failing} failing\n`);
process.exitCode = report.failing > 0 ? 1 : 0;
