#!/usr/bin/env node
/**
 * The `sealwire` command line: keys, trust, a hub, and agents that listen and send — enough for two machines to
 * exchange sealed messages without certificates (Noise over WebSocket, keys pinned in a trust file).
 *
 * Every failure is one line, `sealwire: ERR_…: what happened and what to do`, with a non-zero exit status; no stack
 * traces unless `--debug`. Passphrases come from `--passphrase-file`, the `SEALWIRE_PASSPHRASE` environment
 * variable, or a prompt on a terminal — never a default.
 *
 * @module
 * @example
 * ```sh
 * sealwire keygen --id alice            # writes alice.key (encrypted) and prints the public identity
 * sealwire trust add "$(cat bob.pub)" --clear pii:email
 * sealwire hub --listen ws://0.0.0.0:7700 --key hub.key
 * sealwire listen --hub ws://pi1.lan:7700 --key bob.key
 * sealwire send --hub ws://pi1.lan:7700 --key alice.key --to bob "hello"
 * ```
 */
import { promises as fsp, readFileSync, realpathSync, unwatchFile, watchFile } from "node:fs";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { fromBase64url } from "../src/_bytes.js";
import { createAgent, type Agent } from "../src/agent.js";
import { AuditLog, fileSink, verifyAuditLog } from "../src/audit.js";
import { SealwireError } from "../src/errors.js";
import { createHub } from "../src/hub.js";
import { Identity, parsePublicIdentity } from "../src/identity.js";
import { loadIdentity, passphraseFromEnv, passphraseFromFile, readPublicIdentity, saveIdentity, type Passphrase } from "../src/keystore.js";
import { RefusalCounter, type Refusal } from "../src/refusal-counter.js";
import type { Transport } from "../src/transport.js";
import { loadTrustFile, saveTrustFile } from "../src/trust-file.js";
import type { TrustStore } from "../src/trust.js";

const HELP = `sealwire — signed, sealed, policy-tagged messages between AI agents

Usage: sealwire <command> [options]

Keys and trust
  keygen --id <id> [--out <file>] [--force]
        Make an agent's keys; write them encrypted to <file> (default <id>.key, mode 0600) and its public
        identity to <file>.pub. Prints the public identity: one line to copy to the other machine.
  trust add <public identity | file> [--clear pii:<x>]... [--role <r>]... [--address <url>]
  trust list
  trust revoke <id>
        Manage the trust file (--trust, default ./trust.json or $SEALWIRE_TRUST).

Running
  hub --listen ws://0.0.0.0:7700 --key hub.key
        Run a hub. ws:// carries Noise (no certificates: keys are pinned in the trust file).
        wss:// adds TLS: --tls-cert <pem> --tls-key <pem> [--tls-ca <pem> to require client certificates].
        --audit <file> writes a signed audit log. After a crash its tail has no final checkpoint and the hub
        refuses to continue it; add --audit-new-segment to start a new, linked segment (nothing is rewritten).
  listen --hub <url> --key <file> [--hub-id hub] [--count <n>]
        Print every message this agent receives, one JSON line each.
  send --hub <url> --key <file> --to <id> [--hub-id hub] [--pii pii:<x>]... <text>
        Send <text>; waits until the recipient acknowledged it.
  audit verify <file> --key <signer public key | public identity file> [--allow-open-tail]
        Verify an audit log: hash chain, signed checkpoints, truncation.
  doctor --key <file> [--hub <url>] [--hub-id hub]
        Check key file, permissions, passphrase, trust file and connectivity, and explain each problem.

Options
  --trust <file>          Trust file (default ./trust.json, or $SEALWIRE_TRUST).
  --passphrase-file <f>   Read the key passphrase from a file (mode 0600). Else $SEALWIRE_PASSPHRASE, else a
                          prompt on a terminal.
  --tls-ca <pem>          Clients: trust this CA for wss:// (default: the system's CAs).
  --debug                 Print stack traces on failure.
  -h, --help, -v, --version`;

/** Where a CLI run writes, and how a long-running command is stopped (tests pass their own). */
export interface CliIO {
  out(line: string): void;
  err(line: string): void;
  /** Stops `hub` and `listen`. @default SIGINT/SIGTERM */
  signal?: AbortSignal;
  /** Environment. @default process.env */
  env?: NodeJS.ProcessEnv;
}

/** Exit status and output of one CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

const OPTIONS = {
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
  debug: { type: "boolean" },
  id: { type: "string" },
  out: { type: "string" },
  force: { type: "boolean" },
  trust: { type: "string" },
  clear: { type: "string", multiple: true },
  role: { type: "string", multiple: true },
  address: { type: "string" },
  listen: { type: "string" },
  key: { type: "string" },
  hub: { type: "string" },
  "hub-id": { type: "string" },
  to: { type: "string" },
  pii: { type: "string", multiple: true },
  count: { type: "string" },
  audit: { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "tls-ca": { type: "string" },
  "passphrase-file": { type: "string" },
  "allow-open-tail": { type: "boolean" },
  "audit-new-segment": { type: "boolean" },
} as const;

type Values = ReturnType<typeof parse>["values"];
/**
 * parseArgs refuses a string option whose value starts with "-" (a base64url key does, 1 time in 64), so
 * `--key -abc` is joined into `--key=-abc` first; only for options that take a value.
 */
function joinValues(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const name = a.startsWith("--") && !a.includes("=") ? a.slice(2) : undefined;
    const spec = name !== undefined ? (OPTIONS as Record<string, { type: string }>)[name] : undefined;
    if (spec?.type === "string" && i + 1 < args.length && args[i + 1]!.startsWith("-")) {
      out.push(`${a}=${args[++i]}`);
    } else out.push(a);
  }
  return out;
}
const parse = (args: string[]) => parseArgs({ args: joinValues(args), allowPositionals: true, strict: true, options: OPTIONS });

function version(): string {
  for (const rel of ["../package.json", "../../package.json"]) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "sealwire" && pkg.version) return pkg.version;
    } catch {
      /* try the next location (source vs dist layout) */
    }
  }
  return "unknown";
}

const usage = (msg: string) => new SealwireError("ERR_INVALID_ARGUMENT", `${msg}; run "sealwire --help"`);

function trustPath(v: Values, io: CliIO): string {
  return v.trust ?? io.env?.["SEALWIRE_TRUST"] ?? "trust.json";
}

/** Passphrase: --passphrase-file, then $SEALWIRE_PASSPHRASE, then a prompt on a terminal. Never a default. */
function passphrase(v: Values, io: CliIO, confirm = false): Passphrase {
  if (v["passphrase-file"]) return passphraseFromFile(v["passphrase-file"]);
  const env = io.env ?? process.env;
  if (env === process.env && env["SEALWIRE_PASSPHRASE"] !== undefined) return passphraseFromEnv("SEALWIRE_PASSPHRASE");
  const value = env["SEALWIRE_PASSPHRASE"];
  if (value !== undefined) {
    if (value === "") throw new SealwireError("ERR_NO_PASSPHRASE", "SEALWIRE_PASSPHRASE is empty; set it to the key file's passphrase");
    return value;
  }
  if (process.stdin.isTTY && io.signal === undefined) return () => prompt(confirm);
  throw new SealwireError(
    "ERR_NO_PASSPHRASE",
    "no passphrase for the key file: pass --passphrase-file <file>, set SEALWIRE_PASSPHRASE, or run on a terminal",
  );
}

async function prompt(confirm: boolean): Promise<string> {
  const ask = (q: string) =>
    new Promise<string>((resolve) => {
      const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
      // Do not echo the passphrase.
      (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = (s: string) => {
        if (s.includes(q)) process.stderr.write(q);
      };
      rl.question(q, (a) => {
        rl.close();
        process.stderr.write("\n");
        resolve(a);
      });
    });
  const a = await ask("passphrase: ");
  if (confirm && (await ask("again: ")) !== a) throw new SealwireError("ERR_NO_PASSPHRASE", "the passphrases differ; try again");
  return a;
}

async function loadKey(v: Values, io: CliIO): Promise<Identity> {
  if (!v.key) throw usage("--key <key file> is required");
  return loadIdentity(v.key, { passphrase: passphrase(v, io) });
}

/**
 * The wire for a hub URL: Noise over WebSocket; wss:// adds TLS underneath. Handshakes go to `audit` if given;
 * refusals below the hub (caps, evictions, timeouts, malformed frames) to `onRefusal` (counted, then audited).
 */
async function hubTransport(
  url: string,
  identity: Identity,
  trust: TrustStore,
  v: Values,
  server: boolean,
  audit?: AuditLog,
  onRefusal?: (r: Refusal) => unknown,
): Promise<Transport> {
  let scheme: string;
  try {
    scheme = new URL(url).protocol;
  } catch {
    throw usage(`"${url}" is not a URL like ws://host:7700`);
  }
  if (scheme !== "ws:" && scheme !== "wss:") throw usage(`hub URLs start with ws:// or wss://, got "${scheme}"`);
  const [{ webSocket }, { noise }] = await Promise.all([import("../transports/websocket.js"), import("../transports/noise/index.js")]);
  let tls: Record<string, unknown> | undefined;
  if (scheme === "wss:") {
    const read = async (f: string | undefined) => (f ? await fsp.readFile(f) : undefined);
    if (server) {
      if (!v["tls-cert"] || !v["tls-key"]) throw usage("a wss:// hub needs --tls-cert and --tls-key");
      tls = { cert: await read(v["tls-cert"]), key: await read(v["tls-key"]), ...(v["tls-ca"] ? { ca: await read(v["tls-ca"]), requestCert: true } : {}) };
    } else {
      tls = v["tls-ca"] ? { ca: await read(v["tls-ca"]) } : {};
    }
  }
  // Under Noise no inner frame exceeds one Noise message (65,535 bytes): an unauthenticated peer cannot make the
  // WebSocket layer buffer more than that.
  return noise({
    transport: webSocket({ maxFrameBytes: 65_535, ...(tls ? { tls } : {}), ...(onRefusal ? { onRefusal } : {}) }),
    identity,
    trust,
    ...(audit ? { audit } : {}),
    ...(onRefusal ? { onRefusal } : {}),
  });
}

function line(obj: unknown): string {
  return JSON.stringify(obj, (_k, val) => (val instanceof Uint8Array ? { bytes: Buffer.from(val).toString("base64") } : val));
}

function waitForStop(io: CliIO): Promise<void> {
  if (io.signal) return io.signal.aborted ? Promise.resolve() : new Promise((r) => io.signal!.addEventListener("abort", () => r(), { once: true }));
  return new Promise((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve();
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}

async function keygen(v: Values, io: CliIO): Promise<number> {
  if (!v.id) throw usage("keygen needs --id <agent id>");
  const out = v.out ?? `${v.id}.key`;
  const identity = Identity.generate(v.id);
  try {
    const pub = await saveIdentity(out, identity, { passphrase: passphrase(v, io, true), overwrite: v.force === true });
    await fsp.writeFile(`${out}.pub`, JSON.stringify(pub) + "\n", { mode: 0o644 });
    io.err(`wrote ${out} (encrypted, mode 0600) and ${out}.pub; give the line below to the machines that should trust "${v.id}":`);
    io.out(JSON.stringify(pub));
  } finally {
    identity.close();
  }
  return 0;
}

async function trustCmd(v: Values, pos: string[], io: CliIO): Promise<number> {
  const sub = pos[1];
  const path = trustPath(v, io);
  if (sub === "add") {
    const arg = pos[2];
    if (!arg || pos.length !== 3) throw usage("trust add <public identity JSON or file>");
    let text = arg.trim();
    if (!text.startsWith("{")) {
      try {
        text = (await fsp.readFile(arg, "utf8")).trim();
      } catch {
        throw usage(`"${arg.slice(0, 40)}" is neither a public identity (JSON) nor a readable file`);
      }
    }
    const pub = parsePublicIdentity(text);
    const trust = await loadTrustFile(path, { allowMissing: true });
    trust.add(pub, { roles: v.role ?? [], clearances: v.clear ?? [], ...(v.address ? { address: v.address } : {}) });
    await saveTrustFile(path, trust);
    io.out(`trusted ${pub.id} (${pub.fingerprint})${v.clear?.length ? ` cleared for ${v.clear.join(", ")}` : ""} in ${path}`);
    return 0;
  }
  if (sub === "list") {
    const trust = await loadTrustFile(path);
    for (const e of trust.list()) {
      io.out(`${e.id}\t${e.identity.fingerprint}\t${e.revoked ? "REVOKED" : "ok"}\troles=${e.roles.join(",") || "-"}\tclearances=${e.clearances.join(",") || "-"}`);
    }
    return 0;
  }
  if (sub === "revoke") {
    if (!pos[2] || pos.length !== 3) throw usage("trust revoke <id>");
    const trust = await loadTrustFile(path);
    trust.revoke(pos[2]);
    await saveTrustFile(path, trust);
    io.out(`revoked ${pos[2]} in ${path}`);
    return 0;
  }
  throw usage("trust add | list | revoke");
}

async function hubCmd(v: Values, io: CliIO): Promise<number> {
  if (!v.listen) throw usage("hub needs --listen ws://0.0.0.0:7700");
  const identity = await loadKey(v, io);
  const trust = await loadTrustFile(trustPath(v, io));
  let audit: AuditLog | undefined;
  if (v.audit) {
    try {
      audit = await AuditLog.open(fileSink(v.audit), {
        signer: { id: identity.id, kid: identity.kid, publicKey: identity.signPublicKey, sign: (m) => identity.sign(m) },
        newSegment: v["audit-new-segment"] === true,
      });
    } catch (e) {
      if (SealwireError.is(e) && (e.code === "ERR_AUDIT_TRUNCATED" || e.code === "ERR_AUDIT_TAMPERED") && !v["audit-new-segment"]) {
        throw new SealwireError(
          e.code,
          `${e.message}; if the hub crashed, continue the log in a new linked segment with --audit-new-segment (nothing is rewritten), after checking it with "sealwire audit verify"`,
        );
      }
      throw e;
    }
  }
  // Refusals below the hub are audited in aggregate (per reason and source, every 10 s), not one record per
  // attempt: a flood must not turn into a flood of disk writes. A failed append is reported, and the hub's own
  // envelope records still fail closed.
  const refusals =
    audit === undefined
      ? undefined
      : new RefusalCounter({
          onFlush: (records) =>
            Promise.all(records.map((r) => audit.append({ event: "refused_connections", reason: r.reason, source: r.source, count: r.count, windowMs: r.windowMs }))),
          onFlushError: (e) => io.err(`audit: refused-connection counts not recorded (${SealwireError.is(e) ? e.code : "error"})`),
        });
  const hub = await createHub({
    identity,
    trust,
    transport: await hubTransport(v.listen, identity, trust, v, true, audit, refusals?.onRefusal),
    listen: v.listen,
    ...(audit ? { audit } : {}),
    onError: (e) => io.err(`refused: ${e.code}${e.envelopeId ? ` ${e.envelopeId}` : ""}${e.reason ? ` (${e.reason})` : ""}`),
  });
  io.out(`hub "${identity.id}" listening on ${hub.address} (${identity.publicIdentity.fingerprint})`);
  // `sealwire trust revoke` (or add) in another shell takes effect at once: the file is re-read when it changes.
  const tp = trustPath(v, io);
  const onTrustChange = () => {
    loadTrustFile(tp)
      .then((fresh) => {
        for (const e of fresh.list()) {
          const known = trust.get(e.id);
          if (e.revoked && known && !known.revoked) {
            trust.revoke(e.id);
            io.err(`trust file: revoked "${e.id}"`);
          } else if (!e.revoked && !known) {
            trust.add(e.identity, { roles: e.roles, clearances: e.clearances, ...(e.address !== undefined ? { address: e.address } : {}) });
            io.err(`trust file: added "${e.id}"`);
          }
        }
      })
      .catch((e: unknown) => io.err(`trust file not reloaded: ${SealwireError.is(e) ? `${e.code}: ${e.message}` : "unreadable"}`));
  };
  watchFile(tp, { interval: 250, persistent: false }, onTrustChange);
  await waitForStop(io);
  unwatchFile(tp, onTrustChange);
  await hub.close();
  await refusals?.close(); // the last window's counts, before the log's final checkpoint
  await audit?.close();
  identity.close();
  return 0;
}

async function agentFor(v: Values, io: CliIO, onError?: (e: SealwireError) => void): Promise<{ agent: Agent; identity: Identity }> {
  if (!v.hub) throw usage("--hub <url> is required");
  const identity = await loadKey(v, io);
  const trust = await loadTrustFile(trustPath(v, io));
  const hubPeer = v["hub-id"] ?? "hub";
  const agent = await createAgent({
    identity,
    trust,
    transport: await hubTransport(v.hub, identity, trust, v, false),
    hub: v.hub,
    hubPeer,
    ...(onError ? { onError } : {}),
  });
  return { agent, identity };
}

async function listenCmd(v: Values, io: CliIO): Promise<number> {
  const count = v.count === undefined ? Infinity : Number(v.count);
  if (!(count > 0) || (count !== Infinity && !Number.isInteger(count))) throw usage("--count must be a positive integer");
  let reconnecting = false;
  const { agent, identity } = await agentFor(v, io, (e) => {
    if (e.code === "ERR_CONNECTION_REFUSED" || e.code === "ERR_NO_ROUTE" || e.code === "ERR_CONNECTION_ABORTED" || e.code === "ERR_TIMEOUT") {
      if (!reconnecting) io.err(`hub unreachable (${e.code}); reconnecting…`);
      reconnecting = true;
      return;
    }
    reconnecting = false;
    io.err(`refused: ${e.code}${e.envelopeId ? ` ${e.envelopeId}` : ""}${e.reason ? ` (${e.reason})` : ""}`);
  });
  io.err(`"${identity.id}" connected to ${v.hub}; waiting for messages`);
  const stop = new AbortController();
  void waitForStop(io).then(() => stop.abort());
  let n = 0;
  try {
    for await (const m of agent.messages({ signal: stop.signal })) {
      io.out(line({ from: m.from, type: m.type, tags: m.tags, id: m.id, data: m.data, ...(m.attestation ? { attestation: m.attestation } : {}) }));
      if (++n >= count) break;
    }
  } catch (e) {
    if (!SealwireError.is(e, "ERR_ABORTED")) throw e;
  }
  await agent.close();
  identity.close();
  return 0;
}

async function sendCmd(v: Values, pos: string[], io: CliIO): Promise<number> {
  if (!v.to) throw usage("send needs --to <agent id>");
  if (pos.length !== 2) throw usage('send needs exactly one message argument (quote it: "hello bob")');
  const { agent, identity } = await agentFor(v, io);
  try {
    const { id } = await agent.send(v.to, pos[1]!, { tags: { pii: v.pii ?? [] }, waitForDelivery: true });
    io.out(`delivered ${id} to ${v.to}`);
  } finally {
    await agent.close();
    identity.close();
  }
  return 0;
}

/** `--key`: a base64url or hex Ed25519 public key, or a file with a public identity (its `signPub`). */
function loadVerifyKey(key: string | undefined): Uint8Array {
  if (!key) throw new SealwireError("ERR_INVALID_ARGUMENT", "audit verify needs --key <signer public key (base64url or hex) or public identity file>");
  if (/^[0-9a-fA-F]{64}$/.test(key)) return new Uint8Array(Buffer.from(key, "hex"));
  if (/^[A-Za-z0-9_-]{43}$/.test(key)) return new Uint8Array(Buffer.from(key, "base64url"));
  let text: string;
  try {
    text = readFileSync(key, "utf8");
  } catch {
    throw new SealwireError("ERR_INVALID_ARGUMENT", `--key is neither a 32-byte key (base64url/hex) nor a readable file`);
  }
  return fromBase64url(parsePublicIdentity(text.trim()).signPub, 32, "signPub");
}

async function auditCmd(v: Values, pos: string[], io: CliIO): Promise<number> {
  if (pos[1] !== "verify" || pos.length !== 3) throw usage("usage: sealwire audit verify <file> --key <signer public key or public identity file>");
  const res = await verifyAuditLog(pos[2]!, { publicKey: loadVerifyKey(v.key), allowOpenTail: v["allow-open-tail"] === true });
  if (res.ok) {
    io.out(`OK: ${res.records} records, ${res.checkpoints} signed checkpoints, ${res.segments} segment(s), head ${res.head}`);
    return 0;
  }
  io.err(`sealwire: ${res.code}: ${pos[2]} line ${res.line}: ${res.reason}`);
  return 1;
}

async function doctor(v: Values, io: CliIO): Promise<number> {
  let problems = 0;
  const ok = (m: string) => io.out(`ok    ${m}`);
  const bad = (m: string, fix: string) => {
    problems++;
    io.out(`FAIL  ${m}\n      fix: ${fix}`);
  };
  let identity: Identity | undefined;
  if (!v.key) bad("no --key given", "pass --key <your key file> (make one with: sealwire keygen --id <id>)");
  else {
    try {
      const st = await fsp.stat(v.key);
      if ((st.mode & 0o077) !== 0) bad(`${v.key} is readable or writable by others (mode ${(st.mode & 0o777).toString(8)})`, `chmod 600 ${v.key}`);
      else ok(`${v.key} is private (mode 600)`);
      const pub = await readPublicIdentity(v.key);
      ok(`${v.key} holds "${pub.id}" (${pub.fingerprint})`);
      identity = await loadKey(v, io);
      ok("the passphrase opens the key file");
    } catch (e) {
      bad(SealwireError.is(e) ? `${e.code}: ${e.message}` : `cannot read ${v.key}`, "check the path, the permissions and the passphrase source (--passphrase-file or SEALWIRE_PASSPHRASE)");
    }
  }
  let trust: TrustStore | undefined;
  const tp = trustPath(v, io);
  try {
    trust = await loadTrustFile(tp);
    ok(`${tp}: ${trust.size} peer(s)`);
  } catch (e) {
    bad(SealwireError.is(e) ? `${e.code}: ${e.message}` : `cannot read ${tp}`, `create it with: sealwire trust add <public identity> --trust ${tp}`);
  }
  if (identity && trust) {
    const self = trust.get(identity.id);
    if (!self) bad(`"${identity.id}" is not in ${tp} (its own clearances are unknown, so PII to it is refused)`, `sealwire trust add ${v.key}.pub --trust ${tp}`);
    else if (self.identity.kid !== identity.kid) bad(`${tp} lists other keys for "${identity.id}"`, "re-add the current public identity after revoking the old one");
    else ok(`"${identity.id}" is in ${tp}`);
  }
  if (v.hub && identity && trust) {
    const hubId = v["hub-id"] ?? "hub";
    if (!trust.get(hubId)) bad(`the hub "${hubId}" is not in ${tp}`, `sealwire trust add <hub's public identity> --trust ${tp} (or pass --hub-id)`);
    else {
      try {
        const agent = await createAgent({ identity, trust, transport: await hubTransport(v.hub, identity, trust, v, false), hub: v.hub, hubPeer: hubId });
        ok(`reached the hub "${hubId}" at ${v.hub} and authenticated both ways`);
        await agent.close();
      } catch (e) {
        bad(
          `cannot reach the hub at ${v.hub}: ${SealwireError.is(e) ? `${e.code}: ${e.message}` : "connection failed"}`,
          "check that the hub runs, the address and port (firewall), and that each side trusts the other's public identity",
        );
      }
    }
  }
  identity?.close();
  io.out(problems ? `${problems} problem(s) found` : "no problems found");
  return problems ? 1 : 0;
}

/** Runs the CLI with `argv` (without node and script). Never throws. */
export async function run(argv: string[], ioInit: Partial<CliIO> = {}): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  const io: CliIO = {
    out: ioInit.out ?? ((l) => out.push(l)),
    err: ioInit.err ?? ((l) => err.push(l)),
    ...(ioInit.signal ? { signal: ioInit.signal } : {}),
    env: ioInit.env ?? process.env,
  };
  const result = (code: number): CliResult => ({ code, stdout: out.join("\n"), stderr: err.join("\n") });
  let debug = argv.includes("--debug");
  try {
    let parsed;
    try {
      parsed = parse(argv);
    } catch (e) {
      throw new SealwireError("ERR_INVALID_ARGUMENT", `${(e as Error).message.split("\n")[0]}`);
    }
    const { values: v, positionals: pos } = parsed;
    debug = v.debug === true;
    const cmd = pos[0];
    if (v.version || cmd === "version") {
      io.out(version());
      return result(0);
    }
    if (v.help || cmd === "help" || cmd === undefined) {
      io.out(HELP);
      return result(cmd === undefined && !v.help ? 2 : 0);
    }
    switch (cmd) {
      case "keygen":
        return result(await keygen(v, io));
      case "trust":
        return result(await trustCmd(v, pos, io));
      case "hub":
        return result(await hubCmd(v, io));
      case "listen":
        return result(await listenCmd(v, io));
      case "send":
        return result(await sendCmd(v, pos, io));
      case "audit":
        return result(await auditCmd(v, pos, io));
      case "doctor":
        return result(await doctor(v, io));
      default:
        throw usage(`unknown command "${cmd.slice(0, 40)}"`);
    }
  } catch (e) {
    const code = SealwireError.is(e) ? e.code : "ERR_INTERNAL";
    // Messages of non-sealwire errors could carry anything; show only their class unless --debug.
    const msg = SealwireError.is(e) ? e.message : `unexpected ${e instanceof Error ? e.name : "failure"} (run with --debug for details)`;
    io.err(`sealwire: ${code}: ${msg}`);
    if (debug && e instanceof Error && e.stack) io.err(e.stack);
    return result(1);
  }
}

// Resolve symlinks: npm installs the bin as a link in node_modules/.bin.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  const r = await run(process.argv.slice(2), {
    out: (l) => process.stdout.write(l + "\n"),
    err: (l) => process.stderr.write(l + "\n"),
  });
  process.exitCode = r.code;
  // Long-running commands may leave sockets; exit once the command is done.
  if (r.code !== 0 || process.argv[2] === "hub" || process.argv[2] === "listen" || process.argv[2] === "send") setTimeout(() => process.exit(r.code), 50).unref();
}
