import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { EnvelopeOpener, encodePayload, sealEnvelope } from "../src/envelope.js";
import { SealwireError, type ErrorCode } from "../src/errors.js";
import { generateIdentity } from "../src/identity.js";
import { saveIdentity } from "../src/keystore.js";
import { MAX_REPLAY_ID_CHARS, PersistentReplayCache, REPLAY_STORE_MAGIC } from "../src/replay-store.js";
import { TrustStore } from "../src/trust.js";

const repo = fileURLToPath(new URL("..", import.meta.url));
const root = fs.mkdtempSync(path.join(os.tmpdir(), "sealwire-replay-"));
let n = 0;
const fresh = () => path.join(root, `store-${n++}.replay`);
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function expectCode(fn: () => unknown, code: ErrorCode): string {
  try {
    fn();
  } catch (e) {
    expect(SealwireError.is(e), String(e)).toBe(true);
    expect((e as SealwireError).code).toBe(code);
    return (e as Error).message;
  }
  throw new Error(`expected ${code}`);
}
async function expectCodeAsync(fn: () => Promise<unknown>, code: ErrorCode): Promise<string> {
  try {
    await fn();
  } catch (e) {
    expect(SealwireError.is(e), String(e)).toBe(true);
    expect((e as SealwireError).code).toBe(code);
    return (e as Error).message;
  }
  throw new Error(`expected ${code}`);
}

const T0 = 1_700_000_000_000;

describe("persistent replay store", () => {
  it("creates a 0600 file, records ids, and refuses them again after a reopen", async () => {
    const p = fresh();
    const s = await PersistentReplayCache.open(p, { now: () => T0 });
    expect(fs.statSync(p).mode & 0o777).toBe(0o600);
    expect(s.checkAndAdd("alice/01", T0 + 1000, T0)).toBe(true);
    expect(s.checkAndAdd("alice/01", T0 + 1000, T0 + 10)).toBe(false);
    expect(s.checkAndAdd("alice/02", T0 + 5000, T0)).toBe(true);
    expect(fs.readFileSync(p, "latin1")).toBe(`${REPLAY_STORE_MAGIC}\n${T0 + 1000} alice/01\n${T0 + 5000} alice/02\n`);
    s.close();
    expect(fs.existsSync(`${p}.lock`)).toBe(false);
    const s2 = await PersistentReplayCache.open(p, { now: () => T0 + 2000 });
    expect(s2.size).toBe(1); // alice/01 expired before the reopen and was not loaded
    expect(s2.checkAndAdd("alice/02", T0 + 5000, T0 + 2000)).toBe(false);
    expect(s2.checkAndAdd("alice/01", T0 + 9000, T0 + 2000)).toBe(true); // expired ids may come back (the opener refuses expired envelopes first)
    s2.close();
  });

  it("plugs into EnvelopeOpener: an envelope opened before a reopen is ERR_REPLAY after it", async () => {
    const alice = await generateIdentity("alice");
    const bob = await generateIdentity("bob");
    const trust = new TrustStore();
    trust.add(alice.publicIdentity);
    trust.add(bob.publicIdentity);
    const { bytes } = sealEnvelope(alice, trust.require("bob"), encodePayload("once"));
    const p = fresh();
    const s1 = await PersistentReplayCache.open(p);
    new EnvelopeOpener({ identity: bob, trust, replay: s1 }).open(bytes);
    s1.close();
    const s2 = await PersistentReplayCache.open(p);
    expectCode(() => new EnvelopeOpener({ identity: bob, trust, replay: s2 }).open(bytes), "ERR_REPLAY");
    s2.close();
  });

  it("tolerates a torn last line (and cuts it off before appending); a damaged earlier line fails closed", async () => {
    const p = fresh();
    const s = await PersistentReplayCache.open(p, { now: () => T0 });
    s.checkAndAdd("a/1", T0 + 10_000, T0);
    s.close();
    for (const torn of ["1700000", `${T0 + 10_000} b/`, "\0\0\0\0\0\0", `${T0 + 10_000} b/2 garbage`]) {
      const base = fs.readFileSync(p, "latin1").split("\n").slice(0, 2).join("\n") + "\n";
      fs.writeFileSync(p, base + torn);
      const r = await PersistentReplayCache.open(p, { now: () => T0 });
      expect(r.checkAndAdd("a/1", T0 + 10_000, T0)).toBe(false);
      expect(r.checkAndAdd("c/3", T0 + 10_000, T0)).toBe(true);
      r.close();
      expect(fs.readFileSync(p, "latin1")).toBe(`${REPLAY_STORE_MAGIC}\n${T0 + 10_000} a/1\n${T0 + 10_000} c/3\n`);
    }
    for (const bad of ["garbage\n", `${T0} two words\n`, `-5 a/1\n`, "\n", `${T0}\ta/1\n`, `${T0} ${"x".repeat(MAX_REPLAY_ID_CHARS + 1)}\n`]) {
      fs.writeFileSync(p, `${REPLAY_STORE_MAGIC}\n${T0} ok/1\n${bad}${T0} ok/2\n`);
      const msg = await expectCodeAsync(() => PersistentReplayCache.open(p, { now: () => T0 }), "ERR_REPLAY_STORE");
      expect(msg).toContain("line 3");
      expect(fs.existsSync(`${p}.lock`)).toBe(false); // a failed open releases its lock
    }
  });

  it("refuses files that are not replay stores, too large, or accessible by group or others", async () => {
    const p = fresh();
    fs.writeFileSync(p, "sealwire-keystore/1\n{}\n", { mode: 0o600 });
    expect(await expectCodeAsync(() => PersistentReplayCache.open(p), "ERR_REPLAY_STORE")).toContain("not a sealwire replay store");
    fs.writeFileSync(p, `${REPLAY_STORE_MAGIC}\n`);
    fs.chmodSync(p, 0o620);
    expect(await expectCodeAsync(() => PersistentReplayCache.open(p), "ERR_REPLAY_STORE")).toContain(`chmod 600 '${p}'`);
    fs.chmodSync(p, 0o600);
    fs.writeFileSync(p, `${REPLAY_STORE_MAGIC}\n` + `${T0} x/1\n`.repeat(2000));
    expect(await expectCodeAsync(() => PersistentReplayCache.open(p, { maxEntries: 10, compactThreshold: 16 }), "ERR_REPLAY_STORE")).toContain(
      "larger than its bound",
    );
    fs.mkdirSync(`${p}.d`);
    await expectCodeAsync(() => PersistentReplayCache.open(`${p}.d`), "ERR_REPLAY_STORE");
    // An empty file or a torn header held no records: it is rewritten.
    for (const content of ["", REPLAY_STORE_MAGIC.slice(0, 7)]) {
      fs.writeFileSync(p, content);
      const s = await PersistentReplayCache.open(p);
      s.close();
      expect(fs.readFileSync(p, "latin1")).toBe(`${REPLAY_STORE_MAGIC}\n`);
    }
  });

  it("one store per file: a second open is refused; a lock left by a dead process (or a previous life of our pid) is taken over", async () => {
    const p = fresh();
    const s = await PersistentReplayCache.open(p);
    expect(await expectCodeAsync(() => PersistentReplayCache.open(p), "ERR_REPLAY_STORE")).toContain(`in use by process ${process.pid}`);
    s.close();
    const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
    for (const pid of [dead, process.pid]) {
      fs.writeFileSync(`${p}.lock`, `${pid}\n`);
      const t = await PersistentReplayCache.open(p);
      expect(fs.readFileSync(`${p}.lock`, "latin1")).toBe(`${process.pid}\n`);
      t.close();
    }
    // A live process that is not us holds it (our parent, here).
    fs.writeFileSync(`${p}.lock`, `${process.ppid}\n`);
    expect(await expectCodeAsync(() => PersistentReplayCache.open(p), "ERR_REPLAY_STORE")).toContain(`in use by process ${process.ppid}`);
    fs.writeFileSync(`${p}.lock`, "what\n");
    expect(await expectCodeAsync(() => PersistentReplayCache.open(p), "ERR_REPLAY_STORE")).toContain("unreadable");
    fs.unlinkSync(`${p}.lock`);
  });

  it("refuses ids that could break the line format, and bad timestamps", async () => {
    const s = await PersistentReplayCache.open(fresh());
    for (const id of ["", "a b", "a\nb", `a\n${T0} injected`, "é", "x".repeat(MAX_REPLAY_ID_CHARS + 1), 5 as unknown as string]) {
      expectCode(() => s.checkAndAdd(id, T0, T0), "ERR_INVALID_ARGUMENT");
    }
    for (const exp of [Number.NaN, -1, 1.5, Infinity, 1e16]) expectCode(() => s.checkAndAdd("a/1", exp, T0), "ERR_INVALID_ARGUMENT");
    expectCode(() => s.checkAndAdd("a/1", T0, Number.NaN), "ERR_INVALID_ARGUMENT");
    expect(s.size).toBe(0);
    s.close();
    s.close(); // idempotent
    expectCode(() => s.checkAndAdd("a/1", T0, T0), "ERR_CLOSED");
    await expectCodeAsync(() => PersistentReplayCache.open(""), "ERR_INVALID_ARGUMENT");
    for (const o of [{ maxEntries: 0 }, { fsync: "sometimes" }, { compactThreshold: 1 }]) {
      await expectCodeAsync(() => PersistentReplayCache.open(fresh(), o as never), "ERR_INVALID_ARGUMENT");
    }
  });

  it("fails closed when full (ERR_QUEUE_FULL), and accepts again once records expire", async () => {
    const s = await PersistentReplayCache.open(fresh(), { maxEntries: 3 });
    for (let i = 0; i < 3; i++) expect(s.checkAndAdd(`a/${i}`, T0 + 100, T0)).toBe(true);
    expectCode(() => s.checkAndAdd("a/9", T0 + 100, T0), "ERR_QUEUE_FULL");
    expect(s.checkAndAdd("a/0", T0 + 100, T0 + 1)).toBe(false); // still a replay, not "full"
    expect(s.checkAndAdd("a/9", T0 + 500, T0 + 101)).toBe(true);
    s.close();
  });

  it("stays bounded: compaction keeps the file within about twice the live records, atomically", async () => {
    const p = fresh();
    const s = await PersistentReplayCache.open(p, { compactThreshold: 16, fsync: "never" });
    let maxLines = 0;
    // A steady stream: each id lives 50 ticks; 2000 ids over 2000 ticks, so ~50 are live at any time.
    for (let t = 0; t < 2000; t++) {
      expect(s.checkAndAdd(`peer/${t}`, T0 + t + 50, T0 + t)).toBe(true);
      maxLines = Math.max(maxLines, fs.readFileSync(p, "latin1").split("\n").length - 2);
    }
    expect(maxLines).toBeLessThanOrEqual(2 * 51 + 1);
    // Live ids survived every compaction; expired ones were dropped.
    for (let t = 1949; t < 2000; t++) expect(s.checkAndAdd(`peer/${t}`, T0 + t + 50, T0 + 1999)).toBe(false);
    expect(fs.readdirSync(root).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    s.close();
    const r = await PersistentReplayCache.open(p, { now: () => T0 + 1999 });
    expect(r.size).toBe(51); // t = 1949 … 1999 expire at or after T0 + 1999
    r.close();
  });

  it("compacts on open when expired records dominate", async () => {
    const p = fresh();
    const lines = Array.from({ length: 3000 }, (_, i) => `${T0 + i} old/${i}\n`).join("");
    fs.writeFileSync(p, `${REPLAY_STORE_MAGIC}\n${lines}${T0 + 10_000} live/1\n`, { mode: 0o600 });
    const s = await PersistentReplayCache.open(p, { now: () => T0 + 5000 });
    expect(fs.readFileSync(p, "latin1")).toBe(`${REPLAY_STORE_MAGIC}\n${T0 + 10_000} live/1\n`);
    expect(s.checkAndAdd("live/1", T0 + 10_000, T0 + 5000)).toBe(false);
    s.close();
  });

  it("property: across random adds, clock steps and reopens, it answers exactly like an in-memory model", async () => {
    const p = fresh();
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant("add" as const), id: fc.integer({ min: 0, max: 30 }), ttl: fc.integer({ min: 0, max: 40 }) }),
            fc.record({ op: fc.constant("tick" as const), dt: fc.integer({ min: 0, max: 15 }) }),
            fc.record({ op: fc.constant("reopen" as const) }),
          ),
          { maxLength: 120 },
        ),
        async (ops) => {
          fs.rmSync(p, { force: true });
          let now = T0;
          let s = await PersistentReplayCache.open(p, { compactThreshold: 16, fsync: "never", now: () => now });
          const model = new Map<string, number>();
          try {
            for (const o of ops) {
              if (o.op === "tick") now += o.dt;
              else if (o.op === "reopen") {
                s.close();
                s = await PersistentReplayCache.open(p, { compactThreshold: 16, fsync: "never", now: () => now });
              } else {
                const id = `p/${o.id}`;
                const prev = model.get(id);
                const expected = !(prev !== undefined && prev >= now);
                if (expected) model.set(id, now + o.ttl);
                expect(s.checkAndAdd(id, now + o.ttl, now)).toBe(expected);
              }
            }
          } finally {
            s.close();
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe("replay protection across a real restart", () => {
  it("an envelope opened by a process that then dies by SIGKILL is refused by the next process (ERR_REPLAY)", async () => {
    const dir = fs.mkdtempSync(path.join(root, "restart-"));
    const pass = "test passphrase for the restart fixture";
    const alice = await generateIdentity("alice");
    const bob = await generateIdentity("bob");
    await saveIdentity(path.join(dir, "bob.keystore"), bob, { passphrase: pass, kdf: { logN: 10, r: 1, p: 1 } });
    fs.writeFileSync(path.join(dir, "alice.pub.json"), JSON.stringify(alice.publicIdentity));
    const trust = new TrustStore();
    trust.add(bob.publicIdentity);
    fs.writeFileSync(path.join(dir, "envelope.bin"), sealEnvelope(alice, trust.require("bob"), encodePayload("pay 100")).bytes);
    fs.writeFileSync(path.join(dir, "fresh.bin"), sealEnvelope(alice, trust.require("bob"), encodePayload("pay 5")).bytes);

    const run = (mode: string) =>
      new Promise<{ out: string; code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", path.join(repo, "test/fixtures/replay-restart.ts"), dir, mode], {
          cwd: repo,
          env: { ...process.env, SEALWIRE_TEST_PASSPHRASE: pass },
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        let err = "";
        child.stdout.on("data", (d) => (out += d));
        child.stderr.on("data", (d) => (err += d));
        const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
        child.on("error", reject);
        child.on("close", (code, signal) => {
          clearTimeout(timer);
          if (!out) reject(new Error(`child ${mode} printed nothing: ${err}`));
          else resolve({ out, code, signal });
        });
      });

    const first = await run("first");
    expect(first.signal).toBe("SIGKILL");
    const r1 = JSON.parse(first.out);
    expect(r1.envelope).toEqual({ ok: true, text: expect.stringContaining("pay 100") });
    expect(fs.readFileSync(path.join(dir, "bob.replay.lock"), "latin1")).toBe(`${r1.pid}\n`); // it never closed

    const second = await run("second");
    expect(second.code).toBe(0);
    const r2 = JSON.parse(second.out);
    expect(r2.pid).not.toBe(r1.pid);
    expect(r2.envelope).toEqual({ ok: false, code: "ERR_REPLAY" });
    expect(r2.fresh).toEqual({ ok: true, text: expect.stringContaining("pay 5") });
  });
});
