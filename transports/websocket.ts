/**
 * The WebSocket transport: frames over `wss://` (TLS, optionally mutual TLS) or `ws://` between hosts, with the
 * same semantics as every other sealwire transport (whole ordered frames, bounded queues, backpressure, graceful
 * close vs. abort, an `AbortSignal` and a time limit on every wait). The only module that imports `ws`.
 *
 * **Plaintext is refused.** A `ws://` address is accepted only when something else protects the frames: the Noise
 * transport passes `channelSecured: true` on every `dial`/`listen` (so `noise(webSocket())` over `ws://` needs no
 * certificates: the peers' static keys are pinned in the TrustStore), or the transport was created with
 * `insecure: true`, which warns once. Otherwise `listen`/`dial` fail with `ERR_INSECURE_TRANSPORT` before any
 * socket is opened.
 *
 * **TLS.** Options pass through under `init.tls` with Node's names (`ca`, `cert`, `key`, `passphrase`, `pfx`,
 * `crl`, `minVersion`, `requestCert`, `servername`). Certificate checks are never turned off: `rejectUnauthorized`
 * may only be `true`, and `minVersion` defaults to TLS 1.3 (1.2 allowed, nothing lower). The same `tls` options
 * serve both roles, as in Node: a listener presents `cert`/`key` and, with `requestCert: true`, requires a client
 * certificate issued by `ca` (mutual TLS); a dialler verifies the server against `ca` (default: Node's root CAs)
 * and presents `cert`/`key` if the server asks.
 *
 * **`kind` is `"websocket"`** for every instance, whatever scheme an address uses. The Noise transport binds
 * `kind` into its prologue, so it must be the same on both ends: a client dialling `wss://` through a
 * TLS-terminating proxy to a server listening on `ws://` still agrees with it. The scheme in use is visible in each
 * connection's address.
 *
 * **Limits** (see {@link WebSocketInit}): frame size (`ws` `maxPayload`; an oversize inbound frame aborts the
 * connection with `ERR_FRAME_TOO_LARGE`), opening-handshake time on both ends (a socket that never completes the
 * HTTP upgrade is dropped), close-handshake time, ping/pong liveness, per-remote-address and per-listener
 * connection counts (which evict the oldest unfinished socket rather than refuse a newcomer, so a flood of stalled
 * sockets cannot keep new peers out; every refusal and eviction can be counted through `onRefusal`), a backlog of
 * upgraded-but-not-accepted connections, and send/receive queues: `send` returns
 * `false` above `highWaterMarkBytes` of unflushed data (`bufferedAmount`) and throws `ERR_QUEUE_FULL` at
 * `maxQueuedBytes`; a receiver that does not read stops reading its socket at `highWaterMarkBytes`, so TCP pushes
 * back on the sender. Only binary frames are carried: a text frame aborts the connection with `ERR_PROTOCOL`.
 * Errors never quote peer-supplied bytes (close reasons, HTTP status texts, certificate names).
 *
 * **Close and abort.** `close()` sends the WebSocket close frame (RFC 6455 §5.5.1) after everything already sent,
 * keeps delivering frames the peer sent before it saw the close, and resolves when the close handshake completes;
 * the remote iterator then ends. If the connection is aborted first (by the peer, a timeout, `closeTimeoutMs`, or
 * `abort()`), `close()` rejects with that error: delivery was not confirmed. `abort()` drops the TCP connection without a close frame; the remote sees close
 * code 1006 and its iterator throws `ERR_CONNECTION_ABORTED`. A close frame with a code other than 1000 (normal),
 * 1001 (going away) or 1005 (no code) also counts as an abort.
 *
 * **Reconnecting.** A `Connection` is one connection, never silently replaced (frames sent on a dead connection
 * must fail visibly, not vanish into a new one). Long-lived clients use {@link reconnecting} (a loop of fresh
 * connections, jittered exponential backoff between them) or {@link dialWithBackoff}; both take any `Transport`,
 * so `noise(webSocket())` reconnects with a fresh handshake each time.
 *
 * `addressFor` is not defined: WebSocket peers are reached at explicit addresses.
 *
 * @module
 * @example
 * ```ts
 * import { readFileSync } from "node:fs";
 * import { webSocket } from "sealwire/transports/websocket";
 *
 * // Server with mutual TLS: presents its certificate, requires one issued by the crew's CA.
 * const server = webSocket({
 *   tls: { cert: readFileSync("hub.crt"), key: readFileSync("hub.key"), ca: readFileSync("ca.crt"), requestCert: true },
 * });
 * const listener = await server.listen("wss://0.0.0.0:7700/sealwire");
 *
 * // Client: verifies the hub against the same CA and presents its own certificate.
 * const client = webSocket({ tls: { ca: readFileSync("ca.crt"), cert: readFileSync("pi.crt"), key: readFileSync("pi.key") } });
 * const conn = await client.dial("wss://hub.lan:7700/sealwire", { signal: AbortSignal.timeout(5000) });
 * if (!conn.send(new TextEncoder().encode("hi"))) await conn.drain();
 * await conn.close();
 * ```
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import { createServer as createHttpsServer, type ServerOptions as HttpsServerOptions } from "node:https";
import { isIP, type Socket } from "node:net";
import {
  connect as tlsConnect,
  createSecureContext,
  type ConnectionOptions,
  type SecureContext,
  type SecureContextOptions,
} from "node:tls";
import WebSocket, { WebSocketServer } from "ws";
import { defaultProvider } from "../src/_crypto.js";
import { SealwireError, sealwireError } from "../src/errors.js";
import { reportRefusal, type Refusal } from "../src/refusal-counter.js";
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
/** Default largest frame: 1 MiB (the `ws` `maxPayload`). */
const DEFAULT_MAX_FRAME_BYTES = 1 * MiB;
/** Default per-direction high-water mark: 1 MiB. */
const DEFAULT_HIGH_WATER_MARK_BYTES = 1 * MiB;
/** Default hard limit is this many high-water marks (but never less than one max frame above the mark). */
const DEFAULT_QUEUE_FACTOR = 8;
/** Default time for TCP connect + TLS + HTTP upgrade, on both ends. */
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Default time a close handshake may take before the socket is dropped (the connection then counts as aborted). */
const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;
/** Default interval between liveness pings. */
const DEFAULT_PING_INTERVAL_MS = 30_000;
/** Default time to wait for a pong (or any other inbound frame) after a ping. */
const DEFAULT_PONG_TIMEOUT_MS = 10_000;
/** Default upgraded connections per remote IP address and listener (and as many more still handshaking). */
const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 64;
/** Default sockets per listener, handshaking or upgraded. */
const DEFAULT_MAX_CONNECTIONS = 1024;
/** New TCP connections accepted per remote IP address per second, sustained (a token bucket; see the option). */
const DEFAULT_CONNECTION_RATE_PER_ADDRESS = 10;
/** Addresses whose connection rate a listener remembers (least recently seen forgotten first). */
const MAX_RATE_BUCKETS = 65_536;
/** How much later than `handshakeTimeoutMs` Node's own TLS handshake timeout fires (a backstop only). */
const TLS_TIMEOUT_BACKSTOP_MS = 1_000;
/** Default upgraded connections waiting for the listener's iterator to take them. */
const DEFAULT_BACKLOG = 128;
/**
 * Bookkeeping cost charged per queued frame on top of its length, in both directions. Without it a flood of
 * empty frames would grow a queue without bound while its byte count stays (nearly) 0.
 */
const FRAME_OVERHEAD_BYTES = 16;
/** Largest WebSocket frame header (2 + 8 length + 4 mask bytes, RFC 6455 §5.2); `bufferedAmount` counts it. */
const MAX_FRAME_HEADER_BYTES = 14;
/** Largest HTTP upgrade request head the server parses (Node's default is 16 KiB; a WebSocket upgrade needs ~300 B). */
const MAX_HEADER_BYTES = 8 * KiB;
/** Upper bounds on the options, so a typo (or a unit mistake) cannot configure an effectively unbounded limit. */
const MAX_FRAME_BYTES_LIMIT = 256 * MiB;
const MAX_QUEUED_BYTES_LIMIT = 4096 * MiB;
const MAX_TIMEOUT_MS = 3_600_000;
const MAX_COUNT = 1_000_000;
const MAX_ADDR_CHARS = 2048;

const INIT_KEYS: ReadonlySet<string> = new Set([
  "tls",
  "insecure",
  "logger",
  "maxFrameBytes",
  "highWaterMarkBytes",
  "maxQueuedBytes",
  "handshakeTimeoutMs",
  "closeTimeoutMs",
  "pingIntervalMs",
  "pongTimeoutMs",
  "maxConnectionsPerAddress",
  "maxConnections",
  "connectionRatePerAddress",
  "localAddress",
  "backlog",
  "allowedOrigins",
  "onRefusal",
]);
const TLS_KEYS: ReadonlySet<string> = new Set([
  "ca",
  "cert",
  "key",
  "passphrase",
  "pfx",
  "crl",
  "minVersion",
  "requestCert",
  "rejectUnauthorized",
  "servername",
]);
/** TLS versions a caller may ask for as the minimum. Anything older is refused (RFC 8996 deprecates 1.0/1.1). */
const TLS_VERSIONS: ReadonlySet<string> = new Set(["TLSv1.2", "TLSv1.3"]);

/**
 * TLS options, passed through to Node's `tls`/`https` under their Node names. One object serves both roles:
 * a listener presents `cert`/`key` (or `pfx`) and verifies client certificates against `ca`; a dialler verifies
 * the server against `ca` and presents `cert`/`key` when the server asks for a client certificate.
 */
export interface WebSocketTlsOptions {
  /** Trusted CA certificates (PEM). Replaces Node's root CAs when given. Required with `requestCert`. */
  ca?: SecureContextOptions["ca"];
  /** This end's certificate chain (PEM): the server certificate, or the client certificate for mutual TLS. */
  cert?: SecureContextOptions["cert"];
  /** The private key of `cert` (PEM). Never logged, never shown by `util.inspect`. */
  key?: SecureContextOptions["key"];
  /** Passphrase of an encrypted `key` or `pfx`. */
  passphrase?: string;
  /** PKCS#12 bundle holding key and certificate, instead of `cert` + `key`. */
  pfx?: SecureContextOptions["pfx"];
  /** Certificate revocation lists (PEM). */
  crl?: SecureContextOptions["crl"];
  /**
   * Lowest TLS version negotiated.
   * @default "TLSv1.3"
   */
  minVersion?: "TLSv1.2" | "TLSv1.3";
  /**
   * Listener only: require a client certificate issued by `ca` (mutual TLS). Clients without one, or with one
   * from another CA, are refused during the TLS handshake.
   * @default false
   */
  requestCert?: boolean;
  /**
   * Always `true`: certificate checks are never turned off. Present only so that code copied from examples that
   * set it to `false` fails loudly (`ERR_INVALID_ARGUMENT`) instead of silently trusting any certificate.
   */
  rejectUnauthorized?: true;
  /**
   * Dialler only: the name sent as SNI and checked against the server certificate, when it differs from the
   * address's host (e.g. dialling `wss://10.0.0.2:7700` to a certificate for `hub.lan`).
   * @default the address's host
   */
  servername?: string;
}

/** A pino-like logger. Only `warn` is used, with a fields object first (never secrets or payload bytes). */
export interface WebSocketLogger {
  warn(obj: Record<string, unknown>, msg?: string): void;
}

/** Options for {@link webSocket}. Sizes are in bytes, times in milliseconds. */
export interface WebSocketInit {
  /** TLS options for `wss://` addresses (required to listen on `wss://`). */
  tls?: WebSocketTlsOptions | undefined;
  /**
   * Allow `ws://` without a secure channel above it: frames cross the network in plaintext. Warns once per
   * transport, through `logger.warn` if given, else `process.emitWarning` (code `SEALWIRE_INSECURE_TRANSPORT`).
   * Prefer `noise(webSocket())`, which needs no certificates.
   * @default false
   */
  insecure?: boolean | undefined;
  /** Where the `insecure` warning goes. @default process.emitWarning */
  logger?: WebSocketLogger | undefined;
  /**
   * Largest frame `send` accepts and the peer may send (the `ws` `maxPayload`). Larger inbound frames abort the
   * connection with `ERR_FRAME_TOO_LARGE`. Both ends should use the same value.
   * @default 1048576 (1 MiB)
   */
  maxFrameBytes?: number | undefined;
  /**
   * Per connection and direction. Outbound: once this many bytes are written but not yet flushed to the socket
   * (`bufferedAmount`, plus 16 bytes per frame), `send` returns `false`; await `drain()`. Inbound: once this many
   * bytes wait for the application to read them, the socket is paused, so TCP pushes back on the sender.
   * @default 1048576 (1 MiB)
   */
  highWaterMarkBytes?: number | undefined;
  /**
   * Per connection, the hard outbound limit: a `send` that would leave more than this unflushed throws
   * `ERR_QUEUE_FULL` and the frame is not sent. At least `highWaterMarkBytes + maxFrameBytes + 30`, so a sender
   * that awaits `drain()` whenever `send` returns `false` never sees `ERR_QUEUE_FULL`.
   * @default max(8 × highWaterMarkBytes, highWaterMarkBytes + maxFrameBytes + 30)
   */
  maxQueuedBytes?: number | undefined;
  /**
   * Time for the opening handshake (TCP connect, TLS, HTTP upgrade). A dial that takes longer fails with
   * `ERR_TIMEOUT`; a listener drops a socket that has not completed its upgrade by then.
   * @default 10000
   */
  handshakeTimeoutMs?: number | undefined;
  /**
   * Time `close()` waits for the peer's close frame; then the socket is dropped and the connection counts as
   * aborted (`close()` rejects, `closed` resolves with `ERR_CONNECTION_ABORTED`).
   * @default 10000
   */
  closeTimeoutMs?: number | undefined;
  /**
   * Interval between liveness pings on each connection; `0` disables liveness checks.
   * @default 30000
   */
  pingIntervalMs?: number | undefined;
  /**
   * After a ping, if nothing (no pong, no frame) arrives within this time the connection is aborted with
   * `ERR_TIMEOUT`. Not checked while this end has stopped reading because its application is not keeping up;
   * such an end sends heartbeats instead, so its peer does not time it out either. Use the same liveness
   * settings on both ends.
   * @default 10000
   */
  pongTimeoutMs?: number | undefined;
  /**
   * Listener: upgraded connections per remote IP address; further upgrades are refused with HTTP 429 (the dialler
   * sees `ERR_CONNECTION_REFUSED`). Sockets still in their opening handshake are limited to the same number per
   * address: a new socket from an address at that limit evicts the address's own oldest handshaking socket (so a
   * stalled flood from one address cannot lock out a legitimate client behind the same address).
   * @default 64
   */
  maxConnectionsPerAddress?: number | undefined;
  /**
   * Listener: sockets in total (handshaking or upgraded). At the limit a new TCP connection evicts the oldest
   * socket that has not finished its opening handshake (TLS + HTTP upgrade), or else the oldest upgraded
   * connection the application has not accepted yet; it is dropped at accept only when every socket is an
   * accepted connection. So a flood of stalled sockets, from any number of addresses, cannot keep new peers out.
   * @default 1024
   */
  maxConnections?: number | undefined;
  /**
   * Listener: new TCP connections accepted per remote IP address per second, sustained; bursts of twice that
   * are allowed (a token bucket). Beyond it a new socket is closed at accept, before
   * any TLS or HTTP work (`onRefusal`: `ws_rate_limited`), so a flood from an address costs the listener almost
   * nothing. Agents keep their connections open, so an honest client reconnecting with backoff never meets it.
   * `0` turns it off.
   * @default 10
   */
  connectionRatePerAddress?: number | undefined;
  /**
   * Dialler: the local IP address outgoing connections are bound to (a host with several addresses, or tests
   * that play several hosts on loopback). @default the system's choice
   */
  localAddress?: string | undefined;
  /**
   * Listener: upgraded connections not yet taken by the listener's iterator. Further upgrades are refused with
   * HTTP 503 (`ERR_CONNECTION_REFUSED` for the dialler).
   * @default 128
   */
  backlog?: number | undefined;
  /**
   * Listener: browser origins allowed to connect. An upgrade request carrying an `Origin` header (which every
   * browser sends, and no sealwire client does) is refused with HTTP 403 unless its origin is listed, so a web
   * page cannot reach an agent or hub on localhost or the LAN (cross-site WebSocket hijacking).
   * @default []
   */
  allowedOrigins?: readonly string[] | undefined;
  /**
   * Listener: told of every refusal, eviction and abuse-driven close, for aggregated auditing (pass a
   * `RefusalCounter`'s `onRefusal`). `source` is the remote IP address. Reasons:
   * - `ws_evicted`: at `maxConnections`, a socket that had not finished its opening handshake (or an upgraded
   *   connection not yet accepted) was dropped to make room for a new one (source: the evicted socket);
   * - `ws_max_connections`: at `maxConnections` with every socket an accepted connection, a new one was dropped;
   * - `ws_rate_limited`: a new socket from an address over `connectionRatePerAddress` was closed at accept;
   * - `ws_per_address_evicted`: at `maxConnectionsPerAddress` handshaking sockets, the address's oldest was dropped;
   * - `ws_per_address`: an upgrade refused with HTTP 429 (`maxConnectionsPerAddress` upgraded connections);
   * - `ws_backlog`: an upgrade refused with HTTP 503 (`backlog` unaccepted connections);
   * - `ws_handshake_timeout`: a socket that had not completed TLS + the upgrade within `handshakeTimeoutMs`
   *   (a stalled client, or slowloris trickling its request) was dropped;
   * - `ws_tls_failed`: the TLS handshake failed (no or a bad client certificate, not TLS at all);
   * - `ws_bad_request`: a malformed HTTP request or upgrade, a wrong path, a refused origin, or plain HTTP;
   * - `ws_oversize`: a frame above `maxFrameBytes` aborted a connection;
   * - `ws_malformed`: a protocol violation (text frame, unmasked frame, bad opcode, ...) aborted a connection;
   * - `ws_liveness_timeout`: a connection that answered no ping within `pongTimeoutMs` (a dead peer, or one
   *   trickling a frame slowly) was aborted.
   *
   * Called synchronously; a throw or a rejected promise is ignored. Never given key bytes or frame contents.
   */
  onRefusal?: ((r: Refusal) => unknown) | undefined;
}

/** Validated, complete configuration shared by a transport's listeners and connections. */
interface Config {
  readonly maxFrameBytes: number;
  readonly highWaterMarkBytes: number;
  readonly maxQueuedBytes: number;
  readonly handshakeTimeoutMs: number;
  readonly closeTimeoutMs: number;
  readonly pingIntervalMs: number;
  readonly pongTimeoutMs: number;
  readonly maxConnectionsPerAddress: number;
  readonly maxConnections: number;
  readonly connectionRatePerAddress: number;
  readonly localAddress: string | undefined;
  readonly backlog: number;
  readonly allowedOrigins: ReadonlySet<string>;
  readonly onRefusal: ((r: Refusal) => unknown) | undefined;
  readonly insecure: boolean;
  readonly logger: WebSocketLogger | undefined;
  readonly tls: TlsConfig;
}

/** TLS material prepared once: the server's options and the client's secure context. */
interface TlsConfig {
  /** Options for `https.createServer`, or `undefined` when there is no certificate to present. */
  readonly server: HttpsServerOptions | undefined;
  /** Built once, reused for every dial (parsing PEM per dial would cost more than the handshake). */
  readonly clientContext: SecureContext;
  readonly servername: string | undefined;
}

function invalid(message: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return sealwireError("ERR_INVALID_ARGUMENT", message);
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function intOption(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`webSocket(): ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** An error code from Node or OpenSSL (`ERR_OSSL_PEM_NO_START_LINE`), safe to quote: never peer or key bytes. */
function safeCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[A-Z][A-Z0-9_]{1,63}$/.test(code) ? code : undefined;
}

function resolveTls(value: unknown): TlsConfig {
  if (value === undefined) value = {};
  if (!isPlainObject(value)) throw invalid("webSocket(): tls must be an options object");
  for (const key of Object.keys(value)) {
    if (!TLS_KEYS.has(key)) {
      throw invalid(
        `webSocket(): unknown tls option "${key}"; supported: ${[...TLS_KEYS].join(", ")} ` +
          "(certificate checks cannot be customised or turned off)",
      );
    }
  }
  const o = value as WebSocketTlsOptions & Record<string, unknown>;
  if (o.rejectUnauthorized !== undefined && o.rejectUnauthorized !== true) {
    throw invalid(
      "webSocket(): tls.rejectUnauthorized can only be true: sealwire never turns certificate checks off. " +
        "For a private CA pass tls.ca; for a homelab without certificates use noise(webSocket()) over ws://",
    );
  }
  const minVersion = o.minVersion ?? "TLSv1.3";
  if (typeof minVersion !== "string" || !TLS_VERSIONS.has(minVersion)) {
    throw invalid('webSocket(): tls.minVersion must be "TLSv1.3" or "TLSv1.2"');
  }
  if (o.requestCert !== undefined && typeof o.requestCert !== "boolean") {
    throw invalid("webSocket(): tls.requestCert must be a boolean");
  }
  if (o.requestCert === true && o.ca === undefined) {
    throw invalid(
      "webSocket(): tls.requestCert needs tls.ca, the CA that issues your clients' certificates " +
        "(without it any certificate from a public CA would be accepted)",
    );
  }
  if (o.passphrase !== undefined && typeof o.passphrase !== "string") {
    throw invalid("webSocket(): tls.passphrase must be a string");
  }
  if (
    o.servername !== undefined &&
    (typeof o.servername !== "string" || o.servername.length === 0 || o.servername.length > 253 || isIP(o.servername) !== 0)
  ) {
    // RFC 6066 §3: SNI carries host names only; an IP address is checked against the certificate without it.
    throw invalid("webSocket(): tls.servername must be a host name of 1 to 253 characters (not an IP address)");
  }
  if ((o.cert === undefined) !== (o.key === undefined) && o.pfx === undefined) {
    throw invalid("webSocket(): tls.cert and tls.key go together (or use tls.pfx)");
  }
  if (o.ca !== undefined) {
    // Node silently ignores a CA that is not PEM, leaving an empty trust store: everything would be refused
    // later with a misleading certificate error. Say so now instead.
    const entries: unknown[] = Array.isArray(o.ca) ? o.ca : [o.ca];
    const isPem = (x: unknown): boolean =>
      (typeof x === "string" || Buffer.isBuffer(x)) && x.toString("latin1").includes("-----BEGIN CERTIFICATE-----");
    if (entries.length === 0 || !entries.every(isPem)) {
      throw invalid("webSocket(): tls.ca must be PEM certificates (-----BEGIN CERTIFICATE-----), as a string, Buffer or array");
    }
  }
  const material: SecureContextOptions = { minVersion: minVersion as "TLSv1.2" | "TLSv1.3" };
  if (o.ca !== undefined) material.ca = o.ca;
  if (o.cert !== undefined) material.cert = o.cert;
  if (o.key !== undefined) material.key = o.key;
  if (o.passphrase !== undefined) material.passphrase = o.passphrase;
  if (o.pfx !== undefined) material.pfx = o.pfx;
  if (o.crl !== undefined) material.crl = o.crl;
  let clientContext: SecureContext;
  try {
    // Validates the PEM now (options are checked in the constructor) and is reused by every dial.
    clientContext = createSecureContext(material);
  } catch (err) {
    const code = safeCode(err);
    // The cause is dropped on purpose: OpenSSL messages can quote parts of the PEM.
    throw invalid(
      `webSocket(): the TLS certificate, key, CA or CRL could not be loaded${code ? ` (${code})` : ""}; ` +
        "check that they are PEM and that the key matches the certificate",
    );
  }
  const hasCert = o.pfx !== undefined || o.cert !== undefined;
  const server: HttpsServerOptions | undefined = hasCert
    ? { ...material, requestCert: o.requestCert === true, rejectUnauthorized: true }
    : undefined;
  return { server, clientContext, servername: o.servername };
}

function resolveConfig(init: unknown): Config {
  if (init === undefined) init = {};
  if (!isPlainObject(init)) throw invalid("webSocket(init): init must be an options object or undefined");
  // Unknown keys are almost always typos (`maxFrameByte`) or TLS options at the wrong level (`cert`), and a
  // silently ignored limit or certificate is a missing one.
  for (const key of Object.keys(init)) {
    if (!INIT_KEYS.has(key)) {
      const hint = TLS_KEYS.has(key) ? `; TLS options go under init.tls (tls: { ${key} })` : "";
      throw invalid(`webSocket(): unknown option "${key}"${hint}`);
    }
  }
  const o = init as WebSocketInit;
  const maxFrameBytes = intOption(o.maxFrameBytes, "maxFrameBytes", 1, MAX_FRAME_BYTES_LIMIT, DEFAULT_MAX_FRAME_BYTES);
  const highWaterMarkBytes = intOption(
    o.highWaterMarkBytes,
    "highWaterMarkBytes",
    1,
    MAX_QUEUED_BYTES_LIMIT,
    DEFAULT_HIGH_WATER_MARK_BYTES,
  );
  const minQueued = highWaterMarkBytes + maxFrameBytes + FRAME_OVERHEAD_BYTES + MAX_FRAME_HEADER_BYTES;
  const maxQueuedBytes = intOption(
    o.maxQueuedBytes,
    "maxQueuedBytes",
    1,
    MAX_QUEUED_BYTES_LIMIT,
    Math.min(MAX_QUEUED_BYTES_LIMIT, Math.max(DEFAULT_QUEUE_FACTOR * highWaterMarkBytes, minQueued)),
  );
  if (maxQueuedBytes < minQueued) {
    throw invalid(
      `webSocket(): maxQueuedBytes must be at least highWaterMarkBytes + maxFrameBytes + ` +
        `${FRAME_OVERHEAD_BYTES + MAX_FRAME_HEADER_BYTES} (${minQueued}) so that a sender honouring drain() ` +
        "never hits the hard limit",
    );
  }
  if (o.insecure !== undefined && typeof o.insecure !== "boolean") throw invalid("webSocket(): insecure must be a boolean");
  if (o.logger !== undefined && (typeof o.logger !== "object" || o.logger === null || typeof o.logger.warn !== "function")) {
    throw invalid("webSocket(): logger must have a warn(obj, msg) method");
  }
  let allowedOrigins: ReadonlySet<string> = new Set();
  if (o.allowedOrigins !== undefined) {
    if (!Array.isArray(o.allowedOrigins) || !o.allowedOrigins.every((x) => typeof x === "string" && x.length > 0 && x.length <= 256)) {
      throw invalid("webSocket(): allowedOrigins must be an array of origins such as https://ops.example");
    }
    allowedOrigins = new Set(o.allowedOrigins);
  }
  if (o.onRefusal !== undefined && typeof o.onRefusal !== "function") throw invalid("webSocket(): onRefusal must be a function");
  return {
    maxFrameBytes,
    highWaterMarkBytes,
    maxQueuedBytes,
    handshakeTimeoutMs: intOption(o.handshakeTimeoutMs, "handshakeTimeoutMs", 1, MAX_TIMEOUT_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS),
    closeTimeoutMs: intOption(o.closeTimeoutMs, "closeTimeoutMs", 1, MAX_TIMEOUT_MS, DEFAULT_CLOSE_TIMEOUT_MS),
    pingIntervalMs: intOption(o.pingIntervalMs, "pingIntervalMs", 0, MAX_TIMEOUT_MS, DEFAULT_PING_INTERVAL_MS),
    pongTimeoutMs: intOption(o.pongTimeoutMs, "pongTimeoutMs", 1, MAX_TIMEOUT_MS, DEFAULT_PONG_TIMEOUT_MS),
    maxConnectionsPerAddress: intOption(
      o.maxConnectionsPerAddress,
      "maxConnectionsPerAddress",
      1,
      MAX_COUNT,
      DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    ),
    maxConnections: intOption(o.maxConnections, "maxConnections", 1, MAX_COUNT, DEFAULT_MAX_CONNECTIONS),
    connectionRatePerAddress: intOption(o.connectionRatePerAddress, "connectionRatePerAddress", 0, MAX_COUNT, DEFAULT_CONNECTION_RATE_PER_ADDRESS),
    localAddress: localAddressOption(o.localAddress),
    backlog: intOption(o.backlog, "backlog", 1, MAX_COUNT, DEFAULT_BACKLOG),
    allowedOrigins,
    onRefusal: o.onRefusal,
    insecure: o.insecure === true,
    logger: o.logger,
    tls: resolveTls(o.tls),
  };
}

function localAddressOption(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "string" || isIP(v) === 0) throw invalid("webSocket(): localAddress must be an IP address such as 127.0.0.2");
  return v;
}

/** A parsed `ws://` / `wss://` address. */
interface Target {
  readonly secure: boolean;
  /** Host without IPv6 brackets, for `listen`. */
  readonly host: string;
  readonly port: number;
  /** Always starts with `/`. */
  readonly path: string;
  /** Scheme and host as they appear in a URL (IPv6 in brackets). */
  readonly scheme: "ws:" | "wss:";
  readonly urlHost: string;
}

function formatAddr(t: Target, port = t.port): string {
  return `${t.scheme}//${t.urlHost}:${port}${t.path === "/" ? "" : t.path}`;
}

/** Parses `ws[s]://host[:port][/path]`, or throws ERR_INVALID_ARGUMENT naming the caller (never quoting `addr`). */
function parseAddr(addr: unknown, what: string, allowPortZero: boolean): Target {
  const expected = `${what} must be a ws:// or wss:// URL such as wss://127.0.0.1:7700/sealwire`;
  if (typeof addr !== "string" || addr.length === 0 || addr.length > MAX_ADDR_CHARS) throw invalid(expected);
  let url: URL;
  try {
    url = new URL(addr);
  } catch {
    throw invalid(expected);
  }
  if (url.protocol !== "ws:" && url.protocol !== "wss:") throw invalid(expected);
  // Credentials in an address end up in logs and process listings; queries and fragments have no meaning here.
  if (url.username !== "" || url.password !== "") throw invalid(`${what} must not carry a user name or password`);
  if (/[?#]/.test(addr)) throw invalid(`${what} must not have a query (?) or fragment (#)`);
  if (url.hostname === "") throw invalid(expected);
  const secure = url.protocol === "wss:";
  const port = url.port === "" ? (secure ? 443 : 80) : Number(url.port);
  if (port === 0 && !allowPortZero) throw invalid(`${what} needs a port other than 0`);
  const urlHost = url.hostname;
  const host = urlHost.startsWith("[") ? urlHost.slice(1, -1) : urlHost;
  return { secure, host, port, path: url.pathname, scheme: url.protocol, urlHost };
}

/** The error an aborted wait fails with: the signal's reason if it is a SealwireError, else ERR_ABORTED. */
function abortError(signal: AbortSignal, what: string): SealwireError {
  const reason: unknown = signal.reason;
  if (SealwireError.is(reason)) return reason;
  return sealwireError("ERR_ABORTED", `${what} was aborted by its AbortSignal`, { cause: reason });
}

/** `::ffff:10.0.0.1` (an IPv4 client of a dual-stack listener) counts as `10.0.0.1`. */
function normalizeIp(ip: string | undefined): string | undefined {
  if (ip === undefined || ip === "") return undefined;
  return ip.startsWith("::ffff:") && ip.includes(".") ? ip.slice(7) : ip;
}

function formatHostPort(ip: string, port: number | undefined): string {
  return `${ip.includes(":") ? `[${ip}]` : ip}:${port ?? 0}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Masking keys. RFC 6455 §5.3: client frames are masked with a fresh unpredictable key from a strong entropy
// source. The keys come from the crypto provider, 1024 at a time. An all-zero key is skipped: `ws` would then
// send the caller's buffer by reference instead of a masked copy, and the Transport contract lets the caller
// reuse its buffer as soon as `send` returns.

const MASK_POOL_BYTES = 4096;
let maskPool: Uint8Array = new Uint8Array(0);
let maskPos = 0;

function generateMask(mask: Buffer): void {
  do {
    if (maskPos + 4 > maskPool.length) {
      maskPool = defaultProvider.randomBytes(MASK_POOL_BYTES);
      maskPos = 0;
    }
    mask[0] = maskPool[maskPos]!;
    mask[1] = maskPool[maskPos + 1]!;
    mask[2] = maskPool[maskPos + 2]!;
    mask[3] = maskPool[maskPos + 3]!;
    maskPos += 4;
  } while ((mask[0]! | mask[1]! | mask[2]! | mask[3]!) === 0);
}

// ---------------------------------------------------------------------------------------------------------------

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: unknown): void;
}

/** A drain() call waiting for the socket to flush, with its signal cleanup. */
interface DrainWaiter extends Waiter<void> {
  cleanup(): void;
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });
/** `ws.send` options: binary frames only, never compressed (permessage-deflate is off on both ends anyway). */
const SEND_OPTIONS = Object.freeze({ binary: true, compress: false, fin: true });
/** Close codes that end a connection gracefully (RFC 6455 §7.4.1): normal, going away, no status. */
const GRACEFUL_CLOSE_CODES: ReadonlySet<number> = new Set([1000, 1001, 1005]);

function alreadyIterated(what: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return invalid(`this ${what} is already being iterated; iterate it once and fan out yourself`);
}

/** Maps an error `ws` reports on an open connection to the code sealwire promises (never quoting peer bytes). */
function connectionError(err: unknown, cfg: Config): SealwireError {
  const code = safeCode(err);
  if (code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
    return sealwireError(
      "ERR_FRAME_TOO_LARGE",
      `the peer sent a frame larger than maxFrameBytes (${cfg.maxFrameBytes}); the connection was aborted ` +
        "(both ends must use the same maxFrameBytes)",
    );
  }
  if (code?.startsWith("WS_ERR_")) {
    return sealwireError("ERR_PROTOCOL", `the peer broke the WebSocket protocol (${code}); the connection was aborted`);
  }
  return sealwireError("ERR_CONNECTION_ABORTED", `the connection was lost${code ? ` (${code})` : ""}`);
}

// Connection states.
const OPEN = 0;
/** close() was called; the close handshake is under way. Frames from the peer are still delivered. */
const CLOSING = 1;
/** The close handshake completed. */
const CLOSED = 2;
const ABORTED = 3;
type State = typeof OPEN | typeof CLOSING | typeof CLOSED | typeof ABORTED;

/** Internal options for a connection. */
interface ConnectionInit {
  readonly remoteAddr: string;
  readonly isServer: boolean;
  /** Called once when the socket has closed (releases the listener's per-address count). */
  readonly onSocketClosed?: (() => void) | undefined;
  /** Server side: reports an abuse-driven abort (oversize, malformed, liveness) to the listener's `onRefusal`. */
  readonly onRefusal?: ((reason: string) => void) | undefined;
}

/** One WebSocket, as a sealwire Connection. */
class WebSocketConnection implements Connection {
  readonly remoteAddr: string;
  readonly remotePeer: undefined = undefined;
  readonly maxFrameBytes: number;
  readonly closed: Promise<Error | undefined>;

  readonly #ws: WebSocket;
  readonly #cfg: Config;
  readonly #isServer: boolean;
  readonly #onRefusal: ((reason: string) => void) | undefined;
  #state: State = OPEN;
  /** Set once this end was aborted (locally or by the peer): drain rejects with it, send cites it as cause. */
  #error: Error | undefined;
  #resolveClosed!: (value: Error | undefined) => void;
  #settled = false;

  // Inbox: frames from the peer not yet read, oldest at #head.
  #frames: Uint8Array[] = [];
  #head = 0;
  /** Bytes (length + overhead) in the inbox; at the high-water mark the socket is paused. */
  #inboxBytes = 0;
  #paused = false;
  /** The peer's close frame arrived and the socket closed: the inbox is all there will ever be. */
  #remoteEnded = false;
  #readers: Waiter<IteratorResult<Uint8Array>>[] = [];
  #iterated = false;
  /** The iterator finished (end of stream, error, or the consumer left): nothing more is read or kept. */
  #readDone = false;
  /** What next() throws once reading is done; `undefined` means the stream ended normally. */
  #readError: Error | undefined;

  // Outbound.
  /** Frames handed to `ws` whose write callback has not fired yet (each costs FRAME_OVERHEAD_BYTES). */
  #unflushed = 0;
  #drainWaiters: Set<DrainWaiter> | undefined;
  #closing: Promise<void> | undefined;
  #closeWaiter: (Waiter<void> & { cleanup(): void }) | undefined;

  // Liveness.
  #livenessTimer: ReturnType<typeof setTimeout> | undefined;
  #awaitingPong = false;
  #sawInbound = false;

  constructor(ws: WebSocket, cfg: Config, init: ConnectionInit) {
    this.#ws = ws;
    this.#cfg = cfg;
    this.#isServer = init.isServer;
    this.#onRefusal = init.onRefusal;
    this.remoteAddr = init.remoteAddr;
    this.maxFrameBytes = cfg.maxFrameBytes;
    this.closed = new Promise<Error | undefined>((resolve) => {
      this.#resolveClosed = resolve;
    });
    // Every frame arrives as a fresh ArrayBuffer owned by this connection (no view into a shared socket chunk).
    ws.binaryType = "arraybuffer";
    ws.on("message", (data: WebSocket.RawData, isBinary: boolean) => this.#onMessage(data, isBinary));
    ws.on("ping", this.#onAlive);
    ws.on("pong", this.#onAlive);
    ws.on("error", (err: Error) => this.#onError(err));
    ws.on("close", (code: number) => {
      this.#onClose(code);
      init.onSocketClosed?.();
    });
    if (ws.readyState !== WebSocket.OPEN) {
      // Closed between the upgrade and this constructor (possible only in pathological timing): fail at once.
      this.#fail(sealwireError("ERR_CONNECTION_ABORTED", "the connection was lost during the handshake"));
    } else {
      this.#scheduleLiveness(cfg.pingIntervalMs);
    }
  }

  get isOpen(): boolean {
    return this.#state === OPEN && this.#ws.readyState === WebSocket.OPEN;
  }

  send(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array)) throw invalid("send(frame): frame must be a Uint8Array");
    if (!this.isOpen) {
      throw sealwireError("ERR_CONNECTION_CLOSED", "send() on a closed connection; dial a new one", { cause: this.#error });
    }
    const length = frame.byteLength;
    if (length > this.maxFrameBytes) {
      throw sealwireError(
        "ERR_FRAME_TOO_LARGE",
        `frame of ${length} bytes exceeds maxFrameBytes (${this.maxFrameBytes}); split it or raise maxFrameBytes`,
      );
    }
    if (this.#queuedBytes() + length + FRAME_OVERHEAD_BYTES + MAX_FRAME_HEADER_BYTES > this.#cfg.maxQueuedBytes) {
      // Refused, not queued and not dropped: the caller still owns the frame and may retry after drain().
      throw sealwireError(
        "ERR_QUEUE_FULL",
        "the peer is not reading and this connection's send queue is full; await drain() whenever send() returns false",
      );
    }
    // The caller may reuse its buffer as soon as send returns. A client's frame is masked into a fresh buffer by
    // `ws` (never by reference: see generateMask); a server's frame would be queued by reference, so copy it.
    const data = this.#isServer ? Buffer.from(frame) : frame;
    this.#unflushed++;
    this.#ws.send(data, SEND_OPTIONS, this.#onFlushed);
    return this.#queuedBytes() < this.#cfg.highWaterMarkBytes;
  }

  drain(options?: AbortOptions): Promise<void> {
    if (!this.isOpen) return Promise.reject(this.#endedError());
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, "drain()"));
    if (this.#queuedBytes() < this.#cfg.highWaterMarkBytes) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiters = (this.#drainWaiters ??= new Set());
      const onAbort = (): void => {
        waiters.delete(waiter);
        reject(abortError(signal!, "drain()"));
      };
      const waiter: DrainWaiter = { resolve, reject, cleanup: () => signal?.removeEventListener("abort", onAbort) };
      waiters.add(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  close(options?: AbortOptions): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    if (this.#state !== OPEN) return Promise.resolve();
    const signal = options?.signal;
    if (signal?.aborted) {
      // The caller asked to stop waiting before the close began: end the connection anyway (fail closed) rather
      // than leave it half-open.
      const err = abortError(signal, "close()");
      this.abort(err);
      return Promise.reject(err);
    }
    this.#state = CLOSING;
    this.#rejectDrains(this.#endedError());
    this.#closing = new Promise<void>((resolve, reject) => {
      const onAbort = (): void => this.abort(abortError(signal!, "close()"));
      this.#closeWaiter = { resolve, reject, cleanup: () => signal?.removeEventListener("abort", onAbort) };
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    // RFC 6455 §5.5.1: the close frame follows every data frame already queued on the socket; `ws` then waits
    // for the peer's close frame (delivering the peer's earlier frames meanwhile) up to closeTimeoutMs.
    this.#ws.close(1000);
    return this.#closing;
  }

  abort(err?: Error): void {
    const error = err instanceof Error ? err : sealwireError("ERR_CONNECTION_ABORTED", "the connection was aborted locally");
    const wasLive = this.#state === OPEN || this.#state === CLOSING;
    this.#fail(error);
    // No close frame: the peer sees the TCP connection end (close code 1006) and reports ERR_CONNECTION_ABORTED.
    if (wasLive) this.#ws.terminate();
  }

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    if (this.#iterated) throw alreadyIterated("connection");
    this.#iterated = true;
    const iterator: AsyncIterator<Uint8Array> & AsyncIterable<Uint8Array> = {
      next: () => this.#next(),
      // Leaving a for-await early means "I will not read any more": drop what is queued and close gracefully,
      // like a Node stream is destroyed when its consumer breaks out.
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
    return "WebSocketConnection";
  }

  /** Unflushed bytes (frame headers included) plus bookkeeping per unflushed frame. */
  #queuedBytes(): number {
    return this.#ws.bufferedAmount + this.#unflushed * FRAME_OVERHEAD_BYTES;
  }

  /**
   * One shared write callback (no closure per frame): called in write order once a frame left the process, or
   * with an error when the socket was destroyed with the frame still queued. The latter empties
   * `bufferedAmount` too, but it is no reason to wake drain(): the connection is failing and the 'close' event
   * rejects the waiters.
   */
  readonly #onFlushed = (err?: Error | null): void => {
    this.#unflushed--;
    if (err != null || this.#drainWaiters === undefined || !this.isOpen) return;
    if (this.#queuedBytes() < this.#cfg.highWaterMarkBytes) this.#wakeDrains();
  };

  readonly #onAlive = (): void => {
    this.#sawInbound = true;
  };

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.#sawInbound = true;
    if (!isBinary) {
      if (this.#state === OPEN || this.#state === CLOSING) this.#onRefusal?.("ws_malformed");
      this.abort(
        sealwireError("ERR_PROTOCOL", "the peer sent a text frame; sealwire WebSockets carry binary frames only"),
      );
      return;
    }
    if (this.#readDone || this.#state === ABORTED) return; // nobody will read it
    const frame = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(Buffer.concat(toBuffers(data)));
    this.#frames.push(frame);
    this.#inboxBytes += frame.byteLength + FRAME_OVERHEAD_BYTES;
    if (this.#readers.length > 0) this.#pump();
    if (!this.#paused && this.#inboxBytes >= this.#cfg.highWaterMarkBytes) {
      // Stop reading the socket: TCP flow control then pushes back on the sender, whose bufferedAmount grows
      // until its send() returns false. At most the rest of the current socket chunk is still parsed.
      this.#paused = true;
      this.#ws.pause();
    }
  }

  #onError(err: Error): void {
    if (this.#state === ABORTED || this.#state === CLOSED) return;
    const error = connectionError(err, this.#cfg);
    if (error.code === "ERR_FRAME_TOO_LARGE") this.#onRefusal?.("ws_oversize");
    else if (error.code === "ERR_PROTOCOL") this.#onRefusal?.("ws_malformed");
    this.abort(error);
  }

  #onClose(code: number): void {
    this.#stopLiveness();
    if (this.#settled) {
      this.#rejectDrains(this.#endedError());
      return;
    }
    if (!GRACEFUL_CLOSE_CODES.has(code)) {
      // 1006 (the TCP connection ended without a close frame: the peer aborted, crashed or the network broke),
      // or an error code the peer closed with (1002 protocol error, 1009 too big, 1011 internal error, ...).
      this.#fail(sealwireError("ERR_CONNECTION_ABORTED", "the remote end aborted the connection"));
      return;
    }
    this.#state = CLOSED;
    this.#remoteEnded = true;
    this.#settled = true;
    this.#rejectDrains(this.#endedError());
    this.#resolveClosed(undefined);
    const waiter = this.#closeWaiter;
    this.#closeWaiter = undefined;
    waiter?.cleanup();
    waiter?.resolve();
    this.#pump();
  }

  #next(): Promise<IteratorResult<Uint8Array>> {
    if (this.#readers.length === 0 && !this.#readDone && this.#head < this.#frames.length) {
      return Promise.resolve({ done: false, value: this.#take() });
    }
    if (this.#readDone) {
      return this.#readError !== undefined ? Promise.reject(this.#readError) : Promise.resolve(DONE);
    }
    return new Promise<IteratorResult<Uint8Array>>((resolve, reject) => {
      this.#readers.push({ resolve, reject });
      this.#pump();
    });
  }

  /** Removes the oldest frame; resumes the socket once the inbox fell to half the high-water mark. */
  #take(): Uint8Array {
    const frames = this.#frames;
    const frame = frames[this.#head]!;
    frames[this.#head] = undefined as never; // release the reference now, not at the next compaction
    this.#head++;
    if (this.#head === frames.length) {
      frames.length = 0;
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= frames.length) {
      this.#frames = frames.slice(this.#head);
      this.#head = 0;
    }
    this.#inboxBytes -= frame.byteLength + FRAME_OVERHEAD_BYTES;
    if (this.#paused && this.#inboxBytes <= this.#cfg.highWaterMarkBytes >>> 1) this.#resume();
    return frame;
  }

  #resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#ws.resume();
  }

  /** Hands queued frames (or the end / the error) to waiting next() calls, in order. */
  #pump(): void {
    const readers = this.#readers;
    while (readers.length > 0) {
      if (this.#readDone) {
        const error = this.#readError;
        for (const r of readers.splice(0)) {
          if (error !== undefined) r.reject(error);
          else r.resolve(DONE);
        }
        return;
      }
      if (this.#head < this.#frames.length) {
        readers.shift()!.resolve({ done: false, value: this.#take() });
        continue;
      }
      if (this.#remoteEnded) {
        this.#readDone = true; // end of stream; the loop resolves the remaining readers with DONE
        continue;
      }
      return;
    }
  }

  #wakeDrains(): void {
    const waiters = this.#drainWaiters;
    if (waiters === undefined || waiters.size === 0) return;
    this.#drainWaiters = undefined;
    for (const w of waiters) {
      w.cleanup();
      w.resolve();
    }
  }

  #rejectDrains(err: Error): void {
    const waiters = this.#drainWaiters;
    if (waiters === undefined) return;
    this.#drainWaiters = undefined;
    for (const w of waiters) {
      w.cleanup();
      w.reject(err);
    }
  }

  /** The error drain() and send() report once this end can no longer send. */
  #endedError(): Error {
    return this.#error ?? sealwireError("ERR_CONNECTION_CLOSED", "the connection was closed; dial a new one");
  }

  /** Ends this end with `err`: the inbox is released, waiting reads, drains and close() fail, `closed` settles. */
  #fail(err: Error): void {
    if (this.#state === OPEN || this.#state === CLOSING) this.#state = ABORTED;
    this.#error ??= err;
    if (!this.#readDone) {
      this.#readDone = true;
      this.#readError = err;
    }
    this.#dropInbox();
    this.#rejectDrains(err);
    this.#stopLiveness();
    if (!this.#settled) {
      this.#settled = true;
      this.#resolveClosed(err);
    }
    const waiter = this.#closeWaiter;
    this.#closeWaiter = undefined;
    waiter?.cleanup();
    waiter?.reject(err);
    this.#pump();
  }

  #stopReading(): void {
    if (!this.#readDone) {
      this.#readDone = true;
      this.#dropInbox();
      this.#pump();
    }
    // Keep the socket flowing so the peer's close frame can arrive; frames after it are discarded unread.
    this.#resume();
    if (this.#state === OPEN) this.close().catch(() => {});
  }

  /** Forgets every queued frame so an abandoned or aborted connection does not hold memory. */
  #dropInbox(): void {
    this.#frames = [];
    this.#head = 0;
    this.#inboxBytes = 0;
  }

  // Liveness (RFC 6455 §5.5.2-3): ping every pingIntervalMs; if nothing at all arrives within pongTimeoutMs of a
  // ping, the peer (or the path to it) is gone and the connection is aborted with ERR_TIMEOUT.
  // Backpressure must not look like death. An end that has paused its socket (its application is behind) cannot
  // read the peer's pings, which wait behind frames it chose not to read. So a paused end does not judge its
  // peer, and instead sends unsolicited pongs (§5.5.3: "a unidirectional heartbeat") every
  // min(pingIntervalMs, pongTimeoutMs) / 2, which arrive within any pongTimeoutMs window of the peer's, as long
  // as both ends use the same settings.

  #scheduleLiveness(ms: number): void {
    if (this.#cfg.pingIntervalMs === 0) return;
    this.#livenessTimer = setTimeout(this.#onLivenessTimer, ms);
    this.#livenessTimer.unref();
  }

  #stopLiveness(): void {
    if (this.#livenessTimer !== undefined) {
      clearTimeout(this.#livenessTimer);
      this.#livenessTimer = undefined;
    }
  }

  readonly #onLivenessTimer = (): void => {
    this.#livenessTimer = undefined;
    if (this.#settled || this.#ws.readyState !== WebSocket.OPEN) return;
    if (this.#paused) {
      this.#awaitingPong = false;
      this.#ws.pong();
      this.#scheduleLiveness(Math.max(1, Math.floor(Math.min(this.#cfg.pingIntervalMs, this.#cfg.pongTimeoutMs) / 2)));
      return;
    }
    if (this.#awaitingPong) {
      this.#awaitingPong = false;
      if (!this.#sawInbound) {
        this.#onRefusal?.("ws_liveness_timeout");
        this.abort(
          sealwireError(
            "ERR_TIMEOUT",
            `the peer did not answer a ping within ${this.#cfg.pongTimeoutMs} ms; the connection was aborted`,
          ),
        );
        return;
      }
      this.#scheduleLiveness(this.#cfg.pingIntervalMs);
      return;
    }
    this.#sawInbound = false;
    this.#awaitingPong = true;
    this.#ws.ping();
    this.#scheduleLiveness(this.#cfg.pongTimeoutMs);
  };
}

function toBuffers(data: WebSocket.RawData): Buffer[] {
  if (Array.isArray(data)) return data;
  return [Buffer.isBuffer(data) ? data : Buffer.from(data)];
}

// ---------------------------------------------------------------------------------------------------------------
// Listener.
//
// Admission (issue 9): a flood of sockets that never finish their opening handshake must not keep new peers out,
// so the caps evict instead of refusing. At `maxConnections` a new socket evicts the oldest socket still in its
// opening handshake (TLS + HTTP upgrade) or, when there is none, the oldest upgraded connection the application
// has not accepted yet; at `maxConnectionsPerAddress` handshaking sockets, a new one from that address evicts
// that address's own oldest. A stalled socket then holds its slot only until `maxConnections` newer sockets have
// arrived (at 1,000 sockets/s and the default 1024: about a second), while an honest client needs a few round
// trips. Accepted connections are never evicted: only when every slot is one is a newcomer dropped.

/** Per remote IP address: sockets still in their opening handshake (oldest first), and upgraded connections. */
interface AddressCount {
  readonly handshaking: Set<RawSocket>;
  open: number;
}

/** A socket accepted by the server that has not completed its upgrade yet. */
interface RawSocket {
  readonly socket: Socket;
  readonly ip: string;
  /** `remoteAddress|remotePort`: its key in the listener's table (the same on a TLS socket and its TCP socket). */
  readonly key: string;
  readonly count: AddressCount;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** No longer counted as handshaking: upgraded, evicted, timed out or closed. */
  done: boolean;
}

/** An upgraded connection the listener's iterator has not taken yet. */
interface PendingConnection {
  readonly conn: WebSocketConnection;
  readonly ip: string;
  /** Stops counting its socket (idempotent): on eviction, or when the socket has closed. */
  readonly release: () => void;
}

const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: "Bad Request",
  403: "Forbidden",
  404: "Not Found",
  408: "Request Timeout",
  426: "Upgrade Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  503: "Service Unavailable",
};

/** Answers an upgrade request with an HTTP error and closes the socket once the answer is written. */
function refuseUpgrade(socket: Socket, status: number): void {
  if (socket.destroyed) return;
  socket.once("finish", () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

function firstOf<T>(items: Iterable<T>): T | undefined {
  for (const x of items) return x;
  return undefined;
}

class WebSocketListener implements Listener {
  readonly addr: string;
  readonly #cfg: Config;
  readonly #server: HttpServer;
  readonly #wss: WebSocketServer;
  readonly #path: string;
  readonly #pending: PendingConnection[] = [];
  readonly #acceptors: Waiter<IteratorResult<Connection>>[] = [];
  readonly #perAddress = new Map<string, AddressCount>();
  /** Per remote IP address: connection tokens left and when they were last topped up (least recently seen first). */
  readonly #rate = new Map<string, { tokens: number; at: number }>();
  /** Sockets in their opening handshake, oldest first (Map keeps insertion order), by {@link RawSocket.key}. */
  readonly #raw = new Map<string, RawSocket>();
  /** Upgraded connections (accepted or not) whose socket has not closed yet. */
  #upgraded = 0;
  #closed = false;
  #iterated = false;

  constructor(server: HttpServer, cfg: Config, target: Target, port: number) {
    this.#server = server;
    this.#cfg = cfg;
    this.#path = target.path;
    this.addr = formatAddr(target, port);
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: cfg.maxFrameBytes,
      perMessageDeflate: false, // compression: CPU and memory for the peer to spend, and CRIME-style leaks
      clientTracking: false,
      autoPong: true,
      skipUTF8Validation: false,
      // Not in @types/ws yet; ws 8.19+ reads it.
      ...({ closeTimeout: cfg.closeTimeoutMs } as object),
    });
    // An upgrade request `ws` finds invalid (version, key, extensions): answered here, so it is counted.
    this.#wss.on("wsClientError", (_err: Error, socket: Socket) => {
      this.#refused("ws_bad_request", normalizeIp(socket.remoteAddress));
      refuseUpgrade(socket, 400);
    });
    server.on("connection", (socket: Socket) => this.#onSocket(socket));
    server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => this.#onUpgrade(req, socket, head));
    // Plain HTTP requests get a short answer and the socket is closed; this endpoint only speaks WebSocket.
    server.on("request", (req: IncomingMessage, res) => {
      this.#refused("ws_bad_request", normalizeIp(req.socket.remoteAddress));
      res.writeHead(426, { Connection: "close", "Content-Length": "0" }).end();
    });
    server.on("clientError", (err: Error, socket: Socket) => this.#onClientError(err, socket));
    // https only: a failed TLS handshake. ECONNRESET means the socket closed first (the client hung up, or this
    // listener dropped it: an eviction or a timeout, already reported).
    server.on("tlsClientError", (err: Error, socket: Socket) => {
      const code = safeCode(err);
      if (code === "ECONNRESET") return;
      this.#refused(code === "ERR_TLS_HANDSHAKE_TIMEOUT" ? "ws_handshake_timeout" : "ws_tls_failed", normalizeIp(socket.remoteAddress));
    });
    // An error on the listening socket after bind (rare: EMFILE) must not crash the process.
    server.on("error", () => {});
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    // Stops accepting at once (the listening socket is closed synchronously); upgraded connections stay open.
    this.#server.close();
    for (const raw of [...this.#raw.values()]) raw.socket.destroy();
    // Like a closed TCP listening socket resets its accept queue: connections nobody accepted are aborted, so
    // their diallers learn at once instead of waiting on a connection no one will ever read.
    for (const p of this.#pending.splice(0)) {
      p.conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
    }
    for (const a of this.#acceptors.splice(0)) a.resolve(DONE);
    return Promise.resolve();
  }

  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    if (this.#iterated) throw alreadyIterated("listener");
    this.#iterated = true;
    const iterator: AsyncIterator<Connection> & AsyncIterable<Connection> = {
      next: () => {
        const pending = this.#pending.shift();
        if (pending !== undefined) return Promise.resolve({ done: false, value: pending.conn });
        if (this.#closed) return Promise.resolve(DONE);
        return new Promise((resolve, reject) => this.#acceptors.push({ resolve, reject }));
      },
      // Leaving the accept loop stops accepting (as breaking out of a Node stream destroys it).
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
    return "WebSocketListener";
  }

  /** Sockets counted against `maxConnections`: handshaking, plus upgraded ones not yet closed. */
  get socketCount(): number {
    return this.#raw.size + this.#upgraded;
  }

  #refused(reason: string, ip: string | undefined): void {
    reportRefusal(this.#cfg.onRefusal, reason, ip);
  }

  #count(ip: string): AddressCount {
    let c = this.#perAddress.get(ip);
    if (c === undefined) {
      c = { handshaking: new Set(), open: 0 };
      this.#perAddress.set(ip, c);
    }
    return c;
  }

  #release(ip: string, c: AddressCount): void {
    if (c.handshaking.size === 0 && c.open === 0 && this.#perAddress.get(ip) === c) this.#perAddress.delete(ip);
  }

  /** A new TCP socket (before TLS): make room if a cap is reached, and give it a deadline. */
  #onSocket(socket: Socket): void {
    const ip = normalizeIp(socket.remoteAddress);
    if (ip === undefined || this.#closed) {
      socket.destroy();
      return;
    }
    if (!this.#admitRate(ip)) {
      // Over the address's connection rate: closed before any TLS or HTTP work.
      this.#refused("ws_rate_limited", ip);
      socket.destroy();
      return;
    }
    const key = `${socket.remoteAddress}|${socket.remotePort}`;
    const stale = this.#raw.get(key);
    if (stale !== undefined) this.#forgetRaw(stale); // its close event has not run yet; never count a key twice
    const count = this.#count(ip);
    const oldestOfAddress = count.handshaking.size >= this.#cfg.maxConnectionsPerAddress ? firstOf(count.handshaking) : undefined;
    if (oldestOfAddress !== undefined) {
      // This address already has its share of handshaking sockets: its own oldest makes room, nobody else's.
      this.#dropRaw(oldestOfAddress, "ws_per_address_evicted");
    }
    if (this.socketCount >= this.#cfg.maxConnections && !this.#evictOldest()) {
      // Every slot holds an accepted connection: only now is a newcomer turned away (before any TLS work).
      this.#refused("ws_max_connections", ip);
      socket.destroy();
      this.#release(ip, count);
      return;
    }
    const raw: RawSocket = { socket, ip, key, count, timer: undefined, done: false };
    // A socket that does not complete TLS + the HTTP upgrade in time is dropped (slowloris, a stuck client). The
    // deadline is absolute: trickling bytes does not extend it.
    raw.timer = setTimeout(() => {
      raw.timer = undefined;
      if (!raw.done) this.#dropRaw(raw, "ws_handshake_timeout");
    }, this.#cfg.handshakeTimeoutMs);
    count.handshaking.add(raw);
    this.#raw.set(key, raw);
    socket.once("close", () => this.#forgetRaw(raw));
  }

  /** Takes a connection token of `ip` (token bucket: `connectionRatePerAddress`/s, burst twice that). */
  #admitRate(ip: string): boolean {
    const rate = this.#cfg.connectionRatePerAddress;
    if (rate === 0) return true;
    const burst = 2 * rate;
    const now = performance.now();
    let b = this.#rate.get(ip);
    if (b === undefined) {
      if (this.#rate.size >= MAX_RATE_BUCKETS) this.#rate.delete(this.#rate.keys().next().value!);
      b = { tokens: burst, at: now };
    } else {
      this.#rate.delete(ip); // re-inserted below: most recently seen last
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) * rate) / 1000);
      b.at = now;
    }
    this.#rate.set(ip, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Stops counting a handshaking socket (idempotent): it upgraded, closed, or is being dropped. */
  #forgetRaw(raw: RawSocket): void {
    if (raw.timer !== undefined) {
      clearTimeout(raw.timer);
      raw.timer = undefined;
    }
    if (raw.done) return;
    raw.done = true;
    if (this.#raw.get(raw.key) === raw) this.#raw.delete(raw.key);
    raw.count.handshaking.delete(raw);
    this.#release(raw.ip, raw.count);
  }

  /** Drops a handshaking socket now, for `reason`; it stops counting at once (not when its close event runs). */
  #dropRaw(raw: RawSocket, reason: string): void {
    this.#forgetRaw(raw);
    this.#refused(reason, raw.ip);
    raw.socket.destroy();
  }

  /**
   * Makes room at `maxConnections`: drops the oldest socket still in its opening handshake, else the oldest
   * upgraded connection nobody accepted yet. False when every socket is an accepted connection.
   */
  #evictOldest(): boolean {
    const raw = firstOf(this.#raw.values());
    if (raw !== undefined) {
      this.#dropRaw(raw, "ws_evicted");
      return true;
    }
    const pending = this.#pending.shift();
    if (pending === undefined) return false;
    pending.release();
    this.#refused("ws_evicted", pending.ip);
    pending.conn.abort(
      sealwireError("ERR_CONNECTION_ABORTED", "evicted: the listener was at maxConnections and nobody had accepted this connection yet"),
    );
    return true;
  }

  /** Node's HTTP parser refused a request: malformed, headers over the limit, or its own request timeout. */
  #onClientError(err: Error, socket: Socket): void {
    const code = safeCode(err);
    if (code === "ECONNRESET" || code === "EPIPE" || !socket.writable) {
      socket.destroy();
      return;
    }
    const timeout = code === "ERR_HTTP_REQUEST_TIMEOUT";
    this.#refused(timeout ? "ws_handshake_timeout" : "ws_bad_request", normalizeIp(socket.remoteAddress));
    // What Node answers without a listener; the request's bytes are never echoed.
    refuseUpgrade(socket, code === "HPE_HEADER_OVERFLOW" ? 431 : timeout ? 408 : 400);
  }

  #onUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const raw = this.#raw.get(`${socket.remoteAddress}|${socket.remotePort}`);
    if (raw === undefined || raw.done || this.#closed) return refuseUpgrade(socket, 503);
    const ip = raw.ip;
    // Exact path match: `ws` clients send the path they were given, and a listener answers only its own.
    if (req.url !== this.#path) {
      this.#refused("ws_bad_request", ip);
      return refuseUpgrade(socket, 404);
    }
    const origin = req.headers.origin;
    if (origin !== undefined && !this.#cfg.allowedOrigins.has(origin)) {
      this.#refused("ws_bad_request", ip);
      return refuseUpgrade(socket, 403);
    }
    const count = raw.count;
    if (count.open >= this.#cfg.maxConnectionsPerAddress) {
      this.#refused("ws_per_address", ip);
      return refuseUpgrade(socket, 429);
    }
    if (this.#pending.length >= this.#cfg.backlog) {
      this.#refused("ws_backlog", ip);
      return refuseUpgrade(socket, 503);
    }
    // `ws` validates the upgrade request (version, key, no extensions); a bad one goes to 'wsClientError'.
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      count.open++; // before forgetRaw, which would otherwise drop the address's (momentarily empty) entry
      this.#upgraded++;
      this.#forgetRaw(raw);
      let counted = true;
      const release = (): void => {
        if (!counted) return;
        counted = false;
        count.open--;
        this.#upgraded--;
        this.#release(ip, count);
      };
      const conn = new WebSocketConnection(ws, this.#cfg, {
        remoteAddr: formatHostPort(ip, socket.remotePort),
        isServer: true,
        onSocketClosed: release,
        onRefusal: (reason) => this.#refused(reason, ip),
      });
      if (this.#closed) {
        conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
        return;
      }
      const acceptor = this.#acceptors.shift();
      if (acceptor !== undefined) acceptor.resolve({ done: false, value: conn });
      else this.#pending.push({ conn, ip, release });
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Transport.

/** Errors while dialling that mean "nothing (reachable) listens there". */
const REFUSED_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EADDRNOTAVAIL",
]);

/** OpenSSL certificate verification results (`X509_V_ERR_*` without the prefix), as Node reports them. */
const CERT_ERROR_CODES: ReadonlySet<string> = new Set([
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_REVOKED",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_SIGNATURE_FAILURE",
  "CERT_CHAIN_TOO_LONG",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "INVALID_CA",
  "INVALID_PURPOSE",
  "PATH_LENGTH_EXCEEDED",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "ERR_TLS_CERT_ALTNAME_FORMAT",
]);

const DIAL_REFUSAL_REASONS: Readonly<Record<number, string>> = {
  403: "this origin is not allowed",
  404: "no WebSocket endpoint listens at that path",
  426: "the server expects a WebSocket upgrade",
  429: "too many connections from this address; close some or raise maxConnectionsPerAddress",
  503: "the listener is closing or its backlog of unaccepted connections is full",
};

/** What to do about a TLS failure, by the Node/OpenSSL code. */
function tlsAdvice(code: string): string {
  if (code === "CERT_HAS_EXPIRED" || code === "CERT_NOT_YET_VALID") {
    return "the server certificate is expired or not yet valid; renew it (and check both clocks)";
  }
  if (code.includes("ALTNAME") || code === "HOSTNAME_MISMATCH") {
    return "the server certificate is not issued for this host; dial the name or IP address it lists, or set tls.servername";
  }
  if (CERT_ERROR_CODES.has(code)) {
    return "the server certificate is not issued by a CA you trust; pass that CA as tls.ca";
  }
  if (code.includes("CERTIFICATE_REQUIRED") || code.includes("ALERT_BAD_CERTIFICATE") || code.includes("ALERT_UNKNOWN_CA")) {
    return "the server requires a client certificate issued by its CA; set tls.cert and tls.key";
  }
  return "check that the address really serves wss:// and that both ends allow TLS 1.2 or later";
}

/** Maps a dial failure to a sealwire error. Messages carry only Node/OpenSSL codes and numbers, never peer text. */
function dialError(err: unknown, addr: string, tlsEstablished: boolean): SealwireError {
  const code = safeCode(err);
  if (
    code !== undefined &&
    (CERT_ERROR_CODES.has(code) || code.startsWith("ERR_SSL_") || code.startsWith("ERR_TLS_") || code === "EPROTO")
  ) {
    return sealwireError("ERR_TLS", `TLS handshake with ${addr} failed (${code}): ${tlsAdvice(code)}`);
  }
  if (tlsEstablished && (code === "ECONNRESET" || code === "EPIPE")) {
    // TLS 1.3: the client's side of the handshake completes before the server has checked the client
    // certificate; a server that refuses it sends an alert and closes, and the reset often overtakes the alert.
    return sealwireError(
      "ERR_TLS",
      `the server at ${addr} dropped the connection right after the TLS handshake (${code}): it most likely refused ` +
        "this client's certificate or its absence; set tls.cert and tls.key to a certificate issued by the server's CA",
    );
  }
  if (code !== undefined && REFUSED_CODES.has(code)) {
    return sealwireError(
      "ERR_CONNECTION_REFUSED",
      `could not connect to ${addr} (${code})` +
        (code === "ECONNRESET" || code === "EPIPE"
          ? ": the server closed the connection during the handshake (a TLS server requiring a client certificate does this too)"
          : ""),
    );
  }
  if (code?.startsWith("WS_ERR_") || (err instanceof Error && /^Invalid |subprotocol/.test(err.message))) {
    return sealwireError("ERR_PROTOCOL", `the server at ${addr} answered the WebSocket upgrade incorrectly`);
  }
  return sealwireError("ERR_CONNECTION_REFUSED", `could not connect to ${addr}${code ? ` (${code})` : ""}`);
}

function listenError(err: unknown, addr: string): SealwireError {
  const code = safeCode(err);
  if (code === "EADDRINUSE") {
    return sealwireError("ERR_ADDRESS_IN_USE", `something already listens at ${addr}; close it or pick another port`);
  }
  return invalid(`cannot listen at ${addr}${code ? ` (${code})` : ""}; check the host is a local address and the port is allowed`);
}

/** `ws` client options plus the TLS connect options `ws` passes through to `tls.connect`. */
type WsClientOptions = Omit<WebSocket.ClientOptions, "createConnection"> & {
  /** ws 8.19+; not in @types/ws yet. */
  closeTimeout: number;
  createConnection?: (options: object) => Socket;
};

class WebSocketTransport implements Transport {
  readonly [transportSymbol] = true as const;
  /** The same for `ws://` and `wss://` (see the module docs: Noise binds it into its prologue). */
  readonly kind = "websocket";
  readonly maxFrameBytes: number;
  readonly #cfg: Config;
  #warned = false;

  constructor(cfg: Config) {
    this.#cfg = cfg;
    this.maxFrameBytes = cfg.maxFrameBytes;
  }

  async listen(addr: string, options?: ListenOptions): Promise<Listener> {
    const target = parseAddr(addr, "listen(addr)", true);
    this.#checkPlaintext(target, options?.channelSecured, "listen");
    const cfg = this.#cfg;
    if (target.secure && cfg.tls.server === undefined) {
      throw invalid("listen(): a wss:// listener needs a certificate: pass tls.cert and tls.key (or tls.pfx) to webSocket()");
    }
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "listen()");
    const httpOptions = { maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: cfg.handshakeTimeoutMs, headersTimeout: cfg.handshakeTimeoutMs };
    const server: HttpServer = target.secure
      ? // The listener's own (absolute) deadline drops a slow TLS handshake first and reports it; Node's
        // (inactivity) timeout is only a backstop.
        createHttpsServer({ ...cfg.tls.server, ...httpOptions, handshakeTimeout: cfg.handshakeTimeoutMs + TLS_TIMEOUT_BACKSTOP_MS })
      : createHttpServer(httpOptions);
    // The listener enforces maxConnections itself, evicting unfinished sockets to admit new ones (see Listener);
    // Node's own limit, which drops newcomers before the listener sees them, is only a backstop far above it.
    server.maxConnections = cfg.maxConnections * 2;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: unknown): void => reject(listenError(err, formatAddr(target)));
      server.once("error", onError);
      server.listen({ host: target.host, port: target.port, exclusive: true }, () => {
        server.removeListener("error", onError);
        resolve();
      });
    });
    const bound = server.address();
    const port = typeof bound === "object" && bound !== null ? bound.port : target.port;
    const listener = new WebSocketListener(server, cfg, target, port);
    if (signal?.aborted) {
      await listener.close();
      throw abortError(signal, "listen()");
    }
    return listener;
  }

  async dial(addr: string, options?: DialOptions): Promise<Connection> {
    const target = parseAddr(addr, "dial(addr)", false);
    this.#checkPlaintext(target, options?.channelSecured, "dial");
    // options.remotePeer is ignored: this transport authenticates servers by certificate, not by agent id
    // (wrap it in noise() for that).
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "dial()");
    const cfg = this.#cfg;
    const display = formatAddr(target);
    const wsOptions: WsClientOptions = {
      perMessageDeflate: false,
      maxPayload: cfg.maxFrameBytes,
      followRedirects: false, // a redirect could move the connection to a host the caller never chose
      autoPong: true,
      skipUTF8Validation: false,
      generateMask,
      closeTimeout: cfg.closeTimeoutMs,
      ...(cfg.localAddress !== undefined ? { localAddress: cfg.localAddress } : {}),
    };
    let tlsEstablished = false;
    if (target.secure) {
      const servername = cfg.tls.servername ?? (isIP(target.host) === 0 ? target.host : undefined);
      // What `ws` does for wss:// (tls.connect with SNI for names, none for IP addresses), plus noticing when the
      // TLS handshake completed, to explain a reset that follows it (see dialError).
      wsOptions.createConnection = (opts: object) => {
        const socket = tlsConnect({
          ...(opts as ConnectionOptions),
          path: undefined,
          secureContext: cfg.tls.clientContext,
          rejectUnauthorized: true, // explicit: NODE_TLS_REJECT_UNAUTHORIZED=0 must not turn checks off
          ...(servername !== undefined ? { servername } : {}),
        } as ConnectionOptions);
        socket.once("secureConnect", () => {
          tlsEstablished = true;
        });
        return socket;
      };
    }
    return new Promise<Connection>((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new WebSocket(`${target.scheme}//${target.urlHost}:${target.port}${target.path}`, wsOptions as unknown as WebSocket.ClientOptions);
      } catch (err) {
        reject(dialError(err, display, false));
        return;
      }
      let done = false;
      const finish = (err: SealwireError | undefined): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        ws.removeListener("open", onOpen);
        ws.removeListener("unexpected-response", onResponse);
        ws.removeListener("close", onClose);
        if (err === undefined) {
          ws.removeListener("error", onError);
          resolve(new WebSocketConnection(ws, cfg, { remoteAddr: display, isServer: false }));
          return;
        }
        // Keep an error listener: `ws` may still emit one while tearing down, and an unheard one would crash.
        ws.terminate();
        reject(err);
      };
      const onOpen = (): void => finish(undefined);
      const onError = (err: Error): void => finish(dialError(err, display, tlsEstablished));
      const onClose = (): void => finish(sealwireError("ERR_CONNECTION_REFUSED", `the connection to ${display} ended during the handshake`));
      const onResponse = (_req: unknown, res: IncomingMessage): void => {
        const status = res.statusCode ?? 0;
        // The status text and body are the peer's words: only the number and our own explanation are reported.
        finish(
          sealwireError(
            "ERR_CONNECTION_REFUSED",
            `the server at ${display} refused the WebSocket upgrade (HTTP ${status}${
              DIAL_REFUSAL_REASONS[status] ? `: ${DIAL_REFUSAL_REASONS[status]}` : ""
            })`,
          ),
        );
      };
      const onAbort = (): void => finish(abortError(signal!, "dial()"));
      const timer = setTimeout(
        () =>
          finish(
            sealwireError(
              "ERR_TIMEOUT",
              `the opening handshake with ${display} did not complete within ${cfg.handshakeTimeoutMs} ms`,
            ),
          ),
        cfg.handshakeTimeoutMs,
      );
      ws.on("error", onError);
      ws.once("open", onOpen);
      ws.once("unexpected-response", onResponse);
      ws.once("close", onClose);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  get [Symbol.toStringTag](): string {
    return "WebSocketTransport";
  }

  /** Refuses plaintext unless a secure channel sits above or the caller opted in (warning once). */
  #checkPlaintext(target: Target, channelSecured: unknown, what: "listen" | "dial"): void {
    if (target.secure || channelSecured === true) return;
    if (!this.#cfg.insecure) {
      throw sealwireError(
        "ERR_INSECURE_TRANSPORT",
        `${what}(): ws:// would carry frames in plaintext; use wss:// with TLS, wrap the transport in noise(...) ` +
          "(no certificates needed), or pass insecure: true to webSocket() if something else protects the network",
      );
    }
    if (this.#warned) return;
    this.#warned = true;
    const msg =
      "sealwire: webSocket({ insecure: true }) is carrying frames over ws:// in plaintext; " +
      "anyone on the network path can read and modify them. Use wss:// or noise(webSocket()).";
    const logger = this.#cfg.logger;
    if (logger !== undefined) logger.warn({ code: "ERR_INSECURE_TRANSPORT", addr: formatAddr(target) }, msg);
    else process.emitWarning(msg, { code: "SEALWIRE_INSECURE_TRANSPORT", type: "SealwireWarning" });
  }
}

/**
 * Creates a WebSocket transport. One instance can listen and dial, over `wss://` and (with a secure channel or
 * `insecure: true`) `ws://`. Options are validated here, TLS material included.
 *
 * @throws SealwireError `ERR_INVALID_ARGUMENT` if an option is out of range, unknown, would weaken certificate
 * checks (`rejectUnauthorized: false`, a TLS version below 1.2), or the TLS material cannot be loaded.
 */
export function webSocket(init?: WebSocketInit): Transport {
  return new WebSocketTransport(resolveConfig(init));
}

/** Alias of {@link webSocket}, matching the issue's `noise(websocket(...))`. */
export const websocket: typeof webSocket = webSocket;

// ---------------------------------------------------------------------------------------------------------------
// Reconnecting: jittered exponential backoff. Transport-agnostic (works for noise(webSocket()) and NATS alike).

/** Options for {@link backoffDelayMs}, {@link dialWithBackoff} and {@link reconnecting}. */
export interface BackoffOptions {
  /** Cap of the first delay. @default 250 */
  initialDelayMs?: number | undefined;
  /** Largest delay. @default 30000 */
  maxDelayMs?: number | undefined;
  /** Growth factor of the cap per attempt. @default 2 */
  factor?: number | undefined;
  /** Dial attempts before giving up with the last error (`dialWithBackoff`, and per reconnection). @default unlimited */
  maxAttempts?: number | undefined;
  /** Uniform random number in [0, 1) for the jitter. @default Math.random (jitter needs no secrecy) */
  random?: (() => number) | undefined;
  /**
   * Which dial errors are worth retrying. The default retries only failures that can heal by themselves
   * ({@link isTransientDialError}); a bad certificate, an unknown peer or an invalid address fails at once.
   */
  retryable?: ((err: unknown) => boolean) | undefined;
  /** Called before each wait, e.g. to log `attempt`, `delayMs` and the error's code. */
  onRetry?: ((info: { attempt: number; delayMs: number; error: unknown }) => void) | undefined;
}

/** Options for {@link reconnecting}. */
export interface ReconnectOptions extends BackoffOptions, DialOptions {
  /**
   * A connection that lived at least this long resets the backoff; one that ended sooner counts as a failed
   * attempt (so a server that accepts and immediately drops is not hammered).
   * @default 10000
   */
  stableAfterMs?: number | undefined;
}

/** Errors that a later attempt may not see: nothing listening yet, a timeout, a dropped connection. */
export function isTransientDialError(err: unknown): boolean {
  return (
    SealwireError.is(err, "ERR_CONNECTION_REFUSED") ||
    SealwireError.is(err, "ERR_CONNECTION_ABORTED") ||
    SealwireError.is(err, "ERR_CONNECTION_CLOSED") ||
    SealwireError.is(err, "ERR_TIMEOUT")
  );
}

interface Backoff {
  initialDelayMs: number;
  maxDelayMs: number;
  factor: number;
  maxAttempts: number;
  random: () => number;
  retryable: (err: unknown) => boolean;
  onRetry: ((info: { attempt: number; delayMs: number; error: unknown }) => void) | undefined;
}

function resolveBackoff(o: BackoffOptions | undefined): Backoff {
  const num = (v: unknown, name: string, min: number, max: number, fallback: number): number => {
    if (v === undefined) return fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
      throw invalid(`backoff: ${name} must be a number from ${min} to ${max}`);
    }
    return v;
  };
  const initialDelayMs = num(o?.initialDelayMs, "initialDelayMs", 0, MAX_TIMEOUT_MS, 250);
  const maxDelayMs = num(o?.maxDelayMs, "maxDelayMs", initialDelayMs, MAX_TIMEOUT_MS, Math.max(initialDelayMs, 30_000));
  const factor = num(o?.factor, "factor", 1, 16, 2);
  const maxAttempts =
    o?.maxAttempts === undefined ? Number.POSITIVE_INFINITY : intOptionNamed(o.maxAttempts, "backoff: maxAttempts", 1, MAX_COUNT);
  for (const [name, fn] of [["random", o?.random], ["retryable", o?.retryable], ["onRetry", o?.onRetry]] as const) {
    if (fn !== undefined && typeof fn !== "function") throw invalid(`backoff: ${name} must be a function`);
  }
  return {
    initialDelayMs,
    maxDelayMs,
    factor,
    maxAttempts,
    random: o?.random ?? Math.random,
    retryable: o?.retryable ?? isTransientDialError,
    onRetry: o?.onRetry,
  };
}

function intOptionNamed(v: unknown, name: string, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    throw invalid(`${name} must be an integer from ${min} to ${max}`);
  }
  return v;
}

/**
 * The wait before retry number `attempt` (0-based): "full jitter", a uniform random delay between 0 and
 * `min(maxDelayMs, initialDelayMs × factor^attempt)`, so that many clients dropped at once (a hub restart) do not
 * come back in lockstep.
 */
export function backoffDelayMs(attempt: number, options?: BackoffOptions): number {
  if (!Number.isSafeInteger(attempt) || attempt < 0) throw invalid("backoffDelayMs(attempt): attempt must be an integer >= 0");
  return delayFor(attempt, resolveBackoff(options));
}

function delayFor(attempt: number, b: Backoff): number {
  const cap = Math.min(b.maxDelayMs, b.initialDelayMs * b.factor ** Math.min(attempt, 64));
  const r = b.random();
  const u = typeof r === "number" && r >= 0 && r < 1 ? r : 0.5; // a broken random source must not break the bound
  return Math.floor(u * cap);
}

/** Waits `ms`, or rejects as soon as `signal` aborts (the timer is cleared, the listener removed). */
function sleep(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal, what));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal!, what));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function dialOptionsOf(o: DialOptions | undefined): DialOptions {
  const d: DialOptions = {};
  if (o?.signal !== undefined) d.signal = o.signal;
  if (o?.remotePeer !== undefined) d.remotePeer = o.remotePeer;
  if (o?.channelSecured !== undefined) d.channelSecured = o.channelSecured;
  return d;
}

async function dialLoop(transport: Transport, addr: string, options: DialOptions, b: Backoff, firstAttempt: number): Promise<Connection> {
  for (let attempt = firstAttempt, tries = 1; ; attempt++, tries++) {
    try {
      return await transport.dial(addr, options);
    } catch (err) {
      if (options.signal?.aborted) throw abortError(options.signal, "dial()");
      if (!b.retryable(err) || tries >= b.maxAttempts) throw err;
      const delayMs = delayFor(attempt, b);
      b.onRetry?.({ attempt: attempt + 1, delayMs, error: err });
      await sleep(delayMs, options.signal, "dial() backoff");
    }
  }
}

/**
 * Dials `addr`, retrying transient failures ({@link isTransientDialError}) with jittered exponential backoff until
 * it succeeds, `maxAttempts` is reached (the last error is thrown), an error is not retryable (thrown at once), or
 * `signal` aborts (`ERR_ABORTED`, or the signal's SealwireError reason).
 */
export async function dialWithBackoff(
  transport: Transport,
  addr: string,
  options?: DialOptions & BackoffOptions,
): Promise<Connection> {
  return dialLoop(transport, addr, dialOptionsOf(options), resolveBackoff(options), 0);
}

/**
 * A long-lived client's connection loop: yields a connection, and when the consumer asks for the next one (after
 * the previous one ended), waits for it to end and dials again with backoff. Each yielded `Connection` is one real
 * connection: frames sent on it are never replayed onto the next one, so the caller decides what to resend (an
 * agent re-sends unacknowledged envelopes; a Noise session re-handshakes).
 *
 * Leaving the loop (`break`) closes the current connection gracefully. The loop throws what `dialWithBackoff`
 * throws (a non-retryable error, `maxAttempts` exhausted, or `ERR_ABORTED` when `signal` aborts).
 *
 * @example
 * ```ts
 * for await (const conn of reconnecting(noise(webSocket()), "ws://hub.lan:7700", { signal })) {
 *   for await (const frame of conn) handle(frame);   // ends when the hub goes away; the loop then redials
 * }
 * ```
 */
export function reconnecting(transport: Transport, addr: string, options?: ReconnectOptions): AsyncIterable<Connection> {
  const b = resolveBackoff(options);
  const stableAfterMs = options?.stableAfterMs === undefined ? 10_000 : intOptionNamed(options.stableAfterMs, "reconnecting: stableAfterMs", 0, MAX_TIMEOUT_MS);
  const dialOptions = dialOptionsOf(options);
  const signal = dialOptions.signal;
  return {
    [Symbol.asyncIterator]: async function* (): AsyncGenerator<Connection, void, undefined> {
      let attempt = 0;
      let current: Connection | undefined;
      try {
        for (;;) {
          current = await dialLoop(transport, addr, dialOptions, b, attempt);
          const openedAt = performance.now();
          yield current;
          // The consumer wants the next connection: wait until this one is over (normally it already is).
          await waitOrAbort(current.closed, signal);
          current = undefined;
          if (performance.now() - openedAt >= stableAfterMs) {
            attempt = 0;
          } else {
            // A connection that dropped quickly counts as a failed attempt: back off before redialling.
            const delayMs = delayFor(attempt, b);
            attempt++;
            b.onRetry?.({ attempt, delayMs, error: sealwireError("ERR_CONNECTION_CLOSED", "the connection ended soon after it opened") });
            await sleep(delayMs, signal, "reconnecting() backoff");
          }
        }
      } finally {
        if (current?.isOpen === true) await current.close().catch(() => {});
      }
    },
  };
}

function waitOrAbort<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return p;
  if (signal.aborted) return Promise.reject(abortError(signal, "reconnecting()"));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, "reconnecting()"));
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}
