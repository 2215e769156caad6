import * as nc from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { inspect } from "node:util";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { afterAll, describe, expect, it } from "vitest";
import { nativeProvider, nobleProvider } from "../src/_crypto.js";
import { EnvelopeOpener, encodePayload, sealEnvelope } from "../src/envelope.js";
import { SealwireError, type ErrorCode } from "../src/errors.js";
import { Identity, generateIdentity } from "../src/identity.js";
import {
  DEFAULT_KDF,
  KEYSTORE_MAGIC,
  keystoreIdentity,
  loadIdentity,
  passphraseFromEnv,
  passphraseFromFd,
  passphraseFromFile,
  readPublicIdentity,
  resolveIdentity,
  saveIdentity,
  type KdfParams,
} from "../src/keystore.js";
import { TrustStore } from "../src/trust.js";

// Small scrypt parameters wherever the test is not about the parameters (128 KiB, well under a millisecond).
const FAST: KdfParams = { logN: 10, r: 1, p: 1 };
const PASS = "correct horse battery staple";

const root = fs.mkdtempSync(path.join(os.tmpdir(), "sealwire-keystore-"));
let n = 0;
const tmpPath = (name = "k") => path.join(root, `${name}-${n++}.keystore`);
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** Every textual form a key could leak in. */
function forms(key: Uint8Array): string[] {
  const b = Buffer.from(key);
  return [b.toString("hex"), b.toString("hex").toUpperCase(), b.toString("base64"), b.toString("base64url"), b.toString("latin1")];
}
function assertNoSecret(text: string, secrets: Uint8Array[], extra: string[] = []): void {
  for (const s of secrets) for (const f of forms(s)) expect(text.includes(f), `leaked a form of a secret`).toBe(false);
  for (const f of extra) expect(text.includes(f), `leaked ${f.slice(0, 3)}…`).toBe(false);
}
/** Runs `fn`, expects a SealwireError with `code` (or one of `code`), returns all its printable forms. */
async function expectCode(fn: () => Promise<unknown>, code: ErrorCode | ErrorCode[]): Promise<string> {
  const codes = Array.isArray(code) ? code : [code];
  try {
    await fn();
  } catch (e) {
    expect(SealwireError.is(e), String(e)).toBe(true);
    expect(codes).toContain((e as SealwireError).code);
    const err = e as Error & { cause?: unknown };
    return [String(err), err.message, err.stack ?? "", inspect(err, { depth: 10 }), JSON.stringify(err), String(err.cause ?? "")].join("\n");
  }
  throw new Error(`expected ${codes.join("|")}, but it succeeded`);
}

async function saved(provider = nativeProvider, kdf: KdfParams = FAST): Promise<{ file: string; id: Identity; secrets: Uint8Array[] }> {
  const id = await generateIdentity("alice", { provider });
  const file = tmpPath();
  await saveIdentity(file, id, { passphrase: PASS, kdf });
  const s = id.exportSecrets();
  return { file, id, secrets: [s.signSeed, s.sealSecret] };
}

describe("keystore: round trip and format", () => {
  it.each([
    [nativeProvider, nativeProvider],
    [nativeProvider, nobleProvider],
    [nobleProvider, nativeProvider],
    [nobleProvider, nobleProvider],
  ].map(([w, r]) => ({ w: w!, r: r! })))("saves with $w.name and loads with $r.name: the same keys (scrypt implementations agree)", async ({ w, r }) => {
    const { file, id } = await saved(w);
    const back = await loadIdentity(file, { passphrase: PASS, provider: r });
    expect(back.provider).toBe(r);
    expect(back.publicIdentity).toEqual(id.publicIdentity);
    const msg = nc.randomBytes(100);
    expect(Buffer.from(back.sign(msg))).toEqual(Buffer.from(id.sign(msg))); // Ed25519 is deterministic
    back.close();
    id.close();
  });

  it("writes mode 0600 whatever the umask, exactly three lines, no secret in clear, fresh salt and nonce", async () => {
    const old = process.umask(0);
    try {
      const { file, id, secrets } = await saved();
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      process.umask(0o277); // would strip our own write bit: we set 0600 explicitly
      const file2 = tmpPath();
      await saveIdentity(file2, id, { passphrase: PASS, kdf: FAST });
      expect(fs.statSync(file2).mode & 0o777).toBe(0o600);
      const text = fs.readFileSync(file, "utf8");
      const lines = text.split("\n");
      expect(lines).toHaveLength(4);
      expect(lines[0]).toBe(KEYSTORE_MAGIC);
      expect(lines[3]).toBe("");
      expect(lines[2]).toMatch(/^[A-Za-z0-9_-]{107}$/); // 64 secret bytes + 16-byte tag
      const h1 = JSON.parse(lines[1]!);
      expect(Object.keys(h1)).toEqual(["kdf", "logN", "r", "p", "salt", "aead", "nonce", "identity"]);
      expect(h1.identity).toEqual(id.publicIdentity);
      const h2 = JSON.parse(fs.readFileSync(file2, "utf8").split("\n")[1]!);
      expect(h2.salt).not.toBe(h1.salt);
      expect(h2.nonce).not.toBe(h1.nonce);
      assertNoSecret(text, secrets, [PASS]);
      // No temp file left behind.
      expect(fs.readdirSync(root).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    } finally {
      process.umask(old);
    }
  });

  it("matches the documented format: an independent decryption from the SECURITY.md description", async () => {
    const { file, secrets } = await saved();
    const text = fs.readFileSync(file, "utf8");
    const [l1, l2, l3] = text.split("\n") as [string, string, string];
    const h = JSON.parse(l2);
    const salt = Buffer.concat([Buffer.from("sealwire/v1/keystore-kdf:"), Buffer.from(h.salt, "base64url")]);
    const key = nc.scryptSync(Buffer.from(PASS.normalize("NFC")), salt, 32, { N: 2 ** h.logN, r: h.r, p: h.p });
    const aad = Buffer.from(`${l1}\n${l2}\n`);
    const pt = xchacha20poly1305(key, Buffer.from(h.nonce, "base64url"), aad).decrypt(Buffer.from(l3, "base64url"));
    expect(Buffer.from(pt.subarray(0, 32))).toEqual(Buffer.from(secrets[0]!));
    expect(Buffer.from(pt.subarray(32))).toEqual(Buffer.from(secrets[1]!));
  });

  it.each([{ provider: nativeProvider }, { provider: nobleProvider }])("loads the committed known-answer file (RFC 8032 / RFC 7748 keys) with $provider.name", async ({ provider }) => {
    const file = tmpPath("kat");
    fs.copyFileSync(new URL("./vectors/keystore/rfc-alice.keystore", import.meta.url), file);
    fs.chmodSync(file, 0o600); // git does not keep modes
    const id = await loadIdentity(file, { passphrase: PASS, provider });
    // Public keys from RFC 8032 §7.1 test 1 and RFC 7748 §6.1 (Alice): derived by each provider from the secrets.
    expect(Buffer.from(id.signPublicKey).toString("hex")).toBe("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    expect(Buffer.from(id.sealPublicKey).toString("hex")).toBe("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    expect(Buffer.from(id.sign(new Uint8Array(0))).toString("hex")).toBe(
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    );
    id.close();
  });

  it("uses N=2^17, r=8, p=1 by default", async () => {
    const id = await generateIdentity("alice", { provider: nativeProvider });
    const file = tmpPath();
    await saveIdentity(file, id, { passphrase: PASS });
    const h = JSON.parse(fs.readFileSync(file, "utf8").split("\n")[1]!);
    expect({ logN: h.logN, r: h.r, p: h.p }).toEqual(DEFAULT_KDF);
    expect({ logN: 17, r: 8, p: 1 }).toEqual(DEFAULT_KDF);
    const back = await loadIdentity(file, { passphrase: PASS, provider: nativeProvider });
    expect(back.kid).toBe(id.kid);
  });

  it("a loaded identity seals and opens envelopes", async () => {
    const { file } = await saved();
    const alice = await loadIdentity(file, { passphrase: PASS });
    const bob = await generateIdentity("bob");
    const trust = new TrustStore();
    trust.add(alice.publicIdentity);
    trust.add(bob.publicIdentity);
    const { bytes } = sealEnvelope(alice, trust.require("bob"), encodePayload("hi"));
    expect(new EnvelopeOpener({ identity: bob, trust }).open(bytes).header.from).toBe("alice");
  });

  it("readPublicIdentity needs no passphrase", async () => {
    const { file, id } = await saved();
    expect(await readPublicIdentity(file)).toEqual(id.publicIdentity);
    fs.chmodSync(file, 0o644); // public data: no permission check
    expect(await readPublicIdentity(file)).toEqual(id.publicIdentity);
    fs.writeFileSync(file, "not a keystore\n");
    await expectCode(() => readPublicIdentity(file), "ERR_KEYSTORE_FORMAT");
    fs.writeFileSync(file, `${KEYSTORE_MAGIC}\n{"kdf":"scr`);
    await expectCode(() => readPublicIdentity(file), "ERR_KEYSTORE_FORMAT");
  });
});

describe("keystore: saving", () => {
  it("never replaces an existing file unless asked, and leaves no temp file on failure", async () => {
    const { file, id } = await saved();
    const before = fs.readFileSync(file);
    await expectCode(() => saveIdentity(file, id, { passphrase: PASS, kdf: FAST }), "ERR_KEYSTORE_EXISTS");
    expect(fs.readFileSync(file)).toEqual(before);
    const other = await generateIdentity("alice");
    await saveIdentity(file, other, { passphrase: "new", kdf: FAST, overwrite: true });
    expect((await loadIdentity(file, { passphrase: "new" })).kid).toBe(other.kid);
    await expectCode(() => saveIdentity(path.join(root, "no-such-dir", "k"), id, { passphrase: PASS, kdf: FAST }), "ERR_KEYSTORE_IO");
    expect(fs.readdirSync(root).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });

  it("refuses bad arguments, a closed identity and KDF parameters outside the limits", async () => {
    const id = await generateIdentity("alice");
    const file = tmpPath();
    for (const kdf of [{ logN: 9 }, { logN: 21 }, { logN: 10.5 }, { r: 0 }, { r: 33 }, { p: 0 }, { p: 17 }, { logN: 20, r: 8 }]) {
      await expectCode(() => saveIdentity(file, id, { passphrase: PASS, kdf }), "ERR_INVALID_ARGUMENT");
    }
    await expectCode(() => saveIdentity(file, {} as Identity, { passphrase: PASS }), "ERR_INVALID_ARGUMENT");
    await expectCode(() => saveIdentity("", id, { passphrase: PASS }), "ERR_INVALID_ARGUMENT");
    id.close();
    await expectCode(() => saveIdentity(file, id, { passphrase: PASS, kdf: FAST }), "ERR_CLOSED");
    expect(fs.existsSync(file)).toBe(false);
  });
});

describe("keystore: refusing to load", () => {
  it.each([0o644, 0o640, 0o604, 0o660, 0o606, 0o620, 0o602, 0o610, 0o601, 0o777].map((mode) => ({ mode, octal: mode.toString(8) })))(
    "refuses mode $octal with ERR_KEYSTORE_PERMISSIONS and the exact chmod, before asking for the passphrase",
    async ({ mode }) => {
      const { file } = await saved();
      fs.chmodSync(file, mode);
      let asked = 0;
      const text = await expectCode(
        () =>
          loadIdentity(file, {
            passphrase: () => {
              asked++;
              return PASS;
            },
          }),
        "ERR_KEYSTORE_PERMISSIONS",
      );
      expect(text).toContain(`chmod 600 ${path.resolve(file)}`);
      expect(asked).toBe(0);
    },
  );

  it("accepts 0600 and 0400, and quotes a path with spaces in the chmod advice", async () => {
    const { file, id } = await saved();
    fs.chmodSync(file, 0o400);
    expect((await loadIdentity(file, { passphrase: PASS })).kid).toBe(id.kid);
    const spaced = path.join(root, "my keys 'x'.keystore");
    fs.copyFileSync(file, spaced);
    fs.chmodSync(spaced, 0o640);
    const text = await expectCode(() => loadIdentity(spaced, { passphrase: PASS }), "ERR_KEYSTORE_PERMISSIONS");
    expect(text).toContain(`chmod 600 '${spaced.replace(/'/g, `'\\''`)}'`);
  });

  it("wrong passphrase: ERR_KEYSTORE_DECRYPT, nothing returned, nothing secret in the error", async () => {
    const { file, secrets } = await saved();
    for (const p of ["correct horse battery stapl", PASS + " ", PASS.toUpperCase(), "hunter2 Tr0ub4dor"]) {
      const text = await expectCode(() => loadIdentity(file, { passphrase: p }), "ERR_KEYSTORE_DECRYPT");
      assertNoSecret(text, secrets, [PASS, p]);
    }
  });

  it("truncated at every length: ERR_KEYSTORE_DECRYPT", async () => {
    const { file, secrets } = await saved();
    const full = fs.readFileSync(file);
    const cut = tmpPath("cut");
    for (let len = 0; len < full.length; len++) {
      fs.writeFileSync(cut, full.subarray(0, len), { mode: 0o600 });
      const text = await expectCode(() => loadIdentity(cut, { passphrase: PASS }), "ERR_KEYSTORE_DECRYPT");
      if (len % 50 === 0) assertNoSecret(text, secrets, [PASS]);
    }
  });

  it("every single-byte edit is refused; past the magic line, always with ERR_KEYSTORE_DECRYPT unless it names another algorithm or out-of-bounds parameters", async () => {
    const { file } = await saved();
    const full = fs.readFileSync(file);
    const text = full.toString("latin1");
    const headerStart = text.indexOf("\n") + 1;
    const fieldsWithAdvice = ["kdf", "logN", "r", "p", "aead"].map((k) => {
      const at = text.indexOf(`"${k}":`, headerStart);
      const end = text.indexOf(",", at);
      return [at, end] as const;
    });
    const edited = tmpPath("edit");
    for (let i = 0; i < full.length; i++) {
      const b = Buffer.from(full);
      b[i]! ^= i % 3 === 0 ? 0x20 : 0x01;
      fs.writeFileSync(edited, b, { mode: 0o600 });
      const inAdviceField = i < headerStart || fieldsWithAdvice.some(([s, e]) => i >= s && i <= e);
      await expectCode(() => loadIdentity(edited, { passphrase: PASS }), inAdviceField ? ["ERR_KEYSTORE_DECRYPT", "ERR_KEYSTORE_FORMAT"] : "ERR_KEYSTORE_DECRYPT");
    }
  });

  it("well-formed edits of the authenticated header (kdf cost, salt, nonce, another identity, a re-spelling) are ERR_KEYSTORE_DECRYPT", async () => {
    const { file } = await saved();
    const [l1, l2, l3] = fs.readFileSync(file, "utf8").split("\n") as [string, string, string];
    const h = JSON.parse(l2);
    const other = (await generateIdentity("mallory")).publicIdentity;
    const variants = [
      JSON.stringify({ ...h, logN: 11 }),
      JSON.stringify({ ...h, r: 2 }),
      JSON.stringify({ ...h, salt: nc.randomBytes(32).toString("base64url") }),
      JSON.stringify({ ...h, nonce: nc.randomBytes(24).toString("base64url") }),
      JSON.stringify({ ...h, identity: other }),
      JSON.stringify(h, null, 1).replace(/\n/g, ""), // same values, other spelling
      l2.replace("{", '{"kdf":"scrypt",'), // duplicate key
      JSON.stringify({ ...h, extra: 1 }),
    ];
    const edited = tmpPath("edit");
    for (const v of variants) {
      fs.writeFileSync(edited, `${l1}\n${v}\n${l3}\n`, { mode: 0o600 });
      await expectCode(() => loadIdentity(edited, { passphrase: PASS }), "ERR_KEYSTORE_DECRYPT");
    }
    // A ciphertext from another keystore under the same passphrase does not move across headers.
    const { file: f2 } = await saved();
    const c2 = fs.readFileSync(f2, "utf8").split("\n")[2]!;
    fs.writeFileSync(edited, `${l1}\n${l2}\n${c2}\n`, { mode: 0o600 });
    await expectCode(() => loadIdentity(edited, { passphrase: PASS }), "ERR_KEYSTORE_DECRYPT");
  });

  it("hostile KDF parameters are refused fast with ERR_KEYSTORE_FORMAT, before any allocation or passphrase prompt", async () => {
    const { file } = await saved();
    const [l1, l2, l3] = fs.readFileSync(file, "utf8").split("\n") as [string, string, string];
    const h = JSON.parse(l2);
    const hostile = [
      { logN: 30 },
      { logN: 64 },
      { logN: 20, r: 8 }, // 1 GiB
      { logN: 19, r: 8 }, // 512 MiB
      { r: 2 ** 20 },
      { p: 2 ** 20 },
      { logN: 18, r: 8, p: 16 }, // memory fine, work 64× the default
      { logN: -1 },
      { logN: 10.5 },
      { logN: "17" },
      { r: null },
      { kdf: "argon2id" },
      { aead: "aes-256-gcm" },
    ];
    const edited = tmpPath("hostile");
    for (const patch of hostile) {
      fs.writeFileSync(edited, `${l1}\n${JSON.stringify({ ...h, ...patch })}\n${l3}\n`, { mode: 0o600 });
      let asked = 0;
      const t0 = performance.now();
      await expectCode(() => loadIdentity(edited, { passphrase: () => (asked++, PASS) }), "ERR_KEYSTORE_FORMAT");
      expect(performance.now() - t0).toBeLessThan(200);
      expect(asked).toBe(0);
    }
  });

  it("foreign files are ERR_KEYSTORE_FORMAT; missing files and directories ERR_KEYSTORE_IO", async () => {
    const f = tmpPath("foreign");
    const cases: [string | Buffer, ErrorCode][] = [
      ["-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n", "ERR_KEYSTORE_FORMAT"],
      ['{"v":1,"id":"alice"}\n', "ERR_KEYSTORE_FORMAT"],
      [nc.randomBytes(300), "ERR_KEYSTORE_FORMAT"],
      ["sealwire-keystore/2\n{}\nxx\n", "ERR_KEYSTORE_FORMAT"],
      [`${KEYSTORE_MAGIC}\n` + "x".repeat(9000), "ERR_KEYSTORE_FORMAT"], // over the size bound
    ];
    for (const [content, code] of cases) {
      fs.writeFileSync(f, content, { mode: 0o600 });
      const text = await expectCode(() => loadIdentity(f, { passphrase: PASS }), code);
      if (String(content).startsWith("sealwire-keystore/2")) expect(text).toContain("format 2");
    }
    const missing = await expectCode(() => loadIdentity(path.join(root, "missing"), { passphrase: PASS }), "ERR_KEYSTORE_IO");
    expect(missing).toContain("sealwire keygen");
    fs.mkdirSync(path.join(root, "dir"), { mode: 0o700 });
    await expectCode(() => loadIdentity(path.join(root, "dir"), { passphrase: PASS }), "ERR_KEYSTORE_IO");
    await expectCode(() => loadIdentity(f, { passphrase: PASS, maxKdfMemoryBytes: 2 ** 40 }), "ERR_INVALID_ARGUMENT");
  });
});

describe("passphrases", () => {
  it("missing or empty is ERR_NO_PASSPHRASE, never a default (save and load)", async () => {
    const { file, id } = await saved();
    const empty: unknown[] = [undefined, null, "", new Uint8Array(0), () => "", () => new Uint8Array(0), async () => "", () => undefined];
    for (const passphrase of empty) {
      await expectCode(() => loadIdentity(file, { passphrase } as never), "ERR_NO_PASSPHRASE");
      await expectCode(() => saveIdentity(tmpPath(), id, { passphrase, kdf: FAST } as never), "ERR_NO_PASSPHRASE");
    }
    await expectCode(() => loadIdentity(file, undefined as never), "ERR_NO_PASSPHRASE");
    await expectCode(() => loadIdentity(file, {} as never), "ERR_NO_PASSPHRASE");
    await expectCode(() => loadIdentity(file, { passphrase: 42 } as never), "ERR_INVALID_ARGUMENT");
    await expectCode(() => loadIdentity(file, { passphrase: "x".repeat(4097) }), "ERR_INVALID_ARGUMENT");
  });

  it("provider failures: ERR_NO_PASSPHRASE with the cause; sealwire errors pass through", async () => {
    const { file } = await saved();
    const boom = new Error("vault unreachable");
    const text = await expectCode(
      () =>
        loadIdentity(file, {
          passphrase: () => {
            throw boom;
          },
        }),
      "ERR_NO_PASSPHRASE",
    );
    expect(text).toContain("vault unreachable");
    delete process.env["SEALWIRE_TEST_NOPE"];
    const t2 = await expectCode(() => loadIdentity(file, { passphrase: passphraseFromEnv("SEALWIRE_TEST_NOPE") }), "ERR_NO_PASSPHRASE");
    expect(t2).toContain("SEALWIRE_TEST_NOPE");
  });

  it("strings are NFC-normalised: composed and decomposed accents open the same file", async () => {
    const id = await generateIdentity("alice");
    const file = tmpPath();
    await saveIdentity(file, id, { passphrase: "caf\u00e9 cr\u00e8me", kdf: FAST });
    expect((await loadIdentity(file, { passphrase: "cafe\u0301 cre\u0300me" })).kid).toBe(id.kid);
  });

  it("bytes passed directly are left alone; bytes returned by a provider are wiped after use, on success and failure", async () => {
    const { file } = await saved();
    const direct = new TextEncoder().encode(PASS);
    await loadIdentity(file, { passphrase: direct });
    expect(new TextDecoder().decode(direct)).toBe(PASS);
    const returned = new TextEncoder().encode(PASS);
    await loadIdentity(file, { passphrase: async () => returned });
    expect(returned.every((x) => x === 0)).toBe(true);
    const wrong = new TextEncoder().encode("wrong");
    await expectCode(() => loadIdentity(file, { passphrase: () => wrong }), "ERR_KEYSTORE_DECRYPT");
    expect(wrong.every((x) => x === 0)).toBe(true);
  });

  it("passphraseFromEnv reads at call time, refuses unset or empty, and can unset the variable", async () => {
    const { file, id } = await saved();
    const name = "SEALWIRE_TEST_PASSPHRASE";
    const get = passphraseFromEnv(name);
    delete process.env[name];
    await expectCode(get, "ERR_NO_PASSPHRASE");
    process.env[name] = "";
    await expectCode(get, "ERR_NO_PASSPHRASE");
    process.env[name] = PASS;
    expect((await loadIdentity(file, { passphrase: get })).kid).toBe(id.kid);
    expect(process.env[name]).toBe(PASS);
    expect((await loadIdentity(file, { passphrase: passphraseFromEnv(name, { unset: true }) })).kid).toBe(id.kid);
    expect(process.env[name]).toBeUndefined();
    expect(() => passphraseFromEnv("BAD NAME")).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });

  it("passphraseFromFile: one trailing newline stripped, same permission check as keystores, empty refused", async () => {
    const { file, id } = await saved();
    const pf = path.join(root, "pass.txt");
    for (const content of [PASS, `${PASS}\n`, `${PASS}\r\n`]) {
      fs.writeFileSync(pf, content, { mode: 0o600 });
      fs.chmodSync(pf, 0o600);
      expect((await loadIdentity(file, { passphrase: passphraseFromFile(pf) })).kid).toBe(id.kid);
    }
    fs.writeFileSync(pf, `${PASS}\n\n`);
    await expectCode(() => loadIdentity(file, { passphrase: passphraseFromFile(pf) }), "ERR_KEYSTORE_DECRYPT"); // only one newline is stripped
    fs.chmodSync(pf, 0o640);
    const t = await expectCode(passphraseFromFile(pf), "ERR_KEYSTORE_PERMISSIONS");
    expect(t).toContain(`chmod 600 ${pf}`);
    fs.chmodSync(pf, 0o600);
    for (const content of ["", "\n", "\r\n"]) {
      fs.writeFileSync(pf, content);
      await expectCode(passphraseFromFile(pf), "ERR_NO_PASSPHRASE");
    }
    fs.writeFileSync(pf, "x".repeat(5000));
    await expectCode(passphraseFromFile(pf), "ERR_INVALID_ARGUMENT");
    await expectCode(passphraseFromFile(path.join(root, "nope")), "ERR_NO_PASSPHRASE");
    await expectCode(passphraseFromFile(root), "ERR_NO_PASSPHRASE");
  });

  it("passphraseFromFd reads to end of file and does not close the descriptor", async () => {
    const { file, id } = await saved();
    const pf = path.join(root, "pass-fd.txt");
    fs.writeFileSync(pf, `${PASS}\n`, { mode: 0o600 });
    const fd = fs.openSync(pf, "r");
    try {
      expect((await loadIdentity(file, { passphrase: passphraseFromFd(fd) })).kid).toBe(id.kid);
      expect(() => fs.fstatSync(fd)).not.toThrow(); // still open
      await expectCode(passphraseFromFd(fd), "ERR_NO_PASSPHRASE"); // at end of file now: empty
    } finally {
      fs.closeSync(fd);
    }
    const big = path.join(root, "big-fd.txt");
    fs.writeFileSync(big, "y".repeat(10_000), { mode: 0o600 });
    const fd2 = fs.openSync(big, "r");
    try {
      await expectCode(passphraseFromFd(fd2), "ERR_INVALID_ARGUMENT");
    } finally {
      fs.closeSync(fd2);
    }
    await expectCode(passphraseFromFd(2 ** 30), "ERR_NO_PASSPHRASE"); // EBADF
    expect(() => passphraseFromFd(-1)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });
});

describe("identity providers", () => {
  it("resolveIdentity accepts an identity, a sync or async function, and calls a function every time (no caching)", async () => {
    const id = await generateIdentity("alice");
    expect(await resolveIdentity(id)).toBe(id);
    let calls = 0;
    const sync = () => (calls++, id);
    const asyncP = async () => (calls++, id);
    expect(await resolveIdentity(sync)).toBe(id);
    expect(await resolveIdentity(asyncP)).toBe(id);
    expect(await resolveIdentity(asyncP)).toBe(id);
    expect(calls).toBe(3);
  });

  it("refuses non-identities and closed identities", async () => {
    for (const bad of [null, undefined, 42, "alice", {}, () => ({ id: "alice" }), async () => null]) {
      await expectCode(() => resolveIdentity(bad as never), "ERR_INVALID_ARGUMENT");
    }
    const id = await generateIdentity("alice");
    id.close();
    await expectCode(() => resolveIdentity(id), "ERR_CLOSED");
    await expectCode(() => resolveIdentity(() => id), "ERR_CLOSED");
    await expectCode(
      () =>
        resolveIdentity(() => {
          throw new SealwireError("ERR_TIMEOUT", "vault slow");
        }),
      "ERR_TIMEOUT",
    );
  });

  it("keystoreIdentity loads a fresh identity per call, asking the passphrase provider each time", async () => {
    const { file, id } = await saved();
    let asked = 0;
    const provider = keystoreIdentity(file, { passphrase: () => (asked++, PASS) });
    const a = await resolveIdentity(provider);
    const b = await resolveIdentity(provider);
    expect(a).not.toBe(b);
    expect(a.kid).toBe(id.kid);
    expect(asked).toBe(2);
    a.close();
    expect(b.closed).toBe(false); // each caller owns its own
    expect(() => keystoreIdentity("", { passphrase: PASS })).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });
});
