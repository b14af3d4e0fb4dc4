// Wait / notify with unmodified serve() workflows of @upstash/workflow on Herald:
// the order example, a wait timeout, lookback notify, context.notify, trigger de-duplication.
//
//   HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> npm test

import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { client, currentHit, herald, heraldLog, rid, runEnded, startApp, trace, waitFor } from "./helpers.mjs";

const TEST = { timeout: 60_000 };

let app;
const done = new Map(); // runId -> { value } once the function passed its last step
const counters = new Map();
const bump = (key) => counters.set(key, (counters.get(key) ?? 0) + 1);
const count = (key) => counters.get(key) ?? 0;

let urls = {};
const gates = new Map(); // runId -> promise released by the test

before(async () => {
  app = await startApp();

  urls.order = app.workflow("/order", async (context) => {
    currentHit().contextXk = context.headers.get("x-k");
    const { orderId } = context.requestPayload;
    const order = await context.run("process", () => ({ orderId, processed: true }));
    const { eventData, timeout } = await context.waitForEvent("wait-payment", `order-${orderId}`, { timeout: "10m" });
    const confirmed = await context.run("confirm", () => ({ order, eventData, timeout }));
    done.set(context.workflowRunId, { value: confirmed });
    return confirmed;
  });

  urls.short = app.workflow("/short-timeout", async (context) => {
    const waited = await context.waitForEvent("never", `never-${context.requestPayload.tag}`, { timeout: "1s" });
    const value = await context.run("after", () => waited);
    done.set(context.workflowRunId, { value });
  });

  urls.lookback = app.workflow("/lookback", async (context) => {
    // The first step holds its delivery open until the test has sent the lookback notify,
    // so the notify certainly precedes the wait.
    await context.run("gate", async () => {
      await gates.get(context.workflowRunId);
      return "open";
    });
    const waited = await context.waitForEvent("late-wait", context.requestPayload.eventId, { timeout: "10m" });
    const value = await context.run("after", () => waited);
    done.set(context.workflowRunId, { value });
  });

  urls.waiter = app.workflow("/waiter", async (context) => {
    const waited = await context.waitForEvent("wait", context.requestPayload.eventId, { timeout: "10m" });
    const value = await context.run("after", () => waited);
    done.set(context.workflowRunId, { value });
  });

  urls.notifier = app.workflow("/notifier", async (context) => {
    const { eventId } = context.requestPayload;
    const sent = await context.notify("notify", eventId, { from: "notifier" });
    const value = await context.run("after", () => ({ eventId: sent.eventId, notified: sent.notifyResponse.length }));
    done.set(context.workflowRunId, { value });
  });

  urls.dedup = app.workflow("/dedup", async (context) => {
    const first = await context.run("first", () => {
      bump(`dedup-first:${context.workflowRunId}`);
      return context.requestPayload;
    });
    done.set(context.workflowRunId, { value: first });
  });

  urls.quick = app.workflow("/quick", async (context) => {
    const value = await context.run("only", () => "quick");
    done.set(context.workflowRunId, { value });
  });
});

after(async () => {
  await app?.close();
});

/** Waits until the run's function got past its last step and the SDK's run-end DELETE succeeded. */
async function completion(runId, timeoutMs = 30_000) {
  await waitFor(() => done.has(runId) && runEnded(runId), {
    what: `run ${runId} to complete`,
    timeoutMs,
    describe: () => trace(app, runId),
  });
  return done.get(runId).value;
}

test("order example: run, waitForEvent, external notify, run; trigger header on every hit", TEST, async () => {
  const orderId = rid();
  const eventId = `order-${orderId}`;
  const { workflowRunId: runId } = await client.trigger({ url: urls.order, body: { orderId }, headers: { "x-k": "v" } });

  const waiters = await waitFor(
    async () => {
      const list = await client.getWaiters({ eventId });
      return list.length > 0 && list;
    },
    { what: `a waiter on ${eventId}`, describe: () => trace(app, runId) },
  );
  assert.equal(waiters.length, 1);

  const notified = await client.notify({ eventId, eventData: { paid: true } });
  assert.equal(notified.length, 1, `notify reached one waiter: ${JSON.stringify(notified)}`);

  const result = await completion(runId);
  assert.deepEqual(result, { order: { orderId, processed: true }, eventData: { paid: true }, timeout: false });
  const hits = app.hitsOn("/order", runId);
  assert.equal(hits.length, 4, `4 hits (process, wait, confirm, end)\n${trace(app, runId)}`);
  assert.deepEqual(hits.map((h) => h.contextXk), ["v", "v", "v", "v"], "x-k in context.headers on every hit");
  assert.ok(hits.every((h) => h.status === 200), `every hit answered 200\n${trace(app, runId)}`);
});

test("waitForEvent with a 1 s timeout resumes with timeout: true", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.short, body: { tag: rid() } });
  const result = await completion(runId);
  assert.equal(result.timeout, true, JSON.stringify(result));
  assert.equal(result.eventData, undefined);
});

test("lookback: a run-scoped notify sent before the wait exists still resumes the run", TEST, async () => {
  const eventId = rid("lookback");
  const runId = `wfr_${rid("lb")}`;
  let open;
  gates.set(runId, new Promise((resolve) => (open = resolve)));
  try {
    await client.trigger({ url: urls.lookback, body: { eventId }, workflowRunId: runId.slice(4) });
    const notified = await herald("POST", `/v2/notify/${runId}/${eventId}`, {
      body: JSON.stringify({ early: true }),
      headers: { "content-type": "application/json" },
    });
    assert.ok(notified.status >= 200 && notified.status < 300, `lookback notify: ${notified.status} ${notified.text}`);
  } finally {
    open();
  }
  const result = await completion(runId);
  assert.deepEqual(result, { timeout: false, eventData: { early: true } });
});

test("context.notify from a second workflow resumes a waiting one", TEST, async () => {
  const eventId = rid("between-runs");
  const { workflowRunId: waiterRun } = await client.trigger({ url: urls.waiter, body: { eventId } });
  await waitFor(async () => (await client.getWaiters({ eventId })).length > 0, {
    what: `a waiter on ${eventId}`,
    describe: () => trace(app, waiterRun),
  });
  const { workflowRunId: notifierRun } = await client.trigger({ url: urls.notifier, body: { eventId } });
  const notifier = await completion(notifierRun);
  assert.deepEqual(notifier, { eventId, notified: 1 });
  const waiter = await completion(waiterRun);
  assert.deepEqual(waiter, { timeout: false, eventData: { from: "notifier" } });
});

test("trigger de-duplication: the same workflowRunId twice makes one run", TEST, async () => {
  const id = rid("dedup");
  const runId = `wfr_${id}`;
  await client.trigger({ url: urls.dedup, body: { n: 1 }, workflowRunId: id });
  await client.trigger({ url: urls.dedup, body: { n: 2 }, workflowRunId: id });
  const batches = heraldLog.filter((e) => e.method === "POST" && e.path === "/v2/batch" && e.requestBody?.includes(runId));
  assert.equal(batches.length, 2);
  await waitFor(() => batches[1].responseText !== undefined, { what: "the second trigger's reply" });
  assert.ok(batches[1].status >= 200 && batches[1].status < 300, `second trigger: ${batches[1].status} ${batches[1].responseText}`);
  assert.equal(JSON.parse(batches[1].responseText)[0]?.deduplicated, true, `second trigger reply: ${batches[1].responseText}`);

  const result = await completion(runId);
  assert.deepEqual(result, { n: 1 });
  // A later run on the same Herald completing means anything queued for the duplicate
  // would have been delivered by now.
  const { workflowRunId: quick } = await client.trigger({ url: urls.quick });
  await completion(quick);
  assert.equal(count(`dedup-first:${runId}`), 1, "the first step ran once");
  assert.equal(app.hitsOn("/dedup", runId).length, 2, trace(app, runId));
});
