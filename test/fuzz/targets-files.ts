/**
 * Fuzz targets for what arrives as a file or a command line: audit logs (as lines and as files), encrypted
 * keystores (full load, and the passphrase-free header read), trust files, and the CLI's `run(argv)`.
 *
 * Files are written into the target's scratch directory; the CLI runs with that directory as its working
 * directory, with every argument kept inside it (no absolute paths, no `..`) and every WebSocket URL pointed at
 * loopback — sealwire's CLI can write files and open sockets, and the fuzzer runs as whatever user runs it.
 *
 * @module
 * @example
 * ```ts
 * const t = await auditLinesTarget.create(ctx);
 * ```
 */
import fc from "fast-check";
import { createHook } from "node:async_hooks";
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { toBase64url, toHex } from "../../src/_bytes.js";
import { MESSAGE_EVENTS, AuditLog, auditRecordHash, canonicalJson, memorySink, verifyAuditLog, type AuditVerifyResult } from "../../src/audit.js";
import { ERROR_CODES } from "../../src/errors.js";
import { parsePublicIdentity, type Identity, type PublicIdentity } from "../../src/identity.js";
import { loadIdentity, readPublicIdentity, saveIdentity } from "../../src/keystore.js";
import { loadTrustFile, saveTrustFile } from "../../src/trust-file.js";
import { TrustStore } from "../../src/trust.js";
import { run, type CliResult } from "../../bin/sealwire.js";
import { fcStream, FIXED_NOW, fixedIdentity, fixedSecret, withOpenSslCanary } from "./fixtures.js";
import { decodeTagged, encodeTagged, HARNESS_TIMER, harnessSleep, type FuzzTarget, type TargetFactory } from "./harness.js";
import { INTERESTING_STRINGS, jsonToPlain, mutateBytes, mutateString, mutateText, mutateValue, nonCanonicalBase64Tail, type Plain } from "./mutate.js";
import type { Rng } from "./rng.js";

const te = new TextEncoder();
const latin1 = (b: Uint8Array) => Buffer.from(b).toString("latin1");

// ---------------------------------------------------------------------------------------------------------------
// Audit logs

const AUDIT_KEYS = [
  "seq", "time", "event", "node", "prev", "hash", "count", "head", "sig", "signer", "kid", "final", "reason", "hmacKeyId", "tags", "payloadDigest", "tornBytes", "tornDigest",
  // session-mode and aggregated-refusal records
  "stream", "firstSeq", "lastSeq", "prevHead", "signature", "recipientKid", "source", "windowMs",
];

export async function auditSamples(rng: Rng, signer: Identity): Promise<string[][]> {
  const logs: string[][] = [];
  for (let n = 0; n < 6; n++) {
    let t = FIXED_NOW;
    const sink = memorySink();
    const segments = n % 3 === 2 ? 2 : 1;
    for (let seg = 0; seg < segments; seg++) {
      const log = await AuditLog.open(sink, { signer, checkpointEvery: 2 + rng.int(6), hmacKey: fixedSecret("audit-hmac"), now: () => new Date((t += 1000)) });
      const count = 3 + rng.int(20);
      for (let i = 0; i < count; i++) {
        const ev: Parameters<AuditLog["append"]>[0] = { event: rng.pick(MESSAGE_EVENTS) };
        if (rng.chance(0.7)) ev.envelopeId = toHex(rng.bytes(16));
        if (rng.chance(0.5)) ev.from = rng.pick(["alice", "bob", "hub"]);
        if (rng.chance(0.5)) ev.to = rng.pick(["alice", "bob", "carol"]);
        if (rng.chance(0.3)) ev.tags = rng.pick([["pii:email"], ["pii:email", "anonymized"], []]);
        if (rng.chance(0.3)) ev.decision = rng.pick(["allow", "deny"] as const);
        if (rng.chance(0.3)) ev.reason = rng.pick(["pii_not_cleared", "ERR_POLICY_DENIED", "rate:limit"]);
        if (rng.chance(0.4)) ev.payload = rng.bytes(rng.size(100));
        await log.append(ev);
      }
      await log.close();
    }
    logs.push(sink.lines());
  }
  // One more log with session-mode and aggregated-refusal records (well-formed shapes; the signature bytes are
  // random, which the log does not check: verifySessionCheckpointRecord does).
  {
    let t = FIXED_NOW;
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer, checkpointEvery: 3, hmacKey: fixedSecret("audit-hmac"), now: () => new Date((t += 1000)) });
    const stream = toHex(rng.bytes(16));
    const kids = { kid: toHex(rng.bytes(8)), recipientKid: toHex(rng.bytes(8)) };
    await log.append({ event: "session_opened", stream, from: "alice", to: "bob", ...kids });
    let first = 0;
    for (let i = 0; i < 4; i++) {
      const last = first + rng.int(300);
      await log.append({
        event: "session_checkpoint", stream, from: "alice", to: "bob", ...kids, firstSeq: first, lastSeq: last,
        prevHead: toHex(rng.bytes(32)), head: toHex(rng.bytes(32)), signature: Buffer.from(rng.bytes(64)).toString("base64url"), final: i === 3,
      });
      first = last + 1;
    }
    await log.append({ event: "session_gap", stream, from: "alice", firstSeq: 3, lastSeq: 9 });
    await log.append({ event: "session_closed", stream, from: "alice", reason: "final", count: rng.int(5) });
    await log.append({ event: "refused_connections", reason: "ws_rate_limited", source: "127.0.2.7", count: 1 + rng.int(1000), windowMs: 10_000 });
    await log.append({ event: "refused_connections", reason: "noise_handshake_evicted", source: "*", count: 1 + rng.int(1000), windowMs: 10_000 });
    await log.close();
    logs.push(sink.lines());
  }
  return logs;
}

/** Texts (lines joined by "\n") that verify legitimately: every prefix ending with a final checkpoint. */
function acceptablePrefixes(logs: string[][]): Set<string> {
  const ok = new Set<string>();
  for (const lines of logs) {
    lines.forEach((l, i) => {
      const r = JSON.parse(l) as { event?: string; final?: boolean };
      if (r.event === "checkpoint" && r.final === true) ok.add(lines.slice(0, i + 1).join("\n"));
    });
  }
  return ok;
}

/**
 * A forger without the signing key: edits a record (or deletes one), then recomputes hashes, `seq`, `prev` and
 * checkpoint `head`/`count` so that everything but the signatures lines up again.
 */
function forge(rng: Rng, lines: string[]): string[] {
  const recs = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const j = rng.int(recs.length);
  if (rng.chance(0.3)) recs.splice(j, 1);
  else {
    const { hash: _h, ...rest } = recs[j]!;
    const m = mutateValue(rng, jsonToPlain(rest), AUDIT_KEYS);
    if (m === null || typeof m !== "object" || Array.isArray(m) || m instanceof Uint8Array) return lines;
    recs[j] = m as Record<string, unknown>;
  }
  const rechain = rng.chance(0.7);
  const out: string[] = [];
  let prev: string | undefined;
  for (let i = 0; i < recs.length; i++) {
    const r = { ...recs[i]! };
    delete r["hash"];
    if (rechain && i >= j) {
      if (prev !== undefined) r["prev"] = prev;
      r["seq"] = i;
      if (r["event"] === "checkpoint") {
        r["head"] = r["prev"];
        r["count"] = i;
      }
    }
    try {
      if (i >= j || rechain) r["hash"] = auditRecordHash(r as never);
      else r["hash"] = recs[i]!["hash"];
      out.push(canonicalJson(r));
    } catch {
      out.push(JSON.stringify(r));
    }
    prev = r["hash"] as string;
  }
  return out;
}

function mutateAuditLines(rng: Rng, lines: string[], logs: string[][]): string[] {
  const out = [...lines];
  const kind = rng.weighted([[25, "line-ops"], [40, "line-text"], [25, "forge"], [10, "sig-tail"]] as const);
  if (kind === "forge") return forge(rng, lines);
  if (kind === "sig-tail") {
    // A different spelling of the same signature (non-canonical base64url), with the record re-hashed.
    const idx = out.map((l, i) => (l.includes('"sig":"') ? i : -1)).filter((i) => i >= 0);
    if (idx.length === 0) return out;
    const i = rng.pick(idx);
    const r = JSON.parse(out[i]!) as Record<string, unknown>;
    const sig = nonCanonicalBase64Tail(rng, String(r["sig"]));
    if (sig === undefined) return out;
    r["sig"] = sig;
    delete r["hash"];
    r["hash"] = auditRecordHash(r as never);
    out[i] = canonicalJson(r);
    return out;
  }
  if (kind === "line-text") {
    const i = rng.int(out.length);
    out[i] = mutateText(rng, out[i]!, out, AUDIT_KEYS);
    return out;
  }
  const other = rng.pick(logs);
  switch (rng.int(7)) {
    case 0: out.splice(rng.int(out.length), 1); break;
    case 1: { const i = rng.int(out.length); out.splice(i, 0, out[i]!); break; }
    case 2: { const i = rng.int(out.length), k = rng.int(out.length); [out[i], out[k]] = [out[k]!, out[i]!]; break; }
    case 3: out.splice(rng.int(out.length + 1), 0, rng.pick(other)); break;
    case 4: return out.slice(0, rng.int(out.length + 1));
    case 5: out.splice(rng.int(out.length + 1), 0, rng.pick(INTERESTING_STRINGS)); break;
    default: return [...out.slice(0, rng.int(out.length + 1)), ...other.slice(rng.int(other.length + 1))];
  }
  return out;
}

function auditOutcome(r: unknown): string {
  const v = r as AuditVerifyResult;
  return v.ok ? "ok" : `${v.code}:${v.reason}`;
}

function auditResultProblem(r: unknown): string | undefined {
  const v = r as AuditVerifyResult;
  if (v === null || typeof v !== "object" || typeof v.ok !== "boolean") return "verifyAuditLog returned something other than a verdict";
  if (!v.ok && !(Object.hasOwn(ERROR_CODES, v.code) && typeof v.reason === "string" && Number.isInteger(v.line))) return "a failure verdict without code, reason or line";
  return undefined;
}

export const auditLinesTarget: TargetFactory = {
  name: "audit-lines",
  async create(ctx) {
    const signer = fixedIdentity("auditor");
    const logs = await auditSamples(ctx.rng, signer);
    const ok = acceptablePrefixes(logs);
    const random = fcStream(fc.array(fc.oneof(fc.string({ maxLength: 200 }), fc.json({ maxDepth: 2 })), { maxLength: 8 }), ctx.seed, "audit-random");
    const t: FuzzTarget<string[]> = {
      name: "audit-lines",
      limitMs: 250,
      neverThrows: true,
      generate(rng) {
        const kind = rng.weighted([[5, "random"], [8, "sample"], [87, "mutant"]] as const);
        if (kind === "random") return random.next();
        const lines = rng.pick(logs);
        return kind === "sample" ? lines : mutateAuditLines(rng, lines, logs);
      },
      exec: (lines) => verifyAuditLog(lines, { publicKey: signer.signPublicKey }),
      check(lines, r) {
        const p = auditResultProblem(r);
        if (p) return p;
        if ((r as AuditVerifyResult).ok && !ok.has(lines.join("\n"))) return "an edited audit log verified";
        return undefined;
      },
      outcome: auditOutcome,
      encode: (lines) => encodeTagged(lines),
      decode: (b) => decodeTagged<string[]>(b),
    };
    return t;
  },
};

export const auditFileTarget: TargetFactory = {
  name: "audit-file",
  async create(ctx) {
    const signer = fixedIdentity("auditor");
    const logs = await auditSamples(ctx.rng, signer);
    const ok = new Set([...acceptablePrefixes(logs)].map((t) => t + "\n"));
    const files = logs.map((l) => te.encode(l.join("\n") + "\n"));
    const path = join(ctx.dir, "audit.log");
    const t: FuzzTarget<Uint8Array> = {
      name: "audit-file",
      limitMs: 250,
      neverThrows: true,
      generate(rng) {
        const i = rng.int(logs.length);
        const kind = rng.weighted([[5, "sample"], [35, "lines"], [35, "bytes"], [10, "crlf"], [10, "long"], [5, "empty"]] as const);
        if (kind === "sample") return files[i]!;
        if (kind === "lines") return te.encode(mutateAuditLines(rng, logs[i]!, logs).join("\n") + (rng.chance(0.9) ? "\n" : ""));
        if (kind === "bytes") return mutateBytes(rng, files[i]!, { others: files, maxLength: 1 << 20 });
        if (kind === "crlf") return te.encode(logs[i]!.join("\r\n") + "\r\n");
        if (kind === "long") {
          // Lines around the 64 KiB line limit, and a torn tail of the same size.
          const n = rng.pick([65_535, 65_536, 65_537, 200_000]);
          return te.encode(logs[i]!.slice(0, rng.int(logs[i]!.length)).join("\n") + "\n" + "x".repeat(n) + (rng.chance(0.5) ? "\n" : ""));
        }
        return rng.chance(0.5) ? new Uint8Array(0) : te.encode("\n".repeat(1 + rng.int(3)));
      },
      exec(bytes) {
        writeFileSync(path, bytes);
        return verifyAuditLog(path, { publicKey: signer.signPublicKey });
      },
      check(bytes, r) {
        const p = auditResultProblem(r);
        if (p) return p;
        if ((r as AuditVerifyResult).ok && !ok.has(latin1(bytes))) return "an edited audit file verified";
        return undefined;
      },
      outcome: auditOutcome,
      encode: (b) => b,
      decode: (b) => b,
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Keystores

const PASSPHRASE = "fuzz-passphrase-7Qk2";
const KEYSTORE_HEADER_KEYS = ["kdf", "logN", "r", "p", "salt", "aead", "nonce", "identity", "v", "id", "kid", "signPub", "sealPub", "fingerprint"];

interface KeystoreInput {
  file: Uint8Array;
  wrongPassphrase: boolean;
  mode: number;
}

async function keystoreSamples(dir: string): Promise<{ files: Uint8Array[]; identities: Identity[] }> {
  const identities = ["alice", "k-2", "z".repeat(64)].map((id) => fixedIdentity(id));
  const kdfs = [{ logN: 10, r: 1, p: 1 }, { logN: 11, r: 2, p: 1 }, { logN: 10, r: 1, p: 2 }];
  const files: Uint8Array[] = [];
  for (let i = 0; i < identities.length; i++) {
    const path = join(dir, `sample-${i}.key`);
    await saveIdentity(path, identities[i]!, { passphrase: PASSPHRASE, kdf: kdfs[i]!, overwrite: true });
    files.push(new Uint8Array(readFileSync(path)));
  }
  return { files, identities };
}

/** KDF values: out of range, wrong types, or legal but cheap. */
function kdfValue(rng: Rng): unknown {
  return rng.pick([0, -1, 1, 2, 8, 9, 10, 11, 15, 16, 17, 20, 21, 32, 33, 17.5, 1e9, 2 ** 53, "10", null, true, [10]]);
}
/** Legal parameter sets up to the limits' most expensive corner (N·r·p = 4× the default, 256 MiB). */
const COSTLY_KDF = [{ logN: 17, r: 8, p: 1 }, { logN: 18, r: 8, p: 2 }, { logN: 15, r: 1, p: 16 }, { logN: 16, r: 2, p: 8 }];

function mutateKeystore(rng: Rng, file: Uint8Array, others: Uint8Array[]): Uint8Array {
  const text = Buffer.from(file).toString("utf8");
  const lines = text.split("\n");
  const kind = rng.weighted([[20, "header-json"], [15, "header-text"], [10, "kdf"], [12, "ct"], [6, "magic"], [12, "lines"], [20, "bytes"], [5, "splice"]] as const);
  switch (kind) {
    case "header-json": {
      const h = JSON.parse(lines[1]!) as Plain;
      lines[1] = JSON.stringify(mutateValue(rng, h, KEYSTORE_HEADER_KEYS), (_k, x: unknown) => (x instanceof Uint8Array ? toBase64url(x) : x)) ?? "";
      break;
    }
    case "header-text": lines[1] = mutateText(rng, lines[1]!, [], KEYSTORE_HEADER_KEYS); break;
    case "kdf": {
      const h = JSON.parse(lines[1]!) as Record<string, unknown>;
      if (rng.chance(0.04)) Object.assign(h, rng.pick(COSTLY_KDF));
      else {
        h[rng.pick(["logN", "r", "p"] as const)] = kdfValue(rng);
        if (rng.chance(0.3)) h[rng.pick(["logN", "r", "p"] as const)] = kdfValue(rng);
      }
      lines[1] = JSON.stringify(h);
      break;
    }
    case "ct": lines[2] = rng.chance(0.4) ? (nonCanonicalBase64Tail(rng, lines[2]!) ?? "") : mutateString(rng, lines[2]!); break;
    case "magic": lines[0] = rng.pick(["sealwire-keystore/2", "sealwire-keystore/", "sealwire-keystore/01", "SEALWIRE-KEYSTORE/1", mutateString(rng, lines[0]!)]); break;
    case "lines":
      switch (rng.int(5)) {
        case 0: lines.splice(rng.int(lines.length), 1); break;
        case 1: lines.splice(rng.int(lines.length), 0, lines[rng.int(lines.length)]!); break;
        case 2: return te.encode(lines.join("\r\n"));
        case 3: return te.encode(text.slice(0, -1));
        default: return te.encode(text + rng.pick(["\n", "x", "\n\n", " "]));
      }
      break;
    case "bytes": return mutateBytes(rng, file, { others, maxLength: 12_000 });
    default: {
      const o = Buffer.from(rng.pick(others)).toString("utf8").split("\n");
      lines[rng.int(3)] = o[rng.int(3)]!;
    }
  }
  return te.encode(lines.join("\n"));
}

export const keystoreTarget: TargetFactory = {
  name: "keystore",
  async create(ctx) {
    const { files, identities } = await keystoreSamples(ctx.dir);
    const genuine = new Set(files.map((f) => toHex(f)));
    const path = join(ctx.dir, "fuzz.key");
    writeFileSync(path, "", { mode: 0o600 });
    const t: FuzzTarget<KeystoreInput> = {
      name: "keystore",
      // scrypt runs on purpose: a file may ask for up to KDF_LIMITS.maxWork (4x the default cost, 256 MiB) before
      // the AEAD can tell it was edited. That bound (~1.6 s on an idle 2-core machine, 3 s seen under load), not
      // 250 ms, is what a hostile file can cost; 10 s leaves room for a busy CI runner.
      limitMs: 10_000,
      codes: ["ERR_KEYSTORE_DECRYPT", "ERR_KEYSTORE_FORMAT", "ERR_KEYSTORE_IO", "ERR_KEYSTORE_PERMISSIONS"],
      generate(rng) {
        const f = rng.pick(files);
        const kind = rng.weighted([[6, "sample"], [90, "mutant"], [2, "wrong"], [2, "mode"]] as const);
        return {
          file: kind === "mutant" ? mutateKeystore(rng, f, files) : f,
          wrongPassphrase: kind === "wrong",
          mode: kind === "mode" ? rng.pick([0o640, 0o604, 0o666]) : 0o600,
        };
      },
      exec(i) {
        writeFileSync(path, i.file);
        if ((statSync(path).mode & 0o777) !== i.mode) chmodSync(path, i.mode);
        return withOpenSslCanary(async () => {
          const id = await loadIdentity(path, { passphrase: i.wrongPassphrase ? "not the passphrase" : PASSPHRASE });
          const kid = id.kid;
          id.close();
          return kid;
        });
      },
      check(i, r) {
        if (!genuine.has(toHex(i.file)) || i.wrongPassphrase || i.mode !== 0o600) return "an edited keystore (or a wrong passphrase, or an open file mode) loaded";
        return identities.some((x) => x.kid === r) ? undefined : "loaded an identity that is not the one saved";
      },
      encode: (i) => encodeTagged(i),
      decode: (b) => decodeTagged<KeystoreInput>(b),
    };
    return t;
  },
};

export const keystoreHeaderTarget: TargetFactory = {
  name: "keystore-header",
  async create(ctx) {
    const { files } = await keystoreSamples(ctx.dir);
    const path = join(ctx.dir, "header.key");
    writeFileSync(path, "", { mode: 0o600 });
    const random = fcStream(fc.oneof(fc.uint8Array({ maxLength: 600 }), fc.string({ maxLength: 600 }).map((s) => te.encode(`sealwire-keystore/1\n${s}`))), ctx.seed, "keystore-random");
    const t: FuzzTarget<Uint8Array> = {
      name: "keystore-header",
      limitMs: 250,
      codes: ["ERR_KEYSTORE_FORMAT", "ERR_KEYSTORE_IO"],
      generate(rng) {
        const kind = rng.weighted([[10, "random"], [5, "sample"], [85, "mutant"]] as const);
        if (kind === "random") return random.next();
        const f = rng.pick(files);
        return kind === "sample" ? f : mutateKeystore(rng, f, files);
      },
      async exec(bytes) {
        writeFileSync(path, bytes);
        return readPublicIdentity(path);
      },
      check(_b, r) {
        try {
          parsePublicIdentity({ ...(r as PublicIdentity) });
          return undefined;
        } catch {
          return "readPublicIdentity returned an identity that does not validate";
        }
      },
      encode: (b) => b,
      decode: (b) => b,
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Trust files

const TRUST_KEYS = ["v", "peers", "identity", "roles", "clearances", "address", "revoked", "id", "kid", "signPub", "sealPub", "fingerprint"];

async function trustSample(dir: string, name: string, ids: string[]): Promise<Uint8Array> {
  const trust = new TrustStore();
  ids.forEach((id, i) => trust.add(fixedIdentity(id).publicIdentity, { roles: i % 2 ? ["anonymizer"] : [], clearances: i % 3 ? ["pii:email"] : [], ...(i === 0 ? { address: "ws://127.0.0.1:7700" } : {}) }));
  if (ids.length > 2) trust.revoke(ids[ids.length - 1]!);
  const path = join(dir, name);
  await saveTrustFile(path, trust);
  return new Uint8Array(readFileSync(path));
}

export const trustFileTarget: TargetFactory = {
  name: "trust-file",
  async create(ctx) {
    const samples = [
      await trustSample(ctx.dir, "t1.json", ["alice", "bob", "carol"]),
      await trustSample(ctx.dir, "t2.json", ["hub"]),
      await trustSample(ctx.dir, "t3.json", ["a1", "a2", "a3", "a4", "a5", "a6"]),
    ];
    const texts = samples.map((s) => Buffer.from(s).toString("utf8"));
    const path = join(ctx.dir, "trust.json");
    writeFileSync(path, "", { mode: 0o600 });
    const random = fcStream(fc.json({ maxDepth: 4 }), ctx.seed, "trust-random");
    const t: FuzzTarget<Uint8Array> = {
      name: "trust-file",
      // A trust file is local configuration bounded at 4 MiB / 10,000 peers, each re-validated (a SHA-256 per
      // identity): the worst legal file takes a few hundred ms, so the bound here is 1 s.
      limitMs: 1_000,
      codes: ["ERR_TRUST_FILE"],
      generate(rng) {
        const i = rng.int(texts.length);
        const kind = rng.weighted([[8, "random"], [6, "sample"], [60, "text"], [20, "bytes"], [6, "grow"]] as const);
        if (kind === "random") return te.encode(random.next());
        if (kind === "sample") return samples[i]!;
        if (kind === "text") return te.encode(mutateText(rng, texts[i]!, texts, TRUST_KEYS));
        if (kind === "bytes") return mutateBytes(rng, samples[i]!, { others: samples, maxLength: 1 << 20 });
        // Many peers: the same ones repeated (updates), up to and past the 10,000 limit.
        const doc = JSON.parse(texts[i]!) as { v: number; peers: unknown[] };
        const n = rng.pick([100, 1000, 3000, 10_001]);
        const peers: unknown[] = [];
        while (peers.length < n) peers.push(...doc.peers.filter((p) => !(p as { revoked?: boolean }).revoked));
        return te.encode(JSON.stringify({ v: 1, peers: peers.slice(0, n) }));
      },
      async exec(bytes) {
        writeFileSync(path, bytes);
        return loadTrustFile(path);
      },
      check(_b, r) {
        if (!(r instanceof TrustStore)) return "loadTrustFile returned something other than a TrustStore";
        for (const e of r.list()) {
          try {
            parsePublicIdentity({ ...e.identity });
          } catch {
            return `trust entry ${e.id} has an identity that does not validate`;
          }
        }
        return undefined;
      },
      encode: (b) => b,
      decode: (b) => b,
    };
    return t;
  },
};

// ---------------------------------------------------------------------------------------------------------------
// CLI

interface CliInput {
  argv: string[];
  env: number;
}

const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

/** Timers, sockets and servers created while {@link trackResources} runs, until they are destroyed. */
const tracked = new Map<number, { type: string; resource: unknown }>();
const TRACKED_TYPES = new Set(["Timeout", "TCPWRAP", "TCPSERVERWRAP", "PIPEWRAP", "PIPESERVERWRAP"]);
const resourceHook = createHook({
  init(id, type, _trigger, resource) {
    if (TRACKED_TYPES.has(type)) tracked.set(id, { type, resource });
  },
  destroy(id) {
    tracked.delete(id);
  },
});

/** The tracked resources still alive that keep the process running (ref'd timers, open handles), harness's excepted. */
function aliveTracked(): { type: string; resource: unknown }[] {
  return [...tracked.values()].filter(({ type, resource }) => {
    if (type !== "Timeout") return true;
    const t = resource as NodeJS.Timeout & { [HARNESS_TIMER]?: true };
    return t[HARNESS_TIMER] !== true && t.hasRef();
  });
}

/**
 * Runs `fn` and reports the timers and sockets it created that are still alive (and keeping the process alive)
 * up to ~0.5 s after it returned. Leaked timers are cleared.
 */
async function trackResources<T>(fn: () => Promise<T>): Promise<{ result: T; leaked: string[] }> {
  tracked.clear();
  resourceHook.enable();
  try {
    const result = await fn();
    for (let i = 0; i < 25 && aliveTracked().length > 0; i++) await harnessSleep(20);
    const alive = aliveTracked();
    for (const a of alive) if (a.type === "Timeout") clearTimeout(a.resource as NodeJS.Timeout);
    return { result, leaked: alive.map((a) => a.type) };
  } finally {
    resourceHook.disable();
    tracked.clear();
  }
}

/** Keeps one argument inside the sandbox and on loopback (see the module notes). Realistic argv: no NUL. */
export function sanitizeArg(a: string): string {
  let s = a.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd").replaceAll("\u0000", "");
  s = s.replaceAll("..", "._").replace(/(^|=)\/+/g, "$1_");
  for (const part of [s, s.slice(s.indexOf("=") + 1)]) {
    try {
      const u = new URL(part);
      if (!LOOPBACK.has(u.hostname) && u.protocol !== "file:") return s === part ? "ws://127.0.0.1:1" : `${s.slice(0, s.indexOf("=") + 1)}ws://127.0.0.1:1`;
    } catch {
      /* not a URL */
    }
  }
  return s;
}

const OPTION_NAMES = ["--help", "-h", "--version", "-v", "--debug", "--id", "--out", "--force", "--trust", "--clear", "--role", "--address", "--listen",
  "--key", "--hub", "--hub-id", "--to", "--pii", "--count", "--audit", "--tls-cert", "--tls-key", "--tls-ca", "--passphrase-file", "--allow-open-tail",
  "--nope", "-x", "-hv", "--", "-"];
const COMMANDS = ["keygen", "trust", "hub", "listen", "send", "audit", "doctor", "help", "version"];

export const cliTarget: TargetFactory = {
  name: "cli",
  async create(ctx) {
    const sbx = join(ctx.dir, "sbx");
    mkdirSync(join(sbx, "dir"), { recursive: true });
    const alice = fixedIdentity("alice");
    const hub = fixedIdentity("hub");
    const auditor = fixedIdentity("auditor");
    await saveIdentity(join(sbx, "k.key"), alice, { passphrase: PASSPHRASE, kdf: { logN: 10, r: 1, p: 1 }, overwrite: true });
    await saveIdentity(join(sbx, "hub.key"), hub, { passphrase: PASSPHRASE, kdf: { logN: 10, r: 1, p: 1 }, overwrite: true });
    writeFileSync(join(sbx, "world.key"), readFileSync(join(sbx, "k.key")), { mode: 0o644 });
    chmodSync(join(sbx, "world.key"), 0o644);
    for (const [name, id] of [["k.key.pub", alice], ["hub.key.pub", hub], ["auditor.pub", auditor]] as const) {
      writeFileSync(join(sbx, name), JSON.stringify(id.publicIdentity) + "\n");
    }
    writeFileSync(join(sbx, "pass"), PASSPHRASE + "\n", { mode: 0o600 });
    writeFileSync(join(sbx, "open-pass"), PASSPHRASE, { mode: 0o644 });
    chmodSync(join(sbx, "open-pass"), 0o644);
    writeFileSync(join(sbx, "trust.json"), await trustSample(ctx.dir, "cli-trust.json", ["alice", "hub", "bob"]), { mode: 0o600 });
    writeFileSync(join(sbx, "junk.bin"), ctx.rng.bytes(300));
    writeFileSync(join(sbx, "empty"), "");
    const logs = await auditSamples(ctx.rng, auditor);
    writeFileSync(join(sbx, "audit.log"), logs[0]!.join("\n") + "\n", { mode: 0o600 });
    const secrets = [PASSPHRASE, ...[alice, hub].flatMap((id) => {
      const s = id.exportSecrets();
      return [toBase64url(s.signSeed), toHex(s.signSeed), toBase64url(s.sealSecret), toHex(s.sealSecret)];
    })];

    const files = ["k.key", "k.key.pub", "hub.key", "hub.key.pub", "pass", "open-pass", "trust.json", "audit.log", "auditor.pub", "junk.bin", "empty", "dir", "world.key", "missing", "new.key", "out/x.key", "dir/"];
    const values: Record<string, readonly string[]> = {
      "--id": ["alice", "bob", "hub", "carol", "A", "x".repeat(65), "-bad", "constructor", "__proto__", "a b"],
      "--hub-id": ["hub", "alice", "nobody", ""],
      "--to": ["bob", "alice", "hub", "nobody", "", "constructor"],
      "--listen": ["ws://127.0.0.1:0", "wss://127.0.0.1:0", "ws://127.0.0.1:1", "http://127.0.0.1:0", "not a url", "ws://"],
      "--hub": ["ws://127.0.0.1:1", "wss://127.0.0.1:1", "ws://localhost:1", "ws://[::1]:1", "ws://127.0.0.1:99999", "ftp://127.0.0.1", "x"],
      "--count": ["1", "0", "-1", "1.5", "NaN", "Infinity", "1e3", ""],
      "--pii": ["pii:email", "pii:", "pii:EMAIL", "x"],
      "--clear": ["pii:email", "pii:", "email"],
      "--role": ["anonymizer", "writer", "Bad Role", ""],
      "--address": ["ws://127.0.0.1:7700", "x".repeat(600), ""],
      "--key": [...files, toBase64url(auditor.signPublicKey), toHex(auditor.signPublicKey), "A".repeat(43), "0".repeat(64)],
    };
    const identityJson = [JSON.stringify(fixedIdentity("carol").publicIdentity), JSON.stringify(alice.publicIdentity), '{"v":1}', "{"];
    const positionals = [...files, ...identityJson, "add", "list", "revoke", "verify", "alice", "carol", "hello bob", "mail ana@example.org", ""];
    const envs: Record<string, string>[] = [{}, { SEALWIRE_PASSPHRASE: PASSPHRASE }, { SEALWIRE_PASSPHRASE: "" }, { SEALWIRE_PASSPHRASE: "wrong" }, { SEALWIRE_PASSPHRASE: PASSPHRASE, SEALWIRE_TRUST: "missing.json" }];
    const randomArgv = fcStream(fc.array(fc.string({ maxLength: 30 }), { maxLength: 8 }), ctx.seed, "cli-random");
    const stopped = AbortSignal.abort();
    // Commands that write (keygen --force, trust add/revoke, hub --audit) may replace the fixtures; put them back
    // after each such case so every case starts from the same sandbox.
    const fixtures = ["k.key", "k.key.pub", "hub.key", "hub.key.pub", "auditor.pub", "pass", "open-pass", "trust.json", "audit.log", "junk.bin", "empty", "world.key"]
      .map((name) => ({ name, bytes: new Uint8Array(readFileSync(join(sbx, name))), mode: statSync(join(sbx, name)).mode & 0o777 }));
    const restore = () => {
      for (const f of fixtures) {
        const p = join(sbx, f.name);
        writeFileSync(p, f.bytes, { mode: f.mode });
        if ((statSync(p).mode & 0o777) !== f.mode) chmodSync(p, f.mode);
      }
    };
    const writes = (argv: string[]) => argv.some((a) => a === "keygen" || a === "trust" || a === "hub");
    const cwd = process.cwd();
    process.chdir(sbx);

    const valueFor = (rng: Rng, opt: string): string => {
      const pool = values[opt] ?? files;
      if (rng.chance(0.85)) return rng.pick(pool);
      return rng.chance(0.5) ? mutateString(rng, rng.pick(pool)) : rng.pick(INTERESTING_STRINGS).slice(0, 100);
    };
    const grammar = (rng: Rng): string[] => {
      const argv: string[] = [];
      const cmd = rng.weighted([[1, "keygen"], [4, "trust"], [3, "hub"], [3, "listen"], [3, "send"], [4, "audit"], [4, "doctor"], [1, "help"], [1, "version"], [1, ""], [1, "?"]] as const);
      if (cmd === "?") argv.push(rng.chance(0.5) ? mutateString(rng, rng.pick(COMMANDS)) : rng.pick(INTERESTING_STRINGS).slice(0, 40));
      else if (cmd !== "") argv.push(cmd);
      if (cmd === "trust") argv.push(rng.pick(["add", "list", "revoke", "remove"]));
      if (cmd === "audit") argv.push(rng.pick(["verify", "verify", "check"]));
      const need: Record<string, string[]> = { keygen: ["--id"], hub: ["--listen", "--key"], listen: ["--hub", "--key"], send: ["--hub", "--key", "--to"], audit: ["--key"], doctor: ["--key"] };
      for (const o of need[cmd] ?? []) if (rng.chance(0.75)) argv.push(o, valueFor(rng, o));
      const extra = rng.int(5);
      for (let i = 0; i < extra; i++) {
        const o = rng.pick(OPTION_NAMES);
        if (["--help", "-h", "--version", "-v", "--debug", "--force", "--allow-open-tail", "--", "-", "-hv"].includes(o) && rng.chance(0.8)) argv.push(o);
        else if (rng.chance(0.15)) argv.push(`${o}=${valueFor(rng, o)}`);
        else argv.push(o, valueFor(rng, o));
      }
      const pos = rng.int(4);
      for (let i = 0; i < pos; i++) argv.splice(rng.int(argv.length + 1), 0, rng.pick(positionals));
      // Never start a real passphrase prompt, and keep "--debug" rare (it is allowed to print stacks).
      return argv;
    };

    const t: FuzzTarget<CliInput> = {
      name: "cli",
      // `keygen` runs scrypt at the default cost (N = 2^17, ~0.5 s here) by design; everything else is quick.
      limitMs: 5_000,
      neverThrows: true,
      generate(rng) {
        const env = rng.weighted([[40, 0], [30, 1], [8, 2], [12, 3], [10, 4]] as const);
        const raw = rng.chance(0.1) ? randomArgv.next() : grammar(rng);
        return { argv: raw.map(sanitizeArg), env };
      },
      async exec(i) {
        try {
          // A command that returned must not leave work behind (a reconnecting agent, a listening socket): it would
          // keep the process alive, and keep dialling. Resources created during the run are tracked; closing
          // sockets get a moment; what is still alive after that is a leak (and leaked timers are cleared, so one
          // leak does not slow down or confuse the cases after it).
          const { result, leaked } = await trackResources(() =>
            withOpenSslCanary(() => run(i.argv.map(sanitizeArg), { env: { ...envs[i.env] }, signal: stopped })),
          );
          return leaked.length > 0 ? { ...result, leaked } : result;
        } finally {
          if (writes(i.argv)) restore();
        }
      },
      check(i, r) {
        const res = r as CliResult;
        if (res === null || typeof res !== "object" || ![0, 1, 2].includes(res.code) || typeof res.stdout !== "string" || typeof res.stderr !== "string") {
          return "run() resolved to something other than { code: 0|1|2, stdout, stderr }";
        }
        const leaked = (r as { leaked?: string[] }).leaked;
        if (leaked) return `run() returned but left ${[...new Set(leaked)].sort().join(", ")} running (a background task outlived the command)`;
        const out = res.stdout + "\n" + res.stderr;
        for (const s of secrets) if (out.includes(s)) return "CLI output contains the passphrase or key material";
        if (!i.argv.includes("--debug") && /\n\s+at .+:\d+:\d+/.test(out)) return "CLI printed a stack trace without --debug";
        if (res.code === 1 && res.stderr !== "") {
          const m = /^sealwire: (ERR_[A-Z_]+): /.exec(res.stderr);
          if (!m) return `failure output is not "sealwire: ERR_…: …": ${JSON.stringify(res.stderr.slice(0, 120))}`;
          if (m[1] === "ERR_INTERNAL") return `an unexpected (non-sealwire) error escaped: ${res.stderr.split("\n")[0]!.slice(0, 200)}`;
        }
        return undefined;
      },
      outcome(r) {
        const res = r as CliResult;
        return res.code === 0 ? "exit 0" : res.code === 2 ? "exit 2" : (/^sealwire: (ERR_[A-Z_]+)/.exec(res.stderr)?.[1] ?? "exit 1 (report)");
      },
      encode: (i) => encodeTagged(i),
      decode: (b) => decodeTagged<CliInput>(b),
      close() {
        process.chdir(cwd);
      },
    };
    return t;
  },
};
