/**
 * Floods and slow peers (issue 9): a hub on loopback serves a legitimate pair of agents doing request/reply while a
 * SECOND PROCESS (`test/fixtures/attacker.ts`) attacks it with every vector at once: ~10,000 malformed frames/s on
 * raw WebSocket connections, ~1,000 handshakes/s that never finish (TCP-only, upgrade-only, and a real Noise first
 * message that makes the hub spend DH), oversize frames (declared over `maxPayload`, and exactly `maxPayload` of
 * garbage), slowloris on the HTTP upgrade, and a trusted-but-malicious agent sending garbage envelopes.
 *
 * The hub is `sealwire hub` as deployed, in its own process, with its audit log and default limits: per-address
 * connection rate (10/s, closed at accept), caps that evict the oldest unfinished socket or handshake, timeouts,
 * and the listeners' refusals counted and audited in aggregate. The pair are agents in this process, as agents on
 * other hosts would be. (An earlier version ran hub and agents on one event loop: every attack callback then
 * delayed each of a round trip's six hops, so the p99 measured queueing in the test's own process.)
 *
 * Phases, each measured the same way (round trips paced at 40/s, event-loop delay, CPU, the main thread's run and
 * run-queue-wait time from schedstat, kernel TCP counters): two diagnostic ones at normal priority — `quiet, not
 * isolated` and `spin` (the attacker process only burns a core at nice 0: CPU starvation alone, no attack traffic)
 * — then, with the hub and this process given the CPU whenever they are runnable (see ISOLATE) and the attacker at
 * nice 19, the
 * asserted ones: `quiet` (baseline), `attack`, and `quiet after` (how far the environment moved meanwhile).
 *
 * Asserted: the hub stays up and serves new peers during and after the attack (full listeners evict the oldest
 * unfinished socket or handshake instead of refusing newcomers); the pair loses no request; its p99 under attack is
 * within 3× the quiet p99; hub RSS growth stays bounded; every vector meets a limit (a cap that evicts or refuses,
 * or a timeout that drops it, each observed from the attacker's side with its timing); the insider is cut after
 * 32 refused frames; refusals below the hub (WebSocket and Noise listeners) are audited in aggregate —
 * `refused_connections` records per reason and source per window (the listeners' `onRefusal` through a
 * `RefusalCounter`) — and the log verifies after a graceful stop. Figures are printed — rates achieved, p50/p99
 * per phase, hub CPU and RSS, refusals by kind, audit records by kind — and written to
 * `$SEALWIRE_EVIDENCE_DIR/floods.json` when set.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/floods.test.ts
 * FLOOD_ATTACK_MS=20000 npx vitest run --config test/vitest.config.ts test/floods.test.ts   # a longer attack
 * ```
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { setPriority, tmpdir } from "node:os";
import { join } from "node:path";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseControl } from "../src/_hub-protocol.js";
import { createAgent, type Agent } from "../src/agent.js";
import { Proc } from "../examples/_processes.js";
import { verifyAuditLog } from "../src/audit.js";
import { SealwireError } from "../src/errors.js";
import { Identity } from "../src/identity.js";
import { saveIdentity } from "../src/keystore.js";
import { saveTrustFile } from "../src/trust-file.js";
import { TrustStore } from "../src/trust.js";
import { noise } from "../transports/noise/index.js";
import { webSocket } from "../transports/websocket.js";
import type { AttackConfig } from "./fixtures/attacker.js";

const ATTACKER = fileURLToPath(new URL("./fixtures/attacker.ts", import.meta.url));
const CLI = fileURLToPath(new URL("../bin/sealwire.ts", import.meta.url));
const TSX = import.meta.resolve("tsx");
const ATTACK_MS = Number(process.env["FLOOD_ATTACK_MS"] ?? 12_000);
const QUIET_MS = 6_000;
const AFTER_MS = 4_000;
/** Length of each diagnostic phase (not isolated: quiet, and CPU-starvation control). */
const DIAG_MS = 3_000;
/**
 * During the asserted phases the hub and the agents (this process) get the CPU whenever they are runnable (nice -10,
 * see {@link isolate}) and the attacker runs at nice 19: the hub gets the CPU a dedicated server would
 * give it, the attacker's CPU is not the hub's (as on a real network), and this shared 2-core machine's other
 * load (other test runs, compilers) stops deciding the p99. What is left is work the hub does for the attacker
 * and the kernel's loopback networking. FLOOD_ISOLATE=0 turns it off (the figures then show the run-queue wait).
 * Needs root (or CAP_SYS_NICE); without it the run carries on at normal priority and says so.
 */
const ISOLATE = process.env["FLOOD_ISOLATE"] !== "0";
/**
 * Scheduling priority of the attacking process. On a real deployment the attacker's CPU is on the attacker's
 * machine; here both share two cores with whatever else runs. At nice 19 the attacker gets only CPU no one else
 * wants, which models that; the `spin` control runs at nice 0 to show what plain CPU starvation does. Set
 * FLOOD_ATTACKER_NICE=0 to attack at equal priority (figures for that are in the issue-9 report).
 */
const ATTACKER_NICE = Number(process.env["FLOOD_ATTACKER_NICE"] ?? (ISOLATE ? 19 : 0));
/**
 * Requests are paced (one every 25 ms, 40/s) rather than back to back: back to back, the pair itself keeps one
 * core busy (≈4.5 ms of CPU per round trip for two seals, two signatures, the hub's verification and audit, two
 * opens), so its "latency" would be a throughput figure and any CPU taken by anyone would show up 1:1.
 */
const PACE_MS = 25;
/** The bound the issue sets, and the one asserted. */
const P99_FACTOR = 3;
/**
 * Hub RSS growth allowed under attack. What the limits allow in the worst case: 64 Noise handshakes in flight, each
 * of which may first make the WebSocket layer buffer one `maxPayload` frame (64 × 1 MiB), plus at most 1024 sockets
 * with their kernel-side buffers outside the heap, plus the audit writer's queue. 256 MiB leaves room for GC lag.
 */
const RSS_GROWTH_LIMIT_MB = 256;

/**
 * Gives the hub process and this one (the agents) the CPU whenever they are runnable, for the asserted phases (see
 * ISOLATE): every thread to nice -10. Against the attacker at nice 19 that is a CFS weight of 9548 to 15, so the
 * attacker gets only CPU nobody else wants — without real-time scheduling, whose throttling (95% of each second)
 * stalled a saturated hub for seconds at a time in earlier runs of this test. Returns what it did; undone in
 * afterAll.
 */
function isolate(pids: number[]): string {
  if (!ISOLATE) return "off";
  const tids = pids.flatMap((pid) => readdirSync(`/proc/${pid}/task`).map(Number));
  try {
    for (const tid of tids) setPriority(tid, -10);
  } catch {
    return "none (no privilege)";
  }
  cleanups.push(() => {
    for (const pid of pids) {
      try {
        for (const tid of readdirSync(`/proc/${pid}/task`)) setPriority(Number(tid), 0);
      } catch {
        /* exited */
      }
    }
  });
  return "nice -10";
}

// Made in beforeAll, not at import: `vitest list` imports and collects files without running hooks.
let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "sealwire-floods-"));
});
const PASS = "flood test passphrase, not for production";
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
  if (dir) rmSync(dir, { recursive: true, force: true });
});


const pct = (xs: number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const r2 = (x: number) => Math.round(x * 100) / 100;

/** Busy CPU of the whole machine (all cores), in core-seconds, from /proc/stat. */
function machineBusy(): number {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  const total = f.reduce((a, b) => a + b, 0);
  return (total - idle) / 100;
}

/** On-CPU and run-queue-wait time of this process's main thread so far, in ms (/proc/<pid>/task/<pid>/schedstat). */
function schedMs(): { run: number; wait: number } {
  try {
    const [run, wait] = readFileSync(`/proc/${process.pid}/task/${process.pid}/schedstat`, "utf8").trim().split(/\s+/).map(Number);
    return { run: run! / 1e6, wait: wait! / 1e6 };
  } catch {
    return { run: NaN, wait: NaN };
  }
}

interface Phase {
  name: string;
  /**
   * Main thread (hub + agents' event loop), per second of the phase: ms on a CPU, and ms runnable but waiting for
   * one. A high wait with a low run is CPU starvation by other processes; a high run is work done in the hub.
   */
  mainThreadRunMsPerS: number;
  mainThreadWaitMsPerS: number;
  /** Kernel TCP counters during the phase (the whole network namespace, so other tests' traffic too). */
  kernelTcp: Record<string, number>;
  /** Start times (performance.now) of the slowest round trips. */
  slowest: { at: number; ms: number }[];
  rtts: number[];
  failures: string[];
  p50: number;
  p99: number;
  max: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  /** CPU of this process (hub + agents) as a share of one core. */
  cpuCore: number;
  /** Busy share of the whole machine (2 cores = 2.0). */
  machineCores: number;
}

/** Runs sequential request/reply round trips for `ms` and measures the phase. */
async function measure(name: string, alice: Agent, ms: number, during?: () => void): Promise<Phase> {
  const rtts: number[] = [];
  const starts: number[] = [];
  const failures: string[] = [];
  const failedAt: number[] = [];
  const eld = monitorEventLoopDelay({ resolution: 5 });
  eld.enable();
  const cpu0 = process.cpuUsage();
  const m0 = machineBusy();
  const s0 = schedMs();
  const k0 = tcpCounters();
  const t0 = performance.now();
  let i = 0;
  while (performance.now() - t0 < ms) {
    during?.();
    const s = performance.now();
    try {
      await alice.request("bob", { i: i++ }, { timeoutMs: 5000 });
      rtts.push(performance.now() - s);
      starts.push(s);
    } catch (e) {
      failures.push(SealwireError.is(e) ? e.code : String(e));
      failedAt.push(s);
    }
    const wait = s + PACE_MS - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  const wall = (performance.now() - t0) / 1000;
  eld.disable();
  const cpu = process.cpuUsage(cpu0);
  const s1 = schedMs();
  return {
    name,
    mainThreadRunMsPerS: Math.round((s1.run - s0.run) / wall),
    mainThreadWaitMsPerS: Math.round((s1.wait - s0.wait) / wall),
    kernelTcp: delta(k0, tcpCounters()),
    rtts,
    failures,
    p50: r2(pct(rtts, 50)),
    p99: r2(pct(rtts, 99)),
    max: r2(Math.max(...rtts)),
    loopDelayP99Ms: r2(eld.percentile(99) / 1e6),
    loopDelayMaxMs: r2(eld.max / 1e6),
    cpuCore: r2((cpu.user + cpu.system) / 1e6 / wall),
    slowest: [
      ...failedAt.map((at) => ({ at: Math.round(at), ms: Infinity })),
      ...rtts.map((ms, i) => ({ at: Math.round(starts[i]!), ms: r2(ms) })).sort((a, b) => b.ms - a.ms).slice(0, 3),
    ],
    machineCores: r2((machineBusy() - m0) / wall),
  };
}

interface AttackerOut {
  proc: ChildProcess;
  lines: Record<string, unknown>[];
  /** Resolves when every vector runs (after the insider, if any, is connected). */
  started: Promise<void>;
  done: Promise<Record<string, unknown>>;
}

function startAttacker(config: AttackConfig, niceness: number): AttackerOut {
  // `nice` at exec, so every thread of the child (V8's, libuv's) inherits it.
  const proc = spawn("nice", ["-n", String(niceness), process.execPath, "--import", TSX, ATTACKER, JSON.stringify(config)], { stdio: ["ignore", "pipe", "pipe"] });
  cleanups.push(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  });
  const lines: Record<string, unknown>[] = [];
  let buf = "";
  let stderr = "";
  let onStarted: () => void = () => {};
  const started = new Promise<void>((r) => (onStarted = r));
  proc.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const done = new Promise<Record<string, unknown>>((resolve, reject) => {
    proc.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const o = JSON.parse(line) as Record<string, unknown>;
          lines.push(o);
          if (o["kind"] === "started") onStarted();
          if (o["kind"] === "done") resolve(o);
        } catch {
          /* not ours */
        }
      }
    });
    proc.on("exit", (code) => setTimeout(() => reject(new Error(`attacker exited (${code}) without a summary:\n${stderr}`)), 100));
  });
  done.catch(() => {});
  return { proc, lines, started: Promise.race([started, done.then(() => {})]), done };
}

/** Kernel TCP counters (this network namespace): segments retransmitted, accept-queue overflows, RTO timeouts. */
function tcpCounters(): Record<string, number> {
  const table = (file: string, prefix: string): Record<string, number> => {
    const rows = readFileSync(file, "utf8").split("\n").filter((l) => l.startsWith(prefix));
    const keys = rows[0]?.split(/\s+/) ?? [];
    const vals = rows[1]?.split(/\s+/) ?? [];
    return Object.fromEntries(keys.slice(1).map((k, i) => [k, Number(vals[i + 1])]));
  };
  try {
    const tcp = table("/proc/net/snmp", "Tcp:");
    const ext = table("/proc/net/netstat", "TcpExt:");
    return { retransSegs: tcp["RetransSegs"]!, listenOverflows: ext["ListenOverflows"]!, rtoTimeouts: ext["TCPTimeouts"]! };
  } catch {
    return {};
  }
}
const delta = (a: Record<string, number>, b: Record<string, number>) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k]! - (a[k] ?? 0)]));

/** CPU seconds used by a process so far (utime + stime from /proc/<pid>/stat). */
function procCpuS(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

describe("floods and slow peers: a second process attacks the hub while a legitimate pair talks", () => {
  it("the hub stays up, the pair's p99 stays within 3× quiet, RSS is bounded, every abuse meets a limit and failed handshakes are audited", async (ctx) => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on("unhandledRejection", onUnhandled);
    process.on("uncaughtException", onUnhandled);
    cleanups.push(() => {
      process.off("unhandledRejection", onUnhandled);
      process.off("uncaughtException", onUnhandled);
    });

    // Identities, trust, and the key files of the hub and the insider (the attacker loads it like any agent would).
    const trust = new TrustStore();
    const ids: Record<string, Identity> = {};
    for (const id of ["hub", "alice", "bob", "carol", "mallory"]) {
      ids[id] = Identity.generate(id);
      cleanups.push(() => ids[id]!.close());
      trust.add(id === "mallory" || id === "hub" ? await saveIdentity(join(dir, `${id}.key`), ids[id], { passphrase: PASS }) : ids[id].publicIdentity);
    }
    await saveTrustFile(join(dir, "trust.json"), trust);

    // The hub as deployed: `sealwire hub` in its own process, with its audit log (which also gets the aggregated
    // refusals of its WebSocket and Noise listeners) and its default limits.
    const auditPath = join(dir, "hub-audit.log");
    const hubProc = spawn(process.execPath, ["--import", TSX, CLI, "hub", "--listen", "ws://127.0.0.1:0", "--key", join(dir, "hub.key"), "--trust", join(dir, "trust.json"), "--audit", auditPath], {
      env: { ...process.env, SEALWIRE_PASSPHRASE: PASS },
      stdio: ["ignore", "pipe", "pipe"],
    });
    cleanups.push(() => {
      if (hubProc.exitCode === null && hubProc.signalCode === null) hubProc.kill("SIGKILL");
    });
    const hub = new Proc("hub", hubProc);
    const url = await hub.waitFor(/listening on (ws:\/\/127\.0\.0\.1:\d+)/);
    const hubPid = hubProc.pid!;

    const agentErrors: string[] = [];
    const mk = async (id: string) => {
      const a = await createAgent({
        identity: ids[id]!,
        trust,
        transport: noise({ transport: webSocket(), identity: ids[id]!, trust }),
        hub: url,
        hubPeer: "hub",
        onError: (e) => agentErrors.push(`${id}:${e.code}`),
      });
      cleanups.push(() => a.close());
      return a;
    };
    const alice = await mk("alice");
    const bob = await mk("bob");
    void (async () => {
      for await (const m of bob.messages()) if (m.type === "req") await m.reply({ echo: m.data }).catch(() => {});
    })();

    /** A new legitimate peer: Noise handshake with the hub, then the hub's sw-ready. */
    const probeTransport = noise({ transport: webSocket(), identity: ids["carol"]!, trust });
    const probe = async (): Promise<{ ok: boolean; ms: number; code?: string }> => {
      const t = performance.now();
      try {
        const conn = await probeTransport.dial(url, { remotePeer: "hub", signal: AbortSignal.timeout(5000) });
        const first = await conn[Symbol.asyncIterator]().next();
        const ok = !first.done && parseControl(first.value)?.kind === "sw-ready";
        conn.abort();
        return { ok, ms: r2(performance.now() - t) };
      } catch (e) {
        return { ok: false, ms: r2(performance.now() - t), code: SealwireError.is(e) ? e.code : String(e) };
      }
    };

    // Warm up (JIT, connections).
    for (let i = 0; i < 100; i++) await alice.request("bob", { warm: i }, { timeoutMs: 5000 });
    expect((await probe()).ok).toBe(true);

    // Diagnosis first, at normal priority: quiet, then the attacker process only burning a core (nice 0). The
    // difference is what plain CPU starvation does to the pair, with no attack traffic at all.
    const plainQuiet = await measure("quiet, not isolated", alice, DIAG_MS);
    const spinner = startAttacker({ url, durationMs: DIAG_MS + 500, spin: true }, 0);
    await spinner.started;
    await new Promise((r) => setTimeout(r, 200));
    const spin = await measure("spin (CPU-only control, nice 0), not isolated", alice, DIAG_MS);
    await spinner.done;

    // Then the hub's thread gets its own CPU (see ISOLATE) and the asserted phases run: quiet baseline, attack.
    const isolated = isolate([process.pid, hubPid]);
    const quiet = await measure("quiet", alice, QUIET_MS);

    // The attack. RSS is sampled every 100 ms; a new peer tries to connect every second.
    global.gc?.();
    const hubRss = (): number => {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${hubPid}/status`, "utf8"));
      return m ? Number(m[1]) * 1024 : NaN;
    };
    const rss0 = hubRss();
    let rssPeak = rss0;
    const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, hubRss())), 100);
    cleanups.push(() => clearInterval(sampler));
    const auditLines = () => readFileSync(auditPath, "utf8").split("\n").filter(Boolean).length;
    const auditCount0 = auditLines();
    const range = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}.${i + 1}`);
    const attacker = startAttacker({
      url,
      durationMs: ATTACK_MS,
      garbage: { framesPerSec: 10_000, connsPerSec: 300, sources: range("127.0.1", 16) },
      stall: { perSec: 1_000, sources: range("127.0.2", 32) },
      oversize: { perSec: 20, sources: range("127.0.3", 8) },
      slowloris: { concurrent: 100, byteIntervalMs: 100, sources: ["127.0.4.1"] },
      insider: { key: join(dir, "mallory.key"), passphrase: PASS, trust: join(dir, "trust.json"), hubId: "hub", framesPerSec: 2_000, source: "127.0.5.1" },
    }, ATTACKER_NICE);
    await attacker.started;
    await new Promise((r) => setTimeout(r, 500)); // let every vector ramp up
    const hubCpu0 = procCpuS(hubPid);
    const attackerCpu0 = procCpuS(attacker.proc.pid!);
    const probes: { ok: boolean; ms: number; code?: string }[] = [];
    let lastProbe = performance.now();
    let probing: Promise<void> = Promise.resolve();
    const attack = await measure("attack", alice, ATTACK_MS - 1500, () => {
      if (performance.now() - lastProbe < 1000) return;
      lastProbe = performance.now();
      probing = probing.then(async () => void probes.push(await probe()));
    });
    const hubCpu = procCpuS(hubPid) - hubCpu0;
    const attackerCpu = procCpuS(attacker.proc.pid!) - attackerCpu0;
    const attackWall = (ATTACK_MS - 1500) / 1000;
    await probing;
    const summary = await attacker.done;
    clearInterval(sampler);
    const auditDuringAttack = auditLines() - auditCount0;

    // After: the hub still serves the pair and new peers (wait out the longest handshake timeout, 10 s).
    const after = Date.now();
    let recovered: { ok: boolean; ms: number; code?: string } = { ok: false, ms: 0 };
    while (Date.now() - after < 12_000) {
      recovered = await probe();
      if (recovered.ok) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const recoveredAfterMs = Date.now() - after;
    const late = await alice.request("bob", "after the attack", { timeoutMs: 5000 });
    expect(late.data).toEqual({ echo: "after the attack" });
    // Quiet again: how much the environment (other processes on this machine) moved the baseline meanwhile.
    const quietAfter = await measure("quiet after", alice, AFTER_MS);

    await alice.close();
    await bob.close();
    // A graceful stop: the hub records its last window of refusals and the log's final checkpoint.
    hubProc.kill("SIGTERM");
    expect(await hub.exited).toBe(0);
    const hubErrors: Record<string, number> = {};
    for (const l of hub.lines) {
      const refused = /^refused: (ERR_[A-Z_]+)/.exec(l);
      if (refused) hubErrors[refused[1]!] = (hubErrors[refused[1]!] ?? 0) + 1;
    }
    const verified = await verifyAuditLog(auditPath, { publicKey: ids["hub"]!.signPublicKey });
    const records = readFileSync(auditPath, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: string; reason?: string; peer?: string; count?: number });
    const audited: Record<string, number> = {};
    /** Refusals below the hub by reason, summed over the aggregated records' counts. */
    const refusedBelowHub: Record<string, number> = {};
    let refusedRecords = 0;
    for (const r of records) {
      const k = `${r.event}${r.reason ? `:${r.reason}` : ""}${r.event === "handshake" && r.peer === "mallory" ? ":mallory" : ""}`;
      if (r.event === "handshake_failed" || r.event === "denied" || r.event === "handshake" || r.event === "refused_connections") audited[k] = (audited[k] ?? 0) + 1;
      if (r.event === "refused_connections") {
        refusedRecords++;
        refusedBelowHub[r.reason!] = (refusedBelowHub[r.reason!] ?? 0) + r.count!;
      }
    }
    const auditBytes = readFileSync(auditPath).length;

    const counters = summary["counters"] as Record<string, number>;
    const fates = summary["fates"] as Record<string, { n: number; p50Ms: number; maxMs: number }>;
    const sumFates = (re: RegExp) => Object.entries(fates).reduce((a, [k, f]) => a + (re.test(k) ? f.n : 0), 0);
    const maxLife = (re: RegExp) => Object.entries(fates).reduce((a, [k, f]) => (re.test(k) ? Math.max(a, f.maxMs) : a), 0);

    const figures = {
      machine: { cores: 2, loadavg: readFileSync("/proc/loadavg", "utf8").trim() },
      attackRatesAchieved: summary["rates"],
      attackerCpuCore: r2(attackerCpu / attackWall),
      hubCpuCore: r2(hubCpu / attackWall),
      attackerCounters: counters,
      refusalsSeenByAttacker: fates,
      attackerNice: ATTACKER_NICE,
      isolation: isolated,
      phases: [plainQuiet, spin, quiet, attack, quietAfter].map(({ rtts, failures, ...p }) => ({ ...p, n: rtts.length, failures })),
      p99Ratio: { attackVsQuiet: r2(attack.p99 / quiet.p99), spinVsPlainQuiet: r2(spin.p99 / plainQuiet.p99), quietAfterVsQuiet: r2(quietAfter.p99 / quiet.p99) },
      rssMB: { before: Math.round(rss0 / 2 ** 20), peak: Math.round(rssPeak / 2 ** 20), growth: Math.round((rssPeak - rss0) / 2 ** 20) },
      newPeerProbesDuringAttack: { ok: probes.filter((p) => p.ok).length, failed: probes.filter((p) => !p.ok).map((p) => p.code ?? "no sw-ready"), msOk: probes.filter((p) => p.ok).map((p) => p.ms) },
      newPeerAfterAttack: { ...recovered, afterMs: recoveredAfterMs },
      hubRefusalsByCode: hubErrors,
      auditRecordsDuringAttack: auditDuringAttack,
      auditBytesTotal: auditBytes,
      auditByKind: audited,
      refusedBelowHubByReason: refusedBelowHub,
      refusedConnectionsRecords: refusedRecords,
      auditVerifies: verified.ok,
    };
    const report = JSON.stringify(figures, null, 1);
    console.log(`floods figures:\n${report}`);
    await ctx.annotate(report);
    if (process.env["SEALWIRE_EVIDENCE_DIR"]) writeFileSync(join(process.env["SEALWIRE_EVIDENCE_DIR"], "floods.json"), report);

    // --- The hub stayed up and nothing crashed.
    expect(unhandled.map(String)).toEqual([]);
    expect(recovered.ok, `no new peer could connect within 12 s after the attack: ${recovered.code}`).toBe(true);
    expect(verified, JSON.stringify(verified)).toMatchObject({ ok: true });

    // --- The attack really ran at (close to) the rates asked for.
    const rates = summary["rates"] as Record<string, number>;
    expect(rates["garbageFramesPerSec"]).toBeGreaterThan(5_000);
    expect(rates["stallPerSec"]).toBeGreaterThan(500);
    expect(counters["oversize.maxSent"] ?? 0).toBeGreaterThan(0);
    expect(counters["oversize.overSent"] ?? 0).toBeGreaterThan(0);
    expect(counters["insider.framesSent"] ?? 0, JSON.stringify(counters)).toBeGreaterThan(32);

    // --- The legitimate pair: nothing lost, p99 within 3× the quiet baseline.
    expect(attack.failures).toEqual([]);
    expect(attack.rtts.length).toBeGreaterThan(50);
    expect(attack.p99, `p99 quiet ${quiet.p99} ms, attack ${attack.p99} ms (isolation: ${isolated})`).toBeLessThanOrEqual(P99_FACTOR * quiet.p99);

    // --- Memory: bounded.
    expect((rssPeak - rss0) / 2 ** 20).toBeLessThan(RSS_GROWTH_LIMIT_MB);

    // --- New peers get in during the attack: full listeners evict the oldest unfinished socket or handshake.
    expect(probes.length).toBeGreaterThan(3);
    expect(probes.filter((p) => !p.ok).map((p) => p.code ?? "no sw-ready"), "a new peer was kept out during the attack").toEqual([]);

    // --- Every vector met a limit: evicted or refused by a cap, or dropped by a timeout — never held for long.
    // Caps: 1024 sockets and 64 handshaking per address at the WebSocket listener (the oldest unfinished one is
    // evicted), 64 Noise handshakes in flight and 8 per source (likewise). Timeouts: the HTTP upgrade (10 s) and
    // the Noise handshake (5 s).
    expect(sumFates(/^stall\//), "no stalled socket was ever dropped").toBeGreaterThan(0);
    expect(maxLife(/^stall\/m1\//), "a stalled Noise handshake outlived its 5 s timeout").toBeLessThan(7_000);
    expect(maxLife(/^(stall|slowloris)\/(tcp|trickle|upgrade)\//), "a socket outlived the 10 s upgrade timeout").toBeLessThan(12_000);
    expect(sumFates(/^slowloris\/trickle\//), "slowloris was never dropped").toBeGreaterThan(0);
    // Oversize and garbage: refused at a cap, or dropped within the Noise timeout (never read past one frame).
    expect(sumFates(/^oversize\//)).toBeGreaterThan(0);
    expect(maxLife(/^(oversize|garbage)\//)).toBeLessThan(7_000);
    // The insider is cut by the hub (32 refused frames in a row), again and again.
    expect(counters["insider.cut"] ?? 0).toBeGreaterThan(0);
    expect(hubErrors["ERR_DECODE"] ?? 0).toBeGreaterThanOrEqual(32);
    expect(hubErrors["ERR_DECODE"] ?? 0).toBeLessThanOrEqual(32 * ((counters["insider.connected"] ?? 0) + 1));

    // --- Audited in aggregate: garbage handshakes, evictions of stalled ones, oversize frames — each reason with
    // its count, in far fewer records than refusals (a flood does not become a flood of disk writes).
    expect(refusedBelowHub["noise_handshake_failed"] ?? 0, JSON.stringify(refusedBelowHub)).toBeGreaterThan(0);
    expect((refusedBelowHub["noise_handshake_evicted"] ?? 0) + (refusedBelowHub["noise_per_source"] ?? 0) + (refusedBelowHub["ws_evicted"] ?? 0) + (refusedBelowHub["ws_per_address_evicted"] ?? 0), JSON.stringify(refusedBelowHub)).toBeGreaterThan(0);
    const refusedTotal = Object.values(refusedBelowHub).reduce((a, b) => a + b, 0);
    expect(refusedRecords).toBeLessThan(refusedTotal / 10);
  }, 120_000);

});
