// Shared helpers for the @upstash/workflow compatibility suite.
//
// This file deliberately does not match any of the `node --test` file
// patterns, so it is only loaded through imports.

import http from "node:http";
import { randomBytes } from "node:crypto";

/**
 * Reads HERALD_URL and HERALD_TOKEN. Throws a descriptive error when either is
 * missing or malformed, so that the suite fails loudly instead of silently
 * talking to the public Upstash endpoint or to nothing at all.
 */
export function readConfig(env = process.env) {
  const problems = [];
  const rawUrl = (env.HERALD_URL ?? "").trim();
  const token = (env.HERALD_TOKEN ?? "").trim();

  if (!rawUrl) {
    problems.push("HERALD_URL is not set (expected the base URL of a running Herald, e.g. http://127.0.0.1:8080)");
  }
  if (!token) {
    problems.push("HERALD_TOKEN is not set (expected a tenant token accepted by that Herald)");
  }

  let baseUrl;
  if (rawUrl) {
    try {
      const parsed = new URL(rawUrl);
      if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
        problems.push(`HERALD_URL must be an http(s) URL, got ${JSON.stringify(rawUrl)}`);
      }
      if (parsed.search || parsed.hash) {
        problems.push(`HERALD_URL must not contain a query or fragment, got ${JSON.stringify(rawUrl)}`);
      }
    } catch {
      problems.push(`HERALD_URL is not a valid URL: ${JSON.stringify(rawUrl)}`);
    }
    // The SDK strips exactly one trailing slash; normalise the same way for
    // the raw requests this suite sends itself.
    baseUrl = rawUrl.replace(/\/+$/, "");
  }

  if (problems.length > 0) {
    throw new Error(
      [
        "The Herald SDK compatibility suite cannot run:",
        ...problems.map((p) => `  - ${p}`),
        "",
        "Usage: HERALD_URL=http://127.0.0.1:<port> HERALD_TOKEN=<tenant token> npm test",
      ].join("\n"),
    );
  }

  const receiverHost = (env.HERALD_SDK_RECEIVER_HOST ?? "").trim() || "127.0.0.1";
  return { baseUrl, token, receiverHost };
}

/** A unique, URL-safe id so that tests never see each other's state. */
export function uniqueId(label) {
  return `sdk-${label}-${Date.now().toString(36)}-${randomBytes(6).toString("hex")}`;
}

/** A run id in the shape the workflow SDK uses (`wfr_...`). */
export function uniqueRunId() {
  return `wfr_${randomBytes(10).toString("hex")}`;
}

/**
 * Polls `probe` every `intervalMs` until it returns a truthy value, and
 * returns that value. Throws after `timeoutMs`, including `what` and the
 * optional `describe()` output in the message.
 */
export async function waitFor(probe, { what, timeoutMs = 10_000, intervalMs = 20, describe } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() >= deadline) {
      const extra = describe ? `\n${describe()}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what ?? "condition"}${extra}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * Starts an HTTP server that records every request it receives (method, path,
 * lower-cased headers, raw body bytes) and answers 200 `{"ok":true}`.
 */
export async function startReceiver(host = "127.0.0.1") {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      requests.push({
        method: req.method,
        path: req.url,
        headers: { ...req.headers },
        body: Buffer.concat(chunks),
        receivedAt: Date.now(),
      });
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"ok":true}');
    });
    req.on("error", () => {
      res.destroy();
    });
  });
  // Deliveries may reuse keep-alive connections; do not let them keep the
  // test process alive after close().
  server.keepAliveTimeout = 1000;

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });

  const { port } = server.address();
  const urlHost = host.includes(":") ? `[${host}]` : host;
  const baseUrl = `http://${urlHost}:${port}`;

  return {
    baseUrl,
    requests,
    /** All recorded requests whose path (including query) equals `path`. */
    at(path) {
      return requests.filter((r) => r.path === path);
    },
    /**
     * Human-readable summary of the recorded requests whose path starts with
     * `prefix` (all of them by default), for failure messages.
     */
    describe(prefix = "") {
      const shown = requests.filter((r) => r.path.startsWith(prefix));
      const scope = prefix ? ` under ${prefix}` : "";
      if (shown.length === 0) return `receiver recorded no requests${scope} (${requests.length} in total)`;
      return (
        `receiver recorded${scope}:\n` +
        shown
          .map((r) => `  ${r.method} ${r.path} ${JSON.stringify(r.headers)} body=${JSON.stringify(r.body.toString("utf8"))}`)
          .join("\n")
      );
    },
    async close() {
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Wraps globalThis.fetch so that every request sent to `baseUrl` is recorded
 * exactly as fetch will put it on the wire (method, path, headers including
 * the body-derived default content-type, body text). Returns the log and a
 * restore function.
 */
export function recordFetchTo(baseUrl) {
  const original = globalThis.fetch;
  const log = [];
  const origin = new URL(baseUrl).origin;

  globalThis.fetch = async function recordingFetch(input, init) {
    try {
      const url = typeof input === "string" || input instanceof URL ? new URL(String(input)) : new URL(input.url);
      if (url.origin === origin) {
        // A throwaway Request applies the same defaults as fetch itself
        // (notably content-type for string bodies) without consuming the
        // caller's body.
        const probe = new Request(input instanceof Request ? input.clone() : input, init);
        const body = probe.body ? await probe.text() : null;
        log.push({
          method: probe.method,
          path: url.pathname + url.search,
          headers: Object.fromEntries(probe.headers.entries()),
          body,
        });
      }
    } catch {
      // Recording is best-effort; never change what the SDK sends.
    }
    return original.call(this, input, init);
  };

  return {
    log,
    restore() {
      globalThis.fetch = original;
    },
  };
}

/**
 * Sends a raw `POST /v2/wait/{eventId}` for a plain waiter (no `step`), the
 * request the workflow SDK sends from `context.waitForEvent`, minus the step.
 * Returns `{ status, text }` whatever the status.
 */
export async function postWait(config, { eventId, url, timeout = "10m", runId, runIdInBody = false, timeoutUrl, timeoutHeaders, timeoutBody, authorization }) {
  const body = { url, timeout };
  if (timeoutUrl !== undefined) body.timeoutUrl = timeoutUrl;
  if (timeoutHeaders !== undefined) body.timeoutHeaders = timeoutHeaders;
  if (timeoutBody !== undefined) body.timeoutBody = timeoutBody;
  if (runId !== undefined && runIdInBody) body.workflowRunId = runId;

  const headers = { "content-type": "application/json" };
  const auth = authorization === undefined ? `Bearer ${config.token}` : authorization;
  if (auth !== null) headers.authorization = auth;
  if (runId !== undefined && !runIdInBody) headers["Upstash-Workflow-RunId"] = runId;

  const response = await fetch(`${config.baseUrl}/v2/wait/${eventId}`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  return { status: response.status, text: await response.text() };
}

/** Like postWait, but throws unless Herald answers 2xx. */
export async function registerWait(config, options) {
  const { status, text } = await postWait(config, options);
  if (status < 200 || status > 299) {
    throw new Error(`POST /v2/wait/${options.eventId} answered ${status}, expected 2xx; body: ${text}`);
  }
  return { status, text };
}

/** Looks a header up in a `Record<string, string[]>` case-insensitively. */
export function headerValues(map, name) {
  if (!map) return undefined;
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(map)) {
    if (key.toLowerCase() === wanted) return value;
  }
  return undefined;
}
