// Verifies Herald's `Upstash-Signature` with the official, pinned `@upstash/qstash`
// `Receiver`, before and after a signing-key rotation.
//
//   HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> npm test
//
// Herald must allow deliveries to 127.0.0.1 (herald dev does). This test rotates the
// tenant's signing keys.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { randomBytes } from "node:crypto";

import { Receiver } from "@upstash/qstash";

// Never let the Receiver switch to Upstash's development keys.
delete process.env.QSTASH_DEV;

const baseUrl = (process.env.HERALD_URL ?? "").replace(/\/+$/, "");
const token = process.env.HERALD_TOKEN ?? "";
if (!baseUrl || !token) {
  throw new Error("set HERALD_URL and HERALD_TOKEN (a running Herald and a tenant token)");
}

async function herald(method, path, body) {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}` },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

/** Recording receiver: every request's path, headers and raw body bytes. */
let server;
let receiverUrl;
const received = [];

before(async () => {
  server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      received.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200).end("ok");
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${server.address().port}`;
});

after(() => server?.close());

/** Registers a waiter, notifies it with `body`, and returns the delivery it receives. */
async function deliver(body) {
  const event = `sig-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
  const url = `${receiverUrl}/hook/${event}`;
  await herald("POST", `/v2/wait/${event}`, JSON.stringify({ url }));
  const notified = await herald("POST", `/v2/notify/${event}`, body);
  assert.equal(notified.length, 1);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const got = received.find((r) => r.path === `/hook/${event}`);
    if (got) return { ...got, url };
    assert.ok(Date.now() < deadline, `no delivery for ${event} within 10 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function verifies(receiver, delivery, overrides = {}) {
  try {
    return await receiver.verify({
      signature: delivery.headers["upstash-signature"],
      body: delivery.body.toString("utf8"),
      url: delivery.url,
      ...overrides,
    });
  } catch {
    return false;
  }
}

const BODY = JSON.stringify({ order: 42, note: "grüße ✓ — signed" });

test("signatures verify with the tenant's keys, before and after a rotation", async () => {
  const before = await herald("GET", "/v2/keys");
  assert.match(before.current, /^sig_/);
  const oldReceiver = new Receiver({
    currentSigningKey: before.current,
    nextSigningKey: before.next,
    devMode: false,
  });

  const first = await deliver(BODY);
  assert.equal(first.body.toString("utf8"), BODY, "the exact bytes arrive");
  assert.ok(first.headers["upstash-signature"], "the delivery is signed");
  assert.equal(await verifies(oldReceiver, first), true, "verifies with the current key");
  assert.equal(await verifies(oldReceiver, first, { body: `${BODY} ` }), false, "a changed body fails");
  assert.equal(
    await verifies(oldReceiver, first, { url: `${first.url}-elsewhere` }),
    false,
    "another url fails",
  );
  const strangers = new Receiver({
    currentSigningKey: `sig_${randomBytes(12).toString("hex")}`,
    nextSigningKey: `sig_${randomBytes(12).toString("hex")}`,
    devMode: false,
  });
  assert.equal(await verifies(strangers, first), false, "other keys fail");

  const rotated = await herald("POST", "/v2/keys/rotate");
  assert.equal(rotated.current, before.next, "rotation promotes the next key");
  assert.notEqual(rotated.next, before.next);
  const newReceiver = new Receiver({
    currentSigningKey: rotated.current,
    nextSigningKey: rotated.next,
    devMode: false,
  });
  // Workers cache a tenant's key for up to 5 s: wait until deliveries use the new one.
  let second;
  const deadline = Date.now() + 20_000;
  for (;;) {
    second = await deliver(BODY);
    const onlyOld = new Receiver({ currentSigningKey: before.current, nextSigningKey: before.current, devMode: false });
    if (!(await verifies(onlyOld, second))) break;
    assert.ok(Date.now() < deadline, "deliveries still signed with the old current key after 20 s");
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(await verifies(newReceiver, second), true, "verifies with the rotated keys");
  assert.equal(
    await verifies(oldReceiver, second),
    true,
    "a receiver still configured with the old keys verifies through its next key",
  );
  assert.equal(await verifies(newReceiver, second, { body: "tampered" }), false);
});
