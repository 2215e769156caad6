/**
 * The NATS transport: sealwire frames over an existing NATS server or cluster, for crews that span many hosts.
 * This is the only module that imports the NATS client (`@nats-io/transport-node`, `@nats-io/jetstream`).
 *
 * NATS carries only what the agent hands it: sealed envelopes (ciphertext plus the authenticated, routable
 * header). The transport authenticates nobody (`remotePeer` is always `undefined`): authenticity and
 * confidentiality come from the envelopes end to end, and access to subjects from NATS permissions.
 *
 * ## Addresses and subjects
 * An agent listens at `nats://<namespace>/<agentId>`; both parts match `[A-Za-z0-9_-]{1,64}`, so a subject built
 * from them can never contain a `.` separator, a `*`/`>` wildcard or whitespace. Subjects:
 * - `sealwire.<namespace>.<agentId>`: core mode, every connection to that agent (and listen probes);
 * - `sealwire.<namespace>.<agentId>.d`: durable mode, captured by the JetStream stream `SEALWIRE_<namespace>`;
 * - `<inboxPrefix>.<connectionId>`: the dialling side of one core connection (the prefix is a fresh
 *   `_INBOX.<nuid>` per NATS connection, or `inboxPrefix`).
 *   Grant each agent's NATS user: publish `sealwire.<ns>.>`, subscribe `sealwire.<ns>.<its id>` and its inbox
 *   prefix (and the JetStream API for durable mode). A NATS user with publish rights on these subjects can
 *   disrupt connections (inject control messages, abort them) but can never read a body or get a frame
 *   accepted: the agent refuses anything not signed by a trusted identity.
 *
 * ## One NATS connection per transport
 * The NATS connection is opened lazily by the first `listen` or `dial` and shared by every listener and
 * connection of this transport; each holds a reference, and the NATS connection is closed when the last one
 * ends (a later `listen`/`dial` opens a new one). It reconnects on its own (every 250 ms, to any server of the
 * cluster); if it closes for good, every connection is aborted with `ERR_CONNECTION_ABORTED`.
 *
 * ## Core mode: connections over a connectionless bus (the demultiplexing scheme)
 * Every NATS message starts with a 26-byte header: version, operation, a random 16-byte connection id (chosen
 * by the dialler) and a 64-bit value (sequence number, credit, count or window). `dial` publishes `OPEN` to the
 * agent's subject with the dialler's per-connection reply subject; the listener answers `ACCEPT` (or `REFUSE`
 * when it is closed or its backlog/connection limit is reached) and creates a virtual inbound connection keyed
 * by the id. NATS "no responders" (status 503, after a short retry for cluster interest propagation) or no
 * answer within `dialTimeoutMs` means `ERR_CONNECTION_REFUSED`.
 * - Order and loss: `DATA` carries a per-direction sequence number; NATS keeps one publisher's messages in
 *   order, so a gap means frames were lost (a reconnect, a slow-consumer drop) and aborts the connection:
 *   frames arrive whole, in order, exactly once, or the connection fails.
 * - Backpressure: credit-based flow control. Each end advertises its receive window (`maxQueuedBytes`) in
 *   `OPEN`/`ACCEPT`; the reader returns `CREDIT` (bytes consumed) as the application reads. `send` returns
 *   `false` once `highWaterMarkBytes` are unacknowledged and throws `ERR_QUEUE_FULL` at the window, so neither
 *   the client's buffers nor the peer's queue grow without bound. A peer that ignores the window is aborted.
 * - Close and abort are control messages: `CLOSE` carries the number of frames sent (the remote ends its
 *   iterator after exactly those), answered by `CLOSED` with the remote's count (two-way close); `ABORT` fails
 *   the remote at once. A frame for an unknown connection is answered with `ABORT` (a reset), so a dialler
 *   learns quickly that the listener restarted.
 * - Liveness: an end that sent nothing for `keepaliveMs` sends `PING`; a connection that heard nothing for
 *   `idleTimeoutMs` is aborted, so a peer that died without closing cannot pin a virtual connection forever.
 *   A listener holds at most `backlog` unaccepted and `maxConnections` open virtual connections.
 *
 * ## Durable mode: JetStream, acknowledged only after the agent took the envelope (the ack seam)
 * A JetStream stream `SEALWIRE_<namespace>` (work-queue retention, `discard: new`, created if missing) captures
 * `sealwire.<ns>.*.d`; each listening agent has one durable pull consumer `sealwire-<agentId>`, so envelopes
 * sent while it is offline wait in the stream. `dial` never needs the recipient online.
 * - Sending: frames are published in order with up to 256 unconfirmed publishes in flight; each carries
 *   `Nats-Msg-Id` = the envelope id (`decodeEnvelope(frame).header.id`; connection id and sequence number for
 *   frames that are not envelopes), so a publish retried after a lost acknowledgement (a leader change), or the
 *   same envelope resent by the agent on a new connection, is stored once (within the stream's duplicate
 *   window). Failed publishes are retried in order with backoff for `publishRetryMs`; `close()` resolves once
 *   everything is stored. Order is kept, except that a frame retried across a failover may land after later ones.
 * - Receiving: the listener yields a *mailbox* connection carrying the consumer's messages in stream order.
 *   The seam: a frame is acknowledged when the reader asks for the next one, i.e. after the agent's read loop
 *   has opened the envelope, run its checks and put the message in its inbox (or refused it). Leaving the
 *   iterator or closing the mailbox returns unacknowledged frames to the stream (`nak`) for redelivery; aborting
 *   it acknowledges the frame that was being handled (the agent aborts after refusing it) and returns the rest.
 *   No change to the Transport interface is needed.
 * - Exactly once: a bounded receiver-side set of SHA-256 hashes of acknowledged stored messages drops
 *   redeliveries (an ack lost in a failover) before they reach the agent, so its replay cache does not report
 *   them; a second delivery of a message still queued only refreshes the handle used to acknowledge it. The key is
 *   the hash of the exact bytes, never an id from the message, so a forged message carrying another message's
 *   ids cannot make the genuine one be dropped; a forged copy of an envelope reaches the agent, which refuses it
 *   (`ERR_REPLAY`) and reports it.
 * - Failover: the pull requests expire every `pullExpiresMs` with heartbeats at half that, so a consumer whose
 *   server or stream leader died pulls again within about two heartbeats after a new leader exists.
 * - Mailbox connections are receive-only (`send` throws `ERR_INVALID_ARGUMENT`: reply by dialling the sender's
 *   address); the dialled connection yields no frames.
 *
 * ## TLS, credentials and plaintext
 * `tls` options are passed through to Node's `tls.connect` (`ca`, `cert`, `key`, `servername`, …); certificates
 * are always verified. Without `tls` (and without `tls://` server URLs) the link may be plaintext, which is
 * refused with `ERR_INSECURE_TRANSPORT` unless every server is on the loopback interface or `insecure: true`.
 * Credentials (`user`/`pass`, `token`, `nkeySeed`, or an `authenticator`) are handed to the client, which may
 * call lazy forms each time it (re)connects; they never appear in errors or `util.inspect` output.
 *
 * @module
 * @example
 * ```ts
 * import { createAgent } from "sealwire";
 * import { nats } from "sealwire/transports/nats";
 *
 * const transport = nats({
 *   servers: ["tls://nats-1.internal:4222", "tls://nats-2.internal:4222"],
 *   tls: { ca: readFileSync("ca.pem", "utf8") },
 *   user: "crew-alice",
 *   pass: () => process.env.NATS_PASSWORD!,
 *   namespace: "billing",
 *   mode: "durable",
 * });
 * const alice = await createAgent({ identity, trust, transport }); // the only line that changes vs memory()
 * await alice.send("bob", { text: "hi" });
 * ```
 */
import type { ConnectionOptions as TlsConnectionOptions } from "node:tls";
import {
  connect,
  createInbox,
  nanos,
  nkeyAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
  type Authenticator,
  type Msg,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { defaultProvider } from "../src/_crypto.js";
import { decodeEnvelope } from "../src/envelope.js";
import { SealwireError, sealwireError, type ErrorCode } from "../src/errors.js";
import {
  transportSymbol,
  type AbortOptions,
  type Connection,
  type DialOptions,
  type Listener,
  type ListenOptions,
  type Transport,
} from "../src/transport.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Default largest frame; a connection lowers it to what the server's `max_payload` allows. */
const DEFAULT_MAX_FRAME_BYTES = 1 * MiB;
const DEFAULT_HIGH_WATER_MARK_BYTES = 256 * KiB;
const DEFAULT_QUEUE_FACTOR = 4;
const DEFAULT_BACKLOG = 128;
const DEFAULT_MAX_CONNECTIONS = 1024;
const DEFAULT_DIAL_TIMEOUT_MS = 3_000;
const DEFAULT_KEEPALIVE_MS = 5_000;
const DEFAULT_IDLE_TIMEOUT_MS = 20_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;
/** Bookkeeping cost per frame on top of its length (floods of empty frames are bounded too). */
const FRAME_OVERHEAD_BYTES = 16;
/** Room kept below the server's `max_payload` for our header and the NATS headers of a JetStream publish. */
const PAYLOAD_HEADROOM_BYTES = 512;
/** How long a dial keeps retrying after "no responders" (interest may still be propagating in a cluster). */
const NO_RESPONDERS_RETRY_MS = 300;
/** How long a listen probe waits for another listener to answer before the address counts as free. */
const PROBE_TIMEOUT_MS = 300;

const DEFAULT_DURABLE = {
  replicas: 1,
  storage: "file" as "file" | "memory",
  maxAgeMs: 24 * 60 * 60_000,
  maxBytes: 256 * MiB,
  ackWaitMs: 4_000,
  maxAckPending: 256,
  pullExpiresMs: 1_000,
  publishTimeoutMs: 1_000,
  publishRetryMs: 60_000,
  duplicateWindowMs: 120_000,
  dedupeWindow: 65_536,
};
const MAX_INFLIGHT_PUBLISHES = 256;
const PUBLISH_BACKOFF_MS = [50, 100, 200, 400, 800, 1000];
/** The JetStream API (stream/consumer info and creation) waits this long per request. */
const JS_API_TIMEOUT_MS = 3_000;

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ADDR_RE = /^nats:\/\/([A-Za-z0-9_-]{1,64})\/([A-Za-z0-9_-]{1,64})$/;
const SUBJECT_PREFIX = "sealwire";
/** A subject we publish to because a peer named it (a reply subject): plain tokens, no wildcards. */
const REPLY_SUBJECT_RE = /^[^\s.*>]{1,128}(\.[^\s.*>]{1,128}){0,15}$/;

// ---------------------------------------------------------------------------------------------------------------
// Options

/**
 * TLS options, passed through to Node's `tls.connect` (see `tls.ConnectionOptions`): `ca`, `cert`, `key`,
 * `servername`, `minVersion`, … plus the NATS client's `caFile`/`certFile`/`keyFile` and `handshakeFirst`.
 * Server certificates are always verified; `rejectUnauthorized: false` is refused unless `insecure: true`.
 */
export type NatsTlsOptions = Omit<TlsConnectionOptions, "socket" | "host" | "port" | "path"> & {
  /** Start TLS before the NATS INFO exchange (the server must set `handshake_first`). */
  handshakeFirst?: boolean;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
};

/** Durable-mode (JetStream) settings. */
export interface NatsDurableInit {
  /** Replicas of the stream when this transport creates it (1, 3 or 5 in a cluster). @default 1 */
  replicas?: number;
  /** Stream storage when this transport creates it. @default "file" */
  storage?: "file" | "memory";
  /** Envelopes nobody consumed are dropped after this long (sealwire's longest ttl is 24 h). @default 86400000 */
  maxAgeMs?: number;
  /**
   * Stream size limit when this transport creates the stream; publishes fail (and are retried) when it is full,
   * nothing is silently dropped. JetStream reserves this much of the servers' `max_file_store` (or memory).
   * @default 268435456 (256 MiB)
   */
  maxBytes?: number;
  /**
   * A delivered frame not acknowledged within this time is redelivered. Frames the listener holds (queued for a
   * slow reader) are kept alive with progress acks, so this only bounds how long a delivery lost in a failover
   * (the server that sent it died) waits before JetStream sends it again. @default 4000
   */
  ackWaitMs?: number;
  /** Frames delivered to a listener but not yet acknowledged (bounds the listener's memory). @default 256 */
  maxAckPending?: number;
  /** Pull request expiry; heartbeats are expected every half of it, and two missed ones re-pull. Min 1000. @default 1000 */
  pullExpiresMs?: number;
  /** Time to wait for one publish acknowledgement before retrying it. @default 1000 */
  publishTimeoutMs?: number;
  /** A frame that could not be stored for this long aborts its connection with `ERR_TIMEOUT`. @default 60000 */
  publishRetryMs?: number;
  /** JetStream's server-side duplicate window for `Nats-Msg-Id`, when this transport creates the stream. @default 120000 */
  duplicateWindowMs?: number;
  /** Acknowledged frames remembered per listener to drop redeliveries. @default 65536 */
  dedupeWindow?: number;
}

/** Options for {@link nats}. Every size is in bytes, every time in milliseconds. */
export interface NatsInit {
  /** Server URLs: `nats://host:port`, `tls://host:port` (requires TLS) or `host:port`. Credentials in URLs are refused. */
  servers: string | readonly string[];
  /** Isolates crews sharing a NATS system: subjects, the stream and addresses all carry it. @default "default" */
  namespace?: string;
  /** `core`: fire-and-forget connections, lowest latency. `durable`: JetStream, survives offline agents and failovers. @default "core" */
  mode?: "core" | "durable";
  /** TLS options (passed through to Node). Setting this (even `{}`) requires TLS on every server. */
  tls?: NatsTlsOptions;
  /** Allow plaintext to non-loopback servers and `rejectUnauthorized: false`. Only when something else encrypts the link. @default false */
  insecure?: boolean;
  /** User name for user/password authentication. */
  user?: string;
  /** Password, or a function returning it each time the client authenticates. */
  pass?: string | (() => string);
  /** Token authentication. */
  token?: string | (() => string);
  /** NKey seed (the user's private nkey), or a function returning it when needed. */
  nkeySeed?: Uint8Array | (() => Uint8Array);
  /** Any NATS client authenticator (e.g. `credsAuthenticator`), for JWT/creds setups. */
  authenticator?: Authenticator;
  /** Client connection name shown in server monitoring. @default "sealwire" */
  name?: string;
  /** Prefix of the dialling side's reply subjects (for servers that restrict subscriptions). @default "_INBOX" */
  inboxPrefix?: string;
  /** Largest frame; connections lower it to the server's `max_payload` minus 512 bytes. @default 1048576 */
  maxFrameBytes?: number;
  /** Unacknowledged bytes per connection before `send` returns `false`. @default 262144 */
  highWaterMarkBytes?: number;
  /** Receive window per connection: `send` throws `ERR_QUEUE_FULL` beyond it. @default max(4 × highWaterMarkBytes, highWaterMarkBytes + maxFrameBytes + 16) */
  maxQueuedBytes?: number;
  /** Dialled but not yet accepted connections per listener. @default 128 */
  backlog?: number;
  /** Open inbound connections per listener. @default 1024 */
  maxConnections?: number;
  /** How long `dial` waits for the listener's answer. @default 3000 */
  dialTimeoutMs?: number;
  /** A connection idle this long sends a keepalive. @default 5000 */
  keepaliveMs?: number;
  /** A connection that heard nothing from its peer this long is aborted. At least 2 × keepaliveMs. @default 20000 */
  idleTimeoutMs?: number;
  /** How long connecting to NATS may take. @default 5000 */
  connectTimeoutMs?: number;
  /** Durable-mode settings. */
  durable?: NatsDurableInit;
}

interface Config {
  readonly hostPorts: string[];
  readonly requireTls: boolean;
  readonly tls: NatsTlsOptions | undefined;
  readonly insecure: boolean;
  readonly authenticator: Authenticator | undefined;
  readonly name: string;
  readonly inboxPrefix: string | undefined;
  readonly namespace: string;
  readonly mode: "core" | "durable";
  readonly maxFrameBytes: number;
  readonly highWaterMarkBytes: number;
  readonly maxQueuedBytes: number;
  readonly backlog: number;
  readonly maxConnections: number;
  readonly dialTimeoutMs: number;
  readonly keepaliveMs: number;
  readonly idleTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly durable: Required<NatsDurableInit>;
}

const INIT_KEYS: ReadonlySet<string> = new Set([
  "servers", "namespace", "mode", "tls", "insecure", "user", "pass", "token", "nkeySeed", "authenticator", "name",
  "inboxPrefix", "maxFrameBytes", "highWaterMarkBytes", "maxQueuedBytes", "backlog", "maxConnections", "dialTimeoutMs",
  "keepaliveMs", "idleTimeoutMs", "connectTimeoutMs", "durable",
]);
const DURABLE_KEYS: ReadonlySet<string> = new Set(Object.keys(DEFAULT_DURABLE));

function invalid(message: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return sealwireError("ERR_INVALID_ARGUMENT", message);
}

function intOption(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`nats(): ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** True for hosts on the loopback interface (plaintext to them never leaves the machine). */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Parses one server URL into `host:port` and whether it demands TLS. Throws ERR_INVALID_ARGUMENT. */
function parseServer(raw: unknown): { hostPort: string; host: string; tls: boolean } {
  if (typeof raw !== "string" || raw.length === 0 || raw.length > 512 || /\s/.test(raw)) {
    throw invalid("nats(): each server must be a URL like nats://host:4222 or tls://host:4222");
  }
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `nats://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw invalid("nats(): each server must be a URL like nats://host:4222 or tls://host:4222");
  }
  const scheme = url.protocol.toLowerCase();
  if (scheme !== "nats:" && scheme !== "tls:") {
    throw invalid(`nats(): server scheme "${scheme}" is not supported; use nats:// or tls://`);
  }
  if (url.username !== "" || url.password !== "") {
    // Credentials in URLs end up in logs and error messages; take them as options instead.
    throw invalid("nats(): put credentials in the user/pass/token/nkeySeed options, not in server URLs");
  }
  if ((url.pathname !== "" && url.pathname !== "/") || url.search !== "" || url.hash !== "") {
    throw invalid("nats(): a server URL is scheme://host:port, without path, query or fragment");
  }
  const host = url.hostname;
  if (host.length === 0) throw invalid("nats(): a server URL needs a host");
  const port = url.port === "" ? 4222 : Number(url.port);
  return { hostPort: `${host}:${port}`, host, tls: scheme === "tls:" };
}

function resolveConfig(init: unknown): Config {
  if (typeof init !== "object" || init === null || Array.isArray(init)) {
    throw invalid("nats(init): init must be an options object with at least `servers`");
  }
  for (const key of Object.keys(init)) {
    if (!INIT_KEYS.has(key)) throw invalid(`nats(): unknown option "${key}"`);
  }
  const o = init as NatsInit;
  const list = typeof o.servers === "string" ? [o.servers] : o.servers;
  if (!Array.isArray(list) || list.length === 0 || list.length > 64) {
    throw invalid("nats(): servers must be a URL or a non-empty array of up to 64 URLs");
  }
  const servers = (list as unknown[]).map(parseServer);
  if (o.insecure !== undefined && typeof o.insecure !== "boolean") throw invalid("nats(): insecure must be a boolean");
  const insecure = o.insecure === true;
  if (o.tls !== undefined && (typeof o.tls !== "object" || o.tls === null || Array.isArray(o.tls))) {
    throw invalid("nats(): tls must be an object of TLS options (e.g. { ca })");
  }
  const requireTls = o.tls !== undefined || servers.some((s) => s.tls);
  if (o.tls?.rejectUnauthorized === false && !insecure) {
    throw sealwireError(
      "ERR_INSECURE_TRANSPORT",
      "nats(): tls.rejectUnauthorized: false would accept any server certificate; give the CA in tls.ca instead " +
        "(or set insecure: true if something else authenticates the server)",
    );
  }
  if (!requireTls && !insecure) {
    const remote = servers.find((s) => !isLoopback(s.host));
    if (remote !== undefined) {
      throw sealwireError(
        "ERR_INSECURE_TRANSPORT",
        `nats(): refusing plaintext to the non-loopback server ${remote.host}; use tls:// URLs with tls: { ca }, ` +
          "or set insecure: true only if something else encrypts this link",
      );
    }
  }
  const namespace = o.namespace ?? "default";
  if (typeof namespace !== "string" || !ID_RE.test(namespace)) {
    throw invalid("nats(): namespace must be 1 to 64 characters from [A-Za-z0-9_-]");
  }
  const mode = o.mode ?? "core";
  if (mode !== "core" && mode !== "durable") throw invalid('nats(): mode must be "core" or "durable"');

  // Credentials: at most one scheme, each passed through to the NATS client's authenticators.
  const schemes = [o.pass !== undefined || o.user !== undefined, o.token !== undefined, o.nkeySeed !== undefined, o.authenticator !== undefined];
  if (schemes.filter(Boolean).length > 1) {
    throw invalid("nats(): give one of user/pass, token, nkeySeed or authenticator");
  }
  let authenticator: Authenticator | undefined;
  if (o.user !== undefined || o.pass !== undefined) {
    if (typeof o.user !== "string" || o.user.length === 0) throw invalid("nats(): user must be a non-empty string when pass is given");
    if (o.pass !== undefined && typeof o.pass !== "string" && typeof o.pass !== "function") {
      throw invalid("nats(): pass must be a string or a function returning one");
    }
    authenticator = usernamePasswordAuthenticator(o.user, o.pass);
  } else if (o.token !== undefined) {
    if (typeof o.token !== "string" && typeof o.token !== "function") throw invalid("nats(): token must be a string or a function");
    authenticator = tokenAuthenticator(o.token);
  } else if (o.nkeySeed !== undefined) {
    if (!(o.nkeySeed instanceof Uint8Array) && typeof o.nkeySeed !== "function") {
      throw invalid("nats(): nkeySeed must be a Uint8Array or a function returning one");
    }
    authenticator = nkeyAuthenticator(o.nkeySeed);
  } else if (o.authenticator !== undefined) {
    if (typeof o.authenticator !== "function") throw invalid("nats(): authenticator must be a NATS client authenticator function");
    authenticator = o.authenticator;
  }
  const name = o.name ?? "sealwire";
  if (typeof name !== "string" || name.length > 256) throw invalid("nats(): name must be a string of up to 256 characters");
  if (o.inboxPrefix !== undefined && (typeof o.inboxPrefix !== "string" || !REPLY_SUBJECT_RE.test(o.inboxPrefix))) {
    throw invalid("nats(): inboxPrefix must be a subject without wildcards or whitespace");
  }

  const maxFrameBytes = intOption(o.maxFrameBytes, "maxFrameBytes", 1, 64 * MiB, DEFAULT_MAX_FRAME_BYTES);
  const highWaterMarkBytes = intOption(o.highWaterMarkBytes, "highWaterMarkBytes", 1, 1024 * MiB, DEFAULT_HIGH_WATER_MARK_BYTES);
  const minQueued = highWaterMarkBytes + maxFrameBytes + FRAME_OVERHEAD_BYTES;
  const maxQueuedBytes = intOption(
    o.maxQueuedBytes,
    "maxQueuedBytes",
    1,
    4096 * MiB,
    Math.max(DEFAULT_QUEUE_FACTOR * highWaterMarkBytes, minQueued),
  );
  if (maxQueuedBytes < minQueued) {
    throw invalid(
      `nats(): maxQueuedBytes must be at least highWaterMarkBytes + maxFrameBytes + ${FRAME_OVERHEAD_BYTES} (${minQueued}) ` +
        "so that a sender honouring drain() never hits the hard limit",
    );
  }
  const keepaliveMs = intOption(o.keepaliveMs, "keepaliveMs", 100, 3_600_000, DEFAULT_KEEPALIVE_MS);
  const idleTimeoutMs = intOption(o.idleTimeoutMs, "idleTimeoutMs", 200, 7_200_000, Math.max(DEFAULT_IDLE_TIMEOUT_MS, 2 * keepaliveMs));
  if (idleTimeoutMs < 2 * keepaliveMs) throw invalid("nats(): idleTimeoutMs must be at least 2 × keepaliveMs");

  const d = o.durable ?? {};
  if (typeof d !== "object" || d === null || Array.isArray(d)) throw invalid("nats(): durable must be an options object");
  for (const key of Object.keys(d)) {
    if (!DURABLE_KEYS.has(key)) throw invalid(`nats(): unknown durable option "${key}"`);
  }
  const replicas = intOption(d.replicas, "durable.replicas", 1, 5, DEFAULT_DURABLE.replicas);
  const storage = d.storage ?? DEFAULT_DURABLE.storage;
  if (storage !== "file" && storage !== "memory") throw invalid('nats(): durable.storage must be "file" or "memory"');
  const durable: Required<NatsDurableInit> = {
    replicas,
    storage,
    maxAgeMs: intOption(d.maxAgeMs, "durable.maxAgeMs", 1000, 365 * 24 * 3_600_000, DEFAULT_DURABLE.maxAgeMs),
    maxBytes: intOption(d.maxBytes, "durable.maxBytes", 1 * MiB, 2 ** 50, DEFAULT_DURABLE.maxBytes),
    ackWaitMs: intOption(d.ackWaitMs, "durable.ackWaitMs", 1000, 3_600_000, DEFAULT_DURABLE.ackWaitMs),
    maxAckPending: intOption(d.maxAckPending, "durable.maxAckPending", 1, 65_536, DEFAULT_DURABLE.maxAckPending),
    pullExpiresMs: intOption(d.pullExpiresMs, "durable.pullExpiresMs", 1000, 60_000, DEFAULT_DURABLE.pullExpiresMs),
    publishTimeoutMs: intOption(d.publishTimeoutMs, "durable.publishTimeoutMs", 100, 60_000, DEFAULT_DURABLE.publishTimeoutMs),
    publishRetryMs: intOption(d.publishRetryMs, "durable.publishRetryMs", 0, 3_600_000, DEFAULT_DURABLE.publishRetryMs),
    duplicateWindowMs: intOption(d.duplicateWindowMs, "durable.duplicateWindowMs", 1000, 24 * 3_600_000, DEFAULT_DURABLE.duplicateWindowMs),
    dedupeWindow: intOption(d.dedupeWindow, "durable.dedupeWindow", 16, 10_000_000, DEFAULT_DURABLE.dedupeWindow),
  };
  return {
    hostPorts: servers.map((s) => s.hostPort),
    requireTls,
    tls: o.tls === undefined ? undefined : { ...o.tls },
    insecure,
    authenticator,
    name,
    inboxPrefix: o.inboxPrefix,
    namespace,
    mode,
    maxFrameBytes,
    highWaterMarkBytes,
    maxQueuedBytes,
    backlog: intOption(o.backlog, "backlog", 1, 65_536, DEFAULT_BACKLOG),
    maxConnections: intOption(o.maxConnections, "maxConnections", 1, 1_000_000, DEFAULT_MAX_CONNECTIONS),
    dialTimeoutMs: intOption(o.dialTimeoutMs, "dialTimeoutMs", 50, 600_000, DEFAULT_DIAL_TIMEOUT_MS),
    keepaliveMs,
    idleTimeoutMs,
    connectTimeoutMs: intOption(o.connectTimeoutMs, "connectTimeoutMs", 100, 600_000, DEFAULT_CONNECT_TIMEOUT_MS),
    durable,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Addresses, subjects and the wire header

/** Returns `[namespace, agentId]` of `nats://<namespace>/<agentId>`, or throws ERR_INVALID_ARGUMENT. */
function parseAddr(addr: unknown, what: string): [string, string] {
  const m = typeof addr === "string" ? ADDR_RE.exec(addr) : null;
  if (m === null) {
    throw invalid(`${what} must be nats://<namespace>/<agentId>, each part 1 to 64 characters from [A-Za-z0-9_-]`);
  }
  return [m[1]!, m[2]!];
}

const coreSubject = (ns: string, agent: string): string => `${SUBJECT_PREFIX}.${ns}.${agent}`;
const durableSubject = (ns: string, agent: string): string => `${SUBJECT_PREFIX}.${ns}.${agent}.d`;
const streamName = (ns: string): string => `SEALWIRE_${ns}`;
const consumerName = (agent: string): string => `sealwire-${agent}`;

const VERSION = 1;
const HEADER_BYTES = 26;
const enum Op {
  Open = 1,
  Accept = 2,
  Refuse = 3,
  Data = 4,
  Credit = 5,
  Close = 6,
  Closed = 7,
  Abort = 8,
  Ping = 9,
  Probe = 10,
  Here = 11,
}
const MAX_OP = 11;

/** Builds a message: header (version, op, connection id, 64-bit value) followed by `body` (copied). */
function encode(op: Op, connId: Uint8Array, value: number, body?: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + (body?.byteLength ?? 0));
  out[0] = VERSION;
  out[1] = op;
  out.set(connId, 2);
  const v = new DataView(out.buffer);
  v.setUint32(18, Math.floor(value / 2 ** 32));
  v.setUint32(22, value >>> 0);
  if (body !== undefined && body.byteLength > 0) out.set(body, HEADER_BYTES);
  return out;
}

interface Parsed {
  op: Op;
  connHex: string;
  value: number;
}

/** Parses a message header; `undefined` for anything malformed (hostile input is dropped, never thrown). */
function parse(data: Uint8Array): Parsed | undefined {
  if (data.byteLength < HEADER_BYTES || data[0] !== VERSION) return undefined;
  const op = data[1]!;
  if (op < 1 || op > MAX_OP) return undefined;
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const hi = v.getUint32(18);
  if (hi >= 2 ** 21) return undefined; // keeps values exact as JS numbers (< 2^53)
  return { op, connHex: hex(data.subarray(2, 18)), value: hi * 2 ** 32 + v.getUint32(22) };
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex");
}

/** A fresh copy of `data[from:]` as a plain Uint8Array the receiver owns. */
function copyBody(data: Uint8Array, from: number): Uint8Array {
  const out = new Uint8Array(data.byteLength - from);
  out.set(data.subarray(from));
  return out;
}

/** OPEN and ACCEPT carry the sender's receive window (value) and its largest frame (4-byte body). */
function windowBody(maxFrameBytes: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, maxFrameBytes);
  return b;
}

function readMaxFrame(data: Uint8Array): number | undefined {
  if (data.byteLength < HEADER_BYTES + 4) return undefined;
  return new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(HEADER_BYTES);
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers shared by every connection kind

function abortError(signal: AbortSignal, what: string): SealwireError {
  const reason: unknown = signal.reason;
  if (SealwireError.is(reason)) return reason;
  return sealwireError("ERR_ABORTED", `${what} was aborted by its AbortSignal`, { cause: reason });
}

function alreadyIterated(what: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return invalid(`this ${what} is already being iterated; a ${what} has exactly one reader`);
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: unknown): void;
}

/** Pending `drain()` calls of one connection. */
class DrainWaiters {
  #waiters: Set<{ resolve: () => void; reject: (e: unknown) => void; cleanup: () => void }> | undefined;

  wait(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const set = (this.#waiters ??= new Set());
      const onAbort = (): void => {
        set.delete(w);
        reject(abortError(signal!, "drain()"));
      };
      const w = { resolve, reject, cleanup: () => signal?.removeEventListener("abort", onAbort) };
      set.add(w);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  wake(): void {
    const set = this.#waiters;
    if (set === undefined || set.size === 0) return;
    this.#waiters = undefined;
    for (const w of set) {
      w.cleanup();
      w.resolve();
    }
  }

  fail(err: Error): void {
    const set = this.#waiters;
    if (set === undefined) return;
    this.#waiters = undefined;
    for (const w of set) {
      w.cleanup();
      w.reject(err);
    }
  }
}

/**
 * A single-reader queue with a byte count: the receive side of every connection here. Frames (or mailbox
 * entries) are pushed by the NATS callbacks and taken by `next()`; `end()` lets the reader finish what is queued,
 * `fail()` drops it and makes the reader throw.
 */
class Inbox<T> {
  #items: (T | undefined)[] = [];
  #head = 0;
  #bytes = 0;
  readonly #readers: Waiter<IteratorResult<T>>[] = [];
  #ended = false;
  #done = false;
  #error: Error | undefined;
  readonly #cost: (t: T) => number;
  readonly #onTake: (t: T) => void;

  constructor(cost: (t: T) => number, onTake: (t: T) => void) {
    this.#cost = cost;
    this.#onTake = onTake;
  }

  get bytes(): number {
    return this.#bytes;
  }
  get length(): number {
    return this.#items.length - this.#head;
  }
  /** True once the reader can get nothing more (ended and drained, failed, or stopped). */
  get done(): boolean {
    return this.#done;
  }
  get ended(): boolean {
    return this.#ended || this.#done;
  }

  /** Queues an item; returns false (item not queued) once the inbox ended or failed. */
  push(item: T): boolean {
    if (this.#ended || this.#done) return false;
    this.#items.push(item);
    this.#bytes += this.#cost(item);
    this.#pump();
    return true;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.#readers.length === 0 && this.#head < this.#items.length) {
      return Promise.resolve({ done: false, value: this.#take() });
    }
    if (this.#done) return this.#error !== undefined ? Promise.reject(this.#error) : Promise.resolve(DONE);
    if (this.#ended && this.#head >= this.#items.length) {
      this.#done = true;
      return Promise.resolve(DONE);
    }
    return new Promise((resolve, reject) => {
      this.#readers.push({ resolve, reject });
      this.#pump();
    });
  }

  /** Graceful end: the reader gets what is queued, then the end of the stream. */
  end(): void {
    if (this.#ended || this.#done) return;
    this.#ended = true;
    this.#pump();
  }

  /** Drops everything queued (returned, for the caller to release) and makes the reader throw `err`. */
  fail(err: Error): T[] {
    const dropped = this.#drop();
    if (!this.#done) {
      this.#done = true;
      this.#error = err;
    }
    this.#pump();
    return dropped;
  }

  /** The reader left: drops everything queued (returned) and ends quietly. */
  stop(): T[] {
    const dropped = this.#drop();
    this.#done = true;
    this.#ended = true;
    this.#pump();
    return dropped;
  }

  #drop(): T[] {
    const dropped = this.#items.slice(this.#head) as T[];
    this.#items = [];
    this.#head = 0;
    this.#bytes = 0;
    return dropped;
  }

  #take(): T {
    const item = this.#items[this.#head]!;
    this.#items[this.#head] = undefined;
    this.#head++;
    if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    this.#bytes -= this.#cost(item);
    this.#onTake(item);
    return item;
  }

  #pump(): void {
    const readers = this.#readers;
    while (readers.length > 0) {
      if (this.#head < this.#items.length && !this.#done) {
        readers.shift()!.resolve({ done: false, value: this.#take() });
        continue;
      }
      if (this.#ended && !this.#done) this.#done = true;
      if (this.#done) {
        const err = this.#error;
        for (const r of readers.splice(0)) {
          if (err !== undefined) r.reject(err);
          else r.resolve(DONE);
        }
      }
      return;
    }
  }
}

/** Maps an error from the NATS client to a coded SealwireError whose message says what to do (no secrets). */
function mapNatsError(err: unknown, what: string): SealwireError {
  if (SealwireError.is(err)) return err;
  const e = err as { name?: unknown; message?: unknown; code?: unknown; cause?: unknown } | undefined;
  const chain: { name?: unknown; message?: unknown; code?: unknown }[] = [];
  for (let c: unknown = e, i = 0; c !== undefined && c !== null && i < 4; i++) {
    chain.push(c as { name?: unknown; message?: unknown; code?: unknown });
    c = (c as { cause?: unknown }).cause;
  }
  const names = chain.map((c) => String(c.name ?? ""));
  const codes = chain.map((c) => String(c.code ?? ""));
  const messages = chain.map((c) => String(c.message ?? "")).join(" | ");
  if (names.includes("AuthorizationError") || names.includes("UserAuthenticationExpiredError") || /authorization violation|authentication/i.test(messages)) {
    return sealwireError("ERR_AUTH_FAILED", `${what}: the NATS server refused the credentials; check user/pass, token or nkey`, { cause: err });
  }
  const tlsCodes = /^(UNABLE_TO_|SELF_SIGNED_|DEPTH_ZERO_|CERT_|ERR_TLS_|ERR_SSL_|HOSTNAME_MISMATCH|ERR_OSSL)/;
  if (codes.some((c) => tlsCodes.test(c)) || /certificate|tls|ssl/i.test(messages)) {
    return sealwireError(
      "ERR_TLS",
      `${what}: the TLS connection to NATS failed (server certificate not trusted by tls.ca, wrong host name, ` +
        "or TLS unavailable on the server)",
      { cause: err },
    );
  }
  if (names.includes("PermissionViolationError") || /permissions violation/i.test(messages)) {
    return sealwireError("ERR_CONNECTION_REFUSED", `${what}: the NATS server denied this user the subject; check its permissions`, { cause: err });
  }
  if (names.includes("JetStreamApiError")) {
    // The server's own description (e.g. "insufficient storage"): configuration text, never a secret.
    const description = String(chain[0]?.message ?? "").slice(0, 200);
    return sealwireError("ERR_CONNECTION_REFUSED", `${what}: JetStream refused (${description}); check the servers' JetStream limits and permissions`, { cause: err });
  }
  if (names.includes("ClosedConnectionError") || names.includes("DrainingConnectionError")) {
    return sealwireError("ERR_CONNECTION_CLOSED", `${what}: the NATS connection is closed`, { cause: err });
  }
  return sealwireError("ERR_CONNECTION_REFUSED", `${what}: cannot reach a NATS server; check servers and that nats-server runs`, { cause: err });
}

// ---------------------------------------------------------------------------------------------------------------
// The shared NATS connection

/** Something a session must tell when its NATS connection ends for good. */
interface SessionUser {
  sessionClosed(err: SealwireError): void;
}

/** One NATS connection, shared by a transport's listeners and connections, with a reference count. */
class Session {
  readonly nc: NatsConnection;
  readonly cfg: Config;
  /** Reply subjects of dialled core connections are `<prefix>.<connection id hex>`. */
  readonly prefix: string;
  readonly maxPayload: number;
  readonly outConns = new Map<string, CoreConnection>();
  readonly routers = new Map<string, Router>();
  readonly users = new Set<SessionUser>();
  refs = 0;
  closed = false;
  readonly #replySub: Subscription;
  readonly #timer: NodeJS.Timeout;
  readonly #onEmpty: (s: Session) => void;
  #js: JetStreamClient | undefined;
  #jsm: Promise<JetStreamManager> | undefined;
  #stream: Promise<void> | undefined;

  constructor(nc: NatsConnection, cfg: Config, onEmpty: (s: Session) => void) {
    this.nc = nc;
    this.cfg = cfg;
    this.#onEmpty = onEmpty;
    this.maxPayload = nc.info?.max_payload ?? 1 * MiB;
    this.prefix = createInbox(cfg.inboxPrefix);
    this.#replySub = nc.subscribe(`${this.prefix}.*`, {
      callback: (err, msg) => {
        if (err === null) this.#onReply(msg);
      },
    });
    // One timer per session drives keepalives and idle timeouts of every core connection (not one per conn).
    this.#timer = setInterval(() => this.#tick(), Math.max(50, Math.floor(cfg.keepaliveMs / 2)));
    this.#timer.unref();
    void nc.closed().then((err) => this.#lost(err));
    void this.#watch();
  }

  /** After a reconnect (possibly to another server), every connection checks at once that nothing was lost. */
  async #watch(): Promise<void> {
    try {
      for await (const s of this.nc.status()) {
        if (s.type !== "reconnect") continue;
        for (const c of [...this.outConns.values()]) c.ping();
        for (const r of [...this.routers.values()]) for (const c of [...r.conns.values()]) c.ping();
      }
    } catch {
      /* the status iterator ends with the connection */
    }
  }

  get js(): JetStreamClient {
    return (this.#js ??= jetstream(this.nc, { timeout: JS_API_TIMEOUT_MS }));
  }

  jsm(): Promise<JetStreamManager> {
    return (this.#jsm ??= jetstreamManager(this.nc, { timeout: JS_API_TIMEOUT_MS, checkAPI: false }));
  }

  /** Creates the namespace's stream if it does not exist (once per session; retried on failure). */
  ensureStream(): Promise<void> {
    const p = (this.#stream ??= this.#ensureStream());
    p.catch(() => {
      if (this.#stream === p) this.#stream = undefined;
    });
    return p;
  }

  async #ensureStream(): Promise<void> {
    const ns = this.cfg.namespace;
    const name = streamName(ns);
    const subject = `${SUBJECT_PREFIX}.${ns}.*.d`;
    const jsm = await this.jsm();
    const d = this.cfg.durable;
    for (let attempt = 0; ; attempt++) {
      try {
        const info = await jsm.streams.info(name);
        if (!info.config.subjects?.includes(subject)) {
          throw sealwireError(
            "ERR_INVALID_ARGUMENT",
            `JetStream stream ${name} exists but does not capture ${subject}; delete it or use another namespace`,
          );
        }
        return;
      } catch (err) {
        if (SealwireError.is(err)) throw err;
        if (!/not found/i.test(String((err as Error).message))) {
          if (attempt < 3) {
            await new Promise((r) => setTimeout(r, 250 * (attempt + 1)));
            continue;
          }
          throw mapNatsError(err, "creating the JetStream stream");
        }
      }
      try {
        await jsm.streams.add({
          name,
          subjects: [subject],
          retention: RetentionPolicy.Workqueue,
          storage: d.storage === "memory" ? StorageType.Memory : StorageType.File,
          num_replicas: d.replicas,
          max_age: nanos(d.maxAgeMs),
          max_bytes: d.maxBytes,
          max_msg_size: Math.min(this.maxPayload, this.cfg.maxFrameBytes + PAYLOAD_HEADROOM_BYTES),
          discard: DiscardPolicy.New,
          duplicate_window: nanos(d.duplicateWindowMs),
        });
        return;
      } catch (err) {
        // Another transport may have created it at the same moment: look again.
        if (attempt >= 3) throw mapNatsError(err, "creating the JetStream stream");
      }
    }
  }

  /** Largest frame a message may carry on this server, given our limit. */
  frameLimit(): number {
    return Math.max(1, Math.min(this.cfg.maxFrameBytes, this.maxPayload - PAYLOAD_HEADROOM_BYTES));
  }

  /** Publishes; a failure (closed or draining connection, payload too large) is returned, never thrown. */
  publish(subject: string, data: Uint8Array, reply?: string): Error | undefined {
    try {
      if (reply === undefined) this.nc.publish(subject, data);
      else this.nc.publish(subject, data, { reply });
      return undefined;
    } catch (err) {
      return err as Error;
    }
  }

  acquire(): void {
    this.refs++;
  }

  release(): void {
    this.refs--;
    if (this.refs <= 0 && !this.closed) {
      this.closed = true;
      this.#shutdown();
      this.#onEmpty(this);
      // Flush first: the last acknowledgements and CLOSE messages must reach the server, or JetStream would
      // redeliver envelopes the agent already took.
      void this.flushed().then(() => this.nc.close().catch(() => {}));
    }
  }

  /** Resolves once the server has everything published so far (or after 2 s, or if the connection is gone). */
  flushed(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      this.nc.flush().catch(() => {}),
      new Promise<void>((r) => {
        timer = setTimeout(r, 2000);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  #shutdown(): void {
    clearInterval(this.#timer);
    try {
      this.#replySub.unsubscribe();
    } catch {
      /* connection already closed */
    }
  }

  /** The NATS connection closed for good (or we closed it): everything still using it fails. */
  #lost(err: void | Error): void {
    const wasOpen = !this.closed;
    this.closed = true;
    this.#shutdown();
    if (wasOpen) this.#onEmpty(this);
    const error = sealwireError("ERR_CONNECTION_ABORTED", "the NATS connection closed; dial again", err ? { cause: err } : {});
    for (const c of [...this.outConns.values()]) c.remoteFailed(error);
    for (const r of [...this.routers.values()]) r.sessionClosed(error);
    for (const u of [...this.users]) u.sessionClosed(error);
  }

  #onReply(msg: Msg): void {
    try {
      const token = msg.subject.slice(this.prefix.length + 1);
      const conn = this.outConns.get(token);
      if (conn === undefined) return;
      if (msg.headers !== undefined && msg.headers.code === 503 && msg.data.byteLength === 0) {
        conn.noResponders();
        return;
      }
      const p = parse(msg.data);
      if (p === undefined || p.connHex !== token) return;
      conn.onMessage(p, msg.data);
    } catch {
      /* hostile input never crashes the callback */
    }
  }

  #tick(): void {
    const now = performance.now();
    for (const c of [...this.outConns.values()]) c.tick(now);
    for (const r of [...this.routers.values()]) for (const c of [...r.conns.values()]) c.tick(now);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Core connections

const enum State {
  Dialling,
  Open,
  /** We sent CLOSE and wait for CLOSED; sending is over, reading continues. */
  Closing,
  /** Graceful close finished (either side started it). */
  Closed,
  Aborted,
}

interface Pending {
  resolve(): void;
  reject(err: Error): void;
}

/** One end of a core-mode virtual connection (dialled or accepted). */
class CoreConnection implements Connection {
  readonly remoteAddr: string;
  readonly remotePeer = undefined;
  maxFrameBytes: number;
  readonly closed: Promise<Error | undefined>;
  readonly connHex: string;
  readonly #session: Session;
  readonly #connId: Uint8Array;
  /** Where our messages go; `#replyTo` is set on DATA so the listener can reset a connection it does not know. */
  #sendSubject: string;
  readonly #replyTo: string | undefined;
  readonly #onEnd: (c: CoreConnection) => void;
  #state: State;
  #error: Error | undefined;
  #resolveClosed!: (e: Error | undefined) => void;
  #closedSettled = false;
  #closing: Promise<void> | undefined;
  #closeWaiter: Pending | undefined;
  #dialWaiter: Pending | undefined;
  #finished = false;
  // send side
  #sentSeq = 0;
  #sentBytes = 0;
  #credit = 0;
  #sendLimit: number;
  #sendHwm: number;
  readonly #drains = new DrainWaiters();
  // receive side
  readonly #inbox: Inbox<Uint8Array>;
  readonly #recvLimit: number;
  readonly #creditChunk: number;
  #recvSeq = 0;
  #consumed = 0;
  #creditSent = 0;
  #creditScheduled = false;
  #iterated = false;
  #lastRx = performance.now();
  #lastTx = performance.now();

  constructor(
    session: Session,
    init: {
      connId: Uint8Array;
      sendSubject: string;
      replyTo: string | undefined;
      remoteAddr: string;
      state: State;
      onEnd: (c: CoreConnection) => void;
    },
  ) {
    const cfg = session.cfg;
    this.#session = session;
    this.#connId = init.connId;
    this.connHex = hex(init.connId);
    this.#sendSubject = init.sendSubject;
    this.#replyTo = init.replyTo;
    this.remoteAddr = init.remoteAddr;
    this.#state = init.state;
    this.#onEnd = init.onEnd;
    this.maxFrameBytes = session.frameLimit();
    this.#recvLimit = cfg.maxQueuedBytes;
    this.#sendLimit = cfg.maxQueuedBytes;
    this.#sendHwm = cfg.highWaterMarkBytes;
    this.#creditChunk = Math.max(1, Math.floor(Math.min(cfg.highWaterMarkBytes, cfg.maxQueuedBytes) / 4));
    this.#inbox = new Inbox<Uint8Array>(
      (f) => f.byteLength + FRAME_OVERHEAD_BYTES,
      (f) => this.#consume(f.byteLength + FRAME_OVERHEAD_BYTES),
    );
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get isOpen(): boolean {
    return this.#state === State.Open;
  }

  /** The window and largest frame this end advertises in OPEN/ACCEPT. */
  handshake(op: Op.Open | Op.Accept): Uint8Array {
    return encode(op, this.#connId, this.#recvLimit, windowBody(this.maxFrameBytes));
  }

  /** Applies the peer's advertised window and largest frame (from OPEN or ACCEPT). */
  applyPeerWindow(window: number, peerMaxFrame: number | undefined): void {
    if (peerMaxFrame !== undefined && peerMaxFrame > 0) this.maxFrameBytes = Math.min(this.maxFrameBytes, peerMaxFrame);
    if (window > 0) this.#sendLimit = Math.min(this.#sendLimit, window);
    this.maxFrameBytes = Math.max(1, Math.min(this.maxFrameBytes, this.#sendLimit - FRAME_OVERHEAD_BYTES));
    this.#sendHwm = Math.max(1, Math.min(this.#sendHwm, this.#sendLimit - this.maxFrameBytes - FRAME_OVERHEAD_BYTES));
  }

  // --- dialling

  /** Sends OPEN and waits for ACCEPT/REFUSE/no responders; resolves once open. */
  dial(signal: AbortSignal | undefined, timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const started = performance.now();
      let retryTimer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        clearTimeout(timer);
        clearTimeout(retryTimer);
        signal?.removeEventListener("abort", onAbort);
        this.#dialWaiter = undefined;
      };
      const fail = (err: Error): void => {
        cleanup();
        // The listener may have accepted after all (a late answer): tell it, then forget this connection.
        this.#send(Op.Abort, 0);
        this.#finish(err);
        reject(err);
      };
      const onAbort = (): void => fail(abortError(signal!, "dial()"));
      const timer = setTimeout(
        () =>
          fail(
            sealwireError(
              "ERR_CONNECTION_REFUSED",
              `no listener at ${this.remoteAddr} answered within ${timeoutMs} ms; is the agent running in the same namespace?`,
            ),
          ),
        timeoutMs,
      );
      let attempt = 0;
      const sendOpen = (): void => {
        const err = this.#session.publish(this.#sendSubject, this.handshake(Op.Open), this.#replyTo);
        if (err !== undefined) fail(mapNatsError(err, "dial()"));
      };
      this.#dialWaiter = {
        resolve: () => {
          cleanup();
          resolve();
        },
        reject: (err) => {
          if (SealwireError.is(err, "ERR_CONNECTION_REFUSED") && err.message === NO_RESPONDERS) {
            // Nobody subscribed (yet): in a cluster the listener's interest may still be propagating.
            if (performance.now() - started < NO_RESPONDERS_RETRY_MS) {
              retryTimer = setTimeout(sendOpen, 25 * 2 ** Math.min(attempt++, 3));
              return;
            }
            err = sealwireError("ERR_CONNECTION_REFUSED", `nothing listens at ${this.remoteAddr} (no NATS subscriber); start the agent first`);
          }
          fail(err);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      sendOpen();
    });
  }

  noResponders(): void {
    this.#dialWaiter?.reject(sealwireError("ERR_CONNECTION_REFUSED", NO_RESPONDERS));
  }

  // --- the Connection API

  send(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array)) throw invalid("send(frame): frame must be a Uint8Array");
    if (this.#state !== State.Open) {
      throw sealwireError("ERR_CONNECTION_CLOSED", "send() on a closed connection; dial a new one", { cause: this.#error });
    }
    const length = frame.byteLength;
    if (length > this.maxFrameBytes) {
      throw sealwireError(
        "ERR_FRAME_TOO_LARGE",
        `frame of ${length} bytes exceeds maxFrameBytes (${this.maxFrameBytes}, bounded by the NATS server's max_payload); ` +
          "split it or raise max_payload and maxFrameBytes",
      );
    }
    const cost = length + FRAME_OVERHEAD_BYTES;
    if (this.#sentBytes - this.#credit + cost > this.#sendLimit) {
      throw sealwireError(
        "ERR_QUEUE_FULL",
        "the peer is not reading and this connection's window is full; await drain() whenever send() returns false",
      );
    }
    const err = this.#send(Op.Data, this.#sentSeq, frame);
    if (err !== undefined) {
      const e = mapNatsError(err, "send()");
      this.abort(e);
      throw e;
    }
    this.#sentSeq++;
    this.#sentBytes += cost;
    return this.#sentBytes - this.#credit < this.#sendHwm;
  }

  drain(options?: AbortOptions): Promise<void> {
    if (this.#state !== State.Open) return Promise.reject(this.#endedError());
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, "drain()"));
    if (this.#sentBytes - this.#credit < this.#sendHwm) return Promise.resolve();
    return this.#drains.wait(signal);
  }

  close(options?: AbortOptions): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    if (this.#state !== State.Open) return Promise.resolve();
    const signal = options?.signal;
    if (signal?.aborted) {
      const err = abortError(signal, "close()");
      this.abort(err);
      return Promise.reject(err);
    }
    this.#state = State.Closing;
    this.#drains.fail(this.#endedError());
    this.#settleClosed(undefined);
    this.#send(Op.Close, this.#sentSeq);
    this.#closing = new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.#closeWaiter = undefined;
      };
      const onAbort = (): void => {
        cleanup();
        const err = abortError(signal!, "close()");
        this.#failLocal(err);
        reject(err);
      };
      // A peer that never confirms (it died) does not hold close() forever: end locally after the timeout.
      const timer = setTimeout(() => {
        cleanup();
        this.#state = State.Closed;
        this.#inbox.end();
        this.#finish(undefined);
        resolve();
      }, Math.max(DEFAULT_CLOSE_TIMEOUT_MS, this.#session.cfg.dialTimeoutMs));
      this.#closeWaiter = {
        resolve: () => {
          cleanup();
          resolve();
        },
        reject: (e) => {
          cleanup();
          resolve(); // the close itself completed locally; how the remote ended is reported through its iterator
          void e;
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    return this.#closing;
  }

  abort(err?: Error): void {
    const error = err instanceof Error ? err : sealwireError("ERR_CONNECTION_ABORTED", "the connection was aborted locally");
    if (this.#state === State.Open) this.#send(Op.Abort, 0);
    this.#failLocal(error);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterated) throw alreadyIterated("connection");
    this.#iterated = true;
    const iterator: AsyncIterator<Uint8Array> & AsyncIterable<Uint8Array> = {
      next: () => this.#inbox.next(),
      // Leaving a for-await early means "I will not read any more": drop what is queued and close gracefully.
      return: () => {
        this.#stopReading();
        return Promise.resolve(DONE);
      },
      throw: (reason?: unknown) => {
        this.#stopReading();
        return Promise.reject(reason);
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NatsConnection";
  }

  // --- messages from the peer

  onMessage(p: Parsed, data: Uint8Array): void {
    this.#lastRx = performance.now();
    switch (p.op) {
      case Op.Accept:
        if (this.#state === State.Dialling && this.#dialWaiter !== undefined) {
          this.applyPeerWindow(p.value, readMaxFrame(data));
          this.#state = State.Open;
          this.#dialWaiter.resolve();
        }
        return;
      case Op.Refuse:
        this.#dialWaiter?.reject(sealwireError("ERR_CONNECTION_REFUSED", `the listener at ${this.remoteAddr} refused the connection (closed, or its backlog is full)`));
        return;
      case Op.Data:
        this.#onData(p.value, data);
        return;
      case Op.Credit:
        this.#onCredit(p.value);
        return;
      case Op.Ping:
        this.#onPing(p.value, data);
        return;
      case Op.Close:
        this.#onRemoteClose(p.value, true);
        return;
      case Op.Closed:
        if (this.#state === State.Closing) this.#onRemoteClose(p.value, false);
        return;
      case Op.Abort:
        if (this.#state === State.Dialling) {
          this.#dialWaiter?.reject(sealwireError("ERR_CONNECTION_REFUSED", `the listener at ${this.remoteAddr} reset the connection`));
          return;
        }
        this.remoteFailed(sealwireError("ERR_CONNECTION_ABORTED", "the remote end aborted the connection"));
        return;
      default:
        return; // anything else is ignored
    }
  }

  #onData(seq: number, data: Uint8Array): void {
    if (this.#state === State.Aborted || this.#state === State.Dialling || this.#finished) return;
    if (seq !== this.#recvSeq) {
      this.#protocolError(sealwireError("ERR_CONNECTION_ABORTED", "frames were lost or reordered in transit (NATS reconnect or slow consumer); dial again"));
      return;
    }
    this.#recvSeq++;
    const length = data.byteLength - HEADER_BYTES;
    if (length > this.maxFrameBytes) {
      this.#protocolError(sealwireError("ERR_FRAME_TOO_LARGE", `the peer sent a frame of ${length} bytes, above maxFrameBytes (${this.maxFrameBytes})`));
      return;
    }
    const cost = length + FRAME_OVERHEAD_BYTES;
    if (this.#inbox.done) {
      // The reader left: count the frame as consumed so the books stay right, keep nothing.
      this.#consume(cost);
      return;
    }
    if (this.#inbox.bytes + cost > this.#recvLimit) {
      this.#protocolError(sealwireError("ERR_PROTOCOL", "the peer sent past this connection's receive window (it ignores flow control)"));
      return;
    }
    this.#inbox.push(copyBody(data, HEADER_BYTES));
  }

  /** The peer ended gracefully (CLOSE) or confirmed our close (CLOSED) after `count` frames. */
  #onRemoteClose(count: number, isClose: boolean): void {
    if (this.#state === State.Aborted || this.#state === State.Closed || this.#state === State.Dialling) return;
    if (isClose) this.#send(Op.Closed, this.#sentSeq);
    if (count !== this.#recvSeq) {
      this.#protocolError(sealwireError("ERR_CONNECTION_ABORTED", "frames were lost in transit before the close; dial again"), false);
      return;
    }
    this.#state = State.Closed;
    this.#drains.fail(this.#endedError());
    this.#settleClosed(undefined);
    this.#inbox.end();
    this.#closeWaiter?.resolve();
    this.#finish(undefined);
  }

  /** The remote aborted, or the NATS connection was lost. */
  remoteFailed(err: Error): void {
    if (this.#state === State.Dialling) {
      this.#dialWaiter?.reject(err);
      return;
    }
    if (this.#state === State.Aborted || this.#state === State.Closed) {
      // Nothing left to lose, except unread frames when the NATS connection itself died.
      return;
    }
    this.#failLocal(err);
  }

  /** A peer that breaks the protocol is aborted at both ends. */
  #protocolError(err: SealwireError, tellPeer = true): void {
    if (tellPeer) this.#send(Op.Abort, 0);
    this.#failLocal(err);
  }

  #failLocal(err: Error): void {
    if (this.#state !== State.Closed) this.#state = State.Aborted;
    this.#error ??= err;
    this.#inbox.fail(err);
    this.#drains.fail(err);
    this.#settleClosed(err);
    this.#closeWaiter?.reject(err);
    this.#finish(err);
  }

  #stopReading(): void {
    this.#inbox.stop();
    if (this.#state === State.Open) this.close().catch(() => {});
  }

  tick(now: number): void {
    if (this.#finished || this.#state === State.Dialling) return;
    const cfg = this.#session.cfg;
    if (now - this.#lastRx > cfg.idleTimeoutMs) {
      this.#protocolError(sealwireError("ERR_CONNECTION_ABORTED", `the peer sent nothing for ${cfg.idleTimeoutMs} ms; it is gone`));
      return;
    }
    if (now - this.#lastTx > cfg.keepaliveMs) this.ping();
  }

  /**
   * Sends PING with the number of frames sent (the peer checks it received them all: PING follows them on the
   * same publisher, so a shortfall means frames were lost) and the bytes consumed (a lost CREDIT is repaired).
   * Sent on idle and right after the NATS client reconnected, so a loss is found within a round trip.
   */
  ping(): void {
    if (this.#finished || (this.#state !== State.Open && this.#state !== State.Closing)) return;
    const body = new Uint8Array(8);
    const v = new DataView(body.buffer);
    v.setUint32(0, Math.floor(this.#consumed / 2 ** 32));
    v.setUint32(4, this.#consumed >>> 0);
    this.#creditSent = Math.max(this.#creditSent, this.#consumed);
    this.#send(Op.Ping, this.#sentSeq, body);
  }

  #onPing(sent: number, data: Uint8Array): void {
    if (this.#finished || this.#state === State.Dialling) return;
    if (sent > this.#recvSeq) {
      this.#protocolError(sealwireError("ERR_CONNECTION_ABORTED", "frames were lost in transit (NATS reconnect or slow consumer); dial again"));
      return;
    }
    if (data.byteLength >= HEADER_BYTES + 8) {
      const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
      this.#onCredit(v.getUint32(HEADER_BYTES) * 2 ** 32 + v.getUint32(HEADER_BYTES + 4));
    }
  }

  #onCredit(consumed: number): void {
    if (consumed > this.#credit && consumed <= this.#sentBytes) {
      this.#credit = consumed;
      if (this.#state === State.Open && this.#sentBytes - this.#credit < this.#sendHwm) this.#drains.wake();
    }
  }

  #consume(cost: number): void {
    this.#consumed += cost;
    if (this.#state !== State.Open && this.#state !== State.Closing) return;
    if (this.#consumed - this.#creditSent >= this.#creditChunk) {
      this.#sendCredit();
    } else if (!this.#creditScheduled) {
      // Coalesce: one CREDIT for a burst of reads, sent once the reader has had its turn.
      this.#creditScheduled = true;
      setImmediate(() => {
        this.#creditScheduled = false;
        if (this.#consumed > this.#creditSent && !this.#finished) this.#sendCredit();
      });
    }
  }

  #sendCredit(): void {
    this.#creditSent = this.#consumed;
    this.#send(Op.Credit, this.#consumed);
  }

  #send(op: Op, value: number, body?: Uint8Array): Error | undefined {
    this.#lastTx = performance.now();
    // DATA and PING from the dialler name its reply subject, so a listener that lost the connection can reset it.
    const reply = op === Op.Data || op === Op.Ping ? this.#replyTo : undefined;
    return this.#session.publish(this.#sendSubject, encode(op, this.#connId, value, body), reply);
  }

  #settleClosed(err: Error | undefined): void {
    if (this.#closedSettled) return;
    this.#closedSettled = true;
    this.#resolveClosed(err);
  }

  #endedError(): Error {
    return this.#error ?? sealwireError("ERR_CONNECTION_CLOSED", "the connection was closed; dial a new one");
  }

  /** Forgets this connection in the session's maps (once); it receives nothing more. */
  #finish(err: Error | undefined): void {
    if (this.#finished) return;
    this.#finished = true;
    void err;
    this.#onEnd(this);
  }
}

const NO_RESPONDERS = "no responders";

// ---------------------------------------------------------------------------------------------------------------
// Listening: one router (NATS subscription) per agent subject

/** The accept side of a core listener: unaccepted connections and waiting acceptors. */
class CoreListener implements Listener {
  readonly addr: string;
  readonly pending: CoreConnection[] = [];
  readonly acceptors: Waiter<IteratorResult<Connection>>[] = [];
  isClosed = false;
  readonly #router: Router;
  #iterated = false;

  constructor(addr: string, router: Router) {
    this.addr = addr;
    this.#router = router;
  }

  offer(conn: CoreConnection): void {
    const a = this.acceptors.shift();
    if (a !== undefined) a.resolve({ done: false, value: conn });
    else this.pending.push(conn);
  }

  close(): Promise<void> {
    if (this.isClosed) return Promise.resolve();
    this.isClosed = true;
    // Like a closed TCP listening socket: connections nobody accepted are aborted so their diallers learn at once.
    for (const c of this.pending.splice(0)) c.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
    for (const a of this.acceptors.splice(0)) a.resolve(DONE);
    this.#router.listenerClosed(this);
    return Promise.resolve();
  }

  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    if (this.#iterated) throw alreadyIterated("listener");
    this.#iterated = true;
    const iterator: AsyncIterator<Connection> & AsyncIterable<Connection> = {
      next: () => {
        const c = this.pending.shift();
        if (c !== undefined) return Promise.resolve({ done: false, value: c });
        if (this.isClosed) return Promise.resolve(DONE);
        return new Promise((resolve, reject) => this.acceptors.push({ resolve, reject }));
      },
      return: async () => {
        await this.close();
        return DONE;
      },
      throw: async (reason?: unknown) => {
        await this.close();
        throw reason;
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NatsListener";
  }
}

/**
 * The NATS subscription on one agent's core subject. It outlives its listener while accepted connections are
 * open (their frames arrive on it), answers listen probes while a listener (core or durable) is active, accepts
 * or refuses OPEN, and demultiplexes everything else by connection id.
 */
class Router {
  readonly conns = new Map<string, CoreConnection>();
  readonly #session: Session;
  readonly #ns: string;
  readonly #agent: string;
  readonly #sub: Subscription;
  readonly #unregister: () => void;
  listener: CoreListener | undefined;
  /** A durable listener holds the address (answers probes, refuses core dials). */
  durableHolder = false;
  #done = false;

  constructor(session: Session, ns: string, agent: string, unregister: () => void) {
    this.#session = session;
    this.#ns = ns;
    this.#agent = agent;
    this.#unregister = unregister;
    this.#sub = session.nc.subscribe(coreSubject(ns, agent), {
      callback: (err, msg) => {
        if (err === null) this.#onMessage(msg);
      },
    });
  }

  /** Resolves once the server has the subscription (so a dial right after listen() finds it). */
  flush(): Promise<void> {
    return this.#session.nc.flush();
  }

  get active(): boolean {
    return this.durableHolder || (this.listener !== undefined && !this.listener.isClosed);
  }

  listenerClosed(l: CoreListener): void {
    if (this.listener === l) this.listener = undefined;
    this.maybeDone();
  }

  maybeDone(): void {
    if (this.#done || this.active || this.conns.size > 0) return;
    this.#done = true;
    try {
      this.#sub.unsubscribe();
    } catch {
      /* connection already closed */
    }
    this.#unregister();
  }

  sessionClosed(err: SealwireError): void {
    if (this.listener !== undefined) {
      const l = this.listener;
      for (const a of l.acceptors.splice(0)) a.resolve(DONE);
      for (const c of l.pending.splice(0)) c.remoteFailed(err);
      l.isClosed = true;
    }
    for (const c of [...this.conns.values()]) c.remoteFailed(err);
    this.listener = undefined;
    this.durableHolder = false;
    this.maybeDone();
  }

  #onMessage(msg: Msg): void {
    try {
      const data = msg.data;
      const p = parse(data);
      if (p === undefined) return;
      if (p.op === Op.Probe) {
        if (this.active && msg.reply !== undefined && REPLY_SUBJECT_RE.test(msg.reply)) {
          this.#session.publish(msg.reply, encode(Op.Here, new Uint8Array(16), 0));
        }
        return;
      }
      if (p.op === Op.Open) {
        this.#onOpen(p, msg);
        return;
      }
      const conn = this.conns.get(p.connHex);
      if (conn !== undefined) {
        conn.onMessage(p, data);
        return;
      }
      // Traffic for a connection we do not know (we restarted, or it timed out): reset it, like a TCP RST.
      if ((p.op === Op.Data || p.op === Op.Ping) && msg.reply !== undefined && REPLY_SUBJECT_RE.test(msg.reply)) {
        this.#session.publish(msg.reply, encode(Op.Abort, data.subarray(2, 18), 0));
      }
    } catch {
      /* hostile input never crashes the callback */
    }
  }

  #onOpen(p: Parsed, msg: Msg): void {
    const reply = msg.reply;
    if (reply === undefined || !REPLY_SUBJECT_RE.test(reply)) return;
    const connId = msg.data.slice(2, 18);
    const existing = this.conns.get(p.connHex);
    if (existing !== undefined) {
      // A repeated OPEN (the dialler retried): answer again.
      this.#session.publish(reply, existing.handshake(Op.Accept));
      return;
    }
    const cfg = this.#session.cfg;
    const l = this.listener;
    if (l === undefined || l.isClosed || l.pending.length >= cfg.backlog || this.conns.size >= cfg.maxConnections) {
      this.#session.publish(reply, encode(Op.Refuse, connId, 0));
      return;
    }
    const conn = new CoreConnection(this.#session, {
      connId,
      sendSubject: reply,
      replyTo: undefined,
      remoteAddr: `nats://${this.#ns}/${this.#agent}#${p.connHex.slice(0, 12)}`,
      state: State.Open,
      onEnd: (c) => {
        if (this.conns.get(c.connHex) === c) this.conns.delete(c.connHex);
        const i = l.pending.indexOf(c);
        if (i >= 0) l.pending.splice(i, 1);
        this.maybeDone();
      },
    });
    conn.applyPeerWindow(p.value, readMaxFrame(msg.data));
    this.conns.set(p.connHex, conn);
    this.#session.publish(reply, conn.handshake(Op.Accept));
    l.offer(conn);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Durable mode

/**
 * The `Nats-Msg-Id` of a frame: its envelope id, so JetStream stores an envelope once even when the agent sends
 * the same envelope again on a new connection; for frames that are not envelopes, the connection id and sequence
 * number (unique per frame, identical for a retried publish).
 */
function messageId(frame: Uint8Array, connHex: string, seq: number): string {
  try {
    return decodeEnvelope(frame, frame.byteLength).header.id;
  } catch {
    return `${connHex}-${seq}`;
  }
}

/**
 * The receiver's deduplication key: 128 bits of SHA-256 over the whole stored message (header and frame). A
 * redelivery carries the same bytes; a frame forged with someone else's connection id, sequence number or
 * envelope id does not, so it can never make the receiver drop the genuine one as a duplicate.
 */
function contentKey(data: Uint8Array): string {
  return hex(defaultProvider.hash("sha256", data).subarray(0, 16));
}

interface OutItem {
  readonly payload: Uint8Array;
  readonly msgId: string;
  readonly cost: number;
  readonly seq: number;
}

/** A dialled durable connection: an ordered, acknowledged publisher into the recipient's stream subject. */
class DurableOutConnection implements Connection, SessionUser {
  readonly remoteAddr: string;
  readonly remotePeer = undefined;
  readonly maxFrameBytes: number;
  readonly closed: Promise<Error | undefined>;
  readonly #session: Session;
  readonly #subject: string;
  readonly #connId: Uint8Array;
  readonly #connHex: string;
  readonly #onEnd: () => void;
  readonly #queue: OutItem[] = [];
  readonly #drains = new DrainWaiters();
  readonly #readers: Waiter<IteratorResult<Uint8Array>>[] = [];
  #state: State = State.Open;
  #error: Error | undefined;
  #resolveClosed!: (e: Error | undefined) => void;
  #closedSettled = false;
  #closing: Promise<void> | undefined;
  #closeWaiter: Pending | undefined;
  #inflight = 0;
  #bytes = 0;
  #seq = 0;
  #paused = false;
  #failures = 0;
  #failingSince: number | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #iterated = false;
  #finished = false;

  constructor(session: Session, addr: string, agent: string, onEnd: () => void) {
    this.#session = session;
    this.remoteAddr = addr;
    this.#subject = durableSubject(session.cfg.namespace, agent);
    this.#connId = defaultProvider.randomBytes(16);
    this.#connHex = hex(this.#connId);
    this.maxFrameBytes = session.frameLimit();
    this.#onEnd = onEnd;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    session.users.add(this);
  }

  get isOpen(): boolean {
    return this.#state === State.Open;
  }

  send(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array)) throw invalid("send(frame): frame must be a Uint8Array");
    if (this.#state !== State.Open) {
      throw sealwireError("ERR_CONNECTION_CLOSED", "send() on a closed connection; dial a new one", { cause: this.#error });
    }
    if (frame.byteLength > this.maxFrameBytes) {
      throw sealwireError(
        "ERR_FRAME_TOO_LARGE",
        `frame of ${frame.byteLength} bytes exceeds maxFrameBytes (${this.maxFrameBytes}, bounded by the NATS server's max_payload)`,
      );
    }
    const cfg = this.#session.cfg;
    const cost = frame.byteLength + FRAME_OVERHEAD_BYTES;
    if (this.#bytes + cost > cfg.maxQueuedBytes) {
      throw sealwireError("ERR_QUEUE_FULL", "too many frames wait to be stored by JetStream; await drain() whenever send() returns false");
    }
    const seq = this.#seq++;
    this.#queue.push({ payload: encode(Op.Data, this.#connId, seq, frame), msgId: messageId(frame, this.#connHex, seq), cost, seq });
    this.#bytes += cost;
    this.#pump();
    return this.#bytes < cfg.highWaterMarkBytes;
  }

  drain(options?: AbortOptions): Promise<void> {
    if (this.#state !== State.Open) return Promise.reject(this.#endedError());
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, "drain()"));
    if (this.#bytes < this.#session.cfg.highWaterMarkBytes) return Promise.resolve();
    return this.#drains.wait(signal);
  }

  /** Resolves once every frame sent is stored in the stream (or rejects if that fails or the signal aborts). */
  close(options?: AbortOptions): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    if (this.#state !== State.Open) return Promise.resolve();
    const signal = options?.signal;
    if (signal?.aborted) {
      const err = abortError(signal, "close()");
      this.abort(err);
      return Promise.reject(err);
    }
    this.#state = State.Closing;
    this.#drains.fail(this.#endedError());
    this.#closing = new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const err = abortError(signal!, "close()");
        this.abort(err);
        reject(err);
      };
      this.#closeWaiter = {
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (err) => {
          signal?.removeEventListener("abort", onAbort);
          reject(err);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    this.#maybeClosed();
    return this.#closing;
  }

  abort(err?: Error): void {
    const error = err instanceof Error ? err : sealwireError("ERR_CONNECTION_ABORTED", "the connection was aborted locally");
    if (this.#state === State.Aborted || this.#state === State.Closed) return;
    this.#state = State.Aborted;
    this.#error = error;
    this.#queue.length = 0; // not yet handed to JetStream: dropped, as abort promises
    this.#bytes = 0;
    clearTimeout(this.#retryTimer);
    this.#drains.fail(error);
    this.#settle(error);
    this.#closeWaiter?.reject(error);
  }

  sessionClosed(err: SealwireError): void {
    this.abort(err);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterated) throw alreadyIterated("connection");
    this.#iterated = true;
    // Nothing ever arrives on a dialled durable connection: the iterator only reports how it ended.
    const iterator: AsyncIterator<Uint8Array> & AsyncIterable<Uint8Array> = {
      next: () => {
        if (this.#finished) return this.#error !== undefined ? Promise.reject(this.#error) : Promise.resolve(DONE);
        return new Promise((resolve, reject) => this.#readers.push({ resolve, reject }));
      },
      return: () => {
        if (this.#state === State.Open) this.close().catch(() => {});
        return Promise.resolve(DONE);
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NatsDurableConnection";
  }

  #pump(): void {
    while (!this.#paused && this.#inflight < MAX_INFLIGHT_PUBLISHES && this.#queue.length > 0 && this.#state !== State.Aborted) {
      const item = this.#queue.shift()!;
      this.#inflight++;
      const d = this.#session.cfg.durable;
      this.#session.js
        .publish(this.#subject, item.payload, { msgID: item.msgId, timeout: d.publishTimeoutMs })
        .then(
          () => this.#published(item),
          (err: unknown) => this.#publishFailed(item, err),
        );
    }
  }

  #published(item: OutItem): void {
    this.#inflight--;
    this.#failures = 0;
    this.#failingSince = undefined;
    if (this.#state === State.Aborted) return this.#maybeClosed();
    this.#bytes -= item.cost;
    if (this.#state === State.Open && this.#bytes < this.#session.cfg.highWaterMarkBytes) this.#drains.wake();
    this.#pump();
    this.#maybeClosed();
  }

  #publishFailed(item: OutItem, err: unknown): void {
    this.#inflight--;
    if (this.#state === State.Aborted) return this.#maybeClosed();
    const mapped = mapNatsError(err, "publishing to JetStream");
    const text = String((err as Error)?.message ?? "");
    // Permanent refusals: retrying cannot help, so the connection fails with a clear code.
    if (mapped.code === "ERR_AUTH_FAILED" || /permission|maximum payload|message size exceeds/i.test(text)) {
      this.abort(/payload|size/i.test(text) ? sealwireError("ERR_FRAME_TOO_LARGE", "JetStream refused the frame as too large", { cause: err }) : mapped);
      return;
    }
    const now = performance.now();
    this.#failingSince ??= now;
    if (now - this.#failingSince > this.#session.cfg.durable.publishRetryMs) {
      this.abort(
        sealwireError("ERR_TIMEOUT", `JetStream did not store frames for ${this.#session.cfg.durable.publishRetryMs} ms; they may be lost`, {
          cause: mapped,
        }),
      );
      return;
    }
    // Retry in send order ahead of everything not yet published; the msg id makes a retry of a frame that was
    // in fact stored a no-op on the server.
    let i = 0;
    while (i < this.#queue.length && this.#queue[i]!.seq < item.seq) i++;
    this.#queue.splice(i, 0, item);
    if (!this.#paused) {
      this.#paused = true;
      const wait = PUBLISH_BACKOFF_MS[Math.min(this.#failures++, PUBLISH_BACKOFF_MS.length - 1)]!;
      this.#retryTimer = setTimeout(() => {
        this.#paused = false;
        this.#pump();
      }, wait);
    }
  }

  #maybeClosed(): void {
    if (this.#finished) return;
    const settledAbort = this.#state === State.Aborted && this.#inflight === 0;
    const closedClean = this.#state === State.Closing && this.#inflight === 0 && this.#queue.length === 0;
    if (closedClean) {
      this.#state = State.Closed;
      this.#settle(undefined);
      this.#closeWaiter?.resolve();
    }
    if (closedClean || settledAbort) {
      this.#finished = true;
      for (const r of this.#readers.splice(0)) {
        if (this.#error !== undefined) r.reject(this.#error);
        else r.resolve(DONE);
      }
      this.#session.users.delete(this);
      this.#onEnd();
    }
  }

  #settle(err: Error | undefined): void {
    if (this.#closedSettled) return;
    this.#closedSettled = true;
    this.#resolveClosed(err);
    if (err !== undefined) queueMicrotask(() => this.#maybeClosed());
  }

  #endedError(): Error {
    return this.#error ?? sealwireError("ERR_CONNECTION_CLOSED", "the connection was closed; dial a new one");
  }
}

/** A frame delivered by the consumer, waiting in (or taken from) a mailbox until it is acknowledged. */
interface Entry {
  readonly frame: Uint8Array;
  readonly key: string;
  readonly seq: number;
  msg: JsMsg;
  /** When JetStream last heard about this delivery (delivered, or a progress ack). */
  touched: number;
}

/**
 * The durable listener: one pull consumer, its messages delivered in stream order through a mailbox
 * connection, each acknowledged once the reader asks for the next frame.
 */
class DurableListener implements Listener, SessionUser {
  readonly addr: string;
  readonly #session: Session;
  readonly #router: Router;
  readonly #agent: string;
  readonly #onEnd: () => void;
  readonly #acceptors: Waiter<IteratorResult<Connection>>[] = [];
  readonly #pendingBySeq = new Map<number, Entry>();
  readonly #pendingByKey = new Map<string, Entry>();
  /** Content keys of acknowledged frames, oldest first (a bounded LRU). */
  readonly #seen = new Set<string>();
  #mailbox: Mailbox | undefined;
  #offered: Mailbox | undefined;
  #messages: ConsumerMessages | undefined;
  #progressTimer: NodeJS.Timeout | undefined;
  #isClosed = false;
  #stopped = false;
  #iterated = false;

  constructor(session: Session, addr: string, agent: string, router: Router, onEnd: () => void) {
    this.#session = session;
    this.addr = addr;
    this.#agent = agent;
    this.#router = router;
    this.#onEnd = onEnd;
    session.users.add(this);
  }

  /** Creates the stream and this agent's durable consumer, then starts pulling. */
  async start(): Promise<void> {
    await this.#session.ensureStream();
    const jsm = await this.#session.jsm();
    const d = this.#session.cfg.durable;
    const ns = this.#session.cfg.namespace;
    const config = {
      durable_name: consumerName(this.#agent),
      filter_subject: durableSubject(ns, this.#agent),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: nanos(d.ackWaitMs),
      max_ack_pending: d.maxAckPending,
      max_deliver: -1,
    };
    let existing: Awaited<ReturnType<typeof jsm.consumers.info>> | undefined;
    try {
      existing = await jsm.consumers.info(streamName(ns), config.durable_name);
    } catch (err) {
      if (!/not found/i.test(String((err as Error).message))) throw mapNatsError(err, "listen()");
    }
    if (existing === undefined) {
      try {
        await jsm.consumers.add(streamName(ns), config);
      } catch (err) {
        throw mapNatsError(err, "creating the durable consumer");
      }
    } else {
      // A consumer under our name that filters another subject or acknowledges differently would silently
      // deliver nothing (or lose envelopes): refuse it rather than guess.
      const c = existing.config;
      if (c.filter_subject !== config.filter_subject || c.ack_policy !== AckPolicy.Explicit || c.deliver_subject !== undefined) {
        throw sealwireError(
          "ERR_INVALID_ARGUMENT",
          `the JetStream consumer ${config.durable_name} on ${streamName(ns)} exists with another configuration; delete it`,
        );
      }
      if (c.ack_wait !== config.ack_wait || c.max_ack_pending !== config.max_ack_pending) {
        await jsm.consumers
          .update(streamName(ns), config.durable_name, { ack_wait: config.ack_wait, max_ack_pending: config.max_ack_pending })
          .catch(() => {}); // tuning only: the old values still deliver everything
      }
    }
    // Frames held for a slow reader must not be redelivered (ack_wait is short so that deliveries lost in a
    // failover come back quickly): tell JetStream they are in progress.
    const every = Math.max(250, Math.floor(d.ackWaitMs / 3));
    this.#progressTimer = setInterval(() => {
      const now = performance.now();
      for (const e of this.#pendingBySeq.values()) {
        if (now - e.touched < every) continue;
        e.touched = now;
        try {
          e.msg.working();
        } catch {
          /* connection gone: redelivery will follow */
        }
      }
    }, every);
    this.#progressTimer.unref();
    void this.#pullLoop();
  }

  async #pullLoop(): Promise<void> {
    const d = this.#session.cfg.durable;
    const ns = this.#session.cfg.namespace;
    while (!this.#stopped) {
      try {
        const consumer = await this.#session.js.consumers.get(streamName(ns), consumerName(this.#agent));
        const messages = await consumer.consume({
          max_messages: Math.min(d.maxAckPending, 256),
          expires: d.pullExpiresMs,
          idle_heartbeat: Math.max(500, Math.floor(d.pullExpiresMs / 2)),
          bind: true,
        });
        this.#messages = messages;
        if (this.#stopped) {
          messages.stop();
          break;
        }
        for await (const m of messages) this.#dispatch(m);
      } catch {
        /* the consumer or its leader is unavailable for a moment; pull again below */
      }
      if (!this.#stopped) await new Promise((r) => setTimeout(r, 250));
    }
  }

  #dispatch(m: JsMsg): void {
    if (this.#stopped) {
      m.nak(this.#session.cfg.durable.pullExpiresMs + 500); // see release()
      return;
    }
    const p = parse(m.data);
    const frameLength = m.data.byteLength - HEADER_BYTES;
    if (p === undefined || p.op !== Op.Data || frameLength > this.#session.frameLimit()) {
      m.term(); // not ours, or hostile: never redeliver it
      return;
    }
    const frame = copyBody(m.data, HEADER_BYTES);
    const key = contentKey(m.data);
    if (this.#seen.has(key)) {
      m.ack(); // a redelivery of a frame the agent already took (its ack was lost, e.g. in a failover)
      return;
    }
    const queued = this.#pendingBySeq.get(m.seq);
    if (queued !== undefined) {
      queued.msg = m; // redelivered while still queued: keep one copy, acknowledge the newest delivery
      queued.touched = performance.now();
      return;
    }
    if (this.#pendingByKey.has(key)) {
      m.ack(); // the same message stored twice: deliver once
      return;
    }
    const mailbox = this.#currentMailbox();
    if (mailbox === undefined || mailbox.inbox.bytes + frame.byteLength > this.#session.cfg.maxQueuedBytes) {
      m.nak(1000); // nobody reads, or the reader is far behind: let JetStream hold it
      return;
    }
    const entry: Entry = { frame, key, seq: m.seq, msg: m, touched: performance.now() };
    this.#pendingBySeq.set(m.seq, entry);
    this.#pendingByKey.set(key, entry);
    mailbox.inbox.push(entry);
  }

  /** The reader asked for the next frame: the entries it took are done. */
  acknowledge(entry: Entry): void {
    this.#forget(entry);
    entry.msg.ack();
    this.#seen.add(entry.key);
    if (this.#seen.size > this.#session.cfg.durable.dedupeWindow) {
      const oldest = this.#seen.values().next().value;
      if (oldest !== undefined) this.#seen.delete(oldest);
    }
  }

  /**
   * Gives entries back to JetStream for redelivery (nobody here will read them). The nak is delayed past the
   * expiry of our last pull request: JetStream would otherwise hand them straight back to that request, whose
   * inbox is gone, and they would come back only after `ackWaitMs`, behind newer messages. Naks go in stream
   * order, so the redelivery keeps it.
   */
  release(entries: Entry[]): void {
    entries.sort((a, b) => a.seq - b.seq);
    const delay = this.#session.cfg.durable.pullExpiresMs + 500;
    for (const e of entries) {
      this.#forget(e);
      try {
        e.msg.nak(delay);
      } catch {
        /* connection gone: ack_wait redelivers it */
      }
    }
  }

  /**
   * A mailbox was closed while the listener still accepts: its unfinished entries move, in order, to the next
   * mailbox instead of a round trip through JetStream (which could reorder them behind newer deliveries).
   */
  requeue(entries: Entry[]): void {
    if (this.#isClosed || this.#stopped) return this.release(entries);
    entries.sort((a, b) => a.seq - b.seq);
    const mb = this.#currentMailbox();
    for (const e of entries) {
      if (mb === undefined || !mb.inbox.push(e)) this.release([e]);
    }
  }

  #forget(e: Entry): void {
    if (this.#pendingBySeq.get(e.seq) === e) this.#pendingBySeq.delete(e.seq);
    if (this.#pendingByKey.get(e.key) === e) this.#pendingByKey.delete(e.key);
  }

  /** The open mailbox, creating (and offering) one if the previous ended and someone may still read. */
  #currentMailbox(): Mailbox | undefined {
    if (this.#mailbox !== undefined && !this.#mailbox.ended) return this.#mailbox;
    if (this.#isClosed) return undefined;
    const mb = new Mailbox(this, this.addr, this.#session.frameLimit());
    this.#mailbox = mb;
    const a = this.#acceptors.shift();
    if (a !== undefined) a.resolve({ done: false, value: mb });
    else this.#offered = mb;
    return mb;
  }

  mailboxEnded(mb: Mailbox): void {
    if (this.#offered === mb) this.#offered = undefined;
    if (this.#mailbox === mb) this.#mailbox = undefined;
    this.#maybeStop();
  }

  /** Stops accepting; resolves once the acknowledgements sent so far reached the server. */
  close(): Promise<void> {
    if (this.#isClosed) return Promise.resolve();
    this.#isClosed = true;
    for (const a of this.#acceptors.splice(0)) a.resolve(DONE);
    if (this.#offered !== undefined) {
      const mb = this.#offered;
      this.#offered = undefined;
      mb.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
    }
    this.#maybeStop();
    return this.#session.flushed();
  }

  /** Resolves once the acknowledgements (and naks) sent so far reached the server. */
  flushed(): Promise<void> {
    return this.#session.flushed();
  }

  sessionClosed(err: SealwireError): void {
    this.#isClosed = true;
    for (const a of this.#acceptors.splice(0)) a.resolve(DONE);
    this.#mailbox?.abort(err);
    this.#maybeStop();
  }

  /** Stops pulling once nobody can read any more: the listener is closed and no mailbox is open. */
  #maybeStop(): void {
    if (this.#stopped || !this.#isClosed || (this.#mailbox !== undefined && !this.#mailbox.ended)) return;
    this.#stopped = true;
    clearInterval(this.#progressTimer);
    this.#messages?.stop();
    this.release([...this.#pendingBySeq.values()]);
    this.#session.users.delete(this);
    this.#router.durableHolder = false;
    this.#router.maybeDone();
    this.#onEnd();
  }

  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    if (this.#iterated) throw alreadyIterated("listener");
    this.#iterated = true;
    const iterator: AsyncIterator<Connection> & AsyncIterable<Connection> = {
      next: () => {
        const mb = this.#offered;
        if (mb !== undefined) {
          this.#offered = undefined;
          return Promise.resolve({ done: false, value: mb });
        }
        if (this.#isClosed) return Promise.resolve(DONE);
        return new Promise((resolve, reject) => this.#acceptors.push({ resolve, reject }));
      },
      return: async () => {
        await this.close();
        return DONE;
      },
      throw: async (reason?: unknown) => {
        await this.close();
        throw reason;
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NatsDurableListener";
  }
}

/** The receive-only connection a durable listener yields: the agent's mailbox. */
class Mailbox implements Connection {
  readonly remoteAddr: string;
  readonly remotePeer = undefined;
  readonly maxFrameBytes: number;
  readonly closed: Promise<Error | undefined>;
  readonly inbox: Inbox<Entry>;
  readonly #owner: DurableListener;
  readonly #taken: Entry[] = [];
  #resolveClosed!: (e: Error | undefined) => void;
  #state: State = State.Open;
  #iterated = false;

  constructor(owner: DurableListener, addr: string, maxFrameBytes: number) {
    this.#owner = owner;
    this.remoteAddr = `${addr}#mailbox`;
    this.maxFrameBytes = maxFrameBytes;
    this.inbox = new Inbox<Entry>(
      (e) => e.frame.byteLength,
      (e) => this.#taken.push(e),
    );
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get isOpen(): boolean {
    return this.#state === State.Open;
  }
  get ended(): boolean {
    return this.#state !== State.Open;
  }

  send(frame: Uint8Array): boolean {
    void frame;
    throw invalid("a durable mailbox connection is receive-only; reply by dialling the sender's address");
  }

  drain(): Promise<void> {
    return this.#state === State.Open ? Promise.resolve() : Promise.reject(sealwireError("ERR_CONNECTION_CLOSED", "the mailbox was closed"));
  }

  /**
   * Stops reading: frames not yet taken, and the one being handled, are not acknowledged. They go to the next
   * mailbox if the listener is still open, else back to the stream for redelivery.
   */
  close(): Promise<void> {
    if (this.#state !== State.Open) return Promise.resolve();
    this.#state = State.Closed;
    const unfinished = [...this.#taken.splice(0), ...this.inbox.stop()];
    this.#resolveClosed(undefined);
    this.#owner.requeue(unfinished);
    this.#owner.mailboxEnded(this);
    return this.#owner.flushed();
  }

  /**
   * Aborts: the frame the reader took is acknowledged (it was handled: the agent aborts after refusing it); the
   * rest go to the next mailbox, or back to the stream if the listener is closed.
   */
  abort(err?: Error): void {
    if (this.#state !== State.Open) return;
    const error = err instanceof Error ? err : sealwireError("ERR_CONNECTION_ABORTED", "the mailbox was aborted locally");
    this.#state = State.Aborted;
    for (const e of this.#taken.splice(0)) this.#owner.acknowledge(e);
    const unfinished = this.inbox.fail(error);
    this.#resolveClosed(error);
    this.#owner.requeue(unfinished);
    this.#owner.mailboxEnded(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterated) throw alreadyIterated("connection");
    this.#iterated = true;
    const iterator: AsyncIterator<Uint8Array> & AsyncIterable<Uint8Array> = {
      next: async () => {
        // The ack seam: asking for the next frame means the previous ones were handled.
        if (this.#state === State.Open) for (const e of this.#taken.splice(0)) this.#owner.acknowledge(e);
        const r = await this.inbox.next();
        return r.done === true ? DONE : { done: false, value: r.value.frame };
      },
      return: async () => {
        await this.close();
        return DONE;
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  get [Symbol.toStringTag](): string {
    return "NatsMailbox";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The transport

class NatsTransport implements Transport {
  readonly [transportSymbol] = true as const;
  readonly kind: string;
  readonly maxFrameBytes: number;
  readonly #cfg: Config;
  #session: Promise<Session> | undefined;
  /** Durable listeners of this transport, by agent (a second listen is ERR_ADDRESS_IN_USE). */
  readonly #durableListeners = new Set<string>();

  constructor(cfg: Config) {
    this.#cfg = cfg;
    this.kind = cfg.mode === "core" ? "nats" : "nats-durable";
    this.maxFrameBytes = cfg.maxFrameBytes;
  }

  /** The current session (opening the NATS connection if needed), with one reference taken for the caller. */
  async #acquire(signal: AbortSignal | undefined, what: string): Promise<Session> {
    for (;;) {
      const p = (this.#session ??= this.#open());
      let s: Session;
      try {
        s = await p;
      } catch (err) {
        if (this.#session === p) this.#session = undefined;
        throw err;
      }
      if (signal?.aborted) throw abortError(signal, what);
      if (s.closed) {
        if (this.#session === p) this.#session = undefined;
        continue;
      }
      s.acquire();
      return s;
    }
  }

  async #open(): Promise<Session> {
    const cfg = this.#cfg;
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers: cfg.hostPorts,
        ...(cfg.tls !== undefined ? { tls: cfg.tls as never } : cfg.requireTls ? { tls: {} } : {}),
        ...(cfg.authenticator !== undefined ? { authenticator: cfg.authenticator } : {}),
        ...(cfg.inboxPrefix !== undefined ? { inboxPrefix: cfg.inboxPrefix } : {}),
        name: cfg.name,
        timeout: cfg.connectTimeoutMs,
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 250,
        reconnectJitter: 100,
        reconnectJitterTLS: 250,
        pingInterval: 10_000,
        maxPingOut: 2,
        // Plaintext is allowed to loopback servers only: never follow cluster gossip to other hosts.
        ignoreClusterUpdates: !cfg.requireTls && !cfg.insecure,
        noAsyncTraces: true,
      });
    } catch (err) {
      throw mapNatsError(err, "connecting to NATS");
    }
    return new Session(nc, cfg, (s) => {
      void this.#session?.then((cur) => {
        if (cur === s) this.#session = undefined;
      });
    });
  }

  async listen(addr: string, options?: ListenOptions): Promise<Listener> {
    const [ns, agent] = this.#parse(addr, "listen(addr)");
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "listen()");
    const session = await this.#acquire(signal, "listen()");
    const canonical = `nats://${ns}/${agent}`;
    const subject = coreSubject(ns, agent);
    let router = session.routers.get(subject);
    try {
      if (router?.active === true || this.#durableListeners.has(agent)) {
        throw sealwireError("ERR_ADDRESS_IN_USE", `something already listens at ${canonical}; close it or pick another agent id`);
      }
      if (router === undefined) {
        await this.#probe(session, subject, canonical);
        router = session.routers.get(subject);
        if (router?.active === true) {
          throw sealwireError("ERR_ADDRESS_IN_USE", `something already listens at ${canonical}; close it or pick another agent id`);
        }
        if (router === undefined) {
          const r: Router = new Router(session, ns, agent, () => {
            if (session.routers.get(subject) === r) session.routers.delete(subject);
            session.release();
          });
          session.routers.set(subject, r);
          session.acquire(); // held by the router until its last connection ends
          router = r;
        }
        await router.flush();
      }
    } catch (err) {
      session.release();
      throw SealwireError.is(err) ? err : mapNatsError(err, "listen()");
    }
    if (this.#cfg.mode === "core") {
      const l = new CoreListener(canonical, router);
      router.listener = l;
      session.release(); // the router holds the session for the listener
      return l;
    }
    router.durableHolder = true;
    this.#durableListeners.add(agent);
    const r = router;
    const listener = new DurableListener(session, canonical, agent, r, () => {
      this.#durableListeners.delete(agent);
      session.release();
    });
    try {
      await listener.start();
    } catch (err) {
      await listener.close();
      throw SealwireError.is(err) ? err : mapNatsError(err, "listen()");
    }
    return listener;
  }

  /** Fails with ERR_ADDRESS_IN_USE if another transport (any process) listens at `subject`. */
  async #probe(session: Session, subject: string, canonical: string): Promise<void> {
    let answered = false;
    try {
      const m = await session.nc.request(subject, encode(Op.Probe, new Uint8Array(16), 0), { timeout: PROBE_TIMEOUT_MS });
      answered = parse(m.data)?.op === Op.Here;
    } catch {
      // No responders (nobody subscribed) or a timeout (only an eavesdropper that never answers): free.
    }
    if (answered) {
      throw sealwireError("ERR_ADDRESS_IN_USE", `another process already listens at ${canonical}; two agents must not share an id`);
    }
  }

  async dial(addr: string, options?: DialOptions): Promise<Connection> {
    const [ns, agent] = this.#parse(addr, "dial(addr)");
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "dial()");
    // options.remotePeer is not verified: NATS authenticates nobody (the envelopes do, end to end).
    const session = await this.#acquire(signal, "dial()");
    const canonical = `nats://${ns}/${agent}`;
    if (this.#cfg.mode === "durable") {
      try {
        await session.ensureStream();
      } catch (err) {
        session.release();
        throw SealwireError.is(err) ? err : mapNatsError(err, "dial()");
      }
      if (signal?.aborted) {
        session.release();
        throw abortError(signal, "dial()");
      }
      return new DurableOutConnection(session, canonical, agent, () => session.release());
    }
    const connId = defaultProvider.randomBytes(16);
    const connHex = hex(connId);
    const conn = new CoreConnection(session, {
      connId,
      sendSubject: coreSubject(ns, agent),
      replyTo: `${session.prefix}.${connHex}`,
      remoteAddr: canonical,
      state: State.Dialling,
      onEnd: (c) => {
        if (session.outConns.get(c.connHex) === c) session.outConns.delete(c.connHex);
        session.release();
      },
    });
    session.outConns.set(connHex, conn);
    await conn.dial(signal, this.#cfg.dialTimeoutMs);
    return conn;
  }

  addressFor(agentId: string): string {
    if (typeof agentId !== "string" || !ID_RE.test(agentId)) {
      throw invalid("addressFor(agentId): agentId must be 1 to 64 characters from [A-Za-z0-9_-]");
    }
    return `nats://${this.#cfg.namespace}/${agentId}`;
  }

  #parse(addr: unknown, what: string): [string, string] {
    const [ns, agent] = parseAddr(addr, what);
    if (ns !== this.#cfg.namespace) {
      throw invalid(`${what}: address is in namespace "${ns}" but this transport serves "${this.#cfg.namespace}"`);
    }
    return [ns, agent];
  }

  get [Symbol.toStringTag](): string {
    return "NatsTransport";
  }

  /** Never shows credentials or TLS keys. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `NatsTransport(${this.kind}, namespace=${this.#cfg.namespace}, servers=${this.#cfg.hostPorts.join(",")})`;
  }

  toJSON(): { kind: string; namespace: string } {
    return { kind: this.kind, namespace: this.#cfg.namespace };
  }
}

/**
 * Creates a NATS transport. Options are validated here; the NATS connection opens on the first `listen` or
 * `dial`.
 *
 * @throws SealwireError `ERR_INVALID_ARGUMENT` for a bad, unknown or conflicting option; `ERR_INSECURE_TRANSPORT`
 *   for plaintext to a non-loopback server (or `rejectUnauthorized: false`) without `insecure: true`.
 */
export function nats(init: NatsInit): Transport {
  return new NatsTransport(resolveConfig(init));
}

/** Exposed for tests and tools: the subject an agent's core traffic uses (validated like an address). */
export function natsSubjectFor(namespace: string, agentId: string): string {
  if (typeof namespace !== "string" || typeof agentId !== "string") throw invalid("natsSubjectFor(): namespace and agentId must be strings");
  parseAddr(`nats://${namespace}/${agentId}`, "natsSubjectFor()");
  return coreSubject(namespace, agentId);
}

/** The error codes this module raises beyond the shared transport ones, for documentation. */
export const NATS_ERROR_CODES: readonly ErrorCode[] = ["ERR_INSECURE_TRANSPORT", "ERR_AUTH_FAILED", "ERR_TLS", "ERR_PROTOCOL"];
