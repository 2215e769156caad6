/**
 * A crew with a privacy rule: researcher → anonymizer → writer.
 *
 * - The researcher finds a contact e-mail and sends it, tagged `pii:email`, to the anonymizer (cleared for it).
 * - The researcher also tries to send it straight to the writer, who is not cleared: denied at send.
 * - The anonymizer masks the address and forwards the result marked anonymized, with a signed attestation that
 *   binds the digest of what it received, the digest of what it sends, and the policy it applied. The writer,
 *   not cleared for `pii:email`, receives it only because the attestation verifies and the anonymizer is trusted.
 * - A forwarder without the `anonymizer` role tries the same trick: the writer refuses it.
 * Every decision lands in one hash-chained, signed audit log, which is verified at the end.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source examples/crew/index.ts [audit-log-path]
 * npx sealwire audit verify <audit-log-path> --key <printed key>
 * ```
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import {
  AuditLog,
  createAgent,
  fileSink,
  generateIdentity,
  SealwireError,
  TrustStore,
  verifyAuditLog,
  type ReceivedMessage,
} from "sealwire";
import { memory } from "sealwire/transports/memory";

export interface CrewResult {
  ok: boolean;
  auditPath: string;
  /** The audit signer's Ed25519 public key, base64url: what `sealwire audit verify --key` needs. */
  auditKey: string;
  lines: string[];
}

export async function main(auditPath = join(mkdtempSync(join(tmpdir(), "sealwire-crew-")), "audit.log"), log = console.log): Promise<CrewResult> {
  const lines: string[] = [];
  const say = (l: string) => {
    lines.push(l);
    log(l);
  };
  let ok = true;
  const check = (cond: boolean, what: string) => {
    say(`${cond ? "ok  " : "FAIL"} ${what}`);
    ok &&= cond;
  };

  const net = memory();
  const [node, researcher, anonymizer, writer, forwarder] = await Promise.all(
    ["crew-node", "researcher", "anonymizer", "writer", "forwarder"].map((id) => generateIdentity(id)),
  );
  const trust = new TrustStore();
  trust.add(researcher!.publicIdentity, { roles: ["researcher"] });
  trust.add(anonymizer!.publicIdentity, { roles: ["anonymizer"], clearances: ["pii:email"] });
  trust.add(writer!.publicIdentity, { roles: ["writer"] });
  trust.add(forwarder!.publicIdentity, { clearances: ["pii:email"] });

  const audit = await AuditLog.open(fileSink(auditPath), {
    signer: { id: node!.id, kid: node!.kid, publicKey: node!.signPublicKey, sign: (m) => node!.sign(m) },
    checkpointEvery: 5,
  });
  const refused: SealwireError[] = [];
  const onError = (e: SealwireError) => refused.push(e);
  const r = await createAgent({ identity: researcher!, trust, transport: net, audit, onError });
  const an = await createAgent({ identity: anonymizer!, trust, transport: net, audit, onError });
  const w = await createAgent({ identity: writer!, trust, transport: net, audit, onError });
  const fw = await createAgent({ identity: forwarder!, trust, transport: net, audit, onError });

  const finding = { source: "team page", contact: "dr.ana.silva@example.org", summary: "leads the 2026 field study" };
  // 1. researcher → anonymizer, PII tagged: delivered.
  await r.send("anonymizer", finding, { tags: { pii: ["pii:email"] } });
  const input = (await an.messages().next()).value as ReceivedMessage;
  say(`delivered  researcher → anonymizer  tags=${input.tags.pii.join(",")}`);
  check(input.from === "researcher", "PII delivered to the cleared anonymizer");

  // 2. researcher → writer directly: denied at send (writer is not cleared for pii:email).
  const direct = await r.send("writer", finding, { tags: { pii: ["pii:email"] } }).then(
    () => "sent",
    (e: SealwireError) => `${e.code}:${e.reason}`,
  );
  say(`denied     researcher → writer      ${direct}`);
  check(direct === "ERR_POLICY_DENIED:pii_not_cleared", "PII denied for the uncleared writer");

  // 3. anonymizer → writer, masked and attested: delivered.
  const data = input.data as typeof finding;
  const masked = { ...data, contact: data.contact.replace(/[^@\s]+@[^\s]+/, "[email removed]") };
  await an.send("writer", masked, { tags: { pii: ["pii:email"], anonymized: true }, attestation: { input, policy: "mask-emails-v1" } });
  const out = (await w.messages().next()).value as ReceivedMessage;
  say(`attested   anonymizer → writer      policy=${out.attestation?.policy} input=${out.attestation?.inputId.slice(0, 8)}… data=${JSON.stringify(out.data)}`);
  check(out.attestation?.anonymizer === "anonymizer" && out.attestation.inputDigest === input.digest, "anonymized data delivered with a verified attestation");

  // 4. a forwarder without the anonymizer role tries the same: refused by the writer.
  await fw.send("writer", masked, { tags: { pii: ["pii:email"], anonymized: true }, attestation: { input, policy: "mask-emails-v1" } });
  const deadline = Date.now() + 2000;
  while (!refused.some((e) => e.code === "ERR_ATTESTATION_INVALID") && Date.now() < deadline) await new Promise((res) => setTimeout(res, 5));
  const bad = refused.find((e) => e.code === "ERR_ATTESTATION_INVALID");
  say(`denied     forwarder → writer       ${bad?.code}: ${bad?.message}`);
  check(bad !== undefined, "attestation from an agent without the anonymizer role refused");

  await Promise.all([r.close(), an.close(), w.close(), fw.close()]);
  await audit.close();
  const verdict = await verifyAuditLog(auditPath, { publicKey: node!.signPublicKey });
  say(`audit      ${auditPath}: ${verdict.ok ? `OK (${verdict.records} records, ${verdict.checkpoints} signed checkpoints)` : `${verdict.code} at line ${verdict.line}`}`);
  check(verdict.ok, "audit log verifies");
  const auditKey = Buffer.from(node!.signPublicKey).toString("base64url");
  say(`verify it yourself: npx sealwire audit verify ${auditPath} --key ${auditKey}`);
  for (const id of [node, researcher, anonymizer, writer, forwarder]) id!.close();
  return { ok, auditPath, auditKey, lines };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const res = await main(process.argv[2]);
  process.exitCode = res.ok ? 0 : 1;
}
