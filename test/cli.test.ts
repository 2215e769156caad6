import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { run } from "../bin/sealwire.js";

const dir = mkdtempSync(join(tmpdir(), "sealwire-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const env = { ...process.env, SEALWIRE_PASSPHRASE: "correct horse battery staple", SEALWIRE_TRUST: join(dir, "trust.json") };
const f = (name: string) => join(dir, name);

describe("sealwire CLI walk-through (keygen, trust, hub, listen, send, doctor)", () => {
  it("two agents exchange a message through a hub over Noise/WebSocket on loopback", async () => {
    for (const id of ["hub", "alice", "bob"]) {
      const r = await run(["keygen", "--id", id, "--out", f(`${id}.key`)], { env });
      expect(r.code, r.stderr).toBe(0);
      const pub = JSON.parse(r.stdout);
      expect(pub.id).toBe(id);
      expect(statSync(f(`${id}.key`)).mode & 0o777).toBe(0o600);
    }
    expect((await run(["keygen", "--id", "bob", "--out", f("bob.key")], { env })).stderr).toMatch(/^sealwire: ERR_KEYSTORE_EXISTS: /);
    for (const [id, extra] of [["hub", []], ["alice", []], ["bob", ["--clear", "pii:email"]]] as const) {
      const r = await run(["trust", "add", f(`${id}.key.pub`), ...extra], { env });
      expect(r.code, r.stderr).toBe(0);
    }
    expect(statSync(f("trust.json")).mode & 0o777).toBe(0o600);
    const list = await run(["trust", "list"], { env });
    expect(list.stdout.split("\n")).toHaveLength(3);
    expect(list.stdout).toMatch(/^bob\t.*clearances=pii:email$/m);

    const stopHub = new AbortController();
    let hubUrl = "";
    const hubOut: string[] = [];
    const hubRun = run(["hub", "--listen", "ws://127.0.0.1:0", "--key", f("hub.key"), "--audit", f("hub-audit.log")], {
      env,
      signal: stopHub.signal,
      out: (l) => {
        hubOut.push(l);
        hubUrl = /listening on (\S+)/.exec(l)?.[1] ?? hubUrl;
      },
      err: (l) => hubOut.push(l),
    });
    const t0 = Date.now();
    while (!hubUrl && Date.now() - t0 < 15_000) await new Promise((r) => setTimeout(r, 20));
    expect(hubUrl, hubOut.join("\n")).toMatch(/^ws:\/\/127\.0\.0\.1:\d+/);

    const received: string[] = [];
    const listening = run(["listen", "--hub", hubUrl, "--key", f("bob.key"), "--count", "1"], { env, out: (l) => received.push(l), err: () => {} });
    await new Promise((r) => setTimeout(r, 1500)); // bob connects (its key file takes a moment to decrypt)
    const sent = await run(["send", "--hub", hubUrl, "--key", f("alice.key"), "--to", "bob", "--pii", "pii:email", "mail ana@example.org"], { env });
    expect(sent.code, sent.stderr).toBe(0);
    expect(sent.stdout).toMatch(/^delivered [0-9a-f]{32} to bob$/);
    expect((await listening).code).toBe(0);
    expect(received).toHaveLength(1);
    expect(JSON.parse(received[0]!)).toMatchObject({ from: "alice", data: "mail ana@example.org", tags: { pii: ["pii:email"] } });

    // Refused by policy: alice is not cleared for pii:email.
    const refused = await run(["send", "--hub", hubUrl, "--key", f("bob.key"), "--to", "alice", "--pii", "pii:email", "x@example.org"], { env });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^sealwire: ERR_POLICY_DENIED: policy denied sending [0-9a-f]{32} to "alice": pii_not_cleared$/);

    const doc = await run(["doctor", "--key", f("alice.key"), "--hub", hubUrl], { env });
    expect(doc.code, doc.stdout).toBe(0);
    expect(doc.stdout).toMatch(/reached the hub "hub"/);

    // `trust revoke` in another shell takes effect on the running hub: bob is refused from then on.
    expect((await run(["trust", "revoke", "bob"], { env })).code).toBe(0);
    const t1 = Date.now();
    while (!hubOut.some((l) => l.includes('revoked "bob"')) && Date.now() - t1 < 5000) await new Promise((r) => setTimeout(r, 20));
    expect(hubOut.some((l) => l.includes('revoked "bob"')), hubOut.join("\n")).toBe(true);
    const afterRevoke = await run(["send", "--hub", hubUrl, "--key", f("bob.key"), "--to", "alice", "hi"], { env });
    expect(afterRevoke.code).toBe(1);

    stopHub.abort();
    expect((await hubRun).code).toBe(0);
    const hubPub = JSON.parse(readFileSync(f("hub.key.pub"), "utf8"));
    const verified = await run(["audit", "verify", f("hub-audit.log"), "--key", hubPub.signPub], { env });
    expect(verified.code, verified.stderr).toBe(0);
    expect(readFileSync(f("hub-audit.log"), "utf8")).not.toContain("ana@example.org");
  }, 60_000);

  it("every failure is one coded line that says what to do, and exits non-zero", async () => {
    const wrong = await run(["doctor", "--key", f("alice.key")], { env: { ...env, SEALWIRE_PASSPHRASE: "wrong" } });
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).toMatch(/FAIL  ERR_KEYSTORE_DECRYPT/);
    const none = await run(["send", "--hub", "ws://127.0.0.1:1", "--key", f("alice.key"), "--to", "bob", "x"], { env: { ...env, SEALWIRE_PASSPHRASE: undefined }, signal: AbortSignal.timeout(5000) });
    expect(none.stderr).toMatch(/^sealwire: ERR_NO_PASSPHRASE: .*--passphrase-file/);
    chmodSync(f("trust.json"), 0o666);
    const loose = await run(["trust", "list"], { env });
    expect(loose.stderr).toMatch(/^sealwire: ERR_TRUST_FILE: .* run: chmod 600 /);
    chmodSync(f("trust.json"), 0o600);
    chmodSync(f("bob.key"), 0o644);
    const keyPerm = await run(["send", "--hub", "ws://127.0.0.1:1", "--key", f("bob.key"), "--to", "alice", "x"], { env });
    expect(keyPerm.stderr).toMatch(/^sealwire: ERR_KEYSTORE_PERMISSIONS: .*chmod 600/);
    chmodSync(f("bob.key"), 0o600);
    const noHub = await run(["send", "--hub", "ws://127.0.0.1:1", "--key", f("alice.key"), "--to", "bob", "x"], { env });
    expect(noHub.code).toBe(1);
    expect(noHub.stderr).toMatch(/^sealwire: ERR_\w+: /);
    for (const r of [wrong, none, loose, keyPerm, noHub]) {
      expect(r.stderr.split("\n").length).toBeLessThanOrEqual(1);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack without --debug
    }
    expect((await run(["trust", "add", "{not json"], { env })).stderr).toMatch(/^sealwire: ERR_INVALID_ARGUMENT: /);
    expect((await run(["send", "--hub", "http://x", "--key", f("alice.key"), "--to", "bob", "x"], { env })).stderr).toMatch(/ws:\/\/ or wss:\/\//);
  }, 60_000);
});
