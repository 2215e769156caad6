/**
 * Redaction: remove what the scanners recognise, and registered key material, from text before it reaches a log.
 *
 * - {@link redact} replaces every secret and PII span {@link scanContent} finds with `[REDACTED:<detector>]`, and
 *   every occurrence of a registered secret's hex, base64 or base64url form with `[REDACTED:registered_secret]`.
 * - {@link registerSecret} / {@link unregisterSecret} manage the registry of key material (identity seeds, session
 *   keys, HMAC keys) that must never appear in a log line, whatever a detector thinks of it.
 * - {@link createRedactingLogger} wraps a pino-compatible logger so that every string in every argument (message,
 *   merged object, nested values, error messages and stacks) goes through {@link redact}. Without a logger it is
 *   silent: no output and no redaction work.
 *
 * **What the registry stores, and why** (issue 3, "registered key material"). To recognise a key in text we must
 * keep *something* derived from it. Keeping the encodings themselves (hex/base64 strings) would put extra, long-lived
 * copies of every key on the JavaScript heap — strings cannot be wiped, so they would outlive `unregisterSecret` and
 * show up in heap snapshots and core dumps. Instead the registry keeps, per secret, two HMAC-SHA256 digests under a
 * random per-process registry key: one of the lower-case hex form and one of the unpadded base64url form (standard
 * base64 and padding are normalised to that before hashing, and hex is lower-cased, so all common spellings match).
 * The encodings are built byte by byte in `Uint8Array`s and wiped right after hashing; the digests are wiped on
 * unregister. Someone who dumps the process memory gets the registry key and the digests, which let them *confirm*
 * a guessed key but not recover one (keys are 128+ bits of entropy, so that is no help) — and they could read the
 * key itself from wherever it is used anyway.
 *
 * The price is CPU: recognising a keyed hash means hashing every candidate window — each run of hex or base64
 * characters at least as long as a registered encoding, at every offset. A call hashes at most
 * {@link MAX_REGISTRY_WINDOWS} windows; candidate runs beyond that budget are redacted unchecked
 * (`[REDACTED:unchecked]`), so a log line never escapes redaction by being long (fail closed). Ordinary log lines
 * need a handful of hashes. Not recognised: a key embedded in base64 at a non-aligned byte offset (its encoding is
 * different), and the raw bytes of a key.
 *
 * @module
 * @example
 * ```ts
 * import { redact, registerSecret, createRedactingLogger } from "./redact.js";
 * const forget = registerSecret(sessionKey);
 * redact(`key=${toHex(sessionKey)} mail=alice@example.com`); // "key=[REDACTED:registered_secret] mail=[REDACTED:email]"
 * const log = createRedactingLogger(pino()); // or createRedactingLogger() for silence
 * log.info({ peer: "bob", auth: "Bearer abc123def456ghi789" }, "dialled"); // auth is redacted
 * forget();
 * ```
 */
import { equalBytes, utf8, wipe } from "./_bytes.js";
import { defaultProvider } from "./_crypto.js";
import { SealwireError, sealwireError } from "./errors.js";
import { DETECTOR_NAMES, scanContent } from "./scanners.js";

/** Replacement text for a span found by `label` (a detector name, `registered_secret`, `unchecked`, …). */
const mark = (label: string): string => `[REDACTED:${label}]`;

// ---------------------------------------------------------------------------------------------------------------
// Registry of key material
// ---------------------------------------------------------------------------------------------------------------

/** Shortest secret accepted: below 8 bytes a hex/base64 form collides with ordinary ids and words. */
export const MIN_SECRET_BYTES = 8;
/** Longest secret accepted (keys, not documents). */
export const MAX_SECRET_BYTES = 1024;
/** Most distinct secrets registered at once. */
export const MAX_REGISTERED_SECRETS = 1024;
/** Most candidate windows hashed per {@link redact} call; beyond it candidate runs are redacted unchecked. */
export const MAX_REGISTRY_WINDOWS = 20_000;

const REGISTRY_DOMAIN = utf8("sealwire/v1/redact-registry:");

interface Entry {
  /** HMAC of the lower-case hex form. */
  hex: Uint8Array;
  /** HMAC of the unpadded base64url form. */
  b64: Uint8Array;
  hexLen: number;
  b64Len: number;
  refs: number;
}

const registry: Entry[] = [];
let registryKey: Uint8Array | null = null;

function key(): Uint8Array {
  registryKey ??= defaultProvider.randomBytes(32);
  return registryKey;
}

const HEX = utf8("0123456789abcdef");
const B64URL = utf8("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_");

/** Lower-case hex as ASCII bytes, never as a string (strings cannot be wiped). */
function hexBytes(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(b.length * 2);
  for (let i = 0; i < b.length; i++) {
    out[2 * i] = HEX[b[i]! >> 4]!;
    out[2 * i + 1] = HEX[b[i]! & 15]!;
  }
  return out;
}

/** Unpadded base64url (RFC 4648 §5) as ASCII bytes. */
function b64urlBytes(b: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil((b.length * 4) / 3));
  let o = 0;
  for (let i = 0; i < b.length; i += 3) {
    const n = (b[i]! << 16) | ((b[i + 1] ?? 0) << 8) | (b[i + 2] ?? 0);
    const chars = Math.min(4, Math.ceil(((b.length - i) * 4) / 3));
    for (let k = 0; k < chars; k++) out[o++] = B64URL[(n >> (18 - 6 * k)) & 63]!;
  }
  return out;
}

function digest(ascii: Uint8Array): Uint8Array {
  return defaultProvider.hmac("sha256", key(), REGISTRY_DOMAIN, ascii);
}

function entryFor(bytes: Uint8Array): Entry {
  const h = hexBytes(bytes);
  const b = b64urlBytes(bytes);
  try {
    return { hex: digest(h), b64: digest(b), hexLen: h.length, b64Len: b.length, refs: 1 };
  } finally {
    wipe(h, b);
  }
}

function findEntry(e: Entry): number {
  return registry.findIndex((r) => r.hexLen === e.hexLen && equalBytes(r.hex, e.hex) && equalBytes(r.b64, e.b64));
}

/**
 * Registers key material so that {@link redact} removes its hex, base64 and base64url forms (any letter case for
 * hex, with or without padding). Registering the same bytes twice counts twice. Only keyed digests are kept (see the
 * module notes); the caller keeps ownership of `bytes`, which are not modified.
 *
 * @returns a function that unregisters this registration (idempotent).
 * @throws `ERR_INVALID_ARGUMENT` if `bytes` is not a Uint8Array of 8–1024 bytes; `ERR_QUEUE_FULL` when 1024
 *   distinct secrets are registered.
 */
export function registerSecret(bytes: Uint8Array): () => void {
  checkSecret(bytes);
  const e = entryFor(bytes);
  const i = findEntry(e);
  if (i >= 0) {
    registry[i]!.refs++;
    wipe(e.hex, e.b64);
  } else {
    if (registry.length >= MAX_REGISTERED_SECRETS) {
      wipe(e.hex, e.b64);
      throw sealwireError("ERR_QUEUE_FULL", `redaction registry is full (${MAX_REGISTERED_SECRETS}); unregister keys you no longer use`);
    }
    registry.push(e);
  }
  // The closure holds a private copy of the digests only (never the key), to find its entry again.
  const hexD = Uint8Array.from(e.hex);
  const b64D = Uint8Array.from(e.b64);
  const hexLen = e.hexLen;
  let done = false;
  return () => {
    if (done) return;
    done = true;
    release({ hex: hexD, b64: b64D, hexLen, b64Len: 0, refs: 0 });
    wipe(hexD, b64D);
  };
}

/**
 * Drops one registration of `bytes` (the digests are wiped when the last one goes).
 * @returns false if `bytes` was not registered.
 */
export function unregisterSecret(bytes: Uint8Array): boolean {
  checkSecret(bytes);
  const e = entryFor(bytes);
  try {
    return release(e);
  } finally {
    wipe(e.hex, e.b64);
  }
}

/** Drops every registration and the registry key (for shutdown and tests). */
export function unregisterAllSecrets(): void {
  for (const e of registry) wipe(e.hex, e.b64);
  registry.length = 0;
  wipe(registryKey);
  registryKey = null;
}

/**
 * True if `text` contains a registered secret in any recognised form (or a candidate run too long to check within
 * the hashing budget — fail closed). Used by the audit trail to refuse metadata that carries key material.
 */
export function containsRegisteredSecret(text: string): boolean {
  return typeof text === "string" && registeredSpans(text).length > 0;
}

/** Number of distinct registered secrets (for diagnostics; never the secrets). */
export function registeredSecretCount(): number {
  return registry.length;
}

function release(e: Entry): boolean {
  const i = findEntry(e);
  if (i < 0) return false;
  const r = registry[i]!;
  if (--r.refs === 0) {
    wipe(r.hex, r.b64);
    registry.splice(i, 1);
  }
  return true;
}

function checkSecret(bytes: unknown): asserts bytes is Uint8Array {
  if (!(bytes instanceof Uint8Array) || bytes.length < MIN_SECRET_BYTES || bytes.length > MAX_SECRET_BYTES) {
    throw sealwireError(
      "ERR_INVALID_ARGUMENT",
      `secret must be a Uint8Array of ${MIN_SECRET_BYTES}–${MAX_SECRET_BYTES} bytes`,
    );
  }
}

interface Span {
  start: number;
  end: number;
  label: string;
}

const HEX_RUN_RE = /[0-9A-Fa-f]+/g;
const B64_RUN_RE = /[A-Za-z0-9+/_-]+/g;

/** Window of `text` as normalised ASCII bytes: lower-case for hex, url alphabet for base64. */
function windowBytes(text: string, start: number, len: number, hex: boolean): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) {
    let c = text.charCodeAt(start + i);
    if (hex) {
      if (c >= 65 && c <= 70) c += 32; // A-F → a-f
    } else if (c === 43) c = 45; // '+' → '-'
    else if (c === 47) c = 95; // '/' → '_'
    out[i] = c;
  }
  return out;
}

/** Spans of registered secrets in `text`, plus unchecked candidate runs once the hashing budget is spent. */
function registeredSpans(text: string): Span[] {
  if (registry.length === 0) return [];
  const spans: Span[] = [];
  let budget = MAX_REGISTRY_WINDOWS;
  for (const hex of [true, false]) {
    const lens = [...new Set(registry.map((r) => (hex ? r.hexLen : r.b64Len)))].sort((a, b) => a - b);
    const minLen = lens[0]!;
    for (const m of text.matchAll(hex ? HEX_RUN_RE : B64_RUN_RE)) {
      const run = m[0];
      if (run.length < minLen) continue;
      let runEnd = m.index + run.length;
      if (!hex) while (text[runEnd] === "=" && runEnd - m.index - run.length < 2) runEnd++;
      const windows = lens.reduce((n, L) => n + Math.max(0, run.length - L + 1), 0);
      if (windows > budget) {
        budget = 0;
        spans.push({ start: m.index, end: runEnd, label: "unchecked" });
        continue;
      }
      budget -= windows;
      for (const L of lens) {
        for (let off = 0; off + L <= run.length; off++) {
          const w = windowBytes(text, m.index + off, L, hex);
          const d = digest(w);
          wipe(w);
          const hit = registry.some((r) => (hex ? r.hexLen === L && equalBytes(r.hex, d) : r.b64Len === L && equalBytes(r.b64, d)));
          if (hit) {
            // Padding belongs to the encoding: swallow it when the window ends the run.
            const end = off + L === run.length ? runEnd : m.index + off + L;
            spans.push({ start: m.index + off, end, label: "registered_secret" });
          }
        }
      }
    }
  }
  return spans;
}

// ---------------------------------------------------------------------------------------------------------------
// redact()
// ---------------------------------------------------------------------------------------------------------------

/** Label priority when spans overlap: registered key material first, then detectors in DETECTOR_NAMES order. */
function rank(label: string): number {
  if (label === "registered_secret") return -1;
  const i = (DETECTOR_NAMES as readonly string[]).indexOf(label);
  return i >= 0 ? i : DETECTOR_NAMES.length;
}

/**
 * Returns `text` with every secret and PII span the scanners recognise, and every registered secret, replaced by
 * `[REDACTED:<detector>]` (overlapping spans are merged under the most specific label). Text above the scanner's
 * 1 MiB limit is replaced whole by `[REDACTED:too_large]`: it could not be checked, so none of it is let through.
 *
 * @throws `ERR_INVALID_ARGUMENT` if `text` is not a string.
 */
export function redact(text: string): string {
  if (typeof text !== "string") throw sealwireError("ERR_INVALID_ARGUMENT", "redact: text must be a string");
  if (text.length === 0) return text;
  const spans: Span[] = [];
  try {
    for (const f of scanContent(text)) spans.push({ start: f.start, end: f.end, label: f.detector });
  } catch (err) {
    if (SealwireError.is(err, "ERR_CONTENT_TOO_LARGE")) return mark("too_large");
    throw err;
  }
  spans.push(...registeredSpans(text));
  if (spans.length === 0) return text;
  spans.sort((a, b) => a.start - b.start || rank(a.label) - rank(b.label));
  let out = "";
  let pos = 0;
  let i = 0;
  while (i < spans.length) {
    const first = spans[i]!;
    let end = first.end;
    let label = first.label;
    for (i++; i < spans.length && spans[i]!.start < end; i++) {
      end = Math.max(end, spans[i]!.end);
      if (rank(spans[i]!.label) < rank(label)) label = spans[i]!.label;
    }
    out += text.slice(pos, first.start) + mark(label);
    pos = end;
  }
  return out + text.slice(pos);
}

// ---------------------------------------------------------------------------------------------------------------
// Logger
// ---------------------------------------------------------------------------------------------------------------

/** One pino-style log method: `(obj, msg?, ...args)` or `(msg, ...args)`. */
export type LogFn = (objOrMsg: unknown, msg?: unknown, ...args: unknown[]) => void;

/** The subset of pino's logger sealwire uses. Any level may be missing (then that level is dropped). */
export interface LoggerLike {
  info?: LogFn;
  warn?: LogFn;
  error?: LogFn;
  debug?: LogFn;
  /** pino's child loggers; bindings are redacted like everything else. */
  child?(bindings: Record<string, unknown>): LoggerLike;
}

/** A logger whose every argument is redacted before it reaches the wrapped logger. */
export interface RedactingLogger {
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  debug: LogFn;
  child(bindings: Record<string, unknown>): RedactingLogger;
}

/** Deepest nesting copied into a log record; deeper values become `[Truncated]`. */
export const MAX_LOG_DEPTH = 8;
/** Most array items / object keys copied per level; the rest become one `[Truncated]` marker. */
export const MAX_LOG_ITEMS = 200;

/**
 * A redacted, plain-data copy of `value` for logging: strings (and object keys) through {@link redact}; byte arrays
 * replaced by `[REDACTED:bytes(n)]` (binary in a log is too often key material to let through); errors reduced to
 * `{ type, code, message, stack, cause }`, redacted; objects with `toJSON` (key handles print `<redacted>`) by
 * their JSON form; cycles `[Circular]`; functions and symbols dropped. Never throws.
 */
export function redactValue(value: unknown): unknown {
  return copy(value, 0, new WeakSet());
}

function copy(v: unknown, depth: number, seen: WeakSet<object>): unknown {
  try {
    if (typeof v === "string") return redact(v);
    if (typeof v === "bigint") return redact(String(v));
    if (v === null || typeof v !== "object") return typeof v === "function" || typeof v === "symbol" ? undefined : v;
    if (v instanceof Uint8Array || ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
      return mark(`bytes(${(v as ArrayBufferLike).byteLength})`);
    }
    if (seen.has(v)) return "[Circular]";
    if (depth >= MAX_LOG_DEPTH) return "[Truncated]";
    seen.add(v);
    if (v instanceof Error) {
      const e = v as Error & { code?: unknown; envelopeId?: unknown; cause?: unknown };
      const out: Record<string, unknown> = { type: e.name, message: redact(String(e.message)) };
      if (e.code !== undefined) out["code"] = copy(e.code, depth + 1, seen);
      if (e.envelopeId !== undefined) out["envelopeId"] = copy(e.envelopeId, depth + 1, seen);
      if (typeof e.stack === "string") out["stack"] = redact(e.stack);
      if (e.cause !== undefined) out["cause"] = copy(e.cause, depth + 1, seen);
      return out;
    }
    if (v instanceof Date) return Number.isNaN(v.getTime()) ? null : v.toISOString();
    if (Array.isArray(v)) return copyList(v, depth, seen);
    if (v instanceof Set) return copyList([...v], depth, seen);
    if (v instanceof Map) return copyList([...v], depth, seen);
    const toJSON = (v as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === "function") return copy(toJSON.call(v), depth + 1, seen);
    const out: Record<string, unknown> = {};
    const keys = Object.keys(v);
    for (const k of keys.slice(0, MAX_LOG_ITEMS)) {
      const c = copy((v as Record<string, unknown>)[k], depth + 1, seen);
      if (c !== undefined) out[redact(k)] = c;
    }
    if (keys.length > MAX_LOG_ITEMS) out["[Truncated]"] = keys.length - MAX_LOG_ITEMS;
    return out;
  } catch {
    // A getter or toJSON threw: say so without echoing anything.
    return "[Unloggable]";
  }
}

function copyList(items: unknown[], depth: number, seen: WeakSet<object>): unknown[] {
  const out = items.slice(0, MAX_LOG_ITEMS).map((x) => copy(x, depth + 1, seen) ?? null);
  if (items.length > MAX_LOG_ITEMS) out.push("[Truncated]");
  return out;
}

const LEVELS = ["info", "warn", "error", "debug"] as const;
const noop: LogFn = () => {};

/**
 * Wraps `logger` so that every argument of every call is redacted ({@link redactValue}) first. Without a logger
 * the result is silent and does no work. A wrapped logger that throws is ignored: logging never breaks the caller.
 */
export function createRedactingLogger(logger?: LoggerLike): RedactingLogger {
  if (logger === undefined || logger === null) {
    const silent: RedactingLogger = { info: noop, warn: noop, error: noop, debug: noop, child: () => silent };
    return silent;
  }
  if (typeof logger !== "object" && typeof logger !== "function") {
    throw sealwireError("ERR_INVALID_ARGUMENT", "createRedactingLogger: logger must be a pino-compatible object");
  }
  const wrap = (level: (typeof LEVELS)[number]): LogFn => {
    const fn = logger[level];
    if (typeof fn !== "function") return noop;
    return (...args: unknown[]) => {
      try {
        (fn as (...a: unknown[]) => void).apply(logger, args.map(redactValue));
      } catch {
        // logging is best effort
      }
    };
  };
  return {
    info: wrap("info"),
    warn: wrap("warn"),
    error: wrap("error"),
    debug: wrap("debug"),
    child(bindings: Record<string, unknown>): RedactingLogger {
      if (typeof logger.child !== "function") return createRedactingLogger(logger);
      const safe = redactValue(bindings);
      return createRedactingLogger(logger.child(safe !== null && typeof safe === "object" ? (safe as Record<string, unknown>) : {}));
    },
  };
}
