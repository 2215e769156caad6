/**
 * Signed key statements that any party may relay and every party verifies for itself:
 *
 * - **Rotation**: agent `id` replaces key `oldKid` by the public identity `next`. Signed by the old key (so only
 *   the holder of the current key can rotate it) AND by the new key (proof of possession). Peers accept envelopes
 *   under the old kid for an overlap window, then refuse them with `ERR_KEY_RETIRED`.
 * - **Revocation**: key `kid` of agent `id` must no longer be trusted. Signed by that agent itself (a compromised
 *   key can always be used to revoke itself), or by an administrator: a trusted agent with the role `admin`.
 *
 * Wire: MessagePack arrays, `["sw-rotation", 1, id, oldKid, next, ts, sigOld, sigNew]` and
 * `["sw-revocation", 1, id, kid, by, byKid, reason, ts, sig]`; signatures are Ed25519 over a domain prefix and the
 * MessagePack encoding of the statement's fields.
 *
 * @module
 * @example
 * ```ts
 * const { identity: next, statement } = rotateIdentity(current);
 * trust.applyStatement(statement); // on every node that receives it
 * ```
 */
import { concatBytes, fromBase64url, utf8 } from "./_bytes.js";
import { decodeStrict, encode } from "./codec.js";
import { sealwireError } from "./errors.js";
import { AGENT_ID_RE, Identity, parsePublicIdentity, type PublicIdentity } from "./identity.js";

const ROTATION_DOMAIN = utf8("sealwire/v1/rotation:");
const REVOCATION_DOMAIN = utf8("sealwire/v1/revocation:");
/** Role whose holders may revoke other agents' keys. */
export const ADMIN_ROLE = "admin";
/** Statements older than this are refused (a replayed old statement cannot roll keys back). */
export const STATEMENT_MAX_AGE_MS = 24 * 60 * 60_000;
/** Default time the old key of a rotation stays valid. */
export const DEFAULT_OVERLAP_MS = 10 * 60_000;
/** Largest encoded statement. */
export const MAX_STATEMENT_BYTES = 2048;

/** A parsed rotation statement (signatures not yet verified). */
export interface RotationStatement {
  readonly kind: "rotation";
  readonly id: string;
  readonly oldKid: string;
  readonly next: PublicIdentity;
  readonly ts: number;
  readonly sigOld: Uint8Array;
  readonly sigNew: Uint8Array;
  readonly bytes: Uint8Array;
}
/** A parsed revocation statement (signature not yet verified). */
export interface RevocationStatement {
  readonly kind: "revocation";
  readonly id: string;
  readonly kid: string;
  readonly by: string;
  readonly byKid: string;
  readonly reason: string;
  readonly ts: number;
  readonly sig: Uint8Array;
  readonly bytes: Uint8Array;
}
export type KeyStatement = RotationStatement | RevocationStatement;

/** Bytes a rotation's two signatures cover. */
export function rotationSignedBytes(id: string, oldKid: string, next: PublicIdentity, ts: number): Uint8Array {
  return concatBytes(ROTATION_DOMAIN, encode([id, oldKid, next.kid, next.signPub, next.sealPub, ts]));
}
/** Bytes a revocation's signature covers. */
export function revocationSignedBytes(id: string, kid: string, by: string, byKid: string, reason: string, ts: number): Uint8Array {
  return concatBytes(REVOCATION_DOMAIN, encode([id, kid, by, byKid, reason, ts]));
}

/**
 * Makes a fresh key pair for `current`'s agent and the rotation statement that announces it. The caller keeps
 * `current` open as long as envelopes sealed to the old key may still arrive (the overlap window), then closes it.
 */
export function rotateIdentity(current: Identity, now = Date.now()): { identity: Identity; statement: Uint8Array } {
  const next = Identity.generate(current.id, { provider: current.provider });
  const msg = rotationSignedBytes(current.id, current.kid, next.publicIdentity, now);
  const statement = encode(["sw-rotation", 1, current.id, current.kid, { ...next.publicIdentity }, now, current.sign(msg), next.sign(msg)]);
  return { identity: next, statement };
}

/** A revocation of `subject` (an agent id and kid) signed by `signer` (the agent itself, or an admin). */
export function createRevocation(signer: Identity, subject: { id: string; kid: string }, reason = "revoked", now = Date.now()): Uint8Array {
  if (!/^[a-z0-9_:.-]{1,64}$/.test(reason)) throw sealwireError("ERR_INVALID_ARGUMENT", "reason must be a short code [a-z0-9_:.-]{1,64}");
  const msg = revocationSignedBytes(subject.id, subject.kid, signer.id, signer.kid, reason, now);
  return encode(["sw-revocation", 1, subject.id, subject.kid, signer.id, signer.kid, reason, now, signer.sign(msg)]);
}

const isKid = (x: unknown): x is string => typeof x === "string" && /^[0-9a-f]{16}$/.test(x);
const isSig = (x: unknown): x is Uint8Array => x instanceof Uint8Array && x.length === 64;
const isTs = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;

/** Parses a statement from untrusted bytes. Throws ERR_STATEMENT_INVALID; does not verify signatures. */
export function parseStatement(bytes: Uint8Array): KeyStatement {
  const bad = () => sealwireError("ERR_STATEMENT_INVALID", "malformed key statement");
  let v: unknown;
  try {
    v = decodeStrict(bytes, { maxBytes: MAX_STATEMENT_BYTES, maxDepth: 2, maxItems: 32 });
  } catch {
    throw bad();
  }
  if (!Array.isArray(v) || v[1] !== 1) throw bad();
  const copy = Uint8Array.from(bytes);
  if (v[0] === "sw-rotation" && v.length === 8) {
    const [, , id, oldKid, nextRaw, ts, sigOld, sigNew] = v as unknown[];
    if (typeof id !== "string" || !AGENT_ID_RE.test(id) || !isKid(oldKid) || !isTs(ts) || !isSig(sigOld) || !isSig(sigNew)) throw bad();
    let next: PublicIdentity;
    try {
      next = parsePublicIdentity(nextRaw);
    } catch {
      throw bad();
    }
    if (next.id !== id || next.kid === oldKid) throw bad();
    return { kind: "rotation", id, oldKid, next, ts, sigOld: new Uint8Array(sigOld), sigNew: new Uint8Array(sigNew), bytes: copy };
  }
  if (v[0] === "sw-revocation" && v.length === 9) {
    const [, , id, kid, by, byKid, reason, ts, sig] = v as unknown[];
    if (
      typeof id !== "string" || !AGENT_ID_RE.test(id) || !isKid(kid) || typeof by !== "string" || !AGENT_ID_RE.test(by) || !isKid(byKid) ||
      typeof reason !== "string" || !/^[a-z0-9_:.-]{1,64}$/.test(reason) || !isTs(ts) || !isSig(sig)
    ) {
      throw bad();
    }
    return { kind: "revocation", id, kid, by, byKid, reason, ts, sig: new Uint8Array(sig), bytes: copy };
  }
  throw bad();
}

/** Decodes a base64url public key field. @internal */
export const keyBytes = (b64: string): Uint8Array => fromBase64url(b64, 32, "public key");
