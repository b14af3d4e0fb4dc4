//! The tenants' dead letters: one stream per tenant and partition
//! (`<prefix>:{p<n>}:dlq:<tenant>`), fields `j` job JSON, `b` body or `br` the id of the
//! body key holding it (a body stored once: lua/README.md, "Bodies"), `s` last HTTP
//! status (0 when there was no response), `r` last error, `at` when (unix ms), and `d` on
//! poison entries (times handed to a worker without an outcome).
//!
//! A dead letter is named across partitions by a [`DeadLetterId`]
//! (`<partition>-<ms>-<seq>`). Listing merges the tenant's streams of the partitions asked
//! for, oldest first by (stream id, partition); a cursor is the id of the last dead letter
//! looked at, so a page never repeats or skips one. Every key is built from the
//! authenticated tenant, so a tenant can neither list nor name another tenant's letters.

use std::collections::VecDeque;
use std::fmt;

use ::redis::streams::{StreamId, StreamRangeReply};
use ::redis::AsyncCommands;

use super::{scripts, Conn, Keys, Partition, StoreError};
use crate::domain::{InvalidInput, TenantName};
use crate::waiter::Job;

/// Most dead letters examined for one page; with a filter a page can hold fewer matches
/// than asked for (even none) and still carry a cursor to go on from.
pub const SCAN_LIMIT: usize = 1000;

/// A dead letter's name: its partition and its stream id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetterId {
    // Field order is the listing order: stream id first, partition to break ties.
    ms: u64,
    seq: u64,
    partition: u16,
}

fn digits(part: &str, max_len: usize) -> Option<u64> {
    if part.is_empty() || part.len() > max_len || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

impl DeadLetterId {
    /// Parses `<partition>-<ms>-<seq>` strictly: decimal digits only, partition below
    /// `partitions`.
    pub fn parse(value: &str, partitions: u16) -> Result<Self, InvalidInput> {
        let invalid = || {
            InvalidInput(format!(
                "{value:?} is not a dead letter id (expected <partition>-<ms>-<seq>, as listed by GET /v2/dlq)"
            ))
        };
        let mut parts = value.split('-');
        let (Some(p), Some(ms), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let partition = digits(p, 5)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p < partitions)
            .ok_or_else(invalid)?;
        Ok(Self {
            partition,
            ms: digits(ms, 20).ok_or_else(invalid)?,
            seq: digits(seq, 20).ok_or_else(invalid)?,
        })
    }

    fn from_stream(partition: u16, stream_id: &str) -> Option<Self> {
        let (ms, seq) = stream_id.split_once('-')?;
        Some(Self {
            partition,
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    pub fn partition(&self) -> u16 {
        self.partition
    }

    /// The id inside its partition's stream.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.partition, self.ms, self.seq)
    }
}

/// A stored dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub job: Job,
    /// The delivery's event body (what the job was built from).
    pub body: Vec<u8>,
    /// The body key the letter references (its body is read from there), None for a body
    /// inline.
    pub body_ref: Option<String>,
    pub last_status: u16,
    pub last_error: String,
    /// Unix ms.
    pub dead_lettered_at: i64,
    /// Times the last attempt was handed to a worker without an outcome (poison entries).
    pub handed_out: u32,
}

impl DeadLetter {
    fn from_entry(partition: u16, entry: &StreamId) -> Option<Self> {
        let job: Job = serde_json::from_str(&entry.get::<String>("j")?).ok()?;
        Some(Self {
            id: DeadLetterId::from_stream(partition, &entry.id)?,
            job,
            body: entry.get("b").unwrap_or_default(),
            body_ref: entry.get("br"),
            last_status: entry.get("s").unwrap_or(0),
            last_error: entry.get("r").unwrap_or_default(),
            dead_lettered_at: entry.get("at").unwrap_or(0),
            handed_out: entry.get("d").unwrap_or(0),
        })
    }

    /// Attempts made: the failed ones recorded in the job, plus the hand-outs of a poison
    /// entry's last attempt.
    pub fn attempts(&self) -> u32 {
        self.job.a + self.handed_out
    }

    /// The URL of the failed attempt: the event's, or the timeout's.
    pub fn url(&self) -> &str {
        self.job.w.target(self.job.k).0
    }
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts; None when every stream was read to its end.
    pub cursor: Option<DeadLetterId>,
}

/// One partition's stream during a listing: a buffer of read entries and where to read on.
struct Source {
    partition: u16,
    key: String,
    /// XRANGE start of the next read (`-`, an id, or an exclusive `(id`).
    start: String,
    buffer: VecDeque<(DeadLetterId, StreamId)>,
    exhausted: bool,
}

/// How much one listing may read: letters returned, and bytes of them (jobs and bodies).
#[derive(Debug, Clone, Copy)]
pub struct PageBound {
    pub count: usize,
    pub bytes: usize,
    /// The largest one letter can be (its body at most `server.max_body_bytes`, plus
    /// its job): read batches are sized so that what is buffered stays within `bytes`
    /// plus one letter per partition.
    pub letter_bytes: usize,
}

/// Lists the tenant's dead letters in `partitions` after `after`, oldest first: at most
/// `bound.count` that satisfy `matches` and about `bound.bytes` of them (a page always
/// holds at least one), looking at no more than [`SCAN_LIMIT`].
pub async fn list(
    conn: &mut Conn,
    tenant: &TenantName,
    partitions: &[Partition],
    after: Option<&DeadLetterId>,
    bound: PageBound,
    matches: impl Fn(&DeadLetter) -> bool,
) -> Result<Page, StoreError> {
    let count = bound.count;
    let mut sources: Vec<Source> = partitions
        .iter()
        .map(|p| Source {
            partition: p.index,
            key: p.dead_letters(tenant),
            // Ties on the stream id are ordered by partition: a partition after the
            // cursor's may still hold the cursor's stream id itself.
            start: match after {
                None => "-".to_owned(),
                Some(c) if p.index > c.partition => c.stream_id(),
                Some(c) => format!("({}", c.stream_id()),
            },
            buffer: VecDeque::new(),
            exhausted: false,
        })
        .collect();
    let by_count = if partitions.len() <= 1 {
        100
    } else {
        (count / partitions.len() + 1).clamp(8, 100)
    };
    // What one read of every partition may buffer stays within the byte bound.
    let by_bytes = bound.bytes / (partitions.len().max(1) * bound.letter_bytes.max(1));
    let batch = by_count.min(by_bytes).max(1);
    let mut letters: Vec<DeadLetter> = Vec::new();
    let mut bytes = 0usize;
    let mut last: Option<DeadLetterId> = None;
    let mut examined = 0;
    while letters.len() < count
        && examined < SCAN_LIMIT
        && (letters.is_empty() || bytes < bound.bytes)
    {
        refill(conn, &mut sources, batch).await?;
        let Some(next) = sources
            .iter_mut()
            .filter_map(|s| {
                let id = s.buffer.front()?.0;
                Some((id, s))
            })
            .min_by_key(|(id, _)| *id)
            .map(|(_, s)| s)
        else {
            load_bodies(conn, partitions, &mut letters).await?;
            return Ok(Page {
                letters,
                cursor: None,
            });
        };
        let (id, entry) = next.buffer.pop_front().expect("a buffered entry");
        examined += 1;
        last = Some(id);
        match DeadLetter::from_entry(id.partition, &entry) {
            Some(letter) if matches(&letter) => {
                // A referenced body is read later; count it as the largest it can be.
                bytes += letter.body.len()
                    + letter.job.w.url.len()
                    + if letter.body_ref.is_some() {
                        bound.letter_bytes
                    } else {
                        0
                    };
                letters.push(letter)
            }
            Some(_) => {}
            None => tracing::warn!(dead_letter = %id, "undecodable dead letter skipped"),
        }
    }
    refill(conn, &mut sources, batch).await?;
    let more = sources.iter().any(|s| !s.buffer.is_empty());
    load_bodies(conn, partitions, &mut letters).await?;
    Ok(Page {
        letters,
        cursor: if more { last } else { None },
    })
}

/// Reads the bodies of the letters that reference a body key (each key once; one round
/// trip, on a cluster one per key, all at once). A body key that is gone leaves the body
/// empty.
async fn load_bodies(
    conn: &mut Conn,
    partitions: &[Partition],
    letters: &mut [DeadLetter],
) -> Result<(), StoreError> {
    // Each letter's body key (None: its body is inline), and the keys to read, once each.
    let keys: Vec<Option<String>> = letters
        .iter()
        .map(|letter| {
            let r = letter.body_ref.as_ref()?;
            let p = partitions.iter().find(|p| p.index == letter.id.partition)?;
            Some(p.body(r))
        })
        .collect();
    let mut wanted: Vec<&String> = keys.iter().flatten().collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Ok(());
    }
    let reads = wanted
        .iter()
        .map(|key| {
            let mut read = ::redis::cmd("HGET");
            read.arg(key).arg("b");
            read
        })
        .collect();
    let bodies: Vec<Option<Vec<u8>>> = conn.query_each(reads).await?;
    for (letter, key) in letters.iter_mut().zip(&keys) {
        let Some(key) = key else { continue };
        if let Ok(i) = wanted.binary_search(&key) {
            if let Some(body) = &bodies[i] {
                letter.body = body.clone();
            }
        }
    }
    Ok(())
}

/// Reads the next batch of every source whose buffer ran empty (one round trip; on a
/// cluster, one per partition, all at once).
async fn refill(conn: &mut Conn, sources: &mut [Source], batch: usize) -> Result<(), StoreError> {
    let wanted: Vec<usize> = (0..sources.len())
        .filter(|i| sources[*i].buffer.is_empty() && !sources[*i].exhausted)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let reads = wanted
        .iter()
        .map(|i| {
            let mut read = ::redis::cmd("XRANGE");
            read.arg(&sources[*i].key)
                .arg(&sources[*i].start)
                .arg("+")
                .arg("COUNT")
                .arg(batch);
            read
        })
        .collect();
    // The sources are in different partitions (slots).
    let replies: Vec<StreamRangeReply> = conn.query_each(reads).await?;
    for (i, reply) in wanted.into_iter().zip(replies) {
        let source = &mut sources[i];
        source.exhausted = reply.ids.len() < batch;
        if let Some(last) = reply.ids.last() {
            source.start = format!("({}", last.id);
        }
        for entry in reply.ids {
            match DeadLetterId::from_stream(source.partition, &entry.id) {
                Some(id) => source.buffer.push_back((id, entry)),
                None => tracing::warn!(id = %entry.id, "dead letter with an unexpected stream id"),
            }
        }
    }
    Ok(())
}

fn stream_of(keys: &Keys, tenant: &TenantName, id: &DeadLetterId) -> (Partition, String) {
    let partition = keys.partition(id.partition);
    let key = partition.dead_letters(tenant);
    (partition, key)
}

/// One dead letter of the tenant, if it exists.
pub async fn get(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    id: &DeadLetterId,
) -> Result<Option<DeadLetter>, StoreError> {
    let (partition, key) = stream_of(keys, tenant, id);
    let stream_id = id.stream_id();
    let reply: StreamRangeReply = conn.xrange(&key, &stream_id, &stream_id).await?;
    let mut letters: Vec<DeadLetter> = reply
        .ids
        .first()
        .and_then(|e| DeadLetter::from_entry(id.partition, e))
        .into_iter()
        .collect();
    load_bodies(conn, std::slice::from_ref(&partition), &mut letters).await?;
    Ok(letters.pop())
}

/// The body id a dead letter references (None for a body inline, or no such letter).
async fn body_ref_of(
    conn: &mut Conn,
    key: &str,
    stream_id: &str,
) -> Result<Option<String>, StoreError> {
    let reply: StreamRangeReply = conn.xrange(key, stream_id, stream_id).await?;
    Ok(reply.ids.first().and_then(|e| e.get::<String>("br")))
}

/// Deletes a dead letter (and its hold on the body key it references); false when it did
/// not exist.
pub async fn delete(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    id: &DeadLetterId,
) -> Result<bool, StoreError> {
    let (partition, key) = stream_of(keys, tenant, id);
    // The script checks the reference again: a letter is never changed, only deleted.
    let body_ref = body_ref_of(conn, &key, &id.stream_id()).await?;
    scripts::delete_dead_letter(
        conn,
        &partition,
        tenant,
        &id.stream_id(),
        body_ref.as_deref(),
    )
    .await
}

/// What [`redrive`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Redrive {
    /// Enqueued again: the delivery's message id.
    Sent(String),
    /// The tenant has no such dead letter.
    NoLetter,
    /// The body key the letter references is gone (see lua/README.md, "Bodies"); nothing
    /// was changed.
    BodyGone,
}

/// Sends a dead letter again (attempts reset, same message id).
pub async fn redrive(
    conn: &mut Conn,
    keys: &Keys,
    tenant: &TenantName,
    id: &DeadLetterId,
) -> Result<Redrive, StoreError> {
    let (partition, key) = stream_of(keys, tenant, id);
    let stream_id = id.stream_id();
    let reply: StreamRangeReply = conn.xrange(&key, &stream_id, &stream_id).await?;
    let Some(letter) = reply
        .ids
        .first()
        .and_then(|e| DeadLetter::from_entry(id.partition, e))
    else {
        return Ok(Redrive::NoLetter);
    };
    let mut job = letter.job;
    job.a = 0;
    job.d = 0;
    let job_json = serde_json::to_string(&job)
        .map_err(|e| StoreError::Reply(format!("re-encoding a dead letter's job: {e}")))?;
    let redriven = scripts::redrive(
        conn,
        &partition,
        tenant,
        &stream_id,
        &job_json,
        letter.body_ref.as_deref(),
    )
    .await?;
    Ok(match redriven {
        scripts::Redriven::Enqueued(_) => Redrive::Sent(job.m),
        scripts::Redriven::NoLetter => Redrive::NoLetter,
        scripts::Redriven::BodyGone => Redrive::BodyGone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order_by_time_then_partition() {
        let id = DeadLetterId::parse("3-1700000000000-7", 16).unwrap();
        assert_eq!(id.partition(), 3);
        assert_eq!(id.stream_id(), "1700000000000-7");
        assert_eq!(id.to_string(), "3-1700000000000-7");
        let earlier_elsewhere = DeadLetterId::parse("9-1699999999999-0", 16).unwrap();
        let same_time_later_partition = DeadLetterId::parse("4-1700000000000-7", 16).unwrap();
        assert!(earlier_elsewhere < id);
        assert!(id < same_time_later_partition);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "3",
            "3-1",
            "3-1-2-4",
            "16-1-0",
            "-1-1-0",
            "+3-1-0",
            "3-+1-0",
            "3- 1-0",
            "3-1-0 ",
            "x-1-0",
            "3-1-x",
            "3-99999999999999999999999-0",
            "99999999-1-0",
            "3-1-0\n",
        ] {
            assert!(DeadLetterId::parse(bad, 16).is_err(), "{bad:?} accepted");
        }
    }
}
