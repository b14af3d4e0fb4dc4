// Run-level flows of unmodified @upstash/workflow workflows on Herald: invoke, webhooks,
// failureFunction, Client.cancel and context.cancel.
//
//   HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> npm test

import { after, before, test } from "node:test";
import assert from "node:assert/strict";

// createWorkflow and serveMany come with the platform adapters only; the Next.js App
// Router one is a plain (Request) => Promise<Response> handler and needs no framework.
import { createWorkflow, serveMany } from "@upstash/workflow/nextjs";

import { client, herald, heraldCalls, rid, runEnded, startApp, trace, waitFor } from "./helpers.mjs";

const TEST = { timeout: 60_000 };

let app;
const done = new Map(); // runId -> { value }
const failures = new Map(); // runId -> what failureFunction got
const counters = new Map();
const bump = (key) => counters.set(key, (counters.get(key) ?? 0) + 1);
const count = (key) => counters.get(key) ?? 0;
const webhooks = new Map(); // runId -> webhook
const urls = {};

before(async () => {
  app = await startApp();

  // --- invoke: both workflows served by one serveMany under /many/<workflowId>
  const child = createWorkflow(async (context) => {
    const got = await context.run("child-step", () => ({
      payload: context.requestPayload,
      header: context.headers.get("x-invoke"),
    }));
    return got;
  });
  const parent = createWorkflow(async (context) => {
    const invoked = await context.invoke("invoke-child", {
      workflow: child,
      body: { n: 7 },
      headers: { "x-invoke": "from-parent" },
    });
    const value = await context.run("record", () => invoked);
    done.set(context.workflowRunId, { value });
  });
  const many = serveMany({ parent, child });
  app.route("/many/*", many.POST);
  urls.parent = `${app.baseUrl}/many/parent`;

  // --- webhooks
  urls.webhook = app.workflow("/webhook", async (context) => {
    const webhook = await context.createWebhook("hook");
    webhooks.set(context.workflowRunId, webhook);
    const { timeout, request } = await context.waitForWebhook("wait-hook", webhook, "30s");
    const value = await context.run("inspect", async () => ({
      timeout,
      url: request?.url,
      method: request?.method,
      header: request?.headers.get("x-test-header"),
      body: request ? await request.json() : undefined,
    }));
    done.set(context.workflowRunId, { value: { ...value, webhookUrl: webhook.webhookUrl } });
  });
  urls.webhookTimeout = app.workflow("/webhook-timeout", async (context) => {
    const webhook = await context.createWebhook("hook");
    const result = await context.waitForWebhook("wait-hook", webhook, "1s");
    const value = await context.run("inspect", () => ({ timeout: result.timeout, hasRequest: result.request !== undefined }));
    done.set(context.workflowRunId, { value });
  });

  // --- failureFunction
  urls.failing = app.workflow(
    "/failing",
    async (context) => {
      await context.run("boom", () => {
        throw new Error("my-error");
      });
    },
    {
      failureFunction: async ({ context, failStatus, failResponse }) => {
        failures.set(context.workflowRunId, { failStatus, failResponse });
        return "handled";
      },
    },
  );

  // --- cancel
  urls.longSleep = app.workflow("/long-sleep", async (context) => {
    await context.run("before", () => "before");
    await context.sleep("long", 30);
    await context.run("after", () => bump(`after-sleep:${context.workflowRunId}`));
  });
  urls.selfCancel = app.workflow("/self-cancel", async (context) => {
    await context.run("before", () => "before");
    await context.cancel();
    await context.run("never", () => bump(`never:${context.workflowRunId}`));
  });
  urls.quick = app.workflow("/quick", async (context) => {
    const value = await context.run("only", () => "quick");
    done.set(context.workflowRunId, { value });
  });
});

after(async () => {
  await app?.close();
});

async function completion(runId, timeoutMs = 30_000) {
  await waitFor(() => done.has(runId) && runEnded(runId), {
    what: `run ${runId} to complete`,
    timeoutMs,
    describe: () => trace(app, runId),
  });
  return done.get(runId).value;
}

/** Polls `GET /v2/workflows/runs/<id>` until Herald reports the run gone (404) or cancelled. */
async function runGoneOrCancelled(runId) {
  return waitFor(
    async () => {
      const { status, text } = await herald("GET", `/v2/workflows/runs/${runId}`);
      return (status === 404 || (status < 300 && /cancel/i.test(text))) && { status, text };
    },
    { what: `GET /v2/workflows/runs/${runId} to be 404 or report the run cancelled`, timeoutMs: 10_000 },
  );
}

test("invoke: the parent gets the child's result", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.parent });
  const result = await completion(runId, 45_000);
  assert.deepEqual(result, {
    body: { payload: { n: 7 }, header: "from-parent" },
    isFailed: false,
    isCanceled: false,
  });
});

test("webhook: a raw POST to webhookUrl resumes waitForWebhook with that request", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.webhook });
  const webhook = await waitFor(() => webhooks.get(runId), { what: "createWebhook", describe: () => trace(app, runId) });
  // Prefer calling once the wait is registered; webhooks have lookback anyway.
  await waitFor(async () => (await client.getWaiters({ eventId: webhook.eventId })).length > 0, {
    what: `a waiter on ${webhook.eventId}`,
    timeoutMs: 10_000,
  }).catch(() => {});
  const response = await fetch(webhook.webhookUrl, {
    method: "POST",
    headers: { "content-type": "application/json", "x-test-header": "header-value" },
    body: JSON.stringify({ hello: "hook" }),
  });
  assert.ok(response.ok, `POST ${webhook.webhookUrl}: ${response.status} ${await response.text()}`);
  const result = await completion(runId);
  assert.equal(result.timeout, false);
  assert.equal(result.url, webhook.webhookUrl);
  assert.equal(result.method, "POST");
  assert.equal(result.header, "header-value");
  assert.deepEqual(result.body, { hello: "hook" });
});

test("webhook: waitForWebhook with a 1 s timeout resumes with timeout: true", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.webhookTimeout });
  const result = await completion(runId);
  assert.deepEqual(result, { timeout: true, hasRequest: false });
});

test("failureFunction: retries 0 and a throwing step -> failStatus 500, failResponse my-error, 2 hits", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.failing, retries: 0 });
  const failure = await waitFor(() => failures.get(runId), { what: "failureFunction", describe: () => trace(app, runId) });
  assert.deepEqual(failure, { failStatus: 500, failResponse: "my-error" });
  // The failure function's hit is answered 200 once it has run.
  await waitFor(() => app.hitsOn("/failing", runId).filter((h) => h.status !== undefined).length >= 2, { what: "2 answered hits" });
  assert.equal(app.hitsOn("/failing", runId).length, 2, trace(app, runId));
});

test("Client.cancel during a 30 s sleep: cancelled 1, no further hit", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.longSleep });
  // The second hit publishes the sleep; wait until the SDK's publish of it was accepted.
  await waitFor(
    () => heraldCalls(runId, "POST").some((e) => e.requestBody?.includes("SleepFor") && e.status < 300),
    { what: "the 30 s sleep to be published", describe: () => trace(app, runId) },
  );
  const hitsBefore = app.hitsOn("/long-sleep", runId).length;
  const cancelled = await client.cancel({ ids: runId });
  assert.deepEqual(cancelled, { cancelled: 1 });
  await runGoneOrCancelled(runId);
  // The one fixed wait of the suite: nothing may arrive for this run any more.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.equal(app.hitsOn("/long-sleep", runId).length, hitsBefore, trace(app, runId));
  assert.equal(count(`after-sleep:${runId}`), 0);
});

test("context.cancel() inside the workflow: no more hits", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.selfCancel });
  const cancel = await waitFor(
    () => heraldCalls(runId, "DELETE").find((e) => e.path.startsWith(`/v2/workflows/runs/${runId}?cancel=true`)),
    { what: "the SDK's DELETE ?cancel=true", describe: () => trace(app, runId) },
  );
  assert.ok(cancel.status >= 200 && cancel.status < 300, `DELETE ?cancel=true: ${cancel.status} ${cancel.responseText}`);
  await waitFor(() => app.hitsOn("/self-cancel", runId).every((h) => h.status !== undefined), { what: "the hit to be answered" });
  const hitsAfterCancel = app.hitsOn("/self-cancel", runId).length;
  await runGoneOrCancelled(runId);
  // A later run completing on the same Herald: anything still queued for the cancelled run
  // would have been delivered by now.
  const { workflowRunId: quick } = await client.trigger({ url: urls.quick });
  await completion(quick);
  assert.equal(app.hitsOn("/self-cancel", runId).length, hitsAfterCancel, trace(app, runId));
  assert.equal(hitsAfterCancel, 2, trace(app, runId));
  assert.equal(count(`never:${runId}`), 0);
});
