// Compatibility suite: drives the official, pinned `@upstash/workflow` Client
// against a running Herald.
//
//   HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> npm test
//
// Waiters are registered with raw `POST /v2/wait/{eventId}` requests (what
// `context.waitForEvent` sends, without a `step`), so Herald delivers the raw
// notify body to `url`. A recording HTTP receiver started by this file plays
// the part of the waiting endpoint.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { Client } from "@upstash/workflow";

import {
  headerValues,
  postWait,
  readConfig,
  recordFetchTo,
  registerWait,
  startReceiver,
  uniqueId,
  uniqueRunId,
  waitFor,
} from "./helpers.mjs";

// Never let the SDK swap Herald for Upstash's local dev server.
delete process.env.QSTASH_DEV;
delete process.env.QSTASH_DEV_PORT;

const config = readConfig();

const TEST_TIMEOUT_MS = 30_000;
const WAIT_TIMEOUT = "10m";
const WAIT_TIMEOUT_SECONDS = 600;
const DEADLINE_SLACK_SECONDS = 5;

// What Node's fetch (and therefore the SDK) sends for a string body.
const TEXT_PLAIN = "text/plain;charset=UTF-8";

/** A Client pointed at Herald. devMode:false overrides QSTASH_DEV; retry:false surfaces network errors at once. */
function makeClient(token = config.token) {
  return new Client({ baseUrl: config.baseUrl, token, devMode: false, retry: false });
}

let receiver;
let sdkWire;
let client;

before(async () => {
  try {
    await fetch(`${config.baseUrl}/`, { signal: AbortSignal.timeout(5_000) });
  } catch (error) {
    const reason = error?.cause?.message ?? error?.message ?? String(error);
    throw new Error(`Herald is not reachable at HERALD_URL=${config.baseUrl}: ${reason}`);
  }
  receiver = await startReceiver(config.receiverHost);
  sdkWire = recordFetchTo(config.baseUrl);
  client = makeClient();
});

after(async () => {
  sdkWire?.restore();
  await receiver?.close();
});

// ---------------------------------------------------------------------------
// helpers bound to this file's receiver / client

function deliveryPath(eventId, name) {
  return `/deliver/${eventId}/${name}`;
}

function deliveryUrl(eventId, name) {
  return `${receiver.baseUrl}${deliveryPath(eventId, name)}`;
}

/** The requests the SDK itself put on the wire for `method path`. */
function sdkRequests(method, path) {
  return sdkWire.log.filter((r) => r.method === method && r.path === path);
}

/** Waits (bounded, polling) until `path` has received `count` requests, then returns them. */
async function awaitDeliveries(path, count = 1) {
  return waitFor(
    () => {
      const got = receiver.at(path);
      return got.length >= count ? got : null;
    },
    {
      what: `${count} delivery(ies) to ${path}`,
      describe: () => receiver.describe(path.slice(0, path.lastIndexOf("/") + 1)),
    },
  );
}

function assertDeadline(deadline, windowStart, windowEnd, label) {
  assert.equal(typeof deadline, "number", `${label}: deadline must be a number, got ${JSON.stringify(deadline)}`);
  assert.ok(Number.isInteger(deadline), `${label}: deadline must be whole unix seconds, got ${deadline}`);
  const lo = windowStart + WAIT_TIMEOUT_SECONDS - DEADLINE_SLACK_SECONDS;
  const hi = windowEnd + WAIT_TIMEOUT_SECONDS + DEADLINE_SLACK_SECONDS;
  assert.ok(
    deadline >= lo && deadline <= hi,
    `${label}: deadline ${deadline} is outside [${lo}, ${hi}] (now + ${WAIT_TIMEOUT} in unix seconds)`,
  );
}

function assertHeaderMap(map, label) {
  assert.ok(map !== null && typeof map === "object" && !Array.isArray(map), `${label} must be an object, got ${JSON.stringify(map)}`);
  for (const [key, values] of Object.entries(map)) {
    assert.ok(
      Array.isArray(values) && values.every((v) => typeof v === "string"),
      `${label}[${JSON.stringify(key)}] must be an array of strings, got ${JSON.stringify(values)}`,
    );
  }
}

/** Checks one NotifyResponse entry; returns it for further checks. */
function assertNotifyEntry(entry, { url, runId }) {
  assert.ok(entry !== null && typeof entry === "object", `notify entry must be an object, got ${JSON.stringify(entry)}`);
  assert.equal(typeof entry.messageId, "string", `messageId must be a string in ${JSON.stringify(entry)}`);
  assert.match(entry.messageId, /^msg_./, `messageId must start with msg_ in ${JSON.stringify(entry)}`);
  assert.equal(entry.error, "", `error must be "" in ${JSON.stringify(entry)}`);
  assert.equal(entry.deduplicated, false, `deduplicated must be false in ${JSON.stringify(entry)}`);
  assert.ok(entry.waiter && typeof entry.waiter === "object", `waiter must be an object in ${JSON.stringify(entry)}`);
  assert.equal(entry.waiter.url, url);
  if (runId !== undefined) {
    assert.equal(entry.workflowRunId, runId, `workflowRunId must be the waiter's run id in ${JSON.stringify(entry)}`);
  }
  return entry;
}

/** Checks that `delivery` is a plain-waiter delivery of exactly `expectedBody`. */
function assertDelivery(delivery, { expectedBody, contentType, messageId }) {
  assert.equal(delivery.method, "POST");
  assert.ok(
    delivery.body.equals(Buffer.from(expectedBody)),
    `delivered body ${JSON.stringify(delivery.body.toString("utf8"))} (${delivery.body.toString("hex")}) != expected ${JSON.stringify(expectedBody.toString())}`,
  );
  if (contentType !== undefined) {
    assert.equal(delivery.headers["content-type"], contentType, "delivery must carry the notify request's Content-Type");
  }
  if (messageId !== undefined) {
    assert.equal(delivery.headers["upstash-message-id"], messageId, "Upstash-Message-Id must equal the notify response's messageId");
  } else {
    assert.ok(delivery.headers["upstash-message-id"], "delivery must carry an Upstash-Message-Id header");
  }
  assert.equal(delivery.headers["upstash-retried"], "0", "first delivery attempt must carry Upstash-Retried: 0");
}

// ---------------------------------------------------------------------------
// 1. unknown event

test("getWaiters on an unknown event returns []", { timeout: TEST_TIMEOUT_MS }, async () => {
  const eventId = uniqueId("unknown");
  const waiters = await client.getWaiters({ eventId });
  assert.deepEqual(waiters, []);

  const sent = sdkRequests("GET", `/v2/waiters/${eventId}`);
  assert.equal(sent.length, 1, "the SDK sends GET /v2/waiters/{eventId}");
  assert.equal(sent[0].headers.authorization, `Bearer ${config.token}`);
});

// ---------------------------------------------------------------------------
// 2 + 3. two plain waiters, broadcast notify with string data

describe("broadcast notify to two plain waiters", () => {
  const eventId = uniqueId("broadcast");
  let urlA, urlB, pathA, pathB, timeoutUrlA;
  let registeredFrom, registeredUntil; // unix seconds around the two registrations
  let notifyResult;

  test("getWaiters lists both registered waiters", { timeout: TEST_TIMEOUT_MS }, async () => {
    pathA = deliveryPath(eventId, "a");
    pathB = deliveryPath(eventId, "b");
    urlA = deliveryUrl(eventId, "a");
    urlB = deliveryUrl(eventId, "b");
    timeoutUrlA = `${receiver.baseUrl}/timeout/${eventId}/a`;

    registeredFrom = Math.floor(Date.now() / 1000);
    await registerWait(config, {
      eventId,
      url: urlA,
      timeout: WAIT_TIMEOUT,
      timeoutUrl: timeoutUrlA,
      timeoutHeaders: { "X-Herald-Sdk-Test": ["a"] },
    });
    await registerWait(config, { eventId, url: urlB, timeout: WAIT_TIMEOUT });
    registeredUntil = Math.ceil(Date.now() / 1000);

    const waiters = await client.getWaiters({ eventId });
    assert.ok(Array.isArray(waiters), `getWaiters must return an array, got ${JSON.stringify(waiters)}`);
    assert.equal(waiters.length, 2, `expected 2 waiters, got ${JSON.stringify(waiters)}`);
    assert.deepEqual(waiters.map((w) => w.url).sort(), [urlA, urlB].sort());

    for (const waiter of waiters) {
      assertDeadline(waiter.deadline, registeredFrom, registeredUntil, `waiter ${waiter.url}`);
      assertHeaderMap(waiter.headers, `waiter ${waiter.url} headers`);
    }
    const waiterA = waiters.find((w) => w.url === urlA);
    assert.equal(waiterA.timeoutUrl, timeoutUrlA);
    assertHeaderMap(waiterA.timeoutHeaders, "waiter a timeoutHeaders");
    assert.deepEqual(headerValues(waiterA.timeoutHeaders, "X-Herald-Sdk-Test"), ["a"]);

    assert.equal(receiver.at(pathA).length + receiver.at(pathB).length, 0, "nothing may be delivered before notify");
  });

  test('notify({eventData: "hello"}) answers one entry per waiter and delivers the raw bytes', { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(registeredUntil, "depends on the previous test");
    notifyResult = await client.notify({ eventId, eventData: "hello" });

    // What the SDK really sent.
    const sent = sdkRequests("POST", `/v2/notify/${eventId}`);
    assert.equal(sent.length, 1, "the SDK sends POST /v2/notify/{eventId}");
    assert.equal(sent[0].body, "hello");
    assert.equal(sent[0].headers["content-type"], TEXT_PLAIN);
    assert.equal(sent[0].headers.authorization, `Bearer ${config.token}`);

    // What Herald answered.
    assert.ok(Array.isArray(notifyResult), `notify must return an array, got ${JSON.stringify(notifyResult)}`);
    assert.equal(notifyResult.length, 2, `expected 2 entries, got ${JSON.stringify(notifyResult)}`);
    assert.deepEqual(notifyResult.map((e) => e.waiter?.url).sort(), [urlA, urlB].sort());
    const entryA = assertNotifyEntry(notifyResult.find((e) => e.waiter.url === urlA), { url: urlA });
    const entryB = assertNotifyEntry(notifyResult.find((e) => e.waiter.url === urlB), { url: urlB });
    assert.notEqual(entryA.messageId, entryB.messageId, "each waiter gets its own message");
    for (const entry of [entryA, entryB]) {
      assertDeadline(entry.waiter.deadline, registeredFrom, registeredUntil, `notified waiter ${entry.waiter.url}`);
    }
    assert.equal(entryA.waiter.timeoutUrl, timeoutUrlA);

    // What the waiting endpoints received.
    const [deliveryA] = await awaitDeliveries(pathA);
    const [deliveryB] = await awaitDeliveries(pathB);
    assertDelivery(deliveryA, { expectedBody: "hello", contentType: sent[0].headers["content-type"], messageId: entryA.messageId });
    assertDelivery(deliveryB, { expectedBody: "hello", contentType: sent[0].headers["content-type"], messageId: entryB.messageId });
  });

  test("notified waiters are gone: getWaiters → [] and a second notify → []", { timeout: TEST_TIMEOUT_MS }, async () => {
    assert.ok(notifyResult, "depends on the previous test");
    assert.deepEqual(await client.getWaiters({ eventId }), []);
    assert.deepEqual(await client.notify({ eventId, eventData: "again" }), []);

    // Exactly one delivery per waiter, and no timeout call.
    assert.equal(receiver.at(pathA).length, 1, receiver.describe(`/deliver/${eventId}/`));
    assert.equal(receiver.at(pathB).length, 1, receiver.describe(`/deliver/${eventId}/`));
    assert.equal(receiver.at(`/timeout/${eventId}/a`).length, 0, receiver.describe(`/timeout/${eventId}/`));
  });
});

// ---------------------------------------------------------------------------
// 4. body fidelity for the kinds of eventData the SDK accepts

describe("notify delivers the SDK's request body unchanged", () => {
  const cases = [
    { name: "number-like string", eventData: "123", expectedBody: "123", contentType: TEXT_PLAIN },
    { name: "object", eventData: { orderId: 42, ok: true }, expectedBody: '{"orderId":42,"ok":true}', contentType: TEXT_PLAIN },
    { name: "non-ASCII string", eventData: "héllo ✓ 🚀", expectedBody: "héllo ✓ 🚀", contentType: TEXT_PLAIN },
    // JSON.stringify(undefined) is undefined: the SDK sends no body and no content-type.
    { name: "no eventData", eventData: undefined, expectedBody: "", contentType: undefined },
  ];

  for (const c of cases) {
    test(`${c.name}: ${JSON.stringify(c.eventData) ?? "undefined"}`, { timeout: TEST_TIMEOUT_MS }, async () => {
      const eventId = uniqueId("body");
      const path = deliveryPath(eventId, "w");
      const url = deliveryUrl(eventId, "w");
      await registerWait(config, { eventId, url, timeout: WAIT_TIMEOUT });

      const result = await client.notify({ eventId, eventData: c.eventData });

      const sent = sdkRequests("POST", `/v2/notify/${eventId}`);
      assert.equal(sent.length, 1);
      assert.equal(sent[0].body ?? "", c.expectedBody, "what the SDK put on the wire");
      assert.equal(sent[0].headers["content-type"], c.contentType, "content-type the SDK (fetch) sent");

      assert.ok(Array.isArray(result) && result.length === 1, `expected 1 entry, got ${JSON.stringify(result)}`);
      const entry = assertNotifyEntry(result[0], { url });

      const [delivery] = await awaitDeliveries(path);
      assertDelivery(delivery, { expectedBody: c.expectedBody, contentType: c.contentType, messageId: entry.messageId });
      assert.deepEqual(await client.getWaiters({ eventId }), []);
      assert.equal(receiver.at(path).length, 1, receiver.describe(`/deliver/${eventId}/`));
    });
  }
});

// ---------------------------------------------------------------------------
// 5. lookback: notify with workflowRunId

describe("lookback notify (workflowRunId)", () => {
  test("notify before wait is saved and delivered when the run starts waiting", { timeout: TEST_TIMEOUT_MS }, async () => {
    const eventId = uniqueId("lookback-early");
    const runId = uniqueRunId();
    const path = deliveryPath(eventId, "w");
    const url = deliveryUrl(eventId, "w");

    const result = await client.notify({ eventId, eventData: { paid: true }, workflowRunId: runId });
    assert.deepEqual(result, [], "nobody waits yet: the notification is saved and [] returned");

    const sent = sdkRequests("POST", `/v2/notify/${runId}/${eventId}`);
    assert.equal(sent.length, 1, "the SDK sends POST /v2/notify/{workflowRunId}/{eventId}");
    assert.equal(sent[0].body, '{"paid":true}');

    assert.deepEqual(await client.getWaiters({ eventId }), [], "a saved notification is not a waiter");
    assert.equal(receiver.at(path).length, 0);

    await registerWait(config, { eventId, url, timeout: WAIT_TIMEOUT, runId });

    const [delivery] = await awaitDeliveries(path);
    assertDelivery(delivery, { expectedBody: '{"paid":true}', contentType: sent[0].headers["content-type"] });

    assert.deepEqual(await client.getWaiters({ eventId }), [], "the consuming wait leaves no waiter behind");
    assert.deepEqual(await client.notify({ eventId, eventData: "late" }), [], "a later broadcast finds nobody");
    assert.equal(receiver.at(path).length, 1, receiver.describe(`/deliver/${eventId}/`));
  });

  test("saved notification is consumed by a wait that gives the run id in the body (workflowRunId)", { timeout: TEST_TIMEOUT_MS }, async () => {
    const eventId = uniqueId("lookback-body");
    const runId = uniqueRunId();
    const path = deliveryPath(eventId, "w");
    const url = deliveryUrl(eventId, "w");

    assert.deepEqual(await client.notify({ eventId, eventData: "ready", workflowRunId: runId }), []);
    await registerWait(config, { eventId, url, timeout: WAIT_TIMEOUT, runId, runIdInBody: true });

    const [delivery] = await awaitDeliveries(path);
    assertDelivery(delivery, { expectedBody: "ready", contentType: TEXT_PLAIN });
    assert.deepEqual(await client.getWaiters({ eventId }), []);
  });

  test("wait before notify: the run's waiter is notified and reported with its workflowRunId", { timeout: TEST_TIMEOUT_MS }, async () => {
    const eventId = uniqueId("lookback-late");
    const runId = uniqueRunId();
    const path = deliveryPath(eventId, "w");
    const url = deliveryUrl(eventId, "w");

    await registerWait(config, { eventId, url, timeout: WAIT_TIMEOUT, runId });
    const waiters = await client.getWaiters({ eventId });
    assert.equal(waiters.length, 1, `expected 1 waiter, got ${JSON.stringify(waiters)}`);
    assert.equal(waiters[0].url, url);

    const result = await client.notify({ eventId, eventData: { paid: true }, workflowRunId: runId });
    assert.ok(Array.isArray(result) && result.length === 1, `expected 1 entry, got ${JSON.stringify(result)}`);
    const entry = assertNotifyEntry(result[0], { url, runId });

    const [delivery] = await awaitDeliveries(path);
    assertDelivery(delivery, { expectedBody: '{"paid":true}', contentType: TEXT_PLAIN, messageId: entry.messageId });

    assert.deepEqual(await client.getWaiters({ eventId }), []);
    assert.equal(receiver.at(path).length, 1, receiver.describe(`/deliver/${eventId}/`));
  });

  test("lookback notify reaches only its own run; broadcast reaches the rest", { timeout: TEST_TIMEOUT_MS }, async () => {
    const eventId = uniqueId("lookback-scope");
    const runMine = uniqueRunId();
    const runOther = uniqueRunId();
    const pathMine = deliveryPath(eventId, "mine");
    const pathOther = deliveryPath(eventId, "other");
    const urlMine = deliveryUrl(eventId, "mine");
    const urlOther = deliveryUrl(eventId, "other");

    await registerWait(config, { eventId, url: urlMine, timeout: WAIT_TIMEOUT, runId: runMine });
    await registerWait(config, { eventId, url: urlOther, timeout: WAIT_TIMEOUT, runId: runOther });

    const targeted = await client.notify({ eventId, eventData: "for-mine", workflowRunId: runMine });
    assert.ok(Array.isArray(targeted) && targeted.length === 1, `expected 1 entry, got ${JSON.stringify(targeted)}`);
    const mine = assertNotifyEntry(targeted[0], { url: urlMine, runId: runMine });

    const remaining = await client.getWaiters({ eventId });
    assert.deepEqual(remaining.map((w) => w.url), [urlOther], "the other run's waiter must still wait");

    const broadcast = await client.notify({ eventId, eventData: "for-everyone" });
    assert.ok(Array.isArray(broadcast) && broadcast.length === 1, `expected 1 entry, got ${JSON.stringify(broadcast)}`);
    const other = assertNotifyEntry(broadcast[0], { url: urlOther, runId: runOther });

    const [deliveryMine] = await awaitDeliveries(pathMine);
    const [deliveryOther] = await awaitDeliveries(pathOther);
    assertDelivery(deliveryMine, { expectedBody: "for-mine", contentType: TEXT_PLAIN, messageId: mine.messageId });
    assertDelivery(deliveryOther, { expectedBody: "for-everyone", contentType: TEXT_PLAIN, messageId: other.messageId });
    assert.deepEqual(await client.getWaiters({ eventId }), []);
    assert.equal(receiver.at(pathMine).length, 1, receiver.describe(`/deliver/${eventId}/`));
    assert.equal(receiver.at(pathOther).length, 1, receiver.describe(`/deliver/${eventId}/`));
  });
});

// ---------------------------------------------------------------------------
// 6. authentication

describe("authentication", () => {
  const isUnauthorized = (error) => {
    assert.equal(error?.name, "QstashError", `expected a QstashError, got ${error?.stack ?? error}`);
    assert.equal(error.status, 401, `expected status 401, got ${error.status} (${error.message})`);
    return true;
  };

  test("a wrong token is rejected with 401 and does not touch the tenant's waiters", { timeout: TEST_TIMEOUT_MS }, async () => {
    const eventId = uniqueId("auth");
    const path = deliveryPath(eventId, "w");
    const url = deliveryUrl(eventId, "w");
    await registerWait(config, { eventId, url, timeout: WAIT_TIMEOUT });

    const intruder = makeClient(`wrong-${uniqueRunId()}`);
    await assert.rejects(intruder.notify({ eventId, eventData: "nope" }), isUnauthorized);
    await assert.rejects(intruder.notify({ eventId, eventData: "nope", workflowRunId: uniqueRunId() }), isUnauthorized);
    await assert.rejects(intruder.getWaiters({ eventId }), isUnauthorized);

    const waiters = await client.getWaiters({ eventId });
    assert.deepEqual(waiters.map((w) => w.url), [url], "the waiter must survive the rejected notify");
    assert.equal(receiver.at(path).length, 0);

    // Clean up through the legitimate path.
    const result = await client.notify({ eventId, eventData: "cleanup" });
    assert.equal(result.length, 1);
    await awaitDeliveries(path);
  });

  test("POST /v2/wait with a wrong or missing token is rejected with 401", { timeout: TEST_TIMEOUT_MS }, async () => {
    const eventId = uniqueId("auth-wait");
    const url = deliveryUrl(eventId, "w");

    const wrong = await postWait(config, { eventId, url, authorization: `Bearer wrong-${uniqueRunId()}` });
    assert.equal(wrong.status, 401, `wrong token: ${wrong.status} ${wrong.text}`);
    const missing = await postWait(config, { eventId, url, authorization: null });
    assert.equal(missing.status, 401, `missing token: ${missing.status} ${missing.text}`);

    assert.deepEqual(await client.getWaiters({ eventId }), [], "rejected waits must not register anything");
  });
});
