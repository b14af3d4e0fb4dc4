//! "Acknowledged means replicated" (opt-in, `redis.wait_replicas` > 0).
//!
//! Inside an API request ([`scoped`]), every script the client is answered on
//! ([`CONFIRMED_SCRIPTS`]) is sent together with `WAIT <replicas> <timeout>` as one
//! pipeline, so both go out on the connection the script used: `WAIT` waits for the
//! replication offset of the connection that wrote, and a pipeline cannot be split by a
//! reconnect or a Sentinel switch in between (a `WAIT` on a fresh connection would
//! confirm at once, having written nothing). On a cluster the pipeline is routed by the
//! script's keys, so `WAIT` runs on the master of the write's slot.
//!
//! When fewer replicas confirm within the timeout (or `WAIT` fails), the write has been
//! applied on the master but may or may not survive a failover: the request fails with
//! [`StoreError::NotReplicated`] (503), never a success.
//!
//! What this does not give: consensus. A replica that confirmed can still lose to one
//! that did not (Sentinel and Cluster pick the replica with the highest offset they can
//! see, best effort); a master that keeps taking writes while cut off answers 503 to
//! them but they are applied there until it is demoted. See docs/operating.md.
//!
//! Workers (deliveries, timeouts, retries) never wait: no client is answered on their
//! writes, and what they write is re-derived from the API's replicated writes.

use std::future::Future;

use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, Pipeline, RedisFuture, ScriptInvocation, Value};

use super::redis::Conn;
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

tokio::task_local! {
    static POLICY: Option<Policy>;
}

/// Runs `work` (one API request) with `policy`: its confirmed scripts wait for replicas.
pub async fn scoped<F: Future>(policy: Option<Policy>, work: F) -> F::Output {
    POLICY.scope(policy, work).await
}

/// The policy that applies to script `name` here: `None` outside an API request, when
/// the setting is off, or for a script no client is answered on.
pub fn policy_for(name: &str) -> Option<Policy> {
    if !CONFIRMED_SCRIPTS.contains(&name) {
        return None;
    }
    POLICY.try_with(|p| *p).ok().flatten()
}

/// Runs `invocation` (reloading the script on `NOSCRIPT`) followed by `WAIT` on the same
/// connection; fails with [`StoreError::NotReplicated`] unless enough replicas confirm.
pub async fn invoke_replicated(
    conn: &mut Conn,
    invocation: &ScriptInvocation<'_>,
    policy: Policy,
) -> Result<Value, StoreError> {
    let mut replicated = Replicated {
        inner: conn,
        policy,
        confirmed: None,
    };
    let value: Value = invocation.invoke_async(&mut replicated).await?;
    match replicated.confirmed {
        Some(Ok(n)) if n >= i64::from(policy.replicas) => Ok(value),
        Some(Ok(n)) => Err(not_replicated(policy, format!("{n} confirmed"))),
        Some(Err(e)) => Err(not_replicated(policy, e)),
        None => Err(StoreError::Reply("the script ran without WAIT".into())),
    }
}

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
/// and keeps `WAIT`'s answer; other commands (`SCRIPT LOAD`) pass through.
struct Replicated<'c> {
    inner: &'c mut Conn,
    policy: Policy,
    /// Replicas that confirmed the last script call, or why `WAIT` failed.
    confirmed: Option<Result<i64, String>>,
}

fn is_script_call(cmd: &Cmd) -> bool {
    matches!(
        cmd.args_iter().next(),
        Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")
    )
}

impl ConnectionLike for Replicated<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            if !is_script_call(cmd) {
                return self.inner.req_packed_command(cmd).await;
            }
            let mut pipe = Pipeline::new();
            pipe.add_command(cmd.clone());
            pipe.cmd("WAIT")
                .arg(self.policy.replicas)
                .arg(self.policy.timeout_ms);
            let mut replies = self.inner.req_packed_commands(&pipe, 0, 2).await?;
            let (Some(waited), Some(script)) = (replies.pop(), replies.pop()) else {
                return Err((
                    redis::ErrorKind::Client,
                    "a pipeline of two got fewer replies",
                )
                    .into());
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
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
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
        let policy = Some(Policy {
            replicas: 1,
            timeout_ms: 100,
        });
        assert_eq!(policy_for("wait"), None, "outside a request");
        scoped(policy, async {
            assert_eq!(policy_for("wait"), policy);
            assert_eq!(policy_for("redrive"), policy);
            assert_eq!(policy_for("rate_limit"), None);
            assert_eq!(policy_for("expire_due"), None);
        })
        .await;
        scoped(None, async { assert_eq!(policy_for("wait"), None) }).await;
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
