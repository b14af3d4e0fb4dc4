//! Herald as a real process (the `herald` binary): for what only a whole process shows —
//! its OTLP exporter configured by `OTEL_*` variables, and its log output. JSON logs are
//! collected line by line; the process is stopped by its PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct HeraldProcess {
    child: Option<Child>,
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Variables of the outer environment that would change what the process does.
const INHERITED_NOISE: &[&str] = &[
    "RUST_LOG",
    "REDIS_URL",
    "HERALD_CONFIG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
];

impl HeraldProcess {
    /// Runs `herald serve --role all` with `env` (plus JSON logs on a port chosen by the
    /// OS) and waits until it logged that it started.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command.args(["serve", "--role", "all"]);
        for name in INHERITED_NOISE {
            command.env_remove(name);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                command.env_remove(k);
            }
        }
        command
            .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
            .env("HERALD_LOG__FORMAT", "json")
            .env("HERALD_SERVER__SHUTDOWN_GRACE_SECS", "5")
            .env("HERALD_DELIVERY__ALLOW_CIDRS", "[\"127.0.0.0/8\"]")
            .env("HERALD_DELIVERY__BLOCK_MS", "200")
            .env("HERALD_DELIVERY__BACKOFF_FACTOR", "0.001")
            .env("HERALD_SCHEDULER__TICK_MS", "50")
            .env("HERALD_REDIS__INITIALIZE", "true");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the herald binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut process = HeraldProcess {
            child: Some(child),
            base: String::new(),
            logs,
            reader: Some(reader),
        };
        let started = super::eventually(Duration::from_secs(30), || {
            process.started_addr().is_some() || process.exited()
        })
        .await;
        let addr = process.started_addr();
        assert!(
            started && addr.is_some(),
            "herald did not start: {}",
            process.logs().join("\n")
        );
        process.base = format!("http://{}", addr.unwrap());
        process
    }

    fn started_addr(&self) -> Option<String> {
        self.logs().iter().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"] == "herald started").then(|| v["addr"].as_str().map(str::to_owned))?
        })
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM (graceful: in-flight work finishes, buffered spans are flushed), then waits
    /// for the exit, bounded; SIGKILL if it does not come.
    pub async fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let exited = super::eventually(Duration::from_secs(15), || self.exited()).await;
        if exited {
            self.child = None;
        } else {
            self.kill();
        }
        // The reader ends at the end of the process' stderr: all lines are in.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
