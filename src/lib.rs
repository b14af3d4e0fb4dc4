//! Herald: a self-hosted, Redis-backed, multi-tenant wait-for-event / notify service that
//! speaks the Upstash Workflow / QStash wire protocol for wait, notify and waiters.
//!
//! A tenant app registers *waiters* ("POST to this URL when event `order-42` happens, or
//! to that URL if it has not happened in 10 minutes"); anyone with the tenant's token
//! *notifies* the event; Herald delivers it to every waiter, exactly one outcome per
//! waiter, retried until it lands.
//!
//! # Layout
//!
//! - [`cli`], [`dev`] — the `herald` command and its one-command local mode.
//! - [`app`] — start-up (shared state, listener, roles) and graceful shutdown.
//! - [`config`] — layered settings (`config/default.toml` → file → `HERALD_*` env).
//! - [`api`] — HTTP routes, one file per resource; [`api::auth`] authenticates tenants.
//! - [`error`] — the one mapping of errors to `{"error": …}` responses.
//! - [`domain`] — validated values (event/run ids, tenants, durations, header maps).
//! - [`waiter`] — the stored waiter and delivery-job shapes and their Upstash views.
//! - [`store`] — Redis: key names ([`store::keys`], the only place they are built),
//!   connections, one typed wrapper per Lua script ([`store::scripts`]), tenants, dead
//!   letters ([`store::dead_letters`]).
//! - [`delivery`] — stream consumers and crash recovery, the guarded HTTP client, signing,
//!   retry schedule, per-tenant fairness ([`delivery::fairness`]).
//! - [`scheduler`] — deadlines → timeout deliveries, due retries → streams.
//! - [`limits`] — per-tenant rate limits and quotas, and how a request is admitted.
//! - [`telemetry`] — logs, OpenTelemetry traces (OTLP) and Prometheus metrics.
//! - [`history`] — the recent outcomes of each event, for "why did my run not resume?".
//! - [`remote`] — the `herald` commands that talk to a running Herald over HTTP.
//! - [`workflow`] — the Upstash Workflow runtime: runs, their history and messages
//!   (`/v2/batch`, `/v2/publish`), with its scripts in `lua/workflow/`.
//!
//! Every state change is one Lua script in `lua/` (see `lua/README.md`), so any number of
//! api and worker processes can run against one Redis, Sentinel or Redis Cluster.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dev;
pub mod domain;
pub mod error;
pub mod history;
pub mod limits;
pub mod remote;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod waiter;
pub mod workflow;
