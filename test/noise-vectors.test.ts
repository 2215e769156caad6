/**
 * Known-answer tests for the Noise protocol module: every in-scope vector of cacophony, snow and noise-c basic
 * (see test/vectors/noise/SOURCES.md), with both crypto providers. Checks every handshake and transport
 * ciphertext byte for byte, every decrypted payload, the handshake hash where given, and the learned remote
 * static keys.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-vectors.test.ts
 * ```
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { fromHex, toHex } from "../src/_bytes.js";
import { nativeProvider, nobleProvider, type CryptoProvider } from "../src/_crypto.js";
import { setTestEphemeral } from "../transports/noise/_testing.js";
import { HandshakeState, parseProtocolName, type CipherState } from "../transports/noise/index.js";

interface Vector {
  protocol_name?: string;
  name?: string;
  init_prologue: string;
  init_psks?: string[];
  init_psk?: string;
  init_static?: string;
  init_ephemeral: string;
  init_remote_static?: string;
  resp_prologue: string;
  resp_psks?: string[];
  resp_psk?: string;
  resp_static?: string;
  resp_ephemeral?: string;
  resp_remote_static?: string;
  handshake_hash?: string;
  messages: { payload: string; ciphertext: string }[];
}

const load = (file: string): Vector[] =>
  (JSON.parse(readFileSync(new URL(`./vectors/noise/${file}`, import.meta.url), "utf8")) as { vectors: Vector[] }).vectors;

const nameOf = (v: Vector): string => v.protocol_name ?? v.name ?? "";

/** Out-of-scope reason, decided by name alone (so a parser bug cannot silently skip a vector), or null. */
function skipReason(name: string): string | null {
  if (name.startsWith("NoisePSK_")) return "obsolete NoisePSK_";
  const [, , dh, cipher, hash] = name.split("_");
  if (dh !== "25519") return `dh ${dh}`;
  if (cipher !== "ChaChaPoly") return `cipher ${cipher}`;
  if (hash === "BLAKE2s") return "hash BLAKE2s";
  return null;
}

const hex = (s: string | undefined): Uint8Array | undefined => (s === undefined ? undefined : fromHex(s));

function runVector(v: Vector, p: CryptoProvider): void {
  const name = nameOf(v);
  const proto = parseProtocolName(name); // must not throw for an in-scope name
  const pat = proto.pattern;
  // The files carry keys a pattern does not use (snow repeats transmitted statics as *_remote_static); pass
  // only what the pattern takes, since initialize() refuses superfluous keys.
  const usesS = (init: boolean): boolean =>
    (init ? pat.preInitiator : pat.preResponder).includes("s") ||
    pat.messages.some((m) => m.dir === (init ? "->" : "<-") && m.tokens.includes("s"));
  const pre = (init: boolean): boolean => (init ? pat.preResponder : pat.preInitiator).includes("s");
  const psks = (list: string[] | undefined): Uint8Array[] => (list ?? []).map((k) => fromHex(k));

  const mk = (init: boolean): HandshakeState => {
    const s = usesS(init) ? hex(init ? v.init_static : v.resp_static) : undefined;
    const rs = pre(init) ? hex(init ? v.init_remote_static : v.resp_remote_static) : undefined;
    if (usesS(init)) expect(s, `${name}: vector lacks a static key`).toBeDefined();
    if (pre(init)) expect(rs, `${name}: vector lacks a remote static key`).toBeDefined();
    const hs = HandshakeState.initialize({
      protocolName: name,
      initiator: init,
      prologue: fromHex(init ? v.init_prologue : v.resp_prologue),
      s,
      rs,
      psks: psks(init ? v.init_psks : v.resp_psks),
      provider: p,
    });
    const eph = init ? v.init_ephemeral : v.resp_ephemeral;
    if (eph !== undefined) setTestEphemeral(hs, fromHex(eph));
    return hs;
  };
  const ini = mk(true);
  const res = mk(false);
  const nHs = pat.messages.length;
  let iSend: CipherState | undefined, iRecv: CipherState | undefined;
  let rSend: CipherState | undefined, rRecv: CipherState | undefined;

  v.messages.forEach((m, i) => {
    const fromInit = pat.oneWay || i % 2 === 0;
    const payload = fromHex(m.payload);
    const where = `${name} message ${i}`;
    if (i < nHs) {
      const [w, r] = fromInit ? [ini, res] : [res, ini];
      expect(w.nextAction, where).toBe("write");
      expect(r.nextAction, where).toBe("read");
      const ct = w.writeMessage(payload);
      expect(toHex(ct), where).toBe(m.ciphertext);
      expect(toHex(r.readMessage(ct)), where).toBe(m.payload);
      if (i === nHs - 1) {
        expect(ini.isComplete && res.isComplete, where).toBe(true);
        expect(toHex(ini.getHandshakeHash())).toBe(toHex(res.getHandshakeHash()));
        if (v.handshake_hash !== undefined) expect(toHex(ini.getHandshakeHash()), name).toBe(v.handshake_hash);
        // Each side learned (or was given) the other's static key when the pattern has one.
        if (usesS(true)) expect(toHex(res.remoteStaticKey!)).toBe(toHex(p.x25519FromSecret(fromHex(v.init_static!)).publicKey));
        if (usesS(false)) expect(toHex(ini.remoteStaticKey!)).toBe(toHex(p.x25519FromSecret(fromHex(v.resp_static!)).publicKey));
        const [ic1, ic2] = ini.split();
        const [rc1, rc2] = res.split();
        [iSend, iRecv, rSend, rRecv] = [ic1, ic2, rc2, rc1];
      }
    } else {
      const [send, recv] = fromInit ? [iSend!, rRecv!] : [rSend!, iRecv!];
      const ct = send.encryptWithAd(new Uint8Array(0), payload);
      expect(toHex(ct), where).toBe(m.ciphertext);
      expect(toHex(recv.decryptWithAd(new Uint8Array(0), ct)), where).toBe(m.payload);
    }
  });
  // Every vector carries at least the full handshake.
  expect(v.messages.length).toBeGreaterThanOrEqual(nHs);
}

// Exact in-scope counts: cacophony 3 hashes × 59 patterns, snow 3 × 51, noise-c basic 3 × 15.
const FILES = [
  { file: "cacophony.json", run: 177, skip: 767 },
  { file: "snow.json", run: 153, skip: 255 },
  { file: "noise-c-basic.json", run: 45, skip: 435 },
] as const;

describe.each([nativeProvider, nobleProvider])("Noise vectors with the $name provider", (p) => {
  it.each(FILES)("$file: runs every in-scope vector ($run run, $skip skipped)", ({ file, run, skip }) => {
    const all = load(file);
    const inScope = all.filter((v) => skipReason(nameOf(v)) === null);
    expect(inScope.length).toBe(run);
    expect(all.length - inScope.length).toBe(skip);
    let ran = 0;
    for (const v of inScope) {
      runVector(v, p);
      ran++;
    }
    expect(ran).toBe(run);
  });
});

describe("vector coverage", () => {
  it("covers every pattern family and psk modifier the files contain", () => {
    const names = FILES.flatMap(({ file }) => load(file).map(nameOf)).filter((n) => skipReason(n) === null);
    const patterns = new Set(names.map((n) => n.split("_")[1]!));
    // One-way, fundamental, deferred and psk (single and multiple) patterns all appear.
    for (const p of ["N", "K", "X", "NN", "XX", "IK", "NK", "KK", "XK", "I1X1", "XXpsk3", "IKpsk2", "Npsk0", "XXpsk0+psk1+psk2+psk3"]) {
      expect(patterns.has(p), p).toBe(true);
    }
    for (const h of ["SHA256", "SHA512", "BLAKE2b"]) expect(names.some((n) => n.endsWith(`_${h}`)), h).toBe(true);
    expect(names.filter((n) => n.includes("psk")).length).toBeGreaterThan(100);
  });
});
