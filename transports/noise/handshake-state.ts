/**
 * The Noise `HandshakeState` (Noise Protocol Framework rev 34 §5.3), driven by a parsed protocol name: any
 * pattern in `patterns.ts`, psk modifiers (§9), DH 25519, ChaChaPoly, SHA256 / SHA512 / BLAKE2b.
 *
 * Life cycle: `initialize` → alternate `writeMessage` / `readMessage` as the pattern dictates → `isComplete` →
 * `split()` once → use the two {@link CipherState}s. Fail closed:
 * - Every message, written or read, is bounded by the 65535-byte Noise limit (§3).
 * - Any failure (bad message, wrong turn, oversize, DH rejecting a public key, a call out of order) throws a
 *   {@link SealwireError}, wipes the state and leaves it unusable: every later call throws. Noise §5: "If any
 *   error is signaled by the DECRYPT() or DH() functions then the handshake has failed and the HandshakeState is
 *   deleted"; we apply that to every error.
 * - Secrets (ck, handshake key, ephemeral private key, an imported raw static key, PSK copies, DH outputs) are
 *   wiped on completion / `split()`, on failure and on `destroy()`. JavaScript cannot promise no other copy
 *   exists (OpenSSL frees key objects when they are collected); see SECURITY.md.
 *
 * @module
 * @example
 * ```ts
 * const protocolName = "Noise_XX_25519_ChaChaPoly_SHA256";
 * const alice = HandshakeState.initialize({ protocolName, initiator: true, s: aliceKey });
 * const bob = HandshakeState.initialize({ protocolName, initiator: false, s: bobKey });
 * bob.readMessage(alice.writeMessage(new Uint8Array(0)));   // -> e
 * alice.readMessage(bob.writeMessage(new Uint8Array(0)));   // <- e, ee, s, es
 * bob.readMessage(alice.writeMessage(new Uint8Array(0)));   // -> s, se
 * const [c1, c2] = alice.split(); // c1: alice -> bob, c2: bob -> alice
 * ```
 */
import {
  defaultProvider,
  type CryptoProvider,
  type X25519PrivateKey,
  type X25519PublicKey,
} from "../../src/_crypto.js";
import { assertBytes, concatBytes, wipe } from "../../src/_bytes.js";
import { SealwireError, sealwireError, type ErrorCode } from "../../src/errors.js";
import { CipherState, MAX_MESSAGE_BYTES } from "./cipher-state.js";
import type { HandshakePattern, MessagePattern } from "./patterns.js";
import { parseProtocolName, type NoiseProtocol } from "./protocol-name.js";
import { SymmetricState } from "./symmetric-state.js";

const DH_BYTES = 32;
const PSK_BYTES = 32;
const TAG_BYTES = 16;

/**
 * Internal hook that lets the test-vector runner fix the ephemeral key (`_testing.ts`). Deliberately not exported
 * from `index.ts`: production code always draws a fresh ephemeral from the provider.
 */
export const kSetTestEphemeral: unique symbol = Symbol("sealwire/noise/test-ephemeral");

/** Options for {@link HandshakeState.initialize}. */
export interface HandshakeInit {
  /** A Noise protocol name, e.g. `Noise_XX_25519_ChaChaPoly_SHA256` or `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b`. */
  protocolName: string;
  /** True for the party that sends the first handshake message. */
  initiator: boolean;
  /** Bytes both parties must agree on, bound into the handshake hash (§6). @default empty */
  prologue?: Uint8Array | undefined;
  /**
   * The local static key pair: an X25519 private key handle from the same provider (not destroyed by this object),
   * or a raw 32-byte secret (imported, and the import destroyed with this object; handles are faster). Required
   * exactly when the pattern uses the local static key.
   */
  s?: X25519PrivateKey | Uint8Array | undefined;
  /**
   * The remote party's static public key (32 bytes), required exactly when the pattern has it as a pre-message
   * (the `K`/`I`-side of IK, NK, KK, …). Refused for patterns that transmit it (XX, …): check
   * {@link HandshakeState.remoteStaticKey} after the handshake instead.
   */
  rs?: Uint8Array | undefined;
  /** 32-byte pre-shared keys, one per `psk` modifier, in order of use (§9). Copied; wipe your own copies. */
  psks?: readonly Uint8Array[] | undefined;
  /** The crypto provider for every primitive. @default defaultProvider */
  provider?: CryptoProvider | undefined;
}

type Status = "handshake" | "complete" | "split" | "failed" | "destroyed";

/** Codes that describe the caller's own mistake and are passed through unchanged; the rest become ERR_NOISE_HANDSHAKE. */
const CALLER_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "ERR_INVALID_ARGUMENT",
  "ERR_FRAME_TOO_LARGE",
  "ERR_CRYPTO_PROVIDER",
  "ERR_CLOSED",
]);

function noiseError(message: string): SealwireError {
  return sealwireError("ERR_NOISE_HANDSHAKE", message);
}

/** The HandshakeState object of Noise §5.3. */
export class HandshakeState {
  /** The parsed protocol (pattern, hash, …). */
  readonly protocol: NoiseProtocol;
  /** True for the initiator. */
  readonly initiator: boolean;

  readonly #p: CryptoProvider;
  readonly #pattern: HandshakePattern;
  #ss: SymmetricState;
  #s: X25519PrivateKey | null;
  readonly #ownsS: boolean;
  #e: X25519PrivateKey | null = null;
  #rs: Uint8Array | null = null;
  #rsKey: X25519PublicKey | null = null;
  #reKey: X25519PublicKey | null = null;
  #psks: Uint8Array[];
  #pskIndex = 0;
  #msgIndex = 0;
  #status: Status = "handshake";

  private constructor(init: HandshakeInit) {
    if (init === null || typeof init !== "object") {
      throw sealwireError("ERR_INVALID_ARGUMENT", "HandshakeState.initialize expects an options object");
    }
    const protocol = parseProtocolName(init.protocolName);
    if (typeof init.initiator !== "boolean") {
      throw sealwireError("ERR_INVALID_ARGUMENT", "initiator must be true or false");
    }
    const pattern = protocol.pattern;
    const initiator = init.initiator;
    const p = init.provider ?? defaultProvider;
    const prologue = init.prologue ?? new Uint8Array(0);
    assertBytes(prologue, "prologue");

    const myDir = initiator ? "->" : "<-";
    const myPre = initiator ? pattern.preInitiator : pattern.preResponder;
    const theirPre = initiator ? pattern.preResponder : pattern.preInitiator;
    const needS = myPre.includes("s") || pattern.messages.some((m) => m.dir === myDir && m.tokens.includes("s"));
    const needRs = theirPre.includes("s");
    const role = initiator ? "initiator" : "responder";
    if (needS !== (init.s !== undefined)) {
      throw sealwireError(
        "ERR_INVALID_ARGUMENT",
        needS
          ? `pattern ${pattern.name} needs the ${role}'s static key: pass s`
          : `pattern ${pattern.name} does not use the ${role}'s static key: do not pass s`,
      );
    }
    if (needRs !== (init.rs !== undefined)) {
      throw sealwireError(
        "ERR_INVALID_ARGUMENT",
        needRs
          ? `pattern ${pattern.name} needs the remote static public key in advance: pass rs`
          : `pattern ${pattern.name} does not take rs in advance (the key is sent in the handshake or not at all); ` +
              "check remoteStaticKey after the handshake instead",
      );
    }
    const psks = init.psks ?? [];
    if (!Array.isArray(psks) || psks.length !== pattern.pskCount) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `pattern ${pattern.name} needs exactly ${pattern.pskCount} psks`);
    }
    psks.forEach((k, i) => assertBytes(k, `psks[${i}]`, PSK_BYTES));
    let rs: Uint8Array | null = null;
    if (init.rs !== undefined) {
      assertBytes(init.rs, "rs", DH_BYTES);
      rs = Uint8Array.from(init.rs);
    }
    let s: X25519PrivateKey | null = null;
    let ownsS = false;
    if (init.s instanceof Uint8Array) {
      assertBytes(init.s, "s", DH_BYTES);
      s = p.x25519FromSecret(init.s);
      ownsS = true;
    } else if (init.s !== undefined) {
      const pub = (init.s as { publicKey?: unknown } | null)?.publicKey;
      if (!(pub instanceof Uint8Array) || pub.length !== DH_BYTES) {
        throw sealwireError(
          "ERR_INVALID_ARGUMENT",
          "s must be an X25519 private key handle from the provider or 32 secret bytes",
        );
      }
      s = init.s;
    }

    this.protocol = protocol;
    this.initiator = initiator;
    this.#p = p;
    this.#pattern = pattern;
    this.#s = s;
    this.#ownsS = ownsS;
    this.#psks = psks.map((k) => Uint8Array.from(k));
    this.#ss = new SymmetricState(protocol, p);
    try {
      if (rs) {
        this.#rsKey = p.x25519Public(rs);
        this.#rs = rs;
      }
      // §5.3 Initialize(): MixHash(prologue), then the pre-message public keys, initiator's first.
      this.#ss.mixHash(prologue);
      for (const _ of pattern.preInitiator) this.#ss.mixHash(initiator ? s!.publicKey : rs!);
      for (const _ of pattern.preResponder) this.#ss.mixHash(initiator ? rs! : s!.publicKey);
    } catch (e) {
      this.#wipe("failed");
      throw e;
    }
  }

  /**
   * Initialize(...) (§5.3). Validates every option against the pattern (missing or superfluous keys, PSK count
   * and sizes) and throws `ERR_INVALID_ARGUMENT` on a mismatch or an unsupported protocol name.
   */
  static initialize(init: HandshakeInit): HandshakeState {
    return new HandshakeState(init);
  }

  /** The protocol name this handshake runs. */
  get protocolName(): string {
    return this.protocol.name;
  }

  /** True once every handshake message was written or read; then call {@link HandshakeState.split}. */
  get isComplete(): boolean {
    return this.#status === "complete" || this.#status === "split";
  }

  /**
   * What this party must do next: `"write"`, `"read"`, `"split"` (handshake complete), or `"done"` (split
   * called, failed or destroyed).
   */
  get nextAction(): "write" | "read" | "split" | "done" {
    if (this.#status === "complete") return "split";
    if (this.#status !== "handshake") return "done";
    return this.#pattern.messages[this.#msgIndex]!.dir === (this.initiator ? "->" : "<-") ? "write" : "read";
  }

  /**
   * The remote party's static public key (a copy): given as `rs`, or received and authenticated during the
   * handshake. `null` while unknown, and after `destroy()`. Before `isComplete` a received key is not yet
   * confirmed by the rest of the handshake: decide on trust only after completion. `null` after a failure.
   */
  get remoteStaticKey(): Uint8Array | null {
    return this.#rs ? Uint8Array.from(this.#rs) : null;
  }

  /**
   * GetHandshakeHash() (§5.2): a copy of `h`. After completion it uniquely identifies the session (channel
   * binding, §11.2); it stays available after `split()` until `destroy()`.
   */
  getHandshakeHash(): Uint8Array {
    this.#assertUsable();
    return this.#ss.getHandshakeHash();
  }

  /**
   * WriteMessage(payload, message_buffer) (§5.3): processes this party's next message pattern and returns the
   * message (at most 65535 bytes).
   * @throws `ERR_FRAME_TOO_LARGE` if the message would exceed the limit, `ERR_NOISE_HANDSHAKE` when it is not
   * this party's turn or a DH fails, `ERR_INVALID_ARGUMENT` for a non-Uint8Array payload. The state is dead then.
   */
  writeMessage(payload: Uint8Array): Uint8Array {
    this.#assertUsable();
    try {
      const msg = this.#turn("->", "<-", "write");
      assertBytes(payload, "payload");
      if (payload.length > MAX_MESSAGE_BYTES) throw tooLarge();
      const ss = this.#ss;
      const parts: Uint8Array[] = [];
      for (const t of msg.tokens) {
        switch (t) {
          case "e": {
            // Normally a fresh key; the test hook may have set one before the first write.
            this.#e ??= this.#p.x25519Generate();
            const pub = this.#e.publicKey;
            parts.push(pub);
            ss.mixHash(pub);
            if (this.#pattern.hasPsk) ss.mixKey(pub); // §9.2
            break;
          }
          case "s":
            parts.push(ss.encryptAndHash(this.#s!.publicKey));
            break;
          case "psk":
            ss.mixKeyAndHash(this.#psks[this.#pskIndex++]!);
            break;
          default:
            this.#dhToken(t);
        }
      }
      parts.push(ss.encryptAndHash(payload));
      const out = parts.length === 1 ? parts[0]! : concatBytes(...parts);
      if (out.length > MAX_MESSAGE_BYTES) throw tooLarge();
      this.#advance();
      return out;
    } catch (e) {
      throw this.#failWith(e);
    }
  }

  /**
   * ReadMessage(message, payload_buffer) (§5.3): processes the peer's next message and returns its payload.
   * @throws `ERR_NOISE_HANDSHAKE` for anything wrong with the message (one opaque code: truncated, tampered,
   * invalid public key, out of turn), `ERR_FRAME_TOO_LARGE` above 65535 bytes. The state is dead then.
   */
  readMessage(message: Uint8Array): Uint8Array {
    this.#assertUsable();
    try {
      const msg = this.#turn("<-", "->", "read");
      assertBytes(message, "message");
      if (message.length > MAX_MESSAGE_BYTES) throw tooLarge();
      const ss = this.#ss;
      let off = 0;
      const take = (n: number): Uint8Array => {
        if (message.length - off < n) throw noiseError("Noise handshake message is truncated");
        const b = message.subarray(off, off + n);
        off += n;
        return b;
      };
      for (const t of msg.tokens) {
        switch (t) {
          case "e": {
            const re = Uint8Array.from(take(DH_BYTES));
            // One-time key: keep it out of the provider's import cache of long-lived peer keys.
            this.#reKey = this.#p.x25519Public(re, false);
            ss.mixHash(re);
            if (this.#pattern.hasPsk) ss.mixKey(re); // §9.2
            break;
          }
          case "s": {
            const rs = ss.decryptAndHash(take(ss.hasKey() ? DH_BYTES + TAG_BYTES : DH_BYTES));
            this.#rsKey = this.#p.x25519Public(rs);
            this.#rs = rs;
            break;
          }
          case "psk":
            ss.mixKeyAndHash(this.#psks[this.#pskIndex++]!);
            break;
          default:
            this.#dhToken(t);
        }
      }
      const payload = ss.decryptAndHash(message.subarray(off));
      this.#advance();
      return payload;
    } catch (e) {
      throw this.#failWith(e);
    }
  }

  /**
   * Split() (§5.2), once, after completion: `[c1, c2]` in the spec's order. c1 encrypts initiator → responder and
   * c2 responder → initiator, whichever party calls it; so the initiator sends with c1 and receives with c2, the
   * responder the reverse (see {@link HandshakeState.splitByRole}). For one-way patterns (N, K, X) only c1 may be
   * used (§7.4); destroy c2. The caller owns both and should `destroy()` them when the session ends. Wipes ck
   * and the ephemeral key; keeps `h`, which §5 allows for channel binding.
   */
  split(): [CipherState, CipherState] {
    this.#assertUsable();
    try {
      if (this.#status !== "complete") {
        throw noiseError(
          this.#status === "split" ? "split() was already called" : "split() called before the handshake completed",
        );
      }
      const pair = this.#ss.split();
      this.#status = "split";
      return pair;
    } catch (e) {
      throw this.#failWith(e);
    }
  }

  /**
   * {@link HandshakeState.split} with the pair assigned by role: `send` encrypts to the peer, `receive` decrypts
   * from it. Refused (`ERR_INVALID_ARGUMENT`) for one-way patterns, where only the initiator sends.
   */
  splitByRole(): { send: CipherState; receive: CipherState } {
    if (this.#pattern.oneWay && this.#status === "complete") {
      throw this.#failWith(
        sealwireError("ERR_INVALID_ARGUMENT", "one-way patterns have a single direction: use split() and c1 only"),
      );
    }
    const [c1, c2] = this.split();
    return this.initiator ? { send: c1, receive: c2 } : { send: c2, receive: c1 };
  }

  /** Wipes every secret this object holds; later calls throw `ERR_CLOSED`. Idempotent. */
  destroy(): void {
    if (this.#status !== "destroyed") this.#wipe("destroyed");
  }

  /** Redacted: never prints keys or hashes. */
  toJSON(): string {
    return `HandshakeState <redacted>`;
  }
  /** Redacted: never prints keys or hashes. */
  toString(): string {
    return `HandshakeState(${this.protocol.name}, ${this.initiator ? "initiator" : "responder"}, ${this.#status})`;
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /**
   * Test vectors only (see `_testing.ts`): imports `secret` as the ephemeral key this party will send at its
   * `e` token. Allowed once, before the handshake has used an ephemeral key.
   */
  [kSetTestEphemeral](secret: Uint8Array): void {
    this.#assertUsable();
    if (this.#e !== null || this.#msgIndex !== 0) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "the test ephemeral must be set before the first message");
    }
    assertBytes(secret, "ephemeral secret", DH_BYTES);
    this.#e = this.#p.x25519FromSecret(secret);
  }

  // -------------------------------------------------------------------------------------------------------------

  /** ee / es / se / ss (§5.3): MixKey(DH(local, remote)), with `es` meaning initiator-e × responder-s. */
  #dhToken(t: "ee" | "es" | "se" | "ss"): void {
    const i = this.initiator;
    const local = t === "ee" ? this.#e : t === "ss" ? this.#s : (t === "es") === i ? this.#e : this.#s;
    const remote = t === "ee" ? this.#reKey : t === "ss" ? this.#rsKey : (t === "es") === i ? this.#rsKey : this.#reKey;
    if (!local || !remote) throw noiseError("Noise handshake is missing a key for a DH token");
    const dh = this.#p.x25519(local, remote);
    try {
      this.#ss.mixKey(dh);
    } finally {
      wipe(dh);
    }
  }

  /** Returns the current message pattern if its direction matches this party's `op`, else throws. */
  #turn(initiatorDir: "->" | "<-", responderDir: "->" | "<-", op: string): MessagePattern {
    if (this.#status !== "handshake") {
      throw noiseError(`${op}Message() called after the handshake completed; use split()`);
    }
    const msg = this.#pattern.messages[this.#msgIndex]!;
    if (msg.dir !== (this.initiator ? initiatorDir : responderDir)) {
      throw noiseError(`${op}Message() called out of turn for pattern ${this.#pattern.name}`);
    }
    return msg;
  }

  #advance(): void {
    if (++this.#msgIndex < this.#pattern.messages.length) return;
    this.#status = "complete";
    // Every DH is done: the ephemeral key, our imported static key and the PSKs are no longer needed.
    this.#e?.destroy();
    this.#e = null;
    this.#releaseStatic();
    wipe(...this.#psks);
    this.#psks = [];
  }

  #assertUsable(): void {
    if (this.#status === "destroyed") throw sealwireError("ERR_CLOSED", "this HandshakeState was destroyed");
    if (this.#status === "failed") throw noiseError("this Noise handshake already failed; start a new one");
  }

  /** Kills the state and maps `e` to the error to throw: caller mistakes keep their code, the rest is opaque. */
  #failWith(e: unknown): SealwireError {
    this.#wipe("failed");
    if (SealwireError.is(e) && (e.code === "ERR_NOISE_HANDSHAKE" || CALLER_CODES.has(e.code))) return e;
    return noiseError(
      "Noise handshake failed (malformed or unauthentic message, or an invalid public key); start a new one",
    );
  }

  #releaseStatic(): void {
    if (this.#ownsS) this.#s?.destroy();
    this.#s = null;
  }

  #wipe(status: "failed" | "destroyed"): void {
    this.#status = status;
    this.#ss.destroy();
    this.#e?.destroy();
    this.#e = null;
    this.#releaseStatic();
    wipe(...this.#psks);
    this.#psks = [];
    this.#reKey = null;
    this.#rsKey = null;
    this.#rs = null;
  }
}

function tooLarge(): SealwireError {
  return sealwireError(
    "ERR_FRAME_TOO_LARGE",
    `Noise handshake messages are limited to ${MAX_MESSAGE_BYTES} bytes (Noise §3); send a smaller payload`,
  );
}
