/**
 * Noise protocol module throughput, for each crypto provider, each figure beside its ceiling measured in the
 * same run (samples interleaved, medians):
 *
 * - XX and IK handshakes per second, both parties in one process (`Noise_{XX,IK}_25519_ChaChaPoly_SHA256`, empty
 *   payloads, `split()` included). Ceiling: the very same primitive calls made bare (ephemeral key generation,
 *   imports of the received ephemerals, the DHs, the HKDF HMACs, the MixHash hashes, the handshake AEAD calls),
 *   without any Noise logic.
 * - Transport MB/s through `CipherState` (encrypt then decrypt, empty AD) at 1 KiB and at "64 KiB", i.e. the
 *   largest Noise transport message: 65519 plaintext bytes, 65535 on the wire (§3). Ceiling: the provider's bare
 *   `aeadSeal` + `aeadOpen` on the same sizes. MB = 10^6 plaintext bytes.
 * - The secure-channel transport, once, with the default provider: application frames per second at 1 KiB
 *   through `noise(memory())` (one established channel; each operation sends a burst of 32 frames and reads
 *   them back on the other end, so encryption, framing, decryption and the memory queue are all in), beside the
 *   very same bursts over `memory()` alone on the same network; and beside its crypto ceiling, the same frames
 *   (1 header byte + 1 KiB) through a bare `CipherState` encrypt + decrypt.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source bench/noise.ts            # prints the rows
 * npx tsx --conditions=source bench/noise.ts --quick
 * ```
 * ```ts
 * import { benchNoise } from "./noise.js";
 * rows.push(...(await benchNoise({ quick })));
 * ```
 */
import { pathToFileURL } from "node:url";
import { nativeProvider, nobleProvider, type CryptoProvider } from "../src/_crypto.js";
import { generateIdentity } from "../src/identity.js";
import type { Connection, Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory } from "../transports/memory.js";
import { CipherState, HandshakeState, MAX_PLAINTEXT_BYTES, noise } from "../transports/noise/index.js";
import { machine, measurePair, printRows, row, type Result, type Row } from "./harness.js";

/** Options for {@link benchNoise}. */
export interface NoiseBenchOptions {
  /** Fewer, smaller samples (for tests and CI). @default false */
  quick?: boolean;
  /** Providers to measure. @default [nativeProvider, nobleProvider] */
  providers?: readonly CryptoProvider[];
  /** Also measure the secure-channel transport (frames/s over noise(memory()) beside memory()). @default true */
  transport?: boolean;
}

const EMPTY = new Uint8Array(0);

/** Primitive calls per handshake (both parties), counted from the token sequences (see module docs). */
const SHAPE = {
  // XX: -> e | <- e, ee, s, es | -> s, se. MixKey: 3 per side; Split: 3 HMACs per side.
  XX: { dh: 6, hmac: 2 * (3 * 3 + 3), hash: 2 * 8, aead: 8 },
  // IK: <- s ... | -> e, es, s, ss | <- e, ee, se. MixKey: 4 per side.
  IK: { dh: 8, hmac: 2 * (4 * 3 + 3), hash: 2 * 7, aead: 6 },
} as const;

/** Measures the Noise module; returns rows for `bench/index.ts` (see the module docs for what each row means). */
export async function benchNoise(options: NoiseBenchOptions = {}): Promise<Row[]> {
  const rows: Row[] = [];
  const quick = options.quick ?? false;
  for (const p of options.providers ?? [nativeProvider, nobleProvider]) {
    const native = p.name === "native";
    const samples = quick ? 3 : 7;
    const hsBatch = native ? (quick ? 50 : 300) : quick ? 3 : 15;
    const sI = p.x25519Generate();
    const sR = p.x25519Generate();
    const sRPub = p.x25519Public(sR.publicKey);
    const k32 = p.randomBytes(32);
    const h32 = p.randomBytes(32);
    const nonce = new Uint8Array(12);
    const pubs = Array.from({ length: 256 }, () => p.x25519Generate().publicKey);

    for (const pattern of ["XX", "IK"] as const) {
      const protocolName = `Noise_${pattern}_25519_ChaChaPoly_SHA256`;
      const rs = pattern === "IK" ? sR.publicKey : undefined;
      const handshake = () => {
        const i = HandshakeState.initialize({ protocolName, initiator: true, s: sI, rs, provider: p });
        const r = HandshakeState.initialize({ protocolName, initiator: false, s: sR, provider: p });
        r.readMessage(i.writeMessage(EMPTY));
        i.readMessage(r.writeMessage(EMPTY));
        if (pattern === "XX") r.readMessage(i.writeMessage(EMPTY));
        for (const c of [...i.split(), ...r.split()]) c.destroy();
      };
      const shape = SHAPE[pattern];
      const bare = (n: number) => {
        for (let k = 0; k < 2; k++) {
          p.x25519Generate().destroy();
          p.x25519Public(pubs[(2 * n + k) & 255]!, false);
        }
        for (let k = 0; k < shape.dh; k++) p.x25519(sI, sRPub);
        for (let k = 0; k < shape.hmac; k++) p.hmac("sha256", k32, h32);
        for (let k = 0; k < shape.hash; k++) p.hash("sha256", h32, k32);
        for (let k = 0; k < shape.aead / 2; k++) p.aeadOpen(k32, nonce, h32, p.aeadSeal(k32, nonce, h32, k32));
      };
      const [a, b] = await measurePair([`${pattern} handshake`, handshake], ["same primitives, bare", bare], {
        batch: hsBatch,
        samples,
      });
      const target = native ? (pattern === "XX" ? "≥ 2,900/s" : undefined) : undefined;
      rows.push(row(`noise ${p.name}`, `${pattern} handshakes (both sides)`, a, b, "hs/s", target));
    }

    for (const [label, size, target] of [
      ["1 KiB", 1024, "≥ 280 MB/s"],
      ["64 KiB (65519 B)", MAX_PLAINTEXT_BYTES, "≥ 850 MB/s"],
    ] as const) {
      const key = p.randomBytes(32);
      const tx = new CipherState(key, p);
      const rx = new CipherState(key, p);
      const pt = p.randomBytes(size);
      const ct = p.aeadSeal(key, nonce, EMPTY, pt);
      const batch = Math.max(2, Math.round((native ? (quick ? 4e6 : 3e7) : quick ? 3e5 : 2e6) / size));
      const [a, b] = await measurePair(
        ["CipherState enc+dec", () => rx.decryptWithAd(EMPTY, tx.encryptWithAd(EMPTY, pt))],
        ["aeadSeal + aeadOpen, bare", () => (p.aeadSeal(key, nonce, EMPTY, pt), p.aeadOpen(key, nonce, EMPTY, ct))],
        { batch, samples },
      );
      const mb = (r: Result): Result => ({ ...r, median: (r.median * size) / 1e6, samples: r.samples.map((s) => (s * size) / 1e6) });
      rows.push(row(`noise ${p.name}`, `transport ${label}`, mb(a), mb(b), "MB/s", native ? target : undefined));
      tx.destroy();
      rx.destroy();
    }
    sI.destroy();
    sR.destroy();
  }
  if (options.transport ?? true) rows.push(...(await benchSecureTransport(quick)));
  return rows;
}

/** Frames per burst in {@link benchSecureTransport}. */
const BURST = 32;

/** 1 KiB frames/s through noise(memory()) beside memory() alone, and beside bare CipherState enc+dec. */
async function benchSecureTransport(quick: boolean): Promise<Row[]> {
  const net = memory();
  const [alice, bob] = await Promise.all([generateIdentity("bench-alice"), generateIdentity("bench-bob")]);
  const trust = new TrustStore();
  trust.add(alice.publicIdentity);
  trust.add(bob.publicIdentity);
  const pair = async (dialer: Transport, listener: Transport, addr: string, remotePeer?: string) => {
    const l = await listener.listen(addr);
    const accepted = l[Symbol.asyncIterator]().next();
    const client = await dialer.dial(addr, remotePeer !== undefined ? { remotePeer } : {});
    const server = (await accepted).value as Connection;
    return { l, client, server, it: server[Symbol.asyncIterator]() };
  };
  const plain = await pair(net, net, "mem://bench-plain");
  const secure = await pair(
    noise({ transport: net, identity: alice, trust }),
    noise({ transport: net, identity: bob, trust }),
    "mem://bench-noise",
    "bench-bob", // IK, as agents dial
  );
  const frame = alice.provider.randomBytes(1024);
  // A burst stays far below memory()'s 1 MiB high-water mark, so no drain() is needed.
  const burst = (p: typeof plain) => async () => {
    for (let k = 0; k < BURST; k++) p.client.send(frame);
    for (let k = 0; k < BURST; k++) await p.it.next();
  };
  const opts = { batch: quick ? 50 : 400, samples: quick ? 3 : 7 };
  const [a, b] = await measurePair(["noise(memory()) 1 KiB frames", burst(secure)], ["memory() alone, same bursts", burst(plain)], opts);
  const key = alice.provider.randomBytes(32);
  const tx = new CipherState(key, alice.provider);
  const rx = new CipherState(key, alice.provider);
  const pt = new Uint8Array(1 + frame.length);
  pt.set(frame, 1);
  const bare = () => {
    for (let k = 0; k < BURST; k++) rx.decryptWithAd(EMPTY, tx.encryptWithAd(EMPTY, pt));
  };
  const [c, d] = await measurePair(["noise(memory()) 1 KiB frames", burst(secure)], ["CipherState enc+dec, bare", bare], opts);
  tx.destroy();
  rx.destroy();
  for (const p of [plain, secure]) {
    p.client.abort();
    await p.l.close();
  }
  alice.close();
  bob.close();
  const perFrame = (r: Result): Result => ({ ...r, median: r.median * BURST, samples: r.samples.map((s) => s * BURST) });
  const group = `noise transport ${alice.provider.name}`;
  return [
    row(group, "frames/s at 1 KiB, send + receive", perFrame(a), perFrame(b), "frames/s"),
    row(group, "frames/s at 1 KiB vs its crypto", perFrame(c), perFrame(d), "frames/s"),
  ];
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire noise bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchNoise({ quick }), process.argv.includes("--markdown")));
}
