/**
 * The contract between {@link EnvelopeOpener} and a seen-envelope cache: the in-memory `ReplayCache` and the
 * file-backed `PersistentReplayCache` (src/replay-store.ts) both satisfy it, so an opener takes either.
 *
 * @module
 * @example
 * ```ts
 * const replay: ReplayGuard = await PersistentReplayCache.open("bob.replay");
 * const opener = new EnvelopeOpener({ identity: bob, trust, replay });
 * ```
 */

/** Decides whether an envelope id is new, and remembers it. */
export interface ReplayGuard {
  /**
   * Records `id` as seen until `expiresAt` (ms since the epoch) and returns true; returns false if `id` was already
   * seen and its record has not expired at `now`. Must fail closed: throw (never return true) when it cannot
   * remember the id — a full cache, a failed write.
   */
  checkAndAdd(id: string, expiresAt: number, now: number): boolean;
}
