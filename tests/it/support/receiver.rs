//! A recording HTTP receiver on a free loopback port: it stores every request and answers
//! with a scripted status (per path prefix), so tests see exactly what Herald sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the receiver answers for paths starting with a prefix: a list of statuses used in
/// turn (the last one repeats), with optional extra headers.
#[derive(Clone, Default)]
struct Script {
    statuses: Vec<u16>,
    headers: Vec<(String, String)>,
    served: usize,
    /// How long the receiver waits before it answers (a slow or hanging endpoint).
    delay: Duration,
}

#[derive(Clone, Default)]
struct Shared {
    recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Paths of scripted requests answered so far (after their delay).
    answered: Arc<Mutex<Vec<String>>>,
    scripts: Arc<Mutex<Vec<(String, Script)>>>,
}

pub struct Receiver {
    pub port: u16,
    shared: Shared,
}

async fn record(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(value.to_str().unwrap_or("").to_owned());
    }
    let path = req.path().to_owned();
    shared.recorded.lock().unwrap().push(Recorded {
        method: req.method().as_str().to_owned(),
        path: path.clone(),
        query: req.query_string().to_owned(),
        headers,
        body: body.to_vec(),
    });
    let answer = {
        let mut scripts = shared.scripts.lock().unwrap();
        scripts
            .iter_mut()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, script)| {
                let status = script
                    .statuses
                    .get(script.served)
                    .or(script.statuses.last())
                    .copied()
                    .unwrap_or(200);
                script.served += 1;
                (status, script.headers.clone(), script.delay)
            })
    };
    let Some((status, headers, delay)) = answer else {
        return HttpResponse::Ok().body("ok");
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.answered.lock().unwrap().push(path);
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    for (k, v) in &headers {
        response.insert_header((k.as_str(), v.as_str()));
    }
    response.body("scripted")
}

impl Receiver {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let data = web::Data::new(shared.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(record))
        })
        .listen(listener)
        .unwrap()
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .run();
        // The server task ends with the test's runtime.
        tokio::spawn(server);
        Receiver { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Answers requests to paths starting with `prefix` with `statuses` in turn.
    pub fn script(&self, prefix: &str, statuses: &[u16], headers: &[(&str, &str)]) {
        self.shared.scripts.lock().unwrap().push((
            prefix.to_owned(),
            Script {
                statuses: statuses.to_vec(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                served: 0,
                delay: Duration::ZERO,
            },
        ));
    }

    /// Like [`Receiver::script`], answering each request only after `delay` (a slow or,
    /// with a delay past Herald's request timeout, hanging endpoint).
    pub fn script_slow(&self, prefix: &str, statuses: &[u16], delay: Duration) {
        self.shared.scripts.lock().unwrap().push((
            prefix.to_owned(),
            Script {
                statuses: statuses.to_vec(),
                delay,
                ..Script::default()
            },
        ));
    }

    /// Scripted requests to paths starting with `prefix` answered so far.
    pub fn answered(&self, prefix: &str) -> usize {
        self.shared
            .answered
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub fn at(&self, path: &str) -> Vec<Recorded> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }

    /// Waits (bounded) until `count` requests reached `path`; returns them.
    pub async fn expect(&self, path: &str, count: usize) -> Vec<Recorded> {
        let got = super::eventually(Duration::from_secs(15), || self.at(path).len() >= count).await;
        let requests = self.at(path);
        assert!(
            got,
            "expected {count} requests at {path}, got {}: {requests:?}",
            requests.len()
        );
        requests
    }
}
