/**
 * A seen-envelope cache that survives restarts: an envelope captured before the receiving process restarts is
 * still refused (ERR_REPLAY) after it. Plugs into {@link EnvelopeOpener} as its `replay`, like the in-memory
 * `ReplayCache`, through the {@link ReplayGuard} contract.
 *
 * **File format** (text, one record per line, append-only):
 * ```
 * sealwire-replay/1
 * <expiresAt ms, decimal> <id>
 * …
 * ```
 * Ids are 1–200 printable ASCII characters without spaces (the opener's ids are `<sender>/<32 hex>`), so a line is
 * at most {@link MAX_LINE_BYTES} bytes and needs no escaping.
 *
 * **Crash safety.** Every accepted id is written with `write(2)` before `checkAndAdd` returns true, so a process
 * crash (uncaught exception, OOM kill, `kill -9`) never loses an accepted id. `fsync: "always"` (the default) also
 * `fdatasync`s each record, so an OS crash or power loss does not either; `"never"` leaves that to the OS (about
 * 0.3 ms saved per envelope on the ext4 disk this was measured on — use it when the ttl window is short and power
 * loss is not in your threat model). A crash can leave a torn last line (no trailing newline); it is ignored on
 * load and cut off before the next append. A damaged line anywhere else means records may be lost, so opening
 * fails closed (ERR_REPLAY_STORE) rather than accept replays.
 *
 * **Bounded.** Records live until their `expiresAt` (the envelope's ttl window plus clock skew, at most a day:
 * `MAX_TTL_MS`). When the file holds more than max(`compactThreshold`, 2 × the live records at the last compaction)
 * lines, it is compacted: live records are rewritten to a temp file (mode 0600, fsync) that atomically replaces
 * the old one, so expired records never make up more than about half of it, and a crash mid-compaction leaves
 * the old file or the new one. At most `maxEntries` live ids are held; beyond that the store refuses envelopes
 * (ERR_QUEUE_FULL), exactly like `ReplayCache`.
 *
 * **One process per file.** A lock file (`<path>.lock`, holding the owner's pid) stops two processes — or two
 * stores in one process — from sharing a file and losing each other's records to compaction. A lock left by a
 * crashed process is taken over when its pid is no longer running.
 *
 * @module
 * @example
 * ```ts
 * const replay = await PersistentReplayCache.open("/var/lib/agent/bob.replay");
 * const opener = new EnvelopeOpener({ identity: bob, trust, replay });
 * // … on shutdown
 * replay.close();
 * ```
 */
import * as nc from "node:crypto";
import * as fs from "node:fs";
import * as nodePath from "node:path";
import { sealwireError, SealwireError } from "./errors.js";
import type { ReplayGuard } from "./replay-guard.js";

/** First line of a v1 replay store. */
export const REPLAY_STORE_MAGIC = "sealwire-replay/1";
/** Longest id accepted. */
export const MAX_REPLAY_ID_CHARS = 200;
/** Longest record line: 16 digits, a space, an id, a newline. */
export const MAX_LINE_BYTES = 16 + 1 + MAX_REPLAY_ID_CHARS + 1;
const ID_RE = /^[\x21-\x7e]{1,200}$/;
const LINE_RE = /^([0-9]{1,16}) ([\x21-\x7e]{1,200})$/;

/** Options for {@link PersistentReplayCache.open}. */
export interface ReplayStoreOptions {
  /** Most live ids held; more are refused with ERR_QUEUE_FULL (fail closed). @default 100000 */
  maxEntries?: number;
  /** `"always"`: fdatasync every record (survives power loss); `"never"`: leave it to the OS. @default "always" */
  fsync?: "always" | "never";
  /** Compact once the file holds more than max(this, 2 × live records at the last compaction) lines. @default 1024 */
  compactThreshold?: number;
  /** Clock used when loading (to drop expired records). @default Date.now */
  now?: () => number;
}

const errno = (e: unknown): string => (e as NodeJS.ErrnoException)?.code ?? "error";

/** Paths opened by this process, so a second open of the same file is refused and our own stale locks recognised. */
const openInThisProcess = new Set<string>();

function writeAll(fd: number, data: Buffer): void {
  for (let off = 0; off < data.length; ) off += fs.writeSync(fd, data, off, data.length - off);
}

function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, "r");
    fs.fsyncSync(fd);
  } catch {
    /* not possible on every platform or file system */
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Writes `data` to a fresh 0600 temp file next to `path`, fsyncs it, and renames it over `path`. */
function replaceFileSync(path: string, data: Buffer): void {
  const tmp = nodePath.join(nodePath.dirname(path), `.${nodePath.basename(path)}.${nc.randomBytes(8).toString("hex")}.tmp`);
  const fd = fs.openSync(tmp, "wx", 0o600);
  try {
    try {
      fs.fchmodSync(fd, 0o600);
      writeAll(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, path);
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* already renamed or never created */
    }
    throw e;
  }
  syncDir(nodePath.dirname(path));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errno(e) === "EPERM"; // exists, owned by someone else
  }
}

function storeError(message: string, cause?: unknown): SealwireError<"ERR_REPLAY_STORE"> {
  return sealwireError("ERR_REPLAY_STORE", message, cause === undefined ? {} : { cause });
}

/** Creates `<path>.lock` holding our pid, taking over a lock whose owner is gone. */
function acquireLock(path: string): string {
  const lockPath = `${path}.lock`;
  const content = Buffer.from(`${process.pid}\n`);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      // Written whole to a temp file, then linked into place: the lock never exists half-written.
      const tmp = `${lockPath}.${nc.randomBytes(6).toString("hex")}.tmp`;
      const fd = fs.openSync(tmp, "wx", 0o600);
      try {
        writeAll(fd, content);
      } finally {
        fs.closeSync(fd);
      }
      try {
        fs.linkSync(tmp, lockPath);
      } catch (e) {
        if (errno(e) === "EEXIST") throw e;
        // No hard links here: exclusive create (a crash in between leaves an empty lock, reported below).
        const lfd = fs.openSync(lockPath, "wx", 0o600);
        try {
          writeAll(lfd, content);
        } finally {
          fs.closeSync(lfd);
        }
      } finally {
        fs.unlinkSync(tmp);
      }
      return lockPath;
    } catch (e) {
      if (errno(e) !== "EEXIST") throw storeError(`cannot create the lock ${lockPath} (${errno(e)})`, e);
    }
    let text: string;
    try {
      text = fs.readFileSync(lockPath, "latin1");
    } catch (e) {
      if (errno(e) === "ENOENT") continue; // released meanwhile
      throw storeError(`cannot read the lock ${lockPath} (${errno(e)})`, e);
    }
    const m = /^([0-9]{1,10})\n$/.exec(text);
    if (!m) throw storeError(`the lock ${lockPath} is unreadable; delete it if no process uses ${path}`);
    const pid = Number(m[1]);
    const ours = pid === process.pid;
    // Our own pid is stale unless this process has the file open (a restarted container often reuses pid 1).
    if ((ours && openInThisProcess.has(path)) || (!ours && isAlive(pid))) {
      throw storeError(
        `${path} is in use by process ${pid}${ours ? " (this process)" : ""}; one store per file (delete ${lockPath} if that process is not a sealwire agent)`,
      );
    }
    try {
      fs.unlinkSync(lockPath);
    } catch (e) {
      if (errno(e) !== "ENOENT") throw storeError(`cannot remove the stale lock ${lockPath} (${errno(e)})`, e);
    }
  }
  throw storeError(`cannot take the lock ${lockPath}: other processes keep taking it`);
}

function releaseLock(lockPath: string): void {
  try {
    // Only remove it if it is still ours.
    if (fs.readFileSync(lockPath, "latin1") === `${process.pid}\n`) fs.unlinkSync(lockPath);
  } catch {
    /* gone already */
  }
}

/**
 * A {@link ReplayGuard} backed by an append-only file. Create with {@link PersistentReplayCache.open}; call
 * {@link close} on shutdown (not required for safety: records are written before they count).
 */
export class PersistentReplayCache implements ReplayGuard {
  /** Absolute path of the store. */
  readonly path: string;
  /** Most live ids held. */
  readonly maxEntries: number;
  readonly #seen = new Map<string, number>();
  readonly #fsync: boolean;
  readonly #threshold: number;
  readonly #lockPath: string;
  #fd: number | null;
  /** Record lines in the file. */
  #lines: number;
  #compactAt: number;
  /** Set after a failed write: the file may end mid-line, so nothing more is accepted until reopened. */
  #broken: SealwireError | null = null;

  private constructor(path: string, maxEntries: number, fsyncAlways: boolean, threshold: number, lockPath: string, fd: number, lines: number) {
    this.path = path;
    this.maxEntries = maxEntries;
    this.#fsync = fsyncAlways;
    this.#threshold = threshold;
    this.#lockPath = lockPath;
    this.#fd = fd;
    this.#lines = lines;
    this.#compactAt = threshold;
  }

  /**
   * Opens (or creates, mode 0600) the store at `path` and loads its live records. Throws ERR_REPLAY_STORE if the
   * file is locked by a running process, is not a replay store, has a damaged line before the last, is larger
   * than its bound, or is accessible by group or others.
   */
  static async open(path: string, options: ReplayStoreOptions = {}): Promise<PersistentReplayCache> {
    if (typeof path !== "string" || path.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "path must be a non-empty string");
    const maxEntries = options.maxEntries ?? 100_000;
    if (!Number.isInteger(maxEntries) || maxEntries < 1 || maxEntries > 10_000_000) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "maxEntries must be an integer from 1 to 10000000");
    }
    const fsyncMode = options.fsync ?? "always";
    if (fsyncMode !== "always" && fsyncMode !== "never") throw sealwireError("ERR_INVALID_ARGUMENT", 'fsync must be "always" or "never"');
    const threshold = options.compactThreshold ?? 1024;
    if (!Number.isInteger(threshold) || threshold < 16 || threshold > 10_000_000) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "compactThreshold must be an integer from 16 to 10000000");
    }
    const now = (options.now ?? Date.now)();
    const abs = nodePath.resolve(path);
    const lockPath = acquireLock(abs);
    openInThisProcess.add(abs);
    try {
      const { seen, lines, validBytes, fileBytes } = PersistentReplayCache.#load(abs, now, maxEntries, threshold);
      let fd: number;
      try {
        if (validBytes < fileBytes) fs.truncateSync(abs, validBytes); // drop a torn last line before appending
        fd = fs.openSync(abs, "a");
      } catch (e) {
        throw storeError(`cannot open ${abs} for appending (${errno(e)})`, e);
      }
      const store = new PersistentReplayCache(abs, maxEntries, fsyncMode === "always", threshold, lockPath, fd, lines);
      for (const [k, v] of seen) store.#seen.set(k, v);
      store.#compactAt = Math.max(threshold, 2 * seen.size);
      if (store.#lines > store.#compactAt) store.compact(now);
      return store;
    } catch (e) {
      openInThisProcess.delete(abs);
      releaseLock(lockPath);
      throw e;
    }
  }

  static #load(
    path: string,
    now: number,
    maxEntries: number,
    threshold: number,
  ): { seen: Map<string, number>; lines: number; validBytes: number; fileBytes: number } {
    let data: Buffer;
    let fd: number;
    try {
      fd = fs.openSync(path, "r");
    } catch (e) {
      if (errno(e) !== "ENOENT") throw storeError(`cannot open ${path} (${errno(e)})`, e);
      try {
        replaceFileSync(path, Buffer.from(REPLAY_STORE_MAGIC + "\n"));
      } catch (e2) {
        throw storeError(`cannot create ${path} (${errno(e2)})`, e2);
      }
      return { seen: new Map(), lines: 0, validBytes: REPLAY_STORE_MAGIC.length + 1, fileBytes: REPLAY_STORE_MAGIC.length + 1 };
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw storeError(`${path} is not a regular file`);
      if (process.platform !== "win32" && (st.mode & 0o077) !== 0) {
        // Anyone who can write it can erase records and replay envelopes.
        throw storeError(`${path} is accessible by group or others; run: chmod 600 '${path.replace(/'/g, `'\\''`)}'`);
      }
      const maxBytes = (2 * maxEntries + threshold + 2) * MAX_LINE_BYTES;
      if (st.size > maxBytes) throw storeError(`${path} is larger than its bound (${maxBytes} bytes); it is not a replay store of this size`);
      data = Buffer.alloc(st.size);
      let filled = 0;
      while (filled < data.length) {
        const n = fs.readSync(fd, data, filled, data.length - filled, filled);
        if (n === 0) break;
        filled += n;
      }
      data = data.subarray(0, filled);
    } catch (e) {
      if (SealwireError.is(e)) throw e;
      throw storeError(`cannot read ${path} (${errno(e)})`, e);
    } finally {
      fs.closeSync(fd);
    }
    const seen = new Map<string, number>();
    const magic = REPLAY_STORE_MAGIC + "\n";
    if (data.length === 0 || data.equals(Buffer.from(magic).subarray(0, data.length))) {
      // Empty or a torn header: nothing was ever recorded in it (the header is written before any record).
      try {
        replaceFileSync(path, Buffer.from(magic));
      } catch (e) {
        throw storeError(`cannot rewrite ${path} (${errno(e)})`, e);
      }
      return { seen, lines: 0, validBytes: magic.length, fileBytes: magic.length };
    }
    if (data.subarray(0, magic.length).toString("latin1") !== magic) {
      throw storeError(`${path} is not a sealwire replay store (wrong first line); check the path`);
    }
    const lastNl = data.lastIndexOf(0x0a);
    const validBytes = lastNl + 1; // anything after the last newline is a torn write
    let lines = 0;
    let pos = magic.length;
    let lineNo = 1;
    while (pos < validBytes) {
      const nl = data.indexOf(0x0a, pos);
      lineNo++;
      const m = nl - pos <= MAX_LINE_BYTES ? LINE_RE.exec(data.subarray(pos, nl).toString("latin1")) : null;
      if (!m) {
        throw storeError(
          `${path} is damaged at line ${lineNo}; records may be lost, so it is refused rather than let envelopes be replayed. ` +
            "Move it aside only once no envelope recorded in it can still be valid (after the longest ttl, one day at most)",
        );
      }
      const exp = Number(m[1]);
      const id = m[2]!;
      if (exp >= now && (seen.get(id) ?? -1) < exp) seen.set(id, exp);
      lines++;
      pos = nl + 1;
    }
    // More live records than maxEntries (a lower limit than when they were written) are all kept: forgetting
    // any would allow its replay. New envelopes are refused until enough expire.
    return { seen, lines, validBytes, fileBytes: data.length };
  }

  /** Number of ids held (live, plus expired ones not yet evicted). */
  get size(): number {
    return this.#seen.size;
  }

  /** True after {@link close}. */
  get closed(): boolean {
    return this.#fd === null;
  }

  /**
   * Records `id` until `expiresAt`; returns false if it was already seen and has not expired at `now`. The record
   * is written (and, with `fsync: "always"`, synced) before this returns true. Throws ERR_QUEUE_FULL when
   * `maxEntries` live ids are held, ERR_REPLAY_STORE when the write fails (and for every later call until
   * reopened), ERR_CLOSED after {@link close}.
   */
  checkAndAdd(id: string, expiresAt: number, now: number): boolean {
    if (this.#fd === null) throw sealwireError("ERR_CLOSED", `replay store ${this.path} was closed`);
    if (this.#broken) throw this.#broken;
    if (typeof id !== "string" || !ID_RE.test(id)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `replay ids must be 1-${MAX_REPLAY_ID_CHARS} printable ASCII characters without spaces`);
    }
    if (!Number.isSafeInteger(expiresAt) || expiresAt < 0 || expiresAt >= 1e16) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "expiresAt must be a non-negative integer timestamp in milliseconds");
    }
    if (typeof now !== "number" || !Number.isFinite(now)) throw sealwireError("ERR_INVALID_ARGUMENT", "now must be a finite number");
    const prev = this.#seen.get(id);
    if (prev !== undefined && prev >= now) return false;
    if (this.#seen.size >= this.maxEntries) this.#evict(now);
    if (this.#seen.size >= this.maxEntries) {
      // Fail closed: if we cannot remember it, we cannot prove a later copy is a replay.
      throw sealwireError("ERR_QUEUE_FULL", "replay store is full; the envelope was refused (raise maxEntries or lower ttls)");
    }
    try {
      writeAll(this.#fd, Buffer.from(`${expiresAt} ${id}\n`, "latin1"));
      if (this.#fsync) fs.fdatasyncSync(this.#fd);
    } catch (e) {
      // A partial line may now end the file; appending more would corrupt the next one. Reopening cuts it off.
      this.#broken = storeError(`cannot write to ${this.path} (${errno(e)}); envelopes are refused until the store is reopened`, e);
      throw this.#broken;
    }
    this.#seen.set(id, expiresAt);
    this.#lines++;
    if (this.#lines > this.#compactAt) {
      try {
        this.compact(now);
      } catch {
        // The old file is intact and still appended to; try again after another threshold's worth of records.
        this.#compactAt = this.#lines + this.#threshold;
      }
    }
    return true;
  }

  #evict(now: number): void {
    for (const [k, exp] of this.#seen) if (exp < now) this.#seen.delete(k);
  }

  /**
   * Drops records expired at `now` and rewrites the file atomically with the live ones. Runs by itself when
   * expired records may dominate; call it directly only to shrink the file on demand.
   */
  compact(now: number = Date.now()): void {
    if (this.#fd === null) throw sealwireError("ERR_CLOSED", `replay store ${this.path} was closed`);
    if (this.#broken) throw this.#broken;
    this.#evict(now);
    const parts: string[] = [REPLAY_STORE_MAGIC + "\n"];
    for (const [id, exp] of this.#seen) parts.push(`${exp} ${id}\n`);
    try {
      replaceFileSync(this.path, Buffer.from(parts.join(""), "latin1"));
    } catch (e) {
      throw storeError(`cannot compact ${this.path} (${errno(e)})`, e);
    }
    // The old descriptor points at the replaced inode; appends must go to the new file.
    let fresh: number;
    try {
      fresh = fs.openSync(this.path, "a");
    } catch (e) {
      // Keep the old descriptor so close() still works; nothing more is accepted.
      this.#broken = storeError(`cannot reopen ${this.path} after compaction (${errno(e)})`, e);
      throw this.#broken;
    }
    fs.closeSync(this.#fd);
    this.#fd = fresh;
    this.#lines = this.#seen.size;
    this.#compactAt = Math.max(this.#threshold, 2 * this.#seen.size);
  }

  /** Syncs and closes the file and releases the lock. Idempotent. Later calls throw ERR_CLOSED. */
  close(): void {
    const fd = this.#fd;
    if (fd === null) return;
    this.#fd = null;
    try {
      fs.fsyncSync(fd);
    } catch {
      /* nothing more we can do; records were written */
    }
    fs.closeSync(fd);
    openInThisProcess.delete(this.path);
    releaseLock(this.#lockPath);
    this.#seen.clear();
  }
}
