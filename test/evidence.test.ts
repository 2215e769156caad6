/**
 * The evidence report cannot lie by omission (issue 9, "Evidence report"): every test the control → test mapping
 * (`test/evidence/controls.json`) names exists in the test sources, every control the issue lists is mapped and
 * cites defined SOC 2 / ISO 27001 criteria, and the report marks a control whose test is missing, skipped or
 * failing as FAILING — checked here on synthetic results, so it does not depend on today's test outcomes.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/evidence.test.ts
 * ```
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  REQUIRED_CONTROLS,
  evaluate,
  parseControls,
  renderMarkdown,
  resultsFromVitestJson,
  titleParts,
  type Controls,
  type TestResult,
} from "./evidence/evaluate.js";

const TEST_DIR = fileURLToPath(new URL(".", import.meta.url));
const MAPPING = readFileSync(join(TEST_DIR, "evidence", "controls.json"), "utf8");
const meta = { date: "2026-01-01T00:00:00.000Z", commit: "0".repeat(40), dirty: false, node: "v20", durationMs: 1, figures: {}, command: "vitest run" };

describe("the control → test mapping", () => {
  const controls = parseControls(MAPPING);

  it("maps every control the issue lists, each with tests and defined criteria", () => {
    expect(controls.controls.map((c) => c.id)).toEqual(expect.arrayContaining([...REQUIRED_CONTROLS]));
    for (const c of controls.controls) {
      expect(c.tests.length, c.id).toBeGreaterThan(0);
      for (const k of c.criteria) expect(controls.criteria[k], `${c.id} cites ${k}`).toMatch(/^(SOC 2|ISO 27001)/);
    }
    // Both frameworks are covered by every control.
    for (const c of controls.controls) {
      expect(c.criteria.some((k) => k.startsWith("A.")), `${c.id} cites no ISO 27001 control`).toBe(true);
      expect(c.criteria.some((k) => !k.startsWith("A.")), `${c.id} cites no SOC 2 criterion`).toBe(true);
    }
    // No definition is dead weight.
    const used = new Set(controls.controls.flatMap((c) => c.criteria));
    expect(Object.keys(controls.criteria).filter((k) => !used.has(k))).toEqual([]);
  });

  it("references only tests that exist: each selector's file exists and its text lies within a test title there", () => {
    const parts = new Map<string, string[]>();
    const missing: string[] = [];
    for (const c of controls.controls) {
      for (const s of c.tests) {
        const path = join(TEST_DIR, s.file);
        if (!existsSync(path)) {
          missing.push(`${c.id}: ${s.file} does not exist`);
          continue;
        }
        if (!parts.has(s.file)) parts.set(s.file, titleParts(readFileSync(path, "utf8")));
        if (!parts.get(s.file)!.some((p) => p.includes(s.match))) missing.push(`${c.id}: no test title in ${s.file} contains “${s.match}”`);
      }
    }
    expect(missing).toEqual([]);
  });

  it("refuses a mapping with an undefined criterion, a duplicate id, a missing required control, or unknown fields", () => {
    const doc = JSON.parse(MAPPING) as { criteria: Record<string, string>; controls: { id: string; criteria: string[] }[] };
    const edit = (f: (d: typeof doc) => void) => {
      const d = structuredClone(doc);
      f(d);
      return JSON.stringify(d);
    };
    expect(() => parseControls(edit((d) => d.controls[0]!.criteria.push("CC9.9")))).toThrow(/undefined criterion "CC9.9"/);
    expect(() => parseControls(edit((d) => (d.controls[1]!.id = d.controls[0]!.id)))).toThrow(/duplicate control id/);
    expect(() => parseControls(edit((d) => (d.controls = d.controls.filter((c) => c.id !== "replay"))))).toThrow(/required control "replay" is missing/);
    expect(() => parseControls(edit((d) => ((d.controls[0] as unknown as Record<string, unknown>)["status"] = "PASSING")))).toThrow();
    expect(() => parseControls("not json")).toThrow();
  });
});

describe("the report marks missing, skipped and failing tests as FAILING, never absent", () => {
  const controls: Controls = {
    criteria: { "CC6.1": "SOC 2 — access.", "A.8.24": "ISO 27001 — cryptography." },
    controls: [
      { id: "green", title: "Green", claim: "all pass", criteria: ["CC6.1"], tests: [{ file: "a.test.ts", match: "alpha" }, { file: "a.test.ts", match: "beta" }] },
      { id: "missing", title: "Missing", claim: "one selector matches nothing", criteria: ["A.8.24"], tests: [{ file: "a.test.ts", match: "alpha" }, { file: "a.test.ts", match: "renamed away" }] },
      { id: "failing", title: "Failing", claim: "one test fails", criteria: ["CC6.1"], tests: [{ file: "b.test.ts", match: "gamma" }] },
      { id: "skipped", title: "Skipped", claim: "one test skipped", criteria: ["CC6.1"], tests: [{ file: "b.test.ts", match: "delta" }] },
      { id: "broken-file", title: "Broken file", claim: "its file did not run", criteria: ["CC6.1"], tests: [{ file: "c.test.ts", match: "epsilon" }] },
      { id: "other-file", title: "Other file", claim: "a same-named test in another file does not count", criteria: ["CC6.1"], tests: [{ file: "d.test.ts", match: "alpha" }] },
    ],
  };
  const results: TestResult[] = [
    { file: "a.test.ts", name: "suite > alpha works", status: "passed", durationMs: 3 },
    { file: "a.test.ts", name: "suite > beta works", status: "passed", durationMs: 4 },
    { file: "b.test.ts", name: "gamma fails", status: "failed", durationMs: 5, failure: "AssertionError: expected 1 to be 2" },
    { file: "b.test.ts", name: "delta is skipped", status: "skipped", durationMs: 0 },
  ];
  const report = evaluate(controls, { results, fileErrors: [{ file: "c.test.ts", message: "SyntaxError: oops" }] }, meta);
  const byId = Object.fromEntries(report.controls.map((c) => [c.id, c]));

  it("decides each control by the rule", () => {
    expect(Object.fromEntries(report.controls.map((c) => [c.id, c.status]))).toEqual({
      green: "PASSING",
      missing: "FAILING",
      failing: "FAILING",
      skipped: "FAILING",
      "broken-file": "FAILING",
      "other-file": "FAILING",
    });
    expect(report.controls).toHaveLength(controls.controls.length); // nothing dropped
    expect([report.passing, report.failing]).toEqual([1, 5]);
    expect(byId["missing"]!.selectors[1]).toMatchObject({ status: "missing", reason: "no test with this name ran" });
    expect(byId["failing"]!.selectors[0]).toMatchObject({ status: "failed", reason: "AssertionError: expected 1 to be 2" });
    expect(byId["skipped"]!.selectors[0]).toMatchObject({ status: "skipped" });
    expect(byId["broken-file"]!.selectors[0]!.reason).toMatch(/the file failed to run: SyntaxError: oops/);
    expect(byId["green"]!.criteria).toEqual([{ id: "CC6.1", meaning: "SOC 2 — access." }]);
  });

  it("renders every control, the MISSING and FAIL lines, the date and the commit", () => {
    const md = renderMarkdown(report);
    for (const c of controls.controls) expect(md).toContain(`## ${c.title} — ${byId[c.id]!.status}`);
    expect(md).toContain("**MISSING** — no test with this name ran");
    expect(md).toContain("**FAIL** — AssertionError: expected 1 to be 2");
    expect(md).toContain("**SKIPPED**");
    expect(md).toContain(meta.commit);
    expect(md).toContain(meta.date);
    expect(md).toMatch(/1 of 6 controls passing\*\*, \*\*5 FAILING/);
  });

  it("reads vitest's JSON reporter output, including a file that failed to load", () => {
    const json = {
      testResults: [
        {
          name: "/repo/test/a.test.ts",
          status: "failed",
          assertionResults: [
            { ancestorTitles: ["suite", "inner"], title: "alpha works", status: "passed", duration: 3.4, failureMessages: [] },
            { ancestorTitles: [], title: "beta", status: "failed", duration: 1, failureMessages: ["\u001b[31mAssertionError: nope\u001b[39m\n    at x"] },
            { ancestorTitles: [], title: "gamma", status: "pending", duration: null },
          ],
        },
        { name: "/repo/test/c.test.ts", status: "failed", message: "Failed to load url ./missing.js\nmore", assertionResults: [] },
      ],
    };
    expect(resultsFromVitestJson(json, "/repo")).toEqual({
      results: [
        { file: "a.test.ts", name: "suite > inner > alpha works", status: "passed", durationMs: 3 },
        { file: "a.test.ts", name: "beta", status: "failed", durationMs: 1, failure: "AssertionError: nope" },
        { file: "a.test.ts", name: "gamma", status: "skipped", durationMs: 0 },
      ],
      fileErrors: [{ file: "c.test.ts", message: "Failed to load url ./missing.js" }],
    });
    expect(resultsFromVitestJson({}, "/repo")).toEqual({ results: [], fileErrors: [] });
  });

  it("titleParts: static parts of describe/it/test titles, split at $name, %i and ${…} placeholders", () => {
    const src = [
      'describe("outer suite", () => {',
      '  it.each([1, 2])("mode %i: keys, encap", (m) => {});',
      "  it(`refuses ${what} with ERR_X`, () => {});",
      "  describe.each([{ p: 'a' }])('vectors with the $p provider', () => {});",
      '  test("quoted \\"inner\\" title", () => {});',
      "  const notATitle = fit('nope');",
      "});",
    ].join("\n");
    expect(titleParts(src)).toEqual(["outer suite", "mode ", ": keys, encap", "refuses ", " with ERR_X", "vectors with the ", " provider", 'quoted "inner" title']);
  });
});
