/**
 * Every fuzz target, and how many cases each gets in the full run (`npm run fuzz`, ≥ 1,000,000 in total) and in
 * the CI pass (`test/fuzz.test.ts`, ≥ 50,000).
 *
 * The split follows cost and attack surface: the byte-level decoders that see every frame from the network
 * (codec, envelope, payload, hub control, Noise) get most of the cases; file and CLI targets, which do I/O (and
 * scrypt, by design), get fewer.
 *
 * @module
 * @example
 * ```ts
 * const report = await runFuzz({ seed, cases: FULL_SPLIT, factories: TARGETS, tmpDir });
 * ```
 */
import type { TargetFactory } from "./harness.js";
import { auditFileTarget, auditLinesTarget, cliTarget, keystoreHeaderTarget, keystoreTarget, trustFileTarget } from "./targets-files.js";
import { noiseChannelTarget } from "./targets-channel.js";
import { noiseCipherTarget, noiseTargets } from "./targets-noise.js";
import { sessionDecodeTarget, sessionOpenTarget } from "./targets-session.js";
import {
  attestationTarget,
  codecTarget,
  envelopeDecodeTarget,
  envelopeOpenTarget,
  hubControlTarget,
  identityTarget,
  payloadTarget,
} from "./targets-wire.js";

/** All targets, in run order. */
export const TARGETS: readonly TargetFactory[] = [
  codecTarget,
  envelopeDecodeTarget,
  envelopeOpenTarget,
  sessionDecodeTarget,
  sessionOpenTarget,
  payloadTarget,
  hubControlTarget,
  identityTarget,
  attestationTarget,
  ...noiseTargets,
  noiseCipherTarget,
  noiseChannelTarget,
  auditLinesTarget,
  auditFileTarget,
  keystoreHeaderTarget,
  keystoreTarget,
  trustFileTarget,
  cliTarget,
];

/** Cases per target in `npm run fuzz` (1,154,000 in total). */
export const FULL_SPLIT: Readonly<Record<string, number>> = {
  codec: 220_000,
  "envelope-decode": 140_000,
  "envelope-open": 70_000,
  "session-decode": 100_000,
  "session-open": 15_000,
  payload: 120_000,
  "hub-control": 150_000,
  identity: 80_000,
  attestation: 50_000,
  "noise-xx-1": 20_000,
  "noise-xx-2": 20_000,
  "noise-xx-3": 20_000,
  "noise-ik-1": 20_000,
  "noise-ik-2": 20_000,
  "noise-cipher": 60_000,
  "noise-channel": 5_000,
  "audit-lines": 15_000,
  "audit-file": 5_000,
  "keystore-header": 12_000,
  keystore: 3_000,
  "trust-file": 6_000,
  cli: 3_000,
};

/** Cases per target in the CI pass (59,650 in total). */
export const CI_SPLIT: Readonly<Record<string, number>> = {
  codec: 12_000,
  "envelope-decode": 8_000,
  "envelope-open": 4_000,
  "session-decode": 4_000,
  "session-open": 500,
  payload: 7_000,
  "hub-control": 8_000,
  identity: 4_000,
  attestation: 3_000,
  "noise-xx-1": 700,
  "noise-xx-2": 700,
  "noise-xx-3": 700,
  "noise-ik-1": 700,
  "noise-ik-2": 700,
  "noise-cipher": 3_000,
  "noise-channel": 300,
  "audit-lines": 800,
  "audit-file": 300,
  "keystore-header": 600,
  keystore: 150,
  "trust-file": 300,
  cli: 200,
};

/** Scales a split to about `total` cases (each listed target keeps at least one). */
export function scaleSplit(split: Readonly<Record<string, number>>, total: number): Record<string, number> {
  const sum = Object.values(split).reduce((a, b) => a + b, 0);
  return Object.fromEntries(Object.entries(split).map(([k, v]) => [k, Math.max(1, Math.round((v * total) / sum))]));
}

/** The sum of a split. */
export function splitTotal(split: Readonly<Record<string, number>>): number {
  return Object.values(split).reduce((a, b) => a + b, 0);
}
