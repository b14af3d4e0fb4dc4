//! A cancelled run's tombstone: one small key in the run's home partition
//! ([`Keys::run_partition`], where its workflow record lives), not one per partition.
//!
//! A cancel sets the tombstone first, then sweeps every partition (`lua/cancel.lua`). A
//! wait or lookback notify of the run must not leave state behind it:
//! - on standalone Redis (and Sentinel), and on a cluster when the event's partition is
//!   the run's home, the operation's script checks the tombstone itself (same step);
//! - on a cluster otherwise the tombstone is in another slot. The caller checks it just
//!   before the script ([`Tombstone::exists`]) and again once the script has stored
//!   something (a waiter, a saved notification). If it is there then, the caller removes
//!   what it stored ([`Tombstone::undo`]) and answers as for a cancelled run. If it is
//!   not, the cancel's `SET` came after that read, so after the write, and its sweep of
//!   the partition, which starts after the `SET`, removes what was stored. Either way
//!   nothing of a cancelled run survives the cancel.

use ::redis::AsyncCommands;

use super::keys::{Keys, Partition};
use super::redis::Conn;
use super::{scripts, StoreError};
use crate::domain::{EventId, RunId, TenantName};

pub struct Tombstone {
    pub key: String,
    home: u16,
}

impl Tombstone {
    pub fn of(keys: &Keys, tenant: &TenantName, run: &RunId) -> Self {
        let home = keys.run_partition(tenant, run);
        Tombstone {
            key: home.cancelled(tenant, run),
            home: home.index,
        }
    }

    /// Whether a script running in `partition` can check the tombstone itself.
    pub fn folded(&self, conn: &Conn, partition: &Partition) -> bool {
        !conn.is_cluster() || partition.index == self.home
    }

    pub async fn exists(&self, conn: &mut Conn) -> Result<bool, StoreError> {
        Ok(conn.exists(&self.key).await?)
    }

    /// Removes the run's state on `event` in `partition` (its waiters and saved
    /// notifications there), as the cancel's sweep does: what a wait or lookback notify
    /// stored while the run was being cancelled.
    pub async fn undo(
        conn: &mut Conn,
        partition: &Partition,
        tenant: &TenantName,
        run: &RunId,
        event: &EventId,
    ) -> Result<(), StoreError> {
        let mut events = vec![event.clone()];
        for _ in 0..1000 {
            let cleared = scripts::cancel(conn, partition, tenant, run, None, &events).await?;
            events = cleared
                .remaining_events
                .iter()
                .filter_map(|e| EventId::parse(e).ok())
                .filter(|e| e == event)
                .collect();
            if events.is_empty() {
                break;
            }
        }
        Ok(())
    }
}
