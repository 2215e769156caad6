/**
 * Aggregated accounting of refused, evicted and timed-out connections, for the audit trail (issue 9: "each abuse is
 * rate-limited and audited").
 *
 * A flood produces thousands of refusals a second; one audit record each would turn the flood into an audit-log
 * flood (disk, fsyncs, and the hub awaiting each append). So the transports report each refusal to an `onRefusal`
 * callback, and a {@link RefusalCounter} adds them up per `(reason, source)` over a window (10 s by default) and
 * hands the totals to `onFlush` once per window, as records that map 1:1 onto the audit event
 * `refused_connections` (`reason`, `source`, `count`, `windowMs`).
 *
 * **Bounded.** At most `maxKeys` distinct `(reason, source)` pairs are kept per window; refusals from further
 * sources are added up under the source `"*"` for their reason (at most {@link MAX_OVERFLOW_REASONS} such reasons,
 * then under reason `"other"`), so thousands of distinct (or spoofed) sources cost a bounded number of records and
 * bounded memory, and the totals stay exact. The timer runs only while something is pending, and is unref'd (it
 * never keeps a process alive).
 *
 * **Never carries secrets.** A refusal is a reason code and a network address, nothing else: no key bytes, no
 * payload. Sources are reduced to `[A-Za-z0-9.:[\]_-]{1,64}` (anything else becomes `_`, longer ones are cut), so a
 * hostile string cannot reach the audit log through them; a missing source is recorded as `"unknown"`. Reasons must
 * be short snake_case codes (`ws_max_connections`); anything else is counted as `"other"`.
 *
 * **Never throws into its caller.** `record` is called synchronously from the transports' hot paths; it does not
 * throw. A throwing or rejecting `onFlush` is reported to `onFlushError` (default: a process warning) and the
 * counter carries on.
 *
 * @module
 * @example
 * ```ts
 * import { RefusalCounter } from "./refusal-counter.js";
 * const refusals = new RefusalCounter({
 *   onFlush: (records) => {
 *     for (const r of records) void audit.append({ event: "refused_connections", ...r }).catch(() => {});
 *   },
 * });
 * const transport = noise({ transport: webSocket({ onRefusal: refusals.onRefusal }), identity, trust, onRefusal: refusals.onRefusal });
 * // ... at shutdown, before the audit log closes:
 * await refusals.close(); // flushes what is pending
 * ```
 */

/** Default aggregation window: 10 s. */
export const DEFAULT_REFUSAL_WINDOW_MS = 10_000;
/** Longest window accepted (the audit event's `windowMs` is 1 to 3,600,000). */
export const MAX_REFUSAL_WINDOW_MS = 3_600_000;
/** Default number of distinct `(reason, source)` pairs kept per window before sources are aggregated under `"*"`. */
export const DEFAULT_REFUSAL_MAX_KEYS = 256;
/** Largest `maxKeys` accepted. */
export const MAX_REFUSAL_MAX_KEYS = 100_000;
/** Distinct reasons aggregated under the overflow source per window; beyond them, reason `"other"` is used. */
export const MAX_OVERFLOW_REASONS = 32;
/** The source under which refusals beyond `maxKeys` distinct pairs are added up. */
export const REFUSAL_OVERFLOW_SOURCE = "*";
/** The source recorded when the transport did not know the remote address. */
export const REFUSAL_UNKNOWN_SOURCE = "unknown";
/** The reason recorded for malformed reasons, and for overflow beyond {@link MAX_OVERFLOW_REASONS} reasons. */
export const REFUSAL_OTHER_REASON = "other";

/** Reason codes: short snake_case (`ws_handshake_timeout`), a subset of the audit log's reason syntax. */
export const REFUSAL_REASON_PATTERN = /^[a-z][a-z0-9_]{0,63}$/;
/** Sources after sanitising: the audit event's source syntax, plus the overflow marker `"*"`. */
export const REFUSAL_SOURCE_PATTERN = /^(?:\*|[A-Za-z0-9.:[\]_-]{1,64})$/;
const SOURCE_MAX_CHARS = 64;
const SOURCE_BAD_CHARS = /[^A-Za-z0-9.:[\]_-]/g;

/**
 * What a transport reports for each refusal (its `onRefusal` option). Called synchronously; it must not block.
 * Transports wrap the call, so a throwing (or rejecting) callback never disturbs them.
 */
export interface Refusal {
  /** A short snake_case code naming what was refused and why (`noise_handshake_timeout`). */
  reason: string;
  /** The remote network address (an IP address, without port), when the transport knows it. */
  source?: string | undefined;
}

/** One aggregated record: `count` refusals for `reason` from `source` within the last `windowMs`. */
export interface RefusalRecord {
  /** The reason code (`[a-z][a-z0-9_]{0,63}`). */
  reason: string;
  /** The sanitised source (`[A-Za-z0-9.:[\]_-]{1,64}`), `"unknown"`, or `"*"` for the overflow of many sources. */
  source: string;
  /** How many refusals, at least 1. */
  count: number;
  /** Length of the window these counts cover, in ms (1 to 3,600,000; shorter than `windowMs` for a final flush). */
  windowMs: number;
}

/** Options for {@link RefusalCounter}. */
export interface RefusalCounterInit {
  /**
   * Receives the records of each window, once per window in which something was refused, and on
   * {@link RefusalCounter.flush} / {@link RefusalCounter.close}. Never called with an empty array. May return a
   * promise; a rejection goes to `onFlushError`.
   */
  onFlush: (records: RefusalRecord[]) => unknown;
  /**
   * Aggregation window in ms (1 to 3,600,000). The window opens with the first refusal after a flush.
   * @default 10000
   */
  windowMs?: number | undefined;
  /**
   * Distinct `(reason, source)` pairs kept per window (1 to 100,000); refusals from further sources are added up
   * under source `"*"`.
   * @default 256
   */
  maxKeys?: number | undefined;
  /**
   * Told when `onFlush` throws or rejects (the records of that window are then lost; the counter carries on).
   * @default a process warning with code `SEALWIRE_REFUSAL_FLUSH`
   */
  onFlushError?: ((err: unknown) => void) | undefined;
  /** Monotonic clock in ms, for tests. @default performance.now */
  now?: (() => number) | undefined;
}

interface Entry {
  readonly reason: string;
  readonly source: string;
  count: number;
}

/** Reduces a source to the audit syntax: disallowed characters become `_`, at most 64 characters. */
export function sanitizeRefusalSource(source: unknown): string {
  if (typeof source !== "string" || source.length === 0) return REFUSAL_UNKNOWN_SOURCE;
  const s = source.length > SOURCE_MAX_CHARS ? source.slice(0, SOURCE_MAX_CHARS) : source;
  return s.replace(SOURCE_BAD_CHARS, "_");
}

function invalid(message: string): TypeError {
  // A caller's configuration mistake (style §15): TypeError/RangeError naming the argument.
  return new TypeError(message);
}

/**
 * Adds up refusals per `(reason, source)` over a window and flushes them as {@link RefusalRecord}s (see the module
 * notes). Pass {@link RefusalCounter.onRefusal} as the transports' `onRefusal` option.
 */
export class RefusalCounter {
  readonly #onFlush: (records: RefusalRecord[]) => unknown;
  readonly #onFlushError: (err: unknown) => void;
  readonly #windowMs: number;
  readonly #maxKeys: number;
  readonly #now: () => number;
  /** Pending counts; keys are `reason \n source`. */
  #entries = new Map<string, Entry>();
  /** Pairs with a real source in #entries (the overflow pairs are not counted against maxKeys). */
  #keys = 0;
  /** Overflow pairs (source `*`) in #entries. */
  #overflowReasons = 0;
  #windowStart = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  /**
   * @throws TypeError if `onFlush` is missing or an option is out of range.
   */
  constructor(init: RefusalCounterInit) {
    if (typeof init !== "object" || init === null) throw invalid("RefusalCounter(init): pass { onFlush }");
    if (typeof init.onFlush !== "function") throw invalid("RefusalCounter(init): onFlush must be a function");
    if (init.onFlushError !== undefined && typeof init.onFlushError !== "function") {
      throw invalid("RefusalCounter(init): onFlushError must be a function");
    }
    if (init.now !== undefined && typeof init.now !== "function") throw invalid("RefusalCounter(init): now must be a function");
    const int = (v: unknown, name: string, max: number, fallback: number): number => {
      if (v === undefined) return fallback;
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > max) {
        throw new RangeError(`RefusalCounter(init): ${name} must be an integer from 1 to ${max}`);
      }
      return v;
    };
    this.#windowMs = int(init.windowMs, "windowMs", MAX_REFUSAL_WINDOW_MS, DEFAULT_REFUSAL_WINDOW_MS);
    this.#maxKeys = int(init.maxKeys, "maxKeys", MAX_REFUSAL_MAX_KEYS, DEFAULT_REFUSAL_MAX_KEYS);
    this.#onFlush = init.onFlush;
    this.#onFlushError =
      init.onFlushError ??
      ((err: unknown) => {
        const code = (err as { code?: unknown } | null)?.code;
        // The error itself is not quoted: only its code, which never carries records or addresses.
        process.emitWarning(
          `sealwire: a RefusalCounter's onFlush failed${typeof code === "string" && /^[A-Z][A-Z0-9_]{1,63}$/.test(code) ? ` (${code})` : ""}; that window's refusal counts were not recorded`,
          { code: "SEALWIRE_REFUSAL_FLUSH", type: "SealwireWarning" },
        );
      });
    this.#now = init.now ?? (() => performance.now());
  }

  /** The aggregation window in ms. */
  get windowMs(): number {
    return this.#windowMs;
  }

  /** Distinct `(reason, source)` pairs pending (overflow pairs included). */
  get pendingKeys(): number {
    return this.#entries.size;
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Counts one refusal. Never throws; ignored after {@link close}. Bound, so it can be passed as a transport's
   * `onRefusal` option directly.
   */
  readonly onRefusal = (r: Refusal): void => {
    this.record(r);
  };

  /** Counts one refusal (see {@link onRefusal}). Never throws; ignored after {@link close}. */
  record(r: Refusal): void {
    if (this.#closed) return;
    try {
      const rawReason = typeof r === "object" && r !== null ? r.reason : undefined;
      let reason = typeof rawReason === "string" && REFUSAL_REASON_PATTERN.test(rawReason) ? rawReason : REFUSAL_OTHER_REASON;
      let source = sanitizeRefusalSource(typeof r === "object" && r !== null ? r.source : undefined);
      let key = `${reason}\n${source}`;
      let entry = this.#entries.get(key);
      if (entry === undefined && this.#keys >= this.#maxKeys) {
        // Too many distinct sources this window: add this one up under "*" for its reason (exact totals, bounded keys).
        source = REFUSAL_OVERFLOW_SOURCE;
        key = `${reason}\n${source}`;
        entry = this.#entries.get(key);
        if (entry === undefined && this.#overflowReasons >= MAX_OVERFLOW_REASONS) {
          reason = REFUSAL_OTHER_REASON;
          key = `${reason}\n${source}`;
          entry = this.#entries.get(key);
        }
      }
      if (entry !== undefined) {
        entry.count++;
        return;
      }
      if (source === REFUSAL_OVERFLOW_SOURCE) this.#overflowReasons++;
      else this.#keys++;
      this.#entries.set(key, { reason, source, count: 1 });
      if (this.#timer === undefined) {
        this.#windowStart = this.#now();
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          void this.flush();
        }, this.#windowMs);
        this.#timer.unref?.();
      }
    } catch {
      // Counting is best effort: a refusal must never fail because it could not be counted.
    }
  }

  /**
   * Hands what is pending to `onFlush` now (if anything is) and starts a new window. The records' `windowMs` is
   * the time since the window opened (at least 1, at most the configured window). The promise resolves once
   * `onFlush` (and the promise it returned, if any) has settled; it never rejects (failures go to `onFlushError`),
   * so a shutdown can `await` it before closing the audit log.
   */
  flush(): Promise<void> {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#entries.size === 0) return Promise.resolve();
    const elapsed = Math.ceil(this.#now() - this.#windowStart);
    const windowMs = Math.min(this.#windowMs, Math.max(1, Number.isFinite(elapsed) ? elapsed : this.#windowMs));
    const records: RefusalRecord[] = [];
    for (const e of this.#entries.values()) records.push({ reason: e.reason, source: e.source, count: e.count, windowMs });
    this.#entries = new Map();
    this.#keys = 0;
    this.#overflowReasons = 0;
    try {
      const result: unknown = this.#onFlush(records);
      if (typeof (result as PromiseLike<unknown> | null)?.then === "function") {
        return Promise.resolve(result as PromiseLike<unknown>).then(
          () => undefined,
          (err: unknown) => this.#flushFailed(err),
        );
      }
    } catch (err) {
      this.#flushFailed(err);
    }
    return Promise.resolve();
  }

  /**
   * Flushes what is pending and stops counting; later refusals are ignored. Idempotent. Resolves like
   * {@link flush} (await it before closing the audit log, so the last window is recorded).
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    return this.flush();
  }

  get [Symbol.toStringTag](): string {
    return "RefusalCounter";
  }

  #flushFailed(err: unknown): void {
    try {
      this.#onFlushError(err);
    } catch {
      // An error handler that throws has nowhere left to report to.
    }
  }
}

/**
 * Calls a transport's `onRefusal` callback without ever letting it disturb the transport: a throw is swallowed,
 * and a returned promise's rejection is caught (no unhandled rejection). For the transports' use.
 */
export function reportRefusal(callback: ((r: Refusal) => unknown) | undefined, reason: string, source: string | undefined): void {
  if (callback === undefined) return;
  try {
    const result: unknown = callback(source === undefined ? { reason } : { reason, source });
    if (typeof (result as PromiseLike<unknown> | null)?.then === "function") {
      (result as PromiseLike<unknown>).then(undefined, () => {});
    }
  } catch {
    // The refusal stands whether or not it could be reported.
  }
}
