/**
 * Issue 9, "new legitimate peers during a flood": the WebSocket listener's `maxConnections` and the Noise
 * listener's `maxHandshakes` evict the oldest unfinished socket / handshake instead of refusing a newcomer, and both
 * bound what one address may hold (`maxConnectionsPerAddress`, `maxHandshakesPerSource`) by evicting that address's
 * own oldest. Real sockets on loopback, with attackers spread over many source addresses (127.0.0.0/8 is all
 * loopback on Linux, bound through `localAddress`): a legitimate peer gets in within a bound while the caps are
 * full of stalled sockets, accepted connections and established channels survive, and every refusal reaches
 * `onRefusal` with its reason and source (also into a `RefusalCounter`, bounded under thousands of sources, and
 * through a callback that throws). Figures (time for a legitimate peer to get in) are printed.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/flood-eviction.test.ts
 * ```
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { utf8 } from "../src/_bytes.js";
import { generateIdentity } from "../src/identity.js";
import { RefusalCounter, type Refusal, type RefusalRecord } from "../src/refusal-counter.js";
import { transportSymbol, type Connection, type Listener, type Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { noise, type NoiseInit } from "../transports/noise/index.js";
import { webSocket, type WebSocketInit } from "../transports/websocket.js";
import { eventually, expectCode, rejectsCode, within } from "./transport.compliance.js";
import { clientFrame, sendUpgrade } from "./_ws.js";

const KiB = 1024;
/** How long a legitimate peer may take to get in while the caps are full (it takes a few ms on loopback). */
const LEGIT_BOUND_MS = 2_000;
const figures: Record<string, number | string> = {};

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await Promise.resolve(c()).catch(() => {});
});
afterAll(() => {
  console.log(`flood-eviction figures: ${JSON.stringify(figures)}`);
});

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/** What the Noise transport does: marks every dial/listen as carried by a secure channel. */
function secured(t: Transport): Transport {
  return {
    [transportSymbol]: true,
    kind: t.kind,
    maxFrameBytes: t.maxFrameBytes,
    listen: (addr, o) => t.listen(addr, { ...o, channelSecured: true }),
    dial: (addr, o) => t.dial(addr, { ...o, channelSecured: true }),
  };
}

function plain(init: WebSocketInit): Transport {
  return secured(webSocket({ highWaterMarkBytes: 32 * KiB, maxFrameBytes: 64 * KiB, ...init }));
}

const portOf = (addr: string): number => Number(new URL(addr).port);
const socketCount = (l: Listener): number => (l as unknown as { socketCount: number }).socketCount;
const inFlight = (l: Listener): number => (l as unknown as { handshakesInFlight: number }).handshakesInFlight;

/** A raw TCP connection from `localAddress` (any 127.x.y.z is loopback on Linux). */
function connectFrom(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect({ port, host: "127.0.0.1", localAddress }, () => {
      s.removeListener("error", reject);
      s.on("error", () => {});
      resolve(s);
    });
    s.once("error", reject);
    cleanups.push(() => s.destroy());
  });
}

/** Resolves when `s` has closed; reads (and discards) what arrives, so the peer's end is noticed. */
function closedSocket(s: Socket): Promise<void> {
  if (s.closed) return Promise.resolve();
  s.resume();
  return new Promise((r) => s.once("close", () => r()));
}

/** Sends an HTTP upgrade request from `localAddress` and returns the response head and the socket. */
async function upgradeFrom(
  port: number,
  localAddress: string,
  opts: { path?: string; version?: number } = {},
): Promise<{ socket: Socket; head: string }> {
  const socket = await connectFrom(port, localAddress);
  return { socket, head: await sendUpgrade(socket, port, opts) };
}

/** Accepts every connection of `l` into an array (the application taking them at once). */
function acceptAll(l: Listener): Connection[] {
  const accepted: Connection[] = [];
  void (async () => {
    try {
      for await (const c of l) accepted.push(c);
    } catch {
      /* the listener ended */
    }
  })();
  cleanups.push(async () => {
    for (const c of accepted) c.abort();
    await l.close();
  });
  return accepted;
}

/** Sends one frame each way over an accepted pair and checks it arrives: the connection still works. */
async function stillWorks(client: Connection, server: Connection, tag: string): Promise<void> {
  expect(client.isOpen && server.isOpen, `${tag} is open`).toBe(true);
  client.send(utf8(`${tag}->`));
  server.send(utf8(`${tag}<-`));
  const a = await within(server[Symbol.asyncIterator]().next(), `a frame at the server (${tag})`);
  const b = await within(client[Symbol.asyncIterator]().next(), `a frame at the client (${tag})`);
  expect(new TextDecoder().decode(a.value as Uint8Array)).toBe(`${tag}->`);
  expect(new TextDecoder().decode(b.value as Uint8Array)).toBe(`${tag}<-`);
}

// ---------------------------------------------------------------------------------------------------------------

describe("WebSocket listener: evict the oldest unfinished socket, never an accepted connection", () => {
  it("maxConnections 16: stalled sockets from 28 sources are evicted oldest first, a new peer gets in, accepted connections survive; only a full house of accepted connections refuses", async () => {
    const refusals: Refusal[] = [];
    const t = plain({ maxConnections: 16, handshakeTimeoutMs: 20_000, onRefusal: (r) => void refusals.push(r) });
    const l = await t.listen("ws://127.0.0.1:0");
    const port = portOf(l.addr);
    const accepted = acceptAll(l);
    // Four accepted connections first.
    const clients: Connection[] = [];
    for (let i = 0; i < 4; i++) {
      clients.push(await within(t.dial(l.addr), "dial"));
      await eventually(() => accepted.length === i + 1, "the connection to be accepted");
    }
    // 28 sockets that never say anything, each from its own address, one after the other.
    const stalled: Socket[] = [];
    for (let i = 0; i < 28; i++) stalled.push(await connectFrom(port, `127.0.1.${i + 1}`));
    await within(Promise.all(stalled.slice(0, 16).map(closedSocket)), "the 16 oldest stalled sockets to be evicted");
    await eventually(() => socketCount(l) === 16, "the listener to hold 16 sockets");
    await new Promise((r) => setTimeout(r, 50));
    expect(stalled.map((s) => s.closed)).toEqual([...Array(16).fill(true), ...Array(12).fill(false)]);
    expect(refusals).toEqual(Array.from({ length: 16 }, (_, i) => ({ reason: "ws_evicted", source: `127.0.1.${i + 1}` })));
    // A legitimate peer gets in at once: the oldest stalled socket makes room.
    const t0 = performance.now();
    const late = await within(t.dial(l.addr), "a new peer's dial", LEGIT_BOUND_MS);
    figures["ws: new peer's dial at maxConnections (ms)"] = Math.round((performance.now() - t0) * 10) / 10;
    await eventually(() => accepted.length === 5, "the new peer to be accepted");
    await within(closedSocket(stalled[16]!), "the oldest remaining stalled socket to be evicted");
    expect(refusals.at(-1)).toEqual({ reason: "ws_evicted", source: "127.0.1.17" });
    clients.push(late);
    for (let i = 0; i < clients.length; i++) await stillWorks(clients[i]!, accepted[i]!, `conn${i}`);
    // Fill every slot with accepted connections: each dial evicts one more stalled socket.
    for (let i = 0; i < 11; i++) clients.push(await within(t.dial(l.addr), "dial"));
    await within(Promise.all(stalled.map(closedSocket)), "every stalled socket to be evicted");
    await eventually(() => accepted.length === 16, "16 accepted connections");
    expect(refusals.filter((r) => r.reason === "ws_evicted").length).toBe(28);
    // Now, and only now, a newcomer is turned away, before any TLS or HTTP work.
    const extra = await connectFrom(port, "127.0.1.200");
    await within(closedSocket(extra), "the newcomer to be dropped");
    expect(refusals.at(-1)).toEqual({ reason: "ws_max_connections", source: "127.0.1.200" });
    await rejectsCode(t.dial(l.addr), "ERR_CONNECTION_REFUSED");
    expect(accepted.every((c) => c.isOpen)).toBe(true);
    // One accepted connection closes: room again.
    await clients[0]!.close();
    await eventually(() => socketCount(l) === 15, "the closed connection's slot to be released");
    const again = await within(t.dial(l.addr), "a dial once a slot is free");
    expect(again.isOpen).toBe(true);
  });

  it("maxConnectionsPerAddress 4: a fifth handshaking socket from one address evicts that address's own oldest, never another's; a client behind that address still gets in", async () => {
    const refusals: Refusal[] = [];
    const t = plain({ maxConnections: 64, maxConnectionsPerAddress: 4, handshakeTimeoutMs: 20_000, onRefusal: (r) => void refusals.push(r) });
    const l = await t.listen("ws://127.0.0.1:0");
    const port = portOf(l.addr);
    const accepted = acceptAll(l);
    const neighbours = [await connectFrom(port, "127.0.2.2"), await connectFrom(port, "127.0.2.2")];
    const attacker: Socket[] = [];
    for (let i = 0; i < 10; i++) attacker.push(await connectFrom(port, "127.0.2.1"));
    await within(Promise.all(attacker.slice(0, 6).map(closedSocket)), "the address's 6 oldest sockets to be evicted");
    await eventually(() => socketCount(l) === 6, "2 + 4 sockets");
    expect(attacker.map((s) => s.closed)).toEqual([...Array(6).fill(true), ...Array(4).fill(false)]);
    expect(neighbours.every((s) => !s.closed)).toBe(true);
    expect(refusals).toEqual(Array.from({ length: 6 }, () => ({ reason: "ws_per_address_evicted", source: "127.0.2.1" })));
    // An honest client behind the attacker's address (a NAT) still completes its upgrade.
    const t0 = performance.now();
    const { head } = await upgradeFrom(port, "127.0.2.1");
    figures["ws: upgrade behind a flooding address (ms)"] = Math.round((performance.now() - t0) * 10) / 10;
    expect(head).toMatch(/^HTTP\/1\.1 101/);
    await eventually(() => accepted.length === 1, "the honest client to be accepted");
    expect(accepted[0]!.remoteAddr).toMatch(/^127\.0\.2\.1:/);
  });

  it("reports each refusal with its reason and source: handshake timeout, malformed HTTP, bad upgrades, 429, 503, text and oversize frames, liveness, TLS failure", async () => {
    const refusals: Refusal[] = [];
    const onRefusal = (r: Refusal): void => void refusals.push(r);
    const nextRefusal = async (n: number, what: string): Promise<Refusal> => {
      await eventually(() => refusals.length >= n, what, 3_000);
      return refusals[n - 1]!;
    };
    const t = plain({ handshakeTimeoutMs: 300, maxConnectionsPerAddress: 1, backlog: 1, onRefusal });
    const l = await t.listen("ws://127.0.0.1:0");
    cleanups.push(() => l.close());
    const port = portOf(l.addr);
    // A silent socket: dropped at the handshake timeout.
    const silent = await connectFrom(port, "127.0.3.1");
    const t0 = performance.now();
    await within(closedSocket(silent), "the silent socket to be dropped");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    expect(await nextRefusal(1, "a timeout")).toEqual({ reason: "ws_handshake_timeout", source: "127.0.3.1" });
    // Slowloris: a request trickled byte by byte is dropped at the same absolute deadline.
    const slow = await connectFrom(port, "127.0.3.9");
    slow.write("GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    const trickle = setInterval(() => slow.writable && slow.write("a"), 20);
    await within(closedSocket(slow), "the trickler to be dropped");
    clearInterval(trickle);
    expect(await nextRefusal(2, "the slowloris timeout")).toEqual({ reason: "ws_handshake_timeout", source: "127.0.3.9" });
    // Not HTTP at all.
    const garbage = await connectFrom(port, "127.0.3.2");
    garbage.write("\x00\x01garbage\r\n\r\n");
    await within(closedSocket(garbage), "the garbage socket to be dropped");
    expect(await nextRefusal(3, "malformed HTTP")).toEqual({ reason: "ws_bad_request", source: "127.0.3.2" });
    // Upgrades: another path, and an invalid version (refused by `ws`).
    expect((await upgradeFrom(port, "127.0.3.3", { path: "/other" })).head).toMatch(/^HTTP\/1\.1 404/);
    expect(await nextRefusal(4, "a wrong path")).toEqual({ reason: "ws_bad_request", source: "127.0.3.3" });
    expect((await upgradeFrom(port, "127.0.3.3", { version: 99 })).head).toMatch(/^HTTP\/1\.1 400/);
    expect(await nextRefusal(5, "a bad version")).toEqual({ reason: "ws_bad_request", source: "127.0.3.3" });
    // Nobody accepts (backlog 1): a second upgrade from the same address is over maxConnectionsPerAddress (429);
    // one from another address finds the backlog full (503).
    const first = await upgradeFrom(port, "127.0.3.4");
    expect(first.head).toMatch(/^HTTP\/1\.1 101/);
    expect((await upgradeFrom(port, "127.0.3.4")).head).toMatch(/^HTTP\/1\.1 429/);
    expect(await nextRefusal(6, "429")).toEqual({ reason: "ws_per_address", source: "127.0.3.4" });
    expect((await upgradeFrom(port, "127.0.3.5")).head).toMatch(/^HTTP\/1\.1 503/);
    expect(await nextRefusal(7, "503")).toEqual({ reason: "ws_backlog", source: "127.0.3.5" });
    // Accepted connections that break the protocol, send an oversize frame, or stop answering pings.
    const it2 = l[Symbol.asyncIterator]();
    const c1 = (await it2.next()).value as Connection; // the one from 127.0.3.4
    first.socket.write(clientFrame(0x1, utf8("text")));
    expectCode(await within(c1.closed, "the text frame to abort"), "ERR_PROTOCOL");
    expect(await nextRefusal(8, "a text frame")).toEqual({ reason: "ws_malformed", source: "127.0.3.4" });
    const big = await upgradeFrom(port, "127.0.3.6");
    const c2 = (await it2.next()).value as Connection;
    big.socket.write(clientFrame(0x2, new Uint8Array(0), { declaredLength: 2 ** 40 }));
    expectCode(await within(c2.closed, "the oversize frame to abort"), "ERR_FRAME_TOO_LARGE");
    expect(await nextRefusal(9, "an oversize frame")).toEqual({ reason: "ws_oversize", source: "127.0.3.6" });
    const lt = plain({ pingIntervalMs: 40, pongTimeoutMs: 80, onRefusal });
    const ll = await lt.listen("ws://127.0.0.1:0");
    cleanups.push(() => ll.close());
    const mute = await upgradeFrom(portOf(ll.addr), "127.0.3.7");
    mute.socket.pause(); // reads nothing, so it answers no ping
    const c3 = (await ll[Symbol.asyncIterator]().next()).value as Connection;
    expectCode(await within(c3.closed, "the liveness timeout"), "ERR_TIMEOUT");
    expect(await nextRefusal(10, "a liveness timeout")).toEqual({ reason: "ws_liveness_timeout", source: "127.0.3.7" });
    // TLS: bytes that are not a TLS handshake.
    const tt = webSocket({ tls: { cert: tlsCert, key: tlsKey }, onRefusal });
    const tl = await tt.listen("wss://127.0.0.1:0");
    cleanups.push(() => tl.close());
    const notTls = await connectFrom(portOf(tl.addr), "127.0.3.8");
    notTls.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    await within(closedSocket(notTls), "the non-TLS socket to be dropped");
    expect(await nextRefusal(11, "a TLS failure")).toEqual({ reason: "ws_tls_failed", source: "127.0.3.8" });
    expect(refusals.length).toBe(11);
  });
});

// A self-signed certificate for the TLS case, made with the installed openssl (nothing committed).
const certDir = mkdtempSync(join(tmpdir(), "sealwire-flood-eviction-"));
let tlsCert: Buffer;
let tlsKey: Buffer;
beforeAll(() => {
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
    { cwd: certDir, stdio: ["ignore", "ignore", "pipe"] },
  );
  tlsCert = readFileSync(join(certDir, "c.pem"));
  tlsKey = readFileSync(join(certDir, "k.pem"));
});
afterAll(() => rmSync(certDir, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------------------------

/** A Noise hub over WebSocket on loopback, and a trusted client transport. */
async function noiseHub(options: Partial<NoiseInit>) {
  const hub = await generateIdentity("hub");
  const alice = await generateIdentity("alice");
  const hubTrust = new TrustStore();
  const aliceTrust = new TrustStore();
  hubTrust.add(alice.publicIdentity);
  aliceTrust.add(hub.publicIdentity);
  const refusals: Refusal[] = [];
  const server = noise({
    transport: webSocket({ handshakeTimeoutMs: 20_000 }),
    identity: hub,
    trust: hubTrust,
    handshakeTimeoutMs: 20_000,
    onRefusal: (r) => void refusals.push(r),
    ...options,
  });
  const listener = await server.listen("ws://127.0.0.1:0");
  const accepted = acceptAll(listener);
  const client = noise({ transport: webSocket(), identity: alice, trust: aliceTrust });
  const dial = async (): Promise<Connection> => {
    const c = await client.dial(listener.addr, { remotePeer: "hub", signal: AbortSignal.timeout(5_000) });
    cleanups.push(() => c.abort());
    return c;
  };
  cleanups.push(() => {
    hub.close();
    alice.close();
  });
  return { listener, port: portOf(listener.addr), accepted, refusals, dial };
}

/** An upgraded WebSocket from `src` that never sends a Noise message: a stalled handshake at the Noise listener. */
async function stalledHandshake(port: number, src: string): Promise<Socket> {
  const { socket, head } = await upgradeFrom(port, src);
  expect(head).toMatch(/^HTTP\/1\.1 101/);
  socket.resume();
  return socket;
}

describe("WebSocket listener: a connection rate per address, refused at accept", () => {
  it("connectionRatePerAddress 5: a burst of 10 from one address, the rest closed at accept (ws_rate_limited); other addresses unaffected; tokens come back; 0 turns it off", async () => {
    const refusals: Refusal[] = [];
    const t = plain({ connectionRatePerAddress: 5, onRefusal: (r) => void refusals.push(r) });
    const l = await t.listen("ws://127.0.0.1:0");
    acceptAll(l);
    const port = portOf(l.addr);
    const t0 = performance.now();
    const socks = await Promise.all(Array.from({ length: 30 }, () => connectFrom(port, "127.0.8.1")));
    const connectS = (performance.now() - t0) / 1000;
    const closedAtOnce = await Promise.all(socks.map((s) => Promise.race([closedSocket(s).then(() => 1), new Promise<number>((r) => setTimeout(() => r(0), 300))])));
    const limited = refusals.filter((r) => r.reason === "ws_rate_limited");
    // 10 tokens at first, plus what refilled (5/s) while the 30 sockets connected.
    expect(limited.length).toBeLessThanOrEqual(20);
    expect(limited.length).toBeGreaterThanOrEqual(20 - Math.ceil(connectS * 5));
    expect(new Set(limited.map((r) => r.source))).toEqual(new Set(["127.0.8.1"]));
    // Exactly the refused ones were closed (at accept); the admitted ones stay open.
    expect(closedAtOnce.reduce((a, b) => a + b, 0)).toBe(limited.length);
    // Another address is not affected, and a dialler bound to it (localAddress) gets in.
    const other = webSocket({ localAddress: "127.0.8.2" });
    const c = await secured(other).dial(l.addr);
    cleanups.push(() => c.abort());
    expect(c.isOpen).toBe(true);
    expect(refusals.filter((r) => r.reason === "ws_rate_limited" && r.source === "127.0.8.2")).toEqual([]);
    // Tokens come back at 5/s.
    await new Promise((r) => setTimeout(r, 450));
    const before = refusals.length;
    await connectFrom(port, "127.0.8.1");
    await connectFrom(port, "127.0.8.1");
    await new Promise((r) => setTimeout(r, 50));
    expect(refusals.slice(before).filter((r) => r.reason === "ws_rate_limited")).toEqual([]);
    // 0: off.
    const off = await plain({ connectionRatePerAddress: 0, onRefusal: (r) => void refusals.push(r) }).listen("ws://127.0.0.1:0");
    acceptAll(off);
    const n = refusals.length;
    await Promise.all(Array.from({ length: 40 }, () => connectFrom(portOf(off.addr), "127.0.8.3")));
    await new Promise((r) => setTimeout(r, 50));
    expect(refusals.slice(n).filter((r) => r.reason === "ws_rate_limited")).toEqual([]);
    const thrown = (fn: () => unknown): unknown => {
      try {
        fn();
      } catch (e) {
        return e;
      }
      return undefined;
    };
    expectCode(thrown(() => webSocket({ connectionRatePerAddress: -1 })), "ERR_INVALID_ARGUMENT");
    expectCode(thrown(() => webSocket({ localAddress: "not-an-ip" })), "ERR_INVALID_ARGUMENT");
  });
});

describe("Noise listener: evict the oldest unfinished handshake, never an established channel", () => {
  it("maxHandshakes 8: stalled handshakes from 20 sources are evicted oldest first (before any cryptography), a new peer completes its handshake, established channels survive", async () => {
    const env = await noiseHub({ maxHandshakes: 8 });
    const sessions = [await env.dial(), await env.dial()];
    await eventually(() => env.accepted.length === 2, "two established channels");
    const stalled: Socket[] = [];
    for (let i = 0; i < 20; i++) {
      stalled.push(await stalledHandshake(env.port, `127.0.4.${i + 1}`));
      await eventually(() => inFlight(env.listener) === Math.min(8, i + 1), "the handshake to start");
    }
    await within(Promise.all(stalled.slice(0, 12).map(closedSocket)), "the 12 oldest handshakes to be evicted");
    expect(stalled.map((s) => s.closed)).toEqual([...Array(12).fill(true), ...Array(8).fill(false)]);
    expect(inFlight(env.listener)).toBe(8);
    expect(env.refusals).toEqual(Array.from({ length: 12 }, (_, i) => ({ reason: "noise_handshake_evicted", source: `127.0.4.${i + 1}` })));
    // A legitimate peer: its handshake (IK, one round trip plus confirmation) completes while the cap is full.
    const t0 = performance.now();
    const late = await within(env.dial(), "a new peer's Noise dial", LEGIT_BOUND_MS);
    figures["noise: new peer's dial at maxHandshakes (ms)"] = Math.round((performance.now() - t0) * 10) / 10;
    expect(late.remotePeer).toBe("hub");
    await eventually(() => env.accepted.length === 3, "the new channel to be accepted");
    expect(env.accepted[2]!.remotePeer).toBe("alice");
    await within(closedSocket(stalled[12]!), "the oldest remaining stalled handshake to be evicted");
    expect(env.refusals.at(-1)).toEqual({ reason: "noise_handshake_evicted", source: "127.0.4.13" });
    for (const [i, c] of [...sessions, late].entries()) await stillWorks(c, env.accepted[i]!, `session${i}`);
  });

  it("maxHandshakesPerSource 3: one address keeps at most 3 handshakes (its own oldest evicted), other addresses keep theirs; the default is 8", async () => {
    const env = await noiseHub({ maxHandshakes: 32, maxHandshakesPerSource: 3 });
    const other = [await stalledHandshake(env.port, "127.0.5.2"), await stalledHandshake(env.port, "127.0.5.2")];
    await eventually(() => inFlight(env.listener) === 2, "two handshakes from 127.0.5.2");
    const flood: Socket[] = [];
    for (let i = 0; i < 10; i++) {
      flood.push(await stalledHandshake(env.port, "127.0.5.1"));
      await eventually(() => env.refusals.length === Math.max(0, i - 2) && inFlight(env.listener) === 2 + Math.min(3, i + 1), "the handshake to be admitted");
    }
    await within(Promise.all(flood.slice(0, 7).map(closedSocket)), "the address's 7 oldest handshakes to be evicted");
    expect(flood.map((s) => s.closed)).toEqual([...Array(7).fill(true), ...Array(3).fill(false)]);
    expect(other.every((s) => !s.closed)).toBe(true);
    expect(inFlight(env.listener)).toBe(5);
    expect(env.refusals).toEqual(Array.from({ length: 7 }, () => ({ reason: "noise_per_source", source: "127.0.5.1" })));
    // A legitimate peer (from 127.0.0.1) is not held back by either address.
    expect((await within(env.dial(), "a new peer's dial", LEGIT_BOUND_MS)).remotePeer).toBe("hub");
    // Default: 8 per source.
    const d = await noiseHub({ maxHandshakes: 32 });
    for (let i = 0; i < 10; i++) await stalledHandshake(d.port, "127.0.5.3");
    await eventually(() => d.refusals.length === 2, "two evictions over the default of 8");
    expect(inFlight(d.listener)).toBe(8);
    expect(d.refusals).toEqual([
      { reason: "noise_per_source", source: "127.0.5.3" },
      { reason: "noise_per_source", source: "127.0.5.3" },
    ]);
  });

  it("under a sustained flood of stalled handshakes from 16 sources (defaults: 64 in flight, 8 per source), every new peer's handshake completes", async () => {
    const env = await noiseHub({});
    let stop = false;
    let opened = 0;
    const attack = (async () => {
      for (let k = 0; !stop; k += 8) {
        await Promise.all(
          Array.from({ length: 8 }, (_, j) =>
            stalledHandshake(env.port, `127.0.7.${((k + j) % 16) + 1}`).then(
              () => void opened++,
              () => {},
            ),
          ),
        );
      }
    })();
    await eventually(() => inFlight(env.listener) === 64, "the flood to fill every handshake slot");
    const dials: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) {
      const t = performance.now();
      const c = await within(env.dial(), `new peer ${i} during the flood`, LEGIT_BOUND_MS);
      dials.push(Math.round((performance.now() - t) * 10) / 10);
      c.abort();
      await new Promise((r) => setTimeout(r, 100));
    }
    const evictions = (): number => env.refusals.filter((r) => r.reason === "noise_handshake_evicted" || r.reason === "noise_per_source").length;
    await eventually(() => evictions() > 64, "the flood to turn every slot over at least once");
    const seconds = (performance.now() - t0) / 1000;
    stop = true;
    await attack;
    const evicted = evictions();
    figures["noise flood: stalled handshakes/s"] = Math.round(opened / seconds);
    figures["noise flood: evictions"] = evicted;
    figures["noise flood: new peers' dials (ms)"] = dials.join(", ");
    expect(evicted, "the flood really held the cap").toBeGreaterThan(64);
    expect(env.accepted.length).toBe(5);
    expect(inFlight(env.listener)).toBeLessThanOrEqual(64);
  });

  it("reports failed and timed-out handshakes with their source; a throwing onRefusal changes nothing", async () => {
    const seen: Refusal[] = [];
    const env = await noiseHub({
      handshakeTimeoutMs: 300,
      maxHandshakes: 2,
      onRefusal: (r) => {
        seen.push(r);
        throw new Error("a broken audit hook");
      },
    });
    // Garbage instead of a first handshake message.
    const { socket } = await upgradeFrom(env.port, "127.0.6.1");
    socket.resume();
    socket.write(clientFrame(0x2, new Uint8Array(40).fill(7)));
    await within(closedSocket(socket), "the garbage handshake to be dropped");
    await eventually(() => seen.length === 1, "the failure to be reported");
    expect(seen[0]).toEqual({ reason: "noise_handshake_failed", source: "127.0.6.1" });
    // Silent: dropped at the handshake timeout.
    const t0 = performance.now();
    const silent = await stalledHandshake(env.port, "127.0.6.2");
    await within(closedSocket(silent), "the silent handshake to time out");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    await eventually(() => seen.length === 2, "the timeout to be reported");
    expect(seen[1]).toEqual({ reason: "noise_handshake_timeout", source: "127.0.6.2" });
    // Evictions through the throwing hook, then a legitimate peer: the listener carries on.
    for (const src of ["127.0.6.3", "127.0.6.4", "127.0.6.5"]) await stalledHandshake(env.port, src);
    await eventually(() => seen.length === 3, "an eviction");
    expect(seen[2]).toEqual({ reason: "noise_handshake_evicted", source: "127.0.6.3" });
    const c = await within(env.dial(), "a dial through a throwing hook");
    await eventually(() => env.accepted.length === 1, "the channel to be accepted");
    await stillWorks(c, env.accepted[0]!, "after-throws");
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe("hostile: thousands of distinct sources", () => {
  it("2,000 stalled sockets from 2,000 addresses against maxConnections 16: the listener never holds more than 16, a new peer gets in, and a RefusalCounter behind a throwing hook records bounded, exact totals", async () => {
    const flushed: RefusalRecord[][] = [];
    const counter = new RefusalCounter({ onFlush: (r) => void flushed.push(r), windowMs: 600_000, maxKeys: 64 });
    cleanups.push(() => counter.close());
    let calls = 0;
    const t = plain({
      maxConnections: 16,
      handshakeTimeoutMs: 20_000,
      onRefusal: (r) => {
        calls++;
        counter.record(r);
        throw new Error("a hook that throws on every call");
      },
    });
    const l = await t.listen("ws://127.0.0.1:0");
    const port = portOf(l.addr);
    const accepted = acceptAll(l);
    const N = 2_000;
    const BATCH = 100;
    let peak = 0;
    const t0 = performance.now();
    for (let b = 0; b < N; b += BATCH) {
      const batch = await Promise.all(
        Array.from({ length: BATCH }, (_, j) => {
          const i = b + j;
          return connectFrom(port, `127.10.${Math.floor(i / 250) + 1}.${(i % 250) + 1}`);
        }),
      );
      peak = Math.max(peak, socketCount(l));
      // Evicted sockets are closed by the listener; the rest of this batch is closed by us once the next arrives.
      await new Promise((r) => setTimeout(r, 5));
      peak = Math.max(peak, socketCount(l));
      expect(socketCount(l)).toBeLessThanOrEqual(16);
      void batch;
    }
    figures["hostile: 2,000 stalled sockets, wall time (ms)"] = Math.round(performance.now() - t0);
    const t1 = performance.now();
    const legit = await within(t.dial(l.addr), "a new peer's dial after 2,000 stalled sockets", LEGIT_BOUND_MS);
    figures["hostile: new peer's dial after 2,000 sources (ms)"] = Math.round((performance.now() - t1) * 10) / 10;
    await eventually(() => accepted.length === 1, "the new peer to be accepted");
    await stillWorks(legit, accepted[0]!, "legit");
    expect(peak).toBeLessThanOrEqual(16);
    counter.close();
    const records = flushed.flat();
    const total = records.reduce((a, r) => a + r.count, 0);
    // Every socket beyond the 16 slots evicted an older one, and the legitimate dial one more.
    expect(total).toBe(calls);
    expect(records.filter((r) => r.reason === "ws_evicted").reduce((a, r) => a + r.count, 0)).toBe(N - 16 + 1);
    expect(records.length).toBeLessThanOrEqual(64 + 1);
    expect(records.find((r) => r.source === "*")?.count).toBe(N - 16 + 1 - 64);
    for (const r of records) expect(r.source).toMatch(/^(?:\*|[A-Za-z0-9.:[\]_-]{1,64})$/);
  });
});
