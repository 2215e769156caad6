/**
 * A hub and two agents as three processes over Noise/WebSocket on loopback, using only the `sealwire` CLI:
 * keygen for each, a shared trust file, the hub, bob listening, alice sending. No certificates: the keys are
 * pinned in the trust file. Exits 0 when bob printed alice's message.
 *
 * @module
 * @example
 * ```sh
 * npx tsx examples/two-processes/index.ts
 * ```
 */
import { pathToFileURL } from "node:url";
import { Lab } from "../_processes.js";

export async function main(log: (l: string) => void = console.log): Promise<boolean> {
  const lab = new Lab();
  try {
    // Same as `sealwire keygen --id <id>` + `sealwire trust add <id>.key.pub` for each (see examples/homelab).
    await lab.keygen({ hub: {}, alice: {}, bob: {} });
    const hub = lab.start("hub", ["hub", "--listen", "ws://127.0.0.1:0", "--key", "hub.key"]);
    const url = await hub.waitFor(/listening on (\S+)/);
    log(`hub (process ${hub.child.pid}) listening on ${url}`);
    const bob = lab.start("bob", ["listen", "--hub", url, "--key", "bob.key", "--count", "1"]);
    await bob.waitFor(/connected to/);
    log(`bob (process ${bob.child.pid}) connected`);
    const alice = await lab.run("alice", ["send", "--hub", url, "--key", "alice.key", "--to", "bob", "hello from another process"]);
    log(`alice: ${alice.lines.join(" ")}`);
    const got = JSON.parse(await bob.waitFor(/^(\{.*\})$/));
    log(`bob printed: ${JSON.stringify(got)}`);
    return alice.code === 0 && got.from === "alice" && got.data === "hello from another process" && (await bob.exited) === 0;
  } finally {
    await lab.stop();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = (await main()) ? 0 : 1;
