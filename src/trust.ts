/**
 * The TrustStore: which agents this node knows, by id, with their public identity, roles and PII clearances.
 * Unknown and revoked peers are refused everywhere (envelopes, Noise handshakes, the hub).
 *
 * Revocation is sticky: a revoked id stays revoked until the store is rebuilt; adding it again throws. Listeners
 * registered with {@link TrustStore.onRevoke} run synchronously so open sessions can be closed at once.
 *
 * @module
 * @example
 * ```ts
 * const trust = new TrustStore();
 * trust.add(bob.publicIdentity, { clearances: ["pii:email"], roles: ["writer"] });
 * trust.require("bob"); // TrustEntry, or throws ERR_UNKNOWN_PEER / ERR_REVOKED_PEER
 * ```
 */
import { fromBase64url, toHex } from "./_bytes.js";
import { defaultProvider, type CryptoProvider } from "./_crypto.js";
import { sealwireError } from "./errors.js";
import { assertAgentId, parsePublicIdentity, type PublicIdentity } from "./identity.js";

/** PII clearance / tag names: `pii:<name>`. */
export const PII_TAG_RE = /^pii:[a-z0-9][a-z0-9_-]{0,31}$/;
/** Role names. */
export const ROLE_RE = /^[a-z][a-z0-9_-]{0,31}$/;

/** What the store knows about one peer. Immutable; updates replace the entry. */
export interface TrustEntry {
  readonly id: string;
  readonly identity: PublicIdentity;
  /** Raw public keys, decoded once. */
  readonly signPublicKey: Uint8Array;
  readonly sealPublicKey: Uint8Array;
  readonly roles: readonly string[];
  /** PII tags this peer may receive (e.g. `pii:email`). */
  readonly clearances: readonly string[];
  readonly revoked: boolean;
  /** Transport address to reach the peer at, if not implied by the transport. */
  readonly address: string | undefined;
}

/** Options for {@link TrustStore.add}. */
export interface TrustOptions {
  roles?: readonly string[];
  clearances?: readonly string[];
  address?: string;
}

function checkList(list: unknown, re: RegExp, what: string): string[] {
  if (list === undefined) return [];
  if (!Array.isArray(list) || list.length > 64) throw sealwireError("ERR_INVALID_ARGUMENT", `${what} must be an array of at most 64 names`);
  for (const x of list) {
    if (typeof x !== "string" || !re.test(x)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `${what} entries must match ${re}`);
    }
  }
  return [...new Set(list as string[])].sort();
}

/** A set of trusted peers. */
export class TrustStore {
  readonly #byId = new Map<string, TrustEntry>();
  readonly #bySealKey = new Map<string, string>();
  readonly #revokeListeners = new Set<(entry: TrustEntry) => void>();
  readonly #provider: CryptoProvider;

  constructor(options: { provider?: CryptoProvider } = {}) {
    this.#provider = options.provider ?? defaultProvider;
  }

  /** The crypto provider used to validate identities and verify signatures against this store. */
  get provider(): CryptoProvider {
    return this.#provider;
  }

  /**
   * Adds (or updates roles/clearances/address of) a peer. The public identity is validated (its kid and
   * fingerprint must match its keys). Throws ERR_DUPLICATE_PEER if the id is known with different keys, and
   * ERR_REVOKED_PEER if the id was revoked.
   */
  add(identity: PublicIdentity | unknown, options: TrustOptions = {}): TrustEntry {
    const pub = parsePublicIdentity(identity, this.#provider);
    const roles = checkList(options.roles, ROLE_RE, "roles");
    const clearances = checkList(options.clearances, PII_TAG_RE, "clearances");
    if (options.address !== undefined && (typeof options.address !== "string" || options.address.length > 512)) {
      throw sealwireError("ERR_INVALID_ARGUMENT", "address must be a string of at most 512 characters");
    }
    const existing = this.#byId.get(pub.id);
    if (existing?.revoked) throw sealwireError("ERR_REVOKED_PEER", `peer "${pub.id}" was revoked and cannot be added again`);
    if (existing && existing.identity.kid !== pub.kid) {
      throw sealwireError(
        "ERR_DUPLICATE_PEER",
        `peer "${pub.id}" is already trusted with other keys (kid ${existing.identity.kid}); revoke or rotate instead`,
      );
    }
    const sealPublicKey = fromBase64url(pub.sealPub, 32, "sealPub");
    const sealHex = toHex(sealPublicKey);
    const owner = this.#bySealKey.get(sealHex);
    if (owner !== undefined && owner !== pub.id) {
      throw sealwireError("ERR_DUPLICATE_PEER", `that sealing key already belongs to peer "${owner}"`);
    }
    const entry: TrustEntry = Object.freeze({
      id: pub.id,
      identity: pub,
      signPublicKey: fromBase64url(pub.signPub, 32, "signPub"),
      sealPublicKey,
      roles: Object.freeze(roles),
      clearances: Object.freeze(clearances),
      revoked: false,
      address: options.address,
    });
    this.#byId.set(pub.id, entry);
    this.#bySealKey.set(sealHex, pub.id);
    return entry;
  }

  /** The entry for `id`, revoked or not, or undefined. */
  get(id: string): TrustEntry | undefined {
    return this.#byId.get(id);
  }

  /** The entry for `id`; throws ERR_UNKNOWN_PEER or ERR_REVOKED_PEER. */
  require(id: string): TrustEntry {
    const e = this.#byId.get(id);
    if (!e) throw sealwireError("ERR_UNKNOWN_PEER", `peer "${safeId(id)}" is not in the trust store; add its public identity first`);
    if (e.revoked) throw sealwireError("ERR_REVOKED_PEER", `peer "${e.id}" was revoked`);
    return e;
  }

  /** The unrevoked entry whose X25519 key is `sealPublicKey` (Noise static keys), or undefined. */
  findBySealKey(sealPublicKey: Uint8Array): TrustEntry | undefined {
    const id = this.#bySealKey.get(toHex(sealPublicKey));
    const e = id === undefined ? undefined : this.#byId.get(id);
    return e && !e.revoked ? e : undefined;
  }

  /** Revokes `id` (sticky) and notifies listeners synchronously. Throws ERR_UNKNOWN_PEER if unknown. */
  revoke(id: string): TrustEntry {
    assertAgentId(id);
    const e = this.#byId.get(id);
    if (!e) throw sealwireError("ERR_UNKNOWN_PEER", `peer "${id}" is not in the trust store`);
    if (e.revoked) return e;
    const revoked: TrustEntry = Object.freeze({ ...e, revoked: true });
    this.#byId.set(id, revoked);
    for (const fn of this.#revokeListeners) {
      try {
        fn(revoked);
      } catch {
        /* one failing listener must not stop the others from closing sessions */
      }
    }
    return revoked;
  }

  /** Calls `fn` whenever a peer is revoked. Returns an unsubscribe function. */
  onRevoke(fn: (entry: TrustEntry) => void): () => void {
    this.#revokeListeners.add(fn);
    return () => this.#revokeListeners.delete(fn);
  }

  /** All entries, revoked ones included, sorted by id. */
  list(): TrustEntry[] {
    return [...this.#byId.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  get size(): number {
    return this.#byId.size;
  }
}

/** An id from the wire, made safe to put in a message (bounded, printable). */
export function safeId(id: unknown): string {
  if (typeof id !== "string") return "<invalid>";
  return id.length <= 64 && /^[\x20-\x7e]*$/.test(id) ? id : "<invalid>";
}
