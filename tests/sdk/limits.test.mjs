// Limits as the official client sees them: a 429 from Herald becomes the SDK's
// QstashRatelimitError with the Burst-RateLimit-* values, a quota refusal a
// QstashError with Herald's message and status.
//
// Needs HERALD_ADMIN_TOKEN (the operator token printed by `herald dev`) to
// create a tenant of its own with small limits; skipped without it.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Client } from "@upstash/workflow";

import { readConfig, uniqueId } from "./helpers.mjs";

delete process.env.QSTASH_DEV;
delete process.env.QSTASH_DEV_PORT;

const config = readConfig();
const adminToken = (process.env.HERALD_ADMIN_TOKEN ?? "").trim();

async function admin(method, path, body) {
  const response = await fetch(`${config.baseUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

test(
  "a rate limit is a QstashRatelimitError, a quota a QstashError naming it",
  { skip: adminToken ? false : "HERALD_ADMIN_TOKEN is not set", timeout: 30_000 },
  async () => {
    const name = `sdk-limits-${Date.now().toString(36)}`;
    const created = await admin("POST", "/admin/tenants", { name });
    await admin("PUT", `/admin/tenants/${name}/limits`, {
      notify_per_sec: 1,
      notify_burst: 2,
      notify_body_bytes: 8,
    });
    const client = new Client({ baseUrl: config.baseUrl, token: created.token, devMode: false, retry: false });
    const eventId = uniqueId("limits");
    const quiet = console.error;
    console.error = () => {}; // the SDK logs every failed request
    try {
      await assert.rejects(client.notify({ eventId, eventData: "123456789" }), (error) => {
        assert.equal(error.status, 413);
        assert.match(error.message, /notify_body_bytes \(8\)/);
        return true;
      });

      // The burst of 2 is admitted (a third may be, if a second passed); then 429.
      let admitted = 0;
      let refusal;
      for (let i = 0; i < 10 && !refusal; i++) {
        try {
          assert.deepEqual(await client.notify({ eventId, eventData: "x" }), []);
          admitted++;
        } catch (error) {
          refusal = error;
        }
      }
      assert.ok(admitted >= 2 && admitted <= 3, `${admitted} admitted`);
      assert.ok(refusal, "the notifies over the limit are refused");
      assert.equal(refusal.name, "QstashRatelimitError");
      assert.equal(refusal.status, 429);
      assert.equal(refusal.limit, "2");
      assert.equal(refusal.remaining, "0");
      const now = Math.floor(Date.now() / 1000);
      assert.ok(Number(refusal.reset) >= now && Number(refusal.reset) <= now + 3, `reset ${refusal.reset}`);
    } finally {
      console.error = quiet;
    }
  },
);
