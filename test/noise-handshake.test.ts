/**
 * HandshakeState behaviour beyond the vectors: protocol-name parsing, option validation, split order, tamper and
 * truncation (every byte), invalid public keys, turn order, the 65535-byte limit, fail-closed state after any
 * error, wiping of secrets on completion / failure / destroy, redaction, and that the test hook stays private.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/noise-handshake.test.ts
 * ```
 */
import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { toHex, utf8 } from "../src/_bytes.js";
import { nativeProvider, nobleProvider, type CryptoProvider, type X25519PrivateKey } from "../src/_crypto.js";
import { SealwireError, type ErrorCode } from "../src/errors.js";
import {
  HandshakeState,
  MAX_MESSAGE_BYTES,
  PATTERN_NAMES,
  parseProtocolName,
  type HandshakeInit,
} from "../transports/noise/index.js";
import * as noiseIndex from "../transports/noise/index.js";
import { setTestEphemeral } from "../transports/noise/_testing.js";

const p = nativeProvider;
const EMPTY = new Uint8Array(0);
const XX = "Noise_XX_25519_ChaChaPoly_SHA256";
const IK = "Noise_IK_25519_ChaChaPoly_SHA256";

function code(f: () => unknown): ErrorCode | "no error" | "not a SealwireError" {
  try {
    f();
    return "no error";
  } catch (e) {
    return SealwireError.is(e) ? e.code : "not a SealwireError";
  }
}

const aliceS = p.x25519Generate();
const bobS = p.x25519Generate();

function xxPair(prologue: Uint8Array = EMPTY, provider: CryptoProvider = p): [HandshakeState, HandshakeState] {
  const sa = provider === p ? aliceS : provider.x25519Generate();
  const sb = provider === p ? bobS : provider.x25519Generate();
  return [
    HandshakeState.initialize({ protocolName: XX, initiator: true, prologue, s: sa, provider }),
    HandshakeState.initialize({ protocolName: XX, initiator: false, prologue, s: sb, provider }),
  ];
}

/** Runs the handshake between `i` and `r` until done, returning the messages. */
function run(i: HandshakeState, r: HandshakeState, payload = (n: number) => utf8(`payload ${n}`)): Uint8Array[] {
  const msgs: Uint8Array[] = [];
  for (let n = 0; !(i.isComplete && r.isComplete); n++) {
    const [w, rd] = i.nextAction === "write" ? [i, r] : [r, i];
    const m = w.writeMessage(payload(n));
    msgs.push(m);
    expect(toHex(rd.readMessage(m))).toBe(toHex(payload(n)));
  }
  return msgs;
}

/** Expects `hs` to be dead: every operation throws ERR_NOISE_HANDSHAKE and it exposes no keys. */
function expectDead(hs: HandshakeState): void {
  expect(hs.nextAction).toBe("done");
  expect(hs.isComplete).toBe(false);
  expect(hs.remoteStaticKey).toBeNull();
  expect(code(() => hs.writeMessage(EMPTY))).toBe("ERR_NOISE_HANDSHAKE");
  expect(code(() => hs.readMessage(new Uint8Array(32)))).toBe("ERR_NOISE_HANDSHAKE");
  expect(code(() => hs.split())).toBe("ERR_NOISE_HANDSHAKE");
  expect(code(() => hs.getHandshakeHash())).toBe("ERR_NOISE_HANDSHAKE");
}

describe("parseProtocolName", () => {
  it("parses supported names, psk modifiers included", () => {
    const x = parseProtocolName("Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b");
    expect([x.pattern.base, x.pattern.name, x.hash, x.hashLen, x.pattern.pskCount]).toEqual(["XX", "XXpsk3", "blake2b", 64, 1]);
    expect(x.pattern.messages.map((m) => `${m.dir} ${m.tokens.join(", ")}`)).toEqual([
      "-> e",
      "<- e, ee, s, es",
      "-> s, se, psk",
    ]);
    const n = parseProtocolName("Noise_NNpsk0+psk2_25519_ChaChaPoly_SHA512");
    expect(n.pattern.messages.map((m) => m.tokens.join(","))).toEqual(["psk,e", "e,ee,psk"]);
    expect(n.hash).toBe("sha512");
    const k = parseProtocolName("Noise_K1X1_25519_ChaChaPoly_SHA256");
    expect([k.pattern.preInitiator, k.pattern.preResponder, k.pattern.oneWay]).toEqual([["s"], [], false]);
    expect(parseProtocolName("Noise_X_25519_ChaChaPoly_SHA256").pattern.oneWay).toBe(true);
    expect(PATTERN_NAMES.length).toBe(38);
  });

  it.each([
    "Noise_XX_448_ChaChaPoly_SHA256",
    "Noise_XX_25519_AESGCM_SHA256",
    "Noise_XX_25519_ChaChaPoly_BLAKE2s",
    "NoisePSK_XX_25519_ChaChaPoly_SHA256",
    "Noise_XXfallback_25519_ChaChaPoly_SHA256",
    "Noise_XXhfs_25519+Kyber1024_ChaChaPoly_SHA256",
    "Noise_XXpsk2+psk0_25519_ChaChaPoly_SHA256",
    "Noise_XXpsk0+psk0_25519_ChaChaPoly_SHA256",
    "Noise_XXpsk4_25519_ChaChaPoly_SHA256",
    "Noise_NNpsk3_25519_ChaChaPoly_SHA256",
    "Noise_XXpsk00_25519_ChaChaPoly_SHA256",
    "Noise_XX+psk0_25519_ChaChaPoly_SHA256",
    "Noise_XXpsk_25519_ChaChaPoly_SHA256",
    "Noise_ZZ_25519_ChaChaPoly_SHA256",
    "Noise_xx_25519_ChaChaPoly_SHA256",
    "Noise_XX_25519_ChaChaPoly",
    "Noise_XX_25519_ChaChaPoly_SHA256_",
    "noise_XX_25519_ChaChaPoly_SHA256",
    "Noise_XX_25519_ChaChaPoly_sha256",
    "Noise_XX_25519_ChaChaPoly_constructor",
    "Noise__25519_ChaChaPoly_SHA256",
    `Noise_${"X".repeat(300)}_25519_ChaChaPoly_SHA256`,
    "",
  ])("refuses %s with ERR_INVALID_ARGUMENT", (name) => {
    expect(code(() => parseProtocolName(name))).toBe("ERR_INVALID_ARGUMENT");
    expect(code(() => HandshakeState.initialize({ protocolName: name, initiator: true }))).toBe("ERR_INVALID_ARGUMENT");
  });

  it("refuses a non-string name", () => {
    expect(code(() => parseProtocolName(42 as unknown as string))).toBe("ERR_INVALID_ARGUMENT");
  });
});

describe("HandshakeState.initialize validation", () => {
  const base = { protocolName: XX, initiator: true, s: aliceS } as HandshakeInit;
  it.each<[string, Partial<HandshakeInit>]>([
    ["missing s for XX", { s: undefined }],
    ["superfluous rs for XX (it is learned, not pinned)", { rs: bobS.publicKey }],
    ["s for NN", { protocolName: "Noise_NN_25519_ChaChaPoly_SHA256" }],
    ["missing rs for the IK initiator", { protocolName: IK }],
    ["rs for the IK responder", { protocolName: IK, initiator: false, rs: aliceS.publicKey }],
    ["short rs", { protocolName: IK, rs: new Uint8Array(31) }],
    ["short raw s", { s: new Uint8Array(31) }],
    ["s that is not a key", { s: {} as X25519PrivateKey }],
    ["missing psk", { protocolName: "Noise_XXpsk3_25519_ChaChaPoly_SHA256" }],
    ["too many psks", { protocolName: "Noise_XXpsk3_25519_ChaChaPoly_SHA256", psks: [new Uint8Array(32), new Uint8Array(32)] }],
    ["short psk", { protocolName: "Noise_XXpsk3_25519_ChaChaPoly_SHA256", psks: [new Uint8Array(31)] }],
    ["psk for a pattern without psk", { psks: [new Uint8Array(32)] }],
    ["prologue that is not bytes", { prologue: "p" as unknown as Uint8Array }],
    ["initiator that is not a boolean", { initiator: 1 as unknown as boolean }],
  ])("refuses %s", (_what, patch) => {
    expect(code(() => HandshakeState.initialize({ ...base, ...patch } as HandshakeInit))).toBe("ERR_INVALID_ARGUMENT");
  });

  it("accepts a raw 32-byte static secret and the default provider", () => {
    const raw = p.randomBytes(32);
    const i = HandshakeState.initialize({ protocolName: XX, initiator: true, s: raw });
    const r = HandshakeState.initialize({ protocolName: XX, initiator: false, s: bobS });
    run(i, r);
    expect(toHex(r.remoteStaticKey!)).toBe(toHex(p.x25519FromSecret(raw).publicKey));
    expect(toHex(i.remoteStaticKey!)).toBe(toHex(bobS.publicKey));
  });
});

describe("handshake and split", () => {
  it("split() returns [c1, c2] in spec order for both roles; splitByRole assigns by role", () => {
    const [i, r] = xxPair();
    run(i, r);
    expect([i.nextAction, r.nextAction]).toEqual(["split", "split"]);
    expect(toHex(i.getHandshakeHash())).toBe(toHex(r.getHandshakeHash()));
    const [ic1, ic2] = i.split();
    const [rc1, rc2] = r.split();
    // c1 carries initiator -> responder on both sides; c2 the reverse.
    expect(toHex(rc1.decryptWithAd(EMPTY, ic1.encryptWithAd(EMPTY, utf8("i->r"))))).toBe(toHex(utf8("i->r")));
    expect(toHex(ic2.decryptWithAd(EMPTY, rc2.encryptWithAd(EMPTY, utf8("r->i"))))).toBe(toHex(utf8("r->i")));
    // The two directions use different keys.
    expect(code(() => rc2.decryptWithAd(EMPTY, ic1.encryptWithAd(EMPTY, utf8("x"))))).toBe("ERR_NOISE_DECRYPT");
    // After split: no more handshake messages, but the hash and the remote key stay readable.
    expect(i.nextAction).toBe("done");
    expect(i.getHandshakeHash().length).toBe(32);
    expect(toHex(i.remoteStaticKey!)).toBe(toHex(bobS.publicKey));

    const [i2, r2] = xxPair();
    run(i2, r2);
    const a = i2.splitByRole();
    const b = r2.splitByRole();
    expect(toHex(b.receive.decryptWithAd(EMPTY, a.send.encryptWithAd(EMPTY, utf8("hi"))))).toBe(toHex(utf8("hi")));
    expect(toHex(a.receive.decryptWithAd(EMPTY, b.send.encryptWithAd(EMPTY, utf8("yo"))))).toBe(toHex(utf8("yo")));
  });

  it("splitByRole() refuses one-way patterns", () => {
    const i = HandshakeState.initialize({ protocolName: "Noise_N_25519_ChaChaPoly_SHA256", initiator: true, rs: bobS.publicKey });
    const r = HandshakeState.initialize({ protocolName: "Noise_N_25519_ChaChaPoly_SHA256", initiator: false, s: bobS });
    run(i, r);
    expect(code(() => r.splitByRole())).toBe("ERR_INVALID_ARGUMENT");
    expect(i.split().length).toBe(2);
  });

  it("completes every supported pattern (and with psk0) under every hash with fresh keys", () => {
    for (const hash of ["SHA256", "SHA512", "BLAKE2b"]) {
      for (const pat of PATTERN_NAMES) {
        for (const mod of ["", "psk0"]) {
          const name = `Noise_${pat}${mod}_25519_ChaChaPoly_${hash}`;
          const pt = parseProtocolName(name).pattern;
          const sI = p.x25519Generate();
          const sR = p.x25519Generate();
          const psk = mod ? [p.randomBytes(32)] : [];
          const uses = (init: boolean) =>
            (init ? pt.preInitiator : pt.preResponder).length > 0 ||
            pt.messages.some((m) => m.dir === (init ? "->" : "<-") && m.tokens.includes("s"));
          const i = HandshakeState.initialize({
            protocolName: name,
            initiator: true,
            s: uses(true) ? sI : undefined,
            rs: pt.preResponder.length ? sR.publicKey : undefined,
            psks: psk,
          });
          const r = HandshakeState.initialize({
            protocolName: name,
            initiator: false,
            s: uses(false) ? sR : undefined,
            rs: pt.preInitiator.length ? sI.publicKey : undefined,
            psks: psk,
          });
          const msgs = run(i, r);
          expect(msgs.length, name).toBe(pt.messages.length);
          expect(toHex(i.getHandshakeHash()), name).toBe(toHex(r.getHandshakeHash()));
          if (uses(false)) expect(toHex(i.remoteStaticKey!), name).toBe(toHex(sR.publicKey));
          if (uses(true)) expect(toHex(r.remoteStaticKey!), name).toBe(toHex(sI.publicKey));
          const [c1] = i.split();
          const [d1] = r.split();
          expect(toHex(d1.decryptWithAd(EMPTY, c1.encryptWithAd(EMPTY, utf8(name))))).toBe(toHex(utf8(name)));
        }
      }
    }
  });

  it("an IK initiator with the wrong responder key fails at the responder's first read", () => {
    const i = HandshakeState.initialize({ protocolName: IK, initiator: true, s: aliceS, rs: p.x25519Generate().publicKey });
    const r = HandshakeState.initialize({ protocolName: IK, initiator: false, s: bobS });
    const m1 = i.writeMessage(utf8("hello"));
    expect(code(() => r.readMessage(m1))).toBe("ERR_NOISE_HANDSHAKE");
    expectDead(r);
  });

  it("mismatched PSKs or prologues fail at the first authenticated message", () => {
    const name = "Noise_XXpsk3_25519_ChaChaPoly_SHA256";
    const i = HandshakeState.initialize({ protocolName: name, initiator: true, s: aliceS, psks: [new Uint8Array(32).fill(1)] });
    const r = HandshakeState.initialize({ protocolName: name, initiator: false, s: bobS, psks: [new Uint8Array(32).fill(2)] });
    r.readMessage(i.writeMessage(EMPTY));
    i.readMessage(r.writeMessage(EMPTY));
    expect(code(() => r.readMessage(i.writeMessage(EMPTY)))).toBe("ERR_NOISE_HANDSHAKE");
    expectDead(r);

    const [i2] = xxPair(utf8("sealwire/v1 memory"));
    const [, r2] = xxPair(utf8("sealwire/v1 websocket"));
    r2.readMessage(i2.writeMessage(EMPTY));
    expect(code(() => i2.readMessage(r2.writeMessage(EMPTY)))).toBe("ERR_NOISE_HANDSHAKE");
    expectDead(i2);
  });
});

describe("hostile input", () => {
  it("any flipped bit in XX message 2 or 3 is refused and kills the reader", () => {
    const [i0, r0] = xxPair();
    const m1 = i0.writeMessage(utf8("m1"));
    r0.readMessage(m1);
    const m2len = r0.writeMessage(utf8("m2")).length;
    for (let idx = 0; idx < m2len; idx++) {
      for (const bit of [0x01, 0x80]) {
        const [i, r] = xxPair();
        r.readMessage(i.writeMessage(utf8("m1")));
        const m2 = r.writeMessage(utf8("m2"));
        m2[idx]! ^= bit;
        expect(code(() => i.readMessage(m2)), `byte ${idx} bit ${bit}`).toBe("ERR_NOISE_HANDSHAKE");
        expectDead(i);
      }
    }
    for (let idx = 0; idx < 48 + 2 + 16; idx++) {
      const [i, r] = xxPair();
      r.readMessage(i.writeMessage(utf8("m1")));
      i.readMessage(r.writeMessage(utf8("m2")));
      const m3 = i.writeMessage(utf8("m3"));
      expect(m3.length).toBe(48 + 2 + 16);
      m3[idx]! ^= 0x01;
      expect(code(() => r.readMessage(m3)), `byte ${idx}`).toBe("ERR_NOISE_HANDSHAKE");
      expectDead(r);
    }
  });

  it("a flipped bit in the unauthenticated XX message 1 is caught by the initiator at message 2", () => {
    for (let idx = 0; idx < 32 + 2; idx++) {
      const [i, r] = xxPair();
      const m1 = i.writeMessage(utf8("m1"));
      m1[idx]! ^= 0x01;
      r.readMessage(m1); // nothing in message 1 is authenticated yet (§7.7: payload 0 has no security)
      const m2 = r.writeMessage(EMPTY);
      expect(code(() => i.readMessage(m2)), `byte ${idx}`).toBe("ERR_NOISE_HANDSHAKE");
      expectDead(i);
    }
  });

  it("truncated and extended messages are refused", () => {
    const [i0, r0] = xxPair();
    r0.readMessage(i0.writeMessage(EMPTY));
    const full = r0.writeMessage(utf8("payload"));
    for (let len = 0; len < full.length; len++) {
      const [i, r] = xxPair();
      r.readMessage(i.writeMessage(EMPTY));
      const m2 = r.writeMessage(utf8("payload"));
      expect(code(() => i.readMessage(m2.subarray(0, len))), `length ${len}`).toBe("ERR_NOISE_HANDSHAKE");
      expectDead(i);
    }
    const [i, r] = xxPair();
    r.readMessage(i.writeMessage(EMPTY));
    const m2 = r.writeMessage(utf8("payload"));
    const longer = new Uint8Array(m2.length + 1);
    longer.set(m2);
    expect(code(() => i.readMessage(longer))).toBe("ERR_NOISE_HANDSHAKE");
    // Message 1 of XX must hold at least the 32-byte ephemeral key.
    const [, r1] = xxPair();
    expect(code(() => r1.readMessage(new Uint8Array(31)))).toBe("ERR_NOISE_HANDSHAKE");
    expectDead(r1);
  });

  it("low-order ephemeral keys are refused (all-zero DH output)", () => {
    const lowOrder = [new Uint8Array(32), Uint8Array.from({ length: 32 }, (_, k) => (k === 0 ? 1 : 0))];
    for (const bad of lowOrder) {
      // In message 2: the initiator's `ee` fails.
      const [i, r] = xxPair();
      r.readMessage(i.writeMessage(EMPTY));
      const m2 = r.writeMessage(EMPTY);
      m2.set(bad, 0);
      expect(code(() => i.readMessage(m2))).toBe("ERR_NOISE_HANDSHAKE");
      expectDead(i);
      // In message 1: the responder accepts it (no DH yet) but its own `ee` then fails.
      const [i2, r2] = xxPair();
      const m1 = i2.writeMessage(EMPTY);
      m1.set(bad, 0);
      r2.readMessage(m1);
      expect(code(() => r2.writeMessage(EMPTY))).toBe("ERR_NOISE_HANDSHAKE");
      expectDead(r2);
    }
  });

  it("out-of-turn and out-of-order calls kill the state", () => {
    const [i, r] = xxPair();
    expect([i.nextAction, r.nextAction]).toEqual(["write", "read"]);
    expect(code(() => r.writeMessage(EMPTY))).toBe("ERR_NOISE_HANDSHAKE");
    expectDead(r);
    expect(code(() => i.readMessage(new Uint8Array(100)))).toBe("ERR_NOISE_HANDSHAKE");
    expectDead(i);

    const [i2, r2] = xxPair();
    expect(code(() => i2.split())).toBe("ERR_NOISE_HANDSHAKE"); // before completion
    expectDead(i2);
    const [i3, r3] = xxPair();
    run(i3, r3);
    expect(code(() => i3.writeMessage(EMPTY))).toBe("ERR_NOISE_HANDSHAKE"); // after completion
    expectDead(i3);
    r3.split();
    expect(code(() => r3.split())).toBe("ERR_NOISE_HANDSHAKE"); // twice
    void r2;
  });

  it("enforces the 65535-byte limit on write and read", () => {
    // XX message 1 is e (32 bytes) + plaintext payload: 65503 payload bytes fit exactly.
    const [i, r] = xxPair();
    const m1 = i.writeMessage(new Uint8Array(MAX_MESSAGE_BYTES - 32));
    expect(m1.length).toBe(MAX_MESSAGE_BYTES);
    expect(r.readMessage(m1).length).toBe(MAX_MESSAGE_BYTES - 32);
    // Message 2 is e + encrypted s (48) + payload + tag: 65439 payload bytes fit.
    const m2 = r.writeMessage(new Uint8Array(MAX_MESSAGE_BYTES - 96));
    expect(m2.length).toBe(MAX_MESSAGE_BYTES);
    i.readMessage(m2);

    const [i2] = xxPair();
    expect(code(() => i2.writeMessage(new Uint8Array(MAX_MESSAGE_BYTES - 31)))).toBe("ERR_FRAME_TOO_LARGE");
    expectDead(i2);
    const [i3] = xxPair();
    expect(code(() => i3.writeMessage(new Uint8Array(1 << 20)))).toBe("ERR_FRAME_TOO_LARGE");
    expectDead(i3);
    const [, r4] = xxPair();
    expect(code(() => r4.readMessage(new Uint8Array(MAX_MESSAGE_BYTES + 1)))).toBe("ERR_FRAME_TOO_LARGE");
    expectDead(r4);
  });

  it("refuses non-byte messages and payloads, and dies", () => {
    const [i, r] = xxPair();
    expect(code(() => i.writeMessage("hi" as unknown as Uint8Array))).toBe("ERR_INVALID_ARGUMENT");
    expectDead(i);
    expect(code(() => r.readMessage(null as unknown as Uint8Array))).toBe("ERR_INVALID_ARGUMENT");
    expectDead(r);
  });
});

/** A provider that records every HMAC and DH output and every generated or imported private key. */
function spyProvider(base: CryptoProvider) {
  const secrets: Uint8Array[] = [];
  const keys: { destroyed: boolean }[] = [];
  const track = (k: X25519PrivateKey): X25519PrivateKey => {
    const rec = { destroyed: false };
    keys.push(rec);
    const orig = k.destroy.bind(k);
    (k as { destroy: () => void }).destroy = () => {
      rec.destroyed = true;
      orig();
    };
    return k;
  };
  const provider: CryptoProvider = {
    ...base,
    name: base.name,
    hmac: (alg, key, ...parts) => {
      const out = base.hmac(alg, key, ...parts);
      secrets.push(out);
      return out;
    },
    x25519: (sk, pk) => {
      const out = base.x25519(sk, pk);
      secrets.push(out);
      return out;
    },
    x25519Generate: () => track(base.x25519Generate()),
    x25519FromSecret: (sk) => track(base.x25519FromSecret(sk)),
  };
  const allZero = () => secrets.every((s) => s.every((b) => b === 0));
  return { provider, secrets, keys, allZero };
}

describe("secret hygiene", () => {
  it.each([nativeProvider, nobleProvider])("wipes every HKDF/DH output and destroys ephemerals on completion ($name)", (base) => {
    for (const name of [XX, "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b", "Noise_KKpsk0_25519_ChaChaPoly_SHA512"]) {
      const spy = spyProvider(base);
      const pat = parseProtocolName(name).pattern;
      const sI = spy.provider.x25519FromSecret(base.randomBytes(32));
      const sR = spy.provider.x25519FromSecret(base.randomBytes(32));
      const psks = pat.pskCount ? [base.randomBytes(32)] : [];
      const i = HandshakeState.initialize({
        protocolName: name,
        initiator: true,
        s: sI,
        rs: pat.preResponder.length ? sR.publicKey : undefined,
        psks,
        provider: spy.provider,
      });
      const r = HandshakeState.initialize({
        protocolName: name,
        initiator: false,
        s: sR,
        rs: pat.preInitiator.length ? sI.publicKey : undefined,
        psks,
        provider: spy.provider,
      });
      run(i, r);
      i.split();
      r.split();
      expect(spy.secrets.length).toBeGreaterThan(10);
      expect(spy.allZero(), name).toBe(true);
      // Two static keys (ours to keep: not destroyed) and two ephemerals (destroyed).
      expect(spy.keys.map((k) => k.destroyed)).toEqual([false, false, true, true]);
    }
  });

  it("wipes on failure and on destroy(), and destroys an imported raw static key", () => {
    const spy = spyProvider(p);
    const i = HandshakeState.initialize({ protocolName: XX, initiator: true, s: p.randomBytes(32), provider: spy.provider });
    const r = HandshakeState.initialize({ protocolName: XX, initiator: false, s: p.randomBytes(32), provider: spy.provider });
    r.readMessage(i.writeMessage(EMPTY));
    const m2 = r.writeMessage(EMPTY);
    m2[40]! ^= 1;
    expect(code(() => i.readMessage(m2))).toBe("ERR_NOISE_HANDSHAKE");
    r.destroy();
    expect(spy.allZero()).toBe(true);
    expect(spy.keys.every((k) => k.destroyed)).toBe(true); // two imported statics, two ephemerals
    expect(spy.keys.length).toBe(4);
    // destroy() is final and idempotent.
    r.destroy();
    expect(code(() => r.writeMessage(EMPTY))).toBe("ERR_CLOSED");
    expect(code(() => r.getHandshakeHash())).toBe("ERR_CLOSED");
    expect(r.remoteStaticKey).toBeNull();
    expect(r.nextAction).toBe("done");
  });

  it("copies PSKs and never mutates caller inputs", () => {
    const name = "Noise_XXpsk3_25519_ChaChaPoly_SHA256";
    const psk = new Uint8Array(32).fill(7);
    const prologue = utf8("prologue");
    const i = HandshakeState.initialize({ protocolName: name, initiator: true, s: aliceS, psks: [psk], prologue });
    const r = HandshakeState.initialize({ protocolName: name, initiator: false, s: bobS, psks: [Uint8Array.from(psk)], prologue });
    const payload = utf8("payload");
    const m1 = i.writeMessage(payload);
    const m1copy = Uint8Array.from(m1);
    r.readMessage(m1);
    expect(toHex(m1)).toBe(toHex(m1copy));
    i.readMessage(r.writeMessage(EMPTY));
    r.readMessage(i.writeMessage(EMPTY));
    expect(toHex(psk)).toBe(toHex(new Uint8Array(32).fill(7)));
    expect(toHex(payload)).toBe(toHex(utf8("payload")));
    expect(toHex(prologue)).toBe(toHex(utf8("prologue")));
    expect(toHex(aliceS.publicKey)).not.toBe(toHex(new Uint8Array(32)));
  });

  it("never prints keys, PSKs or hashes", () => {
    const psk = new Uint8Array(32).fill(0x5a);
    const raw = p.randomBytes(32);
    const name = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
    const hs = HandshakeState.initialize({ protocolName: name, initiator: true, psks: [psk] });
    const hs2 = HandshakeState.initialize({ protocolName: XX, initiator: true, s: raw });
    for (const s of [inspect(hs, { showHidden: true, depth: 10 }), JSON.stringify({ hs, hs2 }), String(hs2), inspect(hs2)]) {
      expect(s).not.toContain(toHex(psk));
      expect(s).not.toContain(toHex(raw));
      expect(s).not.toContain("90,90,90");
    }
    expect(String(hs)).toContain("Noise_NNpsk0_25519_ChaChaPoly_SHA256");
  });
});

describe("test-only ephemeral hook", () => {
  it("is not exported from index.ts and cannot be used after the first message", () => {
    const exported = Object.keys(noiseIndex);
    expect(exported).not.toContain("setTestEphemeral");
    expect(exported).not.toContain("kSetTestEphemeral");
    expect(exported.sort()).toEqual(
      [
        "CipherState",
        "HandshakeState",
        "MAX_MESSAGE_BYTES",
        "MAX_PLAINTEXT_BYTES",
        "PATTERN_NAMES",
        "TAG_BYTES",
        "handshakePattern",
        "parseProtocolName",
        // the secure-channel transport (channel.ts)
        "MIN_INNER_FRAME_BYTES",
        "NOISE_DOMAIN",
        "noise",
        "noisePrologue",
      ].sort(),
    );
    const [i] = xxPair();
    i.writeMessage(EMPTY);
    expect(code(() => setTestEphemeral(i, new Uint8Array(32).fill(1)))).toBe("ERR_INVALID_ARGUMENT");
  });

  it("fixes the ephemeral key (vector reproduction) when set first", () => {
    const secret = new Uint8Array(32).fill(3);
    const a = HandshakeState.initialize({ protocolName: XX, initiator: true, s: aliceS });
    setTestEphemeral(a, secret);
    expect(toHex(a.writeMessage(EMPTY))).toBe(toHex(p.x25519FromSecret(secret).publicKey));
  });
});
