/**
 * `RefusalCounter` (src/refusal-counter.ts) with a fake clock: aggregation per (reason, source) over a window,
 * flushing on the window's unref'd timer and on close, bounded keys (overflow under `"*"`, then reason `"other"`),
 * sources sanitised to the audit event's syntax, and hostile callers (thousands of sources, malformed reasons and
 * sources, a throwing or rejecting `onFlush`, a throwing transport callback through `reportRefusal`).
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/refusal-counter.test.ts
 * ```
 */
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  DEFAULT_REFUSAL_MAX_KEYS,
  MAX_OVERFLOW_REASONS,
  REFUSAL_SOURCE_PATTERN,
  RefusalCounter,
  reportRefusal,
  sanitizeRefusalSource,
  type RefusalRecord,
} from "../src/refusal-counter.js";

/** The audit event `refused_connections`' field syntax (issue 9 wiring), "*" being the overflow marker. */
const AUDIT_SOURCE = /^(?:\*|[A-Za-z0-9.:[\]_-]{1,64})$/;
const AUDIT_REASON = /^[A-Za-z0-9_.:/-]{1,128}$/;

function recordsAreAuditable(records: RefusalRecord[]): void {
  for (const r of records) {
    expect(Object.keys(r).sort()).toEqual(["count", "reason", "source", "windowMs"]);
    expect(r.reason).toMatch(AUDIT_REASON);
    expect(r.source).toMatch(AUDIT_SOURCE);
    expect(Number.isSafeInteger(r.count) && r.count >= 1).toBe(true);
    expect(Number.isSafeInteger(r.windowMs) && r.windowMs >= 1 && r.windowMs <= 3_600_000).toBe(true);
  }
}

const sum = (records: RefusalRecord[]): number => records.reduce((a, r) => a + r.count, 0);

let clock = 0;
const now = (): number => clock;
beforeEach(() => {
  vi.useFakeTimers();
  clock = 1_000;
});
afterEach(() => {
  vi.useRealTimers();
});

/** Advances the fake clock and the fake timers together. */
function advance(ms: number): void {
  clock += ms;
  vi.advanceTimersByTime(ms);
}

describe("RefusalCounter", () => {
  it("adds up refusals per (reason, source) and flushes once per window, with the window's length", () => {
    const flushed: RefusalRecord[][] = [];
    const c = new RefusalCounter({ onFlush: (r) => void flushed.push(r), now });
    expect(c.windowMs).toBe(10_000);
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    c.onRefusal({ reason: "ws_evicted", source: "10.0.0.2" });
    c.record({ reason: "noise_handshake_timeout" });
    advance(9_999);
    expect(flushed).toEqual([]);
    advance(1);
    expect(flushed).toEqual([
      [
        { reason: "ws_evicted", source: "10.0.0.1", count: 2, windowMs: 10_000 },
        { reason: "ws_evicted", source: "10.0.0.2", count: 1, windowMs: 10_000 },
        { reason: "noise_handshake_timeout", source: "unknown", count: 1, windowMs: 10_000 },
      ],
    ]);
    recordsAreAuditable(flushed[0]!);
    // A quiet window flushes nothing, and no timer runs while nothing is pending.
    advance(60_000);
    expect(flushed.length).toBe(1);
    expect(vi.getTimerCount()).toBe(0);
    // The next window opens with the next refusal.
    advance(1_234);
    c.record({ reason: "ws_oversize", source: "10.0.0.3" });
    expect(vi.getTimerCount()).toBe(1);
    advance(10_000);
    expect(flushed[1]).toEqual([{ reason: "ws_oversize", source: "10.0.0.3", count: 1, windowMs: 10_000 }]);
    c.close();
  });

  it("close() flushes what is pending with the time elapsed, stops the timer, and ignores later refusals", () => {
    const flushed: RefusalRecord[][] = [];
    const c = new RefusalCounter({ onFlush: (r) => void flushed.push(r), windowMs: 5_000, now });
    c.record({ reason: "ws_handshake_timeout", source: "192.0.2.7" });
    advance(1_500);
    c.close();
    expect(flushed).toEqual([[{ reason: "ws_handshake_timeout", source: "192.0.2.7", count: 1, windowMs: 1_500 }]]);
    expect(vi.getTimerCount()).toBe(0);
    expect(c.closed).toBe(true);
    c.record({ reason: "ws_handshake_timeout", source: "192.0.2.7" });
    c.close();
    c.flush();
    advance(10_000);
    expect(flushed.length).toBe(1);
    // A flush at the very moment the window opened still reports a window of at least 1 ms.
    const d = new RefusalCounter({ onFlush: (r) => void flushed.push(r), now });
    d.record({ reason: "noise_backlog" });
    d.flush();
    expect(flushed[1]).toEqual([{ reason: "noise_backlog", source: "unknown", count: 1, windowMs: 1 }]);
    d.close();
    expect(flushed.length).toBe(2); // nothing pending: close() does not call onFlush with an empty list
  });

  it("await close() waits for an async onFlush (so a shutdown records the last window before the audit log closes), and never rejects", async () => {
    const written: RefusalRecord[] = [];
    let release!: () => void;
    const c = new RefusalCounter({
      onFlush: (records) =>
        new Promise<void>((resolve) => {
          release = () => {
            written.push(...records);
            resolve();
          };
        }),
      now,
    });
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    let done = false;
    const closing = c.close().then(() => (done = true));
    await Promise.resolve();
    expect(done).toBe(false);
    release();
    await closing;
    expect(written).toEqual([{ reason: "ws_evicted", source: "10.0.0.1", count: 1, windowMs: 1 }]);
    const errors: unknown[] = [];
    const d = new RefusalCounter({ onFlush: () => Promise.reject(new Error("down")), onFlushError: (e) => void errors.push(e), now });
    d.record({ reason: "ws_evicted" });
    await expect(d.close()).resolves.toBeUndefined();
    expect(errors.length).toBe(1);
  });

  it("its timer does not keep the process alive (unref'd)", () => {
    vi.useRealTimers();
    const c = new RefusalCounter({ onFlush: () => {}, windowMs: 60_000 });
    const spy = vi.spyOn(globalThis, "setTimeout");
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    const timer = spy.mock.results[0]?.value as NodeJS.Timeout;
    expect(timer.hasRef()).toBe(false);
    spy.mockRestore();
    c.close();
  });

  it("hostile: 10,000 distinct sources cost at most maxKeys + 1 records per window, with exact totals", () => {
    const flushed: RefusalRecord[][] = [];
    const c = new RefusalCounter({ onFlush: (r) => void flushed.push(r), now });
    for (let i = 0; i < 10_000; i++) c.record({ reason: "noise_handshake_evicted", source: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` });
    expect(c.pendingKeys).toBe(DEFAULT_REFUSAL_MAX_KEYS + 1);
    advance(10_000);
    const [records] = flushed;
    expect(records!.length).toBe(DEFAULT_REFUSAL_MAX_KEYS + 1);
    expect(sum(records!)).toBe(10_000);
    expect(records!.at(-1)).toEqual({ reason: "noise_handshake_evicted", source: "*", count: 10_000 - DEFAULT_REFUSAL_MAX_KEYS, windowMs: 10_000 });
    recordsAreAuditable(records!);
    // Known sources keep counting under their own key even once the table is full.
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    c.close();
  });

  it("hostile: once full, a known pair still counts under its own key; overflow is per reason, then 'other'", () => {
    const flushed: RefusalRecord[][] = [];
    const c = new RefusalCounter({ onFlush: (r) => void flushed.push(r), maxKeys: 2, now });
    c.record({ reason: "ws_evicted", source: "a" });
    c.record({ reason: "ws_evicted", source: "b" });
    c.record({ reason: "ws_evicted", source: "c" }); // overflow
    c.record({ reason: "ws_evicted", source: "a" }); // known: its own key
    c.record({ reason: "ws_oversize", source: "a" }); // new pair: overflow of its own reason
    for (let i = 0; i < MAX_OVERFLOW_REASONS + 10; i++) c.record({ reason: `r${i}`, source: "z" });
    c.flush();
    const records = flushed[0]!;
    expect(records.length).toBe(2 + MAX_OVERFLOW_REASONS + 1);
    expect(records.slice(0, 4)).toEqual([
      { reason: "ws_evicted", source: "a", count: 2, windowMs: 1 },
      { reason: "ws_evicted", source: "b", count: 1, windowMs: 1 },
      { reason: "ws_evicted", source: "*", count: 1, windowMs: 1 },
      { reason: "ws_oversize", source: "*", count: 1, windowMs: 1 },
    ]);
    expect(records.at(-1)).toEqual({ reason: "other", source: "*", count: 12, windowMs: 1 });
    expect(sum(records)).toBe(5 + MAX_OVERFLOW_REASONS + 10);
    recordsAreAuditable(records);
    c.close();
  });

  it("hostile: any reason and source (malformed, huge, not strings) is recorded in the audit syntax or as 'other'/'unknown'", () => {
    fc.assert(
      fc.property(fc.array(fc.record({ reason: fc.anything(), source: fc.anything() }), { maxLength: 50 }), (refusals) => {
        const flushed: RefusalRecord[][] = [];
        const c = new RefusalCounter({ onFlush: (r) => void flushed.push(r), maxKeys: 8, now });
        for (const r of refusals) c.record(r as never);
        c.record(null as never);
        c.record("ws_evicted" as never);
        c.close();
        const records = flushed.flat();
        recordsAreAuditable(records);
        expect(sum(records)).toBe(refusals.length + 2);
        expect(records.length).toBeLessThanOrEqual(8 + MAX_OVERFLOW_REASONS + 1);
      }),
      { numRuns: 200 },
    );
    expect(sanitizeRefusalSource("203.0.113.4")).toBe("203.0.113.4");
    expect(sanitizeRefusalSource("[2001:db8::1]")).toBe("[2001:db8::1]");
    expect(sanitizeRefusalSource('evil"}\n{"event":"x')).toBe("evil_____event_:_x");
    expect(sanitizeRefusalSource("x".repeat(1000))).toBe("x".repeat(64));
    expect(sanitizeRefusalSource("")).toBe("unknown");
    expect(sanitizeRefusalSource(undefined)).toBe("unknown");
    expect(REFUSAL_SOURCE_PATTERN.test("*")).toBe(true);
  });

  it("hostile: a throwing or rejecting onFlush is reported to onFlushError, and counting carries on", async () => {
    const errors: unknown[] = [];
    let mode: "throw" | "reject" | "ok" = "throw";
    const flushed: RefusalRecord[][] = [];
    const c = new RefusalCounter({
      onFlush: (r) => {
        if (mode === "throw") throw new Error("disk full");
        if (mode === "reject") return Promise.reject(new Error("audit down"));
        flushed.push(r);
        return undefined;
      },
      onFlushError: (e) => {
        errors.push(e);
        throw new Error("the error handler throws too"); // must not escape either
      },
      now,
    });
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    expect(() => advance(10_000)).not.toThrow();
    mode = "reject";
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    advance(10_000);
    await vi.waitFor(() => expect(errors.length).toBe(2));
    mode = "ok";
    c.record({ reason: "ws_evicted", source: "10.0.0.1" });
    c.close();
    expect(flushed).toEqual([[{ reason: "ws_evicted", source: "10.0.0.1", count: 1, windowMs: 1 }]]);
    // Without onFlushError: a process warning that names no record.
    const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const d = new RefusalCounter({ onFlush: () => { throw Object.assign(new Error("10.0.0.9 secret"), { code: "ERR_AUDIT_IO" }); }, now });
    d.record({ reason: "ws_evicted", source: "10.0.0.9" });
    d.close();
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0]![0])).toMatch(/ERR_AUDIT_IO/);
    expect(String(warn.mock.calls[0]![0])).not.toMatch(/10\.0\.0\.9|secret/);
    warn.mockRestore();
  });

  it("validates its options (TypeError / RangeError naming the option)", () => {
    expect(() => new RefusalCounter(undefined as never)).toThrow(TypeError);
    expect(() => new RefusalCounter({} as never)).toThrow(/onFlush/);
    expect(() => new RefusalCounter({ onFlush: () => {}, windowMs: 0 })).toThrow(RangeError);
    expect(() => new RefusalCounter({ onFlush: () => {}, windowMs: 3_600_001 })).toThrow(/windowMs/);
    expect(() => new RefusalCounter({ onFlush: () => {}, windowMs: 1.5 })).toThrow(/windowMs/);
    expect(() => new RefusalCounter({ onFlush: () => {}, maxKeys: 0 })).toThrow(/maxKeys/);
    expect(() => new RefusalCounter({ onFlush: () => {}, onFlushError: 1 as never })).toThrow(/onFlushError/);
    expect(() => new RefusalCounter({ onFlush: () => {}, windowMs: 3_600_000, maxKeys: 100_000 })).not.toThrow();
  });

  it("reportRefusal: a throwing or rejecting transport callback never escapes; no callback is fine", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown): void => void unhandled.push(e);
    process.on("unhandledRejection", onUnhandled);
    try {
      expect(() => reportRefusal(() => { throw new Error("boom"); }, "ws_evicted", "10.0.0.1")).not.toThrow();
      expect(() => reportRefusal(async () => { throw new Error("async boom"); }, "ws_evicted", undefined)).not.toThrow();
      expect(() => reportRefusal(undefined, "ws_evicted", "10.0.0.1")).not.toThrow();
      const seen: unknown[] = [];
      reportRefusal((r) => seen.push(r), "ws_evicted", undefined);
      reportRefusal((r) => seen.push(r), "ws_evicted", "10.0.0.1");
      expect(seen).toEqual([{ reason: "ws_evicted" }, { reason: "ws_evicted", source: "10.0.0.1" }]);
      vi.useRealTimers();
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });
});
