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
import { fromBase64url } from "../src/_bytes.js";
import { verifyAuditLog } from "../src/audit.js";
import { SealwireError } from "../src/errors.js";
import { parsePublicIdentity } from "../src/identity.js";

const HELP = `sealwire — signed, sealed, policy-tagged messages between AI agents

Usage:
  sealwire <command> [options]

Commands:
  audit verify <file> --key <key>
                     Verify an audit log: hash chain, signed checkpoints, truncation. <key> is the signer's
                     Ed25519 public key (base64url or hex) or a file holding its public identity (JSON).
                     Add --allow-open-tail for a live log that has not been closed yet.
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

/** `--key`: a base64url or hex Ed25519 public key, or a file with a public identity (its `signPub`). */
function loadVerifyKey(key: string | undefined): Uint8Array {
  if (!key) throw new SealwireError("ERR_INVALID_ARGUMENT", "audit verify needs --key <signer public key (base64url or hex) or public identity file>");
  if (/^[0-9a-fA-F]{64}$/.test(key)) return new Uint8Array(Buffer.from(key, "hex"));
  if (/^[A-Za-z0-9_-]{43}$/.test(key)) return new Uint8Array(Buffer.from(key, "base64url"));
  let text: string;
  try {
    text = readFileSync(key, "utf8");
  } catch {
    throw new SealwireError("ERR_INVALID_ARGUMENT", `--key is neither a 32-byte key (base64url/hex) nor a readable file`);
  }
  return fromBase64url(parsePublicIdentity(text.trim()).signPub, 32, "signPub");
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
        key: { type: "string" },
        "allow-open-tail": { type: "boolean" },
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
    if (cmd === "audit") {
      if (positionals[1] !== "verify" || positionals.length !== 3) {
        throw new SealwireError("ERR_INVALID_ARGUMENT", 'usage: sealwire audit verify <file> --key <signer public key or public identity file>');
      }
      const publicKey = loadVerifyKey(values.key);
      const res = await verifyAuditLog(positionals[2]!, { publicKey, allowOpenTail: values["allow-open-tail"] === true });
      if (res.ok) {
        out.push(`OK: ${res.records} records, ${res.checkpoints} signed checkpoints, ${res.segments} segment(s), head ${res.head}`);
        return { code: 0, stdout: out.join("\n"), stderr: "" };
      }
      err.push(`sealwire: ${res.code}: ${positionals[2]} line ${res.line}: ${res.reason}`);
      return { code: 1, stdout: "", stderr: err.join("\n") };
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
