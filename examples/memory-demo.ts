/**
 * The in-process demo — three agents in one process over the in-memory
 * transport — showing what sealwire does and what it refuses:
 * 1. alice → bob: a signed, sealed, PII-tagged message is delivered, and bob answers a request;
 * 2. a relay on the path flips one byte of an envelope: bob refuses it (ERR_BAD_SIGNATURE) and never sees it;
 * 3. the same envelope replayed: refused (ERR_REPLAY);
 * 4. mallory is revoked: her envelopes are refused (ERR_REVOKED_PEER) and nobody can send to her.
 * Exits 0 when every step behaved as described, 1 otherwise.
 *
 * @module
 * @example
 * ```sh
 * npx tsx --conditions=source examples/memory-demo.ts
 * ```
 */
import { pathToFileURL } from "node:url";
import { createAgent, generateIdentity, SealwireError, transportSymbol, TrustStore, type Connection, type Transport } from "sealwire";
import { memory } from "sealwire/transports/memory";

/** Wraps a transport so a "relay" on the path can copy and tamper with frames (the demo's attacker). */
function tap(inner: Transport, onFrame: (frame: Uint8Array, conn: Connection) => void): Transport {
  const wrapConn = (conn: Connection): Connection => ({
    get remoteAddr() { return conn.remoteAddr; },
    get remotePeer() { return conn.remotePeer; },
    get maxFrameBytes() { return conn.maxFrameBytes; },
    get isOpen() { return conn.isOpen; },
    get closed() { return conn.closed; },
    send(frame) {
      onFrame(frame, conn);
      return conn.send(frame);
    },
    drain: (o) => conn.drain(o),
    close: (o) => conn.close(o),
    abort: (e) => conn.abort(e),
    [Symbol.asyncIterator]: () => conn[Symbol.asyncIterator](),
  });
  return {
    [transportSymbol]: true,
    kind: inner.kind,
    maxFrameBytes: inner.maxFrameBytes,
    listen: (addr, o) => inner.listen(addr, o),
    dial: async (addr, o) => wrapConn(await inner.dial(addr, o)),
    addressFor: (id) => inner.addressFor!(id),
  };
}

export async function main(log: (line: string) => void = console.log): Promise<boolean> {
  let ok = true;
  const check = (cond: boolean, what: string) => {
    log(`${cond ? "ok  " : "FAIL"} ${what}`);
    ok &&= cond;
  };
  const captured: { frame: Uint8Array; conn: Connection }[] = [];
  const net = tap(memory(), (frame, conn) => captured.push({ frame: Uint8Array.from(frame), conn }));

  const [alice, bob, mallory] = await Promise.all(["alice", "bob", "mallory"].map((id) => generateIdentity(id)));
  const trust = new TrustStore();
  trust.add(alice!.publicIdentity, { roles: ["researcher"] });
  trust.add(bob!.publicIdentity, { roles: ["writer"], clearances: ["pii:email"] });
  trust.add(mallory!.publicIdentity);
  log(`alice ${alice!.publicIdentity.fingerprint}`);
  log(`bob   ${bob!.publicIdentity.fingerprint}`);

  const refused: string[] = [];
  const a = await createAgent({ identity: alice!, trust, transport: net });
  const b = await createAgent({ identity: bob!, trust, transport: net, onError: (e) => refused.push(e.code) });
  const m = await createAgent({ identity: mallory!, trust, transport: net });

  // 1. Delivered, then request/reply.
  await a.send("bob", { text: "Draft ready; contact is ana@example.org" }, { tags: { pii: ["pii:email"] } });
  const inbox = b.messages();
  const first = (await inbox.next()).value!;
  log(`bob got from ${first.from}: ${JSON.stringify(first.data)} tags=${JSON.stringify(first.tags)}`);
  check(first.from === "alice" && first.tags.pii.includes("pii:email"), "signed, sealed, tagged message delivered");
  let otherMessages = 0;
  void (async () => {
    for await (const msg of b.messages()) {
      if (msg.type === "req") await msg.reply({ pong: msg.data });
      else otherMessages++;
    }
  })();
  const answer = await a.request("bob", { q: "ping" }, { timeoutMs: 2000 });
  check(JSON.stringify(answer.data) === JSON.stringify({ pong: { q: "ping" } }), `request answered: ${JSON.stringify(answer.data)}`);

  // 2. Tampering on the path. The relay resends a copy of alice's first envelope with one byte flipped.
  const original = captured[0]!;
  const flipped = Uint8Array.from(original.frame);
  flipped[flipped.length - 100]! ^= 0x01;
  original.conn.send(flipped);
  // 3. Replay of the untouched original.
  original.conn.send(original.frame);
  await until(() => refused.length >= 2);
  check(refused[0] === "ERR_BAD_SIGNATURE", `tampered envelope refused: ${refused[0]}`);
  check(refused[1] === "ERR_REPLAY", `replayed envelope refused: ${refused[1]}`);

  // 4. Revocation: bob's side refuses mallory's envelopes, and nobody can seal to her any more.
  trust.revoke("mallory");
  await m.send("bob", "let me in");
  await until(() => refused.length >= 3);
  check(refused[2] === "ERR_REVOKED_PEER", `revoked mallory's envelope refused: ${refused[2]}`);
  await a.send("mallory", "x").then(
    () => check(false, "sending to a revoked agent refused"),
    (e) => check(SealwireError.is(e, "ERR_REVOKED_PEER"), `nobody can send to mallory: ${(e as SealwireError).code}`),
  );
  await new Promise((r) => setTimeout(r, 50));
  check(otherMessages === 0, "bob's application saw none of the refused envelopes");

  await Promise.all([a.close(), b.close(), m.close()]);
  for (const id of [alice, bob, mallory]) id!.close();
  log(ok ? "demo: all steps behaved as expected" : "demo: SOMETHING WENT WRONG");
  return ok;
}

async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = (await main()) ? 0 : 1;
}
