/**
 * Test-only helpers for the Noise module. Not re-exported from `index.ts` and not part of the package's public
 * API: fixing an ephemeral key destroys forward secrecy and is only useful to reproduce published test vectors.
 *
 * @module
 * @example
 * ```ts
 * const hs = HandshakeState.initialize({ protocolName, initiator: true, s });
 * setTestEphemeral(hs, fromHex(vector.init_ephemeral));
 * ```
 */
import { HandshakeState, kSetTestEphemeral } from "./handshake-state.js";

/** Makes `hs` send the X25519 key with this 32-byte secret at its `e` token. Call before the first message. */
export function setTestEphemeral(hs: HandshakeState, secret: Uint8Array): void {
  hs[kSetTestEphemeral](secret);
}
