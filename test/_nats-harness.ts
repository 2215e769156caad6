/**
 * Test helpers for the NATS transport: real `nats-server` processes (via the example's launcher,
 * `examples/nats-cluster/cluster.ts`, so the example and the tests start brokers the same way), started lazily
 * once per test file and stopped in `afterAll` (and by the launcher's exit hook, with SIGKILL, if the worker
 * dies first).
 *
 * @module
 * @example
 * ```ts
 * const single = natsFixture({ jetstream: true });
 * it("talks", async () => {
 *   const t = nats({ servers: (await single.get()).urls() });
 * });
 * ```
 */
import { afterAll } from "vitest";
import { startNats, type NatsCluster, type StartNatsOptions } from "../examples/nats-cluster/cluster.js";

export { freePort, startNats, type NatsCluster, type NatsNode, type StartNatsOptions } from "../examples/nats-cluster/cluster.js";

/** A server or cluster started on first `get()` and stopped after the file's tests (even when they fail). */
export interface NatsFixture {
  get(): Promise<NatsCluster>;
}

/** Declares a lazily started server/cluster for the current test file; registers its `afterAll` stop. */
export function natsFixture(options: StartNatsOptions): NatsFixture {
  let started: Promise<NatsCluster> | undefined;
  afterAll(async () => {
    if (started === undefined) return;
    const c = await started.catch(() => undefined);
    await c?.stop();
  }, 30_000);
  return {
    get: () => (started ??= startNats(options)),
  };
}

/** Credentials used by the authenticated fixtures. */
export const CREW_USER = { user: "crew", password: "crew-secret-7b1f" } as const;
/** A second NATS user: valid broker credentials, but no sealwire identity (the "malicious publisher"). */
export const MALLORY_USER = { user: "mallory", password: "mallory-secret-93c2" } as const;

/** Resolves after `ms` milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
