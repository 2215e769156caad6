/**
 * The evidence report's logic, free of I/O so `test/evidence.test.ts` can check it: read the control → test
 * mapping (`controls.json`), match test results to each control's selectors, decide each control's status, and
 * render the report. The rule that matters: a control is PASSING only when every one of its selectors matched at
 * least one test that ran and passed — a selector that matched nothing (a renamed or deleted test), a skipped test
 * or a failed one makes the control FAILING, never absent.
 *
 * @module
 * @example
 * ```ts
 * const controls = parseControls(readFileSync("test/evidence/controls.json", "utf8"));
 * const report = evaluate(controls, resultsFromVitestJson(json, root), { date, commit });
 * writeFileSync("evidence/report.md", renderMarkdown(report));
 * ```
 */
import { z } from "zod";

/** One selector: a test file under `test/` and a literal part of a test's full name (describe titles and its own). */
export interface Selector {
  file: string;
  match: string;
}

/** One control of the mapping. */
export interface Control {
  id: string;
  title: string;
  claim: string;
  criteria: string[];
  tests: Selector[];
}

/** The whole mapping: criterion definitions and controls. */
export interface Controls {
  criteria: Record<string, string>;
  controls: Control[];
}

/** The controls issue 9 requires, by id; each must be in the mapping. */
export const REQUIRED_CONTROLS = [
  "secrets-at-rest",
  "secrets-in-transit",
  "secrets-in-memory",
  "scrubbing",
  "rotation",
  "audit-of-use",
  "per-agent-keys",
  "fail-closed-start-up",
  "authentication",
  "authorization",
  "pii-flow",
  "replay",
  "dos",
  "crash-artefacts",
] as const;

const ControlsSchema = z.strictObject({
  $comment: z.string().optional(),
  criteria: z.record(z.string().regex(/^(CC\d\.\d|[ACP]I?\d\.\d|A\.\d\.\d{1,2})$/), z.string().min(10)),
  controls: z
    .array(
      z.strictObject({
        id: z.string().regex(/^[a-z][a-z0-9-]*$/),
        title: z.string().min(3),
        claim: z.string().min(10),
        criteria: z.array(z.string()).min(1),
        tests: z.array(z.strictObject({ file: z.string().regex(/^[a-z0-9-]+\.test\.ts$/), match: z.string().min(8) })).min(1),
      }),
    )
    .min(1),
});

/**
 * Parses and checks the mapping: the schema, unique ids, every required control present, every criterion a
 * control cites defined. Throws an Error naming the first problem.
 */
export function parseControls(text: string): Controls {
  const parsed = ControlsSchema.parse(JSON.parse(text));
  const ids = new Set<string>();
  for (const c of parsed.controls) {
    if (ids.has(c.id)) throw new Error(`controls.json: duplicate control id "${c.id}"`);
    ids.add(c.id);
    for (const k of c.criteria) if (!(k in parsed.criteria)) throw new Error(`controls.json: control "${c.id}" cites undefined criterion "${k}"`);
  }
  for (const id of REQUIRED_CONTROLS) if (!ids.has(id)) throw new Error(`controls.json: required control "${id}" is missing`);
  return { criteria: parsed.criteria, controls: parsed.controls };
}

/** One test result, as the runner reads it from vitest's JSON reporter. */
export interface TestResult {
  /** File name under `test/` (e.g. `audit.test.ts`). */
  file: string;
  /** Describe titles and the test title, joined with " > ". */
  name: string;
  status: "passed" | "failed" | "skipped";
  durationMs: number;
  /** First line of the first failure message, if failed. */
  failure?: string;
}

/** A file vitest could not run at all (import error, crash): its selectors fail with this message. */
export interface FileError {
  file: string;
  message: string;
}

/** Reads vitest's JSON reporter output (`--reporter=json`). `root` is the repository root. */
export function resultsFromVitestJson(json: unknown, root: string): { results: TestResult[]; fileErrors: FileError[] } {
  const doc = json as {
    testResults?: {
      name: string;
      status: string;
      message?: string;
      assertionResults?: { ancestorTitles: string[]; title: string; status: string; duration?: number | null; failureMessages?: string[] }[];
    }[];
  };
  const results: TestResult[] = [];
  const fileErrors: FileError[] = [];
  const prefix = `${root.replace(/\/$/, "")}/test/`;
  for (const f of doc.testResults ?? []) {
    const file = f.name.startsWith(prefix) ? f.name.slice(prefix.length) : f.name;
    const tests = f.assertionResults ?? [];
    if (tests.length === 0 && f.status === "failed") fileErrors.push({ file, message: firstLine(f.message ?? "the file failed to run") });
    for (const a of tests) {
      const status = a.status === "passed" ? "passed" : a.status === "failed" ? "failed" : "skipped";
      const r: TestResult = { file, name: [...a.ancestorTitles, a.title].join(" > "), status, durationMs: Math.round(a.duration ?? 0) };
      if (status === "failed") r.failure = firstLine(a.failureMessages?.[0] ?? "failed");
      results.push(r);
    }
  }
  return { results, fileErrors };
}

function firstLine(s: string): string {
  // ANSI colours out; one line, bounded.
  return (s.replace(/\u001b\[[0-9;]*m/g, "").split("\n").find((l) => l.trim()) ?? "").trim().slice(0, 300);
}

/** A selector's outcome. */
export interface SelectorOutcome extends Selector {
  status: "passed" | "failed" | "missing" | "skipped";
  tests: TestResult[];
  /** Why it is not passing. */
  reason?: string;
}

/** A control's outcome. */
export interface ControlOutcome {
  id: string;
  title: string;
  claim: string;
  criteria: { id: string; meaning: string }[];
  status: "PASSING" | "FAILING";
  selectors: SelectorOutcome[];
  passed: number;
  failed: number;
}

/** The whole report. */
export interface Report {
  date: string;
  commit: string;
  dirty: boolean;
  node: string;
  durationMs: number;
  passing: number;
  failing: number;
  controls: ControlOutcome[];
  figures: Record<string, unknown>;
  command: string;
}

/** Decides each control from the results (see the module notes for the rule). */
export function evaluate(
  controls: Controls,
  run: { results: TestResult[]; fileErrors: FileError[] },
  meta: Omit<Report, "passing" | "failing" | "controls">,
): Report {
  const outcomes: ControlOutcome[] = controls.controls.map((c) => {
    const selectors: SelectorOutcome[] = c.tests.map((sel) => {
      const tests = run.results.filter((r) => r.file === sel.file && r.name.includes(sel.match));
      const fileError = run.fileErrors.find((e) => e.file === sel.file);
      if (tests.length === 0) {
        return { ...sel, status: "missing", tests, reason: fileError ? `the file failed to run: ${fileError.message}` : "no test with this name ran" };
      }
      const failed = tests.filter((t) => t.status === "failed");
      if (failed.length) return { ...sel, status: "failed", tests, reason: failed[0]!.failure ?? "failed" };
      if (tests.some((t) => t.status === "skipped")) return { ...sel, status: "skipped", tests, reason: "skipped: a skipped test is no evidence" };
      return { ...sel, status: "passed", tests };
    });
    const ok = selectors.every((s) => s.status === "passed");
    return {
      id: c.id,
      title: c.title,
      claim: c.claim,
      criteria: c.criteria.map((id) => ({ id, meaning: controls.criteria[id]! })),
      status: ok ? "PASSING" : "FAILING",
      selectors,
      passed: selectors.filter((s) => s.status === "passed").length,
      failed: selectors.filter((s) => s.status !== "passed").length,
    };
  });
  return {
    ...meta,
    passing: outcomes.filter((o) => o.status === "PASSING").length,
    failing: outcomes.filter((o) => o.status === "FAILING").length,
    controls: outcomes,
  };
}

const esc = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");

/** The Markdown report. */
export function renderMarkdown(r: Report): string {
  const out: string[] = [];
  out.push("# sealwire — security controls evidence", "");
  out.push(`- Date: ${r.date}`);
  out.push(`- Commit: \`${r.commit}\`${r.dirty ? " (working tree had uncommitted changes)" : ""}`);
  out.push(`- Node: ${r.node}`);
  out.push(`- Run: \`${r.command}\` in ${(r.durationMs / 1000).toFixed(1)} s`);
  out.push(`- Result: **${r.passing} of ${r.controls.length} controls passing**${r.failing ? `, **${r.failing} FAILING**` : ""}`, "");
  out.push("A control passes only if every test behind it ran and passed; a missing, skipped or failing test makes it FAILING.", "");
  out.push("| Control | Status | Tests | Supports |", "|---|---|---|---|");
  for (const c of r.controls) {
    out.push(`| [${esc(c.title)}](#${c.id}) | ${c.status === "PASSING" ? "PASSING" : "**FAILING**"} | ${c.passed}/${c.selectors.length} | ${c.criteria.map((k) => k.id).join(", ")} |`);
  }
  out.push("");
  for (const c of r.controls) {
    out.push(`<a id="${c.id}"></a>`, `## ${c.title} — ${c.status}`, "", c.claim, "");
    out.push("Supports:", "");
    for (const k of c.criteria) out.push(`- **${k.id}** — ${k.meaning}`);
    out.push("", "| Test | Status | Duration |", "|---|---|---|");
    for (const s of c.selectors) {
      if (s.tests.length === 0) {
        out.push(`| \`${s.file}\` — “${esc(s.match)}” | **MISSING** — ${esc(s.reason ?? "")} | |`);
        continue;
      }
      for (const t of s.tests) {
        const st = t.status === "passed" ? "pass" : t.status === "failed" ? `**FAIL** — ${esc(t.failure ?? "")}` : "**SKIPPED**";
        out.push(`| \`${t.file}\` — ${esc(t.name)} | ${st} | ${t.durationMs} ms |`);
      }
    }
    out.push("");
  }
  if (Object.keys(r.figures).length) {
    out.push("## Measured figures", "");
    for (const [k, v] of Object.entries(r.figures)) out.push(`### ${k}`, "", "```json", JSON.stringify(v, null, 1), "```", "");
  }
  return out.join("\n");
}

/**
 * The static parts of every `describe`/`it`/`test` title in a test file's source (placeholders such as `$name`,
 * `%i` and `${…}` split a title into parts). A selector's `match` must lie within one part of one title.
 */
export function titleParts(source: string): string[] {
  const parts: string[] = [];
  const re = /\b(?:describe|it|test)(?:\.each\([\s\S]*?\))?\(\s*(["'`])((?:\\.|(?!\1)[\s\S])*?)\1/g;
  for (const m of source.matchAll(re)) {
    const quote = m[1]!;
    let title = m[2]!.replace(/\\(.)/g, "$1");
    if (quote === "`") title = title.replace(/\$\{[^}]*\}/g, "\u0000");
    for (const p of title.split(/\u0000|\$[A-Za-z_][\w.]*|%[sdifjoO#%]/)) if (p.length) parts.push(p);
  }
  return parts;
}
