/**
 * Helpers for the multi-process examples: run the `sealwire` CLI as real child processes on loopback, read their
 * output line by line, and clean up (every child is killed when the run ends, even on failure).
 *
 * @module
 * @example
 * ```ts
 * const lab = new Lab(); const hub = lab.start(["hub", "--listen", "ws://127.0.0.1:0", "--key", "hub.key"]);
 * const url = await hub.waitFor(/listening on (\S+)/); … await lab.stop();
 * ```
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Identity } from "../src/identity.js";
import { saveIdentity } from "../src/keystore.js";
import { saveTrustFile } from "../src/trust-file.js";
import { TrustStore } from "../src/trust.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "bin", "sealwire.ts");
// Resolved here, not from the child's working directory (the lab directory has no node_modules).
const TSX = import.meta.resolve("tsx");

/** One running `sealwire` process. */
export class Proc {
  readonly lines: string[] = [];
  readonly exited: Promise<number>;
  #waiters: (() => void)[] = [];
  constructor(readonly name: string, readonly child: ChildProcess) {
    let buf = "";
    const onData = (d: Buffer) => {
      buf += d.toString("utf8");
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        for (const w of this.#waiters.splice(0)) w();
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    this.exited = new Promise((resolve) => child.on("exit", (code, sig) => resolve(code ?? (sig ? 128 : 1))));
  }
  /** Waits for an output line matching `re`; returns its first group (or the line). */
  async waitFor(re: RegExp, timeoutMs = 20_000): Promise<string> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.map((l) => re.exec(l)).find((m) => m);
      if (hit) return hit[1] ?? hit[0];
      const left = end - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms; got:\n${this.lines.join("\n")}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.#waiters.push(() => (clearTimeout(t), r()));
      });
    }
  }
}

/** A temporary directory and the processes started in it. */
export class Lab {
  readonly dir = mkdtempSync(join(tmpdir(), "sealwire-lab-"));
  readonly procs: Proc[] = [];
  readonly env: NodeJS.ProcessEnv;
  constructor(passphrase = "demo passphrase, not for production") {
    this.env = { ...process.env, SEALWIRE_PASSPHRASE: passphrase, SEALWIRE_TRUST: join(this.dir, "trust.json") };
  }
  path(name: string): string {
    return join(this.dir, name);
  }
  /** Starts `sealwire <args>` in the lab directory. */
  start(name: string, args: string[]): Proc {
    const child = spawn(process.execPath, ["--import", TSX, CLI, ...args], { cwd: this.dir, env: this.env, stdio: ["ignore", "pipe", "pipe"] });
    const p = new Proc(name, child);
    this.procs.push(p);
    return p;
  }
  /**
   * Makes keys for each agent (what `sealwire keygen` does, in this process to save start-up time) and writes
   * the shared trust file (what `sealwire trust add` does).
   */
  async keygen(peers: Record<string, { clearances?: string[]; roles?: string[] }>): Promise<void> {
    const trust = new TrustStore();
    for (const [id, opts] of Object.entries(peers)) {
      const identity = Identity.generate(id);
      try {
        trust.add(await saveIdentity(this.path(`${id}.key`), identity, { passphrase: this.env["SEALWIRE_PASSPHRASE"]! }), opts);
      } finally {
        identity.close();
      }
    }
    await saveTrustFile(this.path("trust.json"), trust);
  }

  /** Runs `sealwire <args>` to completion. */
  async run(name: string, args: string[]): Promise<{ code: number; lines: string[] }> {
    const p = this.start(name, args);
    const code = await p.exited;
    return { code, lines: p.lines };
  }
  /** Stops every process still running (SIGTERM, then SIGKILL) and removes the directory. */
  async stop(): Promise<void> {
    for (const p of this.procs) if (p.child.exitCode === null) p.child.kill("SIGTERM");
    await Promise.race([Promise.all(this.procs.map((p) => p.exited)), new Promise((r) => setTimeout(r, 3000))]);
    for (const p of this.procs) if (p.child.exitCode === null) p.child.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}
