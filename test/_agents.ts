/**
 * Small helpers shared by the agent-level tests (agent-session, hub, policy, rotation): polling, the next message,
 * and a hub world on `memory()` (a hub plus agents that only know it, each agent's errors collected).
 *
 * @module
 * @example
 * ```ts
 * await until(() => errors.length > 0);
 * expect(await nextMessage(bob, 100)).toBe("none");
 * ```
 */
import { expect } from "vitest";
import { createAgent, type Agent, type ReceivedMessage } from "../src/agent.js";
import type { SealwireError } from "../src/errors.js";
import { createHub, type HubOptions } from "../src/hub.js";
import { generateIdentity, type Identity } from "../src/identity.js";
import { TrustStore } from "../src/trust.js";
import { memory } from "../transports/memory.js";

/** Polls `cond` every 5 ms until it holds or `timeoutMs` passed, then asserts it. */
export async function until(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  expect(cond()).toBe(true);
}

/** The agent's next delivered message, or "none" if nothing arrives within `timeoutMs` (the iterator is left). */
export async function nextMessage(agent: Agent, timeoutMs = 1000): Promise<ReceivedMessage | "none"> {
  const it = agent.messages();
  const r = await Promise.race([it.next(), new Promise<"none">((res) => setTimeout(() => res("none"), timeoutMs))]);
  await it.return?.();
  return r === "none" ? r : r.value!;
}

/** A hub at `mem://hub` on a fresh memory network, and `start(id)` for agents that reach each other only through it. */
export async function world(spec: Record<string, { clearances?: string[]; roles?: string[] }> = { alice: {}, bob: {} }, hubOpts: Partial<HubOptions> = {}) {
  const net = memory();
  const trust = new TrustStore();
  const ids: Record<string, Identity> = {};
  for (const [id, o] of Object.entries({ hub: {}, ...spec })) {
    ids[id] = await generateIdentity(id);
    trust.add(ids[id]!.publicIdentity, o);
  }
  const hubErrors: SealwireError[] = [];
  const hub = await createHub({ identity: ids["hub"]!, trust, transport: net, listen: "mem://hub", onError: (e) => hubErrors.push(e), ...hubOpts });
  const errors: Record<string, SealwireError[]> = {};
  const agents: Agent[] = [];
  const start = async (id: string, extra: Partial<Parameters<typeof createAgent>[0]> = {}) => {
    errors[id] ??= [];
    const a = await createAgent({
      identity: ids[id]!,
      trust,
      transport: net,
      hub: "mem://hub",
      hubPeer: "hub",
      reconnect: { minMs: 10, maxMs: 50 },
      onError: (e) => errors[id]!.push(e),
      ...extra,
    });
    agents.push(a);
    return a;
  };
  const close = async () => {
    await Promise.all(agents.map((a) => a.close()));
    await hub.close();
  };
  return { net, trust, ids, hub, hubErrors, errors, start, close };
}
