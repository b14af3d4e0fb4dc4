//! Every Redis key name Herald uses is built here, and nowhere else.
//!
//! Keys of one (tenant, event id) live in one *partition* `p = fnv1a64(tenant "\0" event) mod P`
//! and carry the partition's hash tag `{p<n>}`, so every script touches one cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:{p<n>}:ev:<tenant>:<event>` | HASH | waiters of the event: `<run>\|<waiterId>` → waiter JSON (stored form: [`crate::waiter::Waiter`]) |
//! | `<prefix>:{p<n>}:evrun:<tenant>:<event>` | ZSET | the event's run waiters by field `<run>\|<waiterId>` (score 0; a lex range finds one run's) |
//! | `<prefix>:{p<n>}:saved:<tenant>:<run>\|<event>` | LIST | saved lookback notifications, FIFO |
//! | `<prefix>:{p<n>}:run:<tenant>:<run>` | SET | event ids the run has state for in the partition |
//! | `<prefix>:{p<n>}:cancelled:<tenant>:<run>` | STRING | tombstone of a cancelled run |
//! | `<prefix>:{p<n>}:op:<tenant>:<opId>` | STRING | idempotency record of a repeatable wait / a lookback notify |
//! | `<prefix>:{p<n>}:deadlines` | ZSET | `<tenant>\|<field>\|<event>` by deadline (ms) |
//! | `<prefix>:{p<n>}:deliveries` | STREAM | delivery jobs; consumer group `herald` |
//! | `<prefix>:{p<n>}:retries` | ZSET | message id by due time (ms) |
//! | `<prefix>:{p<n>}:retry-jobs` | HASH | message id → job JSON, `<id>#b` → body or `<id>#r` → body id |
//! | `<prefix>:{p<n>}:dlq:<tenant>` | STREAM | the tenant's dead letters |
//! | `<prefix>:{p<n>}:body:<bodyId>` | HASH | a notify's body stored once, referenced by its jobs and dead letters |
//! | `<prefix>:{p<n>}:waiters:<tenant>` | STRING | the tenant's waiters registered in the partition (quota) |
//! | `<prefix>:{p<h>}:rate:<tenant>:<class>` | STRING | GCRA state of a tenant's rate limit, in its home partition `h` |
//! | `<prefix>:{p<n>}:history:<tenant>:<event>` | LIST | recent outcomes of the event, newest first |
//! | `<prefix>:{p<r>}:wf:<tenant>:<run>` | HASH | a workflow run's record, in the run's partition `r` ([`Keys::run_partition`]) |
//! | `<prefix>:{p<r>}:wfsteps:<tenant>:<run>` | LIST | a workflow run's history (RawStep JSON) |
//!
//! Global keys (single-key commands only): `<prefix>:meta` (HASH: partitions),
//! `<prefix>:tenant:<name>` (HASH), `<prefix>:tenants` (SET), `<prefix>:token:<sha256>` (STRING),
//! `<prefix>:limits:<name>` (HASH: the tenant's limit overrides).
//!
//! Tenant names hold no `:`/`|`/`{`/`}`; event and run ids hold no `|`/`{`/`}` (see
//! [`crate::domain`]), so no tenant can name another tenant's key or choose a slot.
//!
//! **Unambiguous names.** Every key (and every member or field) built from more than one
//! tenant-chosen id separates them so that no two tuples give one name: the tenant comes
//! first and ends at the first `:` (tenant names hold none), and where two ids follow it
//! (`saved`: run and event) they are joined by `|`, which no id can hold. Ids may contain
//! `:`, so `:` never separates two ids (`saved:<tenant>:<run>:<event>` did, before schema 2:
//! run `r:y10` + event `z` and run `r` + event `y10:z` named one list; `herald migrate`
//! renames such lists, see docs/operating.md "Upgrades"). [`tests::no_two_id_tuples_share_a_key`]
//! holds every builder to it.

use crate::domain::{EventId, RunId, TenantName};
use crate::limits::RateClass;

/// The consumer group of every delivery stream.
pub const GROUP: &str = "herald";

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u16,
}

/// A partition key taken apart (see [`Keys::parse_partition_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    EventWaiters {
        partition: u16,
        tenant: TenantName,
        event: EventId,
    },
    /// The run index of an event's waiters ([`Partition::event_runs`]).
    EventRuns {
        partition: u16,
        tenant: TenantName,
        event: EventId,
    },
    RunEvents {
        partition: u16,
        tenant: TenantName,
        run: RunId,
    },
    Cancelled {
        partition: u16,
        tenant: TenantName,
        run: RunId,
    },
    DeadLetters {
        partition: u16,
        tenant: TenantName,
    },
    WaiterCount {
        partition: u16,
        tenant: TenantName,
    },
    /// A workflow run's record (`steps` false) or history (`steps` true), in its run's
    /// partition ([`Keys::run_partition`]).
    WorkflowRun {
        partition: u16,
        tenant: TenantName,
        run: RunId,
        steps: bool,
    },
    Deadlines(u16),
    Deliveries(u16),
    Retries(u16),
    /// Saved lists, idempotency records, the retry-job hash, rate buckets, placeholders.
    Other(u16),
}

impl PartitionKey {
    pub fn partition(&self) -> u16 {
        match self {
            PartitionKey::EventWaiters { partition, .. }
            | PartitionKey::EventRuns { partition, .. }
            | PartitionKey::RunEvents { partition, .. }
            | PartitionKey::Cancelled { partition, .. }
            | PartitionKey::DeadLetters { partition, .. }
            | PartitionKey::WaiterCount { partition, .. }
            | PartitionKey::WorkflowRun { partition, .. } => *partition,
            PartitionKey::Deadlines(p)
            | PartitionKey::Deliveries(p)
            | PartitionKey::Retries(p)
            | PartitionKey::Other(p) => *p,
        }
    }
}

/// The keys of one partition (a hash-tagged slice of the keyspace).
#[derive(Debug, Clone)]
pub struct Partition {
    /// `<prefix>:{p<n>}:`
    base: String,
    pub index: u16,
}

/// FNV-1a, 64 bit: stable across versions and platforms (it decides where data lives).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash ^= 0;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        for b in *part {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

impl Keys {
    pub fn new(prefix: &str, partitions: u16) -> Self {
        Self {
            prefix: prefix.to_owned(),
            partitions,
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn partition_of(&self, tenant: &TenantName, event: &EventId) -> Partition {
        let h = fnv1a64(&[tenant.as_str().as_bytes(), event.as_str().as_bytes()]);
        self.partition((h % u64::from(self.partitions)) as u16)
    }

    pub fn partition(&self, index: u16) -> Partition {
        Partition {
            base: format!("{}:{{p{}}}:", self.prefix, index),
            index,
        }
    }

    pub fn all_partitions(&self) -> impl Iterator<Item = Partition> + '_ {
        (0..self.partitions).map(|i| self.partition(i))
    }

    /// The partition of a workflow run: its record and history share one slot with the
    /// stream its deliveries go through (src/workflow/mod.rs).
    pub fn run_partition(&self, tenant: &TenantName, run: &RunId) -> Partition {
        let h = fnv1a64(&[tenant.as_str().as_bytes(), b"wf", run.as_str().as_bytes()]);
        self.partition((h % u64::from(self.partitions)) as u16)
    }

    /// The tenant's home partition: where its rate-limit state lives (one slot per tenant,
    /// so tenants' buckets spread over the cluster).
    pub fn tenant_home(&self, tenant: &TenantName) -> Partition {
        let h = fnv1a64(&[tenant.as_str().as_bytes()]);
        self.partition((h % u64::from(self.partitions)) as u16)
    }

    /// The GCRA state of one of the tenant's rate limits.
    pub fn rate_bucket(&self, tenant: &TenantName, class: RateClass) -> String {
        format!("{}rate:{}:{}", self.tenant_home(tenant).base, tenant, class)
    }

    /// The tenant's limit overrides (HASH: limit name → value).
    pub fn tenant_limits(&self, name: &TenantName) -> String {
        format!("{}:limits:{}", self.prefix, name)
    }

    /// A SCAN pattern matching every partition key of this prefix.
    pub fn partition_pattern(&self) -> String {
        format!("{}:{{p*}}:*", self.prefix)
    }

    /// What a partition key of this prefix names (the inverse of the [`Partition`] methods;
    /// used by `herald repartition`).
    pub fn parse_partition_key(&self, key: &str) -> Option<PartitionKey> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{p")?;
        let (index, rest) = rest.split_once("}:")?;
        let p: u16 = index.parse().ok()?;
        let tenant_and = |s: &str| -> Option<(TenantName, String)> {
            let (tenant, tail) = s.split_once(':')?;
            Some((TenantName::parse(tenant).ok()?, tail.to_owned()))
        };
        let parsed = match rest.split_once(':') {
            Some(("ev", tail)) => {
                let (tenant, event) = tenant_and(tail)?;
                PartitionKey::EventWaiters {
                    partition: p,
                    tenant,
                    event: EventId::parse(&event).ok()?,
                }
            }
            Some(("evrun", tail)) => {
                let (tenant, event) = tenant_and(tail)?;
                PartitionKey::EventRuns {
                    partition: p,
                    tenant,
                    event: EventId::parse(&event).ok()?,
                }
            }
            Some(("run", tail)) => {
                let (tenant, run) = tenant_and(tail)?;
                PartitionKey::RunEvents {
                    partition: p,
                    tenant,
                    run: RunId::parse(&run).ok()?,
                }
            }
            Some(("cancelled", tail)) => {
                let (tenant, run) = tenant_and(tail)?;
                PartitionKey::Cancelled {
                    partition: p,
                    tenant,
                    run: RunId::parse(&run).ok()?,
                }
            }
            Some((kind @ ("wf" | "wfsteps"), tail)) => {
                let (tenant, run) = tenant_and(tail)?;
                PartitionKey::WorkflowRun {
                    partition: p,
                    tenant,
                    run: RunId::parse(&run).ok()?,
                    steps: kind == "wfsteps",
                }
            }
            Some(("dlq", tenant)) => PartitionKey::DeadLetters {
                partition: p,
                tenant: TenantName::parse(tenant).ok()?,
            },
            Some(("waiters", tenant)) => PartitionKey::WaiterCount {
                partition: p,
                tenant: TenantName::parse(tenant).ok()?,
            },
            None if rest == "deadlines" => PartitionKey::Deadlines(p),
            None if rest == "deliveries" => PartitionKey::Deliveries(p),
            None if rest == "retries" => PartitionKey::Retries(p),
            _ => PartitionKey::Other(p),
        };
        Some(parsed)
    }

    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    pub fn tenant(&self, name: &TenantName) -> String {
        format!("{}:tenant:{}", self.prefix, name)
    }

    pub fn tenants(&self) -> String {
        format!("{}:tenants", self.prefix)
    }

    pub fn token(&self, token_sha256_hex: &str) -> String {
        format!("{}:token:{}", self.prefix, token_sha256_hex)
    }

    /// SCAN pattern matching the saved-notification lists of every partition.
    /// What every tenant's usage hash of every partition matches.
    pub fn usage_pattern(&self) -> String {
        format!("{}:{{p*}}:usage:*", self.prefix)
    }

    pub fn saved_pattern(&self) -> String {
        format!("{}:{{p*}}:saved:*", self.prefix)
    }

    /// `found` partition keys grouped by their partition (keys of none are left out), so
    /// that a pipeline per group stays in one slot on a cluster.
    pub fn by_partition<'k>(
        &self,
        found: &'k [String],
    ) -> std::collections::BTreeMap<u16, Vec<&'k String>> {
        let mut groups: std::collections::BTreeMap<u16, Vec<&String>> = Default::default();
        for key in found {
            if let Some(p) = self.partition_of_key(key) {
                groups.entry(p).or_default().push(key);
            }
        }
        groups
    }

    /// The partition number of a partition key (`<prefix>:{p<n>}:…`).
    pub fn partition_of_key(&self, key: &str) -> Option<u16> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{p")?;
        let (number, _) = rest.split_once('}')?;
        number.parse().ok()
    }
}

impl Partition {
    pub fn event_waiters(&self, tenant: &TenantName, event: &EventId) -> String {
        format!("{}ev:{}:{}", self.base, tenant, event)
    }

    /// Saved lookback notifications of (run, event): run and event joined by `|` (see the
    /// module doc, "Unambiguous names").
    pub fn saved(&self, tenant: &TenantName, run: &RunId, event: &EventId) -> String {
        format!("{}saved:{}:{}|{}", self.base, tenant, run, event)
    }

    /// What every saved list's name of the partition starts with (schema 1's too: see
    /// [`super::migrate`]).
    pub fn saved_prefix(&self) -> String {
        format!("{}saved:", self.base)
    }

    /// The event's run waiters (ZSET, score 0, member = waiter field `<run>|<waiterId>`):
    /// one run's waiters are the lex range `[<run>|` .. `(<run>}` (`}` sorts right after
    /// `|`, and ids hold neither), found in O(log N + its own) however many other runs wait
    /// on the event. Plain waiters (no run) are not in it.
    pub fn event_runs(&self, tenant: &TenantName, event: &EventId) -> String {
        format!("{}evrun:{}:{}", self.base, tenant, event)
    }

    /// Unused placeholder key: scripts still get a key of the partition in a position
    /// they do not touch (no run for a plain waiter, no idempotency record, no rate check).
    pub fn no_run(&self) -> String {
        format!("{}norun", self.base)
    }

    pub fn run_events(&self, tenant: &TenantName, run: &RunId) -> String {
        format!("{}run:{}:{}", self.base, tenant, run)
    }

    pub fn cancelled(&self, tenant: &TenantName, run: &RunId) -> String {
        format!("{}cancelled:{}:{}", self.base, tenant, run)
    }

    pub fn op(&self, tenant: &TenantName, op_id: &str) -> String {
        format!("{}op:{}:{}", self.base, tenant, op_id)
    }

    pub fn deadlines(&self) -> String {
        format!("{}deadlines", self.base)
    }

    pub fn deliveries(&self) -> String {
        format!("{}deliveries", self.base)
    }

    pub fn retries(&self) -> String {
        format!("{}retries", self.base)
    }

    pub fn retry_jobs(&self) -> String {
        format!("{}retry-jobs", self.base)
    }

    /// A workflow run's record (HASH, src/workflow/run.rs `RunRecord`).
    pub fn workflow_run(&self, tenant: &TenantName, run: &RunId) -> String {
        format!("{}wf:{}:{}", self.base, tenant, run)
    }

    /// A workflow run's history (LIST of RawStep JSON, in acceptance order).
    pub fn workflow_steps(&self, tenant: &TenantName, run: &RunId) -> String {
        format!("{}wfsteps:{}:{}", self.base, tenant, run)
    }

    pub fn dead_letters(&self, tenant: &TenantName) -> String {
        format!("{}dlq:{}", self.base, tenant)
    }

    /// A notify's body stored once for the jobs and dead letters that reference it by
    /// `body_id` (see lua/README.md, "Bodies").
    pub fn body(&self, body_id: &str) -> String {
        format!("{}body:{}", self.base, body_id)
    }

    /// How many waiters the tenant has registered in this partition.
    pub fn waiter_count(&self, tenant: &TenantName) -> String {
        format!("{}waiters:{}", self.base, tenant)
    }

    /// The tenant's stored bytes in the partition (the `stored_bytes` quota; see
    /// `lua/shared/usage.lua` and [`crate::store::usage`]).
    pub fn usage(&self, tenant: &TenantName) -> String {
        format!("{}usage:{}", self.base, tenant)
    }

    /// Recent outcomes of (tenant, event), newest first (see [`crate::history`]).
    pub fn history(&self, tenant: &TenantName, event: &EventId) -> String {
        format!("{}history:{}:{}", self.base, tenant, event)
    }
}

/// A waiter's field in its event hash: `<run>|<waiterId>` (run empty for plain waiters).
pub fn waiter_field(run: Option<&RunId>, waiter_id: &str) -> String {
    format!("{}|{}", run.map(RunId::as_str).unwrap_or(""), waiter_id)
}

/// A deadline-set member: `<tenant>|<field>|<event>`.
pub fn deadline_member(tenant: &TenantName, field: &str, event: &EventId) -> String {
    format!("{tenant}|{field}|{event}")
}

/// Splits a deadline-set member back into (tenant, field, event).
pub fn parse_deadline_member(member: &str) -> Option<(TenantName, String, EventId)> {
    let (tenant, rest) = member.split_once('|')?;
    let (run, rest) = rest.split_once('|')?;
    let (waiter, event) = rest.split_once('|')?;
    Some((
        TenantName::parse(tenant).ok()?,
        format!("{run}|{waiter}"),
        EventId::parse(event).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC16-XMODEM as Redis Cluster uses it (`CLUSTER KEYSLOT`), with hash tags.
    fn key_slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = match bytes.iter().position(|b| *b == b'{') {
            Some(open) => match bytes[open + 1..].iter().position(|b| *b == b'}') {
                Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
                _ => bytes,
            },
            None => bytes,
        };
        let mut crc: u16 = 0;
        for b in tagged {
            crc ^= u16::from(*b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn key_slot_matches_redis_reference_values() {
        // Values from the Redis Cluster specification / CLUSTER KEYSLOT.
        assert_eq!(key_slot("123456789"), 0x31C3);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
    }

    #[test]
    fn every_script_keys_share_one_slot() {
        let keys = Keys::new("herald", 16);
        let tenant = TenantName::parse("acme").unwrap();
        let run = RunId::parse("wfr_1").unwrap();
        for i in 0..200 {
            let event = EventId::parse(&format!("order-{i}")).unwrap();
            let p = keys.partition_of(&tenant, &event);
            let all = [
                p.event_waiters(&tenant, &event),
                p.event_runs(&tenant, &event),
                p.saved(&tenant, &run, &event),
                p.no_run(),
                p.run_events(&tenant, &run),
                p.cancelled(&tenant, &run),
                p.op(&tenant, "x"),
                p.deadlines(),
                p.deliveries(),
                p.retries(),
                p.retry_jobs(),
                p.dead_letters(&tenant),
                p.waiter_count(&tenant),
                p.history(&tenant, &event),
            ];
            let slot = key_slot(&all[0]);
            for k in &all {
                assert_eq!(key_slot(k), slot, "{k} is in another slot than {}", all[0]);
            }
        }
    }

    #[test]
    fn rate_buckets_live_in_the_tenant_home_partition() {
        let keys = Keys::new("herald", 16);
        let mut homes = std::collections::HashSet::new();
        for i in 0..100 {
            let tenant = TenantName::parse(&format!("t{i}")).unwrap();
            let home = keys.tenant_home(&tenant);
            homes.insert(home.index);
            for class in RateClass::ALL {
                assert_eq!(
                    key_slot(&keys.rate_bucket(&tenant, class)),
                    key_slot(&home.deliveries())
                );
            }
        }
        assert!(homes.len() > 8, "tenants spread over partitions: {homes:?}");
    }

    #[test]
    fn partition_keys_name_their_partition() {
        let keys = Keys::new("herald", 16);
        let tenant = TenantName::parse("acme").unwrap();
        let event = EventId::parse("order-42").unwrap();
        let p = keys.partition_of(&tenant, &event);
        let saved = p.saved(&tenant, &RunId::parse("wfr_1").unwrap(), &event);
        assert_eq!(keys.partition_of_key(&saved), Some(p.index));
        assert_eq!(keys.partition_of_key("other:{p3}:saved:x"), None);
        assert_eq!(keys.saved_pattern(), "herald:{p*}:saved:*");
    }

    #[test]
    fn partitions_spread_over_distinct_slots() {
        let keys = Keys::new("herald", 16);
        let mut slots: Vec<u16> = keys
            .all_partitions()
            .map(|p| key_slot(&p.deliveries()))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 16);
    }

    #[test]
    fn partition_is_stable_and_spread() {
        let keys = Keys::new("herald", 16);
        let tenant = TenantName::parse("acme").unwrap();
        let e = EventId::parse("order-42").unwrap();
        assert_eq!(
            keys.partition_of(&tenant, &e).index,
            keys.partition_of(&tenant, &e).index
        );
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            let e = EventId::parse(&format!("e{i}")).unwrap();
            seen[keys.partition_of(&tenant, &e).index as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }

    #[test]
    fn default_partitions_spread_over_three_masters() {
        // `redis-cli --cluster create` gives three masters equal slot ranges.
        let keys = Keys::new("herald", 16);
        let mut per_master = [0; 3];
        for p in keys.all_partitions() {
            per_master[key_slot(&p.deliveries()) as usize * 3 / 16384] += 1;
        }
        assert!(per_master.iter().all(|n| *n >= 4), "{per_master:?}");
    }

    #[test]
    fn partition_keys_parse_back() {
        let keys = Keys::new("herald", 16);
        let tenant = TenantName::parse("acme").unwrap();
        let event = EventId::parse("a:b").unwrap();
        let run = RunId::parse("wfr:1").unwrap();
        let p = keys.partition_of(&tenant, &event);
        let i = p.index;
        assert_eq!(
            keys.parse_partition_key(&p.event_waiters(&tenant, &event)),
            Some(PartitionKey::EventWaiters {
                partition: i,
                tenant: tenant.clone(),
                event
            })
        );
        assert_eq!(
            keys.parse_partition_key(&p.run_events(&tenant, &run)),
            Some(PartitionKey::RunEvents {
                partition: i,
                tenant: tenant.clone(),
                run: run.clone()
            })
        );
        assert_eq!(
            keys.parse_partition_key(&p.cancelled(&tenant, &run)),
            Some(PartitionKey::Cancelled {
                partition: i,
                tenant: tenant.clone(),
                run
            })
        );
        assert_eq!(
            keys.parse_partition_key(&p.waiter_count(&tenant)),
            Some(PartitionKey::WaiterCount {
                partition: i,
                tenant: tenant.clone()
            })
        );
        let home = keys.tenant_home(&tenant).index;
        assert_eq!(
            keys.parse_partition_key(&keys.rate_bucket(&tenant, RateClass::Wait)),
            Some(PartitionKey::Other(home))
        );
        assert_eq!(
            keys.parse_partition_key(&p.dead_letters(&tenant)),
            Some(PartitionKey::DeadLetters {
                partition: i,
                tenant
            })
        );
        assert_eq!(
            keys.parse_partition_key(&p.deliveries()),
            Some(PartitionKey::Deliveries(i))
        );
        assert_eq!(
            keys.parse_partition_key(&p.retry_jobs()),
            Some(PartitionKey::Other(i))
        );
        assert_eq!(keys.parse_partition_key("other:{p1}:deliveries"), None);
        assert_eq!(keys.parse_partition_key(&keys.meta()), None);
    }

    #[test]
    fn deadline_members_round_trip() {
        let tenant = TenantName::parse("acme").unwrap();
        let event = EventId::parse("a:b:c").unwrap();
        let field = waiter_field(Some(&RunId::parse("wfr_1").unwrap()), "w1");
        let member = deadline_member(&tenant, &field, &event);
        assert_eq!(
            parse_deadline_member(&member),
            Some((tenant.clone(), field, event.clone()))
        );
        let plain = waiter_field(None, "w2");
        assert_eq!(
            parse_deadline_member(&deadline_member(&tenant, &plain, &event)),
            Some((tenant, plain, event))
        );
    }
    /// Ids drawn to collide: shared prefixes, `:` and the other id punctuation.
    fn colliding_ids() -> Vec<String> {
        let parts = [
            "r", "y10", "z", "a:b", "a", "b", ":", "x.y", "x_y", "x-y", "r:y10",
        ];
        let mut ids: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        for a in parts {
            for b in parts {
                ids.push(format!("{a}:{b}"));
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    #[test]
    fn no_two_id_tuples_share_a_key() {
        // The aliasing of schema 1: run `r:y10` + event `z` and run `r` + event `y10:z`
        // named one saved list, so one run consumed another's notification (I3).
        let keys = Keys::new("herald", 1);
        let p = keys.partition(0);
        let tenants = [
            TenantName::parse("t").unwrap(),
            TenantName::parse("t-1").unwrap(),
        ];
        let ids = colliding_ids();
        let mut seen: std::collections::HashMap<String, String> = Default::default();
        let mut claim = |key: String, who: String| {
            if let Some(prev) = seen.insert(key.clone(), who.clone()) {
                assert_eq!(prev, who, "{key} is named by both {prev} and {who}");
            }
        };
        for t in &tenants {
            for a in &ids {
                let event = EventId::parse(a).unwrap();
                let run = RunId::parse(a).unwrap();
                claim(p.event_waiters(t, &event), format!("ev {t} {a}"));
                claim(p.event_runs(t, &event), format!("evrun {t} {a}"));
                claim(p.history(t, &event), format!("history {t} {a}"));
                claim(p.run_events(t, &run), format!("run {t} {a}"));
                claim(p.cancelled(t, &run), format!("cancelled {t} {a}"));
                for b in &ids {
                    let event = EventId::parse(b).unwrap();
                    claim(p.saved(t, &run, &event), format!("saved {t} {a} {b}"));
                    let field = waiter_field(Some(&run), b);
                    claim(
                        deadline_member(t, &field, &event),
                        format!("deadline {t} {a} {b}"),
                    );
                }
            }
        }
    }

    #[test]
    fn schema_one_saved_names_collided() {
        // What the test above guards against, written the old way.
        let old = |run: &str, event: &str| format!("saved:t:{run}:{event}");
        assert_eq!(old("r:y10", "z"), old("r", "y10:z"));
        let p = Keys::new("herald", 1).partition(0);
        let t = TenantName::parse("t").unwrap();
        let key = |run: &str, event: &str| {
            p.saved(
                &t,
                &RunId::parse(run).unwrap(),
                &EventId::parse(event).unwrap(),
            )
        };
        assert_ne!(key("r:y10", "z"), key("r", "y10:z"));
    }

    #[test]
    fn event_runs_parse_back() {
        let keys = Keys::new("herald", 16);
        let tenant = TenantName::parse("acme").unwrap();
        let event = EventId::parse("a:b").unwrap();
        let p = keys.partition_of(&tenant, &event);
        assert_eq!(
            keys.parse_partition_key(&p.event_runs(&tenant, &event)),
            Some(PartitionKey::EventRuns {
                partition: p.index,
                tenant,
                event
            })
        );
    }
}
