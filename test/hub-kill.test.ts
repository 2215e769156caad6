/**
 * Kill the hub while agents stream (issue 5, "Tests with real parts"): the hub is a real `sealwire hub` process on
 * loopback; alice and bob (in this process, over `noise(webSocket())`) stream numbered messages to each other with
 * `waitForDelivery: true`, a window of sends always in flight. The hub gets SIGKILL mid-stream — twice — and is
 * restarted on the same port each time. Then:
 *
 * - both agents reconnect on their own (jittered backoff), and traffic flows again; the time is measured;
 * - every send settles (none hangs);
 * - every send that resolved was delivered to the recipient application exactly once (checked by payload id);
 * - every other send rejected with a coded `SealwireError`; one rejected with a definite refusal (anything but
 *   `ERR_DELIVERY_UNCONFIRMED`, which means "may or may not have arrived") was not delivered;
 * - nothing is delivered twice, and nothing is delivered that was not sent.
 *
 * No message is silently lost: each one is either confirmed and delivered, or its sender got an error.
 *
 * The same for the CLI: a `sealwire listen` process must outlive a hub SIGKILL, reconnect to the restarted hub and
 * print the next message (an agent that is not closed keeps reconnecting; its process must not just end).
 *
 * And the race a SIGKILL opens: the hub's socket is dead but the agent has not noticed yet, so its next
 * `send(…, { waitForDelivery: true })` fails on the old connection and is retried on a new one. That must not
 * leave a rejected promise without a handler (Node's default for that is to crash the process), and the send must
 * still settle by the rules above. Made deterministic with a transport whose connections can be "cut" unseen.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/hub-kill.test.ts
 * ```
 */
import { afterAll, describe, expect, it } from "vitest";
import { Lab } from "../examples/_processes.js";
import { createAgent, type Agent } from "../src/agent.js";
import { SealwireError } from "../src/errors.js";
import { Identity } from "../src/identity.js";
import { saveIdentity } from "../src/keystore.js";
import { saveTrustFile } from "../src/trust-file.js";
import { sealwireError } from "../src/errors.js";
import { createHub } from "../src/hub.js";
import { transportSymbol, type Connection, type Transport } from "../src/transport.js";
import { TrustStore } from "../src/trust.js";
import { memory } from "../transports/memory.js";
import { noise } from "../transports/noise/index.js";
import { webSocket } from "../transports/websocket.js";
import { waitLine } from "./_netns.js";

const WINDOW = 8; // sends in flight per direction
const PER_PHASE = 120; // confirmed deliveries per direction before each kill, and after the last restart
const KILLS = 2;

/** One direction of the stream: what the sender was told, what the recipient's application got. */
class Ledger {
  readonly outcome = new Map<number, { ok: true } | { ok: false; code: string }>();
  readonly received = new Map<number, number>();
  readonly receivedAt: number[] = [];
  readonly confirmedAt: number[] = [];
  sent = 0;
  get confirmed(): number {
    return this.confirmedAt.length;
  }
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const lab = new Lab("hub-kill test passphrase");
const cliLab = new Lab("hub-kill cli test passphrase");
const agents: Agent[] = [];
const identities: Identity[] = [];
afterAll(async () => {
  await Promise.allSettled(agents.map((a) => a.close()));
  for (const i of identities) i.close();
  await lab.stop();
  await cliLab.stop();
});

describe("hub killed with SIGKILL while agents stream", () => {
  it("agents reconnect; every confirmed message was delivered exactly once, every other send got a coded error", async (ctx) => {
    const trust = new TrustStore();
    const ids: Record<string, Identity> = {};
    for (const id of ["hub", "alice", "bob"]) {
      const identity = Identity.generate(id);
      identities.push(identity);
      ids[id] = identity;
      trust.add(id === "hub" ? await saveIdentity(lab.path("hub.key"), identity, { passphrase: lab.env["SEALWIRE_PASSPHRASE"]! }) : identity.publicIdentity);
    }
    await saveTrustFile(lab.path("trust.json"), trust);

    let hub = lab.start("hub#0", ["hub", "--listen", "ws://127.0.0.1:0", "--key", "hub.key"]);
    const url = await waitLine(hub, /listening on (ws:\/\/127\.0\.0\.1:\d+)/);

    const errors: SealwireError[] = [];
    const start = async (id: string) => {
      const a = await createAgent({
        identity: ids[id]!,
        trust,
        transport: noise({ transport: webSocket(), identity: ids[id]!, trust }),
        hub: url,
        hubPeer: "hub",
        reconnect: { minMs: 50, maxMs: 500 },
        onError: (e) => errors.push(e),
      });
      agents.push(a);
      return a;
    };
    const alice = await start("alice");
    const bob = await start("bob");
    const ledgers = { "alice→bob": new Ledger(), "bob→alice": new Ledger() };
    const pad = "x".repeat(200);

    // Recipients: record every payload id the application sees.
    const consume = async (agent: Agent, ledger: Ledger) => {
      for await (const m of agent.messages()) {
        const seq = (m.data as { seq: number }).seq;
        ledger.received.set(seq, (ledger.received.get(seq) ?? 0) + 1);
        ledger.receivedAt.push(Date.now());
      }
    };
    const consumers = [consume(bob, ledgers["alice→bob"]), consume(alice, ledgers["bob→alice"])];

    // Senders: a window of sends always in flight; after a failure, a short pause so a dead hub is not hammered.
    let producing = true;
    const produce = async (from: Agent, to: string, ledger: Ledger) => {
      const lane = async () => {
        while (producing) {
          const seq = ledger.sent++;
          try {
            await from.send(to, { seq, pad }, { waitForDelivery: true });
            ledger.outcome.set(seq, { ok: true });
            ledger.confirmedAt.push(Date.now());
          } catch (e) {
            ledger.outcome.set(seq, { ok: false, code: SealwireError.is(e) ? e.code : `uncoded ${String(e).slice(0, 80)}` });
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      };
      await Promise.all(Array.from({ length: WINDOW }, lane));
    };
    const producers = Promise.all([produce(alice, "bob", ledgers["alice→bob"]), produce(bob, "alice", ledgers["bob→alice"])]);
    const all = Object.values(ledgers);
    const confirmedEach = (n: number) => () => all.every((l) => l.confirmed >= n);

    const recoveries: { kill: number; listening: number; firstDelivery: number; firstConfirmed: number; bothConfirmed: number }[] = [];
    try {
      await until(confirmedEach(PER_PHASE), 20_000, "the first stream phase");
      for (let k = 0; k < KILLS; k++) {
        const before = all.map((l) => l.confirmed);
        const tKill = Date.now();
        hub.child.kill("SIGKILL");
        expect(await hub.exited).toBe(128); // killed by a signal
        hub = lab.start(`hub#${k + 1}`, ["hub", "--listen", url, "--key", "hub.key"]);
        expect(await waitLine(hub, /listening on (\S+)/)).toBe(url);
        const tListen = Date.now();
        await until(() => all.every((l, i) => l.confirmed >= before[i]! + PER_PHASE), 30_000, `traffic after restart #${k + 1}`);
        const firstAfter = (xs: number[]) => xs.find((t) => t >= tListen) ?? NaN;
        recoveries.push({
          kill: tKill,
          listening: tListen - tKill,
          firstDelivery: Math.min(...all.map((l) => firstAfter(l.receivedAt))) - tListen,
          firstConfirmed: Math.min(...all.map((l) => firstAfter(l.confirmedAt))) - tListen,
          bothConfirmed: Math.max(...all.map((l) => firstAfter(l.confirmedAt))) - tListen,
        });
      }
    } finally {
      producing = false;
    }
    // Every send settles: none may hang (a hanging send would be a silently lost message).
    await Promise.race([
      producers,
      new Promise((_, reject) => setTimeout(() => reject(new Error("some sends never settled")), 20_000)),
    ]);
    // Let late deliveries land (a rejected, unconfirmed message may still arrive).
    let last = -1;
    await until(() => {
      const n = all.reduce((a, l) => a + l.receivedAt.length, 0);
      const still = n === last;
      last = n;
      return still;
    }, 10_000, "deliveries to settle");
    await new Promise((r) => setTimeout(r, 300));

    const report: string[] = [];
    for (const [dir, l] of Object.entries(ledgers)) {
      expect(l.outcome.size, `${dir}: every send settled`).toBe(l.sent);
      const codes: Record<string, number> = {};
      let confirmedButMissing = 0;
      let definiteButDelivered = 0;
      let unconfirmedDelivered = 0;
      for (const [seq, o] of l.outcome) {
        const got = l.received.get(seq) ?? 0;
        if (o.ok) {
          if (got !== 1) confirmedButMissing++;
          expect(got, `${dir}: message ${seq} was confirmed, so it must have been delivered exactly once`).toBe(1);
        } else {
          codes[o.code] = (codes[o.code] ?? 0) + 1;
          expect(o.code, `${dir}: message ${seq} failed without a sealwire error code`).toMatch(/^ERR_[A-Z_]+$/);
          if (o.code === "ERR_DELIVERY_UNCONFIRMED") {
            if (got > 0) unconfirmedDelivered++;
          } else if (got > 0) definiteButDelivered++;
          expect(got, `${dir}: message ${seq} was delivered ${got} times`).toBeLessThanOrEqual(o.code === "ERR_DELIVERY_UNCONFIRMED" ? 1 : 0);
        }
      }
      for (const [seq, n] of l.received) {
        expect(l.outcome.has(seq), `${dir}: delivered ${seq}, which was never sent`).toBe(true);
        expect(n, `${dir}: ${seq} delivered ${n} times`).toBe(1);
      }
      const ok = [...l.outcome.values()].filter((o) => o.ok).length;
      expect(ok).toBeGreaterThanOrEqual(PER_PHASE * (KILLS + 1));
      expect(l.sent - ok, `${dir}: the kills hit sends in flight`).toBeGreaterThan(0);
      report.push(
        `${dir}: sent ${l.sent}, confirmed ${ok} (all delivered once: ${confirmedButMissing === 0}), rejected ${l.sent - ok} ${JSON.stringify(codes)}, ` +
          `of those delivered anyway ${unconfirmedDelivered} (unconfirmed) / ${definiteButDelivered} (definite)`,
      );
    }
    for (const r of recoveries) {
      // Restart to traffic in both directions: the hub's own start-up is separate (listening); agents need at
      // most one backoff step (≤ 500 ms) plus a Noise handshake.
      expect(r.bothConfirmed).toBeLessThan(5_000);
      report.push(
        `restart: hub listening ${r.listening} ms after SIGKILL; first delivery ${r.firstDelivery} ms, first confirmation ${r.firstConfirmed} ms, ` +
          `both directions confirmed ${r.bothConfirmed} ms after it listened`,
      );
    }
    await ctx.annotate(report.join("\n"));
    console.log(report.join("\n"));

    await Promise.all([alice.close(), bob.close()]);
    await Promise.race([Promise.all(consumers), new Promise((r) => setTimeout(r, 2000))]);
  }, 90_000);

  it("a `sealwire listen` process survives a hub SIGKILL: it reconnects to the restarted hub and prints the next message", async () => {
    await cliLab.keygen({ hub: {}, alice: {}, bob: {} });
    let hub = cliLab.start("hub#0", ["hub", "--listen", "ws://127.0.0.1:0", "--key", "hub.key"]);
    const url = await waitLine(hub, /listening on (ws:\/\/127\.0\.0\.1:\d+)/);
    const bob = cliLab.start("bob", ["listen", "--hub", url, "--key", "bob.key", "--count", "1"]);
    await waitLine(bob, /connected to/);
    hub.child.kill("SIGKILL");
    expect(await hub.exited).toBe(128);
    await new Promise((r) => setTimeout(r, 500));
    expect(bob.child.exitCode, `\`sealwire listen\` ended when the hub died, instead of reconnecting:\n${bob.lines.join("\n")}`).toBeNull();
    hub = cliLab.start("hub#1", ["hub", "--listen", url, "--key", "hub.key"]);
    await waitLine(hub, /listening on/);
    // alice's send is confirmed only once bob (reconnected) acknowledged it.
    const sent = await cliLab.run("alice", ["send", "--hub", url, "--key", "alice.key", "--to", "bob", "after the restart"]);
    expect(sent.code, sent.lines.join("\n")).toBe(0);
    const got = JSON.parse(await waitLine(bob, /^(\{.*\})$/)) as { from: string; data: unknown };
    expect(got).toMatchObject({ from: "alice", data: "after the restart" });
    expect(await bob.exited).toBe(0); // --count 1
  }, 60_000);

  it("a waitForDelivery send on a hub connection that died unnoticed neither crashes the process nor breaks the accounting", async () => {
    // Connections whose send() starts throwing ERR_CONNECTION_CLOSED on `cut()`, before anyone sees them close:
    // what a socket of a SIGKILLed hub looks like until the close event is processed.
    const net = memory();
    const cuttable: { cut: boolean }[] = [];
    const wrap = (c: Connection): Connection => {
      const state = { cut: false };
      cuttable.push(state);
      return new Proxy(c, {
        get(target, prop) {
          if (prop === "send") {
            return (frame: Uint8Array) => {
              if (state.cut) throw sealwireError("ERR_CONNECTION_CLOSED", "connection closed");
              return target.send(frame);
            };
          }
          const v = Reflect.get(target, prop, target) as unknown;
          return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    };
    const agentNet: Transport = {
      [transportSymbol]: true,
      kind: net.kind,
      maxFrameBytes: net.maxFrameBytes,
      listen: (addr, o) => net.listen(addr, o),
      dial: async (addr, o) => wrap(await net.dial(addr, o)),
    };
    const trust = new TrustStore();
    const ids: Record<string, Identity> = {};
    for (const id of ["hub", "alice", "bob"]) {
      ids[id] = Identity.generate(id);
      identities.push(ids[id]);
      trust.add(ids[id].publicIdentity);
    }
    const hub = await createHub({ identity: ids["hub"]!, trust, transport: net, listen: "mem://hub" });
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on("unhandledRejection", onUnhandled);
    try {
      const mk = async (id: string) => {
        const a = await createAgent({ identity: ids[id]!, trust, transport: agentNet, hub: "mem://hub", hubPeer: "hub", reconnect: { minMs: 10, maxMs: 50 } });
        agents.push(a);
        return a;
      };
      const alice = await mk("alice");
      const bob = await mk("bob");
      const got: unknown[] = [];
      void (async () => {
        for await (const m of bob.messages()) got.push(m.data);
      })();
      await alice.send("bob", "before", { waitForDelivery: true });
      for (const c of cuttable) c.cut = true; // alice's (and bob's) hub connections die unseen
      const outcome = await alice.send("bob", "across the cut", { waitForDelivery: true }).then(
        () => "resolved",
        (e: unknown) => (SealwireError.is(e) ? e.code : `uncoded: ${String(e)}`),
      );
      await new Promise((r) => setTimeout(r, 300));
      const codes = unhandled.map((e) => (SealwireError.is(e) ? e.code : String(e)));
      expect(codes, "a rejected promise was left without a handler: Node's default is to crash the process").toEqual([]);
      expect(outcome).toMatch(/^(resolved|ERR_[A-Z_]+)$/);
      if (outcome === "resolved") expect(got.filter((d) => d === "across the cut")).toHaveLength(1);
      if (outcome !== "resolved" && outcome !== "ERR_DELIVERY_UNCONFIRMED") expect(got).not.toContain("across the cut");
    } finally {
      process.off("unhandledRejection", onUnhandled);
      await hub.close();
    }
  });
});
