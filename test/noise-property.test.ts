/**
 * Property tests (fast-check) for XX and IK: random payloads, prologues and transport streams round-trip, both
 * sides agree on the handshake hash and the peer's static key, inputs are never mutated, and any prologue
 * difference makes the handshake fail.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-property.test.ts
 * ```
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { equalBytes, toHex } from "../src/_bytes.js";
import { nativeProvider as p } from "../src/_crypto.js";
import { SealwireError } from "../src/errors.js";
import { HandshakeState } from "../transports/noise/index.js";

const sI = p.x25519Generate();
const sR = p.x25519Generate();
const bytes = (max: number) => fc.uint8Array({ minLength: 0, maxLength: max });

function pair(pattern: "XX" | "IK", hash: string, prologueI: Uint8Array, prologueR: Uint8Array) {
  const protocolName = `Noise_${pattern}_25519_ChaChaPoly_${hash}`;
  const rs = pattern === "IK" ? sR.publicKey : undefined;
  return [
    HandshakeState.initialize({ protocolName, initiator: true, prologue: prologueI, s: sI, rs }),
    HandshakeState.initialize({ protocolName, initiator: false, prologue: prologueR, s: sR }),
  ] as const;
}

const hashes = fc.constantFrom("SHA256", "SHA512", "BLAKE2b");

describe.each(["XX", "IK"] as const)("%s properties", (pattern) => {
  it("round-trips random handshake payloads, prologues and transport streams", () => {
    fc.assert(
      fc.property(
        hashes,
        bytes(64),
        fc.array(bytes(2048), { minLength: 3, maxLength: 3 }),
        fc.array(fc.tuple(fc.boolean(), bytes(1024), bytes(32)), { maxLength: 12 }),
        (hash, prologue, payloads, stream) => {
          const snapshot = [prologue, ...payloads].map(toHex);
          const [i, r] = pair(pattern, hash, prologue, Uint8Array.from(prologue));
          let n = 0;
          while (!(i.isComplete && r.isComplete)) {
            const [w, rd] = i.nextAction === "write" ? [i, r] : [r, i];
            const got = rd.readMessage(w.writeMessage(payloads[n]!));
            expect(equalBytes(got, payloads[n]!)).toBe(true);
            n++;
          }
          expect(n).toBe(pattern === "XX" ? 3 : 2);
          expect(equalBytes(i.getHandshakeHash(), r.getHandshakeHash())).toBe(true);
          expect(equalBytes(i.remoteStaticKey!, sR.publicKey)).toBe(true);
          expect(equalBytes(r.remoteStaticKey!, sI.publicKey)).toBe(true);
          const a = i.splitByRole();
          const b = r.splitByRole();
          for (const [fromInitiator, pt, ad] of stream) {
            const [tx, rx] = fromInitiator ? [a.send, b.receive] : [b.send, a.receive];
            const ct = tx.encryptWithAd(ad, pt);
            expect(ct.length).toBe(pt.length + 16);
            expect(equalBytes(rx.decryptWithAd(ad, ct), pt)).toBe(true);
          }
          expect([prologue, ...payloads].map(toHex)).toEqual(snapshot);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("fails whenever the prologues differ", () => {
    fc.assert(
      fc.property(hashes, bytes(32), bytes(32), (hash, pa, pb) => {
        fc.pre(!equalBytes(pa, pb));
        const [i, r] = pair(pattern, hash, pa, pb);
        let failed: unknown = null;
        try {
          while (!(i.isComplete && r.isComplete)) {
            const [w, rd] = i.nextAction === "write" ? [i, r] : [r, i];
            rd.readMessage(w.writeMessage(new Uint8Array(0)));
          }
        } catch (e) {
          failed = e;
        }
        expect(SealwireError.is(failed, "ERR_NOISE_HANDSHAKE")).toBe(true);
      }),
      { numRuns: 30 },
    );
  });
});
