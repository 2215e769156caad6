import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import { nativeProvider, nobleProvider } from "../src/_crypto.js";
import { EnvelopeOpener, encodePayload, sealEnvelope } from "../src/envelope.js";
import { Identity, generateIdentity, parsePublicIdentity } from "../src/identity.js";
import { TrustStore } from "../src/trust.js";

/** Every textual form a key could leak in. */
function forms(key: Uint8Array): string[] {
  const b = Buffer.from(key);
  return [b.toString("hex"), b.toString("hex").toUpperCase(), b.toString("base64"), b.toString("base64url"), b.toString("base64").replace(/=+$/, "")];
}

function assertNoSecret(text: string, secrets: Uint8Array[]): void {
  for (const s of secrets) for (const f of forms(s)) expect(text.includes(f), `leaked ${f.slice(0, 6)}…`).toBe(false);
}

function captureError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    const err = e as Error & { cause?: unknown };
    return [String(err), err.message, err.stack ?? "", inspect(err, { depth: 10 }), JSON.stringify(err), String(err.cause ?? "")].join("\n");
  }
  throw new Error("expected a failure");
}

describe("identities", () => {
  it.each([nativeProvider, nobleProvider])("generate → publicIdentity is plain, serializable and self-consistent ($name)", async (provider) => {
    const alice = await generateIdentity("alice", { provider });
    const pub = JSON.parse(JSON.stringify(alice.publicIdentity));
    expect(Object.keys(pub).sort()).toEqual(["fingerprint", "id", "kid", "sealPub", "signPub", "v"]);
    expect(parsePublicIdentity(pub)).toEqual(alice.publicIdentity);
    expect(pub.kid).toMatch(/^[0-9a-f]{16}$/);
    expect(pub.fingerprint).toMatch(/^sw1:([0-9a-f]{4}-){9}[0-9a-f]{4}$/);
    const again = Identity.fromSecrets("alice", alice.exportSecrets(), { provider });
    expect(again.publicIdentity).toEqual(alice.publicIdentity);
    // Per-agent keys: two identities never share a key.
    const bob = await generateIdentity("bob", { provider });
    expect(bob.publicIdentity.signPub).not.toBe(pub.signPub);
    expect(bob.publicIdentity.sealPub).not.toBe(pub.sealPub);
  });

  it("native and noble derive the same public keys and signatures from the same secrets", () => {
    for (let i = 0; i < 10; i++) {
      const secrets = Identity.generate("x", { provider: nativeProvider }).exportSecrets();
      const a = Identity.fromSecrets("x", secrets, { provider: nativeProvider });
      const b = Identity.fromSecrets("x", secrets, { provider: nobleProvider });
      expect(a.publicIdentity).toEqual(b.publicIdentity);
      const msg = nativeProvider.randomBytes(i * 37);
      expect(Buffer.from(a.sign(msg)).toString("hex")).toBe(Buffer.from(b.sign(msg)).toString("hex")); // Ed25519 is deterministic
      const x = nobleProvider.randomBytes(32);
      const pk = nobleProvider.x25519FromSecret(x).publicKey;
      expect(nativeProvider.x25519(a.sealingKey(), nativeProvider.x25519Public(pk))).toEqual(
        nobleProvider.x25519(b.sealingKey(), nobleProvider.x25519Public(pk)),
      );
    }
  });

  it("refuses bad ids and malformed or forged public identities with ERR_INVALID_ARGUMENT", async () => {
    for (const id of ["", "a b", "x".repeat(65), "-x", "a.b", "é", 5 as unknown as string]) {
      await expect(generateIdentity(id)).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    }
    const pub = (await generateIdentity("alice")).publicIdentity;
    const other = (await generateIdentity("alice")).publicIdentity;
    const bad: unknown[] = [
      null,
      "not json",
      "[]",
      { ...pub, v: 2 },
      { ...pub, extra: 1 },
      { ...pub, kid: other.kid },
      { ...pub, signPub: other.signPub },
      { ...pub, sealPub: pub.sealPub + "A" },
      { ...pub, fingerprint: other.fingerprint },
      { ...pub, id: "bob" },
    ];
    for (const b of bad) expect(() => parsePublicIdentity(b)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });

  it("a closed identity is wiped and refuses every use with ERR_CLOSED", async () => {
    const alice = await generateIdentity("alice");
    const trust = new TrustStore();
    const bob = await generateIdentity("bob");
    trust.add(bob.publicIdentity);
    let notified = 0;
    alice.onClose(() => notified++);
    alice.close();
    alice.close();
    expect(notified).toBe(1);
    expect(alice.closed).toBe(true);
    expect(() => alice.sign(new Uint8Array(1))).toThrow(expect.objectContaining({ code: "ERR_CLOSED" }));
    expect(() => alice.exportSecrets()).toThrow(expect.objectContaining({ code: "ERR_CLOSED" }));
    expect(() => sealEnvelope(alice, trust.require("bob"), encodePayload("x"))).toThrow(expect.objectContaining({ code: "ERR_CLOSED" }));
  });

  it("close() zeroes the secret buffers it held (noble handles hold their own copy too)", () => {
    const alice = Identity.generate("alice", { provider: nobleProvider });
    const handle = alice.sealingKey() as unknown as { sk: Uint8Array };
    const skView = handle.sk; // the handle's own buffer
    expect(skView.some((b) => b !== 0)).toBe(true);
    alice.close();
    expect(skView.every((b) => b === 0)).toBe(true);
  });
});

describe("secrets never escape", () => {
  it.each([nativeProvider, nobleProvider])("inspect, JSON, String, template literals and error output hold no private key form ($name)", async (provider) => {
    const alice = await generateIdentity("alice", { provider });
    const bob = await generateIdentity("bob", { provider });
    const s = alice.exportSecrets();
    const secrets = [s.signSeed, s.sealSecret];
    const texts = [
      inspect(alice, { depth: 20, showHidden: true }),
      inspect({ wrapped: [alice] }, { depth: 20, showHidden: true }),
      JSON.stringify(alice),
      JSON.stringify({ alice }),
      String(alice),
      `${alice}`,
      inspect(alice.sealingKey(), { showHidden: true, depth: 20 }),
      JSON.stringify(alice.sealingKey()),
      String(alice.sealingKey()),
    ];
    for (const t of texts) assertNoSecret(t, secrets);
    expect(inspect(alice)).toContain("redacted");

    // Failing calls: their messages and stacks never contain key material.
    const trust = new TrustStore({ provider });
    trust.add(bob.publicIdentity);
    trust.add(alice.publicIdentity);
    const env = sealEnvelope(alice, trust.require("bob"), encodePayload("secret payload"));
    const outputs = [
      captureError(() => new EnvelopeOpener({ identity: alice, trust }).open(env.bytes)), // wrong recipient
      captureError(() => trust.add({ ...alice.publicIdentity, kid: "0000000000000000" })),
      captureError(() => Identity.fromSecrets("alice", { signSeed: s.signSeed.subarray(1), sealSecret: s.sealSecret }, { provider })),
      captureError(() => Identity.fromSecrets("bad id!", s, { provider })),
      captureError(() => provider.x25519(alice.sealingKey(), provider.x25519Public(new Uint8Array(32)))),
    ];
    const tampered = Uint8Array.from(env.bytes);
    tampered[tampered.length - 80]! ^= 1;
    outputs.push(captureError(() => new EnvelopeOpener({ identity: bob, trust }).open(tampered)));
    for (const o of outputs) {
      assertNoSecret(o, secrets);
      expect(o).not.toContain("secret payload");
    }
    alice.close();
    outputs.push(captureError(() => alice.sign(new Uint8Array(1))));
    assertNoSecret(outputs.at(-1)!, secrets);
  });
});

describe("TrustStore", () => {
  it("add/get/require/revoke, roles and clearances validated, revocation sticky and announced", async () => {
    const trust = new TrustStore();
    const bob = await generateIdentity("bob");
    const e = trust.add(bob.publicIdentity, { roles: ["writer"], clearances: ["pii:email", "pii:email"] });
    expect(e.clearances).toEqual(["pii:email"]);
    expect(trust.require("bob").roles).toEqual(["writer"]);
    expect(trust.findBySealKey(bob.sealPublicKey)?.id).toBe("bob");
    expect(() => trust.require("carol")).toThrow(expect.objectContaining({ code: "ERR_UNKNOWN_PEER" }));
    expect(() => trust.add(bob.publicIdentity, { clearances: ["email"] })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    expect(() => trust.add(bob.publicIdentity, { roles: ["Bad Role"] })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    const impostor = await generateIdentity("bob");
    expect(() => trust.add(impostor.publicIdentity)).toThrow(expect.objectContaining({ code: "ERR_DUPLICATE_PEER" }));
    const revoked: string[] = [];
    trust.onRevoke((x) => revoked.push(x.id));
    trust.revoke("bob");
    expect(revoked).toEqual(["bob"]);
    expect(() => trust.require("bob")).toThrow(expect.objectContaining({ code: "ERR_REVOKED_PEER" }));
    expect(trust.findBySealKey(bob.sealPublicKey)).toBeUndefined();
    expect(() => trust.add(bob.publicIdentity)).toThrow(expect.objectContaining({ code: "ERR_REVOKED_PEER" }));
    expect(() => trust.revoke("nobody")).toThrow(expect.objectContaining({ code: "ERR_UNKNOWN_PEER" }));
  });
});
