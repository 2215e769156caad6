/**
 * Encrypted keystore: one identity's secret keys at rest, in a file only its owner can read.
 *
 * **Format v1** (text, three lines, each ending in `\n`; nothing else in the file):
 * ```
 * sealwire-keystore/1
 * {"kdf":"scrypt","logN":17,"r":8,"p":1,"salt":"…","aead":"xchacha20poly1305","nonce":"…","identity":{…}}
 * <base64url(ciphertext || 16-byte tag)>
 * ```
 * - Line 1 is the magic and the format version; it doubles as the domain separator of the AAD.
 * - Line 2 is the header: KDF name and parameters (N = 2^logN, r, p), a random 32-byte salt, the AEAD name, a
 *   random 24-byte nonce, and the public identity (`v, id, kid, signPub, sealPub, fingerprint`), base64url without
 *   padding. Its key order and spelling are fixed (one encoding per header; anything else is refused).
 * - Key = scrypt(passphrase, "sealwire/v1/keystore-kdf:" || salt, N, r, p, 32 bytes) (RFC 7914). A string
 *   passphrase is NFC-normalised and UTF-8 encoded first, so the same words typed on another keyboard still match.
 * - Line 3 is XChaCha20-Poly1305(key, nonce, aad = line 1 || "\n" || line 2 || "\n", plaintext = Ed25519 seed
 *   (32) || X25519 secret (32)). The whole header — version, KDF parameters, salt, nonce, agent id, kid and public
 *   keys — is authenticated, so an edit to any of it fails like a wrong passphrase.
 *
 * **Why these choices.** scrypt is the memory-hard KDF available in both crypto providers: with the native
 * provider we run `node:crypto` scrypt (OpenSSL, on the libuv thread pool, so the event loop keeps running, and
 * 2.6× faster than pure JS here: 0.42 s against 1.1 s at the default N = 2^17, r = 8 — so the same wall-clock
 * budget buys more attacker cost), with the noble provider `@noble/hashes` `scryptAsync` (pure JS, yields to the
 * event loop). Both compute standard scrypt; a file written by one loads with the other. XChaCha20-Poly1305's
 * 24-byte nonce is safe to draw at random for every save; callers never pass one.
 *
 * **Limits.** Parameters read from a file are bounded before any memory is allocated ({@link KDF_LIMITS}): a
 * hostile file cannot make us allocate gigabytes or spin for minutes. Files larger than {@link MAX_KEYSTORE_BYTES}
 * are refused unread.
 *
 * **Errors.** Loading refuses a file readable or writable by group or others (ERR_KEYSTORE_PERMISSIONS, with the
 * `chmod 600 …` to run; skipped on Windows, which has no POSIX modes). A wrong passphrase and a truncated, damaged
 * or edited file are the same error, ERR_KEYSTORE_DECRYPT: no partial state, no hint which. ERR_KEYSTORE_FORMAT
 * is kept for files that are clearly something else: not a keystore, another version or algorithm, parameters
 * beyond the limits — cases where the message can say what to do.
 *
 * **Secrets.** The derived key, the decrypted plaintext and passphrase bytes we created are wiped in `finally`
 * blocks on every path. A passphrase given as a JavaScript string cannot be wiped (strings are immutable); pass a
 * `Uint8Array` or a provider function returning one to avoid that copy. See SECURITY.md, "Memory and keys at rest".
 *
 * @module
 * @example
 * ```ts
 * const alice = await generateIdentity("alice");
 * await saveIdentity("alice.key", alice, { passphrase: passphraseFromEnv("SEALWIRE_PASSPHRASE") });
 * const again = await loadIdentity("alice.key", { passphrase: passphraseFromEnv("SEALWIRE_PASSPHRASE") });
 * const pub = await readPublicIdentity("alice.key"); // no passphrase needed
 * ```
 */
import * as nc from "node:crypto";
import * as fs from "node:fs";
import * as fsp from "node:fs/promises";
import * as nodePath from "node:path";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import { scryptAsync } from "@noble/hashes/scrypt.js";
import { concatBytes, fromBase64url, fromUtf8, toBase64url, utf8, wipe } from "./_bytes.js";
import { defaultProvider, type CryptoProvider } from "./_crypto.js";
import { SealwireError, sealwireError } from "./errors.js";
import { Identity, parsePublicIdentity, type PublicIdentity } from "./identity.js";

/** First line of every v1 keystore. */
export const KEYSTORE_MAGIC = "sealwire-keystore/1";
const MAGIC_PREFIX = "sealwire-keystore/";
const KDF_DOMAIN = utf8("sealwire/v1/keystore-kdf:");
/** Largest keystore file we read (a v1 file is about 450 bytes). */
export const MAX_KEYSTORE_BYTES = 8 * 1024;
/** Longest passphrase accepted, in UTF-8 bytes. */
export const MAX_PASSPHRASE_BYTES = 4096;
const SALT_BYTES = 32;
const NONCE_BYTES = 24;
const SECRETS_BYTES = 64;
const TAG_BYTES = 16;

/** scrypt parameters: N = 2^logN, block size r, parallelism p (RFC 7914 §2). */
export interface KdfParams {
  /** log2 of the CPU/memory cost N. */
  logN: number;
  /** Block size. */
  r: number;
  /** Parallelism. */
  p: number;
}

/**
 * Defaults for new keystores: N = 2^17, r = 8, p = 1 — 128 MiB and about 0.4 s (native) / 1.1 s (noble) on the
 * machine this was measured on. The interactive-login parameters of RFC 7914 §2 are N = 2^14; we spend 8× that
 * because a keystore is opened once per process start, not per request.
 */
export const DEFAULT_KDF: Readonly<KdfParams> = Object.freeze({ logN: 17, r: 8, p: 1 });

/**
 * Bounds on scrypt parameters, applied when saving and, before any allocation, to every file we load.
 * `logN` 10 to 20, `r` 1 to 32, `p` 1 to 16; memory (128·r·N bytes) at most `maxMemoryBytes` (256 MiB unless the
 * loader raises it) and work (N·r·p) at most 4× the default. logN below 15 is for tests only.
 */
export const KDF_LIMITS = Object.freeze({
  minLogN: 10,
  maxLogN: 20,
  maxR: 32,
  maxP: 16,
  maxMemoryBytes: 256 * 1024 * 1024,
  maxWork: 4 * 2 ** DEFAULT_KDF.logN * DEFAULT_KDF.r * DEFAULT_KDF.p,
});
/** The highest memory bound a caller may opt into with `maxKdfMemoryBytes`. */
const HARD_MAX_MEMORY_BYTES = 2 ** 32;

/** A value a passphrase provider returns. */
export type PassphraseValue = string | Uint8Array;
/**
 * A function that returns the passphrase when it is needed (a prompt, a vault, a file). It is called once per
 * load or save and its result is never cached. A `Uint8Array` it returns is wiped after use, so return a fresh
 * array each call.
 */
export type PassphraseProvider = () => PassphraseValue | Promise<PassphraseValue>;
/**
 * A passphrase: a string, bytes, or a provider. A `Uint8Array` given directly belongs to the caller and is not
 * modified. Empty or missing is always an error (ERR_NO_PASSPHRASE), never a default.
 */
export type Passphrase = PassphraseValue | PassphraseProvider;

/** Options for {@link saveIdentity}. */
export interface SaveOptions {
  /** The passphrase that will unlock the file. Required. */
  passphrase: Passphrase;
  /** scrypt parameters. @default DEFAULT_KDF */
  kdf?: Partial<KdfParams>;
  /** Replace an existing file at `path`. @default false (ERR_KEYSTORE_EXISTS) */
  overwrite?: boolean;
}

/** Options for {@link loadIdentity}. */
export interface LoadOptions {
  /** The passphrase. Required. */
  passphrase: Passphrase;
  /** Crypto provider for the loaded identity (and the scrypt implementation). @default defaultProvider */
  provider?: CryptoProvider;
  /**
   * Largest scrypt memory a file may ask for, in bytes. Raise it only for files you wrote with larger parameters.
   * @default KDF_LIMITS.maxMemoryBytes (256 MiB)
   */
  maxKdfMemoryBytes?: number;
}

// ---------------------------------------------------------------------------------------------------------------
// Passphrases
// ---------------------------------------------------------------------------------------------------------------

/**
 * Resolves a passphrase to bytes. `owned` says whether we created the array (and must wipe it). Throws
 * ERR_NO_PASSPHRASE when missing or empty.
 */
async function resolvePassphrase(passphrase: Passphrase | undefined): Promise<{ bytes: Uint8Array; owned: boolean }> {
  let value: unknown = passphrase;
  let fromProvider = false;
  if (typeof value === "function") {
    fromProvider = true;
    try {
      value = await (value as PassphraseProvider)();
    } catch (e) {
      if (SealwireError.is(e)) throw e;
      // The cause is the caller's own error (a vault or prompt failing); we add nothing secret to it.
      throw sealwireError("ERR_NO_PASSPHRASE", "the passphrase provider failed; see the cause", { cause: e });
    }
  }
  if (value === undefined || value === null || value === "") {
    throw sealwireError("ERR_NO_PASSPHRASE", "a passphrase is required and must not be empty; there is no default");
  }
  let bytes: Uint8Array;
  let owned: boolean;
  if (typeof value === "string") {
    // NFC: the same passphrase typed with composed or decomposed accents derives the same key.
    bytes = utf8(value.normalize("NFC"));
    owned = true;
  } else if (value instanceof Uint8Array) {
    bytes = value;
    owned = fromProvider; // bytes from a provider are ours to wipe; bytes passed directly are the caller's
  } else {
    throw sealwireError("ERR_INVALID_ARGUMENT", "passphrase must be a string, a Uint8Array, or a function returning one");
  }
  if (bytes.length === 0) {
    throw sealwireError("ERR_NO_PASSPHRASE", "a passphrase is required and must not be empty; there is no default");
  }
  if (bytes.length > MAX_PASSPHRASE_BYTES) {
    if (owned) wipe(bytes);
    throw sealwireError("ERR_INVALID_ARGUMENT", `passphrase must be at most ${MAX_PASSPHRASE_BYTES} bytes`);
  }
  return { bytes, owned };
}

/** Options for {@link passphraseFromEnv}. */
export interface PassphraseFromEnvOptions {
  /**
   * Delete the variable from `process.env` after reading it, so child processes do not inherit it. The provider
   * then works once. @default false
   */
  unset?: boolean;
}

/**
 * A provider that reads the passphrase from environment variable `name` each time it is called. Missing or empty
 * is ERR_NO_PASSPHRASE (never a silent empty string). The value is a JavaScript string and cannot be wiped; prefer
 * {@link passphraseFromFd} or {@link passphraseFromFile} where you can.
 */
export function passphraseFromEnv(name: string, options: PassphraseFromEnvOptions = {}): () => Promise<string> {
  if (typeof name !== "string" || !/^[A-Za-z_][A-Za-z0-9_]{0,127}$/.test(name)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "environment variable name must match [A-Za-z_][A-Za-z0-9_]*");
  }
  return async () => {
    const v = process.env[name];
    if (v === undefined || v === "") {
      throw sealwireError("ERR_NO_PASSPHRASE", `environment variable ${name} is not set or is empty; set it to the keystore passphrase`);
    }
    if (options.unset === true) delete process.env[name];
    return v;
  };
}

/** Strips one trailing "\n" or "\r\n" (what `echo` and editors add), returning a view. */
function stripNewline(b: Uint8Array): Uint8Array {
  let n = b.length;
  if (n > 0 && b[n - 1] === 0x0a) {
    n--;
    if (n > 0 && b[n - 1] === 0x0d) n--;
  }
  return b.subarray(0, n);
}

/** Copies the passphrase out of a read buffer, wipes the buffer, refuses empty and oversized input. */
function takePassphrase(buf: Uint8Array, filled: number, what: string): Uint8Array {
  try {
    if (filled > MAX_PASSPHRASE_BYTES + 2) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `${what} holds more than ${MAX_PASSPHRASE_BYTES} bytes; it must contain only the passphrase`);
    }
    const pass = stripNewline(buf.subarray(0, filled));
    if (pass.length === 0) throw sealwireError("ERR_NO_PASSPHRASE", `${what} is empty; it must contain the passphrase`);
    if (pass.length > MAX_PASSPHRASE_BYTES) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `passphrase must be at most ${MAX_PASSPHRASE_BYTES} bytes`);
    }
    return Uint8Array.from(pass);
  } finally {
    wipe(buf);
  }
}

/** Options for {@link passphraseFromFd}. */
export interface PassphraseFromFdOptions {
  /** Give up if the writer has not closed its end by then. @default 30000 */
  timeoutMs?: number;
}

/**
 * A provider that reads the passphrase from an open file descriptor until end of file (`--passphrase-fd 3` with
 * `3< file` or `3< <(pass show agent)`), strips one trailing newline, and returns fresh bytes. The descriptor is
 * not closed (it belongs to the caller) and can be read once. At most {@link MAX_PASSPHRASE_BYTES} bytes.
 */
export function passphraseFromFd(fd: number, options: PassphraseFromFdOptions = {}): () => Promise<Uint8Array> {
  if (!Number.isInteger(fd) || fd < 0) throw sealwireError("ERR_INVALID_ARGUMENT", "fd must be a non-negative integer");
  const timeoutMs = options.timeoutMs ?? 30_000;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw sealwireError("ERR_INVALID_ARGUMENT", "timeoutMs must be a positive integer");
  return async () => {
    // One buffer, read into in place and wiped afterwards: no chunk list of copies.
    const buf = new Uint8Array(MAX_PASSPHRASE_BYTES + 3);
    let filled = 0;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let n: number;
      try {
        n = await new Promise<number>((resolve, reject) =>
          fs.read(fd, buf, filled, buf.length - filled, null, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead))),
        );
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "EAGAIN" && Date.now() < deadline) {
          // A non-blocking pipe with nothing written yet.
          await new Promise((r) => setTimeout(r, 10));
          continue;
        }
        wipe(buf);
        if (code === "EAGAIN") throw sealwireError("ERR_TIMEOUT", `no passphrase arrived on fd ${fd} within ${timeoutMs} ms`);
        throw sealwireError("ERR_NO_PASSPHRASE", `could not read the passphrase from fd ${fd} (${code ?? "error"})`);
      }
      if (n === 0) break;
      filled += n;
      if (filled === buf.length) break; // too long: takePassphrase refuses it
    }
    return takePassphrase(buf, filled, `fd ${fd}`);
  };
}

/**
 * A provider that reads the passphrase from a file (or a named pipe) each time it is called, strips one trailing
 * newline and returns fresh bytes. The file must not be readable or writable by group or others, exactly like a
 * keystore (ERR_KEYSTORE_PERMISSIONS). At most {@link MAX_PASSPHRASE_BYTES} bytes.
 */
export function passphraseFromFile(path: string): () => Promise<Uint8Array> {
  if (typeof path !== "string" || path.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "path must be a non-empty string");
  return async () => {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, "r");
    } catch (e) {
      throw sealwireError("ERR_NO_PASSPHRASE", `cannot open passphrase file ${path} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
    }
    const buf = new Uint8Array(MAX_PASSPHRASE_BYTES + 3);
    let filled = 0;
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isFIFO()) throw sealwireError("ERR_NO_PASSPHRASE", `passphrase file ${path} is not a regular file or pipe`);
      assertPrivateMode(st.mode, path);
      for (;;) {
        const { bytesRead } = await fh.read(buf, filled, buf.length - filled, null);
        if (bytesRead === 0) break;
        filled += bytesRead;
        if (filled === buf.length) break;
      }
    } catch (e) {
      wipe(buf);
      throw e;
    } finally {
      await fh.close();
    }
    return takePassphrase(buf, filled, `passphrase file ${path}`);
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Permissions and file I/O
// ---------------------------------------------------------------------------------------------------------------

/** POSIX shell quoting, for a command the user can paste. */
function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Refuses a mode with any group or other bit set, like ssh does for private keys. Windows has no POSIX modes
 * (Node reports 0o666 for every writable file), so the check is skipped there — and only there.
 */
function assertPrivateMode(mode: number, path: string): void {
  if (process.platform === "win32") return;
  if ((mode & 0o077) !== 0) {
    const abs = nodePath.resolve(path);
    throw sealwireError(
      "ERR_KEYSTORE_PERMISSIONS",
      `${abs} is accessible by group or others (mode ${(mode & 0o777).toString(8).padStart(3, "0")}); run: chmod 600 ${shellQuote(abs)}`,
    );
  }
}

/**
 * Reads a keystore file: one open, fstat on the same descriptor (no check-then-use race), bounded read.
 * `checkMode` is false only for {@link readPublicIdentity}, which reads public data.
 */
async function readKeystoreFile(path: string, checkMode: boolean): Promise<Uint8Array> {
  if (typeof path !== "string" || path.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "path must be a non-empty string");
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const hint = code === "ENOENT" ? "; create one with `sealwire keygen`" : "";
    throw sealwireError("ERR_KEYSTORE_IO", `cannot open keystore ${path} (${code ?? "error"})${hint}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw sealwireError("ERR_KEYSTORE_IO", `keystore ${path} is not a regular file`);
    if (checkMode) assertPrivateMode(st.mode, path);
    if (st.size > MAX_KEYSTORE_BYTES) {
      throw sealwireError("ERR_KEYSTORE_FORMAT", `${path} is larger than ${MAX_KEYSTORE_BYTES} bytes; it is not a sealwire keystore`);
    }
    const buf = new Uint8Array(MAX_KEYSTORE_BYTES + 1);
    let filled = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, filled, buf.length - filled, null);
      if (bytesRead === 0) break;
      filled += bytesRead;
      if (filled === buf.length) {
        throw sealwireError("ERR_KEYSTORE_FORMAT", `${path} is larger than ${MAX_KEYSTORE_BYTES} bytes; it is not a sealwire keystore`);
      }
    }
    return buf.subarray(0, filled);
  } catch (e) {
    if (SealwireError.is(e)) throw e;
    throw sealwireError("ERR_KEYSTORE_IO", `cannot read keystore ${path} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
  } finally {
    await fh.close();
  }
}

/** fsyncs a directory so a rename in it survives a power loss. Not possible on every platform; best effort. */
async function syncDir(dir: string): Promise<void> {
  let dh: fsp.FileHandle | undefined;
  try {
    dh = await fsp.open(dir, "r");
    await dh.sync();
  } catch {
    /* Windows and some file systems cannot fsync a directory */
  } finally {
    await dh?.close().catch(() => undefined);
  }
}

/**
 * Writes `data` to `path` atomically with mode 0600: a new temp file in the same directory created with
 * O_CREAT|O_EXCL and mode 0600 (so it is never readable by others, whatever the umask), fsync, then either
 * `link` (fails if `path` exists — atomic no-clobber) or `rename` (overwrite), then fsync of the directory.
 * Readers see the old file or the new one, never a partial one.
 */
export async function writeFileAtomic0600(path: string, data: Uint8Array, overwrite: boolean): Promise<void> {
  const abs = nodePath.resolve(path);
  const dir = nodePath.dirname(abs);
  const tmp = nodePath.join(dir, `.${nodePath.basename(abs)}.${nc.randomBytes(8).toString("hex")}.tmp`);
  const io = (e: unknown, what: string) =>
    SealwireError.is(e) ? e : sealwireError("ERR_KEYSTORE_IO", `cannot ${what} ${path} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(tmp, "wx", 0o600);
  } catch (e) {
    throw io(e, "write");
  }
  let tmpExists = true;
  try {
    try {
      await fh.chmod(0o600); // the umask may have removed our own bits; never adds any
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (overwrite) {
      await fsp.rename(tmp, abs);
      tmpExists = false;
    } else {
      try {
        await fsp.link(tmp, abs);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === "EEXIST") throw sealwireError("ERR_KEYSTORE_EXISTS", `${path} already exists; pass { overwrite: true } to replace it`);
        if (code !== "EPERM" && code !== "ENOTSUP" && code !== "ENOSYS" && code !== "EOPNOTSUPP") throw e;
        // No hard links on this file system: check, then rename (a narrow race, documented).
        const exists = await fsp.lstat(abs).then(
          () => true,
          (err: NodeJS.ErrnoException) => err.code !== "ENOENT",
        );
        if (exists) throw sealwireError("ERR_KEYSTORE_EXISTS", `${path} already exists; pass { overwrite: true } to replace it`);
        await fsp.rename(tmp, abs);
        tmpExists = false;
      }
    }
    await syncDir(dir);
  } catch (e) {
    throw io(e, "write");
  } finally {
    if (tmpExists) await fsp.unlink(tmp).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Format
// ---------------------------------------------------------------------------------------------------------------

interface Header {
  readonly kdf: "scrypt";
  readonly params: KdfParams;
  readonly salt: Uint8Array;
  readonly aead: "xchacha20poly1305";
  readonly nonce: Uint8Array;
  readonly identity: PublicIdentity;
}

/** The one accepted spelling of a header (key order fixed). */
function encodeHeader(h: Header): string {
  const i = h.identity;
  return JSON.stringify({
    kdf: h.kdf,
    logN: h.params.logN,
    r: h.params.r,
    p: h.params.p,
    salt: toBase64url(h.salt),
    aead: h.aead,
    nonce: toBase64url(h.nonce),
    identity: { v: i.v, id: i.id, kid: i.kid, signPub: i.signPub, sealPub: i.sealPub, fingerprint: i.fingerprint },
  });
}

/** Thrown internally for "damaged, truncated or edited"; mapped to one public code by each caller. */
class Damaged extends Error {}

/** Checks scrypt parameters; returns a reason string or null. */
function kdfProblem(k: KdfParams, maxMemoryBytes: number): string | null {
  const L = KDF_LIMITS;
  if (!Number.isInteger(k.logN) || k.logN < L.minLogN || k.logN > L.maxLogN) return `logN must be an integer from ${L.minLogN} to ${L.maxLogN}`;
  if (!Number.isInteger(k.r) || k.r < 1 || k.r > L.maxR) return `r must be an integer from 1 to ${L.maxR}`;
  if (!Number.isInteger(k.p) || k.p < 1 || k.p > L.maxP) return `p must be an integer from 1 to ${L.maxP}`;
  // RFC 7914 §2: N must be less than 2^(128·r/8). OpenSSL throws on such parameters and leaves an error on its
  // queue that breaks the next, unrelated key import in the process (found by fuzzing): refuse them first.
  if (k.logN >= 16 * k.r) return `scrypt needs N < 2^(16·r) (RFC 7914): logN ${k.logN} is too large for r = ${k.r}`;
  const N = 2 ** k.logN;
  if (128 * k.r * N > maxMemoryBytes) return `scrypt memory 128·r·N = ${128 * k.r * N} bytes exceeds the limit of ${maxMemoryBytes}`;
  if (N * k.r * k.p > L.maxWork) return `scrypt work N·r·p = ${N * k.r * k.p} exceeds the limit of ${L.maxWork}`;
  return null;
}

interface Parsed {
  header: Header;
  /** line 1 + "\n" + line 2 + "\n": the AEAD associated data. */
  aad: Uint8Array;
  /** line 3, not yet decoded. */
  ctLine: string;
}

/**
 * Splits and checks a keystore file. Throws ERR_KEYSTORE_FORMAT for files that are clearly something else, and
 * `Damaged` for everything that looks like a keystore but does not parse (truncation, edits).
 */
function parseKeystore(bytes: Uint8Array, path: string, maxMemoryBytes: number): Parsed {
  const magicLine = KEYSTORE_MAGIC + "\n";
  const head = Buffer.from(bytes.subarray(0, magicLine.length)).toString("latin1");
  if (head !== magicLine) {
    // Cut short inside the magic line (an empty file included): a damaged keystore, not a foreign file.
    if (magicLine.startsWith(head)) throw new Damaged();
    if (!head.startsWith(MAGIC_PREFIX)) throw sealwireError("ERR_KEYSTORE_FORMAT", `${path} is not a sealwire keystore`);
    const first = /^sealwire-keystore\/([0-9]{1,4})\n/.exec(Buffer.from(bytes.subarray(0, 32)).toString("latin1"));
    if (first) {
      throw sealwireError("ERR_KEYSTORE_FORMAT", `${path} is keystore format ${first[1]}; this sealwire reads format 1 (upgrade sealwire)`);
    }
    throw new Damaged();
  }
  let text: string;
  try {
    text = fromUtf8(bytes);
  } catch {
    throw new Damaged();
  }
  const nl1 = magicLine.length - 1;
  const nl2 = text.indexOf("\n", nl1 + 1);
  if (nl2 < 0) throw new Damaged();
  const headerLine = text.slice(nl1 + 1, nl2);
  const rest = text.slice(nl2 + 1);
  if (!rest.endsWith("\n") || rest.indexOf("\n") !== rest.length - 1) throw new Damaged();
  const ctLine = rest.slice(0, -1);
  let raw: unknown;
  try {
    raw = JSON.parse(headerLine);
  } catch {
    throw new Damaged();
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new Damaged();
  const o = raw as Record<string, unknown>;
  // Algorithms and parameters first, before anything is allocated: these are the refusals with advice.
  if (o["kdf"] !== "scrypt") throw sealwireError("ERR_KEYSTORE_FORMAT", `${path} uses an unsupported KDF; this sealwire supports scrypt`);
  if (o["aead"] !== "xchacha20poly1305") {
    throw sealwireError("ERR_KEYSTORE_FORMAT", `${path} uses an unsupported cipher; this sealwire supports xchacha20poly1305`);
  }
  const params: KdfParams = { logN: o["logN"] as number, r: o["r"] as number, p: o["p"] as number };
  const problem = kdfProblem(params, maxMemoryBytes);
  if (problem !== null) throw sealwireError("ERR_KEYSTORE_FORMAT", `${path}: ${problem}`);
  let header: Header;
  try {
    header = {
      kdf: "scrypt",
      params,
      salt: fromBase64url(o["salt"] as string, SALT_BYTES, "salt"),
      aead: "xchacha20poly1305",
      nonce: fromBase64url(o["nonce"] as string, NONCE_BYTES, "nonce"),
      identity: parsePublicIdentity(o["identity"]),
    };
  } catch {
    throw new Damaged();
  }
  // One encoding per header: duplicate keys, extra fields, other key orders or whitespace are edits.
  if (encodeHeader(header) !== headerLine) throw new Damaged();
  return { header, aad: utf8(text.slice(0, nl2 + 1)), ctLine };
}

function damagedError(path: string): SealwireError<"ERR_KEYSTORE_DECRYPT"> {
  return sealwireError(
    "ERR_KEYSTORE_DECRYPT",
    `cannot decrypt keystore ${path}: wrong passphrase, or the file is truncated, damaged or was modified (restore it from a backup)`,
  );
}

/** scrypt with the provider's implementation. Returns a 32-byte key the caller wipes. */
async function deriveKey(provider: CryptoProvider, pass: Uint8Array, salt: Uint8Array, k: KdfParams): Promise<Uint8Array> {
  const N = 2 ** k.logN;
  const saltIn = concatBytes(KDF_DOMAIN, salt);
  // Both implementations check 128·r·(N + p + small) against maxmem; the real bound was applied by kdfProblem.
  const maxmem = 128 * k.r * (N + k.p + 2) + 65536;
  if (provider.name === "noble") {
    return scryptAsync(pass, saltIn, { N, r: k.r, p: k.p, dkLen: 32, maxmem });
  }
  const key = await new Promise<Buffer>((resolve, reject) => {
    try {
      nc.scrypt(pass, saltIn, 32, { N, r: k.r, p: k.p, maxmem }, (err, dk) =>
        err ? reject(sealwireError("ERR_KEYSTORE_FORMAT", "the keystore's scrypt parameters were refused by the KDF")) : resolve(dk),
      );
    } catch {
      // node:crypto validates some parameters synchronously (RangeError): never let that escape as a non-coded error.
      reject(sealwireError("ERR_KEYSTORE_FORMAT", "the keystore's scrypt parameters were refused by the KDF"));
    }
  });
  return new Uint8Array(key.buffer, key.byteOffset, key.byteLength);
}

// ---------------------------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------------------------

/**
 * Encrypts `identity`'s secret keys under `passphrase` and writes them to `path` atomically with mode 0600 (see
 * {@link writeFileAtomic0600}). Refuses to replace an existing file unless `overwrite` (ERR_KEYSTORE_EXISTS).
 * Returns the public identity stored in the header.
 */
export async function saveIdentity(path: string, identity: Identity, options: SaveOptions): Promise<PublicIdentity> {
  if (!(identity instanceof Identity)) throw sealwireError("ERR_INVALID_ARGUMENT", "identity must be an Identity");
  if (typeof path !== "string" || path.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "path must be a non-empty string");
  if (options === null || typeof options !== "object") throw sealwireError("ERR_NO_PASSPHRASE", "options.passphrase is required");
  const params: KdfParams = { ...DEFAULT_KDF, ...options.kdf };
  const problem = kdfProblem(params, KDF_LIMITS.maxMemoryBytes);
  if (problem !== null) throw sealwireError("ERR_INVALID_ARGUMENT", `kdf: ${problem}`);
  if (identity.closed) throw sealwireError("ERR_CLOSED", `identity "${identity.id}" was closed; it cannot be saved`);
  const header: Header = {
    kdf: "scrypt",
    params,
    salt: nc.randomBytes(SALT_BYTES),
    aead: "xchacha20poly1305",
    nonce: nc.randomBytes(NONCE_BYTES),
    identity: identity.publicIdentity,
  };
  const aad = utf8(`${KEYSTORE_MAGIC}\n${encodeHeader(header)}\n`);
  const pass = await resolvePassphrase(options.passphrase);
  let key: Uint8Array | undefined;
  let pt: Uint8Array | undefined;
  let ct: Uint8Array;
  try {
    key = await deriveKey(identity.provider, pass.bytes, header.salt, params);
    const s = identity.exportSecrets();
    try {
      pt = concatBytes(s.signSeed, s.sealSecret);
    } finally {
      wipe(s.signSeed, s.sealSecret);
    }
    ct = xchacha20poly1305(key, header.nonce, aad).encrypt(pt);
  } finally {
    wipe(key, pt);
    if (pass.owned) wipe(pass.bytes);
  }
  const file = concatBytes(aad, utf8(toBase64url(ct) + "\n"));
  await writeFileAtomic0600(path, file, options.overwrite === true);
  return identity.publicIdentity;
}

/**
 * Loads and decrypts the identity in `path`. Refuses a file readable or writable by group or others
 * (ERR_KEYSTORE_PERMISSIONS), a wrong passphrase or a truncated, damaged or edited file (ERR_KEYSTORE_DECRYPT, one
 * code for all), a file that is not a v1 keystore or asks for KDF parameters beyond the limits
 * (ERR_KEYSTORE_FORMAT), a missing passphrase (ERR_NO_PASSPHRASE) and I/O failures (ERR_KEYSTORE_IO).
 * The returned identity is the caller's to {@link Identity.close}.
 */
export async function loadIdentity(path: string, options: LoadOptions): Promise<Identity> {
  if (options === null || typeof options !== "object") throw sealwireError("ERR_NO_PASSPHRASE", "options.passphrase is required");
  const provider = options.provider ?? defaultProvider;
  const maxMem = options.maxKdfMemoryBytes ?? KDF_LIMITS.maxMemoryBytes;
  if (!Number.isInteger(maxMem) || maxMem < 1 << 20 || maxMem > HARD_MAX_MEMORY_BYTES) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `maxKdfMemoryBytes must be an integer from 1 MiB to ${HARD_MAX_MEMORY_BYTES} bytes`);
  }
  // A plainly missing passphrase is reported before anything else; a provider is only called once the file has
  // passed its permission and format checks (no prompt for a file we would refuse anyway).
  const given: unknown = options.passphrase;
  if (given === undefined || given === null || given === "" || (given instanceof Uint8Array && given.length === 0)) {
    throw sealwireError("ERR_NO_PASSPHRASE", "a passphrase is required and must not be empty; there is no default");
  }
  const bytes = await readKeystoreFile(path, true);
  let parsed: Parsed;
  let ct: Uint8Array;
  try {
    parsed = parseKeystore(bytes, path, maxMem);
    ct = fromBase64url(parsed.ctLine, SECRETS_BYTES + TAG_BYTES, "ciphertext");
  } catch (e) {
    if (e instanceof Damaged || SealwireError.is(e, "ERR_INVALID_ARGUMENT")) throw damagedError(path);
    throw e;
  }
  const pass = await resolvePassphrase(options.passphrase);
  let key: Uint8Array | undefined;
  let pt: Uint8Array | null = null;
  try {
    const h = parsed.header;
    key = await deriveKey(provider, pass.bytes, h.salt, h.params);
    try {
      pt = xchacha20poly1305(key, h.nonce, parsed.aad).decrypt(ct);
    } catch {
      throw damagedError(path);
    }
    const identity = Identity.fromSecrets(h.identity.id, { signSeed: pt.subarray(0, 32), sealSecret: pt.subarray(32, 64) }, { provider });
    // Defence in depth: the secrets must derive exactly the public identity the header names.
    const got = identity.publicIdentity;
    if (got.kid !== h.identity.kid || got.signPub !== h.identity.signPub || got.sealPub !== h.identity.sealPub) {
      identity.close();
      throw damagedError(path);
    }
    return identity;
  } finally {
    wipe(key, pt);
    if (pass.owned) wipe(pass.bytes);
  }
}

/**
 * Reads the public identity from a keystore's header without a passphrase (for `sealwire keygen` output, trust
 * bootstrapping, `ls`-style tools). The header is only authenticated when the file is decrypted, so treat the
 * result like any public identity from an untrusted channel: compare its fingerprint out of band. Does not check
 * file permissions (it reads public data). Throws ERR_KEYSTORE_FORMAT if the header does not parse.
 */
export async function readPublicIdentity(path: string): Promise<PublicIdentity> {
  const bytes = await readKeystoreFile(path, false);
  try {
    return parseKeystore(bytes, path, HARD_MAX_MEMORY_BYTES).header.identity;
  } catch (e) {
    if (e instanceof Damaged) throw sealwireError("ERR_KEYSTORE_FORMAT", `${path}: the keystore header is truncated or damaged`);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Identity providers
// ---------------------------------------------------------------------------------------------------------------

/**
 * Where an identity comes from: the identity itself, or a function that returns one (synchronously or not), so a
 * vault or a keystore can hand keys just in time.
 *
 * **Caching.** sealwire never caches what a provider returns beyond the caller's own use: {@link resolveIdentity}
 * calls the function every time it is called, and whoever calls it (an agent at start, a CLI command) decides how
 * long to keep the result. A provider that wants caching implements it itself. A function provider that returns a
 * fresh identity (such as {@link keystoreIdentity}) hands ownership to the caller, who closes it; a provider that
 * returns a shared identity keeps ownership.
 */
export type IdentityProvider = Identity | (() => Identity | Promise<Identity>);

/**
 * Resolves a provider to an open {@link Identity}: calls a function provider (once per call, no caching) and checks
 * the result. ERR_INVALID_ARGUMENT if it is not an Identity, ERR_CLOSED if it was closed.
 */
export async function resolveIdentity(provider: IdentityProvider): Promise<Identity> {
  let v: unknown = provider;
  if (typeof provider === "function") v = await provider();
  if (!(v instanceof Identity)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "identity must be an Identity or a function returning one (sync or async)");
  }
  if (v.closed) throw sealwireError("ERR_CLOSED", `identity "${v.id}" from the provider is closed; the provider must return an open identity`);
  return v;
}

/**
 * An {@link IdentityProvider} that loads `path` on every call (a fresh identity each time, owned by the caller). The
 * passphrase provider in `options` is likewise called on every load.
 */
export function keystoreIdentity(path: string, options: LoadOptions): () => Promise<Identity> {
  if (typeof path !== "string" || path.length === 0) throw sealwireError("ERR_INVALID_ARGUMENT", "path must be a non-empty string");
  return () => loadIdentity(path, options);
}
