// Shared set-up of the workflow end-to-end suite.
//
// Importing this module (top-level await) points the official SDK at Herald before any
// endpoint is created: QSTASH_URL / QSTASH_TOKEN come from HERALD_URL / HERALD_TOKEN, the
// signing keys from `GET /v2/keys`, so every delivery's signature is verified by the SDK.
// It is not a test file itself (no `.test.` in its name).

import http from "node:http";
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

import { Client, serve } from "@upstash/workflow";

// Nothing may redirect the SDK elsewhere: dev mode swaps URL, token and keys, region mode
// picks per-region URLs, UPSTASH_WORKFLOW_URL rewrites the endpoint's own URL.
for (const name of Object.keys(process.env)) {
  if (name === "QSTASH_DEV" || name === "QSTASH_DEV_PORT" || name === "QSTASH_REGION" || name === "UPSTASH_WORKFLOW_URL" || /_QSTASH_(URL|TOKEN|CURRENT_SIGNING_KEY|NEXT_SIGNING_KEY)$/.test(name)) {
    delete process.env[name];
  }
}

const heraldUrl = (process.env.HERALD_URL ?? "").trim().replace(/\/+$/, "");
const heraldToken = (process.env.HERALD_TOKEN ?? "").trim();
if (!heraldUrl || !heraldToken) {
  throw new Error("set HERALD_URL and HERALD_TOKEN (a running Herald and a tenant token)");
}

/** Raw request to Herald with the tenant's bearer token; returns { status, text, json }. */
export async function herald(method, path, { body, headers = {}, auth = true } = {}) {
  const response = await fetch(`${heraldUrl}${path}`, {
    method,
    headers: { ...(auth ? { authorization: `Bearer ${heraldToken}` } : {}), ...headers },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, text, json };
}

const keys = await herald("GET", "/v2/keys").catch((error) => {
  throw new Error(`Herald is not reachable at HERALD_URL=${heraldUrl}: ${error?.cause?.message ?? error.message}`);
});
if (keys.status !== 200 || !keys.json?.current || !keys.json?.next) {
  throw new Error(`GET /v2/keys answered ${keys.status} ${keys.text}; expected {"current":"sig_…","next":"sig_…"}`);
}

process.env.QSTASH_URL = heraldUrl;
process.env.QSTASH_TOKEN = heraldToken;
process.env.QSTASH_CURRENT_SIGNING_KEY = keys.json.current;
process.env.QSTASH_NEXT_SIGNING_KEY = keys.json.next;

export const config = { heraldUrl, heraldToken, keys: keys.json };

/** The SDK's Client, pointed at Herald. */
export const client = new Client({ baseUrl: heraldUrl, token: heraldToken });

// ---------------------------------------------------------------------------
// What the SDK (in the app or in the Client) sends to Herald, with Herald's answers.

export const heraldLog = [];
const originalFetch = globalThis.fetch;
globalThis.fetch = async function loggingFetch(input, init) {
  const url = typeof input === "string" || input instanceof URL ? String(input) : input.url;
  const response = await originalFetch.call(this, input, init);
  if (url.startsWith(heraldUrl)) {
    const method = (init?.method ?? (input instanceof Request ? input.method : "GET")).toUpperCase();
    let requestBody = typeof init?.body === "string" ? init.body : undefined;
    if (requestBody && requestBody.length > 2000) requestBody = `${requestBody.slice(0, 2000)}… (${requestBody.length} chars)`;
    const entry = { at: Date.now(), method, path: url.slice(heraldUrl.length), status: response.status, requestBody, responseText: undefined };
    heraldLog.push(entry);
    // Read a copy of the answer for diagnostics without consuming the caller's body.
    response
      .clone()
      .text()
      .then((text) => {
        entry.responseText = text.length > 2000 ? `${text.slice(0, 2000)}…` : text;
      })
      .catch(() => {});
  }
  return response;
};

/** The logged SDK requests to Herald whose path contains `needle` (a run id, say). */
export function heraldCalls(needle, method) {
  return heraldLog.filter((e) => (e.path.includes(needle) || e.requestBody?.includes(needle)) && (!method || e.method === method));
}

// ---------------------------------------------------------------------------
// The app: a plain node:http server hosting fetch-style handlers.

const hitStorage = new AsyncLocalStorage();

/**
 * The app's record of the request being handled (see startApp), for code running inside a
 * handler: a route function may be invoked more than once per request (the SDK dry-runs it),
 * so per-hit observations are stored on the hit.
 */
export function currentHit() {
  return hitStorage.getStore();
}

/**
 * Starts the test app on 127.0.0.1:<random port>. `route(path, handler)` mounts a
 * `(Request) => Promise<Response>` handler at an exact path, or at every path under a
 * prefix when `path` ends with `/*`. Every request is recorded (method, path, headers,
 * body size, answered status and body) for assertions and failure messages.
 */
export async function startApp() {
  const exact = new Map();
  const prefixes = [];
  const hits = [];

  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const path = req.url ?? "/";
    const pathname = path.split("?")[0];
    const hit = {
      at: Date.now(),
      method: req.method,
      path,
      headers: { ...req.headers },
      runId: req.headers["upstash-workflow-runid"],
      bodyBytes: body.length,
      status: undefined,
      answer: undefined,
    };
    hits.push(hit);
    const handler = exact.get(pathname) ?? prefixes.find(([p]) => pathname.startsWith(p))?.[1];
    try {
      if (!handler) {
        hit.status = 404;
        res.writeHead(404).end("no such route");
        return;
      }
      // Node http -> fetch Request, keeping every header (repeated ones too) and the raw bytes.
      const headers = new Headers();
      for (let i = 0; i < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      const request = new Request(`${app.baseUrl}${path}`, {
        method: req.method,
        headers,
        body: hasBody ? body : undefined,
        duplex: "half",
      });
      const response = await hitStorage.run(hit, () => handler(request, hit));
      const answer = Buffer.from(await response.arrayBuffer());
      hit.status = response.status;
      hit.answer = answer.length > 1000 ? `${answer.subarray(0, 1000).toString("utf8")}…` : answer.toString("utf8");
      const outHeaders = {};
      response.headers.forEach((value, name) => {
        outHeaders[name] = value;
      });
      res.writeHead(response.status, outHeaders).end(answer);
    } catch (error) {
      hit.status = 599;
      hit.answer = String(error?.stack ?? error);
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(error?.message ?? error));
    }
  });
  server.keepAliveTimeout = 1000;
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });

  const app = {
    baseUrl: `http://127.0.0.1:${server.address().port}`,
    hits,
    route(path, handler) {
      if (path.endsWith("/*")) prefixes.push([path.slice(0, -1), handler]);
      else exact.set(path, handler);
      return `${app.baseUrl}${path.endsWith("/*") ? path.slice(0, -2) : path}`;
    },
    /** Mounts `serve(routeFunction, options)` of the SDK at `path`; returns its URL. */
    workflow(path, routeFunction, options) {
      const { handler } = serve(routeFunction, options);
      return app.route(path, handler);
    },
    /** Hits on `path` (exact, or prefix with `/*`), optionally of one run. */
    hitsOn(path, runId) {
      const match = path.endsWith("/*") ? (h) => h.path.startsWith(path.slice(0, -1)) : (h) => h.path.split("?")[0] === path;
      return hits.filter((h) => match(h) && (runId === undefined || h.runId === runId));
    },
    async close() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  return app;
}

// ---------------------------------------------------------------------------

/** A random id fragment. */
export function rid(label = "") {
  return `${label}${label ? "-" : ""}${Date.now().toString(36)}${randomBytes(5).toString("hex")}`;
}

/**
 * Polls `probe` (sync or async) every `intervalMs` until it returns a truthy value and
 * returns that value; throws after `timeoutMs` with `what` and `describe()` in the message.
 */
export async function waitFor(probe, { what = "condition", timeoutMs = 20_000, intervalMs = 50, describe } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${describe ? `\n${describe()}` : ""}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Human-readable trace of one run: the app's hits and the SDK's requests to Herald. */
export function trace(app, runId, extraNeedle) {
  const lines = [`-- app hits for ${runId}:`];
  for (const h of app.hits.filter((x) => x.runId === runId || (extraNeedle && x.path.includes(extraNeedle)))) {
    lines.push(
      `  ${new Date(h.at).toISOString()} ${h.method} ${h.path} retried=${h.headers["upstash-retried"] ?? "-"} ` +
        `msg=${h.headers["upstash-message-id"] ?? "-"} bytes=${h.bodyBytes} -> ${h.status} ${h.answer ?? ""}`,
    );
  }
  lines.push(`-- SDK requests to Herald mentioning ${runId}:`);
  for (const e of heraldCalls(runId)) {
    lines.push(`  ${new Date(e.at).toISOString()} ${e.method} ${e.path} -> ${e.status} ${e.responseText ?? ""}`);
  }
  return lines.join("\n");
}

/** The run-end DELETE (`?cancel=false`) the SDK sent for `runId`, if Herald accepted it. */
export function runEnded(runId) {
  return heraldLog.find((e) => e.method === "DELETE" && e.path.startsWith(`/v2/workflows/runs/${runId}?cancel=false`) && e.status >= 200 && e.status < 300);
}
