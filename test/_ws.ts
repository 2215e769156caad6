/**
 * Raw WebSocket client pieces shared by the listener tests (websocket, flood-eviction): an HTTP upgrade request on
 * a connected socket, and hand-built client frames that may lie about their length or skip the mask.
 *
 * @module
 * @example
 * ```ts
 * const head = await sendUpgrade(socket, port, { path: "/other" });
 * socket.write(clientFrame(0x2, new Uint8Array(0), { declaredLength: 2 ** 40 }));
 * ```
 */
import type { Socket } from "node:net";
import { within } from "./transport.compliance.js";

/** Writes an HTTP upgrade request on `socket` and resolves with the response head; the socket is then ready for frames. */
export async function sendUpgrade(socket: Socket, port: number, opts: { path?: string; headers?: string; version?: number } = {}): Promise<string> {
  socket.write(
    `GET ${opts.path ?? "/"} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: ${opts.version ?? 13}\r\n${opts.headers ?? ""}\r\n`,
  );
  return within(
    new Promise<string>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const onData = (d: Buffer): void => {
        buf = Buffer.concat([buf, d]);
        const end = buf.indexOf("\r\n\r\n");
        if (end >= 0) {
          socket.removeListener("data", onData);
          const rest = buf.subarray(end + 4);
          if (rest.length > 0) socket.unshift(rest);
          resolve(buf.subarray(0, end).toString("latin1"));
        }
      };
      socket.on("data", onData);
      socket.once("close", () => reject(new Error("closed before an HTTP response")));
    }),
    "the HTTP response",
  );
}

/** Builds one client frame (RFC 6455 §5.2), masked unless told otherwise; `declaredLength` lies about the size. */
export function clientFrame(opcode: number, payload: Uint8Array, o: { mask?: boolean; declaredLength?: number } = {}): Buffer {
  const mask = o.mask ?? true;
  const len = o.declaredLength ?? payload.length;
  const parts: number[] = [0x80 | opcode];
  const m = mask ? 0x80 : 0;
  if (len < 126) parts.push(m | len);
  else if (len < 65536) parts.push(m | 126, len >>> 8, len & 0xff);
  else {
    parts.push(m | 127);
    const big = BigInt(len);
    for (let i = 7; i >= 0; i--) parts.push(Number((big >> BigInt(i * 8)) & 0xffn));
  }
  const key = [0x12, 0x34, 0x56, 0x78];
  if (mask) parts.push(...key);
  const body = Buffer.from(payload);
  if (mask) for (let i = 0; i < body.length; i++) body[i]! ^= key[i & 3]!;
  return Buffer.concat([Buffer.from(parts), body]);
}
