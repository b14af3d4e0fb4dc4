//! Generated operation sequences checked against a model of Herald's observable behaviour.
//!
//! A [`Case`] is a partition count and a sequence of [`Op`]s — waits (with and without a
//! run id, with and without an `Idempotency-Key`), broadcast and lookback notifies, run
//! cancels, waiter listings and `Advance` (real time passing every short deadline, saved
//! notification TTL and cancel tombstone) — over two tenants. Event and run ids come from
//! one small vocabulary per case, drawn to collide: short atoms joined by `:`, `.`, `_`,
//! `-`, ids that are prefixes of others and concatenations of two others (so that
//! `run` + `event` of one pair spells the same text as another pair's), ids over the
//! 256-character limit, and the same id used as event, as run, and in both tenants.
//!
//! Each case runs against a real Herald (its own key prefix and partition count, real
//! Redis of the suite's topology, a real recording receiver). [`Model`] predicts every
//! response (status, waiter id replays, message ids, the waiters a notify reached, what a
//! cancel removed), every delivery (exactly one per ended waiter: the event with its body
//! and message id, or the timeout; none for a waiting or cancelled one, none twice) and
//! the final state (every event's waiters, every saved notification drained FIFO).
//!
//! Time: Herald takes every time from Redis `TIME` and has no clock hook, so short
//! things last one real second (timeouts of `1`, `waiters.saved_ttl_secs = 1`, which is
//! also the cancel tombstone's TTL) and long ones an hour. The model keeps each short
//! thing's expiry as an interval from the client's clock around the request (Redis runs
//! on the same machine). `Advance` sleeps past the latest and waits for the timeouts to
//! be delivered; an operation that ends less than [`MARGIN_MS`] before the earliest
//! expiry (a loaded machine) makes the case inconclusive, and proptest discards it.
//!
//! Why proptest: it is maintained, runs on stable Rust, and shrinks structurally — a
//! failing sequence loses operations and its ids simplify (fewer atoms, `:` first, the
//! first atom) while it still fails — which is what turns a random history into a
//! regression test. Operations have no preconditions (an operation the model says must be
//! refused is checked for that refusal), so a plain `Vec` of operations shrinks freely and
//! the separate state-machine crate adds nothing. The minimal case is printed as a
//! ready-to-paste `#[test]` calling [`run_regression`].
//!
//! `HERALD_MODEL_CASES` sets the number of sequences (default [`DEFAULT_CASES`]),
//! `HERALD_MODEL_SEED` fixes the generator's seed; see docs/delivery.md, "Guarantees".

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use serde_json::{json, Value};

use crate::support::{test_settings, Receiver, RedisServer, TestApp};

/// Sequences run by default (CI); the long variant sets `HERALD_MODEL_CASES=10000`.
pub const DEFAULT_CASES: u32 = 50;
/// Longest generated sequence.
const MAX_OPS: usize = 24;
/// Waiters one event may hold in these runs (`limits.waiters_per_event`), so the quota
/// refusal is part of the histories.
const MAX_WAITERS: usize = 3;
/// Saved notifications one (run, event) may hold (`limits.saved_per_run_event`).
const MAX_SAVED: usize = 3;
/// Short timeouts, saved TTL and tombstone TTL, seconds.
const SHORT_SECS: u64 = 1;
/// An operation must end at least this long before the earliest expiry to be conclusive.
pub const MARGIN_MS: u64 = 100;
const TENANTS: [&str; 2] = ["acme", "globex"];

/// One operation of a sequence. Ids are the texts sent (they may be invalid: too long).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `POST /v2/wait/{event}`, optionally as a run (`Upstash-Workflow-RunId`) and with an
    /// `Idempotency-Key`; `short`: a 1 s timeout, else 1 h.
    Wait {
        tenant: usize,
        event: String,
        run: Option<String>,
        key: Option<String>,
        short: bool,
    },
    /// `POST /v2/notify/{event}` (broadcast).
    Notify { tenant: usize, event: String },
    /// `POST /v2/notify/{run}/{event}` (lookback), optionally with an `Idempotency-Key`.
    NotifyRun {
        tenant: usize,
        run: String,
        event: String,
        key: Option<String>,
    },
    /// `DELETE /v2/workflows/runs/{run}`.
    Cancel { tenant: usize, run: String },
    /// `GET /v2/waiters/{event}`.
    Waiters { tenant: usize, event: String },
    /// Real time passes every short deadline and TTL; the due timeouts are delivered.
    Advance,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// `redis.partitions`: 1 puts every key of a tenant in one slot.
    pub partitions: u16,
    pub ops: Vec<Op>,
}

// ---------------------------------------------------------------------------------------
// Generation

const VOCAB: usize = 5;

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["r", "y10", "z", "wfr_a", "evt-1", "a.b"]).prop_map(String::from),
        1 => Just("l".repeat(120)),
    ]
}

fn sep() -> impl Strategy<Value = char> {
    prop_oneof![4 => Just(':'), 1 => Just('.'), 1 => Just('_'), 1 => Just('-')]
}

/// An id of one to three atoms.
fn id() -> impl Strategy<Value = String> {
    (atom(), prop::collection::vec((sep(), atom()), 0..=2)).prop_map(|(first, rest)| {
        let mut id = first;
        for (s, a) in rest {
            id.push(s);
            id.push_str(&a);
        }
        id
    })
}

/// Five ids: three drawn, then `v0 s v1` and `v1 s' v2`, so that (run v0, event v4) and
/// (run v3, event v2) spell the same `v0:v1:v2`, and v0 is a prefix of v3.
fn vocabulary() -> impl Strategy<Value = Vec<String>> {
    (id(), id(), id(), sep(), sep()).prop_map(|(a, b, c, s1, s2)| {
        let ab = format!("{a}{s1}{b}");
        let bc = format!("{b}{s2}{c}");
        vec![a, b, c, ab, bc]
    })
}

#[derive(Clone, Debug)]
enum GenOp {
    Wait(usize, usize, Option<usize>, Option<usize>, bool),
    Notify(usize, usize),
    NotifyRun(usize, usize, usize, Option<usize>),
    Cancel(usize, usize),
    Waiters(usize, usize),
    Advance,
}

/// A (run, event) pair: half the time one of the two pairs that spell the same text.
fn run_event() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        1 => (0..VOCAB, 0..VOCAB),
        1 => prop::sample::select(vec![(0usize, 4usize), (3, 2)]),
    ]
}

fn gen_op() -> impl Strategy<Value = GenOp> {
    let t = || 0..TENANTS.len();
    let i = || 0..VOCAB;
    let k = || prop::option::of(0..2usize);
    prop_oneof![
        // Waits as runs and lookback notifies are the most stateful: most operations.
        12 => (t(), prop::option::weighted(0.7, run_event()), i(), k(), any::<bool>())
            .prop_map(|(t, re, e, k, s)| match re {
                Some((r, e)) => GenOp::Wait(t, e, Some(r), k, s),
                None => GenOp::Wait(t, e, None, k, s),
            }),
        4 => (t(), i()).prop_map(|(t, e)| GenOp::Notify(t, e)),
        10 => (t(), run_event(), k()).prop_map(|(t, (r, e), k)| GenOp::NotifyRun(t, r, e, k)),
        2 => (t(), i()).prop_map(|(t, r)| GenOp::Cancel(t, r)),
        2 => (t(), i()).prop_map(|(t, e)| GenOp::Waiters(t, e)),
        // Each costs a real second or more: rare.
        1 => Just(GenOp::Advance),
    ]
}

fn resolve(partitions: u16, vocab: &[String], ops: Vec<GenOp>) -> Case {
    let v = |i: usize| vocab[i].clone();
    let key = |k: Option<usize>| k.map(|k| format!("k{k}"));
    let ops = ops
        .into_iter()
        .map(|op| match op {
            GenOp::Wait(tenant, e, r, k, short) => Op::Wait {
                tenant,
                event: v(e),
                run: r.map(v),
                key: key(k),
                short,
            },
            GenOp::Notify(tenant, e) => Op::Notify {
                tenant,
                event: v(e),
            },
            GenOp::NotifyRun(tenant, r, e, k) => Op::NotifyRun {
                tenant,
                run: v(r),
                event: v(e),
                key: key(k),
            },
            GenOp::Cancel(tenant, r) => Op::Cancel { tenant, run: v(r) },
            GenOp::Waiters(tenant, e) => Op::Waiters {
                tenant,
                event: v(e),
            },
            GenOp::Advance => Op::Advance,
        })
        .collect();
    Case { partitions, ops }
}

pub fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![1u16, 2, 16]),
        vocabulary(),
        prop::collection::vec(gen_op(), 1..=MAX_OPS),
    )
        .prop_map(|(p, vocab, ops)| resolve(p, &vocab, ops))
}

// ---------------------------------------------------------------------------------------
// Printing a case as a regression test

fn lit(s: &str) -> String {
    let run = s.chars().take_while(|c| *c == 'l').count();
    if run >= 20 {
        // Long ids: keep the printed test readable.
        format!("format!(\"{{}}{}\", \"l\".repeat({run}))", &s[run..])
    } else {
        format!("{s:?}.into()")
    }
}

fn opt(s: &Option<String>) -> String {
    match s {
        None => "None".into(),
        Some(s) => format!("Some({})", lit(s)),
    }
}

impl Op {
    pub fn to_rust(&self) -> String {
        match self {
            Op::Wait {
                tenant,
                event,
                run,
                key,
                short,
            } => format!(
                "Op::Wait {{ tenant: {tenant}, event: {}, run: {}, key: {}, short: {short} }}",
                lit(event),
                opt(run),
                opt(key)
            ),
            Op::Notify { tenant, event } => {
                format!("Op::Notify {{ tenant: {tenant}, event: {} }}", lit(event))
            }
            Op::NotifyRun {
                tenant,
                run,
                event,
                key,
            } => format!(
                "Op::NotifyRun {{ tenant: {tenant}, run: {}, event: {}, key: {} }}",
                lit(run),
                lit(event),
                opt(key)
            ),
            Op::Cancel { tenant, run } => {
                format!("Op::Cancel {{ tenant: {tenant}, run: {} }}", lit(run))
            }
            Op::Waiters { tenant, event } => {
                format!("Op::Waiters {{ tenant: {tenant}, event: {} }}", lit(event))
            }
            Op::Advance => "Op::Advance".into(),
        }
    }
}

impl Case {
    pub fn to_rust(&self) -> String {
        let mut out = String::new();
        out.push_str("#[test]\nfn regression_CHANGE_ME() {\n    run_regression(Case {\n");
        let _ = writeln!(out, "        partitions: {},", self.partitions);
        out.push_str("        ops: vec![\n");
        for op in &self.ops {
            let _ = writeln!(out, "            {},", op.to_rust());
        }
        out.push_str("        ],\n    });\n}\n");
        out
    }
}

// ---------------------------------------------------------------------------------------
// The model

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn valid_id(id: &str) -> bool {
    herald::domain::EventId::parse(id).is_ok()
}

/// A time known only within an interval (client clock before and after the request).
#[derive(Clone, Copy, Debug)]
struct Span {
    lo: u64,
    hi: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting,
    /// Delivered the event: this body, this message id.
    Event {
        msg: String,
        body: String,
    },
    Timeout,
    Cancelled,
}

#[derive(Clone, Debug)]
struct MWaiter {
    tenant: usize,
    event: String,
    run: Option<String>,
    /// The receiver path its deliveries go to (unique per waiter).
    path: String,
    /// Deadline, for a short waiter.
    expiry: Option<Span>,
    state: State,
}

#[derive(Clone, Debug)]
struct MSaved {
    msg: String,
    body: String,
    expiry: Span,
}

#[derive(Default, Debug)]
pub struct Model {
    waiters: Vec<MWaiter>,
    /// (tenant, run, event) → saved notifications, oldest first.
    saved: HashMap<(usize, String, String), VecDeque<MSaved>>,
    /// (tenant, run) → the tombstone's expiry.
    cancelled: HashMap<(usize, String), Span>,
    /// (tenant, run, key, event) → the first reply of a repeatable wait.
    wait_replies: HashMap<(usize, Option<String>, String, String), Value>,
    /// (tenant, run, event, key) → the first reply of a lookback notify (body, outcome,
    /// message id header).
    notify_replies: HashMap<(usize, String, String, String), FirstReply>,
}

/// A lookback notify's first reply: body, `Herald-Notify-Outcome`, `Herald-Message-Id`.
type FirstReply = (Value, String, String);

impl Model {
    fn earliest_expiry(&self) -> Option<u64> {
        let waiters = self
            .waiters
            .iter()
            .filter(|w| w.state == State::Waiting)
            .filter_map(|w| w.expiry.map(|s| s.lo));
        let saved = self.saved.values().flatten().map(|s| s.expiry.lo);
        let tombstones = self.cancelled.values().map(|s| s.lo);
        waiters.chain(saved).chain(tombstones).min()
    }

    fn latest_expiry(&self) -> Option<u64> {
        let waiters = self
            .waiters
            .iter()
            .filter(|w| w.state == State::Waiting)
            .filter_map(|w| w.expiry.map(|s| s.hi));
        let saved = self.saved.values().flatten().map(|s| s.expiry.hi);
        let tombstones = self.cancelled.values().map(|s| s.hi);
        waiters.chain(saved).chain(tombstones).max()
    }

    fn waiting(&self, tenant: usize, event: &str) -> Vec<usize> {
        (0..self.waiters.len())
            .filter(|i| {
                let w = &self.waiters[*i];
                w.tenant == tenant && w.event == event && w.state == State::Waiting
            })
            .collect()
    }

    fn is_cancelled(&self, tenant: usize, run: &str) -> bool {
        self.cancelled.contains_key(&(tenant, run.to_owned()))
    }
}

// ---------------------------------------------------------------------------------------
// Running a case

/// Why a case did not pass.
pub enum Verdict {
    /// Herald and the model disagree.
    Fail(String),
    /// Timing made the case inconclusive (an operation too close to an expiry).
    Inconclusive(String),
}

type Checked = Result<(), Verdict>;

fn fail<T>(msg: impl Into<String>) -> Result<T, Verdict> {
    Err(Verdict::Fail(msg.into()))
}

struct Reply {
    status: u16,
    outcome: String,
    message_id: String,
    body: Value,
    /// Client clock before the request and after the reply.
    span: Span,
}

/// The shared parts of a run of many cases: one Redis and one receiver.
pub struct Env {
    pub redis: RedisServer,
    pub receiver: Receiver,
    counter: AtomicUsize,
}

impl Env {
    pub async fn start() -> Self {
        Env {
            redis: RedisServer::start(),
            receiver: Receiver::start().await,
            counter: AtomicUsize::new(0),
        }
    }

    /// Runs one case against a fresh Herald (own key prefix and partition count).
    pub async fn run(&self, case: &Case) -> Checked {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut settings = test_settings(&self.redis.url());
        settings.redis.partitions = case.partitions;
        settings.waiters.saved_ttl_secs = SHORT_SECS;
        settings.limits.defaults.waiters_per_event = MAX_WAITERS as u64;
        settings.limits.defaults.saved_per_run_event = MAX_SAVED as u64;
        settings.delivery.block_ms = 100;
        let app = TestApp::start(settings).await;
        let globex = app.tenant_token(TENANTS[1]).await;
        let mut run = CaseRun {
            tokens: [app.token.clone(), globex],
            app: &app,
            receiver: &self.receiver,
            prefix: format!("/c{n}"),
            model: Model::default(),
        };
        let result = run.all(case).await;
        app.stop().await;
        result
    }
}

struct CaseRun<'a> {
    app: &'a TestApp,
    receiver: &'a Receiver,
    tokens: [String; 2],
    prefix: String,
    model: Model,
}

impl CaseRun<'_> {
    async fn all(&mut self, case: &Case) -> Checked {
        for (i, op) in case.ops.iter().enumerate() {
            self.op(i, op)
                .await
                .map_err(|v| annotate(v, &format!("op {i}: {}", op.to_rust())))?;
        }
        // Final state: every event's waiters, then every saved notification drained.
        let mut i = case.ops.len();
        let mut finals = Vec::new();
        let mut events: Vec<&String> = case
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Wait { event, .. }
                | Op::Notify { event, .. }
                | Op::NotifyRun { event, .. }
                | Op::Waiters { event, .. } => Some(event),
                _ => None,
            })
            .filter(|e| valid_id(e))
            .collect();
        events.sort();
        events.dedup();
        for tenant in 0..TENANTS.len() {
            for event in &events {
                finals.push(Op::Waiters {
                    tenant,
                    event: (*event).clone(),
                });
            }
        }
        let mut drains: Vec<_> = self
            .model
            .saved
            .iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|((t, r, e), items)| (*t, r.clone(), e.clone(), items.len()))
            .collect();
        drains.sort();
        for (tenant, run, event, count) in drains {
            for _ in 0..count {
                finals.push(Op::Wait {
                    tenant,
                    event: event.clone(),
                    run: Some(run.clone()),
                    key: None,
                    short: false,
                });
            }
        }
        for op in &finals {
            self.op(i, op)
                .await
                .map_err(|v| annotate(v, &format!("final check {}", op.to_rust())))?;
            i += 1;
        }
        self.deliveries()
            .await
            .map_err(|v| annotate(v, "deliveries at the end"))
    }

    fn token(&self, tenant: usize) -> &str {
        &self.tokens[tenant]
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, Verdict> {
        let lo = now_ms();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return fail(format!("request failed: {e}")),
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let outcome = header("herald-notify-outcome");
        let message_id = header("herald-message-id");
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply {
            status,
            outcome,
            message_id,
            body,
            span: Span { lo, hi: now_ms() },
        })
    }

    /// The reply was in time: nothing short could have expired while it ran.
    fn conclusive(&self, reply: &Reply) -> Checked {
        match self.model.earliest_expiry() {
            Some(first) if reply.span.hi + MARGIN_MS >= first => {
                Err(Verdict::Inconclusive(format!(
                    "an operation ended {} ms before an expiry",
                    first.saturating_sub(reply.span.hi)
                )))
            }
            _ => Ok(()),
        }
    }

    async fn op(&mut self, i: usize, op: &Op) -> Checked {
        // Expiries are checked before the model changes (new items expire later).
        match op {
            Op::Wait {
                tenant,
                event,
                run,
                key,
                short,
            } => {
                let path = format!("{}/w{i}", self.prefix);
                let timeout = if *short {
                    json!(SHORT_SECS)
                } else {
                    json!("1h")
                };
                let mut request = self
                    .app
                    .http
                    .post(self.app.url(&format!("/v2/wait/{event}")))
                    .bearer_auth(self.token(*tenant))
                    .body(json!({"url": self.receiver.url(&path), "timeout": timeout}).to_string());
                if let Some(run) = run {
                    request = request.header("Upstash-Workflow-RunId", run);
                }
                if let Some(key) = key {
                    request = request.header("Idempotency-Key", key);
                }
                let reply = self.send(request).await?;
                self.conclusive(&reply)?;
                self.wait(*tenant, event, run, key, *short, path, reply)
            }
            Op::Notify { tenant, event } => {
                let body = format!("b{i}");
                let request = self
                    .app
                    .http
                    .post(self.app.url(&format!("/v2/notify/{event}")))
                    .bearer_auth(self.token(*tenant))
                    .body(body.clone());
                let reply = self.send(request).await?;
                self.conclusive(&reply)?;
                if !valid_id(event) {
                    return expect_status(&reply, 400);
                }
                expect_status(&reply, 201)?;
                let targets = self.model.waiting(*tenant, event);
                self.reached(&reply, &targets, None, &body)
            }
            Op::NotifyRun {
                tenant,
                run,
                event,
                key,
            } => {
                let body = format!("b{i}");
                let mut request = self
                    .app
                    .http
                    .post(self.app.url(&format!("/v2/notify/{run}/{event}")))
                    .bearer_auth(self.token(*tenant))
                    .body(body.clone());
                if let Some(key) = key {
                    request = request.header("Idempotency-Key", key);
                }
                let reply = self.send(request).await?;
                self.conclusive(&reply)?;
                self.notify_run(*tenant, run, event, key, body, reply)
            }
            Op::Cancel { tenant, run } => {
                let request = self
                    .app
                    .http
                    .delete(self.app.url(&format!("/v2/workflows/runs/{run}")))
                    .bearer_auth(self.token(*tenant));
                let reply = self.send(request).await?;
                self.conclusive(&reply)?;
                self.cancel(*tenant, run, reply)
            }
            Op::Waiters { tenant, event } => {
                let request = self
                    .app
                    .http
                    .get(self.app.url(&format!("/v2/waiters/{event}")))
                    .bearer_auth(self.token(*tenant));
                let reply = self.send(request).await?;
                self.conclusive(&reply)?;
                if !valid_id(event) {
                    return expect_status(&reply, 400);
                }
                expect_status(&reply, 200)?;
                let mut got: Vec<String> = reply
                    .body
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|w| w["url"].as_str().unwrap_or("?").to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let mut want: Vec<String> = self
                    .model
                    .waiting(*tenant, event)
                    .into_iter()
                    .map(|w| self.receiver.url(&self.model.waiters[w].path))
                    .collect();
                got.sort();
                want.sort();
                if got != want {
                    return fail(format!(
                        "waiters of {event}: Herald lists {got:?}, the model {want:?}"
                    ));
                }
                Ok(())
            }
            Op::Advance => self.advance().await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn wait(
        &mut self,
        tenant: usize,
        event: &str,
        run: &Option<String>,
        key: &Option<String>,
        short: bool,
        path: String,
        reply: Reply,
    ) -> Checked {
        if !valid_id(event) || run.as_deref().is_some_and(|r| !valid_id(r)) {
            return expect_status(&reply, 400);
        }
        let replay_key = key
            .as_ref()
            .map(|k| (tenant, run.clone(), k.clone(), event.to_owned()));
        if let Some(first) = replay_key
            .as_ref()
            .and_then(|k| self.model.wait_replies.get(k))
        {
            expect_status(&reply, 200)?;
            if &reply.body != first {
                return fail(format!(
                    "a repeated wait (same Idempotency-Key) must get the first reply {first}, got {}",
                    reply.body
                ));
            }
            return Ok(());
        }
        if let Some(run) = run {
            if self.model.is_cancelled(tenant, run) {
                return expect_status(&reply, 409);
            }
            let saved = self
                .model
                .saved
                .get_mut(&(tenant, run.clone(), event.to_owned()))
                .and_then(VecDeque::pop_front);
            if let Some(item) = saved {
                expect_status(&reply, 200)?;
                if reply.body["status"] != "notified"
                    || reply.body["messageId"] != item.msg.as_str()
                {
                    return fail(format!(
                        "the wait must consume the saved notification {} (body {:?}) of run {run} on {event}, got {}",
                        item.msg, item.body, reply.body
                    ));
                }
                self.model.waiters.push(MWaiter {
                    tenant,
                    event: event.to_owned(),
                    run: Some(run.clone()),
                    path,
                    expiry: None,
                    state: State::Event {
                        msg: item.msg,
                        body: item.body,
                    },
                });
                if let Some(k) = replay_key {
                    self.model.wait_replies.insert(k, reply.body);
                }
                return Ok(());
            }
        }
        if self.model.waiting(tenant, event).len() >= MAX_WAITERS {
            return expect_status(&reply, 422);
        }
        expect_status(&reply, 200)?;
        if reply.body["status"] == "notified" {
            return fail(format!(
                "the wait consumed a saved notification ({}) that run {run:?} does not have on \
                 {event}; the model registers a waiter",
                reply.body["messageId"]
            ));
        }
        if reply.body["status"] != "waiting" || !reply.body["waiterId"].is_string() {
            return fail(format!(
                "the wait must register a waiter, got {}",
                reply.body
            ));
        }
        let secs = if short { SHORT_SECS } else { 3600 };
        let deadline = reply.body["deadline"].as_u64().unwrap_or(0) * 1000;
        let (lo, hi) = (reply.span.lo + secs * 1000, reply.span.hi + secs * 1000);
        if deadline + 1000 < lo || deadline > hi {
            return fail(format!(
                "deadline {deadline} ms is not {secs} s after the request ({lo}..{hi})"
            ));
        }
        self.model.waiters.push(MWaiter {
            tenant,
            event: event.to_owned(),
            run: run.clone(),
            path,
            expiry: short.then_some(Span { lo, hi }),
            state: State::Waiting,
        });
        if let Some(k) = replay_key {
            self.model.wait_replies.insert(k, reply.body);
        }
        Ok(())
    }

    /// A notify's reply lists exactly `targets` (each with its run id); they end with
    /// the event.
    fn reached(
        &mut self,
        reply: &Reply,
        targets: &[usize],
        run: Option<&str>,
        body: &str,
    ) -> Checked {
        let Some(list) = reply.body.as_array() else {
            return fail(format!("a notify answers an array, got {}", reply.body));
        };
        let want_outcome = if targets.is_empty() {
            if run.is_some() {
                "saved"
            } else {
                "none"
            }
        } else {
            "delivered"
        };
        if reply.outcome != want_outcome {
            return fail(format!(
                "Herald-Notify-Outcome {:?}, the model says {want_outcome:?}",
                reply.outcome
            ));
        }
        let mut by_url: HashMap<String, (String, String)> = HashMap::new();
        for n in list {
            by_url.insert(
                n["waiter"]["url"].as_str().unwrap_or("?").to_owned(),
                (
                    n["messageId"].as_str().unwrap_or("").to_owned(),
                    n["workflowRunId"].as_str().unwrap_or("").to_owned(),
                ),
            );
        }
        let mut want: Vec<String> = targets
            .iter()
            .map(|w| self.receiver.url(&self.model.waiters[*w].path))
            .collect();
        let mut got: Vec<String> = by_url.keys().cloned().collect();
        want.sort();
        got.sort();
        if want != got || list.len() != targets.len() {
            return fail(format!(
                "the notify reached {got:?} ({} entries), the model says {want:?}",
                list.len()
            ));
        }
        for w in targets {
            let url = self.receiver.url(&self.model.waiters[*w].path);
            let (msg, run_id) = by_url[&url].clone();
            let want_run = self.model.waiters[*w].run.clone().unwrap_or_default();
            if run_id != want_run {
                return fail(format!(
                    "waiter {url}: workflowRunId {run_id:?}, the model says {want_run:?}"
                ));
            }
            self.model.waiters[*w].state = State::Event {
                msg,
                body: body.to_owned(),
            };
        }
        Ok(())
    }

    fn notify_run(
        &mut self,
        tenant: usize,
        run: &str,
        event: &str,
        key: &Option<String>,
        body: String,
        reply: Reply,
    ) -> Checked {
        if !valid_id(run) || !valid_id(event) {
            return expect_status(&reply, 400);
        }
        let replay_key = key
            .as_ref()
            .map(|k| (tenant, run.to_owned(), event.to_owned(), k.clone()));
        if let Some((first, outcome, msg)) = replay_key
            .as_ref()
            .and_then(|k| self.model.notify_replies.get(k))
        {
            expect_status(&reply, 201)?;
            if (&reply.body, &reply.outcome, &reply.message_id) != (first, outcome, msg) {
                return fail(format!(
                    "a repeated lookback notify (same Idempotency-Key) must get the first reply \
                     {first} ({outcome} {msg}), got {} ({} {})",
                    reply.body, reply.outcome, reply.message_id
                ));
            }
            return Ok(());
        }
        if self.model.is_cancelled(tenant, run) {
            return expect_status(&reply, 409);
        }
        let targets: Vec<usize> = self
            .model
            .waiting(tenant, event)
            .into_iter()
            .filter(|w| self.model.waiters[*w].run.as_deref() == Some(run))
            .collect();
        let list_key = (tenant, run.to_owned(), event.to_owned());
        if targets.is_empty() {
            let count = self.model.saved.get(&list_key).map_or(0, VecDeque::len);
            if count >= MAX_SAVED {
                return expect_status(&reply, 422);
            }
        }
        expect_status(&reply, 201)?;
        self.reached(&reply, &targets, Some(run), &body)?;
        if targets.is_empty() {
            if !reply.message_id.starts_with("msg_") {
                return fail(format!(
                    "a saved notification's Herald-Message-Id: {:?}",
                    reply.message_id
                ));
            }
            self.model
                .saved
                .entry(list_key)
                .or_default()
                .push_back(MSaved {
                    msg: reply.message_id.clone(),
                    body,
                    expiry: Span {
                        lo: reply.span.lo + SHORT_SECS * 1000,
                        hi: reply.span.hi + SHORT_SECS * 1000,
                    },
                });
        }
        if let Some(k) = replay_key {
            self.model
                .notify_replies
                .insert(k, (reply.body, reply.outcome, reply.message_id));
        }
        Ok(())
    }

    fn cancel(&mut self, tenant: usize, run: &str, reply: Reply) -> Checked {
        if !valid_id(run) {
            return expect_status(&reply, 400);
        }
        expect_status(&reply, 200)?;
        let mut waiters = 0;
        for w in &mut self.model.waiters {
            if w.tenant == tenant && w.run.as_deref() == Some(run) && w.state == State::Waiting {
                w.state = State::Cancelled;
                waiters += 1;
            }
        }
        let mut saved = 0;
        self.model.saved.retain(|(t, r, _), items| {
            let of_run = *t == tenant && r == run;
            if of_run {
                saved += items.len();
            }
            !of_run
        });
        let want = json!({
            "workflowRunId": run,
            "cancelled": true,
            "waitersRemoved": waiters,
            "savedRemoved": saved,
        });
        if reply.body != want {
            return fail(format!(
                "cancel answered {}, the model says {want}",
                reply.body
            ));
        }
        self.model.cancelled.insert(
            (tenant, run.to_owned()),
            Span {
                lo: reply.span.lo + SHORT_SECS * 1000,
                hi: reply.span.hi + SHORT_SECS * 1000,
            },
        );
        Ok(())
    }

    /// Sleeps past every short expiry; the short waiters time out (their deliveries are
    /// awaited), saved notifications and tombstones are gone.
    async fn advance(&mut self) -> Checked {
        let Some(latest) = self.model.latest_expiry() else {
            return Ok(());
        };
        // The scheduler ticks every 50 ms.
        let until = latest + 150;
        let now = now_ms();
        if until > now {
            tokio::time::sleep(Duration::from_millis(until - now)).await;
        }
        for w in &mut self.model.waiters {
            if w.state == State::Waiting && w.expiry.is_some() {
                w.state = State::Timeout;
            }
        }
        self.model.saved.clear();
        self.model.cancelled.clear();
        // The timeouts were enqueued by the scheduler: await their deliveries, so the
        // next operations see them gone.
        self.deliveries().await
    }

    /// Every delivery so far against the model: each ended waiter exactly one, with its
    /// outcome, body and message id; nothing else under this case's paths.
    async fn deliveries(&self) -> Checked {
        let expected: HashMap<String, &MWaiter> = self
            .model
            .waiters
            .iter()
            .filter(|w| matches!(w.state, State::Event { .. } | State::Timeout))
            .map(|w| (w.path.clone(), w))
            .collect();
        let arrived = crate::support::eventually(Duration::from_secs(15), || {
            let all = self.receiver.all();
            expected.keys().all(|p| all.iter().any(|r| &r.path == p))
        })
        .await;
        // Anything extra or duplicated shows within a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let prefix = format!("{}/", self.prefix);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in self
            .receiver
            .all()
            .into_iter()
            .filter(|r| r.path.starts_with(&prefix))
        {
            *seen.entry(r.path.clone()).or_default() += 1;
            let Some(w) = expected.get(&r.path) else {
                let state = self
                    .model
                    .waiters
                    .iter()
                    .find(|w| w.path == r.path)
                    .map(|w| format!("{:?}", w.state));
                return fail(format!(
                    "a delivery to {} ({:?}, body {:?}) the model does not expect (waiter state {state:?})",
                    r.path,
                    r.header("herald-outcome"),
                    r.body_text()
                ));
            };
            if r.header("herald-event-id") != Some(w.event.as_str()) {
                return fail(format!(
                    "delivery to {}: Herald-Event-Id {:?}, the waiter waits on {}",
                    r.path,
                    r.header("herald-event-id"),
                    w.event
                ));
            }
            match &w.state {
                State::Event { msg, body } => {
                    if r.header("herald-outcome") != Some("event")
                        || r.header("upstash-message-id") != Some(msg.as_str())
                        || r.body_text() != *body
                    {
                        return fail(format!(
                            "delivery to {}: {:?} {:?} body {:?}; the model says event {msg} body {body:?}",
                            r.path,
                            r.header("herald-outcome"),
                            r.header("upstash-message-id"),
                            r.body_text()
                        ));
                    }
                }
                _ => {
                    if r.header("herald-outcome") != Some("timeout") {
                        return fail(format!(
                            "delivery to {}: {:?}; the model says timeout",
                            r.path,
                            r.header("herald-outcome")
                        ));
                    }
                }
            }
        }
        if let Some((path, n)) = seen.iter().find(|(_, n)| **n > 1) {
            return fail(format!("{path} got {n} deliveries; a waiter ends once"));
        }
        if !arrived {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(p, _)| !seen.contains_key(*p))
                .map(|(p, w)| format!("{p} ({:?})", w.state))
                .collect();
            return fail(format!("deliveries never arrived: {missing:?}"));
        }
        Ok(())
    }
}

fn annotate(v: Verdict, context: &str) -> Verdict {
    match v {
        Verdict::Fail(m) => Verdict::Fail(format!("{context}: {m}")),
        Verdict::Inconclusive(m) => Verdict::Inconclusive(format!("{context}: {m}")),
    }
}

fn expect_status(reply: &Reply, want: u16) -> Checked {
    if reply.status != want {
        return fail(format!(
            "status {} ({}), the model says {want}",
            reply.status, reply.body
        ));
    }
    if want >= 400 && !reply.body["error"].is_string() {
        return fail(format!(
            "a refusal without an error message: {}",
            reply.body
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Entry points

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one fixed case (a shrunk failure kept as a regression test); an inconclusive run
/// (machine too slow for the 1 s expiries) is tried again, three times at most.
pub fn run_regression(case: Case) {
    let rt = runtime();
    let env = rt.block_on(Env::start());
    for _ in 0..3 {
        match rt.block_on(env.run(&case)) {
            Ok(()) => return,
            Err(Verdict::Fail(why)) => panic!("{why}"),
            Err(Verdict::Inconclusive(why)) => eprintln!("inconclusive, again: {why}"),
        }
    }
    panic!("three inconclusive runs: the machine is too slow for this case");
}

#[test]
fn generated_sequences_match_the_model() {
    let cases = env_number("HERALD_MODEL_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    let rt = runtime();
    let env = rt.block_on(Env::start());
    let mut config = Config {
        cases,
        failure_persistence: None,
        max_global_rejects: cases.max(50),
        max_shrink_iters: 4000,
        max_shrink_time: 300_000,
        ..Config::default()
    };
    if let Some(seed) = env_number("HERALD_MODEL_SEED") {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    let mut runner = TestRunner::new(config);
    let inconclusive = AtomicUsize::new(0);
    let ops = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let result = runner.run(&case_strategy(), |case| {
        let verdict = rt.block_on(env.run(&case));
        match verdict {
            Ok(()) => {
                ops.fetch_add(case.ops.len(), Ordering::Relaxed);
                Ok(())
            }
            Err(Verdict::Inconclusive(why)) => {
                inconclusive.fetch_add(1, Ordering::Relaxed);
                Err(TestCaseError::reject(why))
            }
            Err(Verdict::Fail(why)) => Err(TestCaseError::fail(why)),
        }
    });
    match result {
        Ok(()) => eprintln!(
            "model: {cases} sequences passed ({} operations, {} inconclusive and discarded) in {:.1} s on {:?}",
            ops.load(Ordering::Relaxed),
            inconclusive.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
            crate::support::redis::suite_topology(),
        ),
        Err(TestError::Fail(why, case)) => panic!(
            "Herald disagrees with the model: {why}\n\nminimal sequence, as a regression test for tests/it/model.rs:\n\n{}",
            case.to_rust()
        ),
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}

// ---------------------------------------------------------------------------------------
// Shrunk failures, kept

/// Saved lists were keyed `saved:<tenant>:<run>:<event>`: run `r:r` + event `r` and run
/// `r` + event `r:r` shared one list (one partition when P = 1, or when both events hash
/// to the same one), so one run consumed another run's notification (I3).
#[test]
fn regression_saved_lists_of_pairs_spelling_the_same_text_are_apart() {
    run_regression(Case {
        partitions: 1,
        ops: vec![
            Op::NotifyRun {
                tenant: 0,
                run: "r:r".into(),
                event: "r".into(),
                key: None,
            },
            Op::Wait {
                tenant: 0,
                event: "r:r".into(),
                run: Some("r".into()),
                key: None,
                short: false,
            },
        ],
    });
}

// ---------------------------------------------------------------------------------------
// Concurrency: the same operations from several clients at once, checked for I1-I3, I5

/// A waiter the concurrent clients registered: tenant, event, run, short, and the
/// receiver paths of the requests that named it (several when a key repeated it).
type SeenWaiter = (usize, String, Option<String>, bool, Vec<String>);

/// What the concurrent clients saw.
#[derive(Default)]
struct History {
    /// waiter id → (tenant, event, run, short, receiver paths of the requests that named it).
    waiters: HashMap<String, SeenWaiter>,
    /// message id of a consumed saved notification → waiter ids that reported consuming it.
    consumed: HashMap<String, Vec<String>>,
    /// message id of a saved notification → (tenant, run, event, body).
    saved: HashMap<String, (usize, String, String, String)>,
    /// message id → (tenant, event, body, url) of every delivery a notify reported.
    reported: HashMap<String, (usize, String, String, String)>,
    /// (tenant, run) of every cancel.
    cancelled: Vec<(usize, String)>,
    /// Message ids reported by replays of one idempotent notify that sent different
    /// bodies: their delivery's message id is checked, its body may be either.
    ambiguous: std::collections::HashSet<String>,
}

impl Env {
    /// Runs `case`'s operations (Advance aside) from `clients` concurrent clients, lets
    /// every short thing expire, and checks: each waiter at most one delivery, exactly one
    /// when a notify reported it or it was short (I1); each delivery a notify reported is
    /// delivered with its body (I2); a saved notification is consumed by at most one
    /// waiter, of the same (tenant, run, event), with its body (I3); a notify reaches only
    /// its tenant's waiters of its event (I5).
    pub async fn run_concurrently(&self, case: &Case, clients: usize) -> Checked {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut settings = test_settings(&self.redis.url());
        settings.redis.partitions = case.partitions;
        settings.waiters.saved_ttl_secs = SHORT_SECS;
        settings.limits.defaults.waiters_per_event = MAX_WAITERS as u64;
        settings.limits.defaults.saved_per_run_event = MAX_SAVED as u64;
        let app = TestApp::start(settings).await;
        let tokens = [app.token.clone(), app.tenant_token(TENANTS[1]).await];
        let prefix = format!("/k{n}");
        let history = std::sync::Mutex::new(History::default());
        let result = self
            .concurrent_ops(case, clients, &app, &tokens, &prefix, &history)
            .await;
        let result = match result {
            Ok(()) => self.concurrent_check(&history.into_inner().unwrap()).await,
            e => e,
        };
        app.stop().await;
        result
    }

    async fn concurrent_ops(
        &self,
        case: &Case,
        clients: usize,
        app: &TestApp,
        tokens: &[String; 2],
        prefix: &str,
        history: &std::sync::Mutex<History>,
    ) -> Checked {
        let client = |c: usize| async move {
            for (i, op) in case
                .ops
                .iter()
                .enumerate()
                .filter(|(i, _)| i % clients == c)
            {
                let body = format!("b{i}");
                match op {
                    Op::Wait {
                        tenant,
                        event,
                        run,
                        key,
                        short,
                    } => {
                        let path = format!("{prefix}/w{i}");
                        let timeout = if *short {
                            json!(SHORT_SECS)
                        } else {
                            json!("1h")
                        };
                        let mut request = app
                            .http
                            .post(app.url(&format!("/v2/wait/{event}")))
                            .bearer_auth(&tokens[*tenant])
                            .body(
                                json!({"url": self.receiver.url(&path), "timeout": timeout})
                                    .to_string(),
                            );
                        if let Some(run) = run {
                            request = request.header("Upstash-Workflow-RunId", run);
                        }
                        if let Some(key) = key {
                            request = request.header("Idempotency-Key", key);
                        }
                        let (status, reply) = app.send(request).await;
                        if status >= 500 {
                            return fail(format!("op {i}: {status} {reply}"));
                        }
                        let Some(id) = reply["waiterId"].as_str() else {
                            continue;
                        };
                        let mut h = history.lock().unwrap();
                        h.waiters
                            .entry(id.to_owned())
                            .or_insert_with(|| {
                                (*tenant, event.clone(), run.clone(), *short, Vec::new())
                            })
                            .4
                            .push(path);
                        if let Some(msg) = reply["messageId"].as_str() {
                            let ids = h.consumed.entry(msg.to_owned()).or_default();
                            if !ids.iter().any(|w| w == id) {
                                ids.push(id.to_owned());
                            }
                        }
                    }
                    Op::Notify { tenant, event } | Op::NotifyRun { tenant, event, .. } => {
                        let (path, key) = match op {
                            Op::NotifyRun { run, key, .. } => {
                                (format!("/v2/notify/{run}/{event}"), key.clone())
                            }
                            _ => (format!("/v2/notify/{event}"), None),
                        };
                        let mut request = app
                            .http
                            .post(app.url(&path))
                            .bearer_auth(&tokens[*tenant])
                            .body(body.clone());
                        if let Some(key) = key {
                            request = request.header("Idempotency-Key", key);
                        }
                        let response = match request.send().await {
                            Ok(r) => r,
                            Err(e) => return fail(format!("op {i}: {e}")),
                        };
                        let status = response.status().as_u16();
                        let saved_msg = response
                            .headers()
                            .get("herald-message-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let text = response.text().await.unwrap_or_default();
                        let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        if status >= 500 {
                            return fail(format!("op {i}: {status} {reply}"));
                        }
                        let mut h = history.lock().unwrap();
                        // A replay (same idempotency key) reports the first call's message
                        // id. Which call Herald applied first is not the order their replies
                        // reach the clients: when two calls sharing a message id sent
                        // different bodies, either body may be the one delivered.
                        if let (Op::NotifyRun { run, .. }, Some(msg)) = (op, saved_msg) {
                            match h.saved.get(&msg) {
                                Some(first) if first.3 != *body => {
                                    h.ambiguous.insert(msg);
                                }
                                Some(_) => {}
                                None => {
                                    h.saved.insert(
                                        msg,
                                        (*tenant, run.clone(), event.clone(), body.clone()),
                                    );
                                }
                            }
                        }
                        for d in reply.as_array().into_iter().flatten() {
                            let msg = d["messageId"].as_str().unwrap_or("").to_owned();
                            let url = d["waiter"]["url"].as_str().unwrap_or("").to_owned();
                            match h.reported.get(&msg) {
                                Some(first) if first.2 != *body => {
                                    h.ambiguous.insert(msg);
                                }
                                Some(_) => {}
                                None => {
                                    h.reported
                                        .insert(msg, (*tenant, event.clone(), body.clone(), url));
                                }
                            }
                        }
                    }
                    Op::Cancel { tenant, run } => {
                        let (status, reply) = app
                            .send(
                                app.http
                                    .delete(app.url(&format!("/v2/workflows/runs/{run}")))
                                    .bearer_auth(&tokens[*tenant]),
                            )
                            .await;
                        if status >= 500 {
                            return fail(format!("op {i}: {status} {reply}"));
                        }
                        history
                            .lock()
                            .unwrap()
                            .cancelled
                            .push((*tenant, run.clone()));
                    }
                    Op::Waiters { .. } | Op::Advance => {}
                }
            }
            Ok(())
        };
        let results = futures_util::future::join_all((0..clients).map(client)).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    async fn concurrent_check(&self, h: &History) -> Checked {
        // Every short deadline and TTL passes, the timeouts are delivered.
        tokio::time::sleep(Duration::from_millis(SHORT_SECS * 1000 + 300)).await;
        let path_of_url = |url: &str| {
            url.split_once(&format!(":{}", self.receiver.port))
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default()
        };
        let waiter_of_path: HashMap<String, &String> = h
            .waiters
            .iter()
            .flat_map(|(id, w)| w.4.iter().map(move |p| (p.clone(), id)))
            .collect();
        // I3: a saved notification is consumed at most once, by its own (tenant, run, event).
        for (msg, ids) in &h.consumed {
            if ids.len() > 1 {
                return fail(format!(
                    "saved notification {msg} consumed by waiters {ids:?} (I3)"
                ));
            }
            let w = &h.waiters[&ids[0]];
            match h.saved.get(msg) {
                Some((t, r, e, _)) if (*t, Some(r), e) == (w.0, w.2.as_ref(), &w.1) => {}
                other => {
                    return fail(format!(
                        "waiter {} ({}, {:?}, {}) consumed {msg}, saved as {other:?} (I3)",
                        ids[0], TENANTS[w.0], w.2, w.1
                    ))
                }
            }
        }
        // I5 and I2: a notify reached its own tenant's waiters of its event.
        let mut expected: HashMap<&String, (String, Option<String>)> = HashMap::new();
        for (msg, (tenant, event, body, url)) in &h.reported {
            let Some(id) = waiter_of_path.get(&path_of_url(url)) else {
                return fail(format!("a notify reported {url}, which no wait registered"));
            };
            let w = &h.waiters[*id];
            if (w.0, &w.1) != (*tenant, event) {
                return fail(format!(
                    "a notify of {} on {event} reached a waiter of {} on {} (I5)",
                    TENANTS[*tenant], TENANTS[w.0], w.1
                ));
            }
            let body = (!h.ambiguous.contains(msg)).then(|| body.clone());
            if expected.insert(*id, (msg.clone(), body)).is_some() {
                return fail(format!("waiter {id} reported by two notifies (I1)"));
            }
        }
        for (msg, ids) in &h.consumed {
            let body = h
                .saved
                .get(msg)
                .filter(|_| !h.ambiguous.contains(msg))
                .map(|s| s.3.clone());
            if expected.insert(&ids[0], (msg.clone(), body)).is_some() {
                return fail(format!("waiter {} notified and consuming (I1)", ids[0]));
            }
        }
        let deliveries = |id: &String| -> Vec<crate::support::receiver::Recorded> {
            let paths = &h.waiters[id].4;
            self.receiver
                .all()
                .into_iter()
                .filter(|r| paths.contains(&r.path))
                .collect()
        };
        let settled = crate::support::eventually(Duration::from_secs(15), || {
            h.waiters.iter().all(|(id, w)| {
                let n = deliveries(id).len();
                n >= usize::from(expected.contains_key(id) || w.3)
            })
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (id, w) in &h.waiters {
            let got = deliveries(id);
            match (expected.get(id), got.as_slice()) {
                (Some((msg, body)), [one]) => {
                    if one.header("upstash-message-id") != Some(msg.as_str())
                        || body.as_ref().is_some_and(|b| one.body_text() != *b)
                    {
                        return fail(format!(
                            "waiter {id}: delivered {:?} {:?}, reported {msg} {body:?} (I2)",
                            one.header("upstash-message-id"),
                            one.body_text()
                        ));
                    }
                }
                (None, [one]) if w.3 && one.header("herald-outcome") == Some("timeout") => {}
                (None, []) if !w.3 => {}
                // A short waiter cancelled with its run: no delivery.
                (None, []) if w.2.as_ref().is_some_and(|r| h.cancelled.contains(&(w.0, r.clone()))) => {}
                (want, got) => {
                    return fail(format!(
                        "waiter {id} ({}, {}, {:?}, short {}): deliveries {:?}, expected {want:?} (I1){}",
                        TENANTS[w.0],
                        w.1,
                        w.2,
                        w.3,
                        got.iter()
                            .map(|r| (r.header("herald-outcome").map(str::to_owned), r.body_text()))
                            .collect::<Vec<_>>(),
                        if settled { "" } else { "; deliveries still missing after 15 s" }
                    ))
                }
            }
        }
        Ok(())
    }
}

#[test]
fn concurrent_sequences_keep_the_invariants() {
    let cases = env_number("HERALD_MODEL_CONCURRENT_CASES").unwrap_or(12) as u32;
    let rt = runtime();
    let env = rt.block_on(Env::start());
    let mut config = Config {
        cases,
        failure_persistence: None,
        max_shrink_time: 300_000,
        ..Config::default()
    };
    if let Some(seed) = env_number("HERALD_MODEL_SEED") {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    let mut runner = TestRunner::new(config);
    let result = runner.run(&(case_strategy(), 2..=4usize), |(case, clients)| {
        match rt.block_on(env.run_concurrently(&case, clients)) {
            Ok(()) => Ok(()),
            Err(Verdict::Inconclusive(why)) => Err(TestCaseError::reject(why)),
            Err(Verdict::Fail(why)) => Err(TestCaseError::fail(why)),
        }
    });
    if let Err(e) = result {
        match e {
            TestError::Fail(why, (case, clients)) => panic!(
                "{why}\n\nminimal case ({clients} clients, operation i on client i % {clients}):\n\n{}",
                case.to_rust()
            ),
            TestError::Abort(why) => panic!("aborted: {why}"),
        }
    }
}
