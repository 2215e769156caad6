/**
 * sealwire over NATS, messages per second at 1 KiB, each figure beside raw NATS pub/sub with the same 1 KiB
 * payloads measured in the same run (samples interleaved, medians), on a local `nats-server` started for the
 * run (single server, JetStream with file storage):
 *
 * - core envelopes: two agents, `agent.send` of 1 KiB of data (sign + seal, the transport, verify + open, the
 *   agent's inbox);
 * - durable frames / durable envelopes: the same through JetStream (every publish acknowledged by the stream,
 *   every delivery acknowledged after the reader took it);
 * - raw JetStream: pipelined `js.publish` + a pull consumer acknowledging each message, for scale.
 *
 * Raw NATS is measured with one publishing and one subscribing connection, like the two agents. A message
 * counts once the receiver has it: every sample ends by waiting for the last one.
 *
 * Core-mode frames through the transport alone (1 KiB and 64 KiB, with backpressure) are in the `transports`
 * group (`transports.ts`). Without `nats-server` on the PATH the group prints one row saying it was skipped.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source bench/nats.ts            # prints the rows
 * npx tsx --conditions=source bench/nats.ts --quick
 * ```
 * ```ts
 * import { benchNats } from "./nats.js";
 * rows.push(...(await benchNats({ quick })));
 * ```
 */
import { pathToFileURL } from "node:url";
import { connect } from "@nats-io/transport-node";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { nats } from "../transports/nats.js";
import { createAgent } from "../src/agent.js";
import { generateIdentity } from "../src/identity.js";
import type { Connection } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { startNats } from "../examples/nats-cluster/cluster.js";
import { machine, measurePair, printRows, row, skippedRow, type Row } from "./harness.js";
import { onPath } from "./links.js";

const PAYLOAD = 1024;

/** Options for {@link benchNats}. */
export interface NatsBenchOptions {
  /** Fewer, smaller samples (for tests and CI). @default false */
  quick?: boolean;
}

/** Something that moves numbered messages and can wait until the receiver has seen `n` of them. */
interface Pipe {
  send(): void | Promise<void>;
  waitFor(n: number): Promise<void>;
  close(): Promise<void>;
}

/** A counter the receiving side bumps, with waiters for a target. */
function counter(): { bump(): void; waitFor(n: number): Promise<void> } {
  let count = 0;
  let target = Infinity;
  let wake: (() => void) | undefined;
  return {
    bump() {
      count++;
      if (count >= target && wake) {
        const w = wake;
        wake = undefined;
        target = Infinity;
        w();
      }
    },
    waitFor(n) {
      if (count >= n) return Promise.resolve();
      target = n;
      return new Promise<void>((resolve) => (wake = resolve));
    },
  };
}

/** measurePair's `fn`: sends one message, and at the end of each batch waits until all arrived. */
function stepper(pipe: Pipe, batch: number): (i: number) => unknown {
  return (i: number) => {
    const r = pipe.send();
    if ((i + 1) % batch !== 0) return r;
    return Promise.resolve(r).then(() => pipe.waitFor(i + 1));
  };
}

/** Measures sealwire over NATS (core and durable) beside raw NATS; returns rows for `bench/index.ts`. */
export async function benchNats(options: NatsBenchOptions = {}): Promise<Row[]> {
  if (!onPath("nats-server")) {
    return [skippedRow("nats", "core and durable envelopes, durable frames, 1 KiB", "raw NATS pub/sub 1 KiB", "nats-server not installed")];
  }
  const quick = options.quick ?? false;
  const samples = quick ? 2 : 5;
  const warmup = 1;
  const server = await startNats({ jetstream: true });
  const servers = server.urls();
  const rows: Row[] = [];
  const payload = new Uint8Array(PAYLOAD).map((_, i) => (i * 131) & 0xff);
  const closers: (() => Promise<unknown>)[] = [];
  try {
    // Raw NATS pub/sub: the baseline for every row.
    const pub = await connect({ servers });
    const sub = await connect({ servers });
    closers.push(() => pub.close(), () => sub.close());
    const rawCount = counter();
    sub.subscribe("bench.raw", { callback: () => rawCount.bump() });
    await sub.flush();
    const raw: Pipe = {
      send: () => pub.publish("bench.raw", payload),
      waitFor: (n) => rawCount.waitFor(n),
      close: async () => {},
    };

    const frames = async (mode: "core" | "durable", agent: string): Promise<Pipe> => {
      const tx = nats({ servers, mode, namespace: "bench" });
      const rx = nats({ servers, mode, namespace: "bench" });
      const l = await rx.listen(rx.addressFor!(agent));
      const got = counter();
      const accepted: Connection[] = [];
      void (async () => {
        for await (const c of l) {
          accepted.push(c);
          void (async () => {
            for await (const f of c) {
              void f;
              got.bump();
            }
          })();
        }
      })();
      const conn: Connection = await tx.dial(tx.addressFor!(agent));
      closers.push(
        () => conn.close(),
        () => l.close(),
        () => Promise.all(accepted.map((c) => c.close())),
      );
      return {
        send: () => {
          if (!conn.send(payload)) return conn.drain();
        },
        waitFor: (n) => got.waitFor(n),
        close: async () => {},
      };
    };

    const envelopes = async (mode: "core" | "durable"): Promise<Pipe> => {
      const alice = await generateIdentity(`alice-${mode}`);
      const bob = await generateIdentity(`bob-${mode}`);
      const trust = new TrustStore();
      trust.add(alice.publicIdentity);
      trust.add(bob.publicIdentity);
      const a = await createAgent({ identity: alice, trust, transport: nats({ servers, mode, namespace: "bench" }), listen: false });
      const b = await createAgent({ identity: bob, trust, transport: nats({ servers, mode, namespace: "bench" }) });
      closers.push(() => a.close(), () => b.close());
      const got = counter();
      void (async () => {
        for await (const m of b.messages()) {
          void m;
          got.bump();
        }
      })();
      return {
        send: () => a.send(bob.id, payload).then(() => {}),
        waitFor: (n) => got.waitFor(n),
        close: async () => {},
      };
    };

    const rawJetStream = async (): Promise<Pipe> => {
      const nc = await connect({ servers });
      const ncr = await connect({ servers });
      closers.push(() => nc.close(), () => ncr.close());
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: "BENCH_RAW", subjects: ["bench.js"] });
      await jsm.consumers.add("BENCH_RAW", { durable_name: "raw", ack_policy: AckPolicy.Explicit, max_ack_pending: 256 });
      const js = jetstream(nc);
      const got = counter();
      const consumer = await jetstream(ncr).consumers.get("BENCH_RAW", "raw");
      const messages = await consumer.consume({ max_messages: 256 });
      closers.unshift(async () => messages.stop());
      void (async () => {
        for await (const m of messages) {
          m.ack();
          got.bump();
        }
      })();
      const inflight: Promise<unknown>[] = [];
      let id = 0;
      return {
        send: () => {
          inflight.push(js.publish("bench.js", payload, { msgID: String(id++) }));
          if (inflight.length >= 256) return inflight.shift()!.then(() => {});
        },
        waitFor: (n) => got.waitFor(n),
        close: async () => {},
      };
    };

    const cases: [string, string, () => Promise<Pipe>, number, string?][] = [
      ["nats core", "envelopes 1 KiB (agent → agent)", () => envelopes("core"), quick ? 200 : 2000],
      ["nats durable", "frames 1 KiB (JetStream, acked)", () => frames("durable", "frames-durable"), quick ? 500 : 5000],
      ["nats durable", "envelopes 1 KiB (agent → agent)", () => envelopes("durable"), quick ? 200 : 1500],
      ["nats durable", "raw JetStream publish + pull (no sealwire)", rawJetStream, quick ? 500 : 5000],
    ];
    for (const [group, what, make, batch] of cases) {
      const pipe = await make();
      const [a, b] = await measurePair([what, stepper(pipe, batch)], ["raw NATS pub/sub 1 KiB", stepper(raw, batch)], {
        batch,
        samples,
        warmup,
      });
      rows.push(row(group, what, a, b, "msg/s"));
    }
  } finally {
    for (const close of closers) await close().catch(() => {});
    await server.stop();
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes("--quick");
  console.log(`sealwire NATS bench — ${machine()}${quick ? " (quick)" : ""}`);
  console.log(printRows(await benchNats({ quick }), process.argv.includes("--markdown")));
}
