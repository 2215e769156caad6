/**
 * Fuzz targets for the Noise layer: `HandshakeState.readMessage` at every message of XX (1, 2, 3) and IK (1, 2),
 * fed mutations of messages from VALID transcripts, and `CipherState.decryptWithAd` on mutated transport
 * messages.
 *
 * Every case is self-contained (its regression file holds the prologue, the reader's keys and ephemeral, the
 * valid messages before the hostile one, and the hostile one): the reader replays the transcript up to the
 * message under test with a fixed ephemeral, then reads the mutant. Oracle: `ERR_NOISE_HANDSHAKE` /
 * `ERR_FRAME_TOO_LARGE` only; and once a key exists (every message but XX's first), a message that differs from
 * the valid one must never be accepted.
 *
 * @module
 * @example
 * ```ts
 * const t = await noiseTargets[2]!.create(ctx); // noise-xx-3
 * ```
 */
import fc from "fast-check";
import { nativeProvider } from "../../src/_crypto.js";
import { SealwireError } from "../../src/errors.js";
import { CipherState, HandshakeState, MAX_PLAINTEXT_BYTES } from "../../transports/noise/index.js";
import { setTestEphemeral } from "../../transports/noise/_testing.js";
import { bytesArb, cachingProvider, fcStream, fixedSecret, sameBytes } from "./fixtures.js";
import { decodeTagged, encodeTagged, type FuzzTarget, type TargetFactory } from "./harness.js";
import { mutateBytes } from "./mutate.js";
import type { Rng } from "./rng.js";

/** X25519 public keys of small order and non-canonical encodings (RFC 7748 §6.1; libsodium's blocklist). */
const LOW_ORDER_POINTS = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
  "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
  "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
].map((h) => new Uint8Array(Buffer.from(h, "hex")));

type Step = { read: Uint8Array } | { write: Uint8Array };

/** One hostile handshake message and everything needed to put the reader in front of it. */
interface NoiseCase {
  protocolName: string;
  /** The reader is the initiator. */
  initiator: boolean;
  prologue: Uint8Array;
  /** Reader's static secret; the remote static public key (IK initiator only); the reader's ephemeral secret. */
  s: Uint8Array;
  rs?: Uint8Array;
  e: Uint8Array;
  steps: Step[];
  valid: Uint8Array;
  message: Uint8Array;
  /** Use the real provider (no key-import cache). */
  real: boolean;
}

interface Transcript {
  protocolName: string;
  prologue: Uint8Array;
  sI: Uint8Array;
  sR: Uint8Array;
  eI: Uint8Array;
  eR: Uint8Array;
  payloads: Uint8Array[];
  messages: Uint8Array[];
}

const provider = cachingProvider();

function runTranscript(rng: Rng, pattern: "XX" | "IK", hash: string, payloadSizes: number[], prologue: Uint8Array): Transcript {
  const protocolName = `Noise_${pattern}_25519_ChaChaPoly_${hash}`;
  const tag = rng.int(4); // a few static key pairs
  const sI = fixedSecret(`noise-initiator-${tag}`);
  const sR = fixedSecret(`noise-responder-${tag}`);
  const eI = rng.bytes(32);
  const eR = rng.bytes(32);
  const rPub = provider.x25519FromSecret(sR).publicKey;
  const i = HandshakeState.initialize({ protocolName, initiator: true, prologue, s: sI, provider, ...(pattern === "IK" ? { rs: rPub } : {}) });
  const r = HandshakeState.initialize({ protocolName, initiator: false, prologue, s: sR, provider });
  setTestEphemeral(i, eI);
  setTestEphemeral(r, eR);
  const payloads = payloadSizes.map((n) => rng.bytes(n));
  const messages: Uint8Array[] = [];
  for (let k = 0; !(i.isComplete && r.isComplete); k++) {
    const [w, rd] = i.nextAction === "write" ? [i, r] : [r, i];
    const m = w.writeMessage(payloads[k]!);
    rd.readMessage(m);
    messages.push(m);
  }
  return { protocolName, prologue, sI, sR, eI, eR, payloads, messages };
}

/** The reader of message `k` (0-based): even messages go initiator → responder. */
function caseFor(t: Transcript, k: number, message: Uint8Array, real: boolean): NoiseCase {
  const readerIsInitiator = k % 2 === 1;
  const ik = t.protocolName.includes("_IK_");
  const steps: Step[] = [];
  for (let j = 0; j < k; j++) {
    const readerWrites = (j % 2 === 0) === readerIsInitiator; // even messages are the initiator's
    steps.push(readerWrites ? { write: t.payloads[j]! } : { read: t.messages[j]! });
  }
  return {
    protocolName: t.protocolName,
    initiator: readerIsInitiator,
    prologue: t.prologue,
    s: readerIsInitiator ? t.sI : t.sR,
    ...(ik && readerIsInitiator ? { rs: provider.x25519FromSecret(t.sR).publicKey } : {}),
    e: readerIsInitiator ? t.eI : t.eR,
    steps,
    valid: t.messages[k]!,
    message,
    real,
  };
}

function execCase(c: NoiseCase): Uint8Array {
  const p = c.real ? nativeProvider : provider;
  let hs: HandshakeState;
  try {
    hs = HandshakeState.initialize({
      protocolName: c.protocolName,
      initiator: c.initiator,
      prologue: c.prologue,
      s: c.s,
      provider: p,
      ...(c.rs ? { rs: c.rs } : {}),
    });
    setTestEphemeral(hs, c.e);
    for (const st of c.steps) {
      if ("read" in st) hs.readMessage(st.read);
      else hs.writeMessage(st.write);
    }
  } catch (e) {
    // The valid prefix must replay; if it does not, the harness (not the decoder) is wrong.
    throw new Error(`harness: the valid transcript prefix did not replay: ${(e as Error).message}`);
  }
  try {
    return hs.readMessage(c.message);
  } finally {
    hs.destroy();
  }
}

function noiseTarget(pattern: "XX" | "IK", msgNo: number): TargetFactory {
  const name = `noise-${pattern.toLowerCase()}-${msgNo}`;
  const k = msgNo - 1;
  // XX message 1 is `-> e` in the clear: nothing authenticates it, so any 32+ bytes may be accepted.
  const authenticated = !(pattern === "XX" && msgNo === 1);
  return {
    name,
    async create(ctx) {
      const transcripts: Transcript[] = [];
      for (let n = 0; n < 12; n++) {
        const hash = ["SHA256", "SHA512", "BLAKE2b"][n % 3]!;
        const sizes = Array.from({ length: 3 }, () => (ctx.rng.chance(0.5) ? 0 : ctx.rng.size(300)));
        if (n === 11) sizes[k] = MAX_PLAINTEXT_BYTES - 200; // near the 65535-byte message limit
        const prologue = n % 4 === 0 ? new Uint8Array(0) : ctx.rng.bytes(ctx.rng.size(64));
        transcripts.push(runTranscript(ctx.rng, pattern, hash, sizes, prologue));
      }
      const valid = transcripts.map((t) => t.messages[k]!);
      const allMessages = transcripts.flatMap((t) => t.messages);
      const random = fcStream(
        fc.oneof(bytesArb(200), fc.integer({ min: 0, max: 8 }).chain((i) => fc.uint8Array({ minLength: [0, 31, 32, 33, 47, 48, 64, 96, 97][i]!, maxLength: [0, 31, 32, 33, 47, 48, 64, 96, 97][i]! }))),
        ctx.seed,
        `${name}-random`,
      );
      const t: FuzzTarget<NoiseCase> = {
        name,
        limitMs: 250,
        codes: ["ERR_NOISE_HANDSHAKE", "ERR_FRAME_TOO_LARGE"],
        generate(rng) {
          const tr = rng.pick(transcripts);
          const v = tr.messages[k]!;
          const kind = rng.weighted([[8, "random"], [8, "valid"], [60, "bytes"], [10, "splice"], [8, "low-order"], [6, "huge"]] as const);
          let m: Uint8Array;
          if (kind === "random") m = random.next();
          else if (kind === "valid") m = v;
          else if (kind === "bytes") m = mutateBytes(rng, v, { others: valid, maxLength: 70_000 });
          else if (kind === "splice") m = rng.chance(0.5) ? rng.pick(allMessages) : mutateBytes(rng, rng.pick(allMessages), { others: valid });
          else if (kind === "low-order") {
            m = Uint8Array.from(v);
            // Replace the first key on the wire (an ephemeral, or IK's e) with a small-order point.
            if (m.length >= 32) m.set(rng.pick(LOW_ORDER_POINTS), 0);
          } else m = rng.bytes(rng.pick([65535, 65536, 70_000]));
          return caseFor(tr, k, m, rng.chance(0.02));
        },
        exec: (c) => execCase(c),
        check(c) {
          if (authenticated && !sameBytes(c.message, c.valid)) return `${name}: a message that differs from the valid one was accepted`;
          return undefined;
        },
        encode: (c) => encodeTagged(c),
        decode: (b) => decodeTagged<NoiseCase>(b),
      };
      return t;
    },
  };
}

/** XX messages 1–3 and IK messages 1–2. */
export const noiseTargets: TargetFactory[] = [
  noiseTarget("XX", 1),
  noiseTarget("XX", 2),
  noiseTarget("XX", 3),
  noiseTarget("IK", 1),
  noiseTarget("IK", 2),
];

// ---------------------------------------------------------------------------------------------------------------
// CipherState.decryptWithAd

interface CipherCase {
  key: Uint8Array;
  rekeys: number;
  n: bigint;
  ad: Uint8Array;
  ct: Uint8Array;
  /** The authentic message this case was derived from. */
  valid: { n: bigint; rekeys: number; ad: Uint8Array; ct: Uint8Array };
}

const NONCES = [0n, 1n, 2n, 255n, 0xffff_ffffn, 0x1_0000_0000n, 2n ** 63n, 2n ** 64n - 2n];

export const noiseCipherTarget: TargetFactory = {
  name: "noise-cipher",
  async create(ctx) {
    const samples: CipherCase[] = [];
    for (let i = 0; i < 48; i++) {
      const key = fixedSecret(`cipher-${i % 4}`);
      const rekeys = i % 8 === 7 ? 1 + ctx.rng.int(3) : 0;
      const n = i % 3 === 0 ? ctx.rng.pick(NONCES) : BigInt(ctx.rng.int(1000));
      const ad = ctx.rng.bytes(ctx.rng.chance(0.5) ? 0 : ctx.rng.size(64));
      const pt = ctx.rng.bytes(i === 47 ? MAX_PLAINTEXT_BYTES : ctx.rng.size(2000));
      const tx = new CipherState(key);
      for (let r = 0; r < rekeys; r++) tx.rekey();
      tx.setNonce(n);
      const ct = tx.encryptWithAd(ad, pt);
      tx.destroy();
      samples.push({ key, rekeys, n, ad, ct, valid: { n, rekeys, ad, ct } });
    }
    const cts = samples.map((s) => s.ct);
    const t: FuzzTarget<CipherCase> = {
      name: "noise-cipher",
      limitMs: 250,
      codes: ["ERR_NOISE_DECRYPT", "ERR_FRAME_TOO_LARGE", "ERR_NONCE_EXHAUSTED"],
      generate(rng) {
        const s = rng.pick(samples);
        const kind = rng.weighted([[6, "valid"], [62, "ct"], [12, "ad"], [8, "nonce"], [6, "rekey"], [6, "random"]] as const);
        const c: CipherCase = { ...s };
        if (kind === "ct") c.ct = mutateBytes(rng, s.ct, { others: cts, maxLength: 70_000 });
        else if (kind === "ad") c.ad = mutateBytes(rng, s.ad);
        else if (kind === "nonce") {
          const next = s.n + BigInt(rng.pick([1, -1, 2 ** 32]));
          c.n = rng.chance(0.2) ? 2n ** 64n - 1n : next < 0n ? 1n : next;
        } else if (kind === "rekey") c.rekeys = s.rekeys === 0 ? 1 : s.rekeys + rng.pick([1, -1]);
        else if (kind === "random") c.ct = rng.bytes(rng.pick([0, 1, 15, 16, 17, 65535, 65536]));
        if (c.n > 2n ** 64n - 1n) c.n = 2n ** 64n - 1n;
        return c;
      },
      exec(c) {
        const rx = new CipherState(c.key);
        try {
          for (let r = 0; r < c.rekeys; r++) rx.rekey();
          rx.setNonce(c.n);
          const before = rx.nonce;
          try {
            return rx.decryptWithAd(c.ad, c.ct);
          } catch (e) {
            // §5.1: a failed decryption leaves n unchanged.
            if (SealwireError.is(e, "ERR_NOISE_DECRYPT") && rx.nonce !== before) throw new Error("decryptWithAd moved the nonce on failure");
            throw e;
          }
        } finally {
          rx.destroy();
        }
      },
      check(c) {
        const v = c.valid;
        if (c.n !== v.n || c.rekeys !== v.rekeys || !sameBytes(c.ad, v.ad) || !sameBytes(c.ct, v.ct)) return "decryptWithAd accepted a message, AD or nonce that differs from the authentic one";
        return undefined;
      },
      encode: (c) => encodeTagged(c),
      decode: (b) => decodeTagged<CipherCase>(b),
    };
    return t;
  },
};
