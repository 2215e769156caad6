/**
 * Session-mode throughput at 1 KiB, for each crypto provider, in the same run as:
 * - its bare-primitive ceiling: the very primitive calls one continuation round trip makes, without any session
 *   logic — one ChaCha20-Poly1305 seal and one open of the same sizes, the SHA-256 envelope digest on each side,
 *   and, amortized every `DEFAULT_CHECKPOINT_EVERY` envelopes, the chain hash on each side plus one Ed25519 sign
 *   and one verify (the checkpoint);
 * - signed mode: `sealEnvelope` + `EnvelopeOpener.open` (HPKE auth-mode setup and an Ed25519 signature per envelope).
 *
 * The session round trip is `SessionSender.seal` → `SessionReceiver.open` of continuation envelopes with the
 * default checkpoint policy (a signed checkpoint every 256 envelopes or 1 s). Pairs are measured interleaved
 * (`measurePair`), so machine load hits both sides alike; the 1-minute load average is printed beside the rows
 * because this may run on a shared box.
 *
 * @module
 * @example
 * ```ts
 * const rows = await benchSession({ quick: true });
 * ```
 */
import os from "node:os";
import type { CryptoProvider } from "../src/_crypto.js";
import { nativeProvider, nobleProvider } from "../src/_crypto.js";
import { EnvelopeOpener, ReplayCache, sealEnvelope } from "../src/envelope.js";
import { Identity } from "../src/identity.js";
import { DEFAULT_CHECKPOINT_EVERY, SessionReceiver, SessionSender } from "../src/session.js";
import { TrustStore } from "../src/trust.js";
import { measurePair, row, type Result, type Row } from "./harness.js";

const PAYLOAD = 1024;

/** A result whose function ran `k` operations per call. */
function scaled(r: Result, k: number): Result {
  return { name: r.name, median: r.median * k, samples: r.samples.map((x) => x * k) };
}

const load = () => os.loadavg()[0]!.toFixed(2);

/** Session-mode rows: beside the primitive ceiling and beside signed mode, native and noble. */
export async function benchSession(options: { quick?: boolean } = {}): Promise<Row[]> {
  const rows: Row[] = [];
  for (const p of [nativeProvider, nobleProvider] as CryptoProvider[]) {
    const native = p.name === "native";
    // Short samples, many of them, interleaved: on a shared box, load drifts within a long sample.
    const samples = native ? (options.quick ? 5 : 15) : options.quick ? 3 : 9;
    // Whole multiples of the checkpoint interval, so every sample of both sides carries the same checkpoint share
    // (in pure JS one Ed25519 sign + verify costs as much as ~50 round trips).
    const batch = DEFAULT_CHECKPOINT_EVERY * (native ? 4 : 1);
    const alice = Identity.generate("alice", { provider: p });
    const bob = Identity.generate("bob", { provider: p });
    const aliceTrust = new TrustStore({ provider: p });
    aliceTrust.add(bob.publicIdentity);
    const bobTrust = new TrustStore({ provider: p });
    bobTrust.add(alice.publicIdentity);
    const payload = p.randomBytes(PAYLOAD + 1); // + the payload kind byte, as encodePayload writes it
    const tx = new SessionSender({ identity: alice, trust: aliceTrust, to: "bob" });
    const rx = new SessionReceiver({ identity: bob, trust: bobTrust, replay: new ReplayCache(1_000_000) });
    let delivered = 0;
    const sessionRoundTrip = () => {
      const s = tx.seal(payload);
      for (const f of s.preceding) rx.open(f);
      if (!rx.open(s.bytes).control) delivered++;
    };
    sessionRoundTrip(); // the opening (signed) envelope: every measured one is a continuation

    // The bare primitives of one continuation round trip, same sizes (header ≈ 100 B of AAD; the digest covers the
    // bin-encoded header and ciphertext), with the checkpoint's share every DEFAULT_CHECKPOINT_EVERY calls.
    const key = p.randomBytes(32);
    const nonce = p.randomBytes(12);
    const aad = p.randomBytes(100);
    const ct = p.aeadSeal(key, nonce, aad, payload);
    const digestInput = p.randomBytes(2 + aad.length + 3 + ct.length);
    const chainInput = p.randomBytes(16 + 8 + 8 + 32 + 32 * DEFAULT_CHECKPOINT_EVERY);
    const ckMsg = p.randomBytes(31 + 16 + 32 + 16 + 32 + 32 + 1);
    const signKey = p.ed25519FromSeed(p.randomBytes(32));
    const signPub = p.ed25519Public(signKey.publicKey);
    const ckSig = p.ed25519Sign(signKey, ckMsg);
    const ceiling = (i: number) => {
      p.aeadSeal(key, nonce, aad, payload);
      p.hash("sha256", digestInput);
      p.aeadOpen(key, nonce, aad, ct);
      p.hash("sha256", digestInput);
      if (i % DEFAULT_CHECKPOINT_EVERY === 0) {
        p.hash("sha256", chainInput);
        p.ed25519Sign(signKey, ckMsg);
        p.hash("sha256", chainInput);
        p.ed25519Verify(signPub, ckMsg, ckSig);
      }
    };

    const bobEntry = aliceTrust.require("bob");
    const opener = new EnvelopeOpener({ identity: bob, trust: bobTrust, replay: new ReplayCache(1_000_000) });
    const signedRoundTrip = () => opener.open(sealEnvelope(alice, bobEntry, payload).bytes);

    const loadBefore = load();
    const [session, ceil] = await measurePair(
      [`${p.name} session round trip`, sessionRoundTrip],
      ["bare primitives (2 AEAD + 2 SHA-256 + ckpt share)", ceiling],
      { batch, samples },
    );
    // Signed mode is ~15-50× slower: each call of the session side runs K round trips, so both sides of a sample
    // take a similar time.
    const K = 16;
    const [sessionK, signed] = await measurePair(
      [`${p.name} session round trip`, () => {
        for (let k = 0; k < K; k++) sessionRoundTrip();
      }],
      [`${p.name} signed mode (sealEnvelope + open)`, signedRoundTrip],
      { batch: batch / K, samples },
    );
    const cpu = native
      ? await measurePair([`${p.name} session round trip`, sessionRoundTrip], ["bare primitives, per CPU-second", ceiling], { batch, samples, clock: "cpu" })
      : undefined;
    const loadAfter = load();
    const group = `session 1 KiB (${p.name})`;
    const loadNote = `load ${loadBefore}→${loadAfter} on ${os.cpus().length} cpus`;
    rows.push(
      row(group, `round trip, continuation + ckpt/${DEFAULT_CHECKPOINT_EVERY} (${loadNote})`, session, ceil, "rt/s", native ? "≥ 50,000 rt/s" : undefined),
      row(group, `round trip vs signed mode (${loadNote})`, scaled(sessionK, K), signed, "rt/s", "≥ 12×"),
    );
    if (cpu) rows.push(row(group, "round trip per CPU-second (supplementary: CPU time, not wall)", cpu[0], cpu[1], "rt/CPU-s", "≥ 50,000"));
    if (delivered === 0) throw new Error("bench: no envelope was delivered");
    tx.close();
    rx.close();
    signKey.destroy();
    alice.close();
    bob.close();
  }
  return rows;
}

// `tsx bench/session.ts [--quick] [--markdown]` runs this group alone.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { machine, printRows } = await import("./harness.js");
  const argv = process.argv.slice(2);
  console.log(`sealwire bench (session) — ${machine()}`);
  console.log(printRows(await benchSession({ quick: argv.includes("--quick") }), argv.includes("--markdown")));
}
