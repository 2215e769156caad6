/**
 * Memory hygiene, proven with V8 heap snapshots (issue 7). A child process loads an identity from a keystore the
 * parent wrote — so only the parent knows the secret bytes — uses it, and writes a heap snapshot while it is open
 * and another after it was closed. The parent searches both for the secrets and for the secret values noble
 * derives from them (Ed25519 expanded key, clamped X25519 scalar), in raw, hex, base64, base64url and latin1 form,
 * forwards and byte-reversed (noble turns little-endian scalars into numbers through a hex string).
 *
 * What a heap snapshot can and cannot see (measured, and checked again here through the positive control):
 * it holds every reachable JS string, so a key that became a string anywhere would show; it does NOT hold the
 * contents of ArrayBuffers / typed arrays, nor memory outside the V8 heap (OpenSSL), nor garbage that was
 * collected but not yet overwritten. So on Linux the parent also reads the child's whole writable memory through
 * /proc/<pid>/mem — V8 heap, typed-array stores, malloc heap (OpenSSL), stacks — once while the identity is open
 * (the raw seed must be found: the scan works) and once after close (nothing may be found). A Uint8Array copy
 * someone forgot to wipe passes the snapshot checks and fails this one. See SECURITY.md, "Memory and keys at rest".
 */
import { spawn } from "node:child_process";
import * as nc from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { Identity } from "../src/identity.js";
import { saveIdentity } from "../src/keystore.js";

const repo = fileURLToPath(new URL("..", import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), "sealwire-heap-"));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const PASS = "heap test passphrase";

/** Every encoding we look for, forwards and reversed, by name. */
function forms(bytes: Uint8Array): [string, string][] {
  const out: [string, string][] = [];
  for (const [dir, b] of [["", Buffer.from(bytes)], ["reversed ", Buffer.from(bytes).reverse()]] as const) {
    const b64 = b.toString("base64");
    out.push(
      [`${dir}hex`, b.toString("hex")],
      [`${dir}HEX`, b.toString("hex").toUpperCase()],
      [`${dir}base64`, b64],
      [`${dir}base64 unpadded`, b64.replace(/=+$/, "")],
      [`${dir}base64url`, b.toString("base64url")],
      [`${dir}raw`, b.toString("latin1")],
    );
  }
  return out;
}

/** The secrets, plus what noble derives from them and keeps as bigints or hex strings while computing. */
function secretMaterial(signSeed: Uint8Array, sealSecret: Uint8Array): Uint8Array[] {
  const h = nc.createHash("sha512").update(signSeed).digest();
  const head = Uint8Array.from(h.subarray(0, 32));
  head[0]! &= 248; // RFC 8032 §5.1.5 clamping
  head[31]! &= 127;
  head[31]! |= 64;
  const clamped = Uint8Array.from(sealSecret);
  clamped[0]! &= 248; // RFC 7748 §5 decodeScalar25519
  clamped[31]! &= 127;
  clamped[31]! |= 64;
  return [signSeed, sealSecret, head, Uint8Array.from(h.subarray(32)), clamped];
}

interface Snapshot {
  /** All JS strings in the heap, joined by NUL. */
  strings: string;
  /** The raw file. */
  raw: Buffer;
}
function readSnapshot(file: string): Snapshot {
  const raw = fs.readFileSync(file);
  const parsed = JSON.parse(raw.toString("utf8")) as { strings: string[] };
  return { strings: parsed.strings.join("\0"), raw };
}
/** Which of `secrets` show up in the snapshot, and how (never printing a secret: only its index and form number). */
function findings(snap: Snapshot, secrets: Uint8Array[]): string[] {
  const hits: string[] = [];
  secrets.forEach((s, i) => {
    // V8 writes a NUL character in a snapshot string as a space.
    for (const [name, f] of forms(s)) if (snap.strings.includes(f.replace(/\0/g, " "))) hits.push(`secret#${i} as a string: ${name}`);
    if (snap.raw.includes(Buffer.from(s))) hits.push(`secret#${i} raw bytes`);
  });
  return hits;
}

/**
 * Reads every readable mapping of process `pid` through /proc/<pid>/mem (Linux; allowed for our own child even
 * under Yama ptrace_scope=1) and reports which needles occur, by name. This sees what a heap snapshot cannot:
 * typed-array contents, OpenSSL's heap, stacks, and garbage not yet overwritten.
 */
function scanProcessMemory(pid: number, needles: Map<string, Buffer>): string[] {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, "utf8").trim().split("\n");
  const fd = fs.openSync(`/proc/${pid}/mem`, "r");
  const hits = new Set<string>();
  const CHUNK = 16 * 1024 * 1024;
  const overlap = Math.max(...[...needles.values()].map((b) => b.length));
  const buf = Buffer.alloc(CHUNK + overlap);
  try {
    for (const line of maps) {
      const [range, perms, , , , name = ""] = line.split(/\s+/);
      // Only private writable mappings can hold data the process made (heaps, stacks, typed-array stores);
      // read-only and executable mappings are the binaries and JIT code.
      if (perms !== "rw-p" || name === "[vvar]" || name === "[vsyscall]" || name === "[vvar_vclock]") continue;
      const [start, end] = range!.split("-").map((x) => Number.parseInt(x, 16)) as [number, number];
      for (let off = start; off < end; off += CHUNK) {
        let got: number;
        try {
          got = fs.readSync(fd, buf, 0, Math.min(CHUNK + overlap, end - off), off);
        } catch {
          break; // a guard page or a mapping that went away
        }
        const view = buf.subarray(0, got);
        for (const [what, needle] of needles) if (view.includes(needle)) hits.add(what);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return [...hits].sort();
}

/**
 * Needles for a whole-memory scan, as the bytes a Uint8Array or a one-byte JS string holds: raw and hex, forwards
 * and reversed, for every secret value; base64 and base64url of the two stored secrets. (A narrower set than the
 * snapshot search, which is cheap; each needle costs a pass over ~100 MB here.)
 */
function memoryNeedles(secrets: Uint8Array[], label: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  secrets.forEach((s, i) => {
    for (const [name, f] of forms(s)) {
      const wanted = name.endsWith("raw") || name.endsWith("hex") || (i < 2 && (name === "base64 unpadded" || name === "base64url"));
      if (wanted) m.set(`${label}#${i} ${name}`, Buffer.from(f, "latin1"));
    }
  });
  return m;
}

const canScanMemory = process.platform === "linux" && fs.existsSync("/proc/self/mem");

interface ChildResult {
  open: Snapshot;
  closed: Snapshot;
  agent: Uint8Array[];
  canary: { signSeed: Uint8Array; sealSecret: Uint8Array };
  /** Whole-process memory scans (Linux): which agent needles were found while open and after close. */
  memory: { open: string[]; closed: string[]; canaryClosed: string[] } | null;
}

/** Writes both keystores, runs the child with `provider`, returns its snapshots and the secrets only we know. */
async function runChild(provider: "native" | "noble"): Promise<ChildResult> {
  const dir = fs.mkdtempSync(path.join(root, `${provider}-`));
  const agent = Identity.generate("agent");
  const canary = Identity.generate("canary");
  const kdf = { logN: 10, r: 1, p: 1 };
  await saveIdentity(path.join(dir, "agent.keystore"), agent, { passphrase: PASS, kdf });
  await saveIdentity(path.join(dir, "canary.keystore"), canary, { passphrase: PASS, kdf });
  const a = agent.exportSecrets();
  const c = canary.exportSecrets();
  const kid = agent.kid;
  agent.close();
  canary.close();
  const agentMaterial = secretMaterial(a.signSeed, a.sealSecret);
  // V8 cuts every string to 1024 characters in a snapshot by default: a key at position 2000 of a long log line
  // would be invisible. Lift the limit so the search sees whole strings.
  const flags = ["--expose-gc", "--heap-snapshot-string-limit=268435456", "--import", "tsx"];
  const child = spawn(process.execPath, [...flags, path.join(repo, "test/fixtures/heap-child.ts"), dir, provider], {
    cwd: repo,
    env: { ...process.env, SEALWIRE_TEST_PASSPHRASE: PASS },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const timer = setTimeout(() => child.kill("SIGKILL"), 25_000);
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  const lines = (async function* () {
    let buf = "";
    for await (const chunk of child.stdout) {
      buf += String(chunk);
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        yield JSON.parse(buf.slice(0, i)) as { phase: string; pid?: number; publicIdentity?: { kid: string } };
        buf = buf.slice(i + 1);
      }
    }
  })();
  const next = async (phase: string) => {
    const r = await lines.next();
    if (r.done || r.value.phase !== phase) throw new Error(`heap child (${provider}) did not reach "${phase}": ${stderr.slice(0, 2000)}`);
    return r.value;
  };
  try {
    const opened = await next("open");
    expect(opened.publicIdentity?.kid).toBe(kid); // the child really uses the key we look for
    const seedRaw = new Map([["agent#0 raw", Buffer.from(a.signSeed)]]);
    const memOpen = canScanMemory ? scanProcessMemory(opened.pid!, seedRaw) : null;
    child.stdin.write("go\n");
    await next("closed");
    const needles = memoryNeedles(agentMaterial, "agent");
    needles.set("canary#1 raw", Buffer.from(c.sealSecret));
    const memAll = canScanMemory ? scanProcessMemory(opened.pid!, needles) : null;
    const memClosed = memAll?.filter((h) => h.startsWith("agent")) ?? null;
    const memCanary = memAll?.filter((h) => h.startsWith("canary")) ?? null;
    child.stdin.end();
    const code = await exited;
    if (code !== 0) throw new Error(`heap child (${provider}) exited ${code}: ${stderr.slice(0, 2000)}`);
    return {
      open: readSnapshot(path.join(dir, "open.heapsnapshot")),
      closed: readSnapshot(path.join(dir, "closed.heapsnapshot")),
      agent: agentMaterial,
      canary: c,
      memory: memOpen && memClosed && memCanary ? { open: memOpen, closed: memClosed, canaryClosed: memCanary } : null,
    };
  } finally {
    clearTimeout(timer);
    child.kill("SIGKILL");
  }
}

describe.each([{ provider: "native" as const }, { provider: "noble" as const }])("heap snapshots, $provider provider", ({ provider }) => {
  const result = runChild(provider);
  // Keep the promise from being reported as unhandled before the first test awaits it.
  result.catch(() => undefined);

  it("positive control: the canary leaked as strings on purpose is found in both snapshots", async () => {
    const r = await result;
    for (const snap of [r.open, r.closed]) {
      const s = Buffer.from(r.canary.signSeed);
      const x = Buffer.from(r.canary.sealSecret);
      expect(snap.strings.includes(s.toString("hex"))).toBe(true);
      expect(snap.strings.includes(s.toString("base64"))).toBe(true);
      expect(snap.strings.includes(x.toString("base64url"))).toBe(true);
      expect(snap.strings.includes("-".repeat(3000) + x.toString("hex"))).toBe(true); // past V8's default 1024-character cut
      expect(snap.strings.includes(x.toString("latin1").replace(/\0/g, " "))).toBe(true); // V8 writes NUL as a space
      expect(findings(snap, [r.canary.signSeed]).length).toBeGreaterThan(0);
    }
  });

  it("while the identity is open, no JS string holds its secrets or the values derived from them", async () => {
    const r = await result;
    expect(findings(r.open, r.agent)).toEqual([]);
  });

  it("after close and GC, the snapshot holds no copy of the secrets in any form", async () => {
    const r = await result;
    expect(findings(r.closed, r.agent)).toEqual([]);
  });

  it("what the snapshot cannot see: typed-array contents (the canary's raw bytes kept in a Uint8Array)", async () => {
    // Documents the blind spot the SECURITY.md section describes. If a future V8 includes typed-array contents,
    // this fails, and the raw-byte checks above become stronger: update SECURITY.md and this test.
    const r = await result;
    // (The canary also leaked the latin1 string form, which the snapshot stores JSON-escaped, not as raw bytes.)
    expect(r.closed.raw.includes(Buffer.from(r.canary.sealSecret))).toBe(false);
  });

  if (canScanMemory) {
    it("whole process memory (Linux /proc/<pid>/mem): the raw key is found while open, and no form of it is left after close", async () => {
      const r = await result;
      // Positive controls: the scan finds the agent's raw seed while it is in use, and the canary after close.
      expect(r.memory!.open).toContain("agent#0 raw"); // the Ed25519 seed, in the identity's Uint8Array
      expect(r.memory!.canaryClosed.length).toBeGreaterThan(0);
      expect(r.memory!.closed).toEqual([]);
    });
  }
});
