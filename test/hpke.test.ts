import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { fromHex, toHex } from "../src/_bytes.js";
import { nativeProvider, nobleProvider } from "../src/_crypto.js";
import { _setupS, deriveKeyPairSecret, MODE_AUTH, MODE_BASE, setupAuthR, setupAuthS, setupR } from "../src/hpke.js";

interface Vector {
  mode: number;
  kem_id: number;
  kdf_id: number;
  aead_id: number;
  info: string;
  ikmR: string;
  ikmS?: string;
  ikmE: string;
  skRm: string;
  skSm?: string;
  skEm: string;
  psk?: string;
  psk_id?: string;
  pkRm: string;
  pkSm?: string;
  pkEm: string;
  enc: string;
  shared_secret: string;
  key: string;
  base_nonce: string;
  exporter_secret: string;
  encryptions: { aad: string; ct: string; nonce: string; pt: string }[];
  exports: { exporter_context: string; L: number; exported_value: string }[];
}

const vectors: Vector[] = JSON.parse(
  readFileSync(new URL("./vectors/hpke/rfc9180-x25519-sha256-chachapoly.json", import.meta.url), "utf8"),
);

describe.each([nativeProvider, nobleProvider])("HPKE RFC 9180 vectors ($name)", (p) => {
  it("has one vector per mode", () => {
    expect(vectors.map((v) => v.mode).sort()).toEqual([0, 1, 2, 3]);
  });

  it.each(vectors.map((v) => [v.mode, v] as const))("mode %i: keys, encap, key schedule, 257 messages, exports", (_mode, v) => {
    // DeriveKeyPair (§7.1.3)
    for (const [ikm, sk, pk] of [
      [v.ikmR, v.skRm, v.pkRm],
      [v.ikmE, v.skEm, v.pkEm],
      ...(v.ikmS ? [[v.ikmS, v.skSm!, v.pkSm!]] : []),
    ] as [string, string, string][]) {
      const derived = deriveKeyPairSecret(p, fromHex(ikm));
      expect(toHex(derived)).toBe(sk);
      expect(toHex(p.x25519FromSecret(derived).publicKey)).toBe(pk);
    }
    const skR = p.x25519FromSecret(fromHex(v.skRm));
    const skE = p.x25519FromSecret(fromHex(v.skEm));
    const skS = v.skSm ? p.x25519FromSecret(fromHex(v.skSm)) : undefined;
    const psk = v.psk ? { psk: fromHex(v.psk), pskId: fromHex(v.psk_id!) } : {};
    const info = fromHex(v.info);
    const s = _setupS(p, v.mode, p.x25519Public(fromHex(v.pkRm)), info, {
      ...psk,
      ...(skS ? { skS } : {}),
      ephemeral: skE,
    });
    expect(toHex(s.enc)).toBe(v.enc);
    const r = setupR(p, v.mode, s.enc, skR, info, { ...psk, ...(v.pkSm ? { pkS: p.x25519Public(fromHex(v.pkSm)) } : {}) });
    expect(v.encryptions.length).toBe(257);
    for (const [i, e] of v.encryptions.entries()) {
      const ct = s.ctx.seal(fromHex(e.aad), fromHex(e.pt));
      expect(toHex(ct), `encryption ${i}`).toBe(e.ct);
      expect(toHex(r.open(fromHex(e.aad), ct))).toBe(e.pt);
    }
    for (const x of v.exports) {
      expect(toHex(s.ctx.export(fromHex(x.exporter_context), x.L))).toBe(x.exported_value);
      expect(toHex(r.export(fromHex(x.exporter_context), x.L))).toBe(x.exported_value);
    }
  });
});

describe("HPKE behaviour", () => {
  const p = nativeProvider;
  it("auth mode fails to open under the wrong sender key, wrong aad, or a flipped bit; seq is unchanged", () => {
    const skR = p.x25519Generate();
    const skS = p.x25519Generate();
    const other = p.x25519Generate();
    const info = new TextEncoder().encode("t");
    const { enc, ctx } = setupAuthS(p, p.x25519Public(skR.publicKey), info, skS);
    const ct = ctx.seal(new Uint8Array([1]), new Uint8Array([42, 43]));
    expect(() => setupAuthR(p, enc, skR, info, p.x25519Public(other.publicKey)).open(new Uint8Array([1]), ct)).toThrow(
      expect.objectContaining({ code: "ERR_DECRYPT" }),
    );
    const r = setupAuthR(p, enc, skR, info, p.x25519Public(skS.publicKey));
    expect(() => r.open(new Uint8Array([2]), ct)).toThrow(expect.objectContaining({ code: "ERR_DECRYPT" }));
    const bad = Uint8Array.from(ct);
    bad[0]! ^= 1;
    expect(() => r.open(new Uint8Array([1]), bad)).toThrow(expect.objectContaining({ code: "ERR_DECRYPT" }));
    expect(r.seq).toBe(0);
    expect([...r.open(new Uint8Array([1]), ct)]).toEqual([42, 43]);
  });

  it("refuses a low-order ephemeral key (all-zero DH, RFC 9180 §7.1.4) with ERR_DECRYPT", () => {
    for (const prov of [nativeProvider, nobleProvider]) {
      const skR = prov.x25519Generate();
      expect(() => setupR(prov, MODE_BASE, new Uint8Array(32), skR, new Uint8Array())).toThrow(
        expect.objectContaining({ code: "ERR_DECRYPT" }),
      );
      expect(() => setupR(prov, MODE_BASE, new Uint8Array(31), skR, new Uint8Array())).toThrow(
        expect.objectContaining({ code: "ERR_DECRYPT" }),
      );
    }
  });

  it("native and noble interoperate in both directions (randomized)", () => {
    for (let i = 0; i < 20; i++) {
      const [a, b] = i % 2 ? [nativeProvider, nobleProvider] : [nobleProvider, nativeProvider];
      const skRraw = a.randomBytes(32);
      const skSraw = a.randomBytes(32);
      const skRa = a.x25519FromSecret(skRraw);
      const skRb = b.x25519FromSecret(skRraw);
      const skSa = a.x25519FromSecret(skSraw);
      const skSb = b.x25519FromSecret(skSraw);
      expect(toHex(skRa.publicKey)).toBe(toHex(skRb.publicKey));
      const info = a.randomBytes(i);
      const aad = a.randomBytes(i * 3);
      const pt = a.randomBytes(i * 50);
      const { enc, ctx } = _setupS(a, MODE_AUTH, a.x25519Public(skRa.publicKey), info, { skS: skSa });
      const ct = ctx.seal(aad, pt);
      const r = setupAuthR(b, enc, skRb, info, b.x25519Public(skSb.publicKey));
      expect(toHex(r.open(aad, ct))).toBe(toHex(pt));
    }
  });

  it("a destroyed context refuses to work", () => {
    const skR = p.x25519Generate();
    const { ctx } = _setupS(p, MODE_BASE, p.x25519Public(skR.publicKey), new Uint8Array(), {});
    ctx.destroy();
    expect(() => ctx.seal(new Uint8Array(), new Uint8Array())).toThrow(expect.objectContaining({ code: "ERR_CLOSED" }));
  });
});
