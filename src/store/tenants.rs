//! Tenant records, API tokens and signing keys.
//!
//! Tokens are base64 JSON around a random secret (`hld_` + 32 base62 characters, about 190
//! bits; see [`new_tenant_token`]) and stored only as
//! their SHA-256: `<prefix>:token:<sha256 hex>` → tenant name. A leaked Redis dump holds
//! no usable token. Lookups compare the stored name after a constant-time hash match.

use ::redis::AsyncCommands;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Conn, Keys, StoreError};
use crate::domain::TenantName;

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A secret in the old token shape (`hld_` + 32 base62 characters); the admin token of
/// `herald dev` still uses it.
pub fn new_token() -> String {
    format!("hld_{}", random_string(32))
}

/// A tenant token: standard base64 of `{"UserID":"<tenant>","Password":"hld_…"}`, the
/// shape of QStash tokens, which the Upstash Workflow SDK decodes to read `UserID` (the
/// tenant) for `createWebhook` URLs. Only the whole string is a credential (it is stored
/// as its SHA-256 like every token); the name inside is not trusted by Herald. The random
/// part is drawn again until the base64 text has no `+`, `/` or `=`, so a token is
/// `[A-Za-z0-9]` only, like the old `hld_` tokens (which keep working).
pub fn new_tenant_token(name: &TenantName) -> String {
    use base64::Engine;
    let mut token = String::new();
    // Bounded: a tenant name whose own bytes encode to `+` or `/` cannot be helped by
    // drawing again; its token then holds them (still valid base64).
    for _ in 0..200 {
        let mut json =
            serde_json::json!({ "UserID": name.as_str(), "Password": new_token() }).to_string();
        // JSON whitespace before the closing brace: a length divisible by 3 has no `=`.
        while json.len() % 3 != 0 {
            json.insert(json.len() - 1, ' ');
        }
        token = base64::engine::general_purpose::STANDARD.encode(json);
        if token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            break;
        }
    }
    token
}

pub fn new_signing_key() -> String {
    format!("sig_{}", random_string(28))
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What `herald tenant create` and `POST /admin/tenants` hand out once.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTenant {
    pub name: String,
    pub token: String,
    pub current_signing_key: String,
    pub next_signing_key: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantInfo {
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SigningKeys {
    pub current: String,
    pub next: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {0} already exists")]
    Exists(String),
    #[error("tenant {0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<::redis::RedisError> for TenantError {
    fn from(e: ::redis::RedisError) -> Self {
        TenantError::Store(e.into())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub async fn create(
    conn: &mut Conn,
    keys: &Keys,
    name: &TenantName,
) -> Result<NewTenant, TenantError> {
    let key = keys.tenant(name);
    let token = new_tenant_token(name);
    let current = new_signing_key();
    let next = new_signing_key();
    let hash = token_hash(&token);
    // The three keys live in different cluster slots. Order: the token index (an orphan
    // index is harmless: the record is the authority, see `authenticate`), the tenants
    // set, then the record, all fields in one script: the record is never half written,
    // and a create that failed before it can simply be repeated.
    let exists: bool = conn.exists(&key).await?;
    if exists {
        return Err(TenantError::Exists(name.to_string()));
    }
    let _: () = conn.set(keys.token(&hash), name.as_str()).await?;
    let _: () = conn.sadd(keys.tenants(), name.as_str()).await?;
    let created_at = now_ms().to_string();
    let created = super::scripts::tenant_create(
        conn,
        &key,
        &[
            ("name", name.as_str()),
            ("created_at", &created_at),
            ("token_sha256", &hash),
            ("signing_current", &current),
            ("signing_next", &next),
        ],
    )
    .await?;
    if !created {
        let _: () = conn.del(keys.token(&hash)).await?;
        return Err(TenantError::Exists(name.to_string()));
    }
    Ok(NewTenant {
        name: name.to_string(),
        token,
        current_signing_key: current,
        next_signing_key: next,
    })
}

/// Creates the tenant, or, when it exists, gives it a new token (used by `herald dev`).
pub async fn create_or_reissue(
    conn: &mut Conn,
    keys: &Keys,
    name: &TenantName,
) -> Result<NewTenant, TenantError> {
    match create(conn, keys, name).await {
        Err(TenantError::Exists(_)) => {
            let token = rotate_token(conn, keys, name).await?;
            let signing = signing_keys(conn, keys, name).await?;
            Ok(NewTenant {
                name: name.to_string(),
                token,
                current_signing_key: signing.current,
                next_signing_key: signing.next,
            })
        }
        other => other,
    }
}

/// Issues a new token and revokes the old one.
pub async fn rotate_token(
    conn: &mut Conn,
    keys: &Keys,
    name: &TenantName,
) -> Result<String, TenantError> {
    let key = keys.tenant(name);
    let old: Option<String> = conn.hget(&key, "token_sha256").await?;
    let Some(old) = old else {
        return Err(TenantError::NotFound(name.to_string()));
    };
    let token = new_tenant_token(name);
    let hash = token_hash(&token);
    // Index first, then the authoritative record, then the old index (keys in different
    // cluster slots, so no pipeline): the new token works from the record's write on.
    let _: () = conn.set(keys.token(&hash), name.as_str()).await?;
    let _: () = conn.hset(&key, "token_sha256", &hash).await?;
    let _: () = conn.del(keys.token(&old)).await?;
    Ok(token)
}

/// Revokes the tenant's token without issuing a new one.
pub async fn revoke_token(
    conn: &mut Conn,
    keys: &Keys,
    name: &TenantName,
) -> Result<(), TenantError> {
    let key = keys.tenant(name);
    let old: Option<String> = conn.hget(&key, "token_sha256").await?;
    let Some(old) = old else {
        return Err(TenantError::NotFound(name.to_string()));
    };
    // The record first: from its write on, the old token is refused.
    let _: () = conn.hset(&key, "token_sha256", "").await?;
    let _: () = conn.del(keys.token(&old)).await?;
    Ok(())
}

pub async fn list(conn: &mut Conn, keys: &Keys) -> Result<Vec<TenantInfo>, TenantError> {
    let mut names: Vec<String> = conn.smembers(keys.tenants()).await?;
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Ok(tenant) = TenantName::parse(&name) else {
            continue;
        };
        let created: Option<i64> = conn.hget(keys.tenant(&tenant), "created_at").await?;
        out.push(TenantInfo {
            name,
            created_at: created.unwrap_or(0),
        });
    }
    Ok(out)
}

/// The tenant a token belongs to, or None for an unknown or revoked token.
pub async fn authenticate(
    conn: &mut Conn,
    keys: &Keys,
    token: &str,
) -> Result<Option<TenantName>, StoreError> {
    let hash = token_hash(token);
    let name: Option<String> = conn.get(keys.token(&hash)).await?;
    let Some(name) = name.and_then(|n| TenantName::parse(&n).ok()) else {
        return Ok(None);
    };
    // The token key is the index; the tenant record is the authority (a revoked token's
    // index entry could survive a partial failure). Compare hashes in constant time.
    let current: Option<String> = conn.hget(keys.tenant(&name), "token_sha256").await?;
    match current {
        Some(c) if bool::from(c.as_bytes().ct_eq(hash.as_bytes())) => Ok(Some(name)),
        _ => Ok(None),
    }
}

pub async fn signing_keys(
    conn: &mut Conn,
    keys: &Keys,
    name: &TenantName,
) -> Result<SigningKeys, TenantError> {
    let (current, next): (Option<String>, Option<String>) = ::redis::cmd("HMGET")
        .arg(keys.tenant(name))
        .arg("signing_current")
        .arg("signing_next")
        .query_async(conn)
        .await?;
    match (current, next) {
        (Some(current), Some(next)) => Ok(SigningKeys { current, next }),
        _ => Err(TenantError::NotFound(name.to_string())),
    }
}

/// Promotes the next signing key to current and makes a new next key, atomically
/// (`lua/rotate_signing_keys.lua`).
pub async fn rotate_signing_keys(
    conn: &mut Conn,
    keys: &Keys,
    name: &TenantName,
) -> Result<SigningKeys, TenantError> {
    let rotated = super::scripts::rotate_signing_keys(conn, &keys.tenant(name), &new_signing_key())
        .await?
        .ok_or_else(|| TenantError::NotFound(name.to_string()))?;
    let rotated = SigningKeys {
        current: rotated.0,
        next: rotated.1,
    };
    Ok(rotated)
}
