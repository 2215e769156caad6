/**
 * Content scanners: find untagged PII and secrets in plaintext before it is sealed (and after it is opened).
 *
 * {@link scanContent} walks a string, a byte array or a plain data object and returns {@link Finding}s that name
 * the detector, the kind (`pii` or `secret`), the PII tag (`pii:email`, …), where in an object the hit is (a JSON
 * path) and the offsets — **never the matched text**, so a finding can go into an error, a log line or the audit
 * trail without re-leaking what it found (issue 3, "Findings report the detector and position, never the matched
 * text").
 *
 * Detectors (see {@link DETECTORS}):
 * - PII: e-mail, phone (international `+…`, NANP `(555) 123-4567`, national `0…` with separators), payment card
 *   (brand prefix + length + Luhn), US SSN (`AAA-GG-SSSS` without the never-issued ranges), IBAN (per-country length
 *   + ISO 7064 mod-97).
 * - Secrets: OpenAI `sk-…`, AWS `AKIA…`/`ASIA…`, GitHub `ghp_…`/`gho_…`/`ghs_…`/`ghu_…`/`ghr_…`/`github_pat_…`, Slack
 *   `xox[abprs]-…`/`xapp-…`, Stripe `sk_live_`/`rk_live_`/`sk_test_`/`rk_test_`, Google `AIza…`, `Bearer <token>`,
 *   HTTP Basic credentials, JWTs (header must decode to JSON with `alg`), PEM private keys, and high-entropy values assigned to a
 *   secret-looking name (`api_key=…`, `"password": "…"`, `X-Api-Key: …`).
 *
 * Bounded work (every byte may be hostile): input above `maxBytes` (default 1 MiB of text in total), deeper than
 * `maxDepth` or with more than `maxNodes` values is **not scanned** and {@link scanContent} throws
 * `ERR_CONTENT_TOO_LARGE` — fail closed: content that could not be scanned must be treated as denied, never as
 * clean. Every regular expression is written so that each start position does bounded work (negative look-behinds
 * pin starts to the beginning of a run; quantifiers are either bounded or followed by nothing that can fail), so a
 * 1 MiB adversarial input is scanned in milliseconds, not hours (the tests assert a time bound).
 *
 * Known limits (documented, not hidden): the scanners catch accidents and careless agents, not a determined
 * exfiltrator — base64/UTF-16/zero-width-split or otherwise encoded data passes; unseparated 9–10 digit national
 * numbers and SSNs are not reported (too many false positives with ids and timestamps); IDN e-mail addresses are not
 * reported, nor national numbers with a trunk `0` shorter than 10 digits (`030 901820`); a secret in prose ("the
 * password is hunter2") is not an assignment and is not reported; a random 16-digit id that starts like a
 * Visa/Mastercard number passes Luhn one time in ten.
 *
 * @module
 * @example
 * ```ts
 * import { scanContent, piiTagsOf } from "./scanners.js";
 * const findings = scanContent({ to: "alice@example.com", note: "call +44 20 7946 0958" });
 * // [{ detector: "email", kind: "pii", piiTag: "pii:email", path: "$.to", start: 0, end: 17 }, …]
 * piiTagsOf(findings); // ["pii:email", "pii:phone"]
 * ```
 */
import { sealwireError } from "./errors.js";

/** What a finding is about: personal data that needs a clearance tag, or a secret that must not travel. */
export type FindingKind = "pii" | "secret";

/** Every detector {@link scanContent} knows, with its kind and PII tag. */
export const DETECTORS = {
  private_key: { kind: "secret" },
  jwt: { kind: "secret" },
  openai_key: { kind: "secret" },
  aws_access_key: { kind: "secret" },
  github_token: { kind: "secret" },
  slack_token: { kind: "secret" },
  stripe_key: { kind: "secret" },
  google_api_key: { kind: "secret" },
  bearer_token: { kind: "secret" },
  basic_auth: { kind: "secret" },
  card: { kind: "pii", piiTag: "pii:card" },
  iban: { kind: "pii", piiTag: "pii:iban" },
  ssn: { kind: "pii", piiTag: "pii:ssn" },
  email: { kind: "pii", piiTag: "pii:email" },
  phone: { kind: "pii", piiTag: "pii:phone" },
  high_entropy: { kind: "secret" },
} as const satisfies Record<string, { kind: FindingKind; piiTag?: `pii:${string}` }>;

/** Name of a detector. */
export type DetectorName = keyof typeof DETECTORS;

/**
 * All detector names, most specific first: when spans overlap, `redact` labels the merged span with the earliest
 * (a Bearer JWT becomes `[REDACTED:jwt]`).
 */
export const DETECTOR_NAMES: readonly DetectorName[] = Object.freeze(Object.keys(DETECTORS) as DetectorName[]);

/**
 * One hit. Never carries the matched text.
 *
 * - `start`/`end`: half-open offsets of the hit inside the scanned text — UTF-16 code units for strings, bytes for
 *   `Uint8Array` input.
 * - `path`: only for object input. A JSON path: `$`, `.name` for keys that are plain identifiers and carry no
 *   finding themselves, `[i]` for array items, `{n}` for the n-th own key of an object (or n-th entry of a Map/Set)
 *   when the key is not safe to print; a trailing `#key` means the hit is inside that key, not its value.
 */
export interface Finding {
  readonly detector: DetectorName;
  readonly kind: FindingKind;
  readonly piiTag?: `pii:${string}`;
  readonly path?: string;
  readonly start: number;
  readonly end: number;
}

/** Options for {@link scanContent}. Bad values throw `ERR_INVALID_ARGUMENT`. */
export interface ScanOptions {
  /**
   * Most text scanned in one call: the sum of all strings, keys and byte arrays (UTF-8 bytes). Above it the call
   * throws `ERR_CONTENT_TOO_LARGE` without scanning (fail closed).
   * @default 1_048_576
   */
  maxBytes?: number;
  /** Deepest object/array nesting walked; deeper throws `ERR_CONTENT_TOO_LARGE`. @default 32 */
  maxDepth?: number;
  /** Most values (objects, arrays, leaves) walked; more throws `ERR_CONTENT_TOO_LARGE`. @default 10_000 */
  maxNodes?: number;
  /** Only run these detectors. @default every detector */
  detectors?: readonly DetectorName[];
}

/** Default cap on scanned text per call, in bytes. */
export const MAX_SCAN_BYTES = 1024 * 1024;
/** Default cap on object nesting. */
export const MAX_SCAN_DEPTH = 32;
/** Default cap on walked values. */
export const MAX_SCAN_NODES = 10_000;

/** A span found in one text, before paths and byte offsets are attached. */
interface Hit {
  detector: DetectorName;
  start: number;
  end: number;
}

// ---------------------------------------------------------------------------------------------------------------
// Checksums and small helpers
// ---------------------------------------------------------------------------------------------------------------

/** Luhn (ISO/IEC 7812-1 Annex B) over a string of ASCII digits. */
export function luhnValid(digits: string): boolean {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i--) {
    let d = digits.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return false;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return digits.length > 0 && sum % 10 === 0;
}

/** IBAN check digits (ISO 13616 / ISO 7064 MOD 97-10) over a compact upper-case IBAN. */
export function ibanValid(compact: string): boolean {
  const cc = compact.slice(0, 2);
  const len = IBAN_LENGTHS[cc];
  if (len === undefined || compact.length !== len || !/^[A-Z]{2}\d{2}[A-Z0-9]+$/.test(compact)) return false;
  const rearranged = compact.slice(4) + compact.slice(0, 4);
  let rem = 0;
  for (let i = 0; i < rearranged.length; i++) {
    const c = rearranged.charCodeAt(i);
    // Letters count as two digits (A = 10 … Z = 35), ISO 13616-1 §B.
    const v = c >= 65 ? c - 55 : c - 48;
    rem = v >= 10 ? (rem * 100 + v) % 97 : (rem * 10 + v) % 97;
  }
  return rem === 1;
}

/** IBAN lengths per country (SWIFT IBAN registry). A wrong length is not an IBAN, whatever its checksum. */
const IBAN_LENGTHS: Record<string, number> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BI: 27, BR: 29, BY: 28, CH: 21, CR: 22,
  CY: 28, CZ: 24, DE: 22, DJ: 27, DK: 18, DO: 28, EE: 20, EG: 29, ES: 24, FI: 18, FK: 18, FO: 18, FR: 27, GB: 22,
  GE: 22, GI: 23, GL: 18, GR: 27, GT: 28, HR: 21, HU: 28, IE: 22, IL: 23, IQ: 23, IS: 26, IT: 27, JO: 30, KW: 30,
  KZ: 20, LB: 28, LC: 32, LI: 21, LT: 20, LU: 20, LV: 21, LY: 25, MC: 27, MD: 24, ME: 22, MK: 19, MN: 20, MR: 27,
  MT: 31, MU: 30, NI: 28, NL: 18, NO: 15, OM: 23, PK: 24, PL: 28, PS: 29, PT: 25, QA: 29, RO: 24, RS: 22, RU: 33,
  SA: 24, SC: 31, SD: 18, SE: 24, SI: 19, SK: 24, SM: 27, SO: 23, ST: 25, SV: 28, TL: 23, TN: 24, TR: 26, UA: 29,
  VA: 22, VG: 24, XK: 20, YE: 30,
};

/** Card brand by IIN prefix and length; unknown prefixes are not cards (keeps ids and timestamps out). */
function cardBrandOk(d: string): boolean {
  const n = d.length;
  const p2 = Number(d.slice(0, 2));
  const p3 = Number(d.slice(0, 3));
  const p4 = Number(d.slice(0, 4));
  if (d[0] === "4") return n === 13 || n === 16 || n === 19; // Visa
  if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) return n === 16; // Mastercard
  if (p2 === 34 || p2 === 37) return n === 15; // American Express
  if (p4 === 6011 || p2 === 65 || (p3 >= 644 && p3 <= 649)) return n >= 16 && n <= 19; // Discover
  if (p4 >= 3528 && p4 <= 3589) return n >= 16 && n <= 19; // JCB
  if ((p3 >= 300 && p3 <= 305) || p2 === 36 || p2 === 38 || p2 === 39) return n >= 14 && n <= 19; // Diners
  if (p2 === 62) return n >= 16 && n <= 19; // UnionPay
  if (p4 >= 2200 && p4 <= 2204) return n >= 16 && n <= 19; // Mir
  return false;
}

/** Card digit grouping as printed: none, 4-4-4-4(-3) with a shorter last group, or Amex/Diners 4-6-5 / 4-6-4. */
function cardGroupingOk(raw: string): boolean {
  const seps = raw.replace(/\d/g, "");
  if (seps.length === 0) return true;
  if (!/^(?: +|-+)$/.test(seps)) return false; // mixed separators are not how cards are printed
  const groups = raw.split(/[ -]/).map((g) => g.length);
  const key = groups.join("-");
  if (key === "4-6-5" || key === "4-6-4") return true;
  return groups.every((g, i) => (i === groups.length - 1 ? g >= 1 && g <= 4 : g === 4));
}

/** Shannon entropy in bits per character. */
export function shannonEntropy(s: string): number {
  if (s.length === 0) return 0;
  const counts = new Map<number, number>();
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    counts.set(c, (counts.get(c) ?? 0) + 1);
  }
  let h = 0;
  for (const n of counts.values()) {
    const p = n / s.length;
    h -= p * Math.log2(p);
  }
  return h;
}

function charClasses(s: string): number {
  return (
    (/[a-z]/.test(s) ? 1 : 0) + (/[A-Z]/.test(s) ? 1 : 0) + (/\d/.test(s) ? 1 : 0) + (/[^A-Za-z0-9]/.test(s) ? 1 : 0)
  );
}

const hasDigit = (s: string): boolean => /\d/.test(s);
const hasLetter = (s: string): boolean => /[A-Za-z]/.test(s);
const countDigits = (s: string): number => s.replace(/\D/g, "").length;

// ---------------------------------------------------------------------------------------------------------------
// Secret-looking names (for the high-entropy detector)
// ---------------------------------------------------------------------------------------------------------------

/** How strict the value check is for a given name. */
type NameClass = "password" | "secret" | "weak";

/** Words that make a name secret-looking on their own. */
const SECRET_WORDS = new Set([
  "secret", "secrets", "token", "tokens", "credential", "credentials", "apikey", "privatekey", "secretkey",
  "accesskey", "authtoken", "accesstoken", "refreshtoken", "sessiontoken", "clientsecret", "bearer", "signature",
]);
const PASSWORD_WORDS = new Set(["password", "passwd", "pwd", "passphrase", "passcode", "pass"]);
/** `<word> key` pairs that mean a secret key (`api_key`, `privateKey`, `X-Api-Key`). */
const KEY_PREFIXES = new Set([
  "api", "access", "secret", "private", "signing", "encryption", "master", "client", "auth", "session", "app",
  "service", "admin", "root", "hmac", "shared",
]);
/** Words that make a name clearly *not* hold a secret value (`max_tokens`, `key_id`, `publicKey`, `token_type`). */
const NOT_SECRET_WORDS = new Set([
  "public", "pub", "id", "ids", "kid", "hash", "digest", "count", "counts", "length", "len", "name", "names", "type",
  "types", "url", "uri", "urls", "endpoint", "path", "file", "files", "dir", "max", "min", "size", "ttl", "expires",
  "expiry", "expiration", "expire", "limit", "limits", "format", "version", "prefix", "policy", "header", "field",
  "env", "var", "ref", "hint", "fingerprint", "usage", "used", "cost", "budget", "rotation", "page", "cursor",
  "next", "continuation", "tokenizer", "algorithm", "alg", "label", "description", "desc", "template", "scope",
  "scopes", "estimate", "estimated", "total", "input", "output", "prompt", "completion", "per", "rate", "index",
]);

/** Splits an identifier into lower-case words: `OPENAI_API_KEY` → openai, api, key; `apiKey` → api, key. */
function identWords(ident: string): string[] {
  return ident
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1 $2")
    .split(/[\s_.\-]+/)
    .filter((w) => w.length > 0)
    .map((w) => w.toLowerCase());
}

/** Classifies a key/identifier; `null` when it does not look like it holds a secret. */
export function secretNameClass(ident: string): NameClass | null {
  if (ident.length === 0 || ident.length > 64) return null;
  const words = identWords(ident);
  if (words.length === 0 || words.some((w) => NOT_SECRET_WORDS.has(w))) return null;
  if (words.some((w) => PASSWORD_WORDS.has(w))) return "password";
  if (words.some((w) => SECRET_WORDS.has(w))) return "secret";
  for (let i = 1; i < words.length; i++) {
    if (words[i] === "key" && KEY_PREFIXES.has(words[i - 1]!)) return "secret";
  }
  if (words[words.length - 1] === "key") return "weak";
  return null;
}

/** Placeholders and references, not values: `${X}`, `$X`, `%X%`, `{{ x }}`, `<your-key>`, `****`, `xxxx`, … */
const PLACEHOLDER_RE =
  /^(?:\$|%|\{\{|<|\*{3,}|x{4,}|X{4,}|\.{3}|…|changeme|change[_-]?me|your[_-]|my[_-]|example|dummy|placeholder|redacted|null|none|undefined|true|false|todo|tbd|env:|vault:|ref:|arn:)/i;
/** A dotted code reference (`process.env.OPENAI_API_KEY`, `config.auth.token`). */
const CODE_REF_RE = /^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+$/;

/**
 * True if `value`, held under a name of class `cls`, looks like a real secret: long enough, varied enough and not a
 * placeholder, reference, URL or path.
 */
function secretValueLooksReal(value: string, cls: NameClass): boolean {
  if (PLACEHOLDER_RE.test(value) || value.includes("://") || value.startsWith("/") || CODE_REF_RE.test(value)) {
    return false;
  }
  if (/^(.)\1*$/.test(value)) return false;
  const h = shannonEntropy(value);
  switch (cls) {
    case "password":
      return value.length >= 8 && charClasses(value) >= 2 && h >= 2.5;
    case "secret":
      return value.length >= 16 && hasDigit(value) && hasLetter(value) && h >= 3.5;
    case "weak":
      // Bare `key`/`*_key` names hold hashes and ids as often as secrets: demand more than a hex digest gives.
      return value.length >= 20 && hasDigit(value) && hasLetter(value) && !/^[0-9a-fA-F]+$/.test(value) && h >= 4.2;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Text detectors
// ---------------------------------------------------------------------------------------------------------------

// E-mail: look-behind pins the start to the beginning of a local-part run, quantifiers are bounded (RFC 5321
// §4.5.3.1: local part ≤ 64, label ≤ 63).
const EMAIL_RE = /(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}/g;
/** File extensions that end `name@2x.png`-style asset names, not e-mail domains. */
const FILE_EXTS = new Set([
  "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "avif", "js", "mjs", "cjs", "ts", "mts", "cts", "tsx",
  "jsx", "css", "scss", "less", "json", "map", "txt", "lock", "yml", "yaml", "toml", "html", "htm", "wasm", "md",
  "py", "rb", "go", "java", "kt", "swift", "vue", "svelte", "xml", "csv", "pdf", "zip", "gz", "tgz", "mp4", "mp3",
]);

function emailHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(EMAIL_RE)) {
    let s = m[0];
    let start = m.index;
    // Trim dots the local-part class allowed at its edges ("…see.alice@x.com" still finds alice@x.com).
    while (s.startsWith(".")) {
      s = s.slice(1);
      start++;
    }
    const at = s.indexOf("@");
    const local = s.slice(0, at);
    const labels = s.slice(at + 1).split(".");
    if (local.length === 0 || local.endsWith(".") || local.includes("..")) continue;
    if (local === "git") continue; // `git@github.com:org/repo.git` is an SSH remote, not a person
    if (labels.some((l) => l.startsWith("-") || l.endsWith("-"))) continue;
    const tld = labels[labels.length - 1]!;
    if (!/^(?:[A-Za-z]{2,24}|xn--[A-Za-z0-9-]{2,59})$/.test(tld) || FILE_EXTS.has(tld.toLowerCase())) continue;
    out.push({ detector: "email", start, end: start + s.length });
  }
}

// Phones. Three shapes, each with digit counts fixed or bounded so backtracking stays linear:
// international `+CC …` (E.164: at most 15 digits), NANP with separators, and national numbers with a trunk `0`.
const PHONE_INTL_RE = /(?<![\w+])\+[1-9]\d{0,14}(?:(?:[ .-]|[ .-]?\(\d{1,5}\)[ .-]?)\d{1,14}){0,7}(?![\w])/g;
// NANP area codes never start with 0/1; exchanges do not either in real numbers, but people write 555-123-4567 in
// examples and forms, so the exchange is not checked (fail closed: such a string is treated as a phone number).
const PHONE_NANP_RE =
  /(?<![\w.+\-/])(?:1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}(?![\w]|[.\-/:]\d)/g;
const PHONE_NATL_RE = /(?<![\w.+\-/:])0\d{1,4}(?:[ /-]\d{2,8}){1,4}(?![\w]|[.\-/:]\d)/g;
const PHONE_FR_DOT_RE = /(?<![\w.+\-/:])0[1-9](?:\.\d{2}){4}(?![\w]|[.\-/:]\d)/g;

function phoneHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(PHONE_INTL_RE)) {
    const s = m[0];
    const digits = countDigits(s);
    const separated = /[ .()-]/.test(s);
    if (separated ? digits < 8 || digits > 15 : digits < 10 || digits > 15) continue;
    if (/^\+\d{4}-\d{2}-\d{2}/.test(s)) continue; // a signed ISO date, not a number
    out.push({ detector: "phone", start: m.index, end: m.index + s.length });
  }
  for (const m of text.matchAll(PHONE_NANP_RE)) {
    out.push({ detector: "phone", start: m.index, end: m.index + m[0].length });
  }
  for (const m of text.matchAll(PHONE_NATL_RE)) {
    const s = m[0];
    const groups = s.split(/[ /-]/);
    const seps = new Set(s.replace(/\d/g, ""));
    if (seps.size !== 1) continue; // one kind of separator, like people write them
    // French-style pairs (01 42 68 53 00), or 10–12 digits in groups of 3+ (020 7946 0958, 07700 900123). Shorter
    // or pair-ending runs are ids and ZIP codes ("0123 4567 89", "01234 5678") far more often than phones.
    // A leading "00" is the international prefix written without "+" (0044 20 7946 0958): E.164 digit counts.
    const digits = countDigits(s);
    const intl = s.startsWith("00") && digits >= 10 && digits <= 15;
    const pairs = groups.length === 5 && groups.every((g) => g.length === 2);
    const grouped = groups.slice(1).every((g) => g.length >= 3) && digits >= 10 && digits <= 12;
    if (!(intl || pairs || grouped)) continue;
    out.push({ detector: "phone", start: m.index, end: m.index + s.length });
  }
  for (const m of text.matchAll(PHONE_FR_DOT_RE)) {
    out.push({ detector: "phone", start: m.index, end: m.index + m[0].length });
  }
}

// Cards: 13–19 digits, each optionally followed by one space or dash; one digit per iteration, so unambiguous.
const CARD_RE = /(?<![\w.,\-])(?:\d[ -]?){12,18}\d(?![\w]|[.,\-]\d)/g;

function isCardNumber(raw: string): boolean {
  const d = raw.replace(/[ -]/g, "");
  return d.length >= 13 && d.length <= 19 && cardGroupingOk(raw) && cardBrandOk(d) && luhnValid(d);
}

function cardHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(CARD_RE)) {
    if (isCardNumber(m[0])) out.push({ detector: "card", start: m.index, end: m.index + m[0].length });
  }
}

// SSN: AAA-GG-SSSS (or spaces), the same separator twice. SSA never issues area 000, 666 or 900–999, group 00,
// serial 0000.
const SSN_RE = /(?<![\w.\-/])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w]|[.\-/]\d)/g;

function ssnHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(SSN_RE)) {
    const area = m[1]!;
    if (area === "000" || area === "666" || area[0] === "9" || m[3] === "00" || m[4] === "0000") continue;
    out.push({ detector: "ssn", start: m.index, end: m.index + m[0].length });
  }
}

// IBAN: country, check digits, then 4-character groups (optionally space-separated) and a short tail.
const IBAN_RE = /(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])/g;

function ibanHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(IBAN_RE)) {
    const s = m[0];
    // Printed IBANs are either compact or grouped by four with single spaces (ISO 13616-1 §5.4).
    if (s.includes(" ") && !/^[A-Z0-9]{4}(?: [A-Z0-9]{4})*(?: [A-Z0-9]{1,3})?$/.test(s)) continue;
    if (ibanValid(s.replace(/ /g, ""))) out.push({ detector: "iban", start: m.index, end: m.index + s.length });
  }
}

// Provider keys. Unbounded runs are greedy with nothing after them that can fail, so each match is linear.
const OPENAI_RE = /(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}/g;
const AWS_RE = /(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])/g;
const GITHUB_RE = /(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})/g;
const SLACK_RE = /(?<![A-Za-z0-9])(?:xox[abprs]-[A-Za-z0-9-]{10,}|xapp-\d-[A-Za-z0-9-]{10,})/g;
const STRIPE_RE = /(?<![A-Za-z0-9_])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}/g;
const GOOGLE_RE = /(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])/g;
const BEARER_RE = /(?<![A-Za-z0-9])[Bb]earer[ \t]+([A-Za-z0-9._~+/-]{16,}=*)/dg;
const JWT_RE = /(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*/g;
const PEM_BEGIN_RE = /-----BEGIN (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----/g;
const PEM_END_RE = /-----END (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----/g;
/** Most bytes a PEM body is followed for when its END line is missing or far away. */
const PEM_MAX_BODY = 64 * 1024;

function simpleHits(text: string, re: RegExp, detector: DetectorName, out: Hit[], ok?: (s: string) => boolean): void {
  for (const m of text.matchAll(re)) {
    if (ok && !ok(m[0])) continue;
    out.push({ detector, start: m.index, end: m.index + m[0].length });
  }
}

// HTTP Basic credentials (RFC 7617): base64 of "user:password". Only reported when it decodes to exactly that, so
// "Basic configuration" in prose is left alone.
const BASIC_RE = /(?<![A-Za-z0-9])[Bb]asic[ \t]+([A-Za-z0-9+/]{8,}={0,2})(?![A-Za-z0-9+/=])/dg;

function basicHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(BASIC_RE)) {
    const tok = m[1]!;
    if (tok.length > 4096 || tok.length % 4 !== 0) continue;
    const decoded = Buffer.from(tok, "base64").toString("latin1");
    if (!/^[\x21-\x7e][\x20-\x7e]*:[\x20-\x7e]+$/.test(decoded)) continue;
    const [s, e] = m.indices![1]!;
    out.push({ detector: "basic_auth", start: s, end: e });
  }
}

function bearerHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(BEARER_RE)) {
    const tok = m[1]!;
    const [s, e] = m.indices![1]!;
    // Real tokens carry digits; "Bearer authentication/authorization" does not.
    if (hasDigit(tok) && hasLetter(tok)) out.push({ detector: "bearer_token", start: s, end: e });
  }
}

/** RFC 7519 §7.2 step 3–4: the header must be base64url of a JSON object; we also require `alg` (RFC 7515 §4.1.1). */
function jwtHeaderOk(token: string): boolean {
  const h = token.slice(0, token.indexOf("."));
  if (h.length > 4096) return false;
  try {
    const json: unknown = JSON.parse(Buffer.from(h, "base64url").toString("utf8"));
    return json !== null && typeof json === "object" && typeof (json as { alg?: unknown }).alg === "string";
  } catch {
    return false;
  }
}

const PEM_BODY_CHAR = /[A-Za-z0-9+/=\s:,\\-]/;

function pemHits(text: string, out: Hit[]): void {
  if (!text.includes("-----BEGIN ")) return;
  // END markers found once and walked with a pointer: no rescanning per BEGIN, so many BEGINs stay linear.
  const ends: number[] = [];
  for (const m of text.matchAll(PEM_END_RE)) ends.push(m.index + m[0].length);
  const begins = [...text.matchAll(PEM_BEGIN_RE)].map((m) => [m.index, m.index + m[0].length] as const);
  let ei = 0;
  for (let bi = 0; bi < begins.length; bi++) {
    const [start, bodyStart] = begins[bi]!;
    while (ei < ends.length && ends[ei]! <= bodyStart) ei++;
    let end: number;
    const nextEnd = ends[ei];
    const nextBegin = begins[bi + 1]?.[0] ?? text.length;
    if (nextEnd !== undefined && nextEnd - bodyStart <= PEM_MAX_BODY) {
      end = nextEnd;
    } else {
      // No END line (a truncated log line, say): cover the body that follows — base64, headers, escaped newlines —
      // up to the next BEGIN, so bodies never overlap and the walk stays linear in the input.
      end = bodyStart;
      const limit = Math.min(nextBegin, bodyStart + PEM_MAX_BODY);
      while (end < limit && PEM_BODY_CHAR.test(text[end]!)) end++;
    }
    out.push({ detector: "private_key", start, end });
  }
}

// `name = value`, `name: value`, `"name": "value"`, `name := value`, `name => value`, `--name=value`. The name run
// is bounded (64) and starts at the beginning of an identifier, the value run has nothing after it that can fail.
const ASSIGN_RE =
  /(?<![A-Za-z0-9_.])([A-Za-z_][A-Za-z0-9_.-]{0,63})["']?[ \t]{0,4}(?::=|=>|[:=])[ \t]{0,4}["'`]?([^\s"'`,;<>(){}[\]]{8,})/dg;

function entropyHits(text: string, out: Hit[]): void {
  for (const m of text.matchAll(ASSIGN_RE)) {
    const cls = secretNameClass(m[1]!);
    if (cls === null) continue;
    const value = m[2]!;
    if (!secretValueLooksReal(value, cls)) continue;
    const [s, e] = m.indices![2]!;
    out.push({ detector: "high_entropy", start: s, end: e });
  }
}

/** Runs the enabled detectors over one text. */
function scanText(text: string, enabled: ReadonlySet<DetectorName>): Hit[] {
  const hits: Hit[] = [];
  const on = (d: DetectorName): boolean => enabled.has(d);
  if (on("private_key")) pemHits(text, hits);
  if (on("jwt")) simpleHits(text, JWT_RE, "jwt", hits, jwtHeaderOk);
  if (on("openai_key")) simpleHits(text, OPENAI_RE, "openai_key", hits, (s) => hasDigit(s.slice(3)) && hasLetter(s.slice(3)));
  if (on("aws_access_key")) simpleHits(text, AWS_RE, "aws_access_key", hits);
  if (on("github_token")) simpleHits(text, GITHUB_RE, "github_token", hits);
  if (on("slack_token")) simpleHits(text, SLACK_RE, "slack_token", hits, (s) => hasDigit(s.slice(5)));
  if (on("stripe_key")) simpleHits(text, STRIPE_RE, "stripe_key", hits);
  if (on("google_api_key")) simpleHits(text, GOOGLE_RE, "google_api_key", hits);
  if (on("bearer_token")) bearerHits(text, hits);
  if (on("basic_auth")) basicHits(text, hits);
  if (on("card")) cardHits(text, hits);
  if (on("iban")) ibanHits(text, hits);
  if (on("ssn")) ssnHits(text, hits);
  if (on("email")) emailHits(text, hits);
  if (on("phone")) phoneHits(text, hits);
  if (on("high_entropy")) entropyHits(text, hits);
  return dropShadowed(hits);
}

/** Sorted, merged [start, end) intervals of `hits`, for overlap queries by binary search. */
function mergedSpans(hits: readonly Hit[]): [number, number][] {
  const sorted = [...hits].sort((a, b) => a.start - b.start);
  const out: [number, number][] = [];
  for (const h of sorted) {
    const last = out[out.length - 1];
    if (last && h.start < last[1]) last[1] = Math.max(last[1], h.end);
    else out.push([h.start, h.end]);
  }
  return out;
}

function overlapsAny(spans: readonly [number, number][], h: Hit): boolean {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (spans[mid]![1] <= h.start) lo = mid + 1;
    else hi = mid;
  }
  const s = spans[lo];
  return s !== undefined && s[0] < h.end;
}

/**
 * Generic detectors give way to specific ones on the same characters: a phone hit inside a card/SSN/IBAN/secret, or
 * an entropy hit inside a provider key, is the same thing found twice. O(n log n), so a flood of hits stays cheap.
 */
function dropShadowed(hits: Hit[]): Hit[] {
  const specific = hits.filter((h) => h.detector !== "phone" && h.detector !== "high_entropy");
  if (specific.length === hits.length) return hits;
  const forPhone = mergedSpans(specific);
  const forEntropy = mergedSpans(hits.filter((h) => h.detector !== "high_entropy"));
  return hits.filter((h) => {
    if (h.detector === "phone") return !overlapsAny(forPhone, h);
    if (h.detector === "high_entropy") return !overlapsAny(forEntropy, h);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Walking inputs
// ---------------------------------------------------------------------------------------------------------------

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Maps UTF-16 offsets to UTF-8 byte offsets for the given positions, in one pass. */
function byteOffsets(text: string, positions: number[]): Map<number, number> {
  const want = [...new Set(positions)].sort((a, b) => a - b);
  const map = new Map<number, number>();
  let bytes = 0;
  let wi = 0;
  for (let i = 0; i <= text.length && wi < want.length; i++) {
    while (wi < want.length && want[wi] === i) map.set(want[wi++]!, bytes);
    if (i === text.length) break;
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff) bytes += 4; // high surrogate: the pair is 4 bytes, the low one adds 0
    else if (c >= 0xdc00 && c <= 0xdfff) bytes += 0;
    else bytes += 3;
  }
  return map;
}

function toFinding(h: Hit, path: string | undefined): Finding {
  const meta = DETECTORS[h.detector];
  const f: { -readonly [K in keyof Finding]: Finding[K] } = { detector: h.detector, kind: meta.kind, start: h.start, end: h.end };
  if ("piiTag" in meta) f.piiTag = meta.piiTag;
  if (path !== undefined) f.path = path;
  return f;
}

const SAFE_KEY_RE = /^[A-Za-z_$][A-Za-z0-9_$]{0,63}$/;

class Walker {
  readonly findings: Finding[] = [];
  #bytes = 0;
  #nodes = 0;
  readonly #seen = new WeakSet<object>();
  constructor(
    readonly enabled: ReadonlySet<DetectorName>,
    readonly maxBytes: number,
    readonly maxDepth: number,
    readonly maxNodes: number,
  ) {}

  #tooLarge(what: string): never {
    throw sealwireError(
      "ERR_CONTENT_TOO_LARGE",
      `content exceeds the scanner's ${what} limit and was not scanned; treat it as denied or raise the limit`,
    );
  }

  #charge(bytes: number): void {
    this.#bytes += bytes;
    if (this.#bytes > this.maxBytes) this.#tooLarge("size");
  }

  /** Scans one string; returns its hits (also recorded as findings under `path`). */
  text(s: string, path: string | undefined): Hit[] {
    if (s.length > this.maxBytes) this.#tooLarge("size"); // length ≤ UTF-8 bytes, so this is a safe early exit
    this.#charge(Buffer.byteLength(s, "utf8"));
    const hits = scanText(s, this.enabled);
    for (const h of hits) this.findings.push(toFinding(h, path));
    return hits;
  }

  /** Scans bytes as UTF-8 when they decode; otherwise as Latin-1 so one stray byte cannot hide an ASCII secret. */
  bytes(b: Uint8Array, path: string | undefined): void {
    this.#charge(b.byteLength);
    let text: string;
    let utf8 = true;
    try {
      text = strictUtf8.decode(b);
    } catch {
      utf8 = false;
      text = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");
    }
    const hits = scanText(text, this.enabled);
    if (hits.length === 0) return;
    const map = utf8 ? byteOffsets(text, hits.flatMap((h) => [h.start, h.end])) : null;
    for (const h of hits) {
      const start = map ? map.get(h.start)! : h.start;
      const end = map ? map.get(h.end)! : h.end;
      this.findings.push(toFinding({ detector: h.detector, start, end }, path));
    }
  }

  /** A number or bigint: only the card detector applies (a card number stored as a JSON number). */
  number(v: number | bigint, path: string): void {
    if (!this.enabled.has("card")) return;
    if (typeof v === "number" && !(Number.isSafeInteger(v) && v > 0)) return;
    const s = String(v);
    if (s.length >= 13 && s.length <= 19 && isCardNumber(s)) {
      this.findings.push(toFinding({ detector: "card", start: 0, end: s.length }, path));
    }
  }

  value(v: unknown, path: string, depth: number, keyClass: NameClass | null): void {
    if (++this.#nodes > this.maxNodes) this.#tooLarge("node count");
    if (typeof v === "string") {
      const before = this.findings.length;
      this.text(v, path);
      // `{ "api_key": "…" }` as an object: the name and the value are scanned apart, so judge the value by its key.
      if (keyClass !== null && this.enabled.has("high_entropy") && this.findings.length === before) {
        const trimmed = v.trim();
        if (trimmed.length <= 4096 && secretValueLooksReal(trimmed, keyClass)) {
          this.findings.push(toFinding({ detector: "high_entropy", start: 0, end: v.length }, path));
        }
      }
      return;
    }
    if (typeof v === "number" || typeof v === "bigint") return this.number(v, path);
    if (v === null || typeof v !== "object") return;
    if (v instanceof Uint8Array) return this.bytes(v, path);
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) return; // other binary views: not text
    if (this.#seen.has(v)) return; // a cycle (or shared subtree) adds nothing new
    this.#seen.add(v);
    if (depth >= this.maxDepth) this.#tooLarge("depth");
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) this.value(v[i], `${path}[${i}]`, depth + 1, null);
      return;
    }
    if (v instanceof Map) {
      let n = 0;
      for (const [k, val] of v) {
        const p = `${path}{${n++}}`;
        if (typeof k === "string") this.text(k, `${p}#key`);
        else this.value(k, `${p}#key`, depth + 1, null);
        this.value(val, p, depth + 1, typeof k === "string" ? secretNameClass(k) : null);
      }
      return;
    }
    if (v instanceof Set) {
      let n = 0;
      for (const item of v) this.value(item, `${path}{${n++}}`, depth + 1, null);
      return;
    }
    if (v instanceof Date) return;
    const keys = Object.keys(v);
    for (let n = 0; n < keys.length; n++) {
      const k = keys[n]!;
      if (++this.#nodes > this.maxNodes) this.#tooLarge("node count");
      const keyHits = this.text(k, `${path}{${n}}#key`);
      const p = keyHits.length === 0 && SAFE_KEY_RE.test(k) ? `${path}.${k}` : `${path}{${n}}`;
      this.value((v as Record<string, unknown>)[k], p, depth + 1, secretNameClass(k));
    }
  }
}

function checkLimit(v: number | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  if (!Number.isSafeInteger(v) || v < 0) {
    throw sealwireError("ERR_INVALID_ARGUMENT", `scanContent: options.${name} must be a non-negative integer`);
  }
  return v;
}

/**
 * Scans `data` for PII and secrets.
 *
 * - `string`: scanned as text; offsets are UTF-16 code units.
 * - `Uint8Array`: decoded as UTF-8; if it does not decode, scanned as Latin-1 (all patterns are ASCII, so a stray
 *   invalid byte cannot hide a key); offsets are bytes.
 * - objects, arrays, `Map`, `Set`: own enumerable string keys and string values are scanned, nested byte arrays as
 *   above, integers by the card detector; a value under a secret-looking key (`password`, `api_key`, …) is also
 *   judged by the entropy detector. Findings carry a JSON `path`.
 * - anything else: no findings.
 *
 * @throws `ERR_CONTENT_TOO_LARGE` when the input is above `maxBytes`/`maxDepth`/`maxNodes` (nothing was scanned:
 *   treat it as denied). `ERR_INVALID_ARGUMENT` for bad options or an object whose properties throw when read.
 */
export function scanContent(data: unknown, options: ScanOptions = {}): Finding[] {
  const maxBytes = checkLimit(options.maxBytes, MAX_SCAN_BYTES, "maxBytes");
  const maxDepth = checkLimit(options.maxDepth, MAX_SCAN_DEPTH, "maxDepth");
  const maxNodes = checkLimit(options.maxNodes, MAX_SCAN_NODES, "maxNodes");
  let enabled: ReadonlySet<DetectorName>;
  if (options.detectors === undefined) {
    enabled = new Set(DETECTOR_NAMES);
  } else {
    if (!Array.isArray(options.detectors) || options.detectors.some((d) => !Object.hasOwn(DETECTORS, d))) {
      throw sealwireError("ERR_INVALID_ARGUMENT", `scanContent: options.detectors must list names from DETECTORS`);
    }
    enabled = new Set(options.detectors);
  }
  const w = new Walker(enabled, maxBytes, maxDepth, maxNodes);
  if (typeof data === "string") {
    w.text(data, undefined);
  } else if (data instanceof Uint8Array) {
    w.bytes(data, undefined);
  } else {
    try {
      w.value(data, "$", 0, null);
    } catch (err) {
      if (err instanceof Error && (err as { name?: string }).name === "SealwireError") throw err;
      throw sealwireError("ERR_INVALID_ARGUMENT", "scanContent: the content could not be walked (a property threw)");
    }
  }
  // Plain code-unit order, not localeCompare: stable across locales and cheap for many findings.
  const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
  return w.findings.sort((a, b) => cmp(a.path ?? "", b.path ?? "") || a.start - b.start || a.end - b.end);
}

/** The distinct PII tags of `findings`, sorted (`["pii:email", "pii:phone"]`). */
export function piiTagsOf(findings: readonly Finding[]): string[] {
  const tags = new Set<string>();
  for (const f of findings) if (f.piiTag !== undefined) tags.add(f.piiTag);
  return [...tags].sort();
}
