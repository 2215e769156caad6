/**
 * Starts real `nats-server` processes on free loopback ports for the NATS example and tests: a single server or
 * a cluster, optionally with TLS (a throwaway CA generated with `openssl` for the run), user/password
 * authentication and JetStream. Everything lives in one `mkdtemp` directory that {@link NatsCluster.stop}
 * removes. Servers are stopped on `stop()`, and killed with SIGKILL if the process exits first (an `exit` hook),
 * so a failing test or a crashed example does not leave brokers behind.
 *
 * This is scaffolding for the example and the tests, not part of the library: production clusters come from your
 * operations team, with real certificates.
 *
 * @module
 * @example
 * ```ts
 * const cluster = await startNats({ nodes: 3, tls: true, users: [{ user: "crew", password: "s3cret" }], jetstream: true });
 * try {
 *   console.log(cluster.nodes.map((n) => n.url)); // ["tls://127.0.0.1:40123", ...]
 *   await cluster.kill(1); // SIGKILL node 2
 * } finally {
 *   await cluster.stop();
 * }
 * ```
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { get } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** One user the servers accept. */
export interface NatsUser {
  user: string;
  password: string;
}

/** Options for {@link startNats}. */
export interface StartNatsOptions {
  /** Number of servers; more than one forms a cluster (routes between all of them). @default 1 */
  nodes?: number;
  /** Serve clients (and routes) over TLS with a CA generated for this run. @default false */
  tls?: boolean;
  /** Require one of these users (plaintext passwords in the generated config; test use only). @default none */
  users?: NatsUser[];
  /** Enable JetStream with file storage in the run's directory. @default false */
  jetstream?: boolean;
  /** The servers' `max_payload` in bytes. @default 1048576 (the nats-server default) */
  maxPayload?: number;
  /** How long to wait for the servers (and the JetStream meta leader) to be ready. @default 20000 */
  readyTimeoutMs?: number;
}

/** A running server. */
export interface NatsNode {
  /** `n1`, `n2`, … (the server_name, which JetStream reports as a stream leader). */
  readonly name: string;
  /** Client URL: `nats://127.0.0.1:<port>` or `tls://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  readonly clusterPort: number;
  readonly monitorPort: number;
  /** False once the process exited (killed or stopped). */
  readonly alive: boolean;
}

/** A running single server or cluster. */
export interface NatsCluster {
  readonly nodes: readonly NatsNode[];
  /** The run's directory (configs, certificates, JetStream storage). */
  readonly dir: string;
  /** PEM of the CA that signed the servers' certificates (when `tls`). */
  readonly ca: string | undefined;
  /** PEM of a second CA that signed nothing here: a client trusting only it must fail the TLS handshake. */
  readonly untrustedCa: string | undefined;
  /** Client URLs of every node. */
  urls(): string[];
  /** Sends `signal` (default SIGKILL) to node `i` and waits until it exited. */
  kill(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Restarts node `i` (same ports, config and storage) and waits until it is ready. */
  restart(i: number): Promise<void>;
  /** The last lines node `i` logged (for failure diagnostics). */
  log(i: number): string;
  /** Stops every server (SIGTERM, then SIGKILL after 3 s) and removes the directory. Idempotent. */
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Kills every server this process started, synchronously, when the process exits for any reason. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once("exit", () => {
    for (const child of live) {
      try {
        child.kill("SIGKILL");
      } catch {
        /* already gone */
      }
    }
  });
}

/** A free TCP port on 127.0.0.1 (bound then released; the servers bind it right after). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr !== null ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** Generates a CA and a server certificate for 127.0.0.1/localhost signed by it, in `dir`. */
function generateCerts(dir: string): { caFile: string; certFile: string; keyFile: string; untrustedCaFile: string } {
  const subj = (cn: string) => ["-subj", `/CN=${cn}`];
  for (const ca of ["ca", "untrusted-ca"]) {
    openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${ca}.key`, "-out", `${ca}.pem`, "-days", "2", ...subj(`sealwire test ${ca}`)], dir);
  }
  openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr", ...subj("localhost")], dir);
  writeFileSync(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  openssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext"], dir);
  return { caFile: join(dir, "ca.pem"), certFile: join(dir, "server.pem"), keyFile: join(dir, "server.key"), untrustedCaFile: join(dir, "untrusted-ca.pem") };
}

/** nats-server config strings: quoted, so a path or password never changes the config's structure. */
const q = (s: string): string => JSON.stringify(s);

function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get({ host: "127.0.0.1", port, path, timeout: 1000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts the servers described by `options` and waits until they (and JetStream, if enabled) are ready. */
export async function startNats(options: StartNatsOptions = {}): Promise<NatsCluster> {
  installExitHook();
  const n = options.nodes ?? 1;
  const dir = mkdtempSync(join(tmpdir(), "sealwire-nats-"));
  const certs = options.tls ? generateCerts(dir) : undefined;
  const ports = await Promise.all(Array.from({ length: n * 3 }, () => freePort()));
  const routeUser = { user: "route", password: `route-${Math.random().toString(36).slice(2)}` };
  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;

  interface NodeState {
    name: string;
    port: number;
    clusterPort: number;
    monitorPort: number;
    conf: string;
    child: ChildProcess | undefined;
    logTail: string[];
    alive: boolean;
  }
  const states: NodeState[] = [];
  for (let i = 0; i < n; i++) {
    const name = `n${i + 1}`;
    const port = ports[3 * i]!;
    const clusterPort = ports[3 * i + 1]!;
    const monitorPort = ports[3 * i + 2]!;
    const lines = [
      `server_name: ${q(name)}`,
      `listen: "127.0.0.1:${port}"`,
      `http: "127.0.0.1:${monitorPort}"`,
      `max_payload: ${options.maxPayload ?? 1024 * 1024}`,
    ];
    if (certs) {
      lines.push(`tls { cert_file: ${q(certs.certFile)}, key_file: ${q(certs.keyFile)}, timeout: 2 }`);
    }
    if (options.users && options.users.length > 0) {
      const users = options.users.map((u) => `{ user: ${q(u.user)}, password: ${q(u.password)} }`).join(", ");
      lines.push(`authorization { users: [ ${users} ] }`);
    }
    if (options.jetstream) {
      lines.push(`jetstream { store_dir: ${q(join(dir, name))}, max_memory_store: 256MB, max_file_store: 16GB }`);
    }
    if (n > 1) {
      const routes = Array.from({ length: n }, (_, j) => j)
        .filter((j) => j !== i)
        .map((j) => q(`nats-route://${routeUser.user}:${routeUser.password}@127.0.0.1:${ports[3 * j + 1]}`));
      lines.push(
        "cluster {",
        `  name: "sealwire-test"`,
        `  listen: "127.0.0.1:${clusterPort}"`,
        `  authorization { user: ${q(routeUser.user)}, password: ${q(routeUser.password)} }`,
        ...(certs ? [`  tls { cert_file: ${q(certs.certFile)}, key_file: ${q(certs.keyFile)}, ca_file: ${q(certs.caFile)}, timeout: 2 }`] : []),
        `  routes: [ ${routes.join(", ")} ]`,
        "}",
      );
    }
    const conf = join(dir, `${name}.conf`);
    writeFileSync(conf, lines.join("\n") + "\n");
    states.push({ name, port, clusterPort, monitorPort, conf, child: undefined, logTail: [], alive: false });
  }

  const launch = (s: NodeState): void => {
    const child = spawn("nats-server", ["-c", s.conf], { stdio: ["ignore", "pipe", "pipe"] });
    s.child = child;
    s.alive = true;
    live.add(child);
    const onData = (chunk: Buffer): void => {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.length === 0) continue;
        s.logTail.push(line);
        if (s.logTail.length > 200) s.logTail.shift();
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("exit", () => {
      live.delete(child);
      s.alive = false;
    });
    child.on("error", (err) => {
      s.logTail.push(`spawn failed: ${err.message} (is nats-server installed? apt-get install nats-server)`);
      s.alive = false;
    });
  };

  const waitReady = async (s: NodeState, deadline: number): Promise<void> => {
    for (;;) {
      if (!s.alive) throw new Error(`nats-server ${s.name} exited during start:\n${s.logTail.join("\n")}`);
      try {
        const r = await httpGet(s.monitorPort, "/healthz");
        if (r.status === 200) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`nats-server ${s.name} not ready after ${readyTimeoutMs} ms:\n${s.logTail.join("\n")}`);
      await sleep(50);
    }
  };

  /** In a JetStream cluster, waits until every live node knows the meta leader (streams can be created). */
  const waitMetaLeader = async (deadline: number): Promise<void> => {
    if (!options.jetstream || n === 1) return;
    for (;;) {
      let ok = true;
      for (const s of states) {
        if (!s.alive) continue;
        try {
          const r = await httpGet(s.monitorPort, "/jsz");
          const jsz = JSON.parse(r.body) as { meta_cluster?: { leader?: string } };
          if (!jsz.meta_cluster?.leader) ok = false;
        } catch {
          ok = false;
        }
      }
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`JetStream meta leader not elected after ${readyTimeoutMs} ms`);
      await sleep(100);
    }
  };

  let stopped = false;
  const stopAll = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(
      states.map(async (s) => {
        const child = s.child;
        if (!child || !s.alive) return;
        const exited = new Promise<void>((r) => child.once("exit", () => r()));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
        await exited;
        clearTimeout(timer);
      }),
    );
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    for (const s of states) launch(s);
    const deadline = Date.now() + readyTimeoutMs;
    for (const s of states) await waitReady(s, deadline);
    await waitMetaLeader(deadline);
  } catch (err) {
    await stopAll();
    throw err;
  }

  const scheme = certs ? "tls" : "nats";
  const nodes: NatsNode[] = states.map((s) => ({
    name: s.name,
    url: `${scheme}://127.0.0.1:${s.port}`,
    port: s.port,
    clusterPort: s.clusterPort,
    monitorPort: s.monitorPort,
    get alive() {
      return s.alive;
    },
  }));

  return {
    nodes,
    dir,
    ca: certs ? readFileSync(certs.caFile, "utf8") : undefined,
    untrustedCa: certs ? readFileSync(certs.untrustedCaFile, "utf8") : undefined,
    urls: () => nodes.map((x) => x.url),
    async kill(i, signal = "SIGKILL") {
      const s = states[i];
      if (!s?.child || !s.alive) return;
      const child = s.child;
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      child.kill(signal);
      await exited;
    },
    async restart(i) {
      const s = states[i];
      if (!s) throw new RangeError(`no node ${i}`);
      if (s.alive) throw new Error(`node ${s.name} is still running; kill it first`);
      launch(s);
      await waitReady(s, Date.now() + readyTimeoutMs);
    },
    log: (i) => states[i]?.logTail.join("\n") ?? "",
    stop: stopAll,
  };
}
