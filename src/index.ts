/**
 * sealwire: signed, sealed, policy-tagged envelopes between AI agents, over any transport.
 *
 * The root entry loads no transport (no `ws`, no NATS client): import transports from their sub-paths
 * (`sealwire/transports/memory`, …).
 *
 * @module
 * @example
 * ```ts
 * import { generateIdentity, TrustStore, createAgent } from "sealwire";
 * import { memory } from "sealwire/transports/memory";
 * const net = memory();
 * const alice = await generateIdentity("alice");
 * const trust = new TrustStore();
 * trust.add(alice.publicIdentity);
 * const a = await createAgent({ identity: alice, trust, transport: net });
 * ```
 */
export { Agent, createAgent } from "./agent.js";
export type { AgentOptions, AgentSessionOptions, AuditSink, CreateAgentOptions, ReceivedMessage, RequestOptions, SendMode, SendOptions } from "./agent.js";
export { ANONYMIZER_ROLE, ATTESTATION_MAX_AGE_MS, createAttestation, verifyAttestation } from "./attestation.js";
export type { Attestation, VerifiedAttestation } from "./attestation.js";
export { AuditLog, fileSink, memorySink, sessionAuditEvent, sessionCheckpointOfRecord, verifyAuditLog, verifySessionCheckpointRecord } from "./audit.js";
export type { AuditEvent, AuditLogOptions, AuditRecord, AuditSigner, AuditSink as AuditRecordSink, AuditVerifyResult } from "./audit.js";
export {
  POLICY_TIMEOUT_MS,
  allOf,
  allow,
  allowAll,
  allowPairs,
  anyOf,
  contentScanner,
  defaultPolicy,
  deny,
  evaluate,
  piiClearance,
  rateLimit,
  sizeLimit,
} from "./policy.js";
export type { ContentScannerOptions, Decision, Policy, PolicyContext, PolicyHeader, RateLimitOptions, Stage } from "./policy.js";
export { DETECTORS, piiTagsOf, scanContent } from "./scanners.js";
export type { DetectorName, Finding, ScanOptions } from "./scanners.js";
export { createRedactingLogger, redact, registerSecret, unregisterSecret } from "./redact.js";
export type { LoggerLike } from "./redact.js";
export {
  DEFAULT_KDF,
  keystoreIdentity,
  loadIdentity,
  passphraseFromEnv,
  passphraseFromFd,
  passphraseFromFile,
  readPublicIdentity,
  resolveIdentity,
  saveIdentity,
} from "./keystore.js";
export type { IdentityProvider, KdfParams, LoadOptions, Passphrase, SaveOptions } from "./keystore.js";
export type { ReplayGuard } from "./replay-guard.js";
export { PersistentReplayCache } from "./replay-store.js";
export type { ReplayStoreOptions } from "./replay-store.js";
export { createHub, Hub } from "./hub.js";
export type { HubOptions } from "./hub.js";
export { loadTrustFile, saveTrustFile } from "./trust-file.js";
export { ADMIN_ROLE, DEFAULT_OVERLAP_MS, createRevocation, parseStatement, rotateIdentity } from "./statements.js";
export type { KeyStatement, RevocationStatement, RotationStatement } from "./statements.js";
export { SessionReceiver, SessionSender, decodeSessionEnvelope, isSessionFrame, sessionEnvelopeId, verifySessionCheckpoint } from "./session.js";
export type { SessionEvent, SessionHeader, SessionReceiverOptions, SessionSenderOptions } from "./session.js";
export { RefusalCounter } from "./refusal-counter.js";
export type { Refusal, RefusalRecord } from "./refusal-counter.js";
export { defaultProvider, nativeProvider, nobleProvider } from "./_crypto.js";
export type { CryptoProvider } from "./_crypto.js";
export {
  DEFAULT_CLOCK_SKEW_MS,
  DEFAULT_TTL_MS,
  EnvelopeOpener,
  MAX_DATA_DEPTH,
  MAX_ENVELOPE_BYTES,
  MAX_TTL_MS,
  ReplayCache,
  decodeEnvelope,
  decodePayload,
  encodeData,
  encodePayload,
  sealEnvelope,
  verifyEnvelopeSignature,
} from "./envelope.js";
export type {
  Data,
  DecodedEnvelope,
  EnvelopeHeader,
  OpenedEnvelope,
  OpenerOptions,
  SealOptions,
  SealedEnvelope,
  Tags,
  TagsInit,
  VerifiedEnvelope,
} from "./envelope.js";
export { ERROR_CODES, SealwireError } from "./errors.js";
export type { ErrorCode, SealwireErrorOptions } from "./errors.js";
export { AGENT_ID_RE, Identity, generateIdentity, parsePublicIdentity } from "./identity.js";
export type { IdentityOptions, IdentitySecrets, PublicIdentity } from "./identity.js";
export { isTransport, transportSymbol } from "./transport.js";
export type { AbortOptions, Connection, DialOptions, ListenOptions, Listener, Transport } from "./transport.js";
export { PII_TAG_RE, ROLE_RE, TrustStore } from "./trust.js";
export type { KeyView, PreviousKeys, StatementResult, TrustEntry, TrustOptions } from "./trust.js";
