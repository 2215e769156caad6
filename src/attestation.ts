/**
 * Anonymization attestations: a signed statement by an agent with the `anonymizer` role that binds the digest of
 * the envelope it received, the digest of the output it produced, and the name of the policy it applied.
 *
 * A recipient without clearance for a message's PII tags may receive it only if it is marked anonymized, carries
 * an attestation that verifies, and the anonymizer is trusted (and is the sender). The attestation travels inside
 * the sealed payload, next to the exact output bytes it covers, so relays learn nothing from it.
 *
 * Signature: Ed25519 over `"sealwire/v1/attestation:" ‖ msgpack([1, anonymizer, kid, inputId, inputDigest,
 * outputDigest, policy, ts])`; `outputDigest = SHA-256("sealwire/v1/attestation-output:" ‖ output bytes)`.
 *
 * @module
 * @example
 * ```ts
 * // inside the anonymizer
 * await agent.send("writer", masked, { tags: { pii: msg.tags.pii, anonymized: true },
 *   attestation: { input: msg, policy: "mask-emails-v1" } });
 * ```
 */
import { z } from "zod";
import { concatBytes, toHex, utf8 } from "./_bytes.js";
import { encode } from "./codec.js";
import { sealwireError } from "./errors.js";
import { AGENT_ID_RE, type Identity } from "./identity.js";
import type { TrustStore } from "./trust.js";

const SIG_DOMAIN = utf8("sealwire/v1/attestation:");
const OUT_DOMAIN = utf8("sealwire/v1/attestation-output:");
/** Role an agent must hold in the trust store for its attestations to count. */
export const ANONYMIZER_ROLE = "anonymizer";
/** Attestations older than this are stale. */
export const ATTESTATION_MAX_AGE_MS = 10 * 60_000;

const bytesOf = (n: number) => z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length === n);

/** Wire schema of an attestation (inside the payload). */
export const attestationSchema = z.strictObject({
  v: z.literal(1),
  by: z.string().regex(AGENT_ID_RE),
  kid: z.string().regex(/^[0-9a-f]{16}$/),
  in: z.string().regex(/^[0-9a-f]{32}$/),
  ind: bytesOf(32),
  out: bytesOf(32),
  pol: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/),
  ts: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  sig: bytesOf(64),
});
/** An attestation as carried. */
export type Attestation = z.infer<typeof attestationSchema>;

/** What a verified attestation establishes. */
export interface VerifiedAttestation {
  /** Agent id of the anonymizer that signed it. */
  readonly anonymizer: string;
  /** Policy the anonymizer applied. */
  readonly policy: string;
  /** Envelope id and SHA-256 digest (hex) of the input it received. */
  readonly inputId: string;
  readonly inputDigest: string;
  /** SHA-256 digest (hex) of the output bytes. */
  readonly outputDigest: string;
  readonly createdAt: number;
}

function signedBytes(a: Omit<Attestation, "sig">): Uint8Array {
  return concatBytes(SIG_DOMAIN, encode([1, a.by, a.kid, a.in, a.ind, a.out, a.pol, a.ts]));
}

/** Digest of output bytes as an attestation binds them. */
export function outputDigest(identity: Pick<Identity, "provider">, output: Uint8Array): Uint8Array {
  return identity.provider.hash("sha256", OUT_DOMAIN, output);
}

/** Creates an attestation by `anonymizer` for `output` derived from the input envelope (`inputId`, `inputDigest`). */
export function createAttestation(
  anonymizer: Identity,
  input: { id: string; digest: string },
  output: Uint8Array,
  policy: string,
  now = Date.now(),
): Attestation {
  if (typeof input?.id !== "string" || !/^[0-9a-f]{32}$/.test(input.id) || typeof input.digest !== "string" || !/^[0-9a-f]{64}$/.test(input.digest)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "attestation input must be a received message (id and digest)");
  }
  if (typeof policy !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/.test(policy)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "attestation policy must be a name of 1-64 characters [A-Za-z0-9._:-]");
  }
  const body = {
    v: 1 as const,
    by: anonymizer.id,
    kid: anonymizer.kid,
    in: input.id,
    ind: new Uint8Array(Buffer.from(input.digest, "hex")),
    out: outputDigest(anonymizer, output),
    pol: policy,
    ts: now,
  };
  return { ...body, sig: anonymizer.sign(signedBytes(body)) };
}

/**
 * Verifies an attestation carried with `output`. Returns what it establishes, or throws ERR_ATTESTATION_INVALID
 * (one code; the reason is in the message, never the data).
 */
export function verifyAttestation(
  trust: TrustStore,
  raw: unknown,
  output: Uint8Array,
  options: { now?: number; maxAgeMs?: number; skewMs?: number } = {},
): VerifiedAttestation {
  const bad = (why: string) => sealwireError("ERR_ATTESTATION_INVALID", `anonymization attestation refused: ${why}`);
  const parsed = attestationSchema.safeParse(raw, { reportInput: false });
  if (!parsed.success) throw bad("malformed");
  const a = parsed.data;
  const entry = trust.get(a.by);
  if (!entry || entry.revoked) throw bad("anonymizer not trusted");
  if (!entry.roles.includes(ANONYMIZER_ROLE)) throw bad(`signer lacks the "${ANONYMIZER_ROLE}" role`);
  if (entry.identity.kid !== a.kid) throw bad("unknown anonymizer key");
  const p = trust.provider;
  if (!p.ed25519Verify(p.ed25519Public(entry.signPublicKey), signedBytes(a), a.sig)) throw bad("bad signature");
  const digest = p.hash("sha256", OUT_DOMAIN, output);
  if (toHex(digest) !== toHex(a.out)) throw bad("output does not match");
  const now = options.now ?? Date.now();
  if (now - a.ts > (options.maxAgeMs ?? ATTESTATION_MAX_AGE_MS)) throw bad("stale");
  if (a.ts - now > (options.skewMs ?? 30_000)) throw bad("from the future");
  return Object.freeze({
    anonymizer: a.by,
    policy: a.pol,
    inputId: a.in,
    inputDigest: toHex(a.ind),
    outputDigest: toHex(a.out),
    createdAt: a.ts,
  });
}
