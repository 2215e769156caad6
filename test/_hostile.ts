/**
 * The property tests every decoder of network bytes gets: random bytes, and valid samples with a few bytes flipped,
 * are refused with a coded error (never a crash, never success) within a time bound per call.
 *
 * @module
 * @example
 * ```ts
 * refusesHostileBytes((b) => opener.open(b), samples, { numRuns: 1000 });
 * ```
 */
import fc from "fast-check";
import { expect } from "vitest";

/** The error code `fn` throws, asserting it returned within `maxMs`. */
export function codedWithin(fn: () => unknown, maxMs = 250): string {
  const t = performance.now();
  let code = "no error";
  try {
    fn();
  } catch (e) {
    code = (e as { code?: string }).code ?? `non-coded: ${String(e)}`;
  }
  expect(performance.now() - t).toBeLessThan(maxMs);
  return code;
}

/** Random bytes up to 2 KiB, and each of `samples` with 1–4 bytes flipped: `open` must refuse all with an ERR_ code. */
export function refusesHostileBytes(open: (bytes: Uint8Array) => unknown, samples: readonly Uint8Array[], o: { numRuns: number }): void {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => {
      expect(codedWithin(() => open(bytes))).toMatch(/^ERR_/);
    }),
    { numRuns: o.numRuns },
  );
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: samples.length - 1 }),
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
      (which, flips) => {
        const bad = Uint8Array.from(samples[which]!);
        for (const [pos, mask] of flips) bad[pos % bad.length]! ^= mask;
        expect(codedWithin(() => open(bad))).toMatch(/^ERR_/);
      },
    ),
    { numRuns: o.numRuns },
  );
}
