//! Per-tenant rate limits and quotas: the values (config defaults with per-tenant
//! overrides), their validation, the refusals, and how a request is admitted
//! ([`admission`]).
//!
//! Rates are GCRA buckets in Redis (`lua/shared/quota.lua`), one per (tenant, class), so
//! they hold across any number of api replicas. Quotas are checked by the scripts that
//! write what they count, so a refused request writes nothing.

pub mod admission;
pub mod cache;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{parse_duration, InvalidInput, TenantName};
use crate::store::limits::Usage;
use crate::store::scripts::RateRefusal;
use crate::store::StoreError;

/// The rate-limited groups of tenant routes; each has its own bucket per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// `POST /v2/wait`, `DELETE /v2/workflows/runs/{runId}`.
    Wait,
    /// `POST /v2/notify/…` (broadcast and lookback).
    Notify,
    /// The other tenant routes: waiters, history, keys, dead letters.
    Read,
}

impl RateClass {
    pub const ALL: [RateClass; 3] = [RateClass::Wait, RateClass::Notify, RateClass::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            RateClass::Wait => "wait",
            RateClass::Notify => "notify",
            RateClass::Read => "read",
        }
    }
}

impl fmt::Display for RateClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rate limit: `per_sec` on average, `burst` at once (GCRA bucket size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    /// A bucket's state from its stored arrival time (None: full): the requests still
    /// allowed at once, and when it is full again (unix seconds). Mirrors `gcra` in
    /// `lua/shared/quota.lua`.
    pub fn state_at(self, tat_us: Option<u64>, now_us: u64) -> (u64, u64) {
        let interval = 1_000_000.0 / f64::from(self.per_sec.max(1));
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let room = now_us as f64 + f64::from(self.burst) * interval - tat as f64;
        let remaining = (room / interval + 1e-6)
            .floor()
            .clamp(0.0, f64::from(self.burst));
        (remaining as u64, tat.div_ceil(1_000_000))
    }
}

/// A tenant's limits. Field names are the limit names everywhere: `[limits]` in the
/// configuration, the admin API and `herald tenant limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub wait_per_sec: u32,
    pub wait_burst: u32,
    pub notify_per_sec: u32,
    pub notify_burst: u32,
    pub read_per_sec: u32,
    pub read_burst: u32,
    pub active_waiters: u64,
    pub waiters_per_event: u64,
    pub saved_per_run_event: u64,
    pub notify_body_bytes: u64,
    /// Bytes the tenant may keep stored in Redis (waiters, saved notifications, history,
    /// dead letters, idempotency records, tombstones, workflow runs); 0 = unlimited.
    pub stored_bytes: u64,
    pub max_timeout: String,
    /// Private or loopback ranges this tenant's deliveries may reach besides the public
    /// internet and `delivery.allow_cidrs` (comma-separated CIDRs; "" none).
    pub allow_cidrs: String,
    /// The only ports this tenant's deliveries may go to (comma-separated; "" any).
    pub allow_ports: String,
}

/// The server-wide caps no tenant limit may exceed.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_body_bytes: u64,
    pub max_timeout_ms: u64,
}

/// Most requests per second (and burst) a rate may be set to.
const MAX_RATE: u64 = 1_000_000;
/// Most saved notifications per (run, event): `wait.lua` scans at most this many.
const MAX_SAVED: u64 = 1000;

fn ranged(name: &str, value: &str, min: u64, max: u64) -> Result<u64, InvalidInput> {
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| InvalidInput(format!("{name} must be a whole number, got {value:?}")))?;
    if n < min || n > max {
        return Err(InvalidInput(format!(
            "{name} must be between {min} and {max}, got {n}"
        )));
    }
    Ok(n)
}

impl Limits {
    /// Every limit name, in the order they are documented.
    pub const NAMES: [&'static str; 14] = [
        "wait_per_sec",
        "wait_burst",
        "notify_per_sec",
        "notify_burst",
        "read_per_sec",
        "read_burst",
        "active_waiters",
        "waiters_per_event",
        "saved_per_run_event",
        "notify_body_bytes",
        "stored_bytes",
        "max_timeout",
        "allow_cidrs",
        "allow_ports",
    ];

    /// Sets one limit from its text form, checked against its range and the caps.
    pub fn set(&mut self, name: &str, value: &str, caps: &Caps) -> Result<(), InvalidInput> {
        let rate = |v| ranged(name, v, 0, MAX_RATE).map(|n| n as u32);
        let burst = |v| ranged(name, v, 1, MAX_RATE).map(|n| n as u32);
        match name {
            "wait_per_sec" => self.wait_per_sec = rate(value)?,
            "wait_burst" => self.wait_burst = burst(value)?,
            "notify_per_sec" => self.notify_per_sec = rate(value)?,
            "notify_burst" => self.notify_burst = burst(value)?,
            "read_per_sec" => self.read_per_sec = rate(value)?,
            "read_burst" => self.read_burst = burst(value)?,
            "active_waiters" => self.active_waiters = ranged(name, value, 0, u64::MAX)?,
            "waiters_per_event" => self.waiters_per_event = ranged(name, value, 0, u64::MAX)?,
            "saved_per_run_event" => self.saved_per_run_event = ranged(name, value, 1, MAX_SAVED)?,
            "notify_body_bytes" => {
                self.notify_body_bytes = ranged(name, value, 1, caps.max_body_bytes)?
            }
            "stored_bytes" => self.stored_bytes = ranged(name, value, 0, u64::MAX)?,
            "max_timeout" => {
                let ms =
                    parse_duration(value).map_err(|e| InvalidInput(format!("max_timeout: {e}")))?;
                if ms < 1000 || ms > caps.max_timeout_ms {
                    return Err(InvalidInput(format!(
                        "max_timeout must be between 1s and waiters.max_timeout ({} s), got {value:?}",
                        caps.max_timeout_ms / 1000
                    )));
                }
                self.max_timeout = value.trim().to_owned();
            }
            "allow_cidrs" => {
                let cidrs = list(value)
                    .map(|c| {
                        c.parse::<crate::delivery::ip_policy::Cidr>()
                            .map(|c| c.to_string())
                            .map_err(|e| InvalidInput(format!("allow_cidrs: {c:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if cidrs.len() > 64 {
                    return Err(InvalidInput("allow_cidrs: at most 64 ranges".into()));
                }
                self.allow_cidrs = cidrs.join(",");
            }
            "allow_ports" => {
                let ports = list(value)
                    .map(|p| {
                        p.parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .map(|p| p.to_string())
                            .ok_or_else(|| {
                                InvalidInput(format!("allow_ports: {p:?} is not a port"))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if ports.len() > 64 {
                    return Err(InvalidInput("allow_ports: at most 64 ports".into()));
                }
                self.allow_ports = ports.join(",");
            }
            _ => {
                return Err(InvalidInput(format!(
                    "unknown limit {name:?}; the limits are {}",
                    Self::NAMES.join(", ")
                )))
            }
        }
        Ok(())
    }

    /// Checks every limit (the configured defaults) as [`Limits::set`] would.
    pub fn validate(&self, caps: &Caps) -> Result<(), InvalidInput> {
        let mut copy = self.clone();
        for name in Self::NAMES {
            copy.set(name, &self.text(name), caps)?;
        }
        Ok(())
    }

    /// One limit's value as JSON (a number, or a string for `max_timeout`).
    pub fn value(&self, name: &str) -> serde_json::Value {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get(name).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// One limit's value in the text form [`Limits::set`] takes.
    pub fn text(&self, name: &str) -> String {
        match self.value(name) {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// These limits with a tenant's overrides applied. An override that is no longer
    /// valid (the caps changed since it was set) is skipped, with a warning.
    pub fn with_overrides(&self, overrides: &Overrides, caps: &Caps) -> Limits {
        let mut limits = self.clone();
        for (name, value) in &overrides.0 {
            if let Err(e) = limits.set(name, value, caps) {
                tracing::warn!(limit = %name, error = %e, "ignoring an invalid limit override");
            }
        }
        limits
    }

    pub fn rate(&self, class: RateClass) -> Option<Rate> {
        let (per_sec, burst) = match class {
            RateClass::Wait => (self.wait_per_sec, self.wait_burst),
            RateClass::Notify => (self.notify_per_sec, self.notify_burst),
            RateClass::Read => (self.read_per_sec, self.read_burst),
        };
        (per_sec > 0).then_some(Rate {
            per_sec,
            burst: burst.max(1),
        })
    }

    pub fn max_timeout_ms(&self) -> u64 {
        parse_duration(&self.max_timeout).unwrap_or(u64::MAX)
    }

    /// The tenant's own outbound ranges (validated when set).
    pub fn outbound_cidrs(&self) -> Vec<crate::delivery::ip_policy::Cidr> {
        list(&self.allow_cidrs)
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// The ports the tenant's deliveries may use (None: any).
    pub fn outbound_ports(&self) -> Option<Vec<u16>> {
        let ports: Vec<u16> = list(&self.allow_ports)
            .filter_map(|p| p.parse().ok())
            .collect();
        (!ports.is_empty()).then_some(ports)
    }
}

/// The items of a comma-separated list, trimmed, empty ones left out.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A tenant's overrides: limit name → value in text form (as stored in Redis).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides(pub BTreeMap<String, String>);

impl Overrides {
    /// Validates a JSON object of overrides (`{"notify_per_sec": 50, "max_timeout": "1d"}`)
    /// against the defaults' types and the caps: all of it, or nothing.
    pub fn from_json(
        value: &serde_json::Value,
        defaults: &Limits,
        caps: &Caps,
    ) -> Result<Self, InvalidInput> {
        let object = value.as_object().ok_or_else(|| {
            InvalidInput("the body must be a JSON object of limit name to value".into())
        })?;
        let mut check = defaults.clone();
        let mut out = BTreeMap::new();
        for (name, v) in object {
            let text = match v {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                _ => {
                    return Err(InvalidInput(format!(
                        "{name} must be a number (or a string for max_timeout, allow_cidrs and allow_ports)"
                    )))
                }
            };
            check.set(name, &text, caps)?;
            out.insert(name.clone(), check.text(name));
        }
        Ok(Overrides(out))
    }

    /// Validates `name=value` pairs (`herald tenant limits NAME --set …`).
    pub fn from_pairs(
        pairs: &[String],
        defaults: &Limits,
        caps: &Caps,
    ) -> Result<Self, InvalidInput> {
        let mut check = defaults.clone();
        let mut out = BTreeMap::new();
        for pair in pairs {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| InvalidInput(format!("{pair:?} is not name=value")))?;
            let name = name.trim();
            check.set(name, value, caps)?;
            out.insert(name.to_owned(), check.text(name));
        }
        Ok(Overrides(out))
    }

    /// The overrides as JSON values (numbers, or a string for `max_timeout`).
    pub fn to_json(&self, defaults: &Limits, caps: &Caps) -> serde_json::Value {
        let applied = defaults.with_overrides(self, caps);
        serde_json::Value::Object(
            self.0
                .keys()
                .map(|name| (name.clone(), applied.value(name)))
                .collect(),
        )
    }
}

/// The admin view of a tenant's limits (`GET /admin/tenants/{name}/limits`,
/// `herald tenant limits`): every effective limit, and the overrides.
pub fn limits_view(
    tenant: &TenantName,
    defaults: &Limits,
    overrides: &Overrides,
    caps: &Caps,
) -> serde_json::Value {
    serde_json::json!({
        "tenant": tenant,
        "limits": defaults.with_overrides(overrides, caps),
        "overrides": overrides.to_json(defaults, caps),
    })
}

/// What a tenant uses now (`GET /admin/tenants/{name}/usage`, `herald tenant usage`): its
/// active waiters, and per rate class what is left (`remaining` at once, `reset` unix s).
pub fn usage_view(tenant: &TenantName, usage: &Usage, limits: &Limits) -> serde_json::Value {
    let rates: serde_json::Map<String, serde_json::Value> = usage
        .buckets
        .iter()
        .map(|(class, tat)| {
            let view = match limits.rate(*class) {
                Some(rate) => {
                    let (remaining, reset) = rate.state_at(*tat, usage.now_us);
                    serde_json::json!({"perSec": rate.per_sec, "burst": rate.burst,
                        "remaining": remaining, "reset": reset})
                }
                None => serde_json::json!({"perSec": 0, "burst": null, "remaining": null,
                    "reset": null}),
            };
            (class.as_str().to_owned(), view)
        })
        .collect();
    serde_json::json!({
        "tenant": tenant,
        "activeWaiters": usage.active_waiters,
        "maxActiveWaiters": limits.active_waiters,
        "storedBytes": usage.stored_bytes,
        "maxStoredBytes": limits.stored_bytes,
        "rates": rates,
    })
}

/// Why a request was refused by a limit. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "rate limit: tenant {tenant} may make {per_sec} {class} requests per second \
         ({burst} at once); retry in {} ms", refusal.retry_after_ms
    )]
    RateLimited {
        tenant: String,
        class: RateClass,
        per_sec: u32,
        burst: u32,
        refusal: RateRefusal,
    },
    /// A quota other than the body size (422).
    #[error("quota {name} ({limit}) exceeded: {detail}")]
    Quota {
        name: &'static str,
        limit: String,
        detail: String,
    },
    /// The notify body quota (413).
    #[error(
        "quota notify_body_bytes ({limit}) exceeded: the notify body is larger than {limit} bytes"
    )]
    BodyTooLarge { limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LimitError {
    /// A write refused because the tenant is at its `stored_bytes` quota.
    pub fn stored_full(tenant: &TenantName, limits: &Limits) -> Self {
        crate::telemetry::metrics::stored_bytes_refused();
        LimitError::Quota {
            name: "stored_bytes",
            limit: limits.stored_bytes.to_string(),
            detail: format!(
                "tenant {tenant} stores that many bytes already; nothing was written. Space \
                 comes back as waiters are notified or time out, saved notifications are \
                 consumed or expire, dead letters are deleted or sent again, and history \
                 and finished runs expire (GET /v2/limits shows the figure)"
            ),
        }
    }

    pub fn rate_limited(
        tenant: &TenantName,
        class: RateClass,
        rate: Rate,
        refusal: RateRefusal,
    ) -> Self {
        LimitError::RateLimited {
            tenant: tenant.to_string(),
            class,
            per_sec: rate.per_sec,
            burst: rate.burst,
            refusal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Caps {
        Caps {
            max_body_bytes: 1024,
            max_timeout_ms: 86_400_000,
        }
    }

    fn defaults() -> Limits {
        crate::config::Settings::defaults().limits.defaults
    }

    #[test]
    fn every_name_round_trips_through_text() {
        let limits = defaults();
        let mut copy = limits.clone();
        let big = Caps {
            max_body_bytes: u64::MAX,
            max_timeout_ms: u64::MAX,
        };
        for name in Limits::NAMES {
            copy.set(name, &limits.text(name), &big).unwrap();
        }
        assert_eq!(copy, limits);
        let json = serde_json::to_value(&limits).unwrap();
        assert_eq!(json.as_object().unwrap().len(), Limits::NAMES.len());
    }

    #[test]
    fn values_are_checked_against_ranges_and_caps() {
        let mut l = defaults();
        let c = caps();
        assert!(l.set("notify_body_bytes", "1024", &c).is_ok());
        assert!(l.set("notify_body_bytes", "1025", &c).is_err());
        assert!(l.set("notify_body_bytes", "0", &c).is_err());
        assert!(l.set("max_timeout", "1d", &c).is_ok());
        assert!(l.set("max_timeout", "1d1s", &c).is_err());
        assert!(l.set("max_timeout", "soon", &c).is_err());
        assert!(l.set("saved_per_run_event", "1000", &c).is_ok());
        assert!(l.set("saved_per_run_event", "1001", &c).is_err());
        assert!(l.set("notify_burst", "0", &c).is_err());
        assert!(l.set("notify_per_sec", "0", &c).is_ok());
        assert!(l.set("notify_per_sec", "-1", &c).is_err());
        let e = l.set("notify_rate", "5", &c).unwrap_err();
        assert!(e.0.contains("unknown limit") && e.0.contains("notify_per_sec"));
    }

    #[test]
    fn overrides_are_all_or_nothing() {
        let d = defaults();
        let c = caps();
        let ok = serde_json::json!({"notify_per_sec": 5, "max_timeout": "1h"});
        let o = Overrides::from_json(&ok, &d, &c).unwrap();
        assert_eq!(o.0["notify_per_sec"], "5");
        assert_eq!(o.to_json(&d, &c), ok);
        let applied = d.with_overrides(&o, &c);
        assert_eq!(
            applied.rate(RateClass::Notify),
            Some(Rate {
                per_sec: 5,
                burst: d.notify_burst
            })
        );
        assert_eq!(applied.max_timeout_ms(), 3_600_000);
        let bad = serde_json::json!({"notify_per_sec": 5, "waiters_per_event": "many"});
        assert!(Overrides::from_json(&bad, &d, &c).is_err());
        assert!(Overrides::from_json(&serde_json::json!([1]), &d, &c).is_err());
        assert!(Overrides::from_json(&serde_json::json!({"x": true}), &d, &c).is_err());
        let pairs = ["notify_per_sec=5".to_owned(), "max_timeout=1h".to_owned()];
        assert_eq!(Overrides::from_pairs(&pairs, &d, &c).unwrap(), o);
        assert!(Overrides::from_pairs(&["notify_per_sec".to_owned()], &d, &c).is_err());
    }

    #[test]
    fn bucket_state_counts_what_is_left() {
        let rate = Rate {
            per_sec: 10,
            burst: 5,
        };
        let now = 1_000_000_000;
        assert_eq!(rate.state_at(None, now), (5, 1000));
        // Two requests taken: the arrival time is 2 intervals (200 ms) ahead.
        assert_eq!(rate.state_at(Some(now + 200_000), now), (3, 1001));
        // Empty and beyond: nothing left.
        assert_eq!(rate.state_at(Some(now + 600_000), now).0, 0);
        assert_eq!(rate.state_at(Some(now - 5), now), (5, 1000));
    }

    #[test]
    fn a_zero_rate_is_unlimited() {
        let mut l = defaults();
        l.read_per_sec = 0;
        assert_eq!(l.rate(RateClass::Read), None);
    }
}
