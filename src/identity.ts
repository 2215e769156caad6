/**
 * Agent identities: each agent has its own Ed25519 signing key and X25519 sealing key, a key id (`kid`) and a
 * fingerprint. Never one shared key for a crew.
 *
 * The secret bytes live only in `Uint8Array`s held in private fields (and, on the native path, inside OpenSSL
 * key objects). An {@link Identity} prints as redacted under `util.inspect`, `JSON.stringify` and `String()`;
 * `close()` wipes the bytes, after which every use throws `ERR_CLOSED`. JavaScript cannot promise that no other
 * copy ever existed (see README, Security); we keep the number of copies small and never turn a key into a string.
 *
 * @module
 * @example
 * ```ts
 * const alice = await generateIdentity("alice");
 * console.log(alice.publicIdentity); // share this
 * alice.close();
 * ```
 */
import { fromBase64url, toBase64url, toHex, utf8, wipe } from "./_bytes.js";
import { defaultProvider, type CryptoProvider, type Ed25519PrivateKey, type X25519PrivateKey } from "./_crypto.js";
import { sealwireError } from "./errors.js";

/** Agent ids: 1–64 characters of `A–Z a–z 0–9 _ -`, starting with a letter or digit. Safe in addresses, file
 * names, URLs and broker subjects without escaping. */
export const AGENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/** Throws ERR_INVALID_ARGUMENT unless `id` is a valid agent id. */
export function assertAgentId(id: unknown, what = "agent id"): asserts id is string {
  if (typeof id !== "string" || !AGENT_ID_RE.test(id)) {
    throw sealwireError(
      "ERR_INVALID_ARGUMENT",
      `${what} must be 1-64 characters of letters, digits, "_" or "-", starting with a letter or digit`,
    );
  }
}

/** The shareable, serializable half of an identity. */
export interface PublicIdentity {
  /** Format version. */
  readonly v: 1;
  /** Agent id. */
  readonly id: string;
  /** Key id: names this key pair (changes on rotation). 16 hex characters. */
  readonly kid: string;
  /** Ed25519 public key, base64url (32 bytes). */
  readonly signPub: string;
  /** X25519 public key, base64url (32 bytes). */
  readonly sealPub: string;
  /** Human-comparable fingerprint of both keys and the id (`sw1:xxxx-xxxx-…`). */
  readonly fingerprint: string;
}

const KID_DOMAIN = utf8("sealwire/v1/identity:");

/** Computes kid and fingerprint from the id and public keys; both are bound to all three. */
export function identityDigest(
  p: CryptoProvider,
  id: string,
  signPub: Uint8Array,
  sealPub: Uint8Array,
): { kid: string; fingerprint: string } {
  const idBytes = utf8(id);
  const d = p.hash("sha256", KID_DOMAIN, Uint8Array.of(idBytes.length), idBytes, signPub, sealPub);
  const hex = toHex(d);
  const groups = hex.slice(0, 40).match(/.{4}/g)!;
  return { kid: hex.slice(0, 16), fingerprint: `sw1:${groups.join("-")}` };
}

/**
 * Parses and checks a public identity from untrusted input (a file, a CLI argument, the network): shape, key
 * lengths, and that `kid`/`fingerprint` really are derived from the keys. Throws ERR_INVALID_ARGUMENT.
 */
export function parsePublicIdentity(input: unknown, p: CryptoProvider = defaultProvider): PublicIdentity {
  let obj = input;
  if (typeof input === "string") {
    try {
      obj = JSON.parse(input);
    } catch {
      throw sealwireError("ERR_INVALID_ARGUMENT", "public identity is not valid JSON; paste the line `sealwire keygen` printed");
    }
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "public identity must be an object {v,id,kid,signPub,sealPub,fingerprint}");
  }
  const o = obj as Record<string, unknown>;
  const keys = Object.keys(o).sort().join(",");
  if (keys !== "fingerprint,id,kid,sealPub,signPub,v") {
    throw sealwireError("ERR_INVALID_ARGUMENT", "public identity must have exactly the fields v, id, kid, signPub, sealPub, fingerprint");
  }
  if (o["v"] !== 1) throw sealwireError("ERR_INVALID_ARGUMENT", "public identity version must be 1");
  assertAgentId(o["id"], "public identity id");
  const signPub = fromBase64url(o["signPub"] as string, 32, "public identity signPub");
  const sealPub = fromBase64url(o["sealPub"] as string, 32, "public identity sealPub");
  const { kid, fingerprint } = identityDigest(p, o["id"], signPub, sealPub);
  if (o["kid"] !== kid || o["fingerprint"] !== fingerprint) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "public identity kid/fingerprint do not match its keys (corrupted or forged)");
  }
  return Object.freeze({ v: 1, id: o["id"], kid, signPub: o["signPub"] as string, sealPub: o["sealPub"] as string, fingerprint });
}

/** Raw secret key bytes, for keystores. Wipe them when done. */
export interface IdentitySecrets {
  /** Ed25519 seed (32 bytes). */
  signSeed: Uint8Array;
  /** X25519 secret scalar (32 bytes). */
  sealSecret: Uint8Array;
}

/** Options for {@link generateIdentity} and {@link Identity.fromSecrets}. */
export interface IdentityOptions {
  /** Crypto provider. @default the provider chosen at load (native when available) */
  provider?: CryptoProvider;
}

const REDACTED = "<redacted>";

/**
 * An agent's private identity. Create with {@link generateIdentity} or {@link Identity.fromSecrets}.
 */
export class Identity {
  /** Agent id. */
  readonly id: string;
  /** Key id. */
  readonly kid: string;
  /** The shareable public half. */
  readonly publicIdentity: PublicIdentity;
  /** Crypto provider the keys belong to. */
  readonly provider: CryptoProvider;
  /** Raw public keys. */
  readonly signPublicKey: Uint8Array;
  readonly sealPublicKey: Uint8Array;

  #signSeed: Uint8Array | null;
  #sealSecret: Uint8Array | null;
  #signKey: Ed25519PrivateKey | null;
  #sealKey: X25519PrivateKey | null;
  readonly #onClose = new Set<() => void>();

  private constructor(id: string, secrets: IdentitySecrets, provider: CryptoProvider) {
    this.id = id;
    this.provider = provider;
    this.#signSeed = Uint8Array.from(secrets.signSeed);
    this.#sealSecret = Uint8Array.from(secrets.sealSecret);
    this.#signKey = provider.ed25519FromSeed(this.#signSeed);
    this.#sealKey = provider.x25519FromSecret(this.#sealSecret);
    this.signPublicKey = this.#signKey.publicKey;
    this.sealPublicKey = this.#sealKey.publicKey;
    const { kid, fingerprint } = identityDigest(provider, id, this.signPublicKey, this.sealPublicKey);
    this.kid = kid;
    this.publicIdentity = Object.freeze({
      v: 1 as const,
      id,
      kid,
      signPub: toBase64url(this.signPublicKey),
      sealPub: toBase64url(this.sealPublicKey),
      fingerprint,
    });
  }

  /** Generates fresh keys for agent `id`. */
  static generate(id: string, options: IdentityOptions = {}): Identity {
    assertAgentId(id);
    const p = options.provider ?? defaultProvider;
    const { key, seed } = p.ed25519Generate();
    key.destroy();
    const sealSecret = p.randomBytes(32);
    try {
      return new Identity(id, { signSeed: seed, sealSecret }, p);
    } finally {
      wipe(seed, sealSecret);
    }
  }

  /** Builds an identity from raw secrets (copied; the caller wipes its own copies). */
  static fromSecrets(id: string, secrets: IdentitySecrets, options: IdentityOptions = {}): Identity {
    assertAgentId(id);
    if (!(secrets?.signSeed instanceof Uint8Array) || secrets.signSeed.length !== 32) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "signSeed must be a Uint8Array of length 32");
    }
    if (!(secrets.sealSecret instanceof Uint8Array) || secrets.sealSecret.length !== 32) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "sealSecret must be a Uint8Array of length 32");
    }
    return new Identity(id, secrets, options.provider ?? defaultProvider);
  }

  /** True after {@link close}. */
  get closed(): boolean {
    return this.#signKey === null;
  }

  #alive(): void {
    if (this.#signKey === null) {
      throw sealwireError("ERR_CLOSED", `identity "${this.id}" was closed; load or generate it again`);
    }
  }

  /** Signs `message` with the Ed25519 key. Callers add their own domain prefix. */
  sign(message: Uint8Array): Uint8Array {
    this.#alive();
    return this.provider.ed25519Sign(this.#signKey!, message);
  }

  /** The X25519 private key handle (for HPKE and Noise inside sealwire). @internal */
  sealingKey(): X25519PrivateKey {
    this.#alive();
    return this.#sealKey!;
  }

  /** Copies of the raw secrets, for a keystore. The caller must wipe them. */
  exportSecrets(): IdentitySecrets {
    this.#alive();
    return { signSeed: Uint8Array.from(this.#signSeed!), sealSecret: Uint8Array.from(this.#sealSecret!) };
  }

  /** Registers a callback run once when the identity closes (agents and channels stop using it). */
  onClose(fn: () => void): () => void {
    this.#onClose.add(fn);
    return () => this.#onClose.delete(fn);
  }

  /** Wipes the secret bytes and releases the key handles. Idempotent. */
  close(): void {
    if (this.#signKey === null) return;
    wipe(this.#signSeed, this.#sealSecret);
    this.#signKey.destroy();
    this.#sealKey?.destroy();
    this.#signKey = null;
    this.#sealKey = null;
    this.#signSeed = null;
    this.#sealSecret = null;
    for (const fn of this.#onClose) {
      try {
        fn();
      } catch {
        /* a listener's failure must not keep keys alive */
      }
    }
    this.#onClose.clear();
  }

  toJSON(): { id: string; kid: string; secret: string } {
    return { id: this.id, kid: this.kid, secret: REDACTED };
  }
  toString(): string {
    return `Identity(${this.id}, kid=${this.kid}, ${REDACTED})`;
  }
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }
}

/** Generates a new identity for agent `id` (async so key providers can be swapped in later). */
export async function generateIdentity(id: string, options: IdentityOptions = {}): Promise<Identity> {
  return Identity.generate(id, options);
}
