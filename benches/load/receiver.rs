//! The recording receiver: an in-process HTTP server on a free loopback port that answers
//! every POST with 200 at once and notes what arrived and when.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tokio::sync::Notify;

use crate::clock;

/// One delivery as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub message_id: String,
    pub event: String,
    pub timeout: bool,
    /// Nanoseconds since the load generator's start (same clock as the senders).
    pub at_ns: u64,
    /// Wall clock, unix milliseconds (compared with Redis TIME deadlines).
    pub wall_ms: f64,
}

#[derive(Default)]
struct Shared {
    arrivals: Mutex<Vec<Arrival>>,
    count: AtomicUsize,
    changed: Notify,
}

pub struct Receiver {
    pub port: u16,
    shared: Arc<Shared>,
    server: actix_web::dev::ServerHandle,
}

fn header(req: &HttpRequest, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn record(
    req: HttpRequest,
    _body: web::Bytes,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let at_ns = clock::now_ns();
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    let arrival = Arrival {
        message_id: header(&req, "upstash-message-id"),
        event: header(&req, "herald-event-id"),
        timeout: header(&req, "herald-outcome") == "timeout",
        at_ns,
        wall_ms,
    };
    shared.arrivals.lock().expect("arrivals").push(arrival);
    shared.count.fetch_add(1, Ordering::Release);
    shared.changed.notify_waiters();
    HttpResponse::Ok().finish()
}

impl Receiver {
    pub fn start() -> anyhow::Result<Self> {
        let shared = Arc::new(Shared::default());
        let data = web::Data::new(shared.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // Takes the largest notify body Herald accepts (big_fanout sends 1 MiB).
                .app_data(web::PayloadConfig::new(16 << 20))
                .default_service(web::to(record))
        })
        .listen(listener)?
        .workers(1)
        .backlog(4096)
        .max_connection_rate(4096)
        .disable_signals()
        .shutdown_timeout(1)
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Receiver {
            port,
            shared,
            server: handle,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Takes every arrival recorded so far (the next scenario starts from zero).
    pub fn take(&self) -> Vec<Arrival> {
        let mut arrivals = self.shared.arrivals.lock().expect("arrivals");
        self.shared.count.store(0, Ordering::Release);
        std::mem::take(&mut *arrivals)
    }

    /// Waits until `count` deliveries arrived, or `limit` passed; returns whether they did.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.shared.changed.notified();
            if self.count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Woken by every arrival; the timeout only bounds a lost wake-up.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), changed)
                .await;
        }
    }

    /// Waits until no delivery arrived for `quiet` (late duplicates show up in the count).
    pub async fn settle(&self, quiet: Duration) {
        let mut last = self.count();
        for _ in 0..50 {
            tokio::time::sleep(quiet).await;
            let now = self.count();
            if now == last {
                return;
            }
            last = now;
        }
    }

    pub async fn stop(self) {
        self.server.stop(false).await;
    }
}
