/**
 * Parses Noise protocol names (Noise rev 34 §8): `Noise_<pattern>_<dh>_<cipher>_<hash>`, where the pattern part
 * is a base pattern followed by modifiers (`XXpsk3`, `NNpsk0+psk2`, §8.1).
 *
 * Supported: every pattern in `patterns.ts`, the `pskN` modifiers, DH `25519`, cipher `ChaChaPoly`, hashes
 * `SHA256`, `SHA512` and `BLAKE2b`. Anything else (448, AESGCM, BLAKE2s, fallback, hfs, …) is refused rather than
 * guessed at.
 *
 * @module
 * @example
 * ```ts
 * const p = parseProtocolName("Noise_XXpsk3_25519_ChaChaPoly_SHA256");
 * p.hash; // "sha256"
 * p.pattern.pskCount; // 1
 * ```
 */
import type { HashName } from "../../src/_crypto.js";
import { sealwireError } from "../../src/errors.js";
import { handshakePattern, type HandshakePattern } from "./patterns.js";

/** A parsed, supported Noise protocol name. */
export interface NoiseProtocol {
  /** The full protocol name, exactly as given (its bytes seed the handshake hash, §5.2). */
  readonly name: string;
  readonly pattern: HandshakePattern;
  readonly dh: "25519";
  readonly cipher: "ChaChaPoly";
  /** The provider's name for the hash function. */
  readonly hash: HashName;
  /** HASHLEN (§4.3): 32 for SHA256, 64 for SHA512 and BLAKE2b. */
  readonly hashLen: 32 | 64;
}

const HASHES: Readonly<Record<string, { hash: HashName; hashLen: 32 | 64 }>> = {
  SHA256: { hash: "sha256", hashLen: 32 },
  SHA512: { hash: "sha512", hashLen: 64 },
  BLAKE2b: { hash: "blake2b", hashLen: 64 },
};

/** Bounded so that a hostile or mistaken name cannot cost more than a regex over 255 characters. */
const MAX_NAME_CHARS = 255;

/**
 * Parses and validates a protocol name.
 *
 * @throws SealwireError `ERR_INVALID_ARGUMENT` when the name is malformed or names an unsupported
 * pattern, modifier, DH, cipher or hash.
 */
export function parseProtocolName(name: string): NoiseProtocol {
  if (typeof name !== "string" || name.length > MAX_NAME_CHARS) {
    throw sealwireError("ERR_INVALID_ARGUMENT", "protocolName must be a string like Noise_XX_25519_ChaChaPoly_SHA256");
  }
  const hit = cache.get(name);
  if (hit) return hit;
  const parsed = parse(name);
  // Only valid names are cached, and there are finitely many; the bound is a second guard.
  if (cache.size >= MAX_CACHED) cache.clear();
  cache.set(name, parsed);
  return parsed;
}

// Parsed protocols are immutable, so a handshake per connection need not re-parse the same name.
const cache = new Map<string, NoiseProtocol>();
const MAX_CACHED = 256;

function parse(name: string): NoiseProtocol {
  const parts = name.split("_");
  if (parts.length !== 5 || parts[0] !== "Noise") {
    throw sealwireError(
      "ERR_INVALID_ARGUMENT",
      `protocolName "${name}" is not of the form Noise_<pattern>_<dh>_<cipher>_<hash> (Noise §8)`,
    );
  }
  const [, patternPart, dh, cipher, hashName] = parts as [string, string, string, string, string];
  // §8.1: the base name is upper-case letters and digits; modifiers are lower-case, the first appended directly,
  // the rest joined by "+".
  const m = /^([A-Z][A-Z0-9]*)(.*)$/.exec(patternPart);
  if (!m) throw sealwireError("ERR_INVALID_ARGUMENT", `protocolName "${name}": malformed handshake pattern`);
  const base = m[1]!;
  const modifiers = m[2] === "" ? [] : m[2]!.split("+");
  const psks: number[] = [];
  for (const mod of modifiers) {
    const pm = /^psk(0|[1-9][0-9]?)$/.exec(mod);
    if (!pm) {
      throw sealwireError(
        "ERR_INVALID_ARGUMENT",
        `protocolName "${name}": unsupported pattern modifier "${mod}" (only pskN modifiers are supported)`,
      );
    }
    psks.push(Number(pm[1]));
  }
  if (dh !== "25519") {
    throw sealwireError("ERR_INVALID_ARGUMENT", `protocolName "${name}": unsupported DH "${dh}" (supported: 25519)`);
  }
  if (cipher !== "ChaChaPoly") {
    throw sealwireError(
      "ERR_INVALID_ARGUMENT",
      `protocolName "${name}": unsupported cipher "${cipher}" (supported: ChaChaPoly)`,
    );
  }
  const h = Object.hasOwn(HASHES, hashName) ? HASHES[hashName] : undefined;
  if (!h) {
    throw sealwireError(
      "ERR_INVALID_ARGUMENT",
      `protocolName "${name}": unsupported hash "${hashName}" (supported: SHA256, SHA512, BLAKE2b)`,
    );
  }
  const pattern = handshakePattern(base, psks);
  return Object.freeze({ name, pattern, dh: "25519", cipher: "ChaChaPoly", hash: h.hash, hashLen: h.hashLen });
}
