#!/usr/bin/env node
/**
 * The `sealwire` command line. Sub-commands grow with later features (keygen, trust, hub, listen, send, audit,
 * doctor); each failure is one line with its error code and what to do, and a non-zero exit status.
 *
 * @module
 * @example
 * ```sh
 * npx sealwire --help
 * ```
 */
import { readFileSync, realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { SealwireError } from "../src/errors.js";

const HELP = `sealwire — signed, sealed, policy-tagged messages between AI agents

Usage:
  sealwire <command> [options]

Commands:
  help               Show this help.
  version            Print the version.

Options:
  -h, --help         Show this help.
  -v, --version      Print the version.
      --debug        Print stack traces on failure.

Library use: import { createAgent, generateIdentity, TrustStore } from "sealwire".
Docs: README.md (quick start, API, error codes).`;

/** Exit status and output of one CLI run (for tests). */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function version(): string {
  for (const rel of ["../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "sealwire" && pkg.version) return pkg.version;
    } catch {
      /* try the next location (source vs dist layout) */
    }
  }
  return "unknown";
}

/** Runs the CLI with `argv` (without node and script) and returns what it would print. */
export async function run(argv: string[]): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  let debug = argv.includes("--debug");
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "v" },
        debug: { type: "boolean" },
      },
    });
    debug = values.debug === true;
    const cmd = positionals[0];
    if (values.version || cmd === "version") {
      out.push(version());
      return { code: 0, stdout: out.join("\n"), stderr: "" };
    }
    if (values.help || cmd === "help" || cmd === undefined) {
      out.push(HELP);
      return { code: cmd === undefined && !values.help ? 2 : 0, stdout: out.join("\n"), stderr: "" };
    }
    throw new SealwireError("ERR_INVALID_ARGUMENT", `unknown command "${cmd.slice(0, 40)}"; run "sealwire --help" for the list`);
  } catch (e) {
    const code = SealwireError.is(e) ? e.code : "ERR_INVALID_ARGUMENT";
    const msg = e instanceof Error ? e.message : String(e);
    err.push(`sealwire: ${code}: ${msg}`);
    if (debug && e instanceof Error && e.stack) err.push(e.stack);
    return { code: 1, stdout: out.join("\n"), stderr: err.join("\n") };
  }
}

// Resolve symlinks: npm installs the bin as a link in node_modules/.bin.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  const r = await run(process.argv.slice(2));
  if (r.stdout) process.stdout.write(r.stdout + "\n");
  if (r.stderr) process.stderr.write(r.stderr + "\n");
  process.exitCode = r.code;
}
