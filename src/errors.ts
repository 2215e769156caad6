/**
 * One error type for everything sealwire refuses: {@link SealwireError}, with a stable `code`.
 *
 * Codes are part of the public API (README lists them all). Messages say what the caller should do; they never
 * carry key bytes, payloads or other secrets. Failures caused by attacker-controlled input use one code per
 * check and a deliberately vague message, so an attacker learns nothing about which byte was wrong beyond the
 * check that failed (which `open` documents anyway).
 *
 * @module
 * @example
 * ```ts
 * try { await agent.send("bob", data); }
 * catch (err) { if (SealwireError.is(err, "ERR_UNKNOWN_PEER")) console.error(err.message); }
 * ```
 */

/** Every code sealwire can raise. Stable: new codes may be added, existing ones keep their meaning. */
export const ERROR_CODES = {
  // caller / configuration mistakes
  ERR_INVALID_ARGUMENT: "An argument has the wrong type, size or value.",
  ERR_CLOSED: "The object (identity, agent, connection, transport) was closed and cannot be used.",
  ERR_ABORTED: "The operation was aborted through its AbortSignal.",
  ERR_TIMEOUT: "The operation did not finish within its time limit.",
  ERR_CRYPTO_PROVIDER: "The crypto provider is unavailable or misbehaves.",
  // trust
  ERR_UNKNOWN_PEER: "The peer is not in the trust store.",
  ERR_REVOKED_PEER: "The peer was revoked in the trust store.",
  ERR_DUPLICATE_PEER: "A different identity is already registered under this peer id.",
  // envelope open pipeline, in the order `open` checks
  ERR_ENVELOPE_TOO_LARGE: "The envelope exceeds the size limit.",
  ERR_DECODE: "The envelope is not well-formed MessagePack of the expected shape.",
  ERR_SCHEMA: "The envelope header does not match the schema.",
  ERR_BAD_SIGNATURE: "The envelope signature does not verify under the sender's key.",
  ERR_WRONG_RECIPIENT: "The envelope is addressed to another agent or key.",
  ERR_EXPIRED: "The envelope's time to live has passed.",
  ERR_FROM_FUTURE: "The envelope's creation time is ahead of the local clock beyond the allowed skew.",
  ERR_REPLAY: "The envelope id was already accepted.",
  ERR_DECRYPT: "The envelope body could not be decrypted.",
  ERR_PAYLOAD: "The decrypted payload is not a valid sealwire payload.",
  // transport
  ERR_FRAME_TOO_LARGE: "A frame exceeds the transport's size limit.",
  ERR_CONNECTION_REFUSED: "Nothing listens at the dialled address.",
  ERR_ADDRESS_IN_USE: "Something already listens at that address.",
  ERR_CONNECTION_CLOSED: "The connection was closed.",
  ERR_CONNECTION_ABORTED: "The connection was aborted by either side.",
  // agent
  ERR_NO_ROUTE: "No connection to the recipient could be made.",
  ERR_QUEUE_FULL: "A bounded queue is full; the message was refused, not dropped silently.",
  ERR_REQUEST_TIMEOUT: "No reply arrived before the request timed out.",
  ERR_NOISE_HANDSHAKE: "A Noise handshake message was malformed, unauthentic or out of turn; the handshake is dead, start a new one.",
  ERR_NOISE_DECRYPT: "A Noise transport message failed authentication (tampered, reordered or wrong key).",
  ERR_NONCE_EXHAUSTED: "A Noise cipher state used its last 64-bit nonce; rekey is not enough, start a new session.",
  ERR_CONTENT_TOO_LARGE: "Content exceeds the scanner's size, depth or node limit and was not scanned; treat it as denied.",
  ERR_AUDIT_TAMPERED: "The audit log does not verify: a record was edited, inserted, deleted or reordered, or a signature is bad.",
  ERR_AUDIT_TRUNCATED: "The audit log ends without its final signed checkpoint or with a torn line; records may be missing.",
  ERR_AUDIT_UNKNOWN_SIGNER: "An audit checkpoint is signed by a key the verifier cannot resolve; pass its public key or resolver.",
  ERR_AUDIT_IO: "The audit log could not be read or written; the log refuses further appends.",
  ERR_POLICY_DENIED: "A policy denied the message; `reason` says which rule (never the data).",
  ERR_ATTESTATION_INVALID: "An anonymization attestation is malformed, stale, not for this output, or not signed by a trusted anonymizer.",
  ERR_NO_PASSPHRASE: "No passphrase was given, or it is empty; sealwire never falls back to a default passphrase.",
  ERR_KEYSTORE_PERMISSIONS: "A keystore or passphrase file is readable or writable by group or others; run the chmod the message gives.",
  ERR_KEYSTORE_DECRYPT: "The keystore could not be decrypted: wrong passphrase, or the file is truncated, damaged or was modified.",
  ERR_KEYSTORE_FORMAT: "The file is not a sealwire keystore, has an unsupported version or algorithm, or asks for KDF parameters beyond the limits.",
  ERR_KEYSTORE_IO: "The keystore file could not be read or written (missing, not a regular file, or an I/O error).",
  ERR_KEYSTORE_EXISTS: "A file already exists at the keystore path; it is only replaced when overwrite is requested.",
  ERR_REPLAY_STORE: "The persistent replay store cannot be opened, read or written (locked, corrupt, bad permissions, I/O); envelopes are refused.",
  ERR_INSECURE_TRANSPORT: "A plaintext wire (ws://) was refused; use wss://, wrap the transport in noise(), or opt in with insecure: true.",
  ERR_TLS: "The TLS handshake failed: the certificate is expired, for another host, from an untrusted CA, or a required client certificate is missing.",
  ERR_PROTOCOL: "The peer broke the wire protocol (e.g. a text frame on a binary-only WebSocket); the connection was aborted.",
  ERR_UNTRUSTED_PEER: "The remote's Noise static key does not belong to a trusted, unrevoked agent, or is not the expected remote peer.",
  ERR_AUTH_FAILED: "The server or broker (NATS) refused the credentials: user/password, token or nkey; check them and the account.",
  ERR_HUB_AUTH: "Authentication between an agent and the hub failed: wrong hub identity, untrusted agent, or a bad proof.",
  ERR_DELIVERY_UNCONFIRMED: "The hub connection ended before the recipient acknowledged the envelope; it may or may not have arrived.",
  ERR_WRONG_SENDER: "An envelope's sender is not the agent authenticated on that connection.",
  ERR_TRUST_FILE: "A trust file is missing, malformed, or writable by others; the message says which and what to run.",
  ERR_INTERNAL: "An unexpected failure inside sealwire or a dependency; run with --debug and report it.",
  ERR_KEY_RETIRED: "The envelope uses a key that was rotated out and whose overlap window has passed.",
  ERR_STATEMENT_INVALID: "A key rotation or revocation statement is malformed, stale, or not signed by a key allowed to make it.",
  ERR_UNKNOWN_STREAM: "A session envelope belongs to a stream the recipient does not hold (evicted, expired, ended); the sender must re-open it.",
  ERR_CHECKPOINT: "A session checkpoint is forged, does not match the stream's hash chain, or is missing; the stream was closed.",
} as const;

/** A stable error code. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Options for {@link SealwireError}. */
export interface SealwireErrorOptions {
  /** The underlying error, if any. Never an error whose message could contain secrets. */
  cause?: unknown;
  /** Envelope id (hex) the error concerns, for correlation in logs. */
  envelopeId?: string;
  /** Policy reason code (ERR_POLICY_DENIED). */
  reason?: string;
}

/**
 * The only error class sealwire throws for refusals. `code` is stable; `message` is for humans.
 */
export class SealwireError<C extends ErrorCode = ErrorCode> extends Error {
  override readonly name = "SealwireError" as const;
  /** Stable machine-readable code. */
  readonly code: C;
  /** Envelope id (hex) the error concerns, when there is one. */
  readonly envelopeId: string | undefined;
  /** Policy reason code, for ERR_POLICY_DENIED. */
  readonly reason: string | undefined;

  constructor(code: C, message: string, options: SealwireErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.envelopeId = options.envelopeId;
    this.reason = options.reason;
    Error.captureStackTrace?.(this, SealwireError);
  }

  /** Narrows this error to one code. */
  is<K extends ErrorCode>(code: K): this is SealwireError<K> {
    return (this.code as ErrorCode) === code;
  }

  /** True if `err` is a SealwireError (also across realms, by name), optionally with the given code. */
  static is<K extends ErrorCode = ErrorCode>(err: unknown, code?: K): err is SealwireError<K> {
    if (err === null || typeof err !== "object") return false;
    const e = err as { name?: unknown; code?: unknown };
    if (!(err instanceof SealwireError) && e.name !== "SealwireError") return false;
    return code === undefined || e.code === code;
  }
}

/** Builds a {@link SealwireError}; `fn` trims the stack to the caller's frame. */
export function sealwireError<C extends ErrorCode>(
  code: C,
  message: string,
  options?: SealwireErrorOptions,
): SealwireError<C> {
  return new SealwireError(code, message, options);
}
