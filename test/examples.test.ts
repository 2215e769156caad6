import { describe, expect, it, vi } from "vitest";
import { run } from "../bin/sealwire.js";
import { main as crew } from "../examples/crew/index.js";
import { main as demo } from "../examples/demo.js";
import { main as memoryDemo } from "../examples/memory-demo.js";
import { main as twoProcesses } from "../examples/two-processes/index.js";
import { main as quickstart } from "../examples/quickstart.js";

describe("examples run (so they cannot rot)", () => {
  it("quickstart: the README example delivers and answers", async () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    try {
      const answer = await quickstart();
      expect(answer).toEqual({ pong: { q: "ping" } });
      expect(log.mock.calls[0]).toEqual(["alice", { text: "hi bob" }, { pii: ["pii:email"], anonymized: false }]);
    } finally {
      log.mockRestore();
    }
  });

  it("memory demo: every step behaves as described", async () => {
    const lines: string[] = [];
    expect(await memoryDemo((l) => lines.push(l))).toBe(true);
    expect(lines.filter((l) => l.startsWith("ok  ")).length).toBe(7);
    expect(lines.some((l) => l.startsWith("FAIL"))).toBe(false);
  });

  it("npm run demo: hub and three agents as processes: delivered, PII denied, audit verified", async () => {
    const lines: string[] = [];
    expect(await demo((l) => lines.push(l)), lines.join("\n")).toBe(true);
    expect(lines.filter((l) => l.startsWith("ok  ")).length).toBe(6);
  }, 90_000);

  it("two-processes: a hub and two agents as three processes over Noise/WebSocket", async () => {
    const lines: string[] = [];
    expect(await twoProcesses((l) => lines.push(l)), lines.join("\n")).toBe(true);
    expect(lines.some((l) => l.includes("hello from another process"))).toBe(true);
  }, 90_000);

  it("crew: delivered, denied and attested messages; `sealwire audit verify` passes on its log and fails on an edited copy", async () => {
    const { mkdtempSync, readFileSync, writeFileSync, rmSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const dir = mkdtempSync(join(tmpdir(), "crew-test-"));
    try {
      const res = await crew(join(dir, "audit.log"), () => {});
      expect(res.ok).toBe(true);
      expect(res.lines.filter((l) => l.startsWith("ok  "))).toHaveLength(5);
      expect(res.lines.some((l) => l.startsWith("attested"))).toBe(true);
      const good = await run(["audit", "verify", res.auditPath, "--key", res.auditKey]);
      expect(good.code).toBe(0);
      expect(good.stdout).toMatch(/^OK: 1\d records, 2 signed checkpoints/);
      const log = readFileSync(res.auditPath, "utf8");
      expect(log).not.toContain("example.org"); // the PII never reaches the audit trail
      const edited = join(dir, "edited.log");
      writeFileSync(edited, log.replace('"reason":"pii_not_cleared"', '"reason":"pii_ok_cleared"'));
      const bad = await run(["audit", "verify", edited, "--key", res.auditKey]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/^sealwire: ERR_AUDIT_TAMPERED: .* line \d+: hash_mismatch$/);
      const truncated = join(dir, "truncated.log");
      writeFileSync(truncated, log.split("\n").slice(0, 5).join("\n") + "\n");
      expect((await run(["audit", "verify", truncated, "--key", res.auditKey])).stderr).toMatch(/ERR_AUDIT_TRUNCATED/);
      expect((await run(["audit", "verify", res.auditPath])).stderr).toMatch(/^sealwire: ERR_INVALID_ARGUMENT: audit verify needs --key/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("README's quick-start block is the same code as examples/quickstart.ts", async () => {
    const { readFileSync } = await import("node:fs");
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const ex = readFileSync(new URL("../examples/quickstart.ts", import.meta.url), "utf8");
    const between = ex.slice(ex.indexOf("// --- README example begins ---"), ex.indexOf("// --- README example ends ---"));
    const essential = between
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => /^(import|const|trust\.|await|for await|void)/.test(l));
    expect(essential.length).toBeGreaterThan(10);
    for (const line of essential) expect(readme, line).toContain(line);
  });
});

describe("CLI", () => {
  it("--help works and unknown commands fail with one coded line", async () => {
    const help = await run(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("Usage:");
    const bad = await run(["frobnicate"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^sealwire: ERR_INVALID_ARGUMENT: unknown command/);
    expect(bad.stderr.split("\n")).toHaveLength(1);
    const badOpt = await run(["--nope"]);
    expect(badOpt.code).toBe(1);
    expect((await run(["--version"])).stdout).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("the root entry's import graph reaches no transport module (no ws, no NATS client, no transports/)", async () => {
    const { readFileSync } = await import("node:fs");
    const { dirname, resolve } = await import("node:path");
    const root = new URL("..", import.meta.url).pathname;
    const seen = new Set<string>();
    const bare = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const src = readFileSync(file, "utf8");
      for (const m of src.matchAll(/(?:^|\n)\s*(?:import|export)\b[^"';]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g)) {
        const spec = (m[1] ?? m[2])!;
        if (spec.startsWith(".")) visit(resolve(dirname(file), spec.replace(/\.js$/, ".ts")));
        else bare.add(spec);
      }
    };
    visit(resolve(root, "src/index.ts"));
    expect(seen.size).toBeGreaterThan(5);
    expect([...seen].filter((f) => f.includes("/transports/"))).toEqual([]);
    expect([...bare].filter((s) => /^(ws|nats|@nats-io\/)/.test(s))).toEqual([]);
    expect(bare.has("msgpackr")).toBe(true); // the walk does see third-party imports
  });
});

describe("README", () => {
  it("lists every error code, and no code that does not exist", async () => {
    const { readFileSync } = await import("node:fs");
    const { ERROR_CODES } = await import("../src/errors.js");
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const table = readme.slice(readme.indexOf("<!-- error-codes:begin -->"), readme.indexOf("<!-- error-codes:end -->"));
    const listed = [...table.matchAll(/^\| `(ERR_[A-Z0-9_]+)` \|/gm)].map((m) => m[1]);
    expect(listed.sort()).toEqual(Object.keys(ERROR_CODES).sort());
  });
});
