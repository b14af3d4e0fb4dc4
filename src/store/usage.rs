//! The tenant's stored bytes (the `stored_bytes` quota), as the scripts keep them: one
//! HASH per tenant and partition, `{p<n>}:usage:<tenant>`, charged and released by the
//! script that writes or removes each item (`lua/shared/usage.lua` states the format).
//! This module only reads: the sum over the partitions of field `L` and of the buckets
//! that have not ended yet.

use futures_util::future::try_join_all;

use super::{Conn, Keys, StoreError};
use crate::domain::{EventId, TenantName};

/// Bytes one partition's usage hash counts at `now_s` (unix seconds): `L`, and every
/// bucket `<end>` with end > now_s ("p", the prune time, is not a count).
pub fn live_bytes(fields: &[(String, i64)], now_s: u64) -> u64 {
    fields
        .iter()
        .filter(|(name, _)| match name.as_str() {
            "L" => true,
            "p" => false,
            end => end.parse::<u64>().is_ok_and(|end| end > now_s),
        })
        .map(|(_, bytes)| (*bytes).max(0) as u64)
        .sum()
}

/// The tenant's stored bytes over every partition, by Redis' clock. Single-key
/// commands sent together: on a cluster they go to their nodes at once.
pub async fn stored_bytes(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
) -> Result<u64, StoreError> {
    let hashes = try_join_all(keys.all_partitions().map(|p| {
        let mut c = conn.clone();
        async move {
            let fields: Vec<(String, i64)> = ::redis::cmd("HGETALL")
                .arg(p.usage(tenant))
                .query_async(&mut c)
                .await?;
            Ok::<_, StoreError>(fields)
        }
    }));
    let mut c = conn.clone();
    let time = async move {
        let (secs, _micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut c).await?;
        Ok::<_, StoreError>(secs)
    };
    let (hashes, now_s) = futures_util::try_join!(hashes, time)?;
    Ok(hashes.iter().map(|h| live_bytes(h, now_s)).sum())
}

/// The bytes a registered waiter is charged, as `waiter_bytes` in
/// `lua/shared/delivery.lua` computes them (the two are held equal by a test): its event
/// hash field and value, its deadline member and its run-index member, plus the fixed
/// per-item overhead `ITEM` of `lua/shared/usage.lua` for each of the three.
pub fn waiter_bytes(tenant: &TenantName, event: &EventId, field: &str, waiter: &str) -> u64 {
    (3 * field.len() + waiter.len() + tenant.as_str().len() + event.as_str().len() + 2 + 3 * ITEM)
        as u64
}

/// Sets every account's field `L` to the bytes of the waiters its tenant holds in its
/// partition (`found`: the partition keys of the store), for when scripts that do not
/// keep the accounts changed waiters: after `herald repartition`, and after a rolling
/// upgrade from a version without accounts (`herald migrate`). Waits and notifies running
/// meanwhile can leave an account off by what they change during the recount. Returns
/// the bytes counted.
pub async fn recount_waiters(
    conn: &mut Conn,
    keys: &Keys,
    found: &[String],
) -> Result<u64, StoreError> {
    use ::redis::AsyncCommands;
    let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
    for key in found {
        if let Some(super::keys::PartitionKey::EventWaiters {
            partition,
            tenant,
            event,
        }) = keys.parse_partition_key(key)
        {
            let fields: Vec<(String, String)> = conn.hgetall(key).await?;
            let bytes: u64 = fields
                .iter()
                .map(|(field, waiter)| waiter_bytes(&tenant, &event, field, waiter))
                .sum();
            *sums
                .entry(keys.partition(partition).usage(&tenant))
                .or_default() += bytes;
        }
    }
    let accounts = conn
        .scan_keys(&keys.usage_pattern(), None)
        .await?
        .unwrap_or_default();
    for account in accounts {
        if !sums.contains_key(&account) {
            let _: () = conn.hdel(&account, "L").await?;
        }
    }
    let mut total = 0;
    for (account, bytes) in sums {
        let _: () = conn.hset(&account, "L", bytes).await?;
        total += bytes;
    }
    Ok(total)
}

/// `ITEM` of `lua/shared/usage.lua`.
const ITEM: usize = 48;

/// Most keys examined by one count of every tenant's stored bytes (SCAN is O(keyspace)).
const SCAN_LIMIT: usize = 100_000;

/// Every tenant's stored bytes summed per partition (index = partition), for the
/// `herald_stored_bytes` gauge: a SCAN of the usage hashes on every node, then one
/// pipeline per partition. None when the keyspace is too large to scan this time.
pub async fn per_partition(conn: &mut Conn, keys: &Keys) -> Result<Option<Vec<u64>>, StoreError> {
    let Some(found) = conn
        .scan_keys(&keys.usage_pattern(), Some(SCAN_LIMIT))
        .await?
    else {
        return Ok(None);
    };
    let (now_s, _micros): (u64, u64) = ::redis::cmd("TIME").query_async(conn).await?;
    let mut sums = vec![0u64; keys.partitions() as usize];
    for (partition, hashes) in keys.by_partition(&found) {
        let mut pipe = ::redis::pipe();
        for key in &hashes {
            pipe.cmd("HGETALL").arg(key);
        }
        let all: Vec<Vec<(String, i64)>> = pipe.query_async(conn).await?;
        if let Some(sum) = sums.get_mut(partition as usize) {
            *sum += all.iter().map(|h| live_bytes(h, now_s)).sum::<u64>();
        }
    }
    Ok(Some(sums))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_bytes_is_the_scripts_formula() {
        let usage = include_str!("../../lua/shared/usage.lua");
        let delivery = include_str!("../../lua/shared/delivery.lua");
        assert!(usage.contains(&format!("local ITEM = {ITEM}\n")));
        assert!(
            delivery.contains("return 3 * #field + #waiter + #tenant + #event + 2 + 3 * ITEM\n")
        );
        let tenant = TenantName::parse("acme").unwrap();
        let event = EventId::parse("e-1").unwrap();
        assert_eq!(
            waiter_bytes(&tenant, &event, "r|w", "{}"),
            (9 + 2 + 4 + 3 + 2 + 144) as u64
        );
    }

    #[test]
    fn only_l_and_buckets_not_ended_count() {
        let fields = vec![
            ("L".to_owned(), 100),
            ("p".to_owned(), 1_000_060),
            ("1000000".to_owned(), 5),
            ("1000060".to_owned(), 7),
            ("999940".to_owned(), 11),
        ];
        assert_eq!(live_bytes(&fields, 999_999), 112);
        assert_eq!(live_bytes(&fields, 1_000_000), 107);
        assert_eq!(live_bytes(&fields, 1_000_060), 100);
    }
}
