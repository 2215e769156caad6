/**
 * Noise handshake patterns (Noise Protocol Framework, revision 34, §7), written in the spec's own notation and
 * compiled once at load into token tables, plus the `pskN` modifier (§9.2).
 *
 * Covered: the one-way patterns N, K, X (§7.4), the twelve fundamental interactive patterns (§7.5) and the 23
 * deferred patterns (§7.6: NK1 … I1X1). Fallback (§10.2) and other non-standard modifiers are not.
 *
 * @module
 * @example
 * ```ts
 * const xx = handshakePattern("XX", [3]); // XXpsk3
 * xx.messages[2]; // { dir: "->", tokens: ["s", "se", "psk"] }
 * ```
 */
import { sealwireError } from "../../src/errors.js";

/** A token of a message pattern (§7.1). `psk` comes from the psk modifier (§9.2). */
export type Token = "e" | "s" | "ee" | "es" | "se" | "ss" | "psk";

/** One message pattern: who sends it (`->` initiator, `<-` responder) and its tokens in order. */
export interface MessagePattern {
  readonly dir: "->" | "<-";
  readonly tokens: readonly Token[];
}

/** A compiled handshake pattern. */
export interface HandshakePattern {
  /** The pattern part of the protocol name, e.g. `XXpsk3` or `NNpsk0+psk2`. */
  readonly name: string;
  /** The base pattern name without modifiers, e.g. `XX`. */
  readonly base: string;
  /** Pre-message keys the initiator is assumed to have sent (`-> s ...`). Only `s` occurs in these patterns. */
  readonly preInitiator: readonly "s"[];
  /** Pre-message keys the responder is assumed to have sent (`<- s ...`). */
  readonly preResponder: readonly "s"[];
  readonly messages: readonly MessagePattern[];
  /** One-way patterns (§7.4): a single message, then only initiator → responder transport messages. */
  readonly oneWay: boolean;
  /** True when a psk modifier is present; `e` tokens then also call MixKey (§9.2). */
  readonly hasPsk: boolean;
  /** Number of `psk` tokens, i.e. how many 32-byte PSKs the caller must supply. */
  readonly pskCount: number;
}

// Spec notation, transcribed from Noise rev 34 §7.4–§7.6. Lines before "..." are pre-messages.
const SPEC: Readonly<Record<string, readonly string[]>> = {
  // §7.4 one-way
  N: ["<- s", "...", "-> e, es"],
  K: ["-> s", "<- s", "...", "-> e, es, ss"],
  X: ["<- s", "...", "-> e, es, s, ss"],
  // §7.5 interactive, fundamental
  NN: ["-> e", "<- e, ee"],
  NK: ["<- s", "...", "-> e, es", "<- e, ee"],
  NX: ["-> e", "<- e, ee, s, es"],
  KN: ["-> s", "...", "-> e", "<- e, ee, se"],
  KK: ["-> s", "<- s", "...", "-> e, es, ss", "<- e, ee, se"],
  KX: ["-> s", "...", "-> e", "<- e, ee, se, s, es"],
  XN: ["-> e", "<- e, ee", "-> s, se"],
  XK: ["<- s", "...", "-> e, es", "<- e, ee", "-> s, se"],
  XX: ["-> e", "<- e, ee, s, es", "-> s, se"],
  IN: ["-> e, s", "<- e, ee, se"],
  IK: ["<- s", "...", "-> e, es, s, ss", "<- e, ee, se"],
  IX: ["-> e, s", "<- e, ee, se, s, es"],
  // §7.6 interactive, deferred
  NK1: ["<- s", "...", "-> e", "<- e, ee, es"],
  NX1: ["-> e", "<- e, ee, s", "-> es"],
  X1N: ["-> e", "<- e, ee", "-> s", "<- se"],
  X1K: ["<- s", "...", "-> e, es", "<- e, ee", "-> s", "<- se"],
  XK1: ["<- s", "...", "-> e", "<- e, ee, es", "-> s, se"],
  X1K1: ["<- s", "...", "-> e", "<- e, ee, es", "-> s", "<- se"],
  X1X: ["-> e", "<- e, ee, s, es", "-> s", "<- se"],
  XX1: ["-> e", "<- e, ee, s", "-> es, s, se"],
  X1X1: ["-> e", "<- e, ee, s", "-> es, s", "<- se"],
  K1N: ["-> s", "...", "-> e", "<- e, ee", "-> se"],
  K1K: ["-> s", "<- s", "...", "-> e, es", "<- e, ee", "-> se"],
  KK1: ["-> s", "<- s", "...", "-> e", "<- e, ee, se, es"],
  K1K1: ["-> s", "<- s", "...", "-> e", "<- e, ee, es", "-> se"],
  K1X: ["-> s", "...", "-> e", "<- e, ee, s, es", "-> se"],
  KX1: ["-> s", "...", "-> e", "<- e, ee, se, s", "-> es"],
  K1X1: ["-> s", "...", "-> e", "<- e, ee, s", "-> se, es"],
  I1N: ["-> e, s", "<- e, ee", "-> se"],
  I1K: ["<- s", "...", "-> e, es, s", "<- e, ee", "-> se"],
  IK1: ["<- s", "...", "-> e, s", "<- e, ee, se, es"],
  I1K1: ["<- s", "...", "-> e, s", "<- e, ee, es", "-> se"],
  I1X: ["-> e, s", "<- e, ee, s, es", "-> se"],
  IX1: ["-> e, s", "<- e, ee, se, s", "-> es"],
  I1X1: ["-> e, s", "<- e, ee, s", "-> se, es"],
};

const ONE_WAY = new Set(["N", "K", "X"]);
const TOKENS = new Set<string>(["e", "s", "ee", "es", "se", "ss"]);

interface BasePattern {
  readonly preInitiator: readonly "s"[];
  readonly preResponder: readonly "s"[];
  readonly messages: readonly MessagePattern[];
}

function compile(name: string, lines: readonly string[]): BasePattern {
  const split = lines.indexOf("...");
  const pre = split < 0 ? [] : lines.slice(0, split);
  const msgs = split < 0 ? lines : lines.slice(split + 1);
  const parse = (line: string): MessagePattern => {
    const dir = line.slice(0, 2);
    const tokens = line.slice(3).split(", ");
    if ((dir !== "->" && dir !== "<-") || !tokens.every((t) => TOKENS.has(t))) {
      throw new Error(`patterns.ts: bad line in ${name}: ${line}`);
    }
    return Object.freeze({ dir, tokens: Object.freeze(tokens as Token[]) });
  };
  const preMsgs = pre.map(parse);
  const preInitiator = preMsgs.filter((m) => m.dir === "->").flatMap((m) => m.tokens);
  const preResponder = preMsgs.filter((m) => m.dir === "<-").flatMap((m) => m.tokens);
  if (![...preInitiator, ...preResponder].every((t) => t === "s")) throw new Error(`patterns.ts: ${name} pre-message`);
  const messages = msgs.map(parse);
  // §7.1: message patterns alternate, starting with the initiator.
  messages.forEach((m, i) => {
    if (m.dir !== (i % 2 === 0 ? "->" : "<-")) throw new Error(`patterns.ts: ${name} does not alternate`);
  });
  return Object.freeze({
    preInitiator: Object.freeze(preInitiator as "s"[]),
    preResponder: Object.freeze(preResponder as "s"[]),
    messages: Object.freeze(messages),
  });
}

const BASE: ReadonlyMap<string, BasePattern> = new Map(Object.entries(SPEC).map(([n, l]) => [n, compile(n, l)]));

/** Names of every supported base pattern, in spec order. */
export const PATTERN_NAMES: readonly string[] = Object.freeze(Object.keys(SPEC));

/**
 * Builds a pattern from its base name and psk modifier positions (§9.2): `psk0` puts a `psk` token at the start
 * of the first message, `pskN` (N ≥ 1) at the end of the N-th message. Positions must be strictly ascending
 * (the canonical spelling, e.g. `psk0+psk2`) and within the pattern's message count.
 *
 * @throws SealwireError `ERR_INVALID_ARGUMENT` for an unknown base pattern or an invalid psk position.
 */
export function handshakePattern(base: string, pskPositions: readonly number[] = []): HandshakePattern {
  const bp = BASE.get(base);
  if (!bp) {
    throw sealwireError(
      "ERR_INVALID_ARGUMENT",
      `unsupported Noise handshake pattern "${base}"; supported: ${PATTERN_NAMES.join(", ")}`,
    );
  }
  const messages = bp.messages.map((m) => [...m.tokens]);
  let prev = -1;
  for (const n of pskPositions) {
    if (!Number.isSafeInteger(n) || n <= prev || n > messages.length) {
      throw sealwireError(
        "ERR_INVALID_ARGUMENT",
        `invalid psk modifier for pattern ${base}: positions must be ascending and at most ${messages.length}`,
      );
    }
    prev = n;
    if (n === 0) messages[0]!.unshift("psk");
    else messages[n - 1]!.push("psk");
  }
  const name = base + pskPositions.map((n, i) => `${i === 0 ? "" : "+"}psk${n}`).join("");
  return Object.freeze({
    name,
    base,
    preInitiator: bp.preInitiator,
    preResponder: bp.preResponder,
    messages: Object.freeze(
      messages.map((tokens, i) => Object.freeze({ dir: bp.messages[i]!.dir, tokens: Object.freeze(tokens) })),
    ),
    oneWay: ONE_WAY.has(base),
    hasPsk: pskPositions.length > 0,
    pskCount: pskPositions.length,
  });
}
