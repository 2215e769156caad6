/**
 * Does a checkpoint's fsync stall audit appends? (issue 9: the flood test's latency flakiness.)
 *
 * Two loads on a {@link fileSink} with `checkpointEvery: 100`, each on tmpfs (`/dev/shm`) and on the real disk
 * (a directory under `/tmp`, or the directories given on the command line):
 * - **open loop**: `PER_TICK` appends per timer tick whatever happens, as a hub under load does (1 ms asked, about
 *   1.3 ms got: some 7k appends/s); each append's time-to-resolve (call → promise settled) is recorded, and
 *   separately for the appends issued while an fsync was running;
 * - **closed loop**: `WORKERS` producers, each awaiting its append before acting and issuing the next (an agent
 *   that must not send before the record is written); reports the rate and time-to-resolve.
 * Also the bare cost of one `fh.sync()` after a 100-record write on each file system, for scale.
 * `--fsync-delay-ms N` makes every fsync N ms slower (an SD card, a busy cloud volume), which shows whether appends
 * wait for it. The figures before and after the fsync left the append path are in `src/audit.ts` ("Durability").
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source bench/audit-fsync.ts            # /dev/shm and a temp dir under /tmp
 * npx tsx --conditions=source bench/audit-fsync.ts /work/tmp  # or given directories
 * npx tsx --conditions=source bench/audit-fsync.ts --fsync-delay-ms 20 /tmp  # every fsync 20 ms slower
 * ```
 */
import { existsSync, mkdtempSync, promises as fsp, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defaultProvider } from "../src/_crypto.js";
import { AuditLog, type FsyncPolicy, fileSink } from "../src/audit.js";
import { machine } from "./harness.js";

const PER_TICK = 10;
const SECONDS = 2;
const WORKERS = 64;
const CHECKPOINT_EVERY = 100;

function makeSigner() {
  const { key } = defaultProvider.ed25519Generate();
  return { id: "bench-node", kid: "k1", publicKey: key.publicKey, sign: (m: Uint8Array) => defaultProvider.ed25519Sign(key, m) };
}

const ev = (i: number) => ({ event: "sent" as const, envelopeId: `e${i}`, from: "alice", to: "bob", tags: ["pii:email"], decision: "allow" as const });

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}
const f = (ms: number) => (ms < 1 ? ms.toFixed(3) : ms.toFixed(2));
const summary = (lat: number[]) =>
  lat.length === 0 ? "none" : `p50 ${f(pct(lat, 50))} ms, p99 ${f(pct(lat, 99))} ms, p99.9 ${f(pct(lat, 99.9))} ms, max ${f(Math.max(...lat))} ms`;

/**
 * Times every `FileHandle.sync()` and says whether one is running, so appends issued during an fsync can be told
 * apart from the others.
 */
const fsyncs = { running: 0, times: [] as number[] };
async function instrumentSync(extraMs: number): Promise<void> {
  const probe = await fsp.open(join(tmpdir(), `sealwire-probe-${process.pid}`), "w");
  const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
  await probe.close();
  await fsp.rm(join(tmpdir(), `sealwire-probe-${process.pid}`));
  const orig = proto.sync;
  proto.sync = async function (this: unknown) {
    fsyncs.running++;
    const t = performance.now();
    try {
      await orig.call(this);
      // A slow disk (a loaded cloud volume, an SD card, a spinning disk): the fsync returns `extraMs` later.
      if (extraMs > 0) await new Promise((r) => setTimeout(r, extraMs));
    } finally {
      fsyncs.times.push(performance.now() - t);
      fsyncs.running--;
    }
  };
}

async function openLoop(dir: string, fsync: FsyncPolicy): Promise<string> {
  const path = join(dir, `open-${fsync}-${process.hrtime.bigint()}.log`);
  const log = await AuditLog.open(fileSink(path, { fsync }), { signer: makeSigner(), checkpointEvery: CHECKPOINT_EVERY });
  const lat: number[] = [];
  const during: number[] = [];
  fsyncs.times = [];
  const pending: Promise<unknown>[] = [];
  const perTick = PER_TICK;
  let i = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < SECONDS * 1000) {
    for (let k = 0; k < perTick; k++) {
      const t = performance.now();
      const inSync = fsyncs.running > 0;
      pending.push(
        log.append(ev(i++)).then(() => {
          lat.push(performance.now() - t);
          if (inSync) during.push(performance.now() - t);
        }),
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  await log.close();
  await fsp.rm(path);
  const syncs = fsyncs.times;
  return (
    `open loop ${fsync.padEnd(10)} ${lat.length} appends in ${((performance.now() - t0) / 1000).toFixed(2)} s: ${summary(lat)}\n` +
    `    ${syncs.length} fsyncs: ${summary(syncs)}\n` +
    `    ${during.length} appends issued while an fsync ran: ${summary(during)}`
  );
}

async function closedLoop(dir: string, fsync: FsyncPolicy): Promise<string> {
  const path = join(dir, `closed-${fsync}-${process.hrtime.bigint()}.log`);
  const log = await AuditLog.open(fileSink(path, { fsync }), { signer: makeSigner(), checkpointEvery: CHECKPOINT_EVERY });
  const lat: number[] = [];
  let i = 0;
  const t0 = performance.now();
  const until = t0 + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: WORKERS }, async () => {
      while (performance.now() < until) {
        const t = performance.now();
        await log.append(ev(i++));
        lat.push(performance.now() - t);
      }
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  await log.close();
  await fsp.rm(path);
  return `closed loop ${fsync.padEnd(8)} ${WORKERS} workers: ${Math.round(lat.length / secs)} appends/s: ${summary(lat)}`;
}

async function bareFsync(dir: string): Promise<string> {
  const path = join(dir, `sync-${process.hrtime.bigint()}.bin`);
  const fh = await fsp.open(path, "a", 0o600);
  const chunk = Buffer.alloc(100 * 200, 0x61); // about 100 records
  const lat: number[] = [];
  for (let k = 0; k < 50; k++) {
    await fh.write(chunk);
    const t = performance.now();
    await fh.sync();
    lat.push(performance.now() - t);
  }
  await fh.close();
  await fsp.rm(path);
  return `bare fh.sync() after a 20 KB write: ${summary(lat)}`;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const d = args.indexOf("--fsync-delay-ms");
  const delay = d >= 0 ? Number(args.splice(d, 2)[1]) : 0;
  const dirs = args;
  const made: string[] = [];
  if (dirs.length === 0) {
    if (existsSync("/dev/shm")) made.push(mkdtempSync("/dev/shm/sealwire-audit-bench-"));
    made.push(mkdtempSync(join(tmpdir(), "sealwire-audit-bench-")));
  }
  console.log(machine());
  if (delay > 0) console.log(`every fsync made ${delay} ms slower (a slow disk)`);
  await instrumentSync(delay);
  try {
    for (const dir of [...dirs, ...made]) {
      console.log(`\n${dir}`);
      console.log(`  ${await bareFsync(dir)}`);
      for (const fsync of ["never", "checkpoint", "always"] as const) console.log(`  ${await openLoop(dir, fsync)}`);
      for (const fsync of ["never", "checkpoint", "always"] as const) console.log(`  ${await closedLoop(dir, fsync)}`);
    }
  } finally {
    for (const d of made) rmSync(d, { recursive: true, force: true });
  }
}

await main();
