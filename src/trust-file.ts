/**
 * Trust files: a TrustStore on disk, for the CLI and for processes that share one list of peers.
 *
 * Format (JSON): `{ "v": 1, "peers": [ { "identity": <public identity>, "roles": [...], "clearances": [...],
 * "address"?: "...", "revoked"?: true } ] }`. Every identity is re-validated on load (its kid and fingerprint must
 * match its keys). A trust file decides who may talk to this agent, so one that group or others can write is
 * refused, with the `chmod` to run; files are written atomically with mode 0600.
 *
 * @module
 * @example
 * ```ts
 * const trust = await loadTrustFile("trust.json");
 * trust.add(peer, { clearances: ["pii:email"] });
 * await saveTrustFile("trust.json", trust);
 * ```
 */
import { promises as fsp } from "node:fs";
import { z } from "zod";
import { sealwireError } from "./errors.js";
import { writeFileAtomic0600 } from "./keystore.js";
import { TrustStore } from "./trust.js";

/** Largest trust file read. */
export const MAX_TRUST_FILE_BYTES = 4 * 1024 * 1024;

const fileSchema = z.strictObject({
  v: z.literal(1),
  peers: z
    .array(
      z.strictObject({
        identity: z.unknown(),
        roles: z.array(z.string()).max(64).optional(),
        clearances: z.array(z.string()).max(64).optional(),
        address: z.string().max(512).optional(),
        revoked: z.boolean().optional(),
      }),
    )
    .max(10_000),
});

/** Loads a trust file. Missing file: an empty store when `allowMissing`, else ERR_TRUST_FILE. */
export async function loadTrustFile(path: string, options: { allowMissing?: boolean } = {}): Promise<TrustStore> {
  let st;
  try {
    st = await fsp.lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT" && options.allowMissing) return new TrustStore();
    throw sealwireError("ERR_TRUST_FILE", `cannot read trust file ${path}; create it with "sealwire trust add"`);
  }
  if (!st.isFile()) throw sealwireError("ERR_TRUST_FILE", `${path} is not a regular file`);
  if (process.platform !== "win32" && (st.mode & 0o022) !== 0) {
    throw sealwireError(
      "ERR_TRUST_FILE",
      `${path} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}), so anyone could add a peer; run: chmod 600 ${path}`,
    );
  }
  if (st.size > MAX_TRUST_FILE_BYTES) throw sealwireError("ERR_TRUST_FILE", `${path} is larger than ${MAX_TRUST_FILE_BYTES} bytes`);
  let json: unknown;
  try {
    json = JSON.parse(await fsp.readFile(path, "utf8"));
  } catch {
    throw sealwireError("ERR_TRUST_FILE", `${path} is not valid JSON`);
  }
  const parsed = fileSchema.safeParse(json, { reportInput: false });
  if (!parsed.success) throw sealwireError("ERR_TRUST_FILE", `${path} does not match the trust file format (v: 1, peers: [...])`);
  const trust = new TrustStore();
  for (const [i, p] of parsed.data.peers.entries()) {
    try {
      trust.add(p.identity, {
        ...(p.roles ? { roles: p.roles } : {}),
        ...(p.clearances ? { clearances: p.clearances } : {}),
        ...(p.address !== undefined ? { address: p.address } : {}),
      });
      if (p.revoked) trust.revoke(trust.get((p.identity as { id: string }).id)!.id);
    } catch (e) {
      throw sealwireError("ERR_TRUST_FILE", `${path}: peer #${i + 1} is invalid: ${(e as Error).message}`, { cause: e });
    }
  }
  return trust;
}

/** Writes `trust` to `path` atomically with mode 0600. */
export async function saveTrustFile(path: string, trust: TrustStore): Promise<void> {
  const peers = trust.list().map((e) => ({
    identity: e.identity,
    roles: [...e.roles],
    clearances: [...e.clearances],
    ...(e.address !== undefined ? { address: e.address } : {}),
    ...(e.revoked ? { revoked: true } : {}),
  }));
  const text = JSON.stringify({ v: 1, peers }, null, 2) + "\n";
  await writeFileAtomic0600(path, new TextEncoder().encode(text), true);
}
