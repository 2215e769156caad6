/**
 * The wire codec: MessagePack (msgpackr) restricted to plain data.
 *
 * Before msgpackr sees a byte from the network, {@link assertPlainMsgpack} walks the encoding iteratively and
 * refuses anything that is not nil/bool/int/finite float/str/bin/array/map: no extension types (msgpackr records,
 * timestamps, structures), no non-string or `__proto__` map keys, no integers beyond 2^53, no invalid UTF-8, no
 * trailing bytes, and bounded depth and item count. Only then is the value decoded, so decoding is bounded in time
 * and memory by the input size, and can produce nothing but plain objects, arrays, strings, numbers and bytes.
 *
 * MessagePack is not canonical, so sealwire never re-encodes before verifying: signatures and AEAD associated data
 * cover the exact bytes that travelled.
 *
 * @module
 * @example
 * ```ts
 * const bytes = encode({ a: 1 });
 * const value = decodeStrict(bytes, { maxBytes: 1024 });
 * ```
 */
import { Packr, Unpackr } from "msgpackr";
import { sealwireError } from "./errors.js";

const packr = new Packr({ useRecords: false, moreTypes: false, bundleStrings: false, variableMapSize: true });
// int64AsType "number": msgpackr would otherwise return every 64-bit integer as a BigInt (found by fuzzing); the
// walker already refuses integers beyond 2^53, so "number" is exact.
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, moreTypes: false, bundleStrings: false, int64AsType: "number" });
// For payloads: byte strings are copied out of the input, so wiping the plaintext buffer cannot touch them.
const copyingUnpackr = new Unpackr({
  useRecords: false,
  mapsAsObjects: true,
  moreTypes: false,
  bundleStrings: false,
  copyBuffers: true,
  int64AsType: "number",
});

/** Encodes plain data as MessagePack. */
export function encode(value: unknown): Uint8Array {
  const b = packr.pack(value);
  // A plain Uint8Array view (msgpackr returns a Buffer slice of its own slab; the bytes are not reused).
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/** Limits for {@link decodeStrict}. */
export interface DecodeLimits {
  /** Largest input accepted, checked before anything is parsed. */
  maxBytes: number;
  /** Deepest nesting of arrays/maps. @default 8 */
  maxDepth?: number;
  /** Most values in total (every scalar, array, map, key counts one). @default 4096 */
  maxItems?: number;
  /** Return byte strings as copies rather than views into `buf`. @default false */
  copyBytes?: boolean;
}

const td = new TextDecoder("utf-8", { fatal: true });
const PROTO_KEY = "__proto__";
const decodeError = () => sealwireError("ERR_DECODE", "malformed envelope encoding");

/**
 * Throws ERR_DECODE unless `buf` is exactly one plain MessagePack value within the limits.
 * Iterative (no recursion), so hostile nesting cannot exhaust the stack.
 */
export function assertPlainMsgpack(buf: Uint8Array, maxDepth = 8, maxItems = 4096): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = buf.length;
  let pos = 0;
  let items = 0;
  // Each frame counts how many more values its container expects; `keyNext` marks a map expecting a key.
  const remaining: number[] = [];
  const isMap: boolean[] = [];
  const keyNext: boolean[] = [];
  let rootSeen = false;

  const need = (k: number) => {
    if (pos + k > n) throw decodeError();
  };

  for (;;) {
    // Pop finished containers.
    while (remaining.length > 0 && remaining[remaining.length - 1] === 0) {
      remaining.pop();
      isMap.pop();
      keyNext.pop();
    }
    if (remaining.length === 0 && rootSeen) break;
    rootSeen = true;
    if (++items > maxItems) throw decodeError();
    const top = remaining.length - 1;
    const expectKey = top >= 0 && isMap[top] === true && keyNext[top] === true;
    if (top >= 0) {
      remaining[top]!--;
      if (isMap[top]) keyNext[top] = !keyNext[top];
    }
    need(1);
    const b = buf[pos++]!;
    let strLen = -1;
    let container = -1;
    let containerIsMap = false;
    if (b <= 0x7f || b >= 0xe0) {
      // fixint
    } else if (b >= 0xa0 && b <= 0xbf) strLen = b & 0x1f;
    else if (b >= 0x90 && b <= 0x9f) container = b & 0x0f;
    else if (b >= 0x80 && b <= 0x8f) {
      container = b & 0x0f;
      containerIsMap = true;
    } else {
      switch (b) {
        case 0xc0: case 0xc2: case 0xc3: break; // nil, false, true
        case 0xc4: need(1); pos += 1 + dv.getUint8(pos); break; // bin8
        case 0xc5: need(2); pos += 2 + dv.getUint16(pos); break; // bin16
        case 0xc6: need(4); pos += 4 + dv.getUint32(pos); break; // bin32
        // Floats must be finite: NaN and ±Infinity are not plain data (and JSON cannot carry them).
        case 0xca: need(4); if (!Number.isFinite(dv.getFloat32(pos))) throw decodeError(); pos += 4; break; // float32
        case 0xcb: need(8); if (!Number.isFinite(dv.getFloat64(pos))) throw decodeError(); pos += 8; break; // float64
        case 0xcc: case 0xd0: pos += 1; break;
        case 0xcd: case 0xd1: pos += 2; break;
        case 0xce: case 0xd2: pos += 4; break;
        case 0xcf: { // uint64: must fit a JS number exactly
          need(8);
          if (dv.getUint32(pos) > 0x1fffff) throw decodeError();
          pos += 8;
          break;
        }
        case 0xd3: { // int64: |v| < 2^53
          need(8);
          const hi = dv.getInt32(pos);
          if (hi > 0x1fffff || hi < -0x200000) throw decodeError();
          pos += 8;
          break;
        }
        case 0xd9: need(1); strLen = dv.getUint8(pos); pos += 1; break;
        case 0xda: need(2); strLen = dv.getUint16(pos); pos += 2; break;
        case 0xdb: need(4); strLen = dv.getUint32(pos); pos += 4; break;
        case 0xdc: need(2); container = dv.getUint16(pos); pos += 2; break;
        case 0xdd: need(4); container = dv.getUint32(pos); pos += 4; break;
        case 0xde: need(2); container = dv.getUint16(pos); containerIsMap = true; pos += 2; break;
        case 0xdf: need(4); container = dv.getUint32(pos); containerIsMap = true; pos += 4; break;
        default:
          // 0xc1 (never used), ext 0xc7–0xc9, fixext 0xd4–0xd8: refused.
          throw decodeError();
      }
    }
    if (pos > n) throw decodeError();
    if (expectKey && strLen < 0) throw decodeError(); // map keys must be strings
    if (strLen >= 0) {
      need(strLen);
      const s = buf.subarray(pos, pos + strLen);
      let ascii = true;
      for (let k = 0; k < s.length; k++) {
        if (s[k]! >= 0x80) {
          ascii = false;
          break;
        }
      }
      // ASCII is valid UTF-8; only non-ASCII strings need the (slower) strict decoder.
      if (!ascii) {
        try {
          td.decode(s);
        } catch {
          throw decodeError();
        }
      }
      // `__proto__` as a map key would set the prototype of the decoded object.
      if (expectKey && strLen === 9 && td.decode(s) === PROTO_KEY) throw decodeError();
      pos += strLen;
    }
    if (container >= 0) {
      if (remaining.length >= maxDepth) throw decodeError();
      const count = containerIsMap ? container * 2 : container;
      // Every value takes at least one byte: a count larger than what is left is a lie; refuse before looping.
      if (count > n - pos || count > maxItems) throw decodeError();
      remaining.push(count);
      isMap.push(containerIsMap);
      keyNext.push(true);
    }
  }
  if (pos !== n) throw decodeError();
}

/** Size check → {@link assertPlainMsgpack} → msgpackr decode. Throws ERR_ENVELOPE_TOO_LARGE or ERR_DECODE. */
export function decodeStrict(buf: Uint8Array, limits: DecodeLimits): unknown {
  if (!(buf instanceof Uint8Array)) throw sealwireError("ERR_DECODE", "expected bytes");
  if (buf.length > limits.maxBytes) {
    throw sealwireError("ERR_ENVELOPE_TOO_LARGE", `envelope of ${buf.length} bytes exceeds the ${limits.maxBytes}-byte limit`);
  }
  if (buf.length === 0) throw decodeError();
  assertPlainMsgpack(buf, limits.maxDepth ?? 8, limits.maxItems ?? 4096);
  try {
    return (limits.copyBytes ? copyingUnpackr : unpackr).unpack(buf);
  } catch {
    throw decodeError();
  }
}
