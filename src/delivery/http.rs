//! Outbound HTTP: the request a delivery owes, and the guarded client that sends it.
//!
//! The client follows no redirects, ignores proxy environment variables, has connect and
//! total timeouts, reads at most [`RESPONSE_EXCERPT`] bytes of a response, and connects
//! only to addresses the [`IpPolicy`] allows: names are filtered by the resolver the
//! client connects with (so DNS rebinding cannot slip past), IP-literal hosts before the
//! request is made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue};

use super::ip_policy::IpPolicy;
use crate::waiter::{Job, JobKind};

/// Bytes of a response body kept (for the dead-letter record); the rest is not read.
pub const RESPONSE_EXCERPT: usize = 1024;

/// Headers a tenant cannot set on an outbound request: they belong to the connection or
/// to Herald.
const DROPPED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
    "upstash-signature",
    "upstash-message-id",
    "upstash-retried",
];

/// The forwarding prefix of the Upstash protocol: `Upstash-Forward-X: v` is sent as `X: v`.
const FORWARD_PREFIX: &str = "upstash-forward-";

/// One HTTP request a delivery owes.
#[derive(Debug)]
pub struct Outbound {
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Outbound {
    /// Sets a header Herald owns, replacing any value the tenant gave it.
    pub fn set_header(&mut self, name: &'static str, value: &str) {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.retain(|(n, _)| n.as_str() != name);
            self.headers.push((HeaderName::from_static(name), v));
        }
    }
}

pub(super) fn push_header(headers: &mut Vec<(HeaderName, HeaderValue)>, name: &str, value: &str) {
    let lower = name.to_ascii_lowercase();
    let name = lower.strip_prefix(FORWARD_PREFIX).unwrap_or(&lower);
    if DROPPED_HEADERS.contains(&name) {
        return;
    }
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        // One value per name: a forwarded header replaces a direct one of the same name.
        headers.retain(|(existing, _)| existing != n);
        headers.push((n, v));
    }
}

/// The step-format body a workflow waiter (Upstash SDK) expects: `RawStep[]`, whose first
/// element stands for the run's initial payload (Herald does not hold it: empty) and whose
/// last is the wait step with `out` = base64(event body), or `waitTimeout: true`.
fn workflow_body(job: &Job, event_body: &[u8]) -> Vec<u8> {
    let step_json = wait_result_step(job, event_body).to_string();
    serde_json::json!([
        { "messageId": job.m, "body": "", "callType": "step" },
        { "messageId": job.m, "body": STANDARD.encode(step_json), "callType": "step" },
    ])
    .to_string()
    .into_bytes()
}

/// The step a workflow waiter's outcome stands for: the registered step with
/// `waitEventId`, `timeout`, and `out` = base64(event body) or `waitTimeout: true`
/// (without `out`: the SDK reads an empty `out` as a body).
pub fn wait_result_step(job: &Job, event_body: &[u8]) -> serde_json::Value {
    let mut step = match &job.w.step {
        Some(serde_json::Value::Object(s)) => s.clone(),
        _ => serde_json::Map::new(),
    };
    step.insert("waitEventId".into(), job.e.clone().into());
    step.insert("timeout".into(), job.w.timeout.clone().into());
    match job.k {
        JobKind::Event => {
            step.insert("out".into(), STANDARD.encode(event_body).into());
            step.insert("waitTimeout".into(), false.into());
        }
        JobKind::Timeout | JobKind::Workflow => {
            step.insert("waitTimeout".into(), true.into());
        }
    }
    serde_json::Value::Object(step)
}

/// Builds the request of a job: the event to `url`, or the timeout to `timeoutUrl`.
pub fn build(job: &Job, event_body: &[u8]) -> Outbound {
    let w = &job.w;
    let (url, source_headers) = w.target(job.k);
    let mut headers = Vec::new();
    for (name, values) in source_headers.iter() {
        if let Some(v) = values.first() {
            push_header(&mut headers, name, v);
        }
    }
    let (body, content_type) = if w.step.is_some() {
        (
            workflow_body(job, event_body),
            Some("application/json".to_owned()),
        )
    } else {
        match job.k {
            JobKind::Event | JobKind::Workflow => (event_body.to_vec(), job.c.clone()),
            JobKind::Timeout => (
                w.timeout_body
                    .as_deref()
                    .and_then(|b| STANDARD.decode(b).ok())
                    .unwrap_or_default(),
                None,
            ),
        }
    };
    if let Some(ct) = content_type {
        push_header(&mut headers, "content-type", &ct);
    }
    push_header(&mut headers, "user-agent", "Herald");
    let fixed = [
        ("upstash-message-id", job.m.clone()),
        ("upstash-retried", job.a.to_string()),
        ("herald-event-id", job.e.clone()),
        ("herald-outcome", job.k.as_str().to_owned()),
    ];
    for (name, value) in fixed {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.retain(|(n, _)| n.as_str() != name);
            headers.push((HeaderName::from_static(name), v));
        }
    }
    Outbound {
        url: url.to_owned(),
        headers,
        body,
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// 2xx.
    Delivered { status: u16 },
    /// Non-2xx, with what the receiver said about retrying.
    Failed {
        status: u16,
        excerpt: String,
        retry_after: Option<Duration>,
        non_retryable: bool,
    },
    /// No response: connect error, timeout, reset.
    Unreachable { error: String },
    /// The URL's address is not allowed (SSRF guard); retrying cannot help.
    Refused { reason: String },
}

/// A name that resolves only to addresses the [`IpPolicy`] refuses. The resolver returns it
/// as a typed error, and [`Sender::send`] finds it in the error's source chain: a refusal
/// is recognised by its type, never by words in a message (which also holds the URL, so a
/// URL containing `blocked:` whose connection was refused would look refused for good).
#[derive(Debug)]
pub struct Blocked {
    host: String,
    reason: String,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blocked: {} resolves to a refused address ({})",
            self.host, self.reason
        )
    }
}

impl std::error::Error for Blocked {}

/// Filters resolved addresses through the policy (DNS rebinding cannot bypass the check:
/// the connection uses exactly these addresses).
struct GuardedResolver {
    policy: Arc<IpPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| policy.check(a.ip()).is_ok())
                .collect();
            if allowed.is_empty() {
                let reason = resolved
                    .first()
                    .and_then(|a| policy.check(a.ip()).err())
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "no address".into());
                return Err(Box::new(Blocked { host, reason }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<IpPolicy>,
    /// The only ports requests may go to (None: any).
    ports: Option<Arc<Vec<u16>>>,
}

impl Sender {
    pub fn new(
        policy: IpPolicy,
        connect_timeout: Duration,
        total_timeout: Duration,
    ) -> reqwest::Result<Self> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(total_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()?;
        Ok(Self {
            client,
            policy,
            ports: None,
        })
    }

    /// This sender, allowed only `ports` (a tenant's `allow_ports`).
    pub fn with_ports(mut self, ports: Option<Vec<u16>>) -> Self {
        self.ports = ports.map(Arc::new);
        self
    }

    pub async fn send(&self, outbound: Outbound) -> Attempt {
        self.send_with(outbound, "POST", RESPONSE_EXCERPT, None)
            .await
            .into_attempt()
    }

    /// Sends with `method`, reading at most `max_body` bytes of the answer, with an
    /// optional per-request timeout (below the client's total timeout).
    pub async fn send_with(
        &self,
        outbound: Outbound,
        method: &str,
        max_body: usize,
        timeout: Option<Duration>,
    ) -> Exchange {
        let url = match reqwest::Url::parse(&outbound.url) {
            Ok(u) => u,
            Err(e) => {
                return Exchange::Refused {
                    reason: format!("invalid url: {e}"),
                }
            }
        };
        if let Some(reason) = self.refusal(&url) {
            return Exchange::Refused { reason };
        }
        let shown = without_query(&url);
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut request = self.client.request(method, url);
        for (name, value) in outbound.headers {
            request = request.header(name, value);
        }
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        let response = match request.body(outbound.body).send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(blocked) = find_source::<Blocked>(&e) {
                    return Exchange::Refused {
                        reason: blocked.to_string(),
                    };
                }
                // The error's own text would hold the whole URL: its query string may
                // carry a receiver's secret, and the text is logged and kept in the dead
                // letter.
                let error = format!("{shown}: {}", error_chain(&e.without_url()));
                return Exchange::Unreachable { error };
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let non_retryable = status == 489
            && headers
                .get("upstash-nonretryable-error")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let retry_after = super::retry::retry_after(&headers);
        let body = read_at_most(response, max_body).await;
        Exchange::Answered {
            status,
            headers: headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body,
            retry_after,
            non_retryable,
        }
    }

    /// IP-literal hosts are checked here: no resolver runs for them.
    fn refusal(&self, url: &reqwest::Url) -> Option<String> {
        if let (Some(ports), Some(port)) = (&self.ports, url.port_or_known_default()) {
            if !ports.contains(&port) {
                return Some(format!(
                    "blocked: port {port} is not one of the tenant's allowed ports"
                ));
            }
        }
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
            url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
            url::Host::Domain(d) => super::ip_policy::parse_host_ip(d)?,
        };
        self.policy
            .check(ip)
            .err()
            .map(|r| format!("blocked: {ip} is refused ({r})"))
    }
}

/// The URL as logged and recorded: without its query string, fragment or user info (any of
/// them may carry a secret of the receiver).
pub fn without_query(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The first error of type `T` in `e`'s source chain, looking inside `io::Error`s too (their
/// `source` skips the error they wrap).
fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = find_source::<T>(inner) {
                return Some(found);
            }
        }
        next = err.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads at most `max` bytes; a receiver streaming forever or dripping bytes is cut off
/// by the size cap or the client's total timeout.
async fn read_at_most(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(max);
    buf
}

/// What one request came to, with the answer kept (a workflow call passes it on).
#[derive(Debug)]
pub enum Exchange {
    Answered {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        retry_after: Option<Duration>,
        non_retryable: bool,
    },
    Unreachable {
        error: String,
    },
    Refused {
        reason: String,
    },
}

/// A failed attempt taken apart: its status (0: no answer), the error recorded, the
/// receiver's `Retry-After`, and whether retrying cannot help.
pub struct Failure {
    pub status: u16,
    pub error: String,
    pub retry_after: Option<Duration>,
    pub final_failure: bool,
}

impl Attempt {
    /// The failure of an attempt that was not delivered (None for a delivered one).
    pub fn failure(self) -> Option<Failure> {
        Some(match self {
            Attempt::Delivered { .. } => return None,
            Attempt::Failed {
                status,
                excerpt,
                retry_after,
                non_retryable,
            } => Failure {
                status,
                error: format!("HTTP {status}: {excerpt}"),
                retry_after,
                final_failure: non_retryable,
            },
            Attempt::Unreachable { error } => Failure {
                status: 0,
                error,
                retry_after: None,
                final_failure: false,
            },
            Attempt::Refused { reason } => Failure {
                status: 0,
                error: reason,
                retry_after: None,
                final_failure: true,
            },
        })
    }
}

impl Exchange {
    /// The attempt as a delivery counts it (2xx delivered; else failed, with an excerpt).
    pub fn into_attempt(self) -> Attempt {
        match self {
            Exchange::Answered { status, .. } if (200..300).contains(&status) => {
                Attempt::Delivered { status }
            }
            Exchange::Answered {
                status,
                body,
                retry_after,
                non_retryable,
                ..
            } => {
                let mut body = body;
                body.truncate(RESPONSE_EXCERPT);
                Attempt::Failed {
                    status,
                    excerpt: String::from_utf8_lossy(&body).into_owned(),
                    retry_after,
                    non_retryable,
                }
            }
            Exchange::Unreachable { error } => Attempt::Unreachable { error },
            Exchange::Refused { reason } => Attempt::Refused { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_query_fragment_or_user_info() {
        let url =
            reqwest::Url::parse("https://user:pw@example.com:8443/a/blocked:b?key=secret#frag")
                .unwrap();
        assert_eq!(without_query(&url), "https://example.com:8443/a/blocked:b");
    }

    #[test]
    fn a_refusal_is_found_by_type_inside_wrapping_errors() {
        let blocked = Blocked {
            host: "internal.example".into(),
            reason: "private".into(),
        };
        let wrapped = std::io::Error::other(blocked);
        assert!(find_source::<Blocked>(&wrapped).is_some());
        let text_only = std::io::Error::other("blocked: looks refused but is not");
        assert!(find_source::<Blocked>(&text_only).is_none());
    }
}
