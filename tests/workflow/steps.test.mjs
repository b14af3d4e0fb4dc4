// Step kinds of unmodified serve() workflows of @upstash/workflow on Herald: parallel
// steps, sleep / sleepUntil, context.call, a 5 MiB step result.
//
//   HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> npm test

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";

import { client, rid, runEnded, startApp, trace, waitFor } from "./helpers.mjs";

const TEST = { timeout: 60_000 };

let app;
const done = new Map(); // runId -> { value }
const counters = new Map();
const bump = (key) => counters.set(key, (counters.get(key) ?? 0) + 1);
const count = (key) => counters.get(key) ?? 0;
const bigDigests = new Map(); // runId -> sha256 of the 5 MiB result as produced
const urls = {};

const FIVE_MIB = 5 * 1024 * 1024;
const sha256 = (text) => createHash("sha256").update(text).digest("hex");

before(async () => {
  app = await startApp();

  // Plain (non-workflow) routes that context.call reaches through Herald.
  urls.echo = app.route("/plain/echo", async (request) => {
    const body = await request.text();
    return new Response(JSON.stringify({ method: request.method, body, inHeader: request.headers.get("x-in") }), {
      status: 201,
      headers: { "content-type": "application/json", "x-echo": `echo-${request.headers.get("x-in")}` },
    });
  });
  urls.missing = app.route("/plain/missing", async () =>
    new Response(JSON.stringify({ error: "not here" }), { status: 404, headers: { "content-type": "application/json" } }),
  );
  app.route("/plain/flaky/*", async (request) => {
    const key = `flaky:${new URL(request.url).pathname}`;
    bump(key);
    return count(key) === 1 ? new Response("first attempt fails", { status: 500 }) : new Response("second attempt ok", { status: 200 });
  });

  urls.parallel = app.workflow("/parallel", async (context) => {
    const [x, slept] = await Promise.all([context.run("x", () => 1), context.sleep("y", 2)]);
    const value = await context.run("after", () => {
      bump(`after:${context.workflowRunId}`);
      return { x, slept: slept ?? null };
    });
    done.set(context.workflowRunId, { value });
  });

  urls.sleep = app.workflow("/sleep", async (context) => {
    const t0 = await context.run("t0", () => Date.now());
    const until = Math.ceil((t0 + 3000) / 1000); // unix seconds, at least 3 s after t0
    await context.sleepUntil("until", until);
    const t1 = await context.run("t1", () => Date.now());
    await context.sleep("for", 2);
    const t2 = await context.run("t2", () => Date.now());
    done.set(context.workflowRunId, { value: { t0, until, t1, t2 } });
  });

  urls.call = app.workflow("/call", async (context) => {
    const posted = await context.call("post", {
      url: urls.echo,
      method: "POST",
      body: JSON.stringify({ a: 1 }),
      headers: { "content-type": "application/json", "x-in": "hello" },
    });
    const missing = await context.call("missing", { url: urls.missing, method: "GET" });
    const retried = await context.call("flaky", {
      url: `${app.baseUrl}/plain/flaky/${context.workflowRunId}`,
      method: "POST",
      body: "try",
      retries: 1,
      retryDelay: "200",
    });
    done.set(context.workflowRunId, { value: { posted, missing, retried } });
  });

  urls.large = app.workflow("/large", async (context) => {
    const big = await context.run("big", () => {
      const text = randomBytes((FIVE_MIB / 4) * 3).toString("base64"); // exactly 5 MiB of text
      bigDigests.set(context.workflowRunId, sha256(text));
      return text;
    });
    const seen = await context.run("check", () => ({ length: big.length, digest: sha256(big) }));
    done.set(context.workflowRunId, { value: seen });
  });
});

after(async () => {
  await app?.close();
});

async function completion(runId, timeoutMs = 30_000) {
  await waitFor(() => done.has(runId) && runEnded(runId), {
    what: `run ${runId} to complete`,
    timeoutMs,
    describe: () => trace(app, runId, runId),
  });
  return done.get(runId).value;
}

test("parallel: Promise.all of run and sleep, then a step whose code runs exactly once", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.parallel });
  const result = await completion(runId);
  assert.equal(result.x, 1);
  assert.equal(count(`after:${runId}`), 1, `"after" ran once\n${trace(app, runId)}`);
});

test("sleepUntil and sleep: the measured gaps are at least the sleeps", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.sleep });
  const { t0, until, t1, t2 } = await completion(runId);
  assert.ok(t1 >= until * 1000, `sleepUntil(${until}) resumed at ${t1} (${t1 - until * 1000} ms early?), t0 ${t0}`);
  assert.ok(t1 - t0 >= 3000, `gap t0..t1 ${t1 - t0} ms`);
  assert.ok(t2 - t1 >= 2000, `sleep 2 s: gap t1..t2 ${t2 - t1} ms`);
});

test("context.call: status, body and headers; a 4xx is a result; retries: 1 hits the route twice", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.call });
  const { posted, missing, retried } = await completion(runId, 45_000);

  assert.equal(posted.status, 201);
  assert.deepEqual(posted.body, { method: "POST", body: JSON.stringify({ a: 1 }), inHeader: "hello" });
  assert.deepEqual(posted.header["X-Echo"], ["echo-hello"], `response headers: ${JSON.stringify(posted.header)}`);
  // The third-party request itself carries the call's headers and no workflow control headers.
  const echoHits = app.hitsOn("/plain/echo").filter((h) => h.headers["x-in"] === "hello");
  assert.ok(echoHits.length >= 1);
  const control = Object.keys(echoHits[0].headers).filter((name) => name.startsWith("upstash-workflow-"));
  assert.deepEqual(control, [], `workflow headers on the third-party request: ${JSON.stringify(echoHits[0].headers)}`);

  assert.equal(missing.status, 404);
  assert.deepEqual(missing.body, { error: "not here" });

  assert.equal(retried.status, 200);
  assert.equal(retried.body, "second attempt ok");
  assert.equal(count(`flaky:/plain/flaky/${runId}`), 2, "the failing route was hit twice");
});

test("large payload: a 5 MiB step result reaches the next step intact", TEST, async () => {
  const { workflowRunId: runId } = await client.trigger({ url: urls.large });
  const seen = await completion(runId, 45_000);
  assert.equal(seen.length, FIVE_MIB);
  assert.equal(seen.digest, bigDigests.get(runId));
  assert.equal(app.hitsOn("/large", runId).length, 3, trace(app, runId));
});
