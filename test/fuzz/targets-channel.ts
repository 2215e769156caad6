/**
 * Fuzz target for the Noise secure channel as deployed: a `noise()` listener (bob) over the memory transport,
 * and a hostile peer speaking the wire format directly (`transports/noise/channel.ts`, "Wire format").
 *
 * Case kinds:
 * - `first`: hostile first frames (mutated pattern byte + first handshake message, random frames), then hang up.
 *   Oracle: no connection is ever handed to the application.
 * - `untrusted`: an honest XX or IK handshake by an agent bob does not trust. Oracle: no connection accepted.
 * - `stream`: alice (trusted) completes an honest handshake, then sends a hostile sequence of transport messages:
 *   arbitrary flags (MORE with undersized chunks, CONFIRM again, unknown bits, END with a body, no header at all),
 *   frames over `maxFrameBytes`, garbage and replayed ciphertexts, with rekeying every 3 messages as the listener
 *   is configured. Oracle (differential): the frames the application reads and how the stream ends must be
 *   exactly what a model of the receive rules predicts.
 * - `honest`: the real `noise()` client sends frames; they must arrive intact (the listener is still alive).
 *
 * @module
 * @example
 * ```ts
 * const t = await noiseChannelTarget.create(ctx);
 * ```
 */
import { concatBytes } from "../../src/_bytes.js";
import { SealwireError } from "../../src/errors.js";
import type { Connection, Listener, Transport } from "../../src/transport.js";
import { TrustStore } from "../../src/trust.js";
import { memory } from "../../transports/memory.js";
import { HandshakeState, MAX_MESSAGE_BYTES, MIN_INNER_FRAME_BYTES, noise, noisePrologue } from "../../transports/noise/index.js";
import { fixedIdentity, sameBytes } from "./fixtures.js";
import { decodeTagged, encodeTagged, type FuzzTarget, type TargetFactory } from "./harness.js";
import { mutateBytes } from "./mutate.js";
import type { Rng } from "./rng.js";

const MAX_FRAME = 4096;
const REKEY_EVERY = 3;
const MIN_MORE = MIN_INNER_FRAME_BYTES - 16 - 1;
const FLAG_MORE = 0x01;
const FLAG_END = 0x02;
const FLAG_CONFIRM = 0x04;
const PROTOCOL = { XX: "Noise_XX_25519_ChaChaPoly_SHA256", IK: "Noise_IK_25519_ChaChaPoly_SHA256" } as const;
const CODE = { XX: 0x01, IK: 0x02 } as const;
const EMPTY = new Uint8Array(0);

/** One transport message of a hostile stream: authentic (`pt` = flags ‖ body, encrypted in order) or not. */
type Msg = { pt: Uint8Array } | { garbage: Uint8Array } | { replay: number };

interface ChannelCase {
  kind: "first" | "untrusted" | "stream" | "honest";
  pattern: "XX" | "IK";
  frames: Uint8Array[];
  msgs: Msg[];
  end: "END" | "cut";
}

interface AppResult {
  frames: Uint8Array[];
  code: string;
}

/** What the receiver must deliver for a stream (the rules of NoiseConnection.#readFrame and #open). */
function model(msgs: Msg[], end: "END" | "cut"): AppResult {
  const frames: Uint8Array[] = [];
  let parts: Uint8Array[] | undefined;
  let total = 0;
  for (const m of msgs) {
    if (!("pt" in m)) {
      const len = "garbage" in m ? m.garbage.length : 1;
      return { frames, code: len > MAX_MESSAGE_BYTES ? "ERR_FRAME_TOO_LARGE" : "ERR_NOISE_DECRYPT" };
    }
    const pt = m.pt;
    if (pt.length === 0) return { frames, code: "ERR_PROTOCOL" };
    const flags = pt[0]!;
    const body = pt.subarray(1);
    if (flags === 0 || flags === FLAG_MORE) {
      total += body.length;
      if (total > MAX_FRAME) return { frames, code: "ERR_FRAME_TOO_LARGE" };
      if (flags === FLAG_MORE) {
        if (body.length < MIN_MORE) return { frames, code: "ERR_PROTOCOL" };
        (parts ??= []).push(body);
        continue;
      }
      frames.push(parts ? concatBytes(...parts, body) : body);
      parts = undefined;
      total = 0;
      continue;
    }
    if (flags === FLAG_END && body.length === 0 && parts === undefined) return { frames, code: "END" };
    return { frames, code: "ERR_PROTOCOL" };
  }
  // A closing END from the plan, unless a frame is still being reassembled (then END is malformed).
  if (end === "END") return parts === undefined ? { frames, code: "END" } : { frames, code: "ERR_PROTOCOL" };
  return { frames, code: "ERR_CONNECTION_ABORTED" };
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | "timeout"> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function bodyOf(rng: Rng): Uint8Array {
  return rng.bytes(rng.pick([0, 1, MIN_MORE - 1, MIN_MORE, MIN_MORE + 1, 1000, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, rng.int(600)]));
}

function planStream(rng: Rng): Msg[] {
  const msgs: Msg[] = [];
  const n = rng.int(10);
  for (let i = 0; i < n; i++) {
    const r = rng.int(100);
    if (r < 35) msgs.push({ pt: concatBytes(Uint8Array.of(0), bodyOf(rng)) });
    else if (r < 60) msgs.push({ pt: concatBytes(Uint8Array.of(FLAG_MORE), bodyOf(rng)) });
    else if (r < 70) msgs.push({ pt: Uint8Array.of(rng.pick([FLAG_END, FLAG_CONFIRM, 0x03, 0x05, 0x08, 0x80, 0xff])) });
    else if (r < 75) msgs.push({ pt: concatBytes(Uint8Array.of(rng.pick([FLAG_END, FLAG_CONFIRM, 0x40])), rng.bytes(1 + rng.int(8))) });
    else if (r < 78) msgs.push({ pt: EMPTY });
    else if (r < 84) msgs.push({ garbage: rng.bytes(rng.pick([0, 1, 15, 16, 17, 100, MAX_MESSAGE_BYTES + 1])) });
    else if (r < 88 && msgs.length > 0) msgs.push({ replay: rng.int(msgs.length) });
    else msgs.push({ pt: concatBytes(Uint8Array.of(0), rng.bytes(rng.int(64))) });
  }
  return msgs;
}

/** Reads the next inner frame, or undefined at the end / after `ms`. */
async function nextFrame(it: AsyncIterator<Uint8Array>, ms: number): Promise<Uint8Array | undefined> {
  const r = await withTimeout(it.next().catch(() => ({ done: true as const, value: undefined })), ms);
  return r === "timeout" || r.done === true ? undefined : r.value;
}

export const noiseChannelTarget: TargetFactory = {
  name: "noise-channel",
  async create() {
    const alice = fixedIdentity("alice");
    const bob = fixedIdentity("bob");
    const eve = fixedIdentity("eve");
    const bobTrust = new TrustStore();
    bobTrust.add(alice.publicIdentity);
    bobTrust.add(bob.publicIdentity);
    const aliceTrust = new TrustStore();
    aliceTrust.add(bob.publicIdentity);
    const mem: Transport = memory();
    const server = noise({ transport: mem, identity: bob, trust: bobTrust, maxFrameBytes: MAX_FRAME, handshakeTimeoutMs: 2000, rekeyAfterMessages: REKEY_EVERY });
    const client = noise({ transport: mem, identity: alice, trust: aliceTrust, maxFrameBytes: MAX_FRAME, rekeyAfterMessages: REKEY_EVERY });
    const listener: Listener = await server.listen("mem://bob");
    const prologue = { XX: noisePrologue(mem.kind, "XX"), IK: noisePrologue(mem.kind, "IK") };

    // The application: reads every accepted connection to its end and reports what it got.
    const app = { accepted: 0, current: undefined as ReturnType<typeof deferred<AppResult>> | undefined };
    void (async () => {
      for await (const conn of listener) {
        app.accepted++;
        const d = app.current;
        void (async () => {
          const frames: Uint8Array[] = [];
          let code = "END";
          try {
            for await (const f of conn) frames.push(Uint8Array.from(f));
          } catch (e) {
            code = SealwireError.is(e) ? e.code : `NOT A SealwireError: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`;
          }
          d?.resolve({ frames, code });
        })();
      }
    })();

    // Valid first frames to mutate.
    const firsts: Uint8Array[] = [];
    for (const p of ["XX", "IK"] as const) {
      const hs = HandshakeState.initialize({ protocolName: PROTOCOL[p], initiator: true, prologue: prologue[p], s: alice.sealingKey(), ...(p === "IK" ? { rs: bob.sealPublicKey } : {}) });
      firsts.push(concatBytes(Uint8Array.of(CODE[p]), hs.writeMessage(EMPTY)));
      hs.destroy();
    }

    /** Runs a handshake as `who` over a raw inner connection; returns the transport keys, or undefined if refused. */
    async function handshake(raw: Connection, it: AsyncIterator<Uint8Array>, p: "XX" | "IK", who: typeof alice) {
      const hs = HandshakeState.initialize({ protocolName: PROTOCOL[p], initiator: true, prologue: prologue[p], s: who.sealingKey(), ...(p === "IK" ? { rs: bob.sealPublicKey } : {}) });
      try {
        raw.send(concatBytes(Uint8Array.of(CODE[p]), hs.writeMessage(EMPTY)));
        const m2 = await nextFrame(it, 2000);
        if (m2 === undefined) return undefined;
        hs.readMessage(m2);
        if (p === "XX") raw.send(hs.writeMessage(EMPTY));
        const { send, receive } = hs.splitByRole();
        let sent = 0;
        const encrypt = (pt: Uint8Array) => {
          const ct = send.encryptWithAd(EMPTY, pt);
          if (++sent % REKEY_EVERY === 0) send.rekey();
          return ct;
        };
        if (p === "XX") {
          const c = await nextFrame(it, 2000);
          if (c === undefined) return undefined;
          const pt = receive.decryptWithAd(EMPTY, c);
          if (pt.length !== 1 || pt[0] !== FLAG_CONFIRM) throw new Error("harness: the listener's confirmation is not CONFIRM");
        } else raw.send(encrypt(Uint8Array.of(FLAG_CONFIRM)));
        return { encrypt, send, receive };
      } catch (e) {
        if (SealwireError.is(e, "ERR_NOISE_HANDSHAKE") || SealwireError.is(e, "ERR_CONNECTION_CLOSED")) return undefined;
        throw e;
      } finally {
        hs.destroy();
      }
    }

    const t: FuzzTarget<ChannelCase> = {
      name: "noise-channel",
      // A case is a whole connection (handshake, up to ten messages, close, the application's read): ~2 ms.
      limitMs: 1_000,
      hangMs: 15_000,
      codes: [],
      generate(rng) {
        const pattern = rng.pick(["XX", "IK"] as const);
        const kind = rng.weighted([[25, "first"], [8, "untrusted"], [60, "stream"], [7, "honest"]] as const);
        const c: ChannelCase = { kind, pattern, frames: [], msgs: [], end: rng.chance(0.6) ? "END" : "cut" };
        if (kind === "first") {
          const n = 1 + rng.int(3);
          for (let i = 0; i < n; i++) c.frames.push(rng.chance(0.8) ? mutateBytes(rng, rng.pick(firsts), { others: firsts }) : rng.bytes(rng.size(200)));
        } else if (kind === "stream") c.msgs = planStream(rng);
        else if (kind === "honest") c.frames = Array.from({ length: 1 + rng.int(4) }, () => rng.bytes(rng.pick([0, 1, 300, MAX_FRAME])));
        return c;
      },
      async exec(c) {
        const before = app.accepted;
        const d = deferred<AppResult>();
        app.current = d;
        if (c.kind === "honest") {
          const conn = await client.dial("mem://bob", { remotePeer: "bob" });
          for (const f of c.frames) if (!conn.send(f)) await conn.drain();
          await conn.close();
          const got = await withTimeout(d.promise, 3000);
          if (got === "timeout") return { kind: c.kind, accepted: app.accepted - before, app: "timeout" };
          return { kind: c.kind, accepted: app.accepted - before, app: got };
        }
        const raw = await mem.dial("mem://bob");
        const it = raw[Symbol.asyncIterator]();
        try {
          if (c.kind === "first") {
            for (const f of c.frames) {
              try {
                raw.send(f);
              } catch {
                break; // the listener already hung up
              }
            }
            // Let the listener process what it got (a reply, or its abort) before counting acceptances.
            for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
            return { kind: c.kind, accepted: app.accepted - before };
          }
          const keys = await handshake(raw, it, c.pattern, c.kind === "untrusted" ? eve : alice);
          if (c.kind === "untrusted" || keys === undefined) return { kind: c.kind, accepted: app.accepted - before, refused: keys === undefined };
          const sentCts: Uint8Array[] = [];
          for (const m of c.msgs) {
            const ct = "pt" in m ? keys.encrypt(m.pt) : "garbage" in m ? m.garbage : (sentCts[m.replay] ?? Uint8Array.of(0));
            sentCts.push(ct);
            try {
              raw.send(ct);
            } catch {
              break; // the listener aborted (it found the stream bad): the model says where
            }
          }
          if (c.end === "END") {
            try {
              raw.send(keys.encrypt(Uint8Array.of(FLAG_END)));
            } catch {
              /* already aborted by the listener */
            }
          }
          await withTimeout(raw.close().catch(() => {}), 2000);
          const got = await withTimeout(d.promise, 3000);
          keys.send.destroy();
          keys.receive.destroy();
          return { kind: c.kind, accepted: app.accepted - before, app: got };
        } finally {
          raw.abort();
        }
      },
      check(c, r) {
        const res = r as { kind: string; accepted: number; app?: AppResult | "timeout" };
        if (c.kind === "first" || c.kind === "untrusted") {
          return res.accepted === 0 ? undefined : `a connection was handed to the application without a completed, trusted handshake (${c.kind})`;
        }
        if (res.app === "timeout") return "the application's connection did not end after the peer closed";
        if (res.app === undefined) return `the ${c.kind === "honest" ? "honest client" : "trusted peer"}'s handshake got no connection`;
        if (res.app.code.startsWith("NOT A")) return `the application read failed with ${res.app.code}`;
        const want: AppResult = c.kind === "honest" ? { frames: c.frames, code: "END" } : model(c.msgs, c.end);
        const got = res.app;
        if (got.code !== want.code || got.frames.length !== want.frames.length || !got.frames.every((f, i) => sameBytes(f, want.frames[i]!))) {
          return `the application got ${got.frames.length} frame(s) then ${got.code}; the receive rules say ${want.frames.length} frame(s) then ${want.code}`;
        }
        return undefined;
      },
      outcome(r) {
        const res = r as { kind: string; accepted: number; refused?: boolean; app?: AppResult | "timeout" };
        if (res.app === undefined) return `${res.kind}:${res.accepted > 0 ? "ACCEPTED" : "refused"}`;
        return `${res.kind}:${res.app === "timeout" ? "timeout" : res.app.code}`;
      },
      encode: (c) => encodeTagged(c),
      decode: (b) => decodeTagged<ChannelCase>(b),
      async close() {
        await listener.close();
      },
    };
    return t;
  },
};
