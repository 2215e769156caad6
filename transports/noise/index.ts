/**
 * `sealwire/noise`: the Noise secure-channel transport, and underneath it a spec-exact implementation of the Noise
 * Protocol Framework, revision 34, shaped like the spec so it can be checked against other implementations (and
 * is, against the cacophony, snow and noise-c test vectors).
 *
 * - {@link noise}: `noise({ transport, identity, trust })` wraps any Transport in mutually authenticated,
 *   encrypted, forward-secret channels (IK when the dialer names `remotePeer`, XX for first contact); see
 *   `channel.ts` for the wire format, the trust checks, rekeying and the bounds. It returns a
 *   {@link NoiseTransport}, whose `useIdentity(next)` follows a rotation of the local key.
 *
 * The low-level API:
 * - {@link HandshakeState}: `initialize`, `writeMessage`, `readMessage`, `isComplete`, `split`,
 *   `getHandshakeHash`, `remoteStaticKey`.
 * - {@link CipherState}: `encryptWithAd`, `decryptWithAd`, `rekey`, `setNonce`, `hasKey`.
 * - {@link parseProtocolName}: `Noise_<pattern>[pskN…]_25519_ChaChaPoly_<SHA256|SHA512|BLAKE2b>`.
 *
 * Most users want {@link noise}, not these objects. Only this file is exported by the package (`"./noise"`);
 * `_testing.ts` and the other modules stay internal.
 *
 * @module
 * @example
 * ```ts
 * import { noise } from "sealwire/noise";
 * const transport = noise({ transport: memory(), identity: alice, trust }); // hand it to createAgent
 * ```
 * ```ts
 * import { HandshakeState } from "sealwire/noise";
 * const hs = HandshakeState.initialize({ protocolName: "Noise_NN_25519_ChaChaPoly_SHA256", initiator: true });
 * const m1 = hs.writeMessage(new Uint8Array(0)); // -> e
 * ```
 */
export { CipherState, MAX_MESSAGE_BYTES, MAX_PLAINTEXT_BYTES, TAG_BYTES } from "./cipher-state.js";
export { HandshakeState, type HandshakeInit } from "./handshake-state.js";
export { PATTERN_NAMES, handshakePattern, type HandshakePattern, type MessagePattern, type Token } from "./patterns.js";
export { parseProtocolName, type NoiseProtocol } from "./protocol-name.js";
export {
  MIN_INNER_FRAME_BYTES,
  NOISE_DOMAIN,
  noise,
  noisePrologue,
  type NoiseAuditEvent,
  type NoiseAuditSink,
  type NoiseInit,
  type NoiseTransport,
} from "./channel.js";
