//! The `herald` commands that talk to a running Herald over HTTP: `notify`, `wait`,
//! `waiters`, `history`, `dlq`, `keys`, and `tenant` (through `/admin`).
//!
//! Where: `--server` or `HERALD_URL` (default `http://127.0.0.1:8080`). Who: `--token`,
//! `HERALD_TOKEN` or `QSTASH_TOKEN` (tenant commands); `--admin-token` or
//! `HERALD_ADMIN_TOKEN` (`tenant`). Output is for humans unless `--json`, which prints
//! Herald's JSON answer as is. Exit codes: 0 done; 1 Herald refused the request (4xx);
//! 2 bad usage (missing token, bad arguments); 3 Herald unreachable or failing (5xx).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// A failed command, with the exit code it ends the process with.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Usage(String),
    #[error("Herald refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Unavailable(String),
}

impl RemoteError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteError::Refused { .. } => 1,
            RemoteError::Usage(_) => 2,
            RemoteError::Unavailable(_) => 3,
        }
    }
}

/// Where Herald is and how to talk to it.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Herald's base URL.
    #[arg(
        long = "server",
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// The tenant's token (else HERALD_TOKEN, else QSTASH_TOKEN).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print Herald's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Notify an event: every waiter present now, or, with --run, that run (saved for
    /// its next wait when it is not waiting yet).
    Notify {
        event_id: String,
        /// Lookback notify of this workflow run.
        #[arg(long)]
        run: Option<String>,
        /// The event's data (default: empty). `@FILE` reads a file, `@-` standard input.
        #[arg(long, default_value = "")]
        data: String,
        #[arg(long, default_value = "application/json")]
        content_type: String,
        #[command(flatten)]
        target: Target,
    },
    /// Register a waiter: POST to --to when the event happens, or to --timeout-url.
    Wait {
        event_id: String,
        /// Where the event is delivered.
        #[arg(long)]
        to: String,
        /// How long to wait (30s, 10m, 2h, 7d; default: the server's).
        #[arg(long)]
        timeout: Option<String>,
        /// Where the timeout is delivered (default: --to).
        #[arg(long)]
        timeout_url: Option<String>,
        /// The workflow run that waits.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The event's active waiters.
    Waiters {
        event_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// The event's recent outcomes: who was notified, deliveries and their status,
    /// dead letters, timeouts. Start here when a run did not resume.
    History {
        event_id: String,
        /// Most entries shown.
        #[arg(long)]
        count: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// The tenant's dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The tenant's signing keys (`herald keys rotate` promotes the next key).
    Keys {
        #[command(subcommand)]
        command: Option<KeysCommand>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, newest page first.
    List {
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Deliver a dead letter again.
    Retry {
        dlq_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a dead letter.
    Delete {
        dlq_id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Promote the next signing key to current and make a new next key.
    Rotate,
}

/// `herald tenant …` over `/admin` (the `--redis` form in [`crate::cli`] writes Redis).
#[derive(Args, Debug, Clone)]
pub struct AdminTarget {
    /// Herald's base URL.
    #[arg(
        long = "server",
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Herald's admin token (server.admin_token).
    #[arg(
        long,
        env = "HERALD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// Print Herald's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(server: &str, token: Option<String>, what: &str) -> Result<Self, RemoteError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RemoteError::Usage(format!("no token: {what}")))?;
        let base = server.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&base)
            .map_err(|e| RemoteError::Usage(format!("HERALD_URL {base:?} is not a URL: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| RemoteError::Unavailable(e.to_string()))?;
        Ok(Self { http, base, token })
    }

    fn tenant(target: &Target) -> Result<Self, RemoteError> {
        let token = target
            .token
            .clone()
            .or_else(|| std::env::var("QSTASH_TOKEN").ok());
        Self::new(
            &target.server,
            token,
            "pass --token, or set HERALD_TOKEN or QSTASH_TOKEN",
        )
    }

    /// Sends a request; a 2xx answer's JSON (or `null`) and headers, else the error.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(Value, reqwest::header::HeaderMap), RemoteError> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| {
            RemoteError::Unavailable(format!("cannot reach Herald at {}: {e}", self.base))
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| RemoteError::Unavailable(format!("reading Herald's answer: {e}")))?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            return Ok((body, headers));
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        if status >= 500 {
            Err(RemoteError::Unavailable(format!(
                "Herald failed (HTTP {status}): {message}"
            )))
        } else {
            Err(RemoteError::Refused { status, message })
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// What a path segment or query value keeps unencoded: the id alphabet.
const ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b':');

/// Percent-encodes one path segment or query value.
fn enc(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, ENCODED).to_string()
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Unix milliseconds as an ISO 8601 UTC time (to the millisecond).
pub fn iso_time(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn read_data(data: &str) -> Result<Vec<u8>, RemoteError> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| RemoteError::Usage(format!("reading standard input: {e}")))?;
            Ok(buf)
        }
        Some(path) => {
            std::fs::read(path).map_err(|e| RemoteError::Usage(format!("reading {path}: {e}")))
        }
        None => Ok(data.as_bytes().to_vec()),
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub async fn run(command: Command) -> Result<(), RemoteError> {
    match command {
        Command::Notify {
            event_id,
            run,
            data,
            content_type,
            target,
        } => {
            let client = Client::tenant(&target)?;
            let path = match &run {
                Some(run) => format!("/v2/notify/{}/{}", enc(run), enc(&event_id)),
                None => format!("/v2/notify/{}", enc(&event_id)),
            };
            let request = client
                .http
                .post(client.url(&path))
                .header("content-type", content_type)
                .body(read_data(&data)?);
            let (body, headers) = client.send(request).await?;
            if target.json {
                print_json(&body);
                return Ok(());
            }
            let outcome = headers
                .get("herald-notify-outcome")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let notified = body.as_array().cloned().unwrap_or_default();
            if outcome == "saved" {
                let message = headers
                    .get("herald-message-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                println!(
                    "saved for run {}'s next wait on {event_id} (message {message})",
                    run.unwrap_or_default()
                );
            } else if notified.is_empty() {
                println!("nobody is waiting for {event_id}: the notification is not kept");
            } else {
                println!("notified {} waiter(s) of {event_id}:", notified.len());
                for n in &notified {
                    let run = str_of(n, "workflowRunId");
                    println!(
                        "  {}  -> {}{}",
                        str_of(n, "messageId"),
                        n["waiter"]["url"].as_str().unwrap_or(""),
                        if run.is_empty() {
                            String::new()
                        } else {
                            format!("  (run {run})")
                        }
                    );
                }
            }
        }
        Command::Wait {
            event_id,
            to,
            timeout,
            timeout_url,
            run,
            target,
        } => {
            let client = Client::tenant(&target)?;
            let mut body = json!({ "url": to });
            if let Some(t) = timeout {
                body["timeout"] = t.into();
            }
            if let Some(u) = timeout_url {
                body["timeoutUrl"] = u.into();
            }
            if let Some(r) = run {
                body["workflowRunId"] = r.into();
            }
            let request = client
                .http
                .post(client.url(&format!("/v2/wait/{}", enc(&event_id))))
                .header("content-type", "application/json")
                .body(body.to_string());
            let (reply, _) = client.send(request).await?;
            if target.json {
                print_json(&reply);
            } else if str_of(&reply, "status") == "notified" {
                println!(
                    "notified at once from a saved notification: message {} (waiter {})",
                    str_of(&reply, "messageId"),
                    str_of(&reply, "waiterId")
                );
            } else {
                let deadline = reply["deadline"].as_i64().unwrap_or(0);
                println!(
                    "waiting for {event_id}: waiter {}, deadline {}",
                    str_of(&reply, "waiterId"),
                    iso_time(deadline * 1000)
                );
            }
        }
        Command::Waiters { event_id, target } => {
            let client = Client::tenant(&target)?;
            let request = client
                .http
                .get(client.url(&format!("/v2/waiters/{}", enc(&event_id))));
            let (reply, _) = client.send(request).await?;
            if target.json {
                print_json(&reply);
                return Ok(());
            }
            let waiters = reply.as_array().cloned().unwrap_or_default();
            if waiters.is_empty() {
                println!("nobody is waiting for {event_id}");
            }
            for w in &waiters {
                println!(
                    "{}  deadline {}  timeout -> {}",
                    str_of(w, "url"),
                    iso_time(w["deadline"].as_i64().unwrap_or(0) * 1000),
                    str_of(w, "timeoutUrl")
                );
            }
        }
        Command::History {
            event_id,
            count,
            target,
        } => {
            let client = Client::tenant(&target)?;
            let mut path = format!("/v2/events/{}/history", enc(&event_id));
            if let Some(n) = count {
                path.push_str(&format!("?count={n}"));
            }
            let (reply, _) = client.send(client.http.get(client.url(&path))).await?;
            if target.json {
                print_json(&reply);
                return Ok(());
            }
            print_history(&event_id, &reply);
        }
        Command::Dlq { command } => dlq(command).await?,
        Command::Keys { command, target } => {
            let client = Client::tenant(&target)?;
            let request = match command {
                Some(KeysCommand::Rotate) => client.http.post(client.url("/v2/keys/rotate")),
                None => client.http.get(client.url("/v2/keys")),
            };
            let (reply, _) = client.send(request).await?;
            if target.json {
                print_json(&reply);
            } else {
                println!(
                    "current signing key: {}\nnext signing key:    {}",
                    str_of(&reply, "current"),
                    str_of(&reply, "next")
                );
            }
        }
    }
    Ok(())
}

fn print_history(event_id: &str, reply: &Value) {
    let entries = reply["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!(
            "no history for {event_id} in the last {} s: no waiter was registered and no notify reached it (check the event id and the token's tenant)",
            reply["retentionSecs"].as_u64().unwrap_or(0)
        );
        return;
    }
    println!("history of {event_id}, newest first:");
    for e in &entries {
        let mut line = format!(
            "{}  {:<15}",
            iso_time(e["at"].as_i64().unwrap_or(0)),
            str_of(e, "outcome")
        );
        for (label, key) in [
            ("waiter", "waiterId"),
            ("run", "workflowRunId"),
            ("message", "messageId"),
        ] {
            if let Some(v) = e.get(key).and_then(Value::as_str) {
                line.push_str(&format!("  {label} {v}"));
            }
        }
        match e.get("status").and_then(Value::as_u64) {
            Some(0) => line.push_str("  no response"),
            Some(status) => line.push_str(&format!("  status {status}")),
            None => {}
        }
        if let Some(a) = e.get("attempt").and_then(Value::as_u64) {
            line.push_str(&format!("  attempt {a}"));
        }
        if let Some(d) = e.get("deadline").and_then(Value::as_i64) {
            line.push_str(&format!("  deadline {}", iso_time(d * 1000)));
        }
        if let Some(u) = e.get("url").and_then(Value::as_str) {
            line.push_str(&format!("  -> {u}"));
        }
        if let Some(err) = e.get("error").and_then(Value::as_str) {
            line.push_str(&format!("  ({err})"));
        }
        println!("{}", line.trim_end());
    }
}

async fn dlq(command: DlqCommand) -> Result<(), RemoteError> {
    match command {
        DlqCommand::List {
            event,
            url,
            count,
            cursor,
            target,
        } => {
            let client = Client::tenant(&target)?;
            let mut query = Vec::new();
            for (k, v) in [
                ("eventId", event),
                ("url", url),
                ("count", count.map(|c| c.to_string())),
                ("cursor", cursor),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", enc(&v)));
                }
            }
            let mut path = "/v2/dlq".to_owned();
            if !query.is_empty() {
                path.push('?');
                path.push_str(&query.join("&"));
            }
            let (reply, _) = client.send(client.http.get(client.url(&path))).await?;
            if target.json {
                print_json(&reply);
                return Ok(());
            }
            let messages = reply["messages"].as_array().cloned().unwrap_or_default();
            if messages.is_empty() {
                println!("no dead letters");
            }
            for m in &messages {
                println!(
                    "{}  {}  event {}  {}  -> {}  attempts {}  last status {}  {}",
                    str_of(m, "dlqId"),
                    iso_time(m["deadLetteredAt"].as_i64().unwrap_or(0)),
                    str_of(m, "eventId"),
                    str_of(m, "outcome"),
                    str_of(m, "url"),
                    m["attempts"].as_i64().unwrap_or(0),
                    m["lastStatus"].as_i64().unwrap_or(0),
                    str_of(m, "lastError"),
                );
            }
            if let Some(next) = reply["cursor"].as_str() {
                println!("more: herald dlq list --cursor {next}");
            }
        }
        DlqCommand::Retry { dlq_id, target } => {
            let client = Client::tenant(&target)?;
            let path = format!("/v2/dlq/retry/{}", enc(&dlq_id));
            let (reply, _) = client.send(client.http.post(client.url(&path))).await?;
            if target.json {
                print_json(&reply);
            } else {
                println!(
                    "{dlq_id} is delivered again as message {}",
                    str_of(&reply, "messageId")
                );
            }
        }
        DlqCommand::Delete { dlq_id, target } => {
            let client = Client::tenant(&target)?;
            let path = format!("/v2/dlq/{}", enc(&dlq_id));
            let (reply, _) = client.send(client.http.delete(client.url(&path))).await?;
            if target.json {
                print_json(&reply);
            } else {
                println!("{dlq_id} deleted");
            }
        }
    }
    Ok(())
}

/// What `herald tenant` asks `/admin` to do.
#[derive(Debug)]
pub enum TenantAction<'a> {
    Create(&'a str),
    List,
    RotateToken(&'a str),
    RevokeToken(&'a str),
    /// Show the tenant's limits; with `set` (`name=value`) or `unset` (names), change its
    /// overrides first (read, changed, written back with PUT).
    Limits {
        name: &'a str,
        set: &'a [String],
        unset: &'a [String],
    },
    Usage(&'a str),
}

/// `name=value` pairs as the JSON of `PUT /admin/tenants/{name}/limits`: whole numbers as
/// numbers, anything else as a string (Herald checks every value).
fn limit_values(pairs: &[String]) -> Result<serde_json::Map<String, Value>, RemoteError> {
    pairs
        .iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| RemoteError::Usage(format!("--set {pair:?} is not name=value")))?;
            let value = match value.trim().parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) => json!(value),
            };
            Ok((name.trim().to_owned(), value))
        })
        .collect()
}

/// Prints a limits view (`GET /admin/tenants/{name}/limits`): one limit a line, with its
/// value and whether it is the default or the tenant's override.
pub fn print_limits(view: &Value) {
    for name in crate::limits::Limits::NAMES {
        let value = match &view["limits"][name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let origin = if view["overrides"].get(name).is_some() {
            "override"
        } else {
            "default"
        };
        println!("{name:<20} {value:<12} {origin}");
    }
}

/// Prints a usage view (`GET /admin/tenants/{name}/usage`).
pub fn print_usage(view: &Value) {
    println!(
        "active_waiters       {} of {}",
        view["activeWaiters"], view["maxActiveWaiters"]
    );
    println!(
        "stored_bytes         {} of {}",
        view["storedBytes"], view["maxStoredBytes"]
    );
    for class in crate::limits::RateClass::ALL {
        let rate = &view["rates"][class.as_str()];
        let label = format!("{class}_rate");
        if rate["perSec"].as_u64().unwrap_or(0) == 0 {
            println!("{label:<20} unlimited");
        } else {
            println!(
                "{label:<20} {} of {} left ({}/s)",
                rate["remaining"], rate["burst"], rate["perSec"]
            );
        }
    }
}

pub async fn tenant(action: TenantAction<'_>, target: &AdminTarget) -> Result<(), RemoteError> {
    let client = Client::new(
        &target.server,
        target.admin_token.clone(),
        "pass --admin-token or set HERALD_ADMIN_TOKEN (or use `herald tenant --redis …` to write the configured Redis directly)",
    )?;
    let request = match &action {
        TenantAction::Limits { name, set, unset } => {
            let path = client.url(&format!("/admin/tenants/{}/limits", enc(name)));
            if set.is_empty() && unset.is_empty() {
                client.http.get(path)
            } else {
                let (view, _) = client.send(client.http.get(&path)).await?;
                let mut overrides = view["overrides"].as_object().cloned().unwrap_or_default();
                for name in unset.iter() {
                    overrides.remove(name);
                }
                overrides.extend(limit_values(set)?);
                client
                    .http
                    .put(path)
                    .header("content-type", "application/json")
                    .body(Value::Object(overrides).to_string())
            }
        }
        TenantAction::Usage(name) => client
            .http
            .get(client.url(&format!("/admin/tenants/{}/usage", enc(name)))),
        TenantAction::Create(name) => client
            .http
            .post(client.url("/admin/tenants"))
            .header("content-type", "application/json")
            .body(json!({ "name": name }).to_string()),
        TenantAction::List => client.http.get(client.url("/admin/tenants")),
        TenantAction::RotateToken(name) => client
            .http
            .post(client.url(&format!("/admin/tenants/{}/token", enc(name)))),
        TenantAction::RevokeToken(name) => client
            .http
            .delete(client.url(&format!("/admin/tenants/{}/token", enc(name)))),
    };
    let (reply, _) = client.send(request).await?;
    if target.json {
        print_json(&reply);
        return Ok(());
    }
    match action {
        TenantAction::Create(_) => println!(
            "tenant:              {}\ntoken:               {}\ncurrent signing key: {}\nnext signing key:    {}",
            str_of(&reply, "name"),
            str_of(&reply, "token"),
            str_of(&reply, "currentSigningKey"),
            str_of(&reply, "nextSigningKey")
        ),
        TenantAction::List => {
            for t in reply.as_array().cloned().unwrap_or_default() {
                println!(
                    "{}  created {}",
                    str_of(&t, "name"),
                    iso_time(t["createdAt"].as_i64().unwrap_or(0))
                );
            }
        }
        TenantAction::RotateToken(_) => println!("{}", str_of(&reply, "token")),
        TenantAction::RevokeToken(name) => println!("the token of {name} is revoked"),
        TenantAction::Limits { .. } => print_limits(&reply),
        TenantAction::Usage(_) => print_usage(&reply),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_time_formats_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_795_315_334_123), "2026-11-22T02:42:14.123Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn exit_codes_tell_failures_apart() {
        assert_eq!(
            RemoteError::Refused {
                status: 404,
                message: String::new()
            }
            .exit_code(),
            1
        );
        assert_eq!(RemoteError::Usage(String::new()).exit_code(), 2);
        assert_eq!(RemoteError::Unavailable(String::new()).exit_code(), 3);
    }
}
