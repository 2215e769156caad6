/**
 * The README's quick start, as a program: two agents in one process over the in-memory transport. The lines
 * between the markers are exactly the README example; the one marked line starts bob's responder so that the
 * request has someone to answer it. `test/examples.test.ts` runs this file, so it cannot rot.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source examples/quickstart.ts
 * ```
 */
import { pathToFileURL } from "node:url";
// --- README example begins ---
import { generateIdentity, TrustStore, createAgent } from "sealwire";
import { memory } from "sealwire/transports/memory";

export async function main(): Promise<unknown> {
  const net = memory();
  const alice = await generateIdentity("alice");
  const bob = await generateIdentity("bob");
  const trust = new TrustStore();
  trust.add(alice.publicIdentity);
  trust.add(bob.publicIdentity, { clearances: ["pii:email"] });

  const a = await createAgent({ identity: alice, trust, transport: net });
  const b = await createAgent({ identity: bob, trust, transport: net });
  await a.send("bob", { text: "hi bob" }, { tags: { pii: ["pii:email"] } });
  for await (const msg of b.messages()) { console.log(msg.from, msg.data, msg.tags); break; }
  void (async () => { for await (const msg of b.messages()) await msg.reply({ pong: msg.data }); })(); // bob answers requests
  const answer = await a.request("bob", { q: "ping" }, { timeoutMs: 2000 }); // b replies via msg.reply(...)
  await a.close(); await b.close();
  // --- README example ends ---
  console.log(answer.from, answer.data);
  alice.close();
  bob.close();
  return answer.data;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
