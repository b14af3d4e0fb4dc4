//! `GET /v2/workflows/runs/{runId}/saved`: the lookback notifications saved for a run
//! (`POST /v2/notify/{runId}/{eventId}` with nobody of the run waiting), per event, oldest
//! first — what the run's next waits will consume. Bounded in events, items and body bytes.
//!
//! The run's events are the members of its `run:<tenant>:<run>` set in every partition
//! (src/store/keys.rs); each event's items are read from its `saved:<tenant>:<run>|<event>`
//! list a few at a time, so one answer holds at most [`MAX_BODY_BYTES`] of bodies (plus one
//! chunk read past it).

use base64::Engine;
use futures_util::future::try_join_all;
use redis::AsyncCommands;
use serde_json::{json, Value};

use actix_web::{HttpRequest, HttpResponse};

use super::auth::Tenant;
use super::{path_param, State};
use crate::domain::{EventId, RunId};
use crate::error::ApiError;
use crate::limits::RateClass;
use crate::store::StoreError;

/// Most events listed.
pub const MAX_EVENTS: usize = 100;
/// Most saved notifications listed, over all events.
pub const MAX_ITEMS: usize = 1000;
/// Most body bytes returned in all; the bodies of later items are left out (`body: null`).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Items read per LRANGE.
const CHUNK: isize = 8;

pub async fn list(
    state: State,
    Tenant(tenant): Tenant,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let run = RunId::parse(path_param(&req, "runId"))?;
    let mut conn = state.redis.get();
    state
        .check_rate(&mut conn, &tenant, RateClass::Read)
        .await?;
    // Single-key commands, sent together: the partitions may live on different nodes.
    let per_partition = try_join_all(state.keys.all_partitions().map(|p| {
        let mut c = conn.clone();
        let key = p.run_events(&tenant, &run);
        async move {
            let members: Vec<String> = c.smembers(key).await.map_err(StoreError::from)?;
            Ok::<_, StoreError>((p, members))
        }
    }))
    .await?;
    let mut events: Vec<(crate::store::Partition, EventId)> = per_partition
        .into_iter()
        .flat_map(|(p, members)| {
            members
                .into_iter()
                .filter_map(|m| EventId::parse(&m).ok())
                .map(move |e| (p.clone(), e))
        })
        .collect();
    events.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));

    let now = crate::history::now_ms();
    let engine = base64::engine::general_purpose::STANDARD;
    let (mut items_left, mut bytes_left) = (MAX_ITEMS, MAX_BODY_BYTES);
    let mut truncated = false;
    let mut listed: Vec<Value> = Vec::new();
    for (partition, event) in &events {
        let key = partition.saved(&tenant, &run, event);
        let count: usize = conn.llen(&key).await.map_err(StoreError::from)?;
        if count == 0 {
            continue;
        }
        if listed.len() == MAX_EVENTS {
            truncated = true;
            break;
        }
        let mut items: Vec<Value> = Vec::new();
        let mut start: isize = 0;
        while (start as usize) < count && items_left > 0 {
            let stop = start + CHUNK.min(items_left as isize) - 1;
            let raw: Vec<Vec<u8>> = conn
                .lrange(&key, start, stop)
                .await
                .map_err(StoreError::from)?;
            if raw.is_empty() {
                break;
            }
            start += raw.len() as isize;
            for item in raw {
                let Some(saved) = Saved::parse(&item) else {
                    continue;
                };
                if saved.expires_at <= now {
                    continue;
                }
                items_left = items_left.saturating_sub(1);
                let body = if saved.body.len() <= bytes_left {
                    bytes_left -= saved.body.len();
                    Value::String(engine.encode(saved.body))
                } else {
                    truncated = true;
                    Value::Null
                };
                items.push(json!({
                    "messageId": saved.message_id,
                    "contentType": saved.content_type,
                    "savedAt": saved.saved_at,
                    "expiresAt": saved.expires_at,
                    "bytes": saved.body.len(),
                    "body": body,
                }));
            }
        }
        if (start as usize) < count {
            truncated = true;
        }
        if !items.is_empty() {
            listed.push(json!({ "eventId": event.as_str(), "count": count, "items": items }));
        }
        if items_left == 0 {
            truncated |= events.len() > listed.len();
            break;
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "workflowRunId": run.as_str(),
        "retentionSecs": state.settings.waiters.saved_ttl_secs,
        "events": listed,
        "truncated": truncated,
    })))
}

/// One saved item: `<expiresMs>\n<messageId>\n<contentTypeJSON>\n<savedAtMs>\n<body>`
/// (lua/notify_run.lua).
struct Saved<'a> {
    expires_at: i64,
    message_id: String,
    content_type: Value,
    saved_at: i64,
    body: &'a [u8],
}

impl<'a> Saved<'a> {
    fn parse(item: &'a [u8]) -> Option<Self> {
        let mut parts = item.splitn(5, |b| *b == b'\n');
        fn text(p: Option<&[u8]>) -> Option<&str> {
            p.and_then(|p| std::str::from_utf8(p).ok())
        }
        let expires_at = text(parts.next())?.parse().ok()?;
        let message_id = text(parts.next())?.to_owned();
        let content_type = text(parts.next())
            .and_then(|ct| serde_json::from_str::<Value>(ct).ok())
            .filter(Value::is_string)
            .unwrap_or(Value::Null);
        let saved_at = text(parts.next())?.parse().ok()?;
        let body = parts.next().unwrap_or_default();
        Some(Saved {
            expires_at,
            message_id,
            content_type,
            saved_at,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Saved;

    #[test]
    fn a_saved_item_is_taken_apart_with_newlines_in_its_body() {
        let item = b"1800000000000\nmsg_1\n\"text/plain\"\n1700000000000\na\nb";
        let saved = Saved::parse(item).unwrap();
        assert_eq!(saved.expires_at, 1_800_000_000_000);
        assert_eq!(saved.message_id, "msg_1");
        assert_eq!(saved.content_type, "text/plain");
        assert_eq!(saved.saved_at, 1_700_000_000_000);
        assert_eq!(saved.body, b"a\nb");
        assert!(Saved::parse(b"x\ny").is_none());
    }
}
