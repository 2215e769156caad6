/**
 * The small control protocol between agents and a hub, carried on the same connection as envelopes.
 *
 * Envelope frames are MessagePack arrays whose first element is the number 1; control frames are arrays whose
 * first element is a string naming the message. Both are decoded by the strict codec.
 *
 * - Authentication, when the transport did not already authenticate the agent (Noise sets `remotePeer`):
 *   agent → `["sw-hello", 1, agentId, nonceA]`; hub → `["sw-challenge", 1, hubId, nonceH, sigHub]`;
 *   agent → `["sw-auth", 1, sigAgent]`; hub → `["sw-ready", 1]`. Signatures are Ed25519 over
 *   `"sealwire/v1/hub-auth:" ‖ role ‖ msgpack([agentId, hubId, nonceA, nonceH])`, so each side proves its key for
 *   this exchange only. With Noise, the hub sends `["sw-ready", 1]` at once.
 * - Key statements (rotation, revocation; see statements.ts): `["sw-statement", 1, bytes]` in either direction.
 *   The hub verifies and applies what an agent sends, then relays it to every other connected agent.
 * - Delivery: the recipient agent answers every envelope the hub forwarded with `["sw-ack", 1, id]` once it
 *   processed it (delivered or refused by its own checks); the hub then tells the sender
 *   `["sw-delivered", 1, id]`. A hub refusal is `["sw-refused", 1, id, code, reason]` (queue full, unknown
 *   recipient, policy, expired in the queue, …).
 *
 * @module
 * @example
 * ```ts
 * const c = parseControl(frame); if (c?.kind === "sw-ack") …
 * ```
 */
import { concatBytes, utf8 } from "./_bytes.js";
import { decodeStrict, encode } from "./codec.js";
import { ERROR_CODES, type ErrorCode } from "./errors.js";
import { AGENT_ID_RE } from "./identity.js";
import { MAX_STATEMENT_BYTES } from "./statements.js";

const AUTH_DOMAIN = utf8("sealwire/v1/hub-auth:");

/** A parsed control frame. */
export type Control =
  | { kind: "sw-hello"; agent: string; nonce: Uint8Array }
  | { kind: "sw-challenge"; hub: string; nonce: Uint8Array; sig: Uint8Array }
  | { kind: "sw-auth"; sig: Uint8Array }
  | { kind: "sw-ready" }
  | { kind: "sw-ack"; id: string }
  | { kind: "sw-delivered"; id: string }
  | { kind: "sw-refused"; id: string; code: ErrorCode; reason: string }
  | { kind: "sw-statement"; statement: Uint8Array };

/** True if `frame` looks like a control frame (an array whose first element is a string). */
export function isControlFrame(frame: Uint8Array): boolean {
  const b0 = frame[0];
  const b1 = frame[1];
  return b0 !== undefined && b1 !== undefined && b0 >= 0x91 && b0 <= 0x95 && ((b1 >= 0xa0 && b1 <= 0xbf) || b1 === 0xd9);
}

const isBytes = (x: unknown, n: number): x is Uint8Array => x instanceof Uint8Array && x.length === n;
const isId = (x: unknown): x is string => typeof x === "string" && /^[0-9a-f]{32}$/.test(x);

/** Parses a control frame strictly; `undefined` for anything malformed. */
export function parseControl(frame: Uint8Array): Control | undefined {
  let v: unknown;
  try {
    v = decodeStrict(frame, { maxBytes: 4096, maxDepth: 1, maxItems: 8 });
  } catch {
    return undefined;
  }
  if (!Array.isArray(v) || v[1] !== 1) return undefined;
  const [kind, , a, b, c] = v as unknown[];
  switch (kind) {
    case "sw-hello":
      return v.length === 4 && typeof a === "string" && AGENT_ID_RE.test(a) && isBytes(b, 32) ? { kind, agent: a, nonce: new Uint8Array(b) } : undefined;
    case "sw-challenge":
      return v.length === 5 && typeof a === "string" && AGENT_ID_RE.test(a) && isBytes(b, 32) && isBytes(c, 64)
        ? { kind, hub: a, nonce: new Uint8Array(b), sig: new Uint8Array(c) }
        : undefined;
    case "sw-auth":
      return v.length === 3 && isBytes(a, 64) ? { kind, sig: new Uint8Array(a) } : undefined;
    case "sw-ready":
      return v.length === 2 ? { kind } : undefined;
    case "sw-ack":
    case "sw-delivered":
      return v.length === 3 && isId(a) ? { kind, id: a } : undefined;
    case "sw-refused":
      return v.length === 5 && isId(a) && typeof b === "string" && Object.hasOwn(ERROR_CODES, b) && typeof c === "string" && /^[a-z0-9_:.-]{0,64}$/.test(c)
        ? { kind, id: a, code: b as ErrorCode, reason: c }
        : undefined;
    case "sw-statement":
      return v.length === 3 && a instanceof Uint8Array && a.length <= MAX_STATEMENT_BYTES ? { kind, statement: new Uint8Array(a) } : undefined;
    default:
      return undefined;
  }
}

/** Encodes a control frame. */
export function encodeControl(c: Control): Uint8Array {
  switch (c.kind) {
    case "sw-hello":
      return encode([c.kind, 1, c.agent, c.nonce]);
    case "sw-challenge":
      return encode([c.kind, 1, c.hub, c.nonce, c.sig]);
    case "sw-auth":
      return encode([c.kind, 1, c.sig]);
    case "sw-ready":
      return encode([c.kind, 1]);
    case "sw-ack":
    case "sw-delivered":
      return encode([c.kind, 1, c.id]);
    case "sw-refused":
      return encode([c.kind, 1, c.id, c.code, c.reason]);
    case "sw-statement":
      return encode([c.kind, 1, c.statement]);
  }
}

/** The bytes each side signs during authentication. */
export function authMessage(role: "hub" | "agent", agent: string, hub: string, nonceA: Uint8Array, nonceH: Uint8Array): Uint8Array {
  return concatBytes(AUTH_DOMAIN, utf8(role), encode([agent, hub, nonceA, nonceH]));
}
