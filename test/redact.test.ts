/**
 * Redaction: detector spans, registered key material in every encoding, the hashing budget (fail closed), and the
 * redacting logger (silent by default; every string in every argument redacted; canaries never reach the sink).
 *
 * @module
 * @example
 * ```sh
 * npx vitest run --config test/vitest.config.ts test/redact.test.ts
 * ```
 */
import { inspect } from "node:util";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { defaultProvider } from "../src/_crypto.js";
import {
  containsRegisteredSecret,
  createRedactingLogger,
  type LoggerLike,
  MAX_REGISTERED_SECRETS,
  MAX_REGISTRY_WINDOWS,
  redact,
  redactValue,
  registerSecret,
  registeredSecretCount,
  unregisterAllSecrets,
  unregisterSecret,
} from "../src/redact.js";
import { MAX_SCAN_BYTES } from "../src/scanners.js";

afterEach(() => unregisterAllSecrets());

const j = (...parts: string[]): string => parts.join("");
const AWS = j("AKIA", "IOSFODNN7EXAMPLE");
const OPENAI = j("sk-proj-", "Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3");
const JWT = j(
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
  ".eyJzdWIiOiIxMjM0NTY3ODkwIn0",
  ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
);

/** Every spelling of `k` the registry promises to catch. */
function encodings(k: Uint8Array): string[] {
  const b = Buffer.from(k);
  return [
    b.toString("hex"),
    b.toString("hex").toUpperCase(),
    b.toString("base64"),
    b.toString("base64").replace(/=+$/, ""),
    b.toString("base64url"),
  ];
}

describe("redact()", () => {
  it("replaces what the detectors find with [REDACTED:<detector>] and keeps the rest", () => {
    const text = `user alice@example.com key ${AWS} phone +44 20 7946 0958 card 4111 1111 1111 1111 done`;
    expect(redact(text)).toBe(
      "user [REDACTED:email] key [REDACTED:aws_access_key] phone [REDACTED:phone] card [REDACTED:card] done",
    );
    expect(redact("nothing to see: v1.2.3 on 2024-03-15")).toBe("nothing to see: v1.2.3 on 2024-03-15");
    expect(redact("")).toBe("");
  });

  it("merges overlapping spans under the most specific label", () => {
    expect(redact(`Authorization: Bearer ${JWT}`)).toBe("Authorization: Bearer [REDACTED:jwt]");
    expect(redact(`OPENAI_API_KEY=${OPENAI}`)).toBe("OPENAI_API_KEY=[REDACTED:openai_key]");
  });

  it("is idempotent", () => {
    const text = `a ${AWS} b alice@example.com c api_key="Zx9Qw3Er7Ty1Ui5Op2As" d ${JWT}`;
    const once = redact(text);
    expect(redact(once)).toBe(once);
  });

  it("redacts a PEM private key block whole", () => {
    const pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----";
    expect(redact(`key:\n${pem}\nafter`)).toBe("key:\n[REDACTED:private_key]\nafter");
  });

  it("text too large to scan is replaced whole (fail closed)", () => {
    expect(redact(`${AWS} ${"a".repeat(MAX_SCAN_BYTES)}`)).toBe("[REDACTED:too_large]");
  });

  it("refuses non-strings", () => {
    expect(() => redact(42 as unknown as string)).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
  });
});

describe("registered secrets", () => {
  it("redacts hex (any case), base64 (padded or not) and base64url forms, standalone and embedded", () => {
    for (const len of [16, 31, 32, 33, 64]) {
      const k = defaultProvider.randomBytes(len);
      const forget = registerSecret(k);
      for (const e of encodings(k)) {
        for (const wrap of [(x: string) => x, (x: string) => `seed=${x};`, (x: string) => `{"k":"${x}"}`, (x: string) => `0x${x} tail`]) {
          const out = redact(wrap(e));
          expect(out, `${len} ${wrap("E")}`).not.toContain(e);
          expect(out).toContain("[REDACTED:registered_secret]");
        }
      }
      // embedded in a longer run of the same alphabet (a prefix glued on)
      const url = Buffer.from(k).toString("base64url");
      expect(redact(`prefix_${url}_suffix`)).toBe("prefix_[REDACTED:registered_secret]_suffix");
      expect(containsRegisteredSecret(`x ${url} y`)).toBe(true);
      forget();
    }
  });

  it("does not redact other values of the same length, and stops redacting after unregister", () => {
    const k = defaultProvider.randomBytes(32);
    const other = Buffer.from(defaultProvider.randomBytes(32)).toString("hex");
    const hex = Buffer.from(k).toString("hex");
    const forget = registerSecret(k);
    expect(redact(`a ${other} b`)).toBe(`a ${other} b`);
    expect(redact(`a ${hex} b`)).toBe("a [REDACTED:registered_secret] b");
    forget();
    forget(); // idempotent
    expect(redact(`a ${hex} b`)).toBe(`a ${hex} b`);
    expect(containsRegisteredSecret(hex)).toBe(false);
  });

  it("counts registrations; unregisterSecret drops one and reports unknown secrets", () => {
    const k = defaultProvider.randomBytes(32);
    const hex = Buffer.from(k).toString("hex");
    registerSecret(k);
    registerSecret(Uint8Array.from(k));
    expect(registeredSecretCount()).toBe(1);
    expect(unregisterSecret(k)).toBe(true);
    expect(redact(hex)).toBe("[REDACTED:registered_secret]");
    expect(unregisterSecret(k)).toBe(true);
    expect(redact(hex)).toBe(hex);
    expect(unregisterSecret(k)).toBe(false);
    expect(registeredSecretCount()).toBe(0);
  });

  it("does not modify the caller's bytes and keeps no readable copy of them", () => {
    const k = defaultProvider.randomBytes(32);
    const copy = Uint8Array.from(k);
    const forget = registerSecret(k);
    expect(k).toEqual(copy);
    // The unregister handle holds digests only: nothing inspectable spells the key.
    const shown = inspect(forget, { showHidden: true, depth: 5 }) + String(forget);
    for (const e of encodings(k)) expect(shown).not.toContain(e);
  });

  it("rejects secrets that are too short, too long or not bytes, and a full registry", () => {
    for (const bad of [new Uint8Array(7), new Uint8Array(1025), "secret", null]) {
      expect(() => registerSecret(bad as Uint8Array)).toThrowError(expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }));
    }
    for (let i = 0; i < MAX_REGISTERED_SECRETS; i++) registerSecret(defaultProvider.randomBytes(16));
    expect(() => registerSecret(defaultProvider.randomBytes(16))).toThrowError(expect.objectContaining({ code: "ERR_QUEUE_FULL" }));
  });

  it("candidate runs beyond the hashing budget are redacted unchecked, never let through", () => {
    const k = defaultProvider.randomBytes(32);
    registerSecret(k);
    const blob = Buffer.from(defaultProvider.randomBytes(Math.ceil(MAX_REGISTRY_WINDOWS * 0.8))).toString("base64url");
    const hex = Buffer.from(k).toString("hex");
    const out = redact(`start ${blob} mid ${hex} end`);
    expect(out).toContain("[REDACTED:unchecked]");
    expect(out).not.toContain(hex);
    expect(out.startsWith("start ")).toBe(true);
    expect(out.endsWith(" end")).toBe(true);
    // without registered secrets the same blob is left alone
    unregisterAllSecrets();
    expect(redact(`start ${blob} end`)).toBe(`start ${blob} end`);
  });

  it("property: a registered secret never survives redact, whatever the surroundings", () => {
    const k = defaultProvider.randomBytes(24);
    registerSecret(k);
    const forms = encodings(k);
    const filler = fc.string({ unit: fc.constantFrom(..." .,;:!?()[]{}<>\"'\n\t#@".split("")), maxLength: 20 });
    fc.assert(
      fc.property(filler, fc.constantFrom(...forms), filler, (a, e, b) => {
        expect(redact(`${a}${e}${b}`)).not.toContain(e);
      }),
      { numRuns: 200 },
    );
  });
});

describe("redactValue() and createRedactingLogger()", () => {
  const canary = defaultProvider.randomBytes(32);
  const canaryHex = Buffer.from(canary).toString("hex");
  const canaryB64 = Buffer.from(canary).toString("base64");

  function capture(): { logger: LoggerLike; calls: unknown[][] } {
    const calls: unknown[][] = [];
    const rec = (...a: unknown[]): void => void calls.push(a);
    return { logger: { info: rec, warn: rec, error: rec, debug: rec }, calls };
  }

  it("is silent without a logger: no output, no work", () => {
    const spyOut = vi.spyOn(process.stdout, "write");
    const spyErr = vi.spyOn(process.stderr, "write");
    const spyLog = vi.spyOn(console, "log");
    try {
      const log = createRedactingLogger();
      log.info({ key: AWS }, "hello");
      log.warn("x");
      log.error(new Error(AWS));
      log.debug("y");
      log.child({ a: 1 }).info("z");
      expect(spyOut).not.toHaveBeenCalled();
      expect(spyErr).not.toHaveBeenCalled();
      expect(spyLog).not.toHaveBeenCalled();
    } finally {
      vi.restoreAllMocks();
    }
  });

  it("redacts every string in the object, the message and format arguments; canaries never reach the sink", () => {
    registerSecret(canary);
    const { logger, calls } = capture();
    const log = createRedactingLogger(logger);
    const err = Object.assign(new Error(`failed with ${AWS} for alice@example.com`), { code: "ERR_X", cause: new Error(canaryHex) });
    const circular: Record<string, unknown> = { seed: canaryB64 };
    circular["self"] = circular;
    log.info(
      {
        user: "alice@example.com",
        nested: { deeper: [{ token: `Bearer ${JWT}` }], [AWS]: "key as a key" },
        bytes: canary,
        big: 4111111111111111n,
        err,
        circular,
        when: new Date(0),
        map: new Map([["k", canaryHex]]),
        handle: { toJSON: () => "<redacted>" },
        fn: () => canaryHex,
      },
      "sent to %s with %s",
      "bob@example.org",
      canaryHex,
    );
    log.error(err);
    log.warn(`plain message with ${OPENAI}`);
    const out = JSON.stringify(calls);
    for (const secret of [AWS, OPENAI, JWT, canaryHex, canaryB64, "alice@example.com", "bob@example.org", "4111111111111111"]) {
      expect(out).not.toContain(secret);
    }
    expect(calls).toHaveLength(3);
    const [obj, msg, a1, a2] = calls[0]!;
    expect(msg).toBe("sent to %s with %s");
    expect(a1).toBe("[REDACTED:email]");
    expect(a2).toBe("[REDACTED:registered_secret]");
    expect(obj).toMatchObject({
      user: "[REDACTED:email]",
      bytes: "[REDACTED:bytes(32)]",
      big: "[REDACTED:card]",
      when: "1970-01-01T00:00:00.000Z",
      handle: "<redacted>",
      circular: { seed: "[REDACTED:registered_secret]", self: "[Circular]" },
      err: { type: "Error", code: "ERR_X", cause: { message: "[REDACTED:registered_secret]" } },
    });
    expect(obj).not.toHaveProperty("fn");
    expect((obj as { nested: Record<string, unknown> }).nested).toHaveProperty("[REDACTED:aws_access_key]");
    expect((calls[0]![0] as { err: { stack: string } }).err.stack).toContain("[REDACTED:aws_access_key]");
  });

  it("bounds depth and width, and never throws on hostile objects", () => {
    let deep: unknown = "alice@example.com";
    for (let i = 0; i < 20; i++) deep = { d: deep };
    expect(JSON.stringify(redactValue(deep))).toContain("[Truncated]");
    const wide = redactValue(Array.from({ length: 1000 }, (_, i) => i)) as unknown[];
    expect(wide.length).toBeLessThan(1000);
    const hostile = {
      get boom(): string {
        throw new Error(AWS);
      },
    };
    expect(redactValue(hostile)).toEqual("[Unloggable]");
    expect(redactValue({ toJSON: () => { throw new Error(AWS); } })).toBe("[Unloggable]");
  });

  it("a logger that throws or lacks levels does not break the caller; child() redacts bindings", () => {
    const log = createRedactingLogger({
      info: () => {
        throw new Error("sink down");
      },
    });
    expect(() => log.info("x")).not.toThrow();
    expect(() => log.debug("x")).not.toThrow();
    const bindingsSeen: unknown[] = [];
    const { logger, calls } = capture();
    const parent: LoggerLike = {
      ...logger,
      child(b) {
        bindingsSeen.push(b);
        return logger;
      },
    };
    createRedactingLogger(parent).child({ peer: "alice@example.com", key: AWS }).info({ n: 1 }, AWS);
    expect(bindingsSeen).toEqual([{ peer: "[REDACTED:email]", key: "[REDACTED:aws_access_key]" }]);
    expect(calls).toEqual([[{ n: 1 }, "[REDACTED:aws_access_key]"]]);
    expect(() => createRedactingLogger(42 as unknown as LoggerLike)).toThrowError(
      expect.objectContaining({ code: "ERR_INVALID_ARGUMENT" }),
    );
  });
});
