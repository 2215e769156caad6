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
import {
  ADMIN_ROLE,
  DEFAULT_OVERLAP_MS,
  STATEMENT_MAX_AGE_MS,
  keyBytes,
  parseStatement,
  revocationSignedBytes,
  rotationSignedBytes,
} from "./statements.js";

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
  /** After a rotation: the previous keys, still accepted until `validUntil` (ms since the epoch). */
  readonly previous?: PreviousKeys | undefined;
}

/** Keys replaced by a rotation, accepted during the overlap window. */
export interface PreviousKeys {
  readonly kid: string;
  readonly signPublicKey: Uint8Array;
  readonly sealPublicKey: Uint8Array;
  readonly validUntil: number;
}

/** The keys to use for one message: the entry, and the key set its kid names. */
export interface KeyView {
  readonly entry: TrustEntry;
  readonly kid: string;
  readonly signPublicKey: Uint8Array;
  readonly sealPublicKey: Uint8Array;
}

/** What {@link TrustStore.applyStatement} did. */
export type StatementResult =
  | { readonly kind: "rotation"; readonly id: string; readonly oldKid: string; readonly newKid: string; readonly applied: boolean }
  | { readonly kind: "revocation"; readonly id: string; readonly kid: string; readonly by: string; readonly applied: boolean };

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
  readonly #keyRetiredListeners = new Set<(id: string, kid: string) => void>();
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

  /**
   * The unrevoked entry whose X25519 key is `sealPublicKey` (Noise static keys): the current key, or a rotated-out
   * key still inside its overlap window. Undefined otherwise.
   */
  findBySealKey(sealPublicKey: Uint8Array, now = Date.now()): TrustEntry | undefined {
    const hex = toHex(sealPublicKey);
    const id = this.#bySealKey.get(hex);
    const e = id === undefined ? undefined : this.#byId.get(id);
    if (!e || e.revoked) return undefined;
    if (toHex(e.sealPublicKey) === hex) return e;
    if (e.previous && toHex(e.previous.sealPublicKey) === hex && now <= e.previous.validUntil) return e;
    return undefined;
  }

  /**
   * The keys of `id` that `kid` names: the current ones, or the previous ones during a rotation's overlap window.
   * Throws ERR_UNKNOWN_PEER / ERR_REVOKED_PEER, ERR_KEY_RETIRED for a previous key past its window, and
   * ERR_BAD_SIGNATURE for a kid this store never knew for that agent.
   */
  keysFor(id: string, kid: string, now = Date.now()): KeyView {
    const e = this.require(id);
    if (e.identity.kid === kid) return { entry: e, kid, signPublicKey: e.signPublicKey, sealPublicKey: e.sealPublicKey };
    if (e.previous && e.previous.kid === kid) {
      if (now > e.previous.validUntil) {
        throw sealwireError("ERR_KEY_RETIRED", `key ${kid} of "${e.id}" was rotated out and its overlap window has passed`);
      }
      return { entry: e, kid, signPublicKey: e.previous.signPublicKey, sealPublicKey: e.previous.sealPublicKey };
    }
    throw sealwireError("ERR_BAD_SIGNATURE", `"${e.id}" has no key ${kid} in the trust store`);
  }

  /**
   * Verifies and applies a signed rotation or revocation statement (from `rotateIdentity` / `createRevocation`,
   * relayed by anyone). Rotations keep the old keys for `overlapMs`. Revocations must be signed by the key they
   * revoke or by a trusted agent with the `admin` role. Throws ERR_STATEMENT_INVALID (bad shape, signature,
   * signer or age) without changing anything; statements already applied return `applied: false`.
   */
  applyStatement(bytes: Uint8Array, options: { overlapMs?: number; now?: number } = {}): StatementResult {
    const now = options.now ?? Date.now();
    const st = parseStatement(bytes);
    const refuse = (why: string) => sealwireError("ERR_STATEMENT_INVALID", `key statement for "${st.id}" refused: ${why}`);
    if (st.ts > now + 5 * 60_000 || now - st.ts > STATEMENT_MAX_AGE_MS) throw refuse("too old or from the future");
    const p = this.#provider;
    const verify = (pub: Uint8Array, msg: Uint8Array, sig: Uint8Array) => p.ed25519Verify(p.ed25519Public(pub), msg, sig);
    const e = this.#byId.get(st.id);
    if (!e) throw refuse("unknown agent");
    if (st.kind === "rotation") {
      if (e.revoked) throw refuse("the agent is revoked");
      if (e.identity.kid === st.next.kid) return { kind: "rotation", id: st.id, oldKid: st.oldKid, newKid: st.next.kid, applied: false };
      if (e.identity.kid !== st.oldKid) throw refuse("it does not rotate the current key");
      const msg = rotationSignedBytes(st.id, st.oldKid, st.next, st.ts);
      if (!verify(e.signPublicKey, msg, st.sigOld)) throw refuse("not signed by the current key");
      if (!verify(keyBytes(st.next.signPub), msg, st.sigNew)) throw refuse("not signed by the new key");
      const overlap = options.overlapMs ?? DEFAULT_OVERLAP_MS;
      if (!Number.isSafeInteger(overlap) || overlap < 0) throw sealwireError("ERR_INVALID_ARGUMENT", "overlapMs must be a non-negative integer");
      const sealPublicKey = keyBytes(st.next.sealPub);
      const owner = this.#bySealKey.get(toHex(sealPublicKey));
      if (owner !== undefined && owner !== st.id) throw refuse("the new sealing key belongs to another agent");
      const next: TrustEntry = Object.freeze({
        ...e,
        identity: st.next,
        signPublicKey: keyBytes(st.next.signPub),
        sealPublicKey,
        previous: Object.freeze({ kid: e.identity.kid, signPublicKey: e.signPublicKey, sealPublicKey: e.sealPublicKey, validUntil: now + overlap }),
      });
      this.#byId.set(st.id, next);
      this.#bySealKey.set(toHex(sealPublicKey), st.id);
      return { kind: "rotation", id: st.id, oldKid: st.oldKid, newKid: st.next.kid, applied: true };
    }
    // revocation
    const subjectKeys = e.identity.kid === st.kid ? e.signPublicKey : e.previous?.kid === st.kid ? e.previous.signPublicKey : undefined;
    if (!subjectKeys) throw refuse("it names a key this store does not know");
    const msg = revocationSignedBytes(st.id, st.kid, st.by, st.byKid, st.reason, st.ts);
    let signerKey: Uint8Array | undefined;
    if (st.by === st.id && st.byKid === st.kid) signerKey = subjectKeys;
    else {
      const admin = this.#byId.get(st.by);
      if (!admin || admin.revoked || !admin.roles.includes(ADMIN_ROLE) || admin.identity.kid !== st.byKid) {
        throw refuse(`signer "${st.by}" is neither the agent itself nor a trusted admin`);
      }
      signerKey = admin.signPublicKey;
    }
    if (!verify(signerKey, msg, st.sig)) throw refuse("bad signature");
    if (e.revoked) return { kind: "revocation", id: st.id, kid: st.kid, by: st.by, applied: false };
    if (e.identity.kid === st.kid) this.revoke(st.id);
    else {
      // Only the previous key is revoked: end its overlap window now.
      this.#byId.set(st.id, Object.freeze({ ...e, previous: undefined }));
      for (const fn of this.#keyRetiredListeners) try { fn(st.id, st.kid); } catch { /* like onRevoke: the others still run */ }
    }
    return { kind: "revocation", id: st.id, kid: st.kid, by: st.by, applied: true };
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

  /**
   * Calls `fn(id, kid)` whenever {@link applyStatement} revokes only the previous key of `id` (ending its overlap
   * window early; `onRevoke` does not fire then), so sessions opened with that key can be closed at once.
   * Returns an unsubscribe function.
   */
  onKeyRetired(fn: (id: string, kid: string) => void): () => void {
    this.#keyRetiredListeners.add(fn);
    return () => this.#keyRetiredListeners.delete(fn);
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
