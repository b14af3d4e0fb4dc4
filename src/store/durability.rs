//! "Acknowledged means replicated" (opt-in, `redis.wait_replicas` > 0).
//!
//! Inside an API request ([`scoped`]), every script the client is answered on
//! ([`CONFIRMED_SCRIPTS`]) is sent together with `WAIT <replicas> <timeout>` as one
//! pipeline on a lane ([`super::lanes`]): a connection of its own that carries one such
//! write at a time and nothing else. `WAIT` waits for the replication offset of the
//! connection that wrote, and a pipeline cannot be split by a reconnect or a Sentinel
//! switch in between (a `WAIT` on a fresh connection would confirm at once, having written
//! nothing). On a cluster the lane is one to the master of the write's slot; a `MOVED`
//! answer (the write did not run) updates the lanes' slot map and the write goes once
//! more to the new master.
//!
//! Why lanes: Redis holds every later command of a client while it is blocked in `WAIT`.
//! On the shared connections, a master without an in-sync replica (a promoted replica
//! whose old master is not back yet) made every request, health check and slot query
//! queue behind `WAIT`s that could not be satisfied: measured, a cluster's request rate
//! fell from thousands per second to tens until the old master rejoined, and requests
//! timed out. On lanes only the confirmed writes to that master wait.
//!
//! The whole write ends within `redis.wait_timeout_ms` plus a round trip: the time spent
//! waiting for a free lane is taken from the `WAIT` timeout, and a write that finds no
//! lane free within it is not sent at all. When fewer replicas confirm within the
//! timeout (or `WAIT` fails), the write has been applied on the master but may or may not
//! survive a failover: the request fails with [`StoreError::NotReplicated`] (503), never a
//! success; with no lane free it fails the same way, having written nothing.
//!
//! What this does not give: consensus. A replica that confirmed can still lose to one
//! that did not (Sentinel and Cluster pick the replica with the highest offset they can
//! see, best effort); a master that keeps taking writes while cut off answers 503 to
//! them but they are applied there until it is demoted. See docs/operating.md.
//!
//! Workers (deliveries, timeouts, retries) never wait: no client is answered on their
//! writes, and what they write is re-derived from the API's replicated writes.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, Pipeline, RedisFuture, ScriptInvocation, Value};

use super::lanes::{first_key, Lane, Lanes, NoLane};
use super::StoreError;
use crate::config::RedisSettings;

/// Scripts whose reply a client acts on; the rest (rate limits, worker scripts) never wait.
pub const CONFIRMED_SCRIPTS: [&str; 7] = [
    "wait",
    "notify",
    "notify_run",
    "cancel",
    "redrive",
    "workflow/submit",
    "workflow/finish",
];

/// How many replicas must confirm a write, within how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub replicas: u32,
    pub timeout_ms: u64,
}

impl Policy {
    /// The configured policy, or `None` when it is off (`redis.wait_replicas = 0`).
    pub fn from_settings(settings: &RedisSettings) -> Option<Self> {
        (settings.wait_replicas > 0).then_some(Policy {
            replicas: settings.wait_replicas,
            timeout_ms: settings.wait_timeout_ms,
        })
    }
}

/// The policy of a process and the lanes its confirmed writes take.
#[derive(Clone)]
pub struct Confirm {
    pub policy: Policy,
    lanes: Lanes,
}

impl Confirm {
    /// `None` when the policy is off or the pool has no lanes.
    pub fn new(policy: Option<Policy>, lanes: Option<Lanes>) -> Option<Self> {
        Some(Confirm {
            policy: policy?,
            lanes: lanes?,
        })
    }
}

tokio::task_local! {
    static CONFIRM: Option<Confirm>;
}

/// Runs `work` (one API request) with `confirm`: its confirmed scripts wait for replicas.
pub async fn scoped<F: Future>(confirm: Option<Confirm>, work: F) -> F::Output {
    CONFIRM.scope(confirm, work).await
}

/// What applies to script `name` here: `None` outside an API request, when the setting
/// is off, or for a script no client is answered on.
pub fn confirm_for(name: &str) -> Option<Confirm> {
    if !CONFIRMED_SCRIPTS.contains(&name) {
        return None;
    }
    CONFIRM.try_with(|c| c.clone()).ok().flatten()
}

/// Runs `invocation` (reloading the script on `NOSCRIPT`) followed by `WAIT` on a lane;
/// fails with [`StoreError::NotReplicated`] unless enough replicas confirm.
pub async fn invoke_replicated(
    invocation: &ScriptInvocation<'_>,
    confirm: &Confirm,
) -> Result<Value, StoreError> {
    let policy = confirm.policy;
    let mut replicated = Replicated {
        lanes: &confirm.lanes,
        lane: None,
        policy,
        deadline: Instant::now() + Duration::from_millis(policy.timeout_ms),
        confirmed: None,
        no_lane: None,
    };
    let value: Value = match invocation.invoke_async(&mut replicated).await {
        Ok(value) => value,
        Err(_) if replicated.no_lane.is_some() => {
            let why = replicated.no_lane.take().unwrap_or_default();
            return Err(not_replicated(policy, format!("{NO_LANE}: {why}")));
        }
        Err(e) => return Err(e.into()),
    };
    match replicated.confirmed {
        Some(Ok(n)) if n >= i64::from(policy.replicas) => Ok(value),
        Some(Ok(n)) => Err(not_replicated(policy, format!("{n} confirmed"))),
        Some(Err(e)) => Err(not_replicated(policy, e)),
        None => Err(StoreError::Reply("the script ran without WAIT".into())),
    }
}

/// What a write that found no lane (it was not sent) answers.
const NO_LANE: &str = "no connection free for a replicated write";

fn not_replicated(policy: Policy, detail: String) -> StoreError {
    let e = StoreError::NotReplicated {
        wanted: policy.replicas,
        timeout_ms: policy.timeout_ms,
        detail,
    };
    tracing::warn!(error = %e, "write not confirmed by the replicas");
    crate::telemetry::metrics::redis_error(true);
    e
}

/// A connection that sends every script call as the pipeline `EVALSHA/EVAL …; WAIT n t`
/// on a lane taken for the call's first key, and keeps `WAIT`'s answer; other commands
/// (`SCRIPT LOAD` after a `NOSCRIPT`) go on the same lane.
struct Replicated<'c> {
    lanes: &'c Lanes,
    lane: Option<Lane>,
    policy: Policy,
    /// When the write must be answered: the `WAIT` timeout counts from the start.
    deadline: Instant,
    /// Replicas that confirmed the last script call, or why `WAIT` failed.
    confirmed: Option<Result<i64, String>>,
    /// Why no lane could be taken: the write was not sent.
    no_lane: Option<String>,
}

fn is_script_call(cmd: &Cmd) -> bool {
    matches!(
        cmd.args_iter().next(),
        Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")
    )
}

/// The slot and master of a `MOVED slot host:port` reply.
fn moved_to(reply: &Value) -> Option<(u16, String, u16)> {
    let Value::ServerError(e) = reply else {
        return None;
    };
    if e.code() != "MOVED" {
        return None;
    }
    let mut parts = e.details()?.split_whitespace();
    let slot = parts.next()?.parse().ok()?;
    let (host, port) = parts.next()?.rsplit_once(':')?;
    Some((slot, host.to_owned(), port.parse().ok()?))
}

impl Replicated<'_> {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The lane of this write: the one taken, or a free one for `key`'s master.
    async fn lane(&mut self, key: Option<&[u8]>) -> redis::RedisResult<&mut Lane> {
        if self.lane.is_none() {
            let taken = self.lanes.take(key, self.left()).await;
            let lane = match taken {
                Ok(lane) => lane,
                Err(e) => {
                    let why = match e {
                        NoLane::Busy => format!(
                            "every connection to the master stayed busy for {} ms (its replicas do not confirm)",
                            self.policy.timeout_ms
                        ),
                        NoLane::NoMaster(why) => why,
                    };
                    self.no_lane = Some(why.clone());
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        NO_LANE,
                        why,
                    )));
                }
            };
            self.lane = Some(lane);
        }
        Ok(self.lane.as_mut().expect("just taken"))
    }
}

impl ConnectionLike for Replicated<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if !is_script_call(cmd) {
                return self.lane(None).await?.req_packed_command(cmd).await;
            }
            let key = first_key(cmd);
            let mut moves = 0;
            let (waited, script) = loop {
                // WAIT gets what is left of the timeout (at least 1 ms: 0 would block
                // for ever).
                let left = self.left().as_millis().max(1) as u64;
                let mut pipe = Pipeline::new();
                pipe.add_command(cmd.clone());
                pipe.cmd("WAIT").arg(self.policy.replicas).arg(left);
                let lane = self.lane(key.as_deref()).await?;
                let mut replies = match lane.req_packed_commands(&pipe, 0, 2).await {
                    Ok(replies) => replies,
                    Err(e) => {
                        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
                        {
                            self.lanes.connection_failed();
                        }
                        return Err(e);
                    }
                };
                let (Some(waited), Some(script)) = (replies.pop(), replies.pop()) else {
                    return Err((
                        redis::ErrorKind::Client,
                        "a pipeline of two got fewer replies",
                    )
                        .into());
                };
                match moved_to(&script) {
                    // The slot moved (a failover): the script did not run. Once more on
                    // the new master's lane.
                    Some((slot, host, port)) if moves == 0 => {
                        moves += 1;
                        self.lanes.moved(slot, &host, port);
                        self.lane = None;
                    }
                    _ => break (waited, script),
                }
            };
            self.confirmed = Some(match waited {
                Value::Int(n) => Ok(n),
                Value::ServerError(e) => Err(format!("WAIT failed: {e:?}")),
                other => Err(format!("WAIT answered {other:?}")),
            });
            Ok(script)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.lane(None)
                .await?
                .req_packed_commands(pipeline, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_script_calls_are_followed_by_wait() {
        assert!(is_script_call(redis::cmd("EVALSHA").arg("abc").arg(0)));
        assert!(is_script_call(redis::cmd("eval").arg("return 1").arg(0)));
        assert!(!is_script_call(redis::cmd("SCRIPT").arg("LOAD").arg("x")));
    }

    #[tokio::test]
    async fn the_policy_applies_to_confirmed_scripts_inside_a_scope_only() {
        let policy = Policy {
            replicas: 1,
            timeout_ms: 100,
        };
        let target = std::sync::Arc::new(super::super::redis::Target::Standalone(Box::new(
            redis::Client::open("redis://127.0.0.1:1").unwrap(),
        )));
        let lanes = Lanes::single(target, Duration::from_secs(1), Duration::from_secs(1));
        let confirm = Confirm::new(Some(policy), Some(lanes));
        let policy_for = |name| confirm_for(name).map(|c| c.policy);
        assert_eq!(policy_for("wait"), None, "outside a request");
        scoped(confirm.clone(), async {
            assert_eq!(policy_for("wait"), Some(policy));
            assert_eq!(policy_for("redrive"), Some(policy));
            assert_eq!(policy_for("rate_limit"), None);
            assert_eq!(policy_for("expire_due"), None);
        })
        .await;
        scoped(None, async { assert_eq!(policy_for("wait"), None) }).await;
    }

    #[test]
    fn a_moved_reply_names_the_slot_and_its_new_master() {
        let reply = redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:6381\r\n").unwrap();
        assert_eq!(moved_to(&reply), Some((3999, "127.0.0.1".into(), 6381)));
        assert_eq!(moved_to(&redis::Value::Int(1)), None);
    }

    #[test]
    fn off_unless_replicas_are_asked_for() {
        let mut s = crate::config::Settings::defaults().redis;
        assert_eq!(Policy::from_settings(&s), None);
        s.wait_replicas = 2;
        assert_eq!(
            Policy::from_settings(&s),
            Some(Policy {
                replicas: 2,
                timeout_ms: s.wait_timeout_ms
            })
        );
    }
}
