/**
 * The in-memory transport: connections between objects in one process, with the same semantics as a network
 * transport (ordered whole frames, bounded queues, backpressure, graceful close vs. abort, AbortSignal on every
 * wait). It is the test double for every other transport and the baseline for benchmarks, so the hot path is a
 * plain array queue with at most one waiting reader: no promise, timer or closure per frame.
 *
 * Each `memory()` call is its own isolated network: a registry of listeners by address. Two agents talk only if
 * they share the same `memory()` instance. Addresses look like `mem://<name>`.
 *
 * The memory transport authenticates nobody (`remotePeer` is always `undefined`); wrap it in the Noise transport
 * for authenticated, encrypted channels. Frames are copied on `send`, so the caller may reuse its buffer.
 *
 * @module
 * @example
 * ```ts
 * import { memory } from "sealwire/transports/memory";
 *
 * const net = memory({ highWaterMarkBytes: 256 * 1024 });
 * const listener = await net.listen(net.addressFor("bob"));          // "mem://bob"
 * const conn = await net.dial("mem://bob", { signal: AbortSignal.timeout(2000) });
 * if (!conn.send(new TextEncoder().encode("hi"))) await conn.drain();
 * for await (const inbound of listener) {
 *   for await (const frame of inbound) console.log(frame.length);
 * }
 * ```
 */
import { SealwireError, sealwireError } from "../src/errors.js";
import {
  transportSymbol,
  type AbortOptions,
  type Connection,
  type DialOptions,
  type Listener,
  type ListenOptions,
  type Transport,
} from "../src/transport.js";

const MiB = 1024 * 1024;
/** Default largest frame: 4 MiB. */
const DEFAULT_MAX_FRAME_BYTES = 4 * MiB;
/** Default per-direction high-water mark: 1 MiB. */
const DEFAULT_HIGH_WATER_MARK_BYTES = 1 * MiB;
/** Default hard limit is this many high-water marks (but never less than one max frame above the mark). */
const DEFAULT_QUEUE_FACTOR = 8;
/** Default number of dialled-but-not-yet-accepted connections per listener. */
const DEFAULT_BACKLOG = 128;
/**
 * Bookkeeping cost charged per queued frame on top of its length. Without it a flood of empty frames would
 * grow a queue without bound while its byte count stays 0.
 */
const FRAME_OVERHEAD_BYTES = 16;
/** Upper bounds on the options, so a typo (or a unit mistake) cannot configure an effectively unbounded queue. */
const MAX_FRAME_BYTES_LIMIT = 1024 * MiB;
const MAX_QUEUED_BYTES_LIMIT = 4096 * MiB;
const MAX_BACKLOG = 65_536;
const MAX_LATENCY_MS = 60_000;
const MAX_NAME_CHARS = 256;

const ADDR_PREFIX = "mem://";
/**
 * A name is 1..256 code points, none of them whitespace, control/format/unassigned characters, or `#` (which
 * separates the connection number in a server-side `remoteAddr` such as `mem://bob#3`).
 */
const NAME_RE = /^[^\s#\p{C}]{1,256}$/u;

/** Options for {@link memory}. Every size is in bytes. */
export interface MemoryInit {
  /**
   * Largest frame `send` accepts. Larger frames are refused with `ERR_FRAME_TOO_LARGE`.
   * @default 4194304 (4 MiB)
   */
  maxFrameBytes?: number | undefined;
  /**
   * Per connection and direction: once this many bytes are queued for a peer that has not read them yet,
   * `send` returns `false` and the sender should `await conn.drain()`, which resolves once the peer has read the
   * queue down to half this mark (so a busy sender resumes with a batch, not one frame per wake-up). Each frame
   * counts as its length plus 16 bytes of bookkeeping (so floods of empty frames are bounded too).
   * @default 1048576 (1 MiB)
   */
  highWaterMarkBytes?: number | undefined;
  /**
   * Per connection and direction, the hard limit: a `send` that would queue more than this many bytes throws
   * `ERR_QUEUE_FULL` and the frame is not queued. Must be at least `highWaterMarkBytes + maxFrameBytes + 16`,
   * which guarantees that a sender who awaits `drain()` whenever `send` returns `false` never sees
   * `ERR_QUEUE_FULL`.
   * @default max(8 × highWaterMarkBytes, highWaterMarkBytes + maxFrameBytes + 16) (8 MiB with the other defaults)
   */
  maxQueuedBytes?: number | undefined;
  /**
   * Per listener: connections dialled but not yet taken by the listener's iterator. A dial beyond it fails with
   * `ERR_CONNECTION_REFUSED`, like a full TCP accept queue.
   * @default 128
   */
  backlog?: number | undefined;
  /**
   * Simulated one-way latency in milliseconds: `dial`, every frame and a graceful close's end-of-stream arrive
   * this long after they were sent. `abort` is immediate. Useful to test timeouts; costs a timer per wait.
   * @default 0
   */
  latencyMs?: number | undefined;
}

/** Validated, complete configuration shared by a network's listeners and connections. */
interface Config {
  readonly maxFrameBytes: number;
  readonly highWaterMarkBytes: number;
  readonly maxQueuedBytes: number;
  readonly backlog: number;
  readonly latencyMs: number;
}

const INIT_KEYS: ReadonlySet<string> = new Set([
  "maxFrameBytes",
  "highWaterMarkBytes",
  "maxQueuedBytes",
  "backlog",
  "latencyMs",
]);

function invalid(message: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return sealwireError("ERR_INVALID_ARGUMENT", message);
}

function intOption(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`memory(): ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}

function resolveConfig(init: unknown): Config {
  if (init === undefined) init = {};
  if (typeof init !== "object" || init === null || Array.isArray(init)) {
    throw invalid("memory(init): init must be an options object or undefined");
  }
  // Unknown keys are almost always typos (`maxFrameByte`), and a silently ignored limit is a missing limit.
  for (const key of Object.keys(init)) {
    if (!INIT_KEYS.has(key)) throw invalid(`memory(): unknown option "${key}"`);
  }
  const o = init as MemoryInit;
  const maxFrameBytes = intOption(o.maxFrameBytes, "maxFrameBytes", 1, MAX_FRAME_BYTES_LIMIT, DEFAULT_MAX_FRAME_BYTES);
  const highWaterMarkBytes = intOption(
    o.highWaterMarkBytes,
    "highWaterMarkBytes",
    1,
    MAX_QUEUED_BYTES_LIMIT,
    DEFAULT_HIGH_WATER_MARK_BYTES,
  );
  const minQueued = highWaterMarkBytes + maxFrameBytes + FRAME_OVERHEAD_BYTES;
  const maxQueuedBytes = intOption(
    o.maxQueuedBytes,
    "maxQueuedBytes",
    1,
    MAX_QUEUED_BYTES_LIMIT,
    Math.min(MAX_QUEUED_BYTES_LIMIT, Math.max(DEFAULT_QUEUE_FACTOR * highWaterMarkBytes, minQueued)),
  );
  if (maxQueuedBytes < minQueued) {
    throw invalid(
      `memory(): maxQueuedBytes must be at least highWaterMarkBytes + maxFrameBytes + ${FRAME_OVERHEAD_BYTES} ` +
        `(${minQueued}) so that a sender honouring drain() never hits the hard limit`,
    );
  }
  const backlog = intOption(o.backlog, "backlog", 1, MAX_BACKLOG, DEFAULT_BACKLOG);
  let latencyMs = 0;
  if (o.latencyMs !== undefined) {
    const ms = o.latencyMs;
    if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0 || ms > MAX_LATENCY_MS) {
      throw invalid(`memory(): latencyMs must be a number of milliseconds from 0 to ${MAX_LATENCY_MS}`);
    }
    latencyMs = o.latencyMs;
  }
  return { maxFrameBytes, highWaterMarkBytes, maxQueuedBytes, backlog, latencyMs };
}

/** Returns the name in `mem://<name>`, or throws ERR_INVALID_ARGUMENT naming the caller. */
function parseAddr(addr: unknown, what: string): string {
  if (typeof addr !== "string" || !addr.startsWith(ADDR_PREFIX)) {
    throw invalid(`${what} must be a string of the form mem://<name>`);
  }
  const name = addr.slice(ADDR_PREFIX.length);
  if (!NAME_RE.test(name)) {
    throw invalid(
      `${what} must be mem://<name> with a name of 1 to ${MAX_NAME_CHARS} characters, ` +
        "without whitespace, control characters or '#'",
    );
  }
  return name;
}

/** The error an aborted wait fails with: the signal's reason if it is a SealwireError, else ERR_ABORTED. */
function abortError(signal: AbortSignal, what: string): SealwireError {
  const reason: unknown = signal.reason;
  if (SealwireError.is(reason)) return reason;
  return sealwireError("ERR_ABORTED", `${what} was aborted by its AbortSignal`, { cause: reason });
}

/** Waits `ms`, or rejects as soon as `signal` aborts (the timer is cleared, the listener removed). */
function delay(ms: number, signal: AbortSignal | undefined, what: string): Promise<void> {
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

interface Waiter<T> {
  resolve(value: T): void;
  reject(err: unknown): void;
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true, value: undefined });

function alreadyIterated(what: string): SealwireError<"ERR_INVALID_ARGUMENT"> {
  return invalid(`this ${what} is already being iterated; iterate it once and fan out yourself`);
}

// Connection states. Both ends of a pair move together: memory has no wire for a close to travel over.
const OPEN = 0;
const CLOSED = 1;
const ABORTED = 2;
type State = typeof OPEN | typeof CLOSED | typeof ABORTED;

/** A drain() call waiting for the peer to read, with its signal cleanup. */
interface DrainWaiter extends Waiter<void> {
  cleanup(): void;
}

/**
 * One end of an in-memory connection. Frames the peer sends are pushed straight into this end's inbox; the
 * inbox's byte count is the peer's backpressure measure.
 */
class MemoryConnection implements Connection {
  readonly remoteAddr: string;
  readonly remotePeer: undefined = undefined;
  readonly maxFrameBytes: number;
  readonly closed: Promise<Error | undefined>;

  readonly #cfg: Config;
  /** Inbox level at or below which the peer's pending drain() calls resolve: half the high-water mark. */
  readonly #lowWaterBytes: number;
  #peer!: MemoryConnection;
  #state: State = OPEN;
  /** Set once this end was aborted (locally or by the peer): drain rejects with it, send cites it as cause. */
  #error: Error | undefined;
  /** What next() throws once reading is done; `undefined` means the stream ended normally. */
  #readError: Error | undefined;
  #resolveClosed!: (value: Error | undefined) => void;

  // Inbox: frames from the peer, oldest at #head. #due holds arrival times only when latencyMs > 0.
  #frames: Uint8Array[] = [];
  #due: number[] = [];
  #head = 0;
  /** Bytes (length + overhead) queued in the inbox and not yet read: the peer's backpressure measure. */
  #queuedBytes = 0;
  /** Arrival time of the graceful end-of-stream marker; -1 while the peer may still send. */
  #endAt = -1;
  /** next() calls waiting for a frame; normally at most one (for-await never overlaps calls). */
  #readers: Waiter<IteratorResult<Uint8Array>>[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #iterated = false;
  /** The iterator finished (end of stream, error, or the consumer left): nothing more is read or kept. */
  #readDone = false;

  // Outbound: drain() calls waiting for the peer's inbox to fall to the low-water mark.
  #drainWaiters: Set<DrainWaiter> | undefined;
  #closing: Promise<void> | undefined;

  private constructor(cfg: Config, remoteAddr: string) {
    this.#cfg = cfg;
    this.#lowWaterBytes = Math.floor(cfg.highWaterMarkBytes / 2);
    this.remoteAddr = remoteAddr;
    this.maxFrameBytes = cfg.maxFrameBytes;
    this.closed = new Promise<Error | undefined>((resolve) => {
      this.#resolveClosed = resolve;
    });
  }

  /** Creates both ends of a connection: `[dialler's end, listener's end]`. */
  static pair(cfg: Config, dialled: string, serverSideRemote: string): [MemoryConnection, MemoryConnection] {
    const client = new MemoryConnection(cfg, dialled);
    const server = new MemoryConnection(cfg, serverSideRemote);
    client.#peer = server;
    server.#peer = client;
    return [client, server];
  }

  get isOpen(): boolean {
    return this.#state === OPEN;
  }

  send(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array)) throw invalid("send(frame): frame must be a Uint8Array");
    if (this.#state !== OPEN) {
      throw sealwireError("ERR_CONNECTION_CLOSED", "send() on a closed connection; dial a new one", {
        cause: this.#error,
      });
    }
    const length = frame.byteLength;
    if (length > this.maxFrameBytes) {
      throw sealwireError(
        "ERR_FRAME_TOO_LARGE",
        `frame of ${length} bytes exceeds maxFrameBytes (${this.maxFrameBytes}); split it or raise maxFrameBytes`,
      );
    }
    const peer = this.#peer;
    const cost = length + FRAME_OVERHEAD_BYTES;
    if (peer.#queuedBytes + cost > this.#cfg.maxQueuedBytes) {
      // Refused, not queued and not dropped: the caller still owns the frame and may retry after drain().
      throw sealwireError(
        "ERR_QUEUE_FULL",
        "the peer is not reading and this connection's queue is full; await drain() whenever send() returns false",
      );
    }
    // Copy: the caller may reuse its buffer as soon as send returns (Transport contract). `new Uint8Array(view)`
    // copies exactly the view's bytes and yields a plain Uint8Array even for a Buffer.
    peer.#push(new Uint8Array(frame), cost);
    return peer.#queuedBytes < this.#cfg.highWaterMarkBytes;
  }

  drain(options?: AbortOptions): Promise<void> {
    if (this.#state !== OPEN) return Promise.reject(this.#endedError());
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(abortError(signal, "drain()"));
    if (this.#peer.#queuedBytes < this.#cfg.highWaterMarkBytes) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiters = (this.#drainWaiters ??= new Set());
      const onAbort = (): void => {
        waiters.delete(waiter);
        reject(abortError(signal!, "drain()"));
      };
      const waiter: DrainWaiter = {
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener("abort", onAbort),
      };
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
    this.#endGracefully();
    const latency = this.#cfg.latencyMs;
    if (latency === 0) return (this.#closing = Promise.resolve());
    // With latency, close resolves when the end-of-stream has reached the peer.
    const closing = delay(latency, signal, "close()").catch((err: unknown) => {
      this.abort(err as Error);
      this.#closing = Promise.resolve(); // later close() calls find an ended connection: nothing to wait for
      throw err;
    });
    this.#closing = closing;
    return closing;
  }

  abort(err?: Error): void {
    const error =
      err instanceof Error ? err : sealwireError("ERR_CONNECTION_ABORTED", "the connection was aborted locally");
    if (this.#state === OPEN) {
      const peer = this.#peer;
      this.#fail(error);
      peer.#fail(sealwireError("ERR_CONNECTION_ABORTED", "the remote end aborted the connection"));
    } else {
      // Already closed gracefully (or aborted): the peer keeps what the close delivered; only drop what this end
      // has not read, so an abort() in a `finally` after close() never takes back delivered frames.
      this.#fail(error);
    }
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
    return "MemoryConnection";
  }

  #next(): Promise<IteratorResult<Uint8Array>> {
    if (this.#readers.length === 0 && !this.#readDone) {
      // Fast path: a frame that has arrived and nobody ahead of us.
      const arrived = this.#cfg.latencyMs === 0 || this.#due[this.#head]! <= performance.now();
      if (this.#head < this.#frames.length && arrived) return Promise.resolve({ done: false, value: this.#take() });
    }
    if (this.#readDone) {
      return this.#readError !== undefined ? Promise.reject(this.#readError) : Promise.resolve(DONE);
    }
    return new Promise<IteratorResult<Uint8Array>>((resolve, reject) => {
      this.#readers.push({ resolve, reject });
      this.#pump();
    });
  }

  /** Queues a frame from the peer (already copied and checked against the limits). */
  #push(frame: Uint8Array, cost: number): void {
    this.#frames.push(frame);
    if (this.#cfg.latencyMs > 0) this.#due.push(performance.now() + this.#cfg.latencyMs);
    this.#queuedBytes += cost;
    if (this.#readers.length > 0) this.#pump();
  }

  /** Removes the oldest frame, updates the peer's backpressure, and wakes its drain() calls if it fell below. */
  #take(): Uint8Array {
    const frames = this.#frames;
    const frame = frames[this.#head]!;
    frames[this.#head] = undefined as never; // release the reference now, not at the next compaction
    this.#head++;
    if (this.#head === frames.length) {
      frames.length = 0;
      this.#due.length = 0;
      this.#head = 0;
    } else if (this.#head >= 1024 && this.#head * 2 >= frames.length) {
      this.#frames = frames.slice(this.#head);
      if (this.#due.length > 0) this.#due = this.#due.slice(this.#head);
      this.#head = 0;
    }
    this.#queuedBytes -= frame.byteLength + FRAME_OVERHEAD_BYTES;
    // Wake drain() at half the mark, not just below it: waking at hwm - 1 byte would let the sender add one
    // frame and wait again, a promise round trip per frame (measured: ~10x slower for small frames).
    if (this.#queuedBytes <= this.#lowWaterBytes) this.#peer.#wakeDrains();
    return frame;
  }

  /** Hands arrived frames (or the end / the error) to waiting next() calls, in order. */
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
        if (this.#cfg.latencyMs > 0 && !this.#arrived(this.#due[this.#head]!)) return;
        const frame = this.#take();
        readers.shift()!.resolve({ done: false, value: frame });
        continue;
      }
      if (this.#endAt >= 0) {
        if (this.#cfg.latencyMs > 0 && !this.#arrived(this.#endAt)) return;
        this.#readDone = true; // end of stream reached; the loop resolves the remaining readers with DONE
        continue;
      }
      return;
    }
  }

  /** True if `due` has passed; otherwise arms one timer to pump again then. */
  #arrived(due: number): boolean {
    const wait = due - performance.now();
    if (wait <= 0) return true;
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#pump();
      }, Math.ceil(wait));
    }
    return false;
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

  /** The error drain() reports once this end can no longer send. */
  #endedError(): Error {
    return this.#error ?? sealwireError("ERR_CONNECTION_CLOSED", "the connection was closed; dial a new one");
  }

  /**
   * Graceful close, both ends at once: nothing more may be sent either way, and each end's iterator ends after
   * the frames its peer had already sent (a two-way close, like a WebSocket close handshake).
   */
  #endGracefully(): void {
    const endAt = this.#cfg.latencyMs > 0 ? performance.now() + this.#cfg.latencyMs : 0;
    for (const end of [this, this.#peer]) {
      end.#state = CLOSED;
      end.#endAt = endAt;
      end.#rejectDrains(end.#endedError());
      end.#resolveClosed(undefined);
      end.#pump();
    }
  }

  /** Ends this end with `err`: queued frames are released, waiting reads and drains fail, `closed` settles. */
  #fail(err: Error): void {
    if (this.#state === OPEN) this.#state = ABORTED;
    this.#error ??= err;
    if (!this.#readDone) {
      this.#readDone = true;
      this.#readError = err;
    }
    this.#dropInbox();
    this.#rejectDrains(err);
    this.#resolveClosed(err); // no-op if a graceful close already settled it
    this.#pump();
  }

  #stopReading(): void {
    if (!this.#readDone) {
      this.#readDone = true;
      this.#dropInbox();
      this.#pump();
    }
    if (this.#state === OPEN) this.close().catch(() => {});
  }

  /** Forgets every queued frame so an abandoned or aborted connection does not hold memory. */
  #dropInbox(): void {
    this.#frames = [];
    this.#due = [];
    this.#head = 0;
    this.#queuedBytes = 0;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }
}

/** A listener's mutable state, owned by the transport's registry while the listener is open. */
interface ListenerCore {
  readonly name: string;
  readonly pending: MemoryConnection[];
  readonly acceptors: Waiter<IteratorResult<Connection>>[];
  closed: boolean;
}

class MemoryListener implements Listener {
  readonly addr: string;
  readonly #core: ListenerCore;
  readonly #unregister: () => void;
  #iterated = false;

  constructor(core: ListenerCore, unregister: () => void) {
    this.addr = ADDR_PREFIX + core.name;
    this.#core = core;
    this.#unregister = unregister;
  }

  close(): Promise<void> {
    const core = this.#core;
    if (core.closed) return Promise.resolve();
    core.closed = true;
    this.#unregister();
    // Like a closed TCP listening socket resets its accept queue: connections nobody accepted are aborted, so
    // their diallers learn at once instead of waiting on a connection no one will ever read.
    for (const conn of core.pending.splice(0)) {
      conn.abort(sealwireError("ERR_CONNECTION_ABORTED", "the listener closed before accepting this connection"));
    }
    for (const a of core.acceptors.splice(0)) a.resolve(DONE);
    return Promise.resolve();
  }

  [Symbol.asyncIterator](): AsyncIterator<Connection> {
    if (this.#iterated) throw alreadyIterated("listener");
    this.#iterated = true;
    const core = this.#core;
    const iterator: AsyncIterator<Connection> & AsyncIterable<Connection> = {
      next: () => {
        const conn = core.pending.shift();
        if (conn !== undefined) return Promise.resolve({ done: false, value: conn });
        if (core.closed) return Promise.resolve(DONE);
        return new Promise((resolve, reject) => core.acceptors.push({ resolve, reject }));
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
    return "MemoryListener";
  }
}

class MemoryTransport implements Transport {
  readonly [transportSymbol] = true as const;
  readonly kind = "memory";
  readonly maxFrameBytes: number;
  readonly #cfg: Config;
  readonly #listeners = new Map<string, ListenerCore>();
  #nextConnId = 1;

  constructor(cfg: Config) {
    this.#cfg = cfg;
    this.maxFrameBytes = cfg.maxFrameBytes;
  }

  async listen(addr: string, options?: ListenOptions): Promise<Listener> {
    const name = parseAddr(addr, "listen(addr)");
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "listen()");
    if (this.#listeners.has(name)) {
      throw sealwireError(
        "ERR_ADDRESS_IN_USE",
        `something already listens at ${ADDR_PREFIX}${name}; close it or pick another name`,
      );
    }
    const core: ListenerCore = { name, pending: [], acceptors: [], closed: false };
    this.#listeners.set(name, core);
    return new MemoryListener(core, () => {
      if (this.#listeners.get(name) === core) this.#listeners.delete(name);
    });
  }

  async dial(addr: string, options?: DialOptions): Promise<Connection> {
    const name = parseAddr(addr, "dial(addr)");
    const signal = options?.signal;
    if (signal?.aborted) throw abortError(signal, "dial()");
    // options.remotePeer is ignored: the memory transport authenticates nobody (wrap it in Noise for that).
    if (this.#cfg.latencyMs > 0) await delay(this.#cfg.latencyMs, signal, "dial()");
    const core = this.#listeners.get(name);
    if (core === undefined || core.closed) {
      throw sealwireError(
        "ERR_CONNECTION_REFUSED",
        `nothing listens at ${ADDR_PREFIX}${name} on this memory network; listen there first ` +
          "(each memory() call is a separate network)",
      );
    }
    if (core.pending.length >= this.#cfg.backlog) {
      throw sealwireError(
        "ERR_CONNECTION_REFUSED",
        `the listener at ${ADDR_PREFIX}${name} has ${this.#cfg.backlog} connections waiting to be accepted; ` +
          "accept faster or raise backlog",
      );
    }
    const id = this.#nextConnId++;
    const [client, server] = MemoryConnection.pair(this.#cfg, ADDR_PREFIX + name, `${ADDR_PREFIX}${name}#${id}`);
    const acceptor = core.acceptors.shift();
    if (acceptor !== undefined) acceptor.resolve({ done: false, value: server });
    else core.pending.push(server);
    return client;
  }

  addressFor(agentId: string): string {
    if (typeof agentId !== "string") throw invalid("addressFor(agentId): agentId must be a string");
    const addr = ADDR_PREFIX + agentId;
    parseAddr(addr, "addressFor(agentId)");
    return addr;
  }

  get [Symbol.toStringTag](): string {
    return "MemoryTransport";
  }
}

/**
 * Creates an isolated in-memory network. Listeners and dials on the returned transport see each other and
 * nothing else.
 *
 * @throws SealwireError `ERR_INVALID_ARGUMENT` if an option is out of range, of the wrong type, or unknown.
 */
export function memory(init?: MemoryInit): Transport {
  return new MemoryTransport(resolveConfig(init));
}
