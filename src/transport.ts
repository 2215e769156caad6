/**
 * The Transport seam: the small interface every way of moving frames implements (memory, WebSocket, Noise over
 * any of them, NATS). Interfaces only; no implementation lives here.
 *
 * A transport moves opaque frames. It never sees plaintext bodies (envelopes are sealed before they reach it), it
 * never imports another transport, it bounds frame sizes and queues, and every wait accepts an `AbortSignal`.
 *
 * Semantics every implementation must meet (checked by `test/transport.compliance.ts`):
 * - Frames arrive whole, in order, exactly once, or the connection fails.
 * - `send(frame)` returns `false` when the peer is not keeping up; the caller should `await conn.drain()` before
 *   sending more. Sending past the hard limit throws `ERR_QUEUE_FULL` rather than queueing without bound.
 * - A frame larger than `maxFrameBytes` is refused with `ERR_FRAME_TOO_LARGE` by `send`; an oversize frame from
 *   the network aborts the connection with the same code.
 * - `close()` is graceful: frames already sent are delivered, then the remote's iterator ends. `abort(err)` is
 *   immediate: queued frames are dropped, the local iterator throws `err`, the remote's throws
 *   `ERR_CONNECTION_ABORTED`.
 * - Dialling an address where nothing listens fails with `ERR_CONNECTION_REFUSED`.
 *
 * @module
 * @example
 * ```ts
 * const listener = await transport.listen("mem://bob");
 * const conn = await transport.dial("mem://bob", { signal: AbortSignal.timeout(2000) });
 * if (!conn.send(frame)) await conn.drain();
 * for await (const inbound of listener) for await (const f of inbound) handle(f);
 * ```
 */

/** Options accepted by every operation that may wait. */
export interface AbortOptions {
  /** Aborts the wait; the operation then fails with `ERR_ABORTED` (or the signal's reason if it is a SealwireError). */
  signal?: AbortSignal;
}

/** Options for {@link Transport.dial}. */
export interface DialOptions extends AbortOptions {
  /**
   * The agent id the caller expects to reach. Secure channels (Noise) verify the remote is this agent; plain
   * transports ignore it.
   */
  remotePeer?: string;
  /**
   * Set by a secure channel (the Noise transport) that encrypts and authenticates every frame above this
   * transport. Transports that refuse plaintext wires (WebSocket over `ws://`) accept them when this is set.
   * Never set it yourself unless something else really encrypts the frames.
   */
  channelSecured?: boolean;
}

/** Options for {@link Transport.listen}. */
export interface ListenOptions extends AbortOptions {
  /** See {@link DialOptions.channelSecured}. */
  channelSecured?: boolean;
}

/** One bidirectional, ordered, message-framed connection. Iterate it (once) to receive frames. */
export interface Connection extends AsyncIterable<Uint8Array> {
  /** Transport-level address of the remote end (e.g. `mem://bob#3`, `203.0.113.4:51234`). */
  readonly remoteAddr: string;
  /**
   * The authenticated agent id of the remote end, when a secure channel verified it (Noise sets it after the
   * handshake against the TrustStore). `undefined` on transports that authenticate nobody.
   */
  readonly remotePeer: string | undefined;
  /** Largest frame `send` accepts and the remote may send, in bytes. */
  readonly maxFrameBytes: number;
  /** `true` until the connection is closed or aborted (by either side). */
  readonly isOpen: boolean;
  /**
   * Queues one frame. Returns `false` when the caller should wait for {@link drain} before sending more.
   * Throws `ERR_FRAME_TOO_LARGE`, `ERR_QUEUE_FULL` (hard limit reached), or `ERR_CONNECTION_CLOSED`.
   * The frame's bytes are copied or handed over; the caller may reuse its buffer after `send` returns.
   */
  send(frame: Uint8Array): boolean;
  /** Resolves when `send` would return `true` again; rejects if the connection ends first. */
  drain(options?: AbortOptions): Promise<void>;
  /** Graceful close: delivers what was sent, then ends the remote's iterator. Idempotent. */
  close(options?: AbortOptions): Promise<void>;
  /** Immediate close; pending frames are dropped. Idempotent. */
  abort(err?: Error): void;
  /** Resolves when the connection has ended: `undefined` after a graceful close, the error after an abort. */
  readonly closed: Promise<Error | undefined>;
}

/** Inbound connections at one address. Iterate it (once) to accept connections. */
export interface Listener extends AsyncIterable<Connection> {
  /** The address actually bound (a port of 0 becomes the real port). */
  readonly addr: string;
  /** Stops accepting; open connections stay open. Idempotent. */
  close(): Promise<void>;
}

/** The brand every transport carries, so `isTransport` works across copies of the package. */
export const transportSymbol: unique symbol = Symbol.for("sealwire/transport") as never;

/** Moves frames between addresses. */
export interface Transport {
  readonly [transportSymbol]: true;
  /** Short name of the wire (`memory`, `ws`, `wss`, `noise+memory`, `nats`), bound into Noise prologues. */
  readonly kind: string;
  /** Largest frame this transport carries. */
  readonly maxFrameBytes: number;
  /** Starts accepting connections at `addr`. Fails with `ERR_ADDRESS_IN_USE` if taken. */
  listen(addr: string, options?: ListenOptions): Promise<Listener>;
  /** Connects to `addr`. Fails with `ERR_CONNECTION_REFUSED` if nothing listens there. */
  dial(addr: string, options?: DialOptions): Promise<Connection>;
  /**
   * The address an agent with this id listens at by default, for transports where that is implied
   * (memory: `mem://<id>`). Agents use it when no explicit address is configured for a peer.
   */
  addressFor?(agentId: string): string;
}

/** True for objects that carry the sealwire transport brand. */
export function isTransport(x: unknown): x is Transport {
  return typeof x === "object" && x !== null && (x as Record<symbol, unknown>)[transportSymbol] === true;
}
