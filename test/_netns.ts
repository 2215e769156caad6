/**
 * Helpers for tests that need real processes on real (virtual) wires: two Linux network namespaces joined by a
 * veth pair, processes started inside them, a `tcpdump` capture on the veth, and a small pcap reader to prove
 * what did — and did not — cross the wire. Also what the process tests share: how to run the CLI from source
 * ({@link CLI_ARGV}) and {@link waitLine}.
 *
 * Everything is named `swns<owner pid>…`, so a crashed run's leftovers can be found and removed by the next run
 * without touching those of a run still in progress (a namespace is removed only when its owner process is gone).
 * Every process started inside a namespace runs under `timeout`, so nothing outlives its test by more than a
 * bounded time even if the test runner itself dies; teardown kills whatever still runs in the namespaces
 * (`ip netns pids`) before deleting them, which also deletes the veth pair.
 *
 * @module
 * @example
 * ```ts
 * const why = netnsUnavailable(); if (why) ctx.skip(why);
 * const net = createNetnsPair();
 * try {
 *   const cap = await startCapture(net.nsA, net.vethA, "/tmp/x.pcap");
 *   const p = net.spawn(net.nsB, ["node", "client.js", net.addrA]);
 *   await cap.stop();
 *   const s = tcpSummary(parsePcap(readFileSync("/tmp/x.pcap")), 7700);
 * } finally { net.teardown(); }
 * ```
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { Buffer } from "node:buffer";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Proc } from "../examples/_processes.js";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** The CLI's source entry point. */
export const CLI = join(ROOT, "bin", "sealwire.ts");
/** tsx's loader, resolved here: the child's working directory has no node_modules. */
export const TSX = import.meta.resolve("tsx");
/** `node --import tsx bin/sealwire.ts`: the argv prefix that runs the CLI from source. */
export const CLI_ARGV: readonly string[] = [process.execPath, "--import", TSX, CLI];

/**
 * Waits for an output line of `p` matching `re` (returns its first group, or the line), failing at once — with
 * the process's output — if the process exits first instead of after the full timeout.
 */
export async function waitLine(p: Proc, re: RegExp, timeoutMs = 30_000): Promise<string> {
  return Promise.race([
    p.waitFor(re, timeoutMs),
    p.exited.then(async (code) => {
      await new Promise((r) => setTimeout(r, 50)); // the last output may trail the exit event
      const hit = p.lines.map((l) => re.exec(l)).find(Boolean);
      if (hit) return hit[1] ?? hit[0];
      throw new Error(`${p.name} exited (${code}) before printing ${re}:\n${p.lines.join("\n")}`);
    }),
  ]);
}

/** Prefix of every namespace and veth these helpers create. */
export const PREFIX = "swns";

function run(cmd: string, args: string[], timeoutMs = 10_000): { ok: boolean; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: timeoutMs });
  return { ok: r.status === 0, out: r.stdout ?? "", err: (r.stderr ?? "") + (r.error ? String(r.error.message) : "") };
}

function must(cmd: string, args: string[]): string {
  const r = run(cmd, args);
  if (!r.ok) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.err.trim().slice(0, 300)}`);
  return r.out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Kills every process inside namespace `ns` (they were all started by these helpers) and deletes it. */
function removeNamespace(ns: string): void {
  for (let round = 0; round < 20; round++) {
    const pids = run("ip", ["netns", "pids", ns]).out.split(/\s+/).filter(Boolean).map(Number);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    spawnSync("sleep", ["0.05"]);
  }
  run("ip", ["netns", "del", ns]);
}

/**
 * Removes namespaces left by a previous run that crashed: names `swns<pid>…` whose owner pid is no longer alive.
 * Returns the names removed.
 */
export function cleanupStale(): string[] {
  const removed: string[] = [];
  const names = run("ip", ["netns", "list"]).out.split("\n").map((l) => l.split(/\s+/)[0] ?? "");
  for (const ns of names) {
    const m = new RegExp(`^${PREFIX}(\\d+)[ab]$`).exec(ns);
    if (!m) continue;
    if (Number(m[1]) !== process.pid && alive(Number(m[1]))) continue; // another run still uses it
    removeNamespace(ns);
    removed.push(ns);
  }
  return removed;
}

/**
 * Why namespaces cannot be used here, or `undefined` if they can: needs root, `ip` (iproute2) with permission to
 * create a namespace, and `tcpdump`. Probes by creating and deleting a namespace.
 */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== "linux") return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return "not root: creating network namespaces and capturing with tcpdump need root (CI runs as root)";
  if (!run("ip", ["-V"]).ok) return "iproute2 (`ip`) is not installed";
  if (!run("tcpdump", ["--version"]).ok) return "tcpdump is not installed (apt-get install tcpdump; .ci/run does)";
  if (!run("timeout", ["--version"]).ok) return "coreutils `timeout` is missing";
  const probe = `${PREFIX}${process.pid}a`;
  const r = run("ip", ["netns", "add", probe]);
  if (!r.ok) return `\`ip netns add\` is not permitted here: ${r.err.trim().slice(0, 200)}`;
  run("ip", ["netns", "del", probe]);
  return undefined;
}

/** Two namespaces joined by a veth pair with a private /30 between them. */
export interface NetnsPair {
  readonly nsA: string;
  readonly nsB: string;
  readonly vethA: string;
  readonly vethB: string;
  /** Address of `vethA` in `nsA` (no prefix length). */
  readonly addrA: string;
  readonly addrB: string;
  /**
   * Starts `argv` inside `ns` under `timeout -k 2 <limitS>` (so it cannot outlive a crashed test run by long).
   * `stdio` defaults to pipes for stdout and stderr.
   */
  spawn(ns: string, argv: readonly string[], options?: SpawnOptions & { limitS?: number }): ChildProcess;
  /** Kills everything still running in both namespaces and deletes them (and the veth pair). Idempotent. */
  teardown(): void;
}

/**
 * Creates `swns<pid>a` and `swns<pid>b`, a veth pair `swns<pid>va` ↔ `swns<pid>vb` made directly inside them (it
 * never exists in the host's namespace), addresses `10.231.77.1/30` and `.2/30`, links and loopbacks up. The
 * /30 exists only between the two namespaces: neither has a route anywhere else.
 */
export function createNetnsPair(): NetnsPair {
  const nsA = `${PREFIX}${process.pid}a`;
  const nsB = `${PREFIX}${process.pid}b`;
  const vethA = `${PREFIX}${process.pid}va`.slice(0, 15);
  const vethB = `${PREFIX}${process.pid}vb`.slice(0, 15);
  if (vethA === vethB) throw new Error("pid too long for interface names");
  const addrA = "10.231.77.1";
  const addrB = "10.231.77.2";
  let down = false;
  const teardown = () => {
    if (down) return;
    down = true;
    removeNamespace(nsA);
    removeNamespace(nsB);
  };
  try {
    must("ip", ["netns", "add", nsA]);
    must("ip", ["netns", "add", nsB]);
    must("ip", ["link", "add", vethA, "netns", nsA, "type", "veth", "peer", "name", vethB, "netns", nsB]);
    must("ip", ["-n", nsA, "addr", "add", `${addrA}/30`, "dev", vethA]);
    must("ip", ["-n", nsB, "addr", "add", `${addrB}/30`, "dev", vethB]);
    for (const [ns, dev] of [[nsA, vethA], [nsB, vethB]] as const) {
      must("ip", ["-n", ns, "link", "set", "lo", "up"]);
      must("ip", ["-n", ns, "link", "set", dev, "up"]);
    }
  } catch (e) {
    teardown();
    throw e;
  }
  return {
    nsA,
    nsB,
    vethA,
    vethB,
    addrA,
    addrB,
    spawn(ns, argv, options = {}) {
      const { limitS = 90, ...rest } = options;
      return spawn("ip", ["netns", "exec", ns, "timeout", "-k", "2", String(limitS), ...argv], { stdio: ["ignore", "pipe", "pipe"], ...rest });
    },
    teardown,
  };
}

/** A running `tcpdump -w`. */
export interface Capture {
  /** tcpdump's stderr so far (its "listening on …" and "N packets captured" lines). */
  readonly log: string[];
  /** Stops the capture (SIGINT: tcpdump flushes and writes its counts) and waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Starts `tcpdump --immediate-mode -i <iface> -n -s 0 -U -c <maxPackets> -w <file>` inside `ns` and resolves
 * once it listens: full packets, handed to tcpdump as they arrive (without `--immediate-mode`, TPACKET_V3 holds
 * them in blocks for up to a second, and a stop can lose that last block) and written packet by packet; at most
 * `maxPackets`, at most `limitS` seconds. To be sure the capture covers a period, send a marker after it and
 * wait until the file holds it ({@link waitForInFile}) before stopping.
 */
export async function startCapture(net: NetnsPair, ns: string, iface: string, file: string, opts: { maxPackets?: number; limitS?: number } = {}): Promise<Capture> {
  const child = net.spawn(ns, ["tcpdump", "--immediate-mode", "-i", iface, "-n", "-s", "0", "-U", "-c", String(opts.maxPackets ?? 50_000), "-w", file], {
    limitS: opts.limitS ?? 60,
  });
  const log: string[] = [];
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`tcpdump did not start: ${log.join(" ")}`)), 10_000);
    child.stderr!.on("data", (d: Buffer) => {
      log.push(...d.toString("utf8").split("\n").filter(Boolean));
      if (log.some((l) => l.includes("listening on"))) {
        clearTimeout(t);
        resolve();
      }
    });
    child.on("exit", () => {
      clearTimeout(t);
      reject(new Error(`tcpdump exited: ${log.join(" ")}`));
    });
  });
  return {
    log,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT"); // `timeout` passes it on
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    },
  };
}

/** Polls `file` until it contains `needle` (true) or `timeoutMs` passes (false). */
export async function waitForInFile(file: string, needle: Uint8Array, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (readFileSync(file).includes(Buffer.from(needle.buffer, needle.byteOffset, needle.byteLength))) return true;
    } catch {
      /* not written yet */
    }
    if (Date.now() >= end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One captured packet. */
export interface PcapPacket {
  /** Bytes captured. */
  caplen: number;
  /** Bytes on the wire (more than `caplen` means the capture cut the packet short). */
  origlen: number;
  data: Uint8Array;
}

/** Reads a classic pcap file (either byte order, µs or ns timestamps). Throws on anything else. */
export function parsePcap(buf: Uint8Array): { linkType: number; packets: PcapPacket[] } {
  if (buf.length < 24) throw new Error(`not a pcap file: ${buf.length} bytes`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = dv.getUint32(0, true);
  let le: boolean;
  if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true;
  else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false;
  else throw new Error(`not a pcap file (magic ${magic.toString(16)})`);
  const linkType = dv.getUint32(20, le) & 0x0fffffff;
  const packets: PcapPacket[] = [];
  let off = 24;
  while (off + 16 <= buf.length) {
    const caplen = dv.getUint32(off + 8, le);
    const origlen = dv.getUint32(off + 12, le);
    if (off + 16 + caplen > buf.length) break; // a record cut by an unclean stop
    packets.push({ caplen, origlen, data: buf.subarray(off + 16, off + 16 + caplen) });
    off += 16 + caplen;
  }
  return { linkType, packets };
}

/** One TCP segment from an Ethernet/IPv4 capture. */
export interface TcpSegment {
  src: string;
  dst: string;
  sport: number;
  dport: number;
  payload: Uint8Array;
}

/** The IPv4 TCP segments of an Ethernet (link type 1) capture; other packets are skipped. */
export function tcpSegments(pcap: { linkType: number; packets: PcapPacket[] }): TcpSegment[] {
  if (pcap.linkType !== 1) throw new Error(`expected an Ethernet capture, got link type ${pcap.linkType}`);
  const out: TcpSegment[] = [];
  for (const { data } of pcap.packets) {
    if (data.length < 14 + 20) continue;
    const ethType = (data[12]! << 8) | data[13]!;
    if (ethType !== 0x0800) continue;
    const ip = data.subarray(14);
    const ihl = (ip[0]! & 0x0f) * 4;
    if (ip[0]! >> 4 !== 4 || ihl < 20 || ip[9] !== 6) continue;
    const total = Math.min((ip[2]! << 8) | ip[3]!, ip.length);
    const tcp = ip.subarray(ihl, total);
    if (tcp.length < 20) continue;
    const doff = (tcp[12]! >> 4) * 4;
    const dot = (b: Uint8Array) => `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
    out.push({
      src: dot(ip.subarray(12, 16)),
      dst: dot(ip.subarray(16, 20)),
      sport: (tcp[0]! << 8) | tcp[1]!,
      dport: (tcp[2]! << 8) | tcp[3]!,
      payload: tcp.subarray(Math.min(doff, tcp.length)),
    });
  }
  return out;
}

/**
 * The byte strings a leaked `canary` could appear as: UTF-8, UTF-16 (LE and BE), hex, and base64/base64url of
 * its UTF-8 and UTF-16LE bytes at each of the three alignments (only the characters fixed by the canary alone,
 * so a match does not depend on the bytes around it). The canary should be ASCII and at least 16 characters.
 */
export function canaryForms(canary: string): { form: string; bytes: Buffer }[] {
  const forms: { form: string; bytes: Buffer }[] = [];
  const utf8 = Buffer.from(canary, "utf8");
  const utf16le = Buffer.from(canary, "utf16le");
  const utf16be = Buffer.from(utf16le).swap16();
  forms.push({ form: "utf-8", bytes: utf8 }, { form: "utf-16le", bytes: utf16le }, { form: "utf-16be", bytes: utf16be });
  forms.push({ form: "hex", bytes: Buffer.from(utf8.toString("hex")) }, { form: "HEX", bytes: Buffer.from(utf8.toString("hex").toUpperCase()) });
  for (const [name, raw] of [["utf-8", utf8], ["utf-16le", utf16le]] as const) {
    for (let k = 0; k < 3; k++) {
      const start = Math.ceil((8 * k) / 6);
      const end = Math.floor((8 * (k + raw.length)) / 6);
      for (const enc of ["base64", "base64url"] as const) {
        const text = Buffer.concat([Buffer.alloc(k), raw]).toString(enc).slice(start, end);
        forms.push({ form: `${enc}(${name})@${k}`, bytes: Buffer.from(text) });
      }
    }
  }
  return forms;
}

/** Which of `forms` occur anywhere in `haystack`. */
export function findForms(haystack: Uint8Array, forms: { form: string; bytes: Buffer }[]): string[] {
  const h = Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength);
  return forms.filter((f) => h.includes(f.bytes)).map((f) => f.form);
}
