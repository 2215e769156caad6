/**
 * Policy: a function of one context object that allows or denies a message at a fixed point of its path.
 *
 * Stages and what the policy sees:
 * - `send` (sender, before sealing): the draft header and the plaintext (`data`);
 * - `relay` (a hub or broker on the path): the authenticated header only — it cannot decrypt;
 * - `deliver` (recipient): first `phase: "header"` after every envelope check and BEFORE decryption, then
 *   `phase: "content"` after decryption with the plaintext, before the application sees anything. For a
 *   session-mode continuation the AEAD is what authenticates the header, so its header phase runs right after
 *   the AEAD check (still on metadata only; a denied plaintext is wiped unread).
 * - At `send` in session mode, `header.id` is provisional: the envelope id is derived from the stream id and
 *   sequence number when the message is sealed, after the policy allowed it.
 *
 * A policy returns `allow()` or `deny(reason)`; a policy that throws or exceeds its time budget denies
 * (`policy_error`, `policy_timeout`). Reasons are short snake_case codes — never data. No policy configured means
 * {@link defaultPolicy}, never "allow everything".
 *
 * @module
 * @example
 * ```ts
 * const policy = allOf(piiClearance(), contentScanner(), rateLimit({ perPairPerMinute: 600 }));
 * const agent = await createAgent({ identity, trust, transport, policy });
 * ```
 */
import type { Data, EnvelopeHeader } from "./envelope.js";
import { sealwireError } from "./errors.js";
import { piiTagsOf, scanContent, type DetectorName, type Finding } from "./scanners.js";
import type { TrustEntry } from "./trust.js";
import type { VerifiedAttestation } from "./attestation.js";

/** Where on its path a message is checked. */
export type Stage = "send" | "relay" | "deliver";

/** The header a policy sees: the authenticated header (or, at `send`, the draft that will be signed). */
export type PolicyHeader = Pick<EnvelopeHeader, "from" | "to" | "type" | "tags" | "createdAt" | "ttlMs"> & {
  /** Envelope id (hex). */
  readonly id: string;
};

/** Everything a policy may look at. */
export interface PolicyContext {
  readonly stage: Stage;
  /** At `deliver`: `header` before decryption, `content` after. At `send`: `content`. At `relay`: `header`. */
  readonly phase: "header" | "content";
  readonly header: PolicyHeader;
  /** The sender's trust entry. */
  readonly sender: TrustEntry;
  /** The recipient's trust entry. */
  readonly recipient: TrustEntry;
  /** The plaintext: only at `send` and at `deliver` in the `content` phase. */
  readonly data?: Data;
  /** Envelope size in bytes (relay/deliver) or encoded payload size (send). */
  readonly size: number;
  /** A verified anonymization attestation carried by the message, if any (deliver, content phase). */
  readonly attestation?: VerifiedAttestation;
  /** Clock (ms), for rate limits. */
  readonly now: number;
}

/** A policy's answer. */
export type Decision =
  | { readonly allow: true; /** At `send`: PII tags the message must carry (auto-tagging). */ readonly addTags?: readonly string[] }
  | { readonly allow: false; readonly reason: string };

/** A policy: sync or async. */
export type Policy = (ctx: PolicyContext) => Decision | Promise<Decision>;

const ALLOW: Decision = Object.freeze({ allow: true });
/** Allows. */
export const allow = (addTags?: readonly string[]): Decision => (addTags && addTags.length ? { allow: true, addTags } : ALLOW);
/** Denies with a reason code (`[a-z0-9_:.-]`, at most 64 characters). */
export function deny(reason: string): Decision {
  return { allow: false, reason: /^[a-z0-9_:.-]{1,64}$/.test(reason) ? reason : "denied" };
}

/** Allows everything. Only for tests and for code that enforces policy elsewhere; never a default. */
export const allowAll: Policy = () => ALLOW;

/** Every policy must allow (first deny wins, in order). Auto-tags are merged. */
export function allOf(...policies: Policy[]): Policy {
  if (policies.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "allOf needs at least one policy");
  return async (ctx) => {
    let tags: string[] | undefined;
    for (const p of policies) {
      const d = await p(ctx);
      if (!isDecision(d)) return deny("policy_error");
      if (!d.allow) return d;
      if (d.addTags) tags = [...(tags ?? []), ...d.addTags];
    }
    return allow(tags);
  };
}

/** At least one policy must allow; if none does, the first deny's reason is returned. */
export function anyOf(...policies: Policy[]): Policy {
  if (policies.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "anyOf needs at least one policy");
  return async (ctx) => {
    let first: Decision | undefined;
    for (const p of policies) {
      let d: Decision;
      try {
        d = await p(ctx);
      } catch {
        d = deny("policy_error");
      }
      if (!isDecision(d)) d = deny("policy_error");
      if (d.allow) return d;
      first ??= d;
    }
    return first!;
  };
}

function isDecision(d: unknown): d is Decision {
  return typeof d === "object" && d !== null && typeof (d as { allow?: unknown }).allow === "boolean";
}

/** Default time budget of one policy evaluation. */
export const POLICY_TIMEOUT_MS = 1000;

/**
 * Evaluates `policy` with a time budget. Throwing, timing out or returning garbage all deny — a policy can never
 * fail open.
 */
export async function evaluate(policy: Policy, ctx: PolicyContext, timeoutMs = POLICY_TIMEOUT_MS): Promise<Decision> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const result = policy(ctx);
    const d = result instanceof Promise
      ? await Promise.race([
          result,
          new Promise<Decision>((resolve) => {
            timer = setTimeout(() => resolve(deny("policy_timeout")), timeoutMs);
            timer.unref?.();
          }),
        ])
      : result;
    return isDecision(d) ? d : deny("policy_error");
  } catch {
    return deny("policy_error");
  } finally {
    if (timer) clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Built-ins
// ---------------------------------------------------------------------------------------------------------------

/**
 * PII tags: the recipient must hold a clearance for every `pii:*` tag, or the message must be marked anonymized
 * and — once it can be checked, at `deliver` in the content phase — carry a valid attestation from a trusted
 * anonymizer. Before decryption (relay, deliver header phase) an anonymized message passes this rule; the
 * recipient checks the attestation before the application sees anything.
 */
export function piiClearance(): Policy {
  return (ctx) => {
    const missing = ctx.header.tags.pii.filter((t) => !ctx.recipient.clearances.includes(t));
    if (missing.length === 0) return ALLOW;
    if (!ctx.header.tags.anonymized) return deny("pii_not_cleared");
    if (ctx.stage === "send" || ctx.phase === "header") return ALLOW;
    // deliver, content phase: the attestation must be there and valid (verified by the agent before this call).
    if (!ctx.attestation) return deny("attestation_missing");
    if (ctx.attestation.anonymizer !== ctx.header.from) return deny("attestation_invalid");
    return ALLOW;
  };
}

/** Options for {@link contentScanner}. */
export interface ContentScannerOptions {
  /** What to do with PII the tags do not declare. @default "deny" */
  untaggedPii?: "deny" | "tag";
  /** What to do with secrets (API keys, tokens, private keys). @default "deny" */
  secrets?: "deny" | "allow";
  /** Restrict to these detectors. @default all */
  detectors?: readonly DetectorName[];
}

/**
 * Content scanners at `send` and at `deliver` (content phase): untagged PII is denied (`untagged_pii`) or, with
 * `untaggedPii: "tag"`, tagged at send; secrets are denied (`secret_detected`). Findings carry detector and
 * position only; the matched text is never reported.
 */
export function contentScanner(options: ContentScannerOptions = {}): Policy {
  const untagged = options.untaggedPii ?? "deny";
  const secrets = options.secrets ?? "deny";
  const scanOpts = options.detectors ? { detectors: options.detectors } : {};
  return (ctx) => {
    if (ctx.phase !== "content" || ctx.data === undefined) return ALLOW;
    let findings: Finding[];
    try {
      findings = scanContent(ctx.data, scanOpts);
    } catch {
      return deny("content_unscannable");
    }
    if (secrets === "deny" && findings.some((f) => f.kind === "secret")) return deny("secret_detected");
    const found = piiTagsOf(findings);
    const undeclared = found.filter((t) => !ctx.header.tags.pii.includes(t));
    if (undeclared.length === 0) return ALLOW;
    if (untagged === "tag" && ctx.stage === "send") return allow(undeclared);
    // An anonymized, attested message may still contain what the anonymizer chose to keep; its tags say so.
    return deny("untagged_pii");
  };
}

/** Options for {@link rateLimit}. */
export interface RateLimitOptions {
  /** Messages a minute per sender→recipient pair. */
  perPairPerMinute?: number;
  /** Messages a minute per sender and data class: keys are a PII tag (`pii:email`), `pii:*` (any PII), or a classification. */
  perClassPerMinute?: Record<string, number>;
  /** Distinct keys tracked at once (oldest windows are dropped first). @default 10_000 */
  maxKeys?: number;
}

/**
 * Fixed-window rate limits per sender→recipient pair and per data class. Stateful: one instance per node.
 * Denies with `rate_limited`. Counts at `send`, `relay`, and `deliver` in the header phase (once per message).
 */
export function rateLimit(options: RateLimitOptions): Policy {
  const pair = options.perPairPerMinute;
  const classes = Object.entries(options.perClassPerMinute ?? {});
  for (const [, n] of [["pair", pair ?? 1] as const, ...classes]) {
    if (!Number.isInteger(n) || n < 1) throw sealwireError("ERR_INVALID_ARGUMENT", "rate limits must be positive integers (messages per minute)");
  }
  const maxKeys = options.maxKeys ?? 10_000;
  const windows = new Map<string, { start: number; count: number }>();
  const hit = (key: string, limit: number, now: number): boolean => {
    const w = windows.get(key);
    if (!w || now - w.start >= 60_000) {
      if (!w && windows.size >= maxKeys) windows.delete(windows.keys().next().value!);
      windows.set(key, { start: now, count: 1 });
      return true;
    }
    if (w.count >= limit) return false;
    w.count++;
    return true;
  };
  return (ctx) => {
    if (ctx.stage === "deliver" && ctx.phase === "content") return ALLOW;
    const { from, to, tags } = ctx.header;
    if (pair !== undefined && !hit(`p|${from}|${to}`, pair, ctx.now)) return deny("rate_limited");
    for (const [cls, limit] of classes) {
      const applies =
        cls === "pii:*" ? tags.pii.length > 0 : cls.startsWith("pii:") ? tags.pii.includes(cls) : tags.classification === cls;
      if (applies && !hit(`c|${from}|${cls}`, limit, ctx.now)) return deny("rate_limited");
    }
    return ALLOW;
  };
}

/** Denies messages larger than `maxBytes` (`too_large`). */
export function sizeLimit(maxBytes: number): Policy {
  if (!Number.isInteger(maxBytes) || maxBytes < 1) throw sealwireError("ERR_INVALID_ARGUMENT", "sizeLimit needs a positive integer");
  return (ctx) => (ctx.size > maxBytes ? deny("too_large") : ALLOW);
}

/** Who may talk to whom: `rule(sender, recipient)` decides from trust entries (roles). Denies with `not_allowed`. */
export function allowPairs(rule: (sender: TrustEntry, recipient: TrustEntry) => boolean): Policy {
  return (ctx) => (rule(ctx.sender, ctx.recipient) ? ALLOW : deny("not_allowed"));
}

/**
 * The default when no policy is configured: PII clearances and content scanners (untagged PII and secrets
 * denied).
 */
export function defaultPolicy(): Policy {
  return allOf(piiClearance(), contentScanner());
}
