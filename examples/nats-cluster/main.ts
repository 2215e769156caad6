/**
 * A crew spread over a 3-node NATS cluster: the script starts the cluster on loopback (TLS with a throwaway CA,
 * user/password authentication, JetStream), puts each agent on a different node, and shows both delivery modes:
 *
 * 1. core: the planner (node 1) asks the researcher (node 2) and the writer (node 3) for work, request/reply,
 *    through the cluster's routes;
 * 2. durable: the planner files reports for the archivist, who is offline; the archivist starts later (on
 *    node 3) and receives every report from the JetStream stream.
 *
 * Every message is signed and sealed end to end: NATS (and anyone subscribed to its subjects) carries only
 * ciphertext. Compared with the in-memory quick start, the only line that changes is the `transport`.
 * `test/nats.test.ts` runs this file, so it cannot rot.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source examples/nats-cluster/main.ts
 * ```
 */
import { randomBytes } from "node:crypto";
import { pathToFileURL } from "node:url";
import { createAgent, generateIdentity, TrustStore, type Agent, type Data } from "sealwire";
import { nats } from "sealwire/transports/nats";
import { startNats } from "./cluster.js";

/** What the run did, for the tests. */
export interface CrewSummary {
  answers: { from: string; data: Data }[];
  reports: number;
  nodes: string[];
}

export async function main(log: (line: string) => void = console.log): Promise<CrewSummary> {
  const password = randomBytes(16).toString("hex");
  const cluster = await startNats({ nodes: 3, tls: true, users: [{ user: "crew", password }], jetstream: true });
  const agents: Agent[] = [];
  try {
    const urls = cluster.urls();
    log(`cluster: ${cluster.nodes.map((n) => `${n.name} ${n.url}`).join(", ")}`);
    // Each agent is homed on one node (listed first) and fails over to the others.
    const onNode = (i: number, mode: "core" | "durable") =>
      nats({
        servers: [...urls.slice(i), ...urls.slice(0, i)],
        tls: { ca: cluster.ca! },
        user: "crew",
        pass: password,
        namespace: "demo",
        mode,
        durable: { replicas: 3 },
      });

    const ids = await Promise.all(["planner", "researcher", "writer", "archivist"].map((id) => generateIdentity(id)));
    const [planner, researcher, writer, archivist] = ids as [typeof ids[0], typeof ids[0], typeof ids[0], typeof ids[0]];
    const trust = new TrustStore();
    for (const id of ids) trust.add(id.publicIdentity);

    // 1. core mode: request/reply across the cluster.
    const p = await createAgent({ identity: planner, trust, transport: onNode(0, "core") });
    const r = await createAgent({ identity: researcher, trust, transport: onNode(1, "core") });
    const w = await createAgent({ identity: writer, trust, transport: onNode(2, "core") });
    agents.push(p, r, w);
    const serve = (agent: Agent, work: (task: string) => string) =>
      void (async () => {
        for await (const msg of agent.messages()) {
          const task = (msg.data as { task: string }).task;
          await msg.reply({ result: work(task) });
        }
      })();
    serve(r, (task) => `3 sources on "${task}"`);
    serve(w, (task) => `a 200-word draft on "${task}"`);
    const answers: CrewSummary["answers"] = [];
    for (const [to, task] of [["researcher", "NATS failover"], ["writer", "sealed envelopes"]] as const) {
      const answer = await p.request(to, { task }, { timeoutMs: 5000 });
      answers.push({ from: answer.from, data: answer.data });
      log(`core: planner (n1) → ${to} (n${to === "researcher" ? 2 : 3}): ${JSON.stringify(answer.data)}`);
    }

    // 2. durable mode: the archivist is offline while the planner files reports.
    const filer = await createAgent({ identity: planner, trust, transport: onNode(0, "durable"), listen: false });
    agents.push(filer);
    for (let i = 1; i <= 3; i++) await filer.send("archivist", { report: i, summary: answers[i % 2]?.data ?? null });
    log("durable: planner filed 3 reports for the archivist, who is offline");
    const a = await createAgent({ identity: archivist, trust, transport: onNode(2, "durable") });
    agents.push(a);
    let reports = 0;
    for await (const msg of a.messages()) {
      reports++;
      log(`durable: archivist (n3) received report ${(msg.data as { report: number }).report} from ${msg.from}`);
      if (reports === 3) break;
    }
    return { answers, reports, nodes: cluster.nodes.map((n) => n.name) };
  } finally {
    await Promise.allSettled(agents.map((a) => a.close()));
    await cluster.stop();
    log("cluster stopped");
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
