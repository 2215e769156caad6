/**
 * Tests for the NATS transport against real `nats-server` processes.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/nats.test.ts
 * ```
 */
import { nats } from "sealwire/transports/nats";
import { natsFixture } from "./_nats-harness.js";
import { transportCompliance } from "./transport.compliance.js";

const KiB = 1024;
const single = natsFixture({});

let run = 0;
transportCompliance("nats core (single server)", async () => {
  const server = await single.get();
  const transport = nats({
    servers: server.urls(),
    namespace: "compliance",
    maxFrameBytes: 64 * KiB,
    highWaterMarkBytes: 32 * KiB,
  });
  const prefix = `c${run++}`;
  let n = 0;
  return { transport, listenAddr: () => `nats://compliance/${prefix}-${n++}`, cleanup: async () => {} };
});
