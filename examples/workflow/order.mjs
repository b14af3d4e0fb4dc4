// The order example of the Upstash Workflow docs, unmodified, on Herald.
//
// The workflow is a plain `serve()` endpoint of @upstash/workflow; the only change from a
// deployment on Upstash is the environment, which points the SDK at Herald:
//
//   QSTASH_URL                  Herald's base URL
//   QSTASH_TOKEN                a Herald tenant token
//   QSTASH_CURRENT_SIGNING_KEY  the tenant's signing keys (GET /v2/keys, or as
//   QSTASH_NEXT_SIGNING_KEY     printed by `herald dev`): the SDK verifies every delivery
//
// This script serves the workflow on 127.0.0.1 (a free port, or PORT), starts one run,
// waits until the run waits for its payment, sends the payment event as another service
// would, and prints the run's result when it has ended. Exit code 0: the run completed.
import http from "node:http";
import { Client, serve } from "@upstash/workflow";

for (const name of ["QSTASH_URL", "QSTASH_TOKEN", "QSTASH_CURRENT_SIGNING_KEY", "QSTASH_NEXT_SIGNING_KEY"]) {
  if (!process.env[name]) {
    console.error(`set ${name} (herald dev prints the line to paste)`);
    process.exit(2);
  }
}

const results = new Map();

// ---- the workflow: process the order, wait up to 10 minutes for the payment, confirm ----
const { handler } = serve(async (context) => {
  const { orderId } = context.requestPayload;
  const order = await context.run("process-order", () => ({ orderId, status: "processed" }));

  const { eventData, timeout } = await context.waitForEvent("wait-for-payment", `payment-${orderId}`, {
    timeout: "10m",
  });
  if (timeout) {
    await context.run("cancel-order", () => results.set(context.workflowRunId, { ...order, status: "expired" }));
    return;
  }
  await context.run("confirm-order", () =>
    results.set(context.workflowRunId, { ...order, status: "paid", payment: eventData }),
  );
});

// ---- a plain node:http server around the fetch-style handler ----
const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  const url = `http://${req.headers.host}${req.url}`;
  const response = await handler(
    new Request(url, { method: req.method, headers: req.headers, body: body.length ? body : undefined }),
  );
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
});

server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", async () => {
  const workflowUrl = `http://127.0.0.1:${server.address().port}/api/order`;
  const client = new Client({ baseUrl: process.env.QSTASH_URL, token: process.env.QSTASH_TOKEN });
  const orderId = `order-${Date.now()}`;
  const { workflowRunId } = await client.trigger({ url: workflowUrl, body: { orderId } });
  console.log(`started ${workflowRunId} for ${orderId}`);

  // Another service learns that the order was paid (here: once the run waits for it).
  const eventId = `payment-${orderId}`;
  const deadline = Date.now() + 30_000;
  while ((await client.getWaiters({ eventId })).length === 0) {
    if (Date.now() > deadline) fail("the run did not reach its wait within 30 s");
    await new Promise((r) => setTimeout(r, 100));
  }
  await client.notify({ eventId, eventData: { amount: 42, currency: "EUR" } });
  console.log(`notified ${eventId}`);

  while (!results.has(workflowRunId)) {
    if (Date.now() > deadline) fail("the run did not complete within 30 s");
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log("result:", JSON.stringify(results.get(workflowRunId)));
  server.close();
  process.exit(results.get(workflowRunId).status === "paid" ? 0 : 1);
});

function fail(message) {
  console.error(message);
  process.exit(1);
}
