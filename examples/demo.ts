/**
 * `npm run demo`: a hub and three agents as separate processes on loopback, over Noise/WebSocket, driven by the
 * `sealwire` CLI — what two machines on a LAN would run, on one machine.
 * 1. alice → bob, tagged `pii:email`: bob is cleared, the message is delivered (bob's process prints it);
 * 2. alice → carol, the same PII: carol is not cleared, so it is denied (ERR_POLICY_DENIED: pii_not_cleared);
 * 3. the hub stops, writing its final signed checkpoint, and `sealwire audit verify` passes on its audit log.
 * No external service. Exits 0 when every step behaved as described.
 *
 * @module
 * @example
 * ```sh
 * npm run demo
 * ```
 */
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { Lab } from "./_processes.js";

export async function main(log: (l: string) => void = console.log): Promise<boolean> {
  let ok = true;
  const check = (cond: boolean, what: string) => {
    log(`${cond ? "ok  " : "FAIL"} ${what}`);
    ok &&= cond;
  };
  const lab = new Lab();
  try {
    await lab.keygen({ hub: {}, alice: {}, bob: { clearances: ["pii:email"] }, carol: {} });
    log(`keys and trust file in ${lab.dir} (each key file encrypted, mode 0600)`);
    const hub = lab.start("hub", ["hub", "--listen", "ws://127.0.0.1:0", "--key", "hub.key", "--audit", "audit.log"]);
    const url = await hub.waitFor(/listening on (\S+)/);
    log(`hub   pid ${hub.child.pid}  ${url}  (Noise over WebSocket: no certificates, keys pinned)`);
    const bob = lab.start("bob", ["listen", "--hub", url, "--key", "bob.key", "--count", "1"]);
    const carol = lab.start("carol", ["listen", "--hub", url, "--key", "carol.key"]);
    await Promise.all([bob.waitFor(/connected to/), carol.waitFor(/connected to/)]);
    log(`bob   pid ${bob.child.pid}  listening (cleared for pii:email)`);
    log(`carol pid ${carol.child.pid}  listening (no clearance)`);

    const toBob = await lab.run("alice", ["send", "--hub", url, "--key", "alice.key", "--to", "bob", "--pii", "pii:email", "Interview notes: reach Ana at ana@example.org"]);
    log(`alice → bob:   ${toBob.lines.join(" ")}`);
    const got = JSON.parse(await bob.waitFor(/^(\{.*\})$/));
    log(`bob printed:   ${JSON.stringify(got)}`);
    check(toBob.code === 0 && got.from === "alice" && got.tags.pii[0] === "pii:email", "PII message delivered to the cleared agent");

    const toCarol = await lab.run("alice", ["send", "--hub", url, "--key", "alice.key", "--to", "carol", "--pii", "pii:email", "Interview notes: reach Ana at ana@example.org"]);
    log(`alice → carol: ${toCarol.lines.join(" ")}`);
    check(toCarol.code !== 0 && toCarol.lines.some((l) => /ERR_POLICY_DENIED.*pii_not_cleared/.test(l)), "PII message denied for the uncleared agent");
    check(!carol.lines.some((l) => l.startsWith("{")), "carol received nothing");

    hub.child.kill("SIGTERM");
    check((await hub.exited) === 0, "hub stopped cleanly (final signed checkpoint written)");
    const trust = JSON.parse(readFileSync(lab.path("trust.json"), "utf8")) as { peers: { identity: { id: string; signPub: string } }[] };
    const hubKey = trust.peers.find((p) => p.identity.id === "hub")!.identity.signPub;
    const verify = await lab.run("audit", ["audit", "verify", "audit.log", "--key", hubKey]);
    log(`audit verify:  ${verify.lines.join(" ")}`);
    check(verify.code === 0 && /^OK: /.test(verify.lines[0] ?? ""), "audit log verifies");
    check(!readFileSync(lab.path("audit.log"), "utf8").includes("ana@example.org"), "the audit log holds no payload");
  } catch (e) {
    check(false, `demo failed: ${(e as Error).message}`);
  } finally {
    await lab.stop();
  }
  log(ok ? "demo: all steps behaved as expected" : "demo: SOMETHING WENT WRONG");
  return ok;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = (await main()) ? 0 : 1;
