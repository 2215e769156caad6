/**
 * Audit trail: record format and canonical encoding, signed checkpoints, every kind of tampering (each with its
 * code and reason), truncation, torn lines and crash recovery through segments, canaries that must never reach the
 * file, input validation, fsync policies, serialized appends under concurrency, and failure handling.
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/audit.test.ts
 * ```
 */
import {
  appendFileSync,
  chmodSync,
  promises as fsp,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, expectTypeOf, it, vi } from "vitest";
import { defaultProvider } from "../src/_crypto.js";
import {
  APPENDABLE_EVENTS,
  type AuditEvent,
  AuditLog,
  type AuditRecord,
  type AuditSigner,
  type AuditSink,
  auditCheckpointMessage,
  auditPayloadDigest,
  auditRecordHash,
  canonicalJson,
  fileSink,
  MAX_FSYNC_DUE,
  MESSAGE_EVENTS,
  memorySink,
  SESSION_CLOSE_REASONS,
  SESSION_EVENTS,
  sessionAuditEvent,
  sessionCheckpointOfRecord,
  verifyAuditLog,
  verifySessionCheckpointRecord,
} from "../src/audit.js";
import { encodePayload } from "../src/envelope.js";
import { SealwireError } from "../src/errors.js";
import { Identity } from "../src/identity.js";
import { registerSecret, unregisterAllSecrets } from "../src/redact.js";
import {
  checkpointSignedBytes,
  decodeSessionEnvelope,
  isSessionFrame,
  SessionReceiver,
  SessionSender,
  type SessionEvent,
  type SessionHeader,
  verifySessionCheckpoint,
} from "../src/session.js";
import { TrustStore } from "../src/trust.js";

function makeSigner(id = "node-a", kid = "k1"): AuditSigner & { publicKey: Uint8Array; seed: Uint8Array } {
  const { key, seed } = defaultProvider.ed25519Generate();
  return { id, kid, publicKey: key.publicKey, seed, sign: (m: Uint8Array) => defaultProvider.ed25519Sign(key, m) };
}

const signer = makeSigner();
const pk = { publicKey: signer.publicKey };

const ev = (i: number, extra: Partial<AuditEvent> = {}): AuditEvent => ({
  event: "sent",
  envelopeId: `e${String(i).padStart(4, "0")}`,
  from: "alice",
  to: "bob",
  tags: ["pii:email"],
  decision: "allow",
  ...extra,
});

/** A closed in-memory log of `n` events with a checkpoint every `every`. */
async function sampleLog(n = 20, every = 5): Promise<string[]> {
  const sink = memorySink();
  const log = await AuditLog.open(sink, { signer, checkpointEvery: every });
  for (let i = 0; i < n; i++) await log.append(ev(i, { payload: new Uint8Array([i]) }));
  await log.close();
  return sink.lines();
}

const parse = (line: string): Record<string, unknown> => JSON.parse(line) as Record<string, unknown>;
/** Re-encodes a record with a recomputed hash (what a forger with write access does). */
function rehash(rec: Record<string, unknown>): string {
  const { hash: _h, ...rest } = rec;
  return canonicalJson({ ...rest, hash: auditRecordHash(rest as unknown as AuditRecord) });
}
/** Recomputes prev/head/hash from line `from` on, so the chain is consistent again (signatures are not). */
function rechain(lines: string[], from: number): string[] {
  const out = [...lines];
  for (let i = Math.max(1, from); i < out.length; i++) {
    const r = parse(out[i]!);
    r["prev"] = parse(out[i - 1]!)["hash"];
    if (r["event"] === "checkpoint") r["head"] = r["prev"];
    out[i] = rehash(r);
  }
  return out;
}
const indexOfEvent = (lines: string[], pred: (r: Record<string, unknown>) => boolean, after = 0): number =>
  lines.findIndex((l, i) => i >= after && pred(parse(l)));

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), "sealwire-audit-"));
});
afterEach(async () => {
  vi.restoreAllMocks();
  unregisterAllSecrets();
  await fsp.rm(dir, { recursive: true, force: true });
});

describe("record format", () => {
  it("writes canonical, hash-chained records with periodic and final signed checkpoints", async () => {
    const lines = await sampleLog(12, 5);
    const res = await verifyAuditLog(lines, pk);
    expect(res).toMatchObject({ ok: true, records: lines.length, checkpoints: 3, segments: 1, unsignedTail: 0 });
    let prev = "0".repeat(64);
    lines.forEach((line, i) => {
      const r = parse(line) as unknown as AuditRecord;
      expect(canonicalJson(r)).toBe(line);
      expect(r.seq).toBe(i);
      expect(r.prev).toBe(prev);
      expect(auditRecordHash(r)).toBe(r.hash);
      expect(r.time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      expect(r.node).toBe("node-a");
      prev = r.hash;
    });
    const first = parse(lines[0]!);
    expect(first).toMatchObject({ event: "segment_start", reason: "new_log", seq: 0 });
    const cps = lines.map(parse).filter((r) => r["event"] === "checkpoint") as unknown as AuditRecord[];
    expect(cps.map((c) => [c.count, c.final])).toEqual([
      [6, false],
      [12, false],
      [15, true],
    ]);
    for (const c of cps) {
      expect(c.head).toBe(c.prev);
      expect(c).toMatchObject({ signer: "node-a", kid: "k1" });
      const ok = defaultProvider.ed25519Verify(
        defaultProvider.ed25519Public(signer.publicKey),
        auditCheckpointMessage(c),
        new Uint8Array(Buffer.from(c.sig!, "base64url")),
      );
      expect(ok).toBe(true);
    }
  });

  it("append returns the record as written; checkpoint() forces one", async () => {
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer, checkpointEvery: 100 });
    const r = await log.append(ev(1, { reason: "pii_not_cleared", decision: "deny", event: "denied" }));
    expect(r).toMatchObject({ seq: 1, event: "denied", decision: "deny", reason: "pii_not_cleared", from: "alice" });
    expect(sink.lines()[1]).toBe(canonicalJson(r));
    expect(Object.isFrozen(r)).toBe(true);
    const cp = await log.checkpoint();
    expect(cp).toMatchObject({ event: "checkpoint", count: 2, final: false, head: r.hash });
    expect(log.count).toBe(3);
    expect(log.head).toBe(cp.hash);
    await log.close();
    expect((await verifyAuditLog(sink.lines(), pk)).ok).toBe(true);
  });

  it("canonicalJson: sorted keys, no whitespace, ASCII-only escapes, integers only", () => {
    expect(canonicalJson({ b: 1, a: [true, null, "x"], c: undefined })).toBe('{"a":[true,null,"x"],"b":1}');
    expect(canonicalJson("é\n\"\\\u0000\u007f😀")).toBe('"\\u00e9\\u000a\\"\\\\\\u0000\\u007f\\ud83d\\ude00"');
    for (const bad of [1.5, Number.NaN, 2 ** 60, () => 1, new Date(0), new Map()]) {
      expect(() => canonicalJson(bad)).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    }
  });

  it("canonicalJson round-trips through JSON.parse and has exactly one spelling (property)", () => {
    const value = fc.letrec((tie) => ({
      v: fc.oneof(
        { depthSize: "small" },
        fc.string(),
        fc.integer(),
        fc.boolean(),
        fc.constant(null),
        fc.array(tie("v"), { maxLength: 4 }),
        fc.dictionary(fc.string(), tie("v"), { maxKeys: 4 }),
      ),
    })).v;
    fc.assert(
      fc.property(value, (v) => {
        const c = canonicalJson(v);
        expect(/^[\x20-\x7e]*$/.test(c)).toBe(true);
        const back: unknown = JSON.parse(c);
        expect(canonicalJson(back)).toBe(c);
      }),
      { numRuns: 300 },
    );
  });
});

describe("tamper detection", () => {
  let lines: string[];
  beforeEach(async () => {
    lines = await sampleLog(20, 5);
  });
  const verify = (ls: string[], o: Parameters<typeof verifyAuditLog>[1] = pk) => verifyAuditLog(ls, o);

  it("the untouched log verifies", async () => {
    expect(await verify(lines)).toMatchObject({ ok: true, records: 26, checkpoints: 5 });
  });

  it("edited record, hash left alone → hash_mismatch at that line", async () => {
    const t = [...lines];
    t[7] = t[7]!.replace('"to":"bob"', '"to":"eve"');
    expect(await verify(t)).toEqual({ ok: false, line: 8, code: "ERR_AUDIT_TAMPERED", reason: "hash_mismatch" });
  });

  it("edited record with its hash recomputed → prev_mismatch on the next line", async () => {
    const t = [...lines];
    const r = parse(t[7]!);
    r["decision"] = "deny";
    t[7] = rehash(r);
    expect(await verify(t)).toEqual({ ok: false, line: 9, code: "ERR_AUDIT_TAMPERED", reason: "prev_mismatch" });
  });

  it("edited record with the whole chain recomputed → the next checkpoint's signature fails", async () => {
    const t = [...lines];
    const r = parse(t[7]!);
    r["to"] = "eve";
    t[7] = rehash(r);
    const forged = rechain(t, 8);
    const cp = indexOfEvent(forged, (x) => x["event"] === "checkpoint", 8);
    expect(await verify(forged)).toEqual({ ok: false, line: cp + 1, code: "ERR_AUDIT_TAMPERED", reason: "bad_signature" });
  });

  it("deleted record → seq_mismatch where it was", async () => {
    const t = lines.filter((_, i) => i !== 4);
    expect(await verify(t)).toEqual({ ok: false, line: 5, code: "ERR_AUDIT_TAMPERED", reason: "seq_mismatch" });
    // deleted and the chain recomputed (seq renumbered too): the checkpoint signature catches it
    const renum = t.map((l, i) => (i >= 4 ? rehash({ ...parse(l), seq: i, ...(parse(l)["event"] === "checkpoint" ? { count: i } : {}) }) : l));
    const res = await verify(rechain(renum, 4));
    expect(res).toMatchObject({ ok: false, code: "ERR_AUDIT_TAMPERED", reason: "bad_signature" });
  });

  it("inserted record → seq_mismatch; inserted with a forged chain → bad_signature", async () => {
    const t = [...lines];
    t.splice(3, 0, lines[2]!);
    expect(await verify(t)).toEqual({ ok: false, line: 4, code: "ERR_AUDIT_TAMPERED", reason: "seq_mismatch" });
    const fake = rehash({ ...parse(lines[2]!), seq: 3, to: "eve", prev: parse(lines[2]!)["hash"] });
    const t2 = [...lines.slice(0, 3), fake, ...lines.slice(3)];
    const renum = t2.map((l, i) => (i > 3 ? rehash({ ...parse(l), seq: i, ...(parse(l)["event"] === "checkpoint" ? { count: i } : {}) }) : l));
    expect(await verify(rechain(renum, 4))).toMatchObject({ ok: false, code: "ERR_AUDIT_TAMPERED", reason: "bad_signature" });
  });

  it("reordered records → seq_mismatch", async () => {
    const t = [...lines];
    [t[3], t[4]] = [t[4]!, t[3]!];
    expect(await verify(t)).toEqual({ ok: false, line: 4, code: "ERR_AUDIT_TAMPERED", reason: "seq_mismatch" });
  });

  it("truncation: a log that does not end with the final checkpoint is ERR_AUDIT_TRUNCATED", async () => {
    const cut = lines.slice(0, -3);
    expect(await verify(cut)).toEqual({ ok: false, line: cut.length, code: "ERR_AUDIT_TRUNCATED", reason: "no_final_checkpoint" });
    // cut back exactly to a periodic checkpoint: still not the final one
    const lastPeriodic = lines.map(parse).findLastIndex((r) => r["event"] === "checkpoint" && r["final"] === false);
    expect(await verify(lines.slice(0, lastPeriodic + 1))).toMatchObject({ ok: false, code: "ERR_AUDIT_TRUNCATED" });
    // a live log can be checked with allowOpenTail, which reports the unsigned records
    // (cut ends with e15…e18, after the checkpoint at seq 18)
    expect(await verify(cut, { ...pk, allowOpenTail: true })).toMatchObject({ ok: true, unsignedTail: 4, records: 23 });
    // an external anchor catches a cut the file alone cannot show
    expect(await verify(lines, { ...pk, minRecords: lines.length + 5 })).toMatchObject({ code: "ERR_AUDIT_TRUNCATED", reason: "too_few_records" });
    expect(await verify([], pk)).toMatchObject({ code: "ERR_AUDIT_TRUNCATED", reason: "empty_log" });
  });

  it("a checkpoint signature re-spelled in non-canonical base64url (same 64 bytes, record re-hashed) is refused", async () => {
    // 86 characters carry 516 bits for 512: the last one has 4 spare bits, so 15 other spellings decode to the same
    // bytes. A forger needs no key to re-spell the final checkpoint and recompute its hash (found by the fuzzer).
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const last = lines.length - 1;
    const r = parse(lines[last]!);
    const sig = r["sig"] as string;
    const c = alphabet.indexOf(sig[85]!);
    for (const spare of [1, 7, 15]) {
      const twin = sig.slice(0, 85) + alphabet[(c & ~15) | (c & 15 ? 0 : spare)]!;
      expect(Buffer.from(twin, "base64url").equals(Buffer.from(sig, "base64url"))).toBe(true);
      expect(twin).not.toBe(sig);
      const t = [...lines];
      t[last] = rehash({ ...r, sig: twin });
      expect(await verify(t)).toEqual({ ok: false, line: last + 1, code: "ERR_AUDIT_TAMPERED", reason: "bad_signature" });
    }
  });

  it("every member of the final checkpoint is signed: time, node, signer, kid edited and re-hashed are refused", async () => {
    // The final checkpoint is the last line: no later record chains over its hash, so only its own signature can
    // protect its members (found by the fuzzer, when the signature covered head, count and final only).
    const last = lines.length - 1;
    const r = parse(lines[last]!);
    const edits: Record<string, unknown>[] = [
      { time: "2030-01-01T00:00:00.000Z" },
      { node: "node-b" },
      { kid: "k2" },
      { signer: "someone-else" },
    ];
    for (const edit of edits) {
      const t = [...lines];
      t[last] = rehash({ ...r, ...edit });
      // with a resolver that knows the key under any name, so only the signature can tell
      const res = await verify(t, { resolveKey: () => signer.publicKey });
      expect(res, JSON.stringify(edit)).toEqual({ ok: false, line: last + 1, code: "ERR_AUDIT_TAMPERED", reason: "bad_signature" });
    }
    expect(await verify(lines, { resolveKey: () => signer.publicKey })).toMatchObject({ ok: true });
  });

  it("a periodic checkpoint relabelled final is caught by its signature", async () => {
    const lastPeriodic = lines.map(parse).findLastIndex((r) => r["event"] === "checkpoint" && r["final"] === false);
    const t = lines.slice(0, lastPeriodic + 1);
    t[lastPeriodic] = rehash({ ...parse(t[lastPeriodic]!), final: true });
    expect(await verify(t)).toEqual({ ok: false, line: lastPeriodic + 1, code: "ERR_AUDIT_TAMPERED", reason: "bad_signature" });
  });

  it("re-formatted JSON, unknown fields, garbage and non-ASCII are refused", async () => {
    const t1 = [...lines];
    t1[2] = JSON.stringify(parse(t1[2]!), null, 1).replace(/\n/g, "");
    expect(await verify(t1)).toMatchObject({ ok: false, line: 3, reason: "not_canonical" });
    const t2 = [...lines];
    t2[2] = rehash({ ...parse(t2[2]!), body: "hello" });
    expect(await verify(t2)).toMatchObject({ ok: false, line: 3, reason: "bad_record" });
    const t3 = [...lines];
    t3[2] = "not json at all";
    expect(await verify(t3)).toMatchObject({ ok: false, line: 3, code: "ERR_AUDIT_TAMPERED", reason: "unparseable_line" });
    const t4 = [...lines];
    t4[2] = t4[2]!.replace("alice", "alicé");
    expect(await verify(t4)).toMatchObject({ ok: false, line: 3, reason: "unparseable_line" });
    const t5 = [...lines];
    t5[2] = rehash({ ...parse(t5[2]!), count: 3 }); // a checkpoint field on an ordinary event
    expect(await verify(t5)).toMatchObject({ ok: false, line: 3, reason: "bad_record" });
  });

  it("checkpoint signatures: wrong key, unknown signer, resolver", async () => {
    const other = makeSigner();
    expect(await verify(lines, { publicKey: other.publicKey })).toMatchObject({ ok: false, reason: "bad_signature" });
    expect(await verify(lines, { resolveKey: () => undefined })).toMatchObject({ ok: false, code: "ERR_AUDIT_UNKNOWN_SIGNER" });
    const seen: string[] = [];
    const res = await verify(lines, {
      resolveKey: (id, kid) => {
        seen.push(`${id}/${kid}`);
        return id === "node-a" && kid === "k1" ? signer.publicKey : undefined;
      },
    });
    expect(res.ok).toBe(true);
    expect(new Set(seen)).toEqual(new Set(["node-a/k1"]));
    await expect(verifyAuditLog(lines, {})).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    await expect(verifyAuditLog(lines, { publicKey: new Uint8Array(31) })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
  });

  it("property: changing any one character of any line is detected", async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(lines.length - 1), fc.nat(400), fc.constantFrom(..."0a}\"Z:9 ,".split("")), async (li, pos, ch) => {
        const line = lines[li]!;
        const p = pos % line.length;
        fc.pre(line[p] !== ch);
        const t = [...lines];
        t[li] = line.slice(0, p) + ch + line.slice(p + 1);
        const res = await verify(t);
        expect(res.ok).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});

describe("secrets never reach the log", () => {
  it("canary payload and canary keys (raw, hex, base64, base64url) never appear in the file", async () => {
    const path = join(dir, "canary.log");
    const payload = new TextEncoder().encode("CANARY-PAYLOAD-7f3a9c the patient's number is +44 20 7946 0958");
    const hmacKey = defaultProvider.randomBytes(32);
    const log = await AuditLog.open(fileSink(path), { signer, hmacKey, checkpointEvery: 3 });
    for (let i = 0; i < 10; i++) await log.append(ev(i, { payload }));
    const digest = log.payloadDigest(payload);
    await log.close();
    const file = readFileSync(path, "latin1");
    const forms = (b: Uint8Array): string[] => {
      const B = Buffer.from(b);
      return [B.toString("latin1"), B.toString("hex"), B.toString("base64"), B.toString("base64url"), B.toString("hex").toUpperCase()];
    };
    for (const secret of [payload, hmacKey, signer.seed, payload.subarray(0, 20)]) {
      for (const f of forms(secret)) expect(file).not.toContain(f);
    }
    expect(file).not.toContain("CANARY");
    expect(file).not.toContain("+44 20 7946 0958");
    // the digest is keyed: it matches under the log's key only
    expect(digest).toBe(auditPayloadDigest(hmacKey, payload));
    expect(file).toContain(digest);
    expect(file).not.toContain(Buffer.from(defaultProvider.hash("sha256", payload)).toString("hex"));
    expect((await verifyAuditLog(path, pk)).ok).toBe(true);
  });

  it("the HMAC key is generated per log, never printed, exported only on request, wiped on close", async () => {
    const a = await AuditLog.open(memorySink(), { signer });
    const b = await AuditLog.open(memorySink(), { signer });
    const ka = a.exportHmacKey();
    expect(ka).toHaveLength(32);
    expect(a.hmacKeyId).not.toBe(b.hmacKeyId);
    const hex = Buffer.from(ka).toString("hex");
    expect(inspect(a, { showHidden: true, depth: 5 })).not.toContain(hex);
    expect(JSON.stringify({ a })).not.toContain(hex);
    ka.fill(0); // our copy; the log's own is unaffected
    expect(a.payloadDigest(new Uint8Array([1]))).toBe(auditPayloadDigest(a.exportHmacKey(), new Uint8Array([1])));
    await a.close();
    await b.close();
    expect(() => a.exportHmacKey()).toThrowError(expect.objectContaining({ code: "ERR_CLOSED" }));
    expect(() => a.payloadDigest(new Uint8Array([1]))).toThrowError(expect.objectContaining({ code: "ERR_CLOSED" }));
  });

  it("events take metadata fields only: payload bodies, keys and unknown fields are refused without echoing them", async () => {
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer });
    const aws = ["AKIA", "IOSFODNN7EXAMPLE"].join("");
    const bad: unknown[] = [
      { ...ev(1), body: "hello world" },
      { ...ev(1), key: new Uint8Array(32) },
      { ...ev(1), payload: "plaintext as a string" },
      { ...ev(1), event: "checkpoint" },
      { ...ev(1), event: "segment_start" },
      { ...ev(1), reason: "denied because the user said hello" },
      { ...ev(1), reason: aws },
      { ...ev(1), from: `agent ${aws}` },
      { ...ev(1), tags: ["ok", "has space"] },
      { ...ev(1), tags: Array.from({ length: 33 }, (_, i) => `t${i}`) },
      { ...ev(1), envelopeId: "not hex!" },
      { ...ev(1), to: "bob\nforged line" },
      { ...ev(1), decision: "maybe" },
      null,
      "sent",
    ];
    for (const b of bad) {
      const err = await log.append(b as AuditEvent).then(
        () => null,
        (e: unknown) => e,
      );
      expect(SealwireError.is(err, "ERR_INVALID_ARGUMENT"), JSON.stringify(b)).toBe(true);
      const msg = (err as Error).message;
      for (const leak of ["hello world", "plaintext as a string", aws, "said hello", "forged line"]) expect(msg).not.toContain(leak);
    }
    // key material registered for redaction is refused too
    const k = defaultProvider.randomBytes(32);
    registerSecret(k);
    await expect(log.append({ ...ev(1), peer: Buffer.from(k).toString("base64url") })).rejects.toMatchObject({
      code: "ERR_INVALID_ARGUMENT",
    });
    await log.close();
    expect(sink.lines()).toHaveLength(2); // nothing but segment start and final checkpoint
    for (const leak of ["hello", aws, Buffer.from(k).toString("base64url")]) expect(sink.text()).not.toContain(leak);
  });
});

describe("file sink", () => {
  it("creates the file 0600, appends only, never truncates, and resumes cleanly in a new segment", async () => {
    const path = join(dir, "a.log");
    const l1 = await AuditLog.open(fileSink(path), { signer, checkpointEvery: 4 });
    for (let i = 0; i < 6; i++) await l1.append(ev(i));
    await l1.close();
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const before = readFileSync(path, "latin1");
    const l2 = await AuditLog.open(fileSink(path), { signer });
    const r = await l2.append(ev(99, { event: "delivered" }));
    await l2.close();
    const after = readFileSync(path, "latin1");
    expect(after.startsWith(before)).toBe(true);
    const added = after.slice(before.length).trimEnd().split("\n").map(parse);
    expect(added[0]).toMatchObject({ event: "segment_start", reason: "resumed", prev: parse(before.trimEnd().split("\n").at(-1)!)["hash"] });
    expect(r.seq).toBe(added[1]!["seq"]);
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true, segments: 2 });
  });

  it("refuses an open tail (crash or truncation) unless newSegment, and then records it", async () => {
    const path = join(dir, "b.log");
    const lines = await sampleLog(7, 3);
    writeFileSync(path, `${lines.slice(0, -2).join("\n")}\n`, { mode: 0o600 });
    const before = readFileSync(path, "latin1");
    await expect(AuditLog.open(fileSink(path), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_TRUNCATED" });
    expect(readFileSync(path, "latin1")).toBe(before); // refusing wrote nothing
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: false, code: "ERR_AUDIT_TRUNCATED", reason: "no_final_checkpoint" });
    const log = await AuditLog.open(fileSink(path), { signer, newSegment: true });
    await log.append(ev(100));
    await log.close();
    expect(readFileSync(path, "latin1").startsWith(before)).toBe(true);
    const seg = parse(readFileSync(path, "latin1").slice(before.length).split("\n")[0]!);
    expect(seg).toMatchObject({ event: "segment_start", reason: "open_tail" });
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true, segments: 2 });
  });

  it("a torn last line is reported, refused on open, and pinned by a torn_tail segment", async () => {
    const path = join(dir, "c.log");
    const lines = await sampleLog(5, 10);
    const torn = lines[3]!.slice(0, 40);
    writeFileSync(path, `${lines.slice(0, 3).join("\n")}\n${torn}`, { mode: 0o600 });
    expect(await verifyAuditLog(path, pk)).toEqual({ ok: false, line: 4, code: "ERR_AUDIT_TRUNCATED", reason: "torn_line" });
    expect(await verifyAuditLog([...lines.slice(0, 3), torn], pk)).toMatchObject({ line: 4, reason: "torn_line" });
    await expect(AuditLog.open(fileSink(path), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_TRUNCATED" });
    const log = await AuditLog.open(fileSink(path), { signer, newSegment: true });
    await log.append(ev(7));
    await log.close();
    const text = readFileSync(path, "latin1");
    expect(text.split("\n")[3]).toBe(torn); // the fragment is kept, now on its own line
    expect(parse(text.split("\n")[4]!)).toMatchObject({ reason: "torn_tail", tornBytes: torn.length, seq: 3 });
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true, segments: 2 });
    // editing the pinned fragment afterwards is tampering
    const edited = `${torn.slice(0, -1)}${torn.endsWith("x") ? "y" : "x"}`;
    writeFileSync(path, text.replace(torn, edited), { mode: 0o600 });
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: false, line: 4, code: "ERR_AUDIT_TAMPERED" });
  });

  it("a crash during the very first write, and a record that lost only its newline, both recover", async () => {
    const lines = await sampleLog(3, 10);
    const first = join(dir, "first.log");
    writeFileSync(first, lines[0]!.slice(0, 25), { mode: 0o600 });
    await expect(AuditLog.open(fileSink(first), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_TRUNCATED" });
    await (await AuditLog.open(fileSink(first), { signer, newSegment: true })).close();
    expect(await verifyAuditLog(first, pk)).toMatchObject({ ok: true, segments: 1, records: 2 });
    const nonl = join(dir, "nonl.log");
    writeFileSync(nonl, lines.slice(0, 3).join("\n"), { mode: 0o600 }); // last record complete, newline lost
    await expect(AuditLog.open(fileSink(nonl), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_TRUNCATED" });
    const log = await AuditLog.open(fileSink(nonl), { signer, newSegment: true });
    await log.close();
    const text = readFileSync(nonl, "latin1").split("\n");
    expect(text[2]).toBe(lines[2]);
    expect(parse(text[3]!)).toMatchObject({ reason: "open_tail", prev: parse(lines[2]!)["hash"] });
    expect(await verifyAuditLog(nonl, pk)).toMatchObject({ ok: true, segments: 2 });
    // a closed log whose final newline was lost resumes normally
    const closed = join(dir, "closed.log");
    writeFileSync(closed, lines.join("\n"), { mode: 0o600 });
    await (await AuditLog.open(fileSink(closed), { signer })).close();
    expect(await verifyAuditLog(closed, pk)).toMatchObject({ ok: true, segments: 2 });
  });

  it("a tampered tail is refused; newSegment appends without hiding the evidence", async () => {
    const path = join(dir, "d.log");
    const lines = await sampleLog(5, 10);
    const t = [...lines];
    t[t.length - 2] = t[t.length - 2]!.replace('"to":"bob"', '"to":"eve"');
    writeFileSync(path, `${t.join("\n")}\n`, { mode: 0o600 });
    await expect(AuditLog.open(fileSink(path), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_TAMPERED" });
    const log = await AuditLog.open(fileSink(path), { signer, newSegment: true });
    await log.close();
    const last = readFileSync(path, "latin1").trimEnd().split("\n").slice(-2).map(parse);
    expect(last[0]).toMatchObject({ event: "segment_start", reason: "unverified_tail" });
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: false, line: t.length - 1, reason: "hash_mismatch" });
  });

  it("a log last signed by a rotated key reopens with resolveKey, and verifies with a resolver", async () => {
    const path = join(dir, "e.log");
    const old = makeSigner("node-a", "k1");
    const l1 = await AuditLog.open(fileSink(path), { signer: old });
    await l1.append(ev(1));
    await l1.close();
    const next = makeSigner("node-a", "k2");
    await expect(AuditLog.open(fileSink(path), { signer: next })).rejects.toMatchObject({ code: "ERR_AUDIT_UNKNOWN_SIGNER" });
    const keys: Record<string, Uint8Array> = { k1: old.publicKey, k2: next.publicKey };
    const l2 = await AuditLog.open(fileSink(path), { signer: next, resolveKey: (_id, kid) => keys[kid] });
    await l2.append(ev(2));
    await l2.close();
    expect(await verifyAuditLog(path, { resolveKey: (_id, kid) => keys[kid] })).toMatchObject({ ok: true, checkpoints: 2 });
    expect(await verifyAuditLog(path, { publicKey: next.publicKey })).toMatchObject({ ok: false, reason: "bad_signature" });
  });

  it("refuses group-writable files, symlinks, a second writer, and bad options", async () => {
    const path = join(dir, "f.log");
    writeFileSync(path, "");
    chmodSync(path, 0o664);
    await expect(AuditLog.open(fileSink(path), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    chmodSync(path, 0o600);
    const link = join(dir, "link.log");
    symlinkSync(path, link);
    await expect(AuditLog.open(fileSink(link), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    const log = await AuditLog.open(fileSink(path), { signer });
    await expect(AuditLog.open(fileSink(path), { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    await log.close();
    // after close the path can be opened again
    await (await AuditLog.open(fileSink(path), { signer })).close();
    expect(() => fileSink(path, { fsync: "sometimes" as "always" })).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    expect(() => fileSink("")).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });

  it("fsync policy: always / checkpoint / never", async () => {
    const probe = await fsp.open(join(dir, "probe"), "w");
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const counts: Record<string, number> = {};
    for (const fsync of ["always", "checkpoint", "never"] as const) {
      const spy = vi.spyOn(proto, "sync");
      const log = await AuditLog.open(fileSink(join(dir, `${fsync}.log`), { fsync }), { signer, checkpointEvery: 5 });
      for (let i = 0; i < 10; i++) await log.append(ev(i));
      await log.close();
      counts[fsync] = spy.mock.calls.length;
      spy.mockRestore();
      expect((await verifyAuditLog(join(dir, `${fsync}.log`), pk)).ok).toBe(true);
    }
    // always: segment start + 10 appends + final checkpoint + close; checkpoint: 2 periodic + final + close
    expect(counts).toEqual({ always: 13, checkpoint: 4, never: 0 });
  });

  it("file-mode verifier: missing file, over-long line, non-ASCII bytes", async () => {
    expect(await verifyAuditLog(join(dir, "missing.log"), pk)).toEqual({ ok: false, line: 0, code: "ERR_AUDIT_IO", reason: "io_error" });
    const lines = await sampleLog(3, 10);
    const long = join(dir, "long.log");
    writeFileSync(long, `${lines[0]}\n${"x".repeat(200_000)}\n`);
    expect(await verifyAuditLog(long, pk)).toMatchObject({ ok: false, line: 2, reason: "line_too_long" });
    const longTail = join(dir, "longtail.log");
    writeFileSync(longTail, `${lines[0]}\n${"x".repeat(200_000)}`);
    expect(await verifyAuditLog(longTail, pk)).toMatchObject({ ok: false, line: 2, reason: "line_too_long" });
    const bin = join(dir, "bin.log");
    writeFileSync(bin, Buffer.concat([Buffer.from(`${lines.join("\n")}\n`), Buffer.from([0xc3, 0xa9, 0x0a])]));
    expect(await verifyAuditLog(bin, pk)).toMatchObject({ ok: false, line: lines.length + 1, code: "ERR_AUDIT_TAMPERED" });
    const ok = join(dir, "ok.log");
    writeFileSync(ok, `${lines.join("\n")}\n`);
    expect(await verifyAuditLog(ok, pk)).toMatchObject({ ok: true, records: lines.length });
    appendFileSync(ok, "\n");
    expect(await verifyAuditLog(ok, pk)).toMatchObject({ ok: false, code: "ERR_AUDIT_TAMPERED" }); // an empty line is not a record
  });
});

describe("ordering, limits and failures", () => {
  it("a flood of concurrent appends is written in call order", async () => {
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer, checkpointEvery: 97 });
    const recs = await Promise.all(Array.from({ length: 2000 }, (_, i) => log.append(ev(i))));
    recs.forEach((r, i) => {
      expect(r.envelopeId).toBe(`e${String(i).padStart(4, "0")}`);
      if (i > 0) expect(r.seq).toBeGreaterThan(recs[i - 1]!.seq);
    });
    await log.close();
    const ids = sink.lines().map(parse).filter((r) => r["event"] === "sent").map((r) => r["envelopeId"]);
    expect(ids).toEqual(recs.map((r) => r.envelopeId));
    expect(await verifyAuditLog(sink.lines(), pk)).toMatchObject({ ok: true, checkpoints: 21 });
  });

  it("concurrent appends are group-committed, and each resolves only once its record is in the sink", async () => {
    const inner = memorySink();
    const writes: number[] = [];
    const counting: AuditSink = {
      open: (n) => inner.open(n),
      append: async (d, c) => {
        writes.push(d.length);
        await new Promise((r) => setTimeout(r, 1));
        return inner.append(d, c);
      },
      close: () => inner.close(),
    };
    const log = await AuditLog.open(counting, { signer, checkpointEvery: 1000 });
    const recs = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        log.append(ev(i)).then((r) => {
          expect(inner.text()).toContain(r.hash); // written before the promise resolved
          return r;
        }),
      ),
    );
    expect(recs).toHaveLength(300);
    expect(writes.length).toBeLessThan(10); // 1 segment start + a few batches, not 300 writes
    await log.close();
    expect(await verifyAuditLog(inner.lines(), pk)).toMatchObject({ ok: true, records: 302 });
  });

  it("the queue is bounded: beyond maxPending appends are refused, not buffered", async () => {
    const log = await AuditLog.open(memorySink(), { signer, maxPending: 10 });
    const results = await Promise.allSettled(Array.from({ length: 25 }, (_, i) => log.append(ev(i))));
    const refused = results.filter((r) => r.status === "rejected");
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: "ERR_QUEUE_FULL" });
    await log.close();
  });

  it("closed logs refuse appends; close is idempotent and waits for accepted appends", async () => {
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer });
    const pending = log.append(ev(1));
    const c1 = log.close();
    await expect(log.append(ev(2))).rejects.toMatchObject({ code: "ERR_CLOSED" });
    await expect(log.checkpoint()).rejects.toMatchObject({ code: "ERR_CLOSED" });
    await pending;
    await c1;
    await log.close();
    expect(sink.lines().map((l) => parse(l)["event"])).toEqual(["segment_start", "sent", "checkpoint"]);
    expect((await verifyAuditLog(sink.lines(), pk)).ok).toBe(true);
  });

  it("an I/O failure kills the log: this and every later append fail with ERR_AUDIT_IO", async () => {
    const inner = memorySink();
    let failNext = false;
    const flaky: AuditSink = {
      open: (n) => inner.open(n),
      append: async (d, c) => {
        if (failNext) throw Object.assign(new Error("EIO: disk on fire"), { code: "EIO" });
        return inner.append(d, c);
      },
      close: () => inner.close(),
    };
    const log = await AuditLog.open(flaky, { signer });
    await log.append(ev(1));
    failNext = true;
    const err = await log.append(ev(2)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "ERR_AUDIT_IO" });
    expect((err as Error).message).toContain("EIO");
    failNext = false;
    await expect(log.append(ev(3))).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    await log.close();
    // the stored log ends without a final checkpoint: the gap is visible, not silent
    expect(await verifyAuditLog(inner.lines(), pk)).toMatchObject({ ok: false, code: "ERR_AUDIT_TRUNCATED" });
  });

  it("a failing or lying signer is ERR_CRYPTO_PROVIDER and leaves the chain intact", async () => {
    const sink = memorySink();
    let mode: "ok" | "throw" | "wrong" = "ok";
    const liar = makeSigner();
    const s: AuditSigner = {
      ...signer,
      sign: (m) => {
        if (mode === "throw") throw new Error("HSM offline");
        return mode === "wrong" ? liar.sign(m) : signer.sign(m);
      },
    };
    const log = await AuditLog.open(sink, { signer: s, checkpointEvery: 2 });
    await log.append(ev(1));
    mode = "throw";
    await expect(log.append(ev(2))).rejects.toMatchObject({ code: "ERR_CRYPTO_PROVIDER" });
    mode = "wrong";
    await expect(log.append(ev(2))).rejects.toMatchObject({ code: "ERR_CRYPTO_PROVIDER" });
    mode = "ok";
    await log.append(ev(2));
    await log.close();
    expect(await verifyAuditLog(sink.lines(), pk)).toMatchObject({ ok: true, records: 5 });
  });

  it("accepts the core Identity shape (signPublicKey, a sign() method that uses this)", async () => {
    const { key } = defaultProvider.ed25519Generate();
    class FakeIdentity {
      readonly id = "node-b";
      readonly kid = "0123456789abcdef";
      readonly signPublicKey = key.publicKey;
      readonly #key = key;
      sign(m: Uint8Array): Uint8Array {
        return defaultProvider.ed25519Sign(this.#key, m);
      }
    }
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer: new FakeIdentity(), checkpointEvery: 2 });
    await log.append(ev(1));
    await log.append(ev(2));
    await log.close();
    expect(await verifyAuditLog(sink.lines(), { publicKey: key.publicKey })).toMatchObject({ ok: true, checkpoints: 2 });
  });

  it("bad open options are caller errors", async () => {
    const bad: unknown[] = [
      { signer: { ...signer, publicKey: new Uint8Array(31) } },
      { signer: { ...signer, id: "" } },
      { signer, checkpointEvery: 0 },
      { signer, checkpointEvery: 1.5 },
      { signer, hmacKey: new Uint8Array(16) },
      { signer, node: "a\nb" },
      { signer, maxPending: 0 },
      { signer, resolveKey: "k1" },
      {},
    ];
    for (const o of bad) {
      await expect(AuditLog.open(memorySink(), o as never), JSON.stringify(o)).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    }
    await expect(AuditLog.open({} as AuditSink, { signer })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
  });

  it("memory sink: one writer at a time; reopening resumes; inspect shows no key", async () => {
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer });
    await expect(AuditLog.open(sink, { signer })).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    expect(inspect(log)).toBe('AuditLog { node: "node-a", count: 1 }');
    await log.close();
    const again = await AuditLog.open(sink, { signer });
    await again.close();
    expect(sink.lines().map((l) => parse(l)["reason"] ?? parse(l)["event"])).toEqual([
      "new_log",
      "checkpoint",
      "resumed",
      "checkpoint",
    ]);
    expect(await verifyAuditLog(sink.lines(), pk)).toMatchObject({ ok: true, segments: 2 });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Session-mode and refusal events (issues 8 and 9)
// ---------------------------------------------------------------------------------------------------------------

const hex = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 37 + seed * 101 + 7) & 0xff)).toString("hex");
const SIG86 = `${"Ab0_-z9".repeat(12)}Ab0_-z9Ab0_-z9`.slice(0, 85) + "w"; // canonical: the last char's 4 spare bits are zero
const STREAM = hex(16, 1);
const ALICE_KID = hex(8, 2);
const BOB_KID = hex(8, 3);

/** One valid event of each new kind. */
const newEvents = (): AuditEvent[] => [
  { event: "session_opened", stream: STREAM, from: "alice", to: "bob", kid: ALICE_KID, recipientKid: BOB_KID },
  {
    event: "session_checkpoint",
    stream: STREAM,
    from: "alice",
    to: "bob",
    kid: ALICE_KID,
    recipientKid: BOB_KID,
    firstSeq: 0,
    lastSeq: 255,
    prevHead: hex(32, 4),
    head: hex(32, 5),
    signature: SIG86,
    final: false,
    peer: "hub",
  },
  { event: "session_gap", stream: STREAM, from: "alice", firstSeq: 256, lastSeq: 511 },
  { event: "session_gap", stream: STREAM, from: "alice", firstSeq: 0xffff_ffff, lastSeq: 0xffff_ffff, to: "bob", kid: ALICE_KID, recipientKid: BOB_KID },
  { event: "session_closed", stream: STREAM, from: "alice", reason: "final", count: 0 },
  { event: "session_closed", stream: STREAM, from: "alice", reason: "checkpoint_failed", count: 17, to: "bob", peer: "hub" },
  { event: "refused_connections", reason: "ws_max_connections", count: 1 },
  { event: "refused_connections", reason: "ws_handshake_timeout", source: "127.0.0.1", count: 4200, windowMs: 10_000 },
  { event: "refused_connections", reason: "noise_handshake_cap", source: "[::1]", count: 3, windowMs: 1 },
  { event: "refused_connections", reason: "noise_handshake_failed", source: "pi-2.home.lan", count: 1, windowMs: 3_600_000 },
  { event: "refused_connections", reason: "malformed_frame", source: "*", count: Number.MAX_SAFE_INTEGER },
  { event: "refused_connections", reason: "other", source: "fe80::1%eth0".replace("%", "_"), count: 2 },
];

describe("session-mode and refusal events", () => {
  it("valid events are accepted, written as given and verify (memory and file sinks)", async () => {
    const path = join(dir, "events.log");
    const sink = memorySink();
    for (const s of [sink, fileSink(path)]) {
      const log = await AuditLog.open(s, { signer, checkpointEvery: 5 });
      const recs: AuditRecord[] = [];
      for (const e of newEvents()) recs.push(await log.append(e));
      recs.forEach((r, i) => {
        const { event: _e, ...members } = newEvents()[i]!;
        expect(r).toMatchObject({ event: newEvents()[i]!.event, ...members });
      });
      await log.close();
      const lines = s === sink ? sink.lines() : readFileSync(path, "latin1").trimEnd().split("\n");
      for (const r of recs) expect(lines).toContain(canonicalJson(r));
      expect(await verifyAuditLog(s === sink ? lines : path, pk)).toMatchObject({ ok: true, records: 1 + newEvents().length + 3 });
    }
  });

  it("APPENDABLE_EVENTS lists the old and the new events; SESSION_CLOSE_REASONS is exactly the receiver's reasons", () => {
    expect(APPENDABLE_EVENTS).toEqual([...MESSAGE_EVENTS, ...SESSION_EVENTS, "refused_connections"]);
    expect(SESSION_EVENTS).toEqual(["session_opened", "session_checkpoint", "session_gap", "session_closed"]);
    type ReceiverReason = Extract<SessionEvent, { kind: "closed" }>["reason"];
    expectTypeOf<(typeof SESSION_CLOSE_REASONS)[number]>().toEqualTypeOf<ReceiverReason>();
  });

  it("malformed values are refused with ERR_INVALID_ARGUMENT, and the message does not echo them", async () => {
    const log = await AuditLog.open(memorySink(), { signer });
    const [opened, cp, gap, , closed, , refused] = newEvents() as [AuditEvent, AuditEvent, AuditEvent, AuditEvent, AuditEvent, AuditEvent, AuditEvent];
    const bad: [string, AuditEvent][] = [
      ["stream uppercase", { ...opened, stream: STREAM.toUpperCase() }],
      ["stream short", { ...opened, stream: STREAM.slice(1) }],
      ["stream long", { ...opened, stream: `${STREAM}0` }],
      ["kid not hex", { ...opened, kid: "k1" }],
      ["kid 17 hex", { ...opened, kid: `${ALICE_KID}0` }],
      ["recipientKid uppercase", { ...opened, recipientKid: BOB_KID.toUpperCase() }],
      ["recipientKid short", { ...opened, recipientKid: BOB_KID.slice(2) }],
      ["firstSeq negative", { ...cp, firstSeq: -1 }],
      ["lastSeq 2^32", { ...cp, lastSeq: 2 ** 32 }],
      ["firstSeq fraction", { ...cp, firstSeq: 0.5 }],
      ["firstSeq string", { ...cp, firstSeq: "0" as unknown as number }],
      ["firstSeq > lastSeq", { ...cp, firstSeq: 10, lastSeq: 9 }],
      ["gap reversed", { ...gap, firstSeq: 600, lastSeq: 599 }],
      ["prevHead 63", { ...cp, prevHead: hex(32, 4).slice(1) }],
      ["head uppercase", { ...cp, head: hex(32, 5).toUpperCase() }],
      ["head base64", { ...cp, head: Buffer.from(hex(32, 5), "hex").toString("base64url") }],
      ["signature 85", { ...cp, signature: SIG86.slice(1) }],
      ["signature 87", { ...cp, signature: `${SIG86}A` }],
      ["signature padded", { ...cp, signature: `${SIG86}==` }],
      ["signature std base64", { ...cp, signature: `+/${SIG86.slice(2)}` }],
      ["signature non-canonical", { ...cp, signature: `${SIG86.slice(0, 85)}x` }],
      ["final string", { ...cp, final: "true" as unknown as boolean }],
      ["count negative", { ...closed, count: -1 }],
      ["count fraction", { ...closed, count: 1.5 }],
      ["count unsafe", { ...closed, count: 2 ** 53 }],
      ["closed reason unknown", { ...closed, reason: "tired" }],
      ["refused count 0", { ...refused, count: 0 }],
      ["source space", { ...refused, source: "10.0.0.1 x" }],
      ["source non-ASCII", { ...refused, source: "hüb" }],
      ["source slash", { ...refused, source: "10.0.0.0/8" }],
      ["source empty", { ...refused, source: "" }],
      ["source 65", { ...refused, source: "a".repeat(65) }],
      ["source star plus", { ...refused, source: "*x" }],
      ["source newline", { ...refused, source: "a\nb" }],
      ["windowMs 0", { ...refused, windowMs: 0 }],
      ["windowMs over an hour", { ...refused, windowMs: 3_600_001 }],
      ["windowMs fraction", { ...refused, windowMs: 1.5 }],
      ["reason sentence", { ...refused, reason: "too many connections" }],
    ];
    for (const [what, e] of bad) {
      const err = await log.append(e).catch((x: unknown) => x);
      expect(err, what).toBeInstanceOf(SealwireError);
      expect(err, what).toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
      for (const v of Object.values(e)) {
        if (typeof v === "string" && v.length > 6 && !/^[a-z_]+$/.test(v)) expect((err as Error).message, what).not.toContain(v);
      }
    }
    expect(log.count).toBe(1); // nothing was written
    await log.close();
  });

  it("fields that do not belong to the event, and missing required ones, are refused", async () => {
    const log = await AuditLog.open(memorySink(), { signer });
    const [opened, cp, gap, , closed, , refused] = newEvents() as [AuditEvent, AuditEvent, AuditEvent, AuditEvent, AuditEvent, AuditEvent, AuditEvent];
    const { signature: _s, ...cpNoSig } = cp;
    const { final: _f, ...cpNoFinal } = cp;
    const { recipientKid: _r, ...cpNoRkid } = cp;
    const { count: _c, ...closedNoCount } = closed;
    const { count: _c2, ...refusedNoCount } = refused;
    const { reason: _rr, ...refusedNoReason } = refused;
    const { stream: _st, ...gapNoStream } = gap;
    const foreign: [string, AuditEvent][] = [
      ["opened + envelopeId", { ...opened, envelopeId: "e0001" }],
      ["opened + payload", { ...opened, payload: new Uint8Array([1]) }],
      ["opened + signature", { ...opened, signature: SIG86 }],
      ["opened + tags", { ...opened, tags: ["pii:email"] }],
      ["checkpoint + count", { ...cp, count: 3 }],
      ["checkpoint + decision", { ...cp, decision: "allow" }],
      ["gap + head", { ...gap, head: hex(32, 5) }],
      ["closed + final", { ...closed, final: true }],
      ["closed + firstSeq", { ...closed, firstSeq: 1 }],
      ["refused + from", { ...refused, from: "alice" }],
      ["refused + peer", { ...refused, peer: "hub" }],
      ["refused + payload", { ...refused, payload: new Uint8Array([1]) }],
      ["refused + stream", { ...refused, stream: STREAM }],
      ["sent + stream", { ...ev(1), stream: STREAM }],
      ["sent + signature", { ...ev(1), signature: SIG86 }],
      ["sent + count", { ...ev(1), count: 1 }],
      ["denied + source", { ...ev(1), event: "denied", source: "127.0.0.1" }],
      ["handshake + windowMs", { event: "handshake", peer: "bob", windowMs: 10 }],
      ["unknown member", { ...refused, body: "hello" } as AuditEvent],
      ["checkpoint without signature", cpNoSig as AuditEvent],
      ["checkpoint without final", cpNoFinal as AuditEvent],
      ["checkpoint without recipientKid", cpNoRkid as AuditEvent],
      ["closed without count", closedNoCount as AuditEvent],
      ["refused without count", refusedNoCount as AuditEvent],
      ["refused without reason", refusedNoReason as AuditEvent],
      ["gap without stream", gapNoStream as AuditEvent],
      ["opened bare", { event: "session_opened" }],
      ["unknown event", { event: "session_resumed" as "session_opened", stream: STREAM }],
    ];
    for (const [what, e] of foreign) {
      await expect(log.append(e), what).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    }
    expect((await log.append(cp).catch(() => null))?.event).toBe("session_checkpoint"); // the valid one passes
    await log.close();
  });

  it("secrets cannot ride in the new fields; random valid signatures and heads are never mistaken for one (property)", async () => {
    const log = await AuditLog.open(memorySink(), { signer });
    const refused = newEvents()[6]!;
    await expect(log.append({ ...refused, source: `ghp_${"aB3".repeat(12)}` })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    const key = defaultProvider.randomBytes(32);
    registerSecret(key);
    const cp = newEvents()[1]!;
    const err = await log.append({ ...cp, head: Buffer.from(key).toString("hex") }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    expect((err as Error).message).toContain("head");
    expect((err as Error).message).not.toContain(Buffer.from(key).toString("hex"));
    await expect(log.append({ ...cp, prevHead: Buffer.from(key).toString("hex") })).rejects.toMatchObject({ code: "ERR_INVALID_ARGUMENT" });
    unregisterAllSecrets();
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.uint8Array({ minLength: 32, maxLength: 32 }), async (sig, h) => {
        const r = await log.append({ ...cp, signature: Buffer.from(sig).toString("base64url"), head: Buffer.from(h).toString("hex") });
        expect(r.signature).toBe(Buffer.from(sig).toString("base64url"));
      }),
      { numRuns: 300 },
    );
    await log.close();
  });

  it("the verifier refuses records whose members do not fit their event (re-hashed, so only the shape can tell)", async () => {
    const sink = memorySink();
    const log = await AuditLog.open(sink, { signer, checkpointEvery: 1000 });
    for (const e of newEvents()) await log.append(e);
    await log.append(ev(1));
    await log.close();
    const lines = sink.lines();
    expect(await verifyAuditLog(lines, pk)).toMatchObject({ ok: true });
    const at = (event: string) => indexOfEvent(lines, (r) => r["event"] === event);
    const edits: [string, number, (r: Record<string, unknown>) => void][] = [
      ["signature on sent", at("sent"), (r) => (r["signature"] = SIG86)],
      ["stream on sent", at("sent"), (r) => (r["stream"] = STREAM)],
      ["checkpoint without head", at("session_checkpoint"), (r) => delete r["head"]],
      ["checkpoint with a sender kid not 16 hex", at("session_checkpoint"), (r) => (r["kid"] = "k1")],
      ["checkpoint reversed range", at("session_checkpoint"), (r) => (r["firstSeq"] = 300)],
      ["checkpoint non-canonical signature", at("session_checkpoint"), (r) => (r["signature"] = `${SIG86.slice(0, 85)}x`)],
      ["opened with envelopeId", at("session_opened"), (r) => (r["envelopeId"] = "e1")],
      ["closed with an unknown reason", at("session_closed"), (r) => (r["reason"] = "tired")],
      ["refused count 0", at("refused_connections"), (r) => (r["count"] = 0)],
      ["refused with payloadDigest", at("refused_connections"), (r) => (r["payloadDigest"] = hex(32, 9))],
      ["refused windowMs 0", at("refused_connections"), (r) => (r["windowMs"] = 0)],
    ];
    for (const [what, i, edit] of edits) {
      expect(i, what).toBeGreaterThan(0);
      const r = parse(lines[i]!);
      edit(r);
      const t = [...lines];
      t[i] = rehash(r);
      expect(await verifyAuditLog(t, pk), what).toEqual({ ok: false, line: i + 1, code: "ERR_AUDIT_TAMPERED", reason: "bad_record" });
    }
  });

  it("a real session: the receiver's events become records, and each checkpoint re-verifies from its record and the sender's key", async () => {
    const clock = { t: 1_800_000_000_000 };
    const alice = Identity.generate("alice");
    const bob = Identity.generate("bob");
    const mallory = Identity.generate("mallory");
    const trustA = new TrustStore();
    trustA.add(bob.publicIdentity);
    const trustB = new TrustStore();
    trustB.add(alice.publicIdentity);
    const events: SessionEvent[] = [];
    const tx = new SessionSender({ identity: alice, trust: trustA, to: "bob", now: () => clock.t, checkpointEvery: 8 });
    const rx = new SessionReceiver({ identity: bob, trust: trustB, now: () => clock.t, replayWindow: 32, onEvent: (e) => events.push(e) });
    const path = join(dir, "session.log");
    const log = await AuditLog.open(fileSink(path), { signer, checkpointEvery: 4 });
    const digests = new Map<number, Uint8Array>();
    try {
      const frames: Uint8Array[] = [];
      for (let i = 0; i < 60; i++) {
        const s = tx.seal(encodePayload({ i }));
        frames.push(...s.preceding, s.bytes);
      }
      frames.push(tx.close()!);
      for (const f of frames) {
        const seq = isSessionFrame(f) ? decodeSessionEnvelope(f).wire.seq : 0;
        if (seq === 11) continue; // lost: [8, 15] becomes a gap once the window has passed
        const m = rx.open(f);
        if (m.digest) digests.set((m.header as SessionHeader).seq, m.digest);
      }
      expect(new Set(events.map((e) => e.kind))).toEqual(new Set(["opened", "checkpoint", "gap", "closed"]));
      for (const e of events) await log.append(sessionAuditEvent(e, { to: "bob", recipientKid: bob.kid }));
    } finally {
      await log.close();
      rx.close();
    }
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true });
    // Read back: from here on only the file and the sender's public key are used.
    const records = readFileSync(path, "latin1")
      .trimEnd()
      .split("\n")
      .map((l) => parse(l) as unknown as AuditRecord);
    expect(records.filter((r) => r.event === "session_opened")).toEqual([
      expect.objectContaining({ from: "alice", to: "bob", kid: alice.kid, recipientKid: bob.kid, stream: expect.stringMatching(/^[0-9a-f]{32}$/) }),
    ]);
    expect(records.filter((r) => r.event === "session_gap").map((r) => [r.firstSeq, r.lastSeq])).toEqual([[8, 15]]);
    const closed = events.find((e) => e.kind === "closed");
    expect(records.filter((r) => r.event === "session_closed")).toEqual([
      expect.objectContaining({ reason: "final", count: closed?.kind === "closed" ? closed.uncovered : -1, to: "bob", recipientKid: bob.kid }),
    ]);
    const cps = records.filter((r) => r.event === "session_checkpoint");
    expect(cps.length).toBeGreaterThanOrEqual(6);
    expect(cps.at(-1)).toMatchObject({ final: true });
    for (const r of cps) {
      // Independently of the helper: the bytes session.ts signs, rebuilt from the record's members.
      const msg = checkpointSignedBytes(
        Buffer.from(r.stream!, "hex"),
        r.kid!,
        r.recipientKid!,
        r.firstSeq!,
        r.lastSeq!,
        Buffer.from(r.prevHead!, "hex"),
        Buffer.from(r.head!, "hex"),
        r.final!,
      );
      const sig = new Uint8Array(Buffer.from(r.signature!, "base64url"));
      expect(defaultProvider.ed25519Verify(defaultProvider.ed25519Public(alice.signPublicKey), msg, sig)).toBe(true);
      expect(verifySessionCheckpointRecord(r, alice.signPublicKey)).toBe(true);
      expect(verifySessionCheckpointRecord(r, mallory.signPublicKey)).toBe(false);
      // and with the envelopes' digests (held by whoever kept them), the signed head matches what was delivered
      const ds = Array.from({ length: r.lastSeq! - r.firstSeq! + 1 }, (_, k) => digests.get(r.firstSeq! + k)!);
      expect(verifySessionCheckpoint(defaultProvider, sessionCheckpointOfRecord(r), alice.signPublicKey, ds)).toBe(true);
      // every signed member matters
      const edits: Partial<AuditRecord>[] = [
        { firstSeq: r.firstSeq! + 1 },
        { lastSeq: r.lastSeq! + 1 },
        { final: !r.final },
        { head: hex(32, 6) },
        { prevHead: hex(32, 7) },
        { stream: hex(16, 8) },
        { kid: mallory.kid },
        { recipientKid: alice.kid },
      ];
      for (const edit of edits) expect(verifySessionCheckpointRecord({ ...r, ...edit }, alice.signPublicKey), JSON.stringify(edit)).toBe(false);
    }
    // hostile input: never throws, just false; a caller passing a bad key is told
    for (const bad of [records[0]!, { ...cps[0]!, signature: "x" }, { ...cps[0]!, event: "sent" } as AuditRecord, {} as AuditRecord, null as unknown as AuditRecord]) {
      expect(verifySessionCheckpointRecord(bad, alice.signPublicKey)).toBe(false);
    }
    expect(() => verifySessionCheckpointRecord(cps[0]!, new Uint8Array(31))).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    expect(() => sessionCheckpointOfRecord(records[0]!)).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    alice.close();
    bob.close();
    mallory.close();
  });
});

// ---------------------------------------------------------------------------------------------------------------
// fsync off the append path (issue 9: a checkpoint's fsync stalled every append behind it)
// ---------------------------------------------------------------------------------------------------------------

/**
 * Replaces `FileHandle.prototype.sync` with one the test completes by hand: each call waits for `release()` (or
 * `fail()`), then runs the real fsync. Counts calls and the most ever in flight at once.
 */
async function gatedSync(at: string) {
  const probe = await fsp.open(join(at, "probe"), "w");
  const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
  await probe.close();
  const real = proto.sync;
  const waiting: { go: () => void; no: (e: unknown) => void }[] = [];
  const state = { calls: 0, inFlight: 0, maxInFlight: 0, auto: false };
  vi.spyOn(proto, "sync").mockImplementation(function (this: unknown) {
    state.calls++;
    state.inFlight++;
    state.maxInFlight = Math.max(state.maxInFlight, state.inFlight);
    const gate = state.auto ? Promise.resolve() : new Promise<void>((go, no) => waiting.push({ go, no }));
    return gate.then(() => real.call(this)).finally(() => state.inFlight--);
  });
  return {
    state,
    /** Lets the oldest held fsync run. */
    release: () => waiting.shift()!.go(),
    /** Fails the oldest held fsync with EIO. */
    fail: () => waiting.shift()!.no(Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO" })),
    held: () => waiting.length,
    /** Stops holding: releases every held fsync and lets later ones through. */
    open: () => {
      state.auto = true;
      while (waiting.length > 0) waiting.shift()!.go();
    },
  };
}

/** How many of this process's descriptors are open on `path` (Linux: /proc/self/fd). */
function fdsOn(path: string): number {
  return readdirSync("/proc/self/fd").filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false; // closed meanwhile (the directory's own descriptor, for one)
    }
  }).length;
}

/** Settles `p` within `ms`, or says it is still pending. */
async function within<T>(p: Promise<T>, ms = 2000): Promise<{ ok: true; value: T } | { ok: false; error: unknown } | "pending"> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"pending">((r) => (timer = setTimeout(() => r("pending"), ms)));
  try {
    return await Promise.race([p.then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('fsync "checkpoint" runs beside the appends, "always" before they resolve', () => {
  it("appends resolve once written while a checkpoint's fsync runs; one fsync at a time; a far-behind disk holds appends behind that one fsync", async () => {
    const g = await gatedSync(dir);
    const path = join(dir, "bg.log");
    const log = await AuditLog.open(fileSink(path), { signer, checkpointEvery: 1 });
    expect(g.state.calls).toBe(0); // the segment start ends with no checkpoint
    const first = await within(log.append(ev(1))); // [e1, checkpoint]: its fsync starts and is held
    expect(first).toMatchObject({ ok: true });
    expect(g.held()).toBe(1);
    // While that fsync is held, MAX_FSYNC_DUE more checkpoint batches are written and resolve at once.
    for (let i = 2; i <= 1 + MAX_FSYNC_DUE; i++) {
      const r = await within(log.append(ev(i)));
      expect(r, `append ${i}`).toMatchObject({ ok: true });
      const rec = (r as { value: AuditRecord }).value;
      expect(readFileSync(path, "latin1")).toContain(rec.hash); // written (to the OS) before it resolved
    }
    expect(g.state.calls).toBe(1); // no second fsync while the first runs
    // One more is too far ahead of the disk: it is written, but resolves only when the fsync in flight ends.
    const behind = log.append(ev(99));
    expect(await within(behind, 100)).toBe("pending");
    expect(readFileSync(path, "latin1")).toContain('"envelopeId":"e0099"');
    g.release();
    expect(await within(behind)).toMatchObject({ ok: true });
    // The checkpoints written meanwhile got their fsync: one follow-up covering them all, and still one at a time.
    expect(g.state.calls).toBe(2);
    expect(g.held()).toBe(1);
    g.open();
    await log.close();
    expect(g.state.maxInFlight).toBe(1);
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true });
  });

  it('"always": an append resolves only after its fsync', async () => {
    const g = await gatedSync(dir);
    const path = join(dir, "always.log");
    const opening = AuditLog.open(fileSink(path, { fsync: "always" }), { signer, checkpointEvery: 100 });
    while (g.held() === 0) await new Promise((r) => setTimeout(r, 1)); // the segment start's fsync
    g.release();
    const log = await opening;
    const p = log.append(ev(1));
    expect(await within(p, 100)).toBe("pending");
    expect(g.held()).toBe(1);
    g.release();
    expect(await within(p)).toMatchObject({ ok: true });
    g.open();
    await log.close();
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true });
  });

  it("a failed background fsync kills the log: onError hears it, the waiting and every later append and close fail with ERR_AUDIT_IO", async () => {
    const g = await gatedSync(dir);
    const path = join(dir, "eio.log");
    const heard: unknown[] = [];
    const log = await AuditLog.open(fileSink(path, { onError: (e) => heard.push(e) }), { signer, checkpointEvery: 1 });
    for (let i = 1; i <= 1 + MAX_FSYNC_DUE; i++) expect(await within(log.append(ev(i)))).toMatchObject({ ok: true });
    const waiting = log.append(ev(50)); // held behind the fsync in flight
    expect(await within(waiting, 100)).toBe("pending");
    g.fail();
    const w = await within(waiting);
    expect(w).toMatchObject({ ok: false, error: { code: "ERR_AUDIT_IO" } });
    expect(String((w as { error: Error }).error.message)).toContain("EIO");
    expect(heard).toHaveLength(1);
    expect(heard[0]).toMatchObject({ code: "ERR_AUDIT_IO" });
    const before = readFileSync(path, "latin1");
    for (let i = 60; i < 63; i++) await expect(log.append(ev(i))).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    expect(readFileSync(path, "latin1")).toBe(before); // nothing more is written after the failure
    g.open();
    expect(fdsOn(path)).toBe(1);
    await expect(log.close()).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    expect(fdsOn(path)).toBe(0); // the descriptor is closed even though close() fails
    expect(g.state.calls).toBe(1); // the failed fsync is not retried (close does not sync either)
    // The descriptor was closed and the path released; the gap is visible, and a new segment can follow it.
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: false, code: "ERR_AUDIT_TRUNCATED", reason: "no_final_checkpoint" });
    const again = await AuditLog.open(fileSink(path), { signer, newSegment: true });
    await again.close();
    expect(await verifyAuditLog(path, pk)).toMatchObject({ ok: true, segments: 2 });
  });

  it("after a failed fsync nothing more is written; a throwing onError does not escape; a bad onError is a caller error", async () => {
    const g = await gatedSync(dir);
    const path = join(dir, "throwing.log");
    const log = await AuditLog.open(
      fileSink(path, {
        onError: () => {
          throw new Error("listener bug");
        },
      }),
      { signer, checkpointEvery: 1 },
    );
    await log.append(ev(1));
    g.fail();
    await new Promise((r) => setTimeout(r, 10));
    const before = readFileSync(path, "latin1");
    // No append was waiting: the next one is refused by the sink before anything is written.
    await expect(log.append(ev(2))).rejects.toMatchObject({ code: "ERR_AUDIT_IO", message: expect.stringContaining("EIO") });
    expect(readFileSync(path, "latin1")).toBe(before);
    g.open();
    await expect(log.close()).rejects.toMatchObject({ code: "ERR_AUDIT_IO" });
    expect(() => fileSink(path, { onError: "log" as unknown as () => void })).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });
});
