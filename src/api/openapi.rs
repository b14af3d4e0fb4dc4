//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, built here from the
//! shapes the handlers produce. A test compares its paths with the routes registered in
//! [`super::configure`], and CI runs schemathesis against a live Herald with it.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

/// The id alphabet of event and run ids (percent-decoded path segments).
const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,256}$";

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(&*DOCUMENT)
}

pub static DOCUMENT: LazyLock<Value> = LazyLock::new(build);

fn error_ref() -> Value {
    json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } })
}

fn error(description: &str) -> Value {
    json!({ "description": description, "content": error_ref() })
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn path_param(name: &str, description: &str, pattern: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": { "type": "string", "pattern": pattern }
    })
}

fn event_param() -> Value {
    path_param("eventId", "The event id.", ID_PATTERN)
}

fn run_param() -> Value {
    path_param("runId", "The workflow run id.", ID_PATTERN)
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

/// The 429 of a tenant over one of its rate limits, with the headers the Upstash SDKs read.
fn rate_limited() -> Value {
    let header = |description: &str| json!({ "description": description, "schema": { "type": "integer", "minimum": 0 } });
    let mut response = error("Over the tenant's rate limit for this route's class (wait, notify or read); nothing was changed.");
    response["headers"] = json!({
        "Burst-RateLimit-Limit": header("Requests allowed at once (the burst)."),
        "Burst-RateLimit-Remaining": header("Requests still allowed at once (0)."),
        "Burst-RateLimit-Reset": header("When the bucket is full again, unix seconds."),
        "Retry-After": header("Seconds until a request is admitted."),
    });
    response
}

/// The error answers every authenticated tenant route can give.
fn tenant_errors(mut responses: Map<String, Value>) -> Value {
    responses.insert("400".into(), error("Bad input; nothing was changed."));
    responses.insert("401".into(), error("Missing or invalid token."));
    responses.insert("404".into(), error("Unknown route or resource."));
    responses.insert("429".into(), rate_limited());
    responses.insert(
        "503".into(),
        error("Redis is unavailable; retry (Retry-After)."),
    );
    Value::Object(responses)
}

fn admin_errors(mut responses: Map<String, Value>) -> Value {
    responses.insert("400".into(), error("Bad input; nothing was changed."));
    responses.insert("401".into(), error("Missing or invalid admin token."));
    responses.insert(
        "404".into(),
        error("Unknown tenant, or the admin API is disabled (no server.admin_token)."),
    );
    responses.insert(
        "503".into(),
        error("Redis is unavailable; retry (Retry-After)."),
    );
    Value::Object(responses)
}

fn responses(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn tenant_security() -> Value {
    json!([{ "bearer": [] }, { "qstashToken": [] }])
}

fn admin_security() -> Value {
    json!([{ "admin": [] }])
}

/// A webhook URL of a workflow run (`createWebhook`), one operation per method.
fn hook_operation(method: &str) -> Value {
    json!({
        "operationId": format!("webhook_{method}"), "tags": ["workflows"],
        "summary": "A webhook hit: completes the run's waitForWebhook (or is kept for it). No token: the URL is the capability.",
        "parameters": [
            path_param("userId", "The tenant (UserID of its token).", "^[a-z0-9][a-z0-9-]{0,62}$"),
            run_param(),
            event_param()
        ],
        "responses": responses(&[
            ("200", ok_json("Taken.", json!({ "type": "object" }))),
            ("400", error("An invalid run or event id.")),
            ("404", error("No such tenant.")),
            ("409", error("The run was cancelled.")),
            ("413", error("The body is larger than server.max_body_bytes.")),
            ("422", error("The run already has as many saved notifications for the event as allowed, or the tenant is at its stored_bytes quota.")),
            ("429", rate_limited()),
            ("503", error("Redis is unavailable.")),
        ])
    })
}

fn build() -> Value {
    let any_body = json!({
        "required": false,
        "description": "The event's data: any bytes of any content type (empty allowed), delivered as sent.",
        "content": {
            "application/json": { "schema": {} },
            "text/plain": { "schema": { "type": "string" } },
            "application/octet-stream": { "schema": { "type": "string", "format": "binary" } }
        }
    });
    let notified = ok_json(
        "The waiters the notify reached (`[]`: nobody waits; for lookback notifies also when saved, see Herald-Notify-Outcome).",
        json!({ "type": "array", "items": schema("NotifyResponse") }),
    );
    let mut notified = notified;
    notified["headers"] = json!({
        "Herald-Notify-Outcome": {
            "description": "delivered, saved (lookback), or none (nobody waits).",
            "schema": { "type": "string", "enum": ["delivered", "saved", "none"] }
        }
    });

    let paths = json!({
        "/healthz": { "get": {
            "operationId": "healthz", "tags": ["operator"], "summary": "The process is alive.",
            "security": [],
            "responses": { "200": ok_json("Alive.", json!({ "type": "object", "properties": { "status": { "const": "ok" } }, "required": ["status"] })) }
        }},
        "/readyz": { "get": {
            "operationId": "readyz", "tags": ["operator"],
            "summary": "Redis answers and every script is loaded.",
            "security": [],
            "responses": {
                "200": ok_json("Ready.", json!({ "type": "object", "properties": { "status": { "const": "ready" } }, "required": ["status"] })),
                "503": error("Not ready: Redis is unreachable, or the scripts are being reloaded.")
            }
        }},
        "/metrics": { "get": {
            "operationId": "metrics", "tags": ["operator"],
            "summary": "Prometheus metrics (text exposition format).",
            "security": [],
            "responses": { "200": { "description": "The metrics.", "content": { "text/plain": { "schema": { "type": "string" } } } } }
        }},
        "/openapi.json": { "get": {
            "operationId": "openapi", "tags": ["operator"], "summary": "This document.",
            "security": [],
            "responses": { "200": ok_json("OpenAPI 3.1 document.", json!({ "type": "object" })) }
        }},
        "/v2/wait/{eventId}": { "post": {
            "operationId": "wait", "tags": ["waiters"],
            "summary": "Register a waiter, or consume a saved lookback notification of the run.",
            "security": tenant_security(),
            "parameters": [
                event_param(),
                { "name": "Upstash-Workflow-RunId", "in": "header", "required": false,
                  "description": "The workflow run id (or body workflowRunId).",
                  "schema": { "type": "string", "pattern": ID_PATTERN } },
                { "name": "Upstash-Retries", "in": "header", "required": false,
                  "description": "Retries of this waiter's deliveries.",
                  "schema": { "type": "integer", "minimum": 0, "maximum": 20 } },
                { "name": "Idempotency-Key", "in": "header", "required": false,
                  "description": "Makes a client retry find the first registration.",
                  "schema": { "type": "string" } }
            ],
            "requestBody": { "required": true, "content": { "application/json": { "schema": schema("WaitRequest") } } },
            "responses": tenant_errors(responses(&[
                ("200", ok_json("Waiting, or notified at once from a saved notification.", schema("WaitResponse"))),
                ("409", error("The run was cancelled.")),
                ("413", error("The body is larger than server.max_body_bytes.")),
                ("422", error("Quota: the event's waiters (waiters_per_event), the tenant's active waiters (active_waiters), its max_timeout, or its stored bytes (stored_bytes); nothing was changed.")),
            ]))
        }},
        "/v2/notify/{eventId}": { "post": {
            "operationId": "notify", "tags": ["notify"],
            "summary": "Broadcast the event to every waiter present now.",
            "security": tenant_security(),
            "parameters": [event_param()],
            "requestBody": any_body.clone(),
            "responses": tenant_errors(responses(&[
                ("201", notified.clone()),
                ("413", error("The body is larger than server.max_body_bytes or the tenant's notify_body_bytes.")),
                ("422", error("Nobody waits and the tenant is at its stored_bytes quota (the history entry would store more); nothing was changed.")),
            ]))
        }},
        "/v2/notify/{runId}/{eventId}": { "post": {
            "operationId": "notifyRun", "tags": ["notify"],
            "summary": "Lookback notify: to the run's waiter on the event, or saved for its next wait.",
            "security": tenant_security(),
            "parameters": [
                run_param(), event_param(),
                { "name": "Idempotency-Key", "in": "header", "required": false,
                  "description": "A client retry with the same key saves nothing twice (also Upstash-Deduplication-Id).",
                  "schema": { "type": "string" } }
            ],
            "requestBody": any_body,
            "responses": tenant_errors(responses(&[
                ("201", notified),
                ("409", error("The run was cancelled.")),
                ("413", error("The body is larger than server.max_body_bytes or the tenant's notify_body_bytes.")),
                ("422", error("Quota: the (run, event)'s saved notifications (saved_per_run_event), or the tenant's stored bytes (stored_bytes); nothing was saved.")),
            ]))
        }},
        "/v2/waiters/{eventId}": { "get": {
            "operationId": "waiters", "tags": ["waiters"],
            "summary": "The event's active waiters, oldest first (at most 1,000).",
            "security": tenant_security(),
            "parameters": [event_param()],
            "responses": tenant_errors(responses(&[
                ("200", ok_json("The waiters.", json!({ "type": "array", "items": schema("Waiter") }))),
            ]))
        }},
        "/v2/events/{eventId}/history": { "get": {
            "operationId": "eventHistory", "tags": ["history"],
            "summary": "Recent outcomes of the event: registrations, notifies, delivery attempts, dead letters, timeouts (newest first).",
            "security": tenant_security(),
            "parameters": [
                event_param(),
                query_param("count", "Most entries returned (default and cap: history.max_entries).",
                    json!({ "type": "integer", "minimum": 1, "maximum": 10000 }))
            ],
            "responses": tenant_errors(responses(&[
                ("200", ok_json("The history.", schema("History"))),
            ]))
        }},
        "/v2/workflows/runs/{runId}": {
            "delete": {
                "operationId": "cancelRun", "tags": ["waiters", "workflows"],
                "summary": "Cancel a run (drop its waiters and saved notifications; a workflow run Herald holds sends nothing more), or, with cancel=false, end a workflow run with the body as its result.",
                "security": tenant_security(),
                "parameters": [run_param(),
                    query_param("cancel", "`false`: the workflow returned (its end); anything else cancels.", json!({ "type": "string" }))],
                "requestBody": {
                    "required": false,
                    "description": "With cancel=false: the workflow's return value (any bytes).",
                    "content": { "text/plain": { "schema": { "type": "string" } }, "application/json": { "schema": {} } }
                },
                "responses": tenant_errors(responses(&[
                    ("200", ok_json("Cancelled, or ended.", json!({ "oneOf": [schema("CancelResponse"), schema("RunEnded")] }))),
                ]))
            },
            "get": {
                "operationId": "runHistory", "tags": ["workflows"],
                "summary": "A running workflow run's history (RawStep[]), as the SDK's lazy fetch reads it.",
                "security": tenant_security(),
                "parameters": [run_param()],
                "responses": tenant_errors(responses(&[
                    ("200", ok_json("The history, oldest entry first.", json!({ "type": "array", "items": schema("RawStep") }))),
                    ("404", error("No such run, or it has ended.")),
                ]))
            }
        },
        "/v2/workflows/runs": { "delete": {
            "operationId": "cancelRuns", "tags": ["workflows"],
            "summary": "Cancel workflow runs by id (Client.cancel). Filters and all-runs are not supported (400).",
            "security": tenant_security(),
            "parameters": [
                { "name": "workflowRunIds", "in": "query", "required": true, "description": "A run id; repeat for more (at most 1000).",
                  "schema": { "type": "array", "items": { "type": "string", "pattern": ID_PATTERN } }, "style": "form", "explode": true },
                query_param("count", "Checked, else ignored (the SDK sends it).", json!({ "type": "integer", "minimum": 0 })),
                query_param("cursor", "Ignored (the SDK sends it).", json!({ "type": "string" }))
            ],
            "responses": tenant_errors(responses(&[
                ("200", ok_json("How many of the runs were running.", schema("CancelledRuns"))),
            ]))
        }},
        "/v2/batch": { "post": {
            "operationId": "batch", "tags": ["workflows"],
            "summary": "Publish messages (the Upstash Workflow SDKs' triggers, steps, sleeps, plans and calls; or plain messages).",
            "security": tenant_security(),
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "array", "minItems": 1, "maxItems": 1000, "items": schema("BatchMessage") } } } },
            "responses": tenant_errors(responses(&[
                ("200", ok_json("One element per message, in order.", json!({ "type": "array", "items": schema("PublishReply") }))),
                ("413", error("The body is larger than workflow.max_message_bytes.")),
                ("422", error("The tenant is at its stored_bytes quota and a message would start a run or add a step; nothing was written.")),
            ]))
        }},
        "/v2/publish/{destination}": { "post": {
            "operationId": "publish", "tags": ["workflows"],
            "summary": "Publish one message to the destination (the raw path tail and query); its Upstash-* headers say what it is.",
            "security": tenant_security(),
            "parameters": [{ "name": "destination", "in": "path", "required": true,
                "description": "The destination URL, not percent-encoded (http://app/api/wf).",
                "schema": { "type": "string", "pattern": "^https?://([A-Za-z][A-Za-z0-9-]{0,62}(\\.[A-Za-z][A-Za-z0-9-]{0,62})*|(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~-]*)*$" } }],
            "requestBody": any_body.clone(),
            "responses": tenant_errors(responses(&[
                ("201", ok_json("Accepted.", schema("PublishReply"))),
                ("413", error("The body is larger than workflow.max_message_bytes.")),
                ("422", error("The tenant is at its stored_bytes quota and a message would start a run or add a step; nothing was written.")),
            ]))
        }},
        "/v2/workflows/hooks/{userId}/{runId}/{eventId}": {
            "get": hook_operation("get"),
            "post": hook_operation("post"),
            "put": hook_operation("put"),
            "patch": hook_operation("patch"),
            "delete": hook_operation("delete"),
        },
        "/v2/keys": { "get": {
            "operationId": "signingKeys", "tags": ["keys"],
            "summary": "The tenant's signing keys.",
            "security": tenant_security(),
            "responses": tenant_errors(responses(&[("200", ok_json("The keys.", schema("SigningKeys")))]))
        }},
        "/v2/keys/rotate": { "post": {
            "operationId": "rotateSigningKeys", "tags": ["keys"],
            "summary": "Promote the next signing key to current and make a new next one.",
            "security": tenant_security(),
            "responses": tenant_errors(responses(&[("200", ok_json("The new keys.", schema("SigningKeys")))]))
        }},
        "/v2/dlq": { "get": {
            "operationId": "listDeadLetters", "tags": ["dlq"],
            "summary": "The tenant's dead letters, a page at a time.",
            "security": tenant_security(),
            "parameters": [
                query_param("cursor", "Where the previous page ended.", json!({ "type": "string" })),
                query_param("count", "Page size (default 50).", json!({ "type": "integer", "minimum": 1, "maximum": 100 })),
                query_param("eventId", "Only this event's dead letters.", json!({ "type": "string", "pattern": ID_PATTERN })),
                query_param("url", "Only dead letters to this URL.", json!({ "type": "string" }))
            ],
            "responses": tenant_errors(responses(&[("200", ok_json("A page.", schema("DeadLetterPage")))]))
        }},
        "/v2/dlq/retry/{dlqId}": { "post": {
            "operationId": "retryDeadLetter", "tags": ["dlq"],
            "summary": "Deliver a dead letter again (a new attempt series).",
            "security": tenant_security(),
            "parameters": [path_param("dlqId", "The dead letter's id.", "^[0-9]{1,5}-[0-9]{1,20}-[0-9]{1,20}$")],
            "responses": tenant_errors(responses(&[
                ("200", ok_json("Enqueued again.", json!({
                    "type": "object", "required": ["messageId"], "properties": { "messageId": { "type": "string" } }
                }))),
                ("409", error("The dead letter's stored body has expired (a retention raised after it was written).")),
            ]))
        }},
        "/v2/dlq/{dlqId}": { "delete": {
            "operationId": "deleteDeadLetter", "tags": ["dlq"],
            "summary": "Delete a dead letter.",
            "security": tenant_security(),
            "parameters": [path_param("dlqId", "The dead letter's id.", "^[0-9]{1,5}-[0-9]{1,20}-[0-9]{1,20}$")],
            "responses": tenant_errors(responses(&[("200", ok_json("Deleted.", json!({
                "type": "object", "required": ["deleted"], "properties": { "deleted": { "type": "boolean" } }
            })))]))
        }},
        "/admin/tenants": {
            "post": {
                "operationId": "createTenant", "tags": ["admin"],
                "summary": "Create a tenant; its token and signing keys are shown once.",
                "security": admin_security(),
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "additionalProperties": false, "required": ["name"],
                    "properties": { "name": { "type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$" } }
                } } } },
                "responses": admin_errors(responses(&[
                    ("201", ok_json("Created.", schema("NewTenant"))),
                    ("409", error("The tenant exists.")),
                    ("413", error("The body is too large.")),
                ]))
            },
            "get": {
                "operationId": "listTenants", "tags": ["admin"], "summary": "List tenants.",
                "security": admin_security(),
                "responses": admin_errors(responses(&[("200", ok_json("The tenants.", json!({
                    "type": "array", "items": schema("TenantInfo")
                })))]))
            }
        },
        "/admin/tenants/{name}/token": {
            "post": {
                "operationId": "rotateTenantToken", "tags": ["admin"],
                "summary": "Issue a new token for the tenant, revoking the old one.",
                "security": admin_security(),
                "parameters": [path_param("name", "The tenant.", "^[a-z0-9][a-z0-9-]{0,62}$")],
                "responses": admin_errors(responses(&[("200", ok_json("The new token.", json!({
                    "type": "object", "required": ["name", "token"],
                    "properties": { "name": { "type": "string" }, "token": { "type": "string" } }
                })))]))
            },
            "delete": {
                "operationId": "revokeTenantToken", "tags": ["admin"],
                "summary": "Revoke the tenant's token.",
                "security": admin_security(),
                "parameters": [path_param("name", "The tenant.", "^[a-z0-9][a-z0-9-]{0,62}$")],
                "responses": admin_errors(responses(&[("204", json!({ "description": "Revoked." }))]))
            }
        },
        "/admin/tenants/{name}/limits": {
            "get": {
                "operationId": "getTenantLimits", "tags": ["admin"],
                "summary": "The tenant's effective limits, and its overrides of the configured defaults.",
                "security": admin_security(),
                "parameters": [path_param("name", "The tenant.", "^[a-z0-9][a-z0-9-]{0,62}$")],
                "responses": admin_errors(responses(&[("200", ok_json("The limits.", schema("TenantLimits")))]))
            },
            "put": {
                "operationId": "putTenantLimits", "tags": ["admin"],
                "summary": "Replace the tenant's overrides (limits not named go back to the defaults; {} clears them). All are checked before anything is written.",
                "security": admin_security(),
                "parameters": [path_param("name", "The tenant.", "^[a-z0-9][a-z0-9-]{0,62}$")],
                "requestBody": { "required": true, "content": { "application/json": { "schema": schema("LimitOverrides") } } },
                "responses": admin_errors(responses(&[
                    ("200", ok_json("The limits now.", schema("TenantLimits"))),
                    ("413", error("The body is too large.")),
                ]))
            }
        },
        "/admin/tenants/{name}/usage": { "get": {
            "operationId": "getTenantUsage", "tags": ["admin"],
            "summary": "What the tenant uses now: its active waiters, and what is left of each rate.",
            "security": admin_security(),
            "parameters": [path_param("name", "The tenant.", "^[a-z0-9][a-z0-9-]{0,62}$")],
            "responses": admin_errors(responses(&[("200", ok_json("The usage.", schema("TenantUsage")))]))
        }}
    });

    // The console and the routes it added (a second literal: one is at the macro's
    // recursion limit).
    let more_paths = json!({
        "/console": { "get": {
            "operationId": "console", "tags": ["operator"],
            "summary": "The web console (its page). Signs in with a tenant or the admin token, kept in the browser's sessionStorage; 404 when server.console is false.",
            "security": [],
            "responses": {
                "200": { "description": "The page (Content-Security-Policy: only 'self').", "content": { "text/html": { "schema": { "type": "string" } } } },
                "404": error("The console is disabled (server.console = false).")
            }
        }},
        "/console/{file}": { "get": {
            "operationId": "consoleFile", "tags": ["operator"],
            "summary": "A file of the web console (compiled into the binary); a name without a dot is the page.",
            "security": [],
            "parameters": [{ "name": "file", "in": "path", "required": true,
                "description": "The file name (index.html, app.js, app.css, icon.svg).", "schema": { "type": "string" } }],
            "responses": {
                "200": { "description": "The file, with its content type.", "content": {
                    "text/html": { "schema": { "type": "string" } },
                    "text/javascript": { "schema": { "type": "string" } },
                    "text/css": { "schema": { "type": "string" } },
                    "image/svg+xml": { "schema": { "type": "string" } }
                } },
                "404": error("No such file, or the console is disabled.")
            }
        }},
        "/v2/workflows/runs/{runId}/saved": { "get": {
            "operationId": "runSavedNotifications", "tags": ["waiters", "workflows"],
            "summary": "The lookback notifications saved for the run (consumed by its next waits), per event, oldest first. At most 100 events and 1,000 notifications; bodies up to 256 KiB in all (later bodies are null); expired ones are left out.",
            "security": tenant_security(),
            "parameters": [run_param()],
            "responses": tenant_errors(responses(&[
                ("200", ok_json("The saved notifications.", schema("SavedNotifications"))),
            ]))
        }},
        "/v2/limits": { "get": {
            "operationId": "ownLimits", "tags": ["limits"],
            "summary": "The calling tenant's effective limits, its overrides and what it uses now (the figures of the admin limits and usage routes).",
            "security": tenant_security(),
            "responses": tenant_errors(responses(&[("200", ok_json("Limits and usage.", schema("OwnLimits")))]))
        }},
    });
    let mut paths = paths;
    if let (Some(all), Value::Object(more)) = (paths.as_object_mut(), more_paths) {
        all.extend(more);
    }

    let header_map = json!({
        "type": "object",
        "description": "Header name to value, or to a list of values (the first is sent). Names and values must be valid HTTP header names and values.",
        "maxProperties": 100,
        "additionalProperties": { "anyOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" } }
        ] }
    });
    let count = |description: &str, minimum: u64| json!({ "type": "integer", "minimum": minimum, "description": description });
    let limit_properties = json!({
        "wait_per_sec": count("Rate of wait-class requests per second (0 = unlimited).", 0),
        "wait_burst": count("wait-class requests allowed at once.", 1),
        "notify_per_sec": count("Rate of notify-class requests per second (0 = unlimited).", 0),
        "notify_burst": count("notify-class requests allowed at once.", 1),
        "read_per_sec": count("Rate of the other tenant routes per second (0 = unlimited).", 0),
        "read_burst": count("read-class requests allowed at once.", 1),
        "active_waiters": count("Waiters the tenant may have registered at once (0 = unlimited).", 0),
        "waiters_per_event": count("Waiters one event id may have (0 = unlimited).", 0),
        "saved_per_run_event": { "type": "integer", "minimum": 1, "maximum": 1000, "description": "Saved lookback notifications per (run, event id)." },
        "notify_body_bytes": count("Largest notify body, bytes (at most server.max_body_bytes).", 1),
        "stored_bytes": count("Bytes the tenant may keep stored in Redis (0 = unlimited).", 0),
        "max_timeout": { "type": "string", "description": "Longest wait timeout, e.g. \"30d\" (at most waiters.max_timeout)." },
        "allow_cidrs": { "type": "string", "description": "Private or loopback ranges this tenant's deliveries may reach (comma-separated CIDRs; \"\" none)." },
        "allow_ports": { "type": "string", "description": "The only ports this tenant's deliveries may use (comma-separated; \"\" any)." }
    });
    let rate = json!({
        "type": "object", "required": ["perSec", "burst", "remaining", "reset"],
        "properties": {
            "perSec": { "type": "integer", "description": "0: unlimited." },
            "burst": { "type": ["integer", "null"] },
            "remaining": { "type": ["integer", "null"], "description": "Requests allowed at once now." },
            "reset": { "type": ["integer", "null"], "description": "When the bucket is full again, unix seconds." }
        }
    });
    let schemas = json!({
        "LimitOverrides": {
            "type": "object", "additionalProperties": false,
            "description": "Limit name to value; the limits not named use the configured defaults.",
            "properties": limit_properties.clone()
        },
        "TenantLimits": {
            "type": "object", "required": ["tenant", "limits", "overrides"],
            "properties": {
                "tenant": { "type": "string" },
                "limits": { "type": "object", "properties": limit_properties,
                    "required": crate::limits::Limits::NAMES },
                "overrides": schema("LimitOverrides")
            }
        },
        "TenantUsage": {
            "type": "object", "required": ["tenant", "activeWaiters", "maxActiveWaiters", "storedBytes", "maxStoredBytes", "rates"],
            "properties": {
                "tenant": { "type": "string" },
                "activeWaiters": { "type": "integer", "minimum": 0 },
                "maxActiveWaiters": { "type": "integer", "minimum": 0, "description": "0: unlimited." },
                "storedBytes": { "type": "integer", "minimum": 0, "description": "Bytes the tenant keeps stored in Redis (docs/limits.md, \"Stored bytes\")." },
                "maxStoredBytes": { "type": "integer", "minimum": 0, "description": "stored_bytes; 0: unlimited." },
                "rates": { "type": "object", "required": ["wait", "notify", "read"],
                    "properties": { "wait": rate.clone(), "notify": rate.clone(), "read": rate.clone() } }
            }
        },
        "OwnLimits": {
            "type": "object", "required": ["tenant", "limits", "overrides", "usage"],
            "properties": {
                "tenant": { "type": "string" },
                "limits": schema("LimitOverrides"),
                "overrides": schema("LimitOverrides"),
                "usage": { "type": "object", "required": ["activeWaiters", "maxActiveWaiters", "storedBytes", "maxStoredBytes", "rates"],
                    "properties": {
                        "activeWaiters": { "type": "integer", "minimum": 0 },
                        "maxActiveWaiters": { "type": "integer", "minimum": 0, "description": "0: unlimited." },
                        "storedBytes": { "type": "integer", "minimum": 0 },
                        "maxStoredBytes": { "type": "integer", "minimum": 0, "description": "0: unlimited." },
                        "rates": { "type": "object", "required": ["wait", "notify", "read"],
                            "properties": { "wait": rate.clone(), "notify": rate.clone(), "read": rate } }
                    } }
            }
        },
        "SavedNotifications": {
            "type": "object", "required": ["workflowRunId", "retentionSecs", "events", "truncated"],
            "properties": {
                "workflowRunId": { "type": "string" },
                "retentionSecs": { "type": "integer", "description": "waiters.saved_ttl_secs." },
                "truncated": { "type": "boolean", "description": "Some events, notifications or bodies were left out (the bounds)." },
                "events": { "type": "array", "items": {
                    "type": "object", "required": ["eventId", "count", "items"],
                    "properties": {
                        "eventId": { "type": "string" },
                        "count": { "type": "integer", "description": "Items in the event's saved list (expired ones included until a wait drops them)." },
                        "items": { "type": "array", "items": {
                            "type": "object", "required": ["messageId", "contentType", "savedAt", "expiresAt", "bytes", "body"],
                            "properties": {
                                "messageId": { "type": "string" },
                                "contentType": { "type": ["string", "null"] },
                                "savedAt": { "type": "integer", "description": "Unix milliseconds." },
                                "expiresAt": { "type": "integer", "description": "Unix milliseconds." },
                                "bytes": { "type": "integer", "minimum": 0 },
                                "body": { "type": ["string", "null"], "contentEncoding": "base64", "description": "Base64 of the body; null past the answer's byte bound." }
                            }
                        } }
                    }
                } }
            }
        },
        "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
        "HeaderMap": header_map,
        "WaitRequest": {
            "type": "object", "required": ["url"],
            "properties": {
                "url": { "type": "string", "description": "Where the event is delivered: an http or https URL (at most 2048 characters)." },
                "timeout": {
                    "description": "How long to wait: \"30s\", \"5m\", \"2h\", \"7d\", \"1h30m\", or seconds; at most waiters.max_timeout.",
                    "anyOf": [
                        { "type": "string" },
                        { "type": "integer", "minimum": 1 }
                    ]
                },
                "timeoutUrl": { "type": "string", "description": "Where the timeout is delivered (default: url)." },
                "timeoutBody": { "type": "string", "contentEncoding": "base64", "description": "Base64 (standard alphabet) of the timeout's body." },
                "timeoutHeaders": schema("HeaderMap"),
                "headers": schema("HeaderMap"),
                "step": { "type": "object", "required": ["stepId", "stepName"],
                    "description": "Upstash workflow step: the delivery is in the Upstash step format.",
                    "properties": { "stepId": { "type": "number" }, "stepName": { "type": "string" } } },
                "workflowRunId": { "type": "string", "pattern": ID_PATTERN },
                "retries": { "type": "integer", "minimum": 0, "maximum": 20 }
            }
        },
        "WaitResponse": { "oneOf": [
            { "type": "object", "required": ["waiterId", "status", "deadline"], "properties": {
                "waiterId": { "type": "string" }, "status": { "const": "waiting" },
                "deadline": { "type": "integer", "description": "Unix seconds." } } },
            { "type": "object", "required": ["waiterId", "status", "messageId"], "properties": {
                "waiterId": { "type": "string" }, "status": { "const": "notified" },
                "messageId": { "type": "string" } } }
        ] },
        "Waiter": {
            "type": "object",
            "required": ["url", "headers", "deadline", "timeoutUrl", "timeoutBody", "timeoutHeaders"],
            "properties": {
                "url": { "type": "string" },
                "headers": schema("HeaderMap"),
                "deadline": { "type": "integer", "description": "Unix seconds." },
                "timeoutUrl": { "type": "string" },
                "timeoutBody": { "type": ["string", "null"] },
                "timeoutHeaders": schema("HeaderMap")
            }
        },
        "NotifyResponse": {
            "type": "object",
            "required": ["waiter", "messageId", "deduplicated", "error", "workflowRunId", "workflowCreatedAt"],
            "properties": {
                "waiter": schema("Waiter"),
                "messageId": { "type": "string" },
                "deduplicated": { "type": "boolean" },
                "error": { "type": "string" },
                "workflowRunId": { "type": "string" },
                "workflowCreatedAt": { "type": "integer" },
                "waiterOmitted": { "type": "boolean", "description": "Past server.max_read_bytes of waiter records in one reply: the waiter is left out (empty), known by messageId and workflowRunId." }
            }
        },
        "HistoryEntry": {
            "type": "object", "required": ["at", "outcome"],
            "properties": {
                "at": { "type": "integer", "description": "Unix milliseconds." },
                "outcome": { "type": "string", "enum": [
                    "registered", "consumed", "notified", "nobody_waiting", "saved",
                    "timed_out", "delivered", "attempt_failed", "dead_lettered"
                ] },
                "waiterId": { "type": "string" },
                "workflowRunId": { "type": "string" },
                "messageId": { "type": "string" },
                "url": { "type": "string" },
                "status": { "type": "integer", "description": "HTTP status of the attempt (0: no response)." },
                "attempt": { "type": "integer" },
                "error": { "type": "string" },
                "deadline": { "type": "integer", "description": "Unix seconds." }
            }
        },
        "History": {
            "type": "object", "required": ["eventId", "retentionSecs", "entries"],
            "properties": {
                "eventId": { "type": "string" },
                "retentionSecs": { "type": "integer" },
                "entries": { "type": "array", "items": schema("HistoryEntry") }
            }
        },
        "RunEnded": {
            "type": "object", "required": ["workflowRunId", "state"],
            "properties": { "workflowRunId": { "type": "string" }, "state": { "type": "string" } }
        },
        "CancelledRuns": {
            "type": "object", "required": ["cancelled"],
            "properties": { "cancelled": { "type": "integer", "minimum": 0 } }
        },
        "RawStep": {
            "type": "object", "required": ["messageId", "body", "callType"],
            "properties": {
                "messageId": { "type": "string" },
                "body": { "type": "string", "description": "Standard base64 of the entry (entry 0: the initial payload)." },
                "callType": { "type": "string" }
            }
        },
        "BatchMessage": {
            "type": "object", "required": ["destination"],
            "properties": {
                "destination": { "type": "string", "pattern": "^https?://([A-Za-z][A-Za-z0-9-]{0,62}(\\.[A-Za-z][A-Za-z0-9-]{0,62})*|(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~!$&()*+,;=:@/-]*)?$", "description": "An http(s) URL." },
                "headers": { "type": "object", "maxProperties": 100,
                    "propertyNames": { "pattern": "^[A-Za-z0-9-]{1,64}$" },
                    "additionalProperties": { "type": "string", "pattern": "^[\\t -~\\u0080-\\uffff]*$" },
                    "description": "Upstash-* headers (the header grammar: Upstash-Forward-*, Upstash-Retries, Upstash-Delay, Upstash-Workflow-*, Upstash-Callback-*, Upstash-Failure-Callback-*) and Content-Type." },
                "body": { "type": "string" },
                "queue": { "type": ["string", "null"] }
            }
        },
        "PublishReply": {
            "type": "object",
            "properties": {
                "messageId": { "type": "string" }, "url": { "type": "string" },
                "deduplicated": { "type": "boolean" },
                "error": { "type": "string", "description": "Set (in a batch of several) for a step of a run that ended or does not exist; alone, that step gets 400." }
            }
        },
        "CancelResponse": {
            "type": "object", "required": ["workflowRunId", "cancelled", "waitersRemoved", "savedRemoved"],
            "properties": {
                "workflowRunId": { "type": "string" }, "cancelled": { "type": "boolean" },
                "waitersRemoved": { "type": "integer" }, "savedRemoved": { "type": "integer" }
            }
        },
        "SigningKeys": {
            "type": "object", "required": ["current", "next"],
            "properties": { "current": { "type": "string" }, "next": { "type": "string" } }
        },
        "DeadLetter": {
            "type": "object",
            "required": ["dlqId", "messageId", "eventId", "url", "outcome", "attempts", "createdAt", "deadLetteredAt"],
            "properties": {
                "dlqId": { "type": "string" }, "messageId": { "type": "string" },
                "eventId": { "type": "string" }, "url": { "type": "string" },
                "outcome": { "type": "string", "description": "What was being delivered: the event, or the timeout." },
                "workflowRunId": { "type": ["string", "null"] },
                "attempts": { "type": "integer" },
                "lastStatus": { "type": ["integer", "null"] },
                "lastError": { "type": ["string", "null"] },
                "createdAt": { "type": "integer" }, "deadLetteredAt": { "type": "integer" },
                "body": { "type": ["string", "null"] }
            }
        },
        "DeadLetterPage": {
            "type": "object", "required": ["messages", "cursor"],
            "properties": {
                "messages": { "type": "array", "items": schema("DeadLetter") },
                "cursor": { "type": ["string", "null"] }
            }
        },
        "NewTenant": {
            "type": "object", "required": ["name", "token", "currentSigningKey", "nextSigningKey"],
            "properties": {
                "name": { "type": "string" }, "token": { "type": "string" },
                "currentSigningKey": { "type": "string" }, "nextSigningKey": { "type": "string" }
            }
        },
        "TenantInfo": {
            "type": "object", "required": ["name", "createdAt"],
            "properties": { "name": { "type": "string" }, "createdAt": { "type": "integer" } }
        }
    });

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Herald",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Wait-for-event / notify service speaking the Upstash Workflow / QStash wire protocol. Errors are always {\"error\": \"…\"}."
        },
        "servers": [{ "url": "/" }],
        "security": tenant_security(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "The tenant's token." },
                "qstashToken": { "type": "apiKey", "in": "query", "name": "qstash_token", "description": "The tenant's token, as a query parameter." },
                "admin": { "type": "http", "scheme": "bearer", "description": "server.admin_token." }
            }
        }
    })
}

/// The methods the document gives for a route pattern (e.g. `["GET"]` for `/healthz`).
pub fn methods_of(pattern: &str) -> Vec<String> {
    DOCUMENT["paths"][pattern]
        .as_object()
        .map(|item| item.keys().map(|m| m.to_ascii_uppercase()).collect())
        .unwrap_or_default()
}

/// Every (METHOD, path) the document describes, e.g. `("POST", "/v2/wait/{eventId}")`.
pub fn operations() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = DOCUMENT["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                out.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_of_a_pattern_come_from_the_document() {
        assert_eq!(methods_of("/healthz"), ["GET"]);
        let mut token = methods_of("/admin/tenants/{name}/token");
        token.sort();
        assert_eq!(token, ["DELETE", "POST"]);
        assert!(methods_of("/nope").is_empty());
    }
}
