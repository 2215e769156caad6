/**
 * Envelope throughput at 1 KiB: seal+sign, verify+open and the round trip, for each crypto provider, each beside
 * its ceiling: the very same primitive calls made bare (ephemeral key generation, two X25519, the HPKE HMACs, one
 * ChaCha20-Poly1305 pass, one Ed25519 sign or verify), without any envelope logic.
 *
 * @module
 * @example
 * ```ts
 * const rows = await benchEnvelopes();
 * ```
 */
import type { CryptoProvider } from "../src/_crypto.js";
import { nativeProvider, nobleProvider } from "../src/_crypto.js";
import { EnvelopeOpener, ReplayCache, sealEnvelope } from "../src/envelope.js";
import { Identity } from "../src/identity.js";
import { TrustStore } from "../src/trust.js";
import { measurePair, row, type Row } from "./harness.js";

const PAYLOAD = 1024;

export async function benchEnvelopes(options: { quick?: boolean } = {}): Promise<Row[]> {
  const rows: Row[] = [];
  for (const p of [nativeProvider, nobleProvider] as CryptoProvider[]) {
    const batch = p.name === "native" ? (options.quick ? 100 : 400) : options.quick ? 5 : 20;
    const samples = options.quick ? 3 : 7;
    const alice = Identity.generate("alice", { provider: p });
    const bob = Identity.generate("bob", { provider: p });
    const trust = new TrustStore({ provider: p });
    trust.add(alice.publicIdentity);
    trust.add(bob.publicIdentity);
    const bobEntry = trust.require("bob");
    const payload = p.randomBytes(PAYLOAD + 1); // + the payload kind byte
    const opener = new EnvelopeOpener({ identity: bob, trust, replay: new ReplayCache(1_000_000) });

    // Bare primitives, in the same shapes and sizes as one envelope.
    const pkR = p.x25519Public(bob.sealPublicKey);
    const skS = alice.sealingKey();
    const aliceSign = p.ed25519FromSeed(alice.exportSecrets().signSeed);
    const k32 = p.randomBytes(32);
    const hmacIn = p.randomBytes(96);
    const aad = p.randomBytes(150);
    const nonce = p.randomBytes(12);
    const sigMsg = p.randomBytes(PAYLOAD + 1 + 16 + 150 + 25);
    const sig = p.ed25519Sign(aliceSign, sigMsg);
    const signPub = p.ed25519Public(alice.signPublicKey);
    const ct = p.aeadSeal(k32, nonce, aad, payload);
    const skR = bob.sealingKey();
    const pkS = p.x25519Public(alice.sealPublicKey);
    const bareSeal = () => {
      const e = p.x25519Generate();
      p.x25519(e, pkR);
      p.x25519(skS, pkR);
      e.destroy();
      for (let h = 0; h < 6; h++) p.hmac("sha256", k32, hmacIn);
      p.aeadSeal(k32, nonce, aad, payload);
      p.ed25519Sign(aliceSign, sigMsg);
    };
    const encs = Array.from({ length: 64 }, () => p.x25519Generate().publicKey);
    const bareOpen = (i: number) => {
      p.ed25519Verify(signPub, sigMsg, sig);
      p.x25519(skR, p.x25519Public(encs[i % encs.length]!, false));
      p.x25519(skR, pkS);
      for (let h = 0; h < 6; h++) p.hmac("sha256", k32, hmacIn);
      p.aeadOpen(k32, nonce, aad, ct);
    };

    const opts = { batch, samples };
    const [seal, sealCeil] = await measurePair([`${p.name} seal+sign`, () => sealEnvelope(alice, bobEntry, payload)], ["bare primitives", bareSeal], opts);
    const total = batch * (samples + 2);
    const pre = Array.from({ length: total }, () => sealEnvelope(alice, bobEntry, payload).bytes);
    const [open, openCeil] = await measurePair([`${p.name} verify+open`, (i) => opener.open(pre[i]!)], ["bare primitives", bareOpen], opts);
    const [rt, rtCeil] = await measurePair(
      [`${p.name} round trip`, () => opener.open(sealEnvelope(alice, bobEntry, payload).bytes)],
      ["bare primitives", (i) => (bareSeal(), bareOpen(i))],
      opts,
    );
    const target = "≥ 0.80";
    rows.push(
      row(`envelope 1 KiB (${p.name})`, "seal+sign", seal, sealCeil, "env/s", target),
      row(`envelope 1 KiB (${p.name})`, "verify+open", open, openCeil, "env/s", target),
      row(`envelope 1 KiB (${p.name})`, "round trip", rt, rtCeil, "env/s", target),
    );
    aliceSign.destroy();
    alice.close();
    bob.close();
  }
  return rows;
}
