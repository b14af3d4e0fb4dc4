//! The tenant's stored bytes (the `stored_bytes` quota), as the scripts keep them: one
//! HASH per tenant and partition, `{p<n>}:usage:<tenant>`, charged and released by the
//! script that writes or removes each item (`lua/shared/usage.lua` states the format).
//! This module only reads: the sum over the partitions of field `L` and of the buckets
//! that have not ended yet.

use futures_util::future::try_join_all;

use super::{Conn, Keys, StoreError};
use crate::domain::TenantName;

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

#[cfg(test)]
mod tests {
    use super::*;

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
