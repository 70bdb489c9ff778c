//! The request log: one JSON line per produce request, fetch and
//! subscription chunk, for finding out who produced or consumed what and
//! when (`request_log = PATH`, off by default).
//!
//! Lines go through a bounded queue to a writer thread: a request never
//! waits for the disk; when the queue is full (a disk slower than the
//! traffic) lines are dropped and counted (`strata_request_log_dropped_total`).
//! Lines of failed requests are limited to [`FAILURES_PER_SECOND`] (a
//! client failing every request cannot fill the disk with them); the rest
//! are counted the same way. `SIGHUP` reopens the file (after logrotate
//! moved it). The file itself is not bounded: rotate it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::Identity;

/// Lines queued for the writer at most.
const QUEUE: usize = 8192;
/// Lines of failed requests written per second at most (bursts as many).
pub const FAILURES_PER_SECOND: f64 = 100.0;

/// One partition's part of a request.
#[derive(Debug, Serialize)]
pub struct Part {
    pub partition: u32,
    /// First offset written or returned.
    pub offset: u64,
    pub records: u64,
}

/// One line.
#[derive(Debug, Serialize)]
pub struct Line {
    pub time: String,
    pub op: &'static str,
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// As the request named it (at most 255 characters).
    pub topic: String,
    pub parts: Vec<Part>,
    pub records: u64,
    pub bytes: u64,
    pub latency_ms: f64,
    /// `OK`, or the gRPC code of the failure.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

enum Message {
    Line(String),
    /// Look at the reopen flag now.
    Wake,
}

/// The node's request log.
#[derive(Debug)]
pub struct RequestLog {
    tx: mpsc::Sender<Message>,
    pub dropped: AtomicU64,
    /// Set by `reopen`; the writer reopens the file before its next line.
    reopen: Arc<AtomicBool>,
    /// Tokens for failure lines, and when they were last counted.
    failures: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl RequestLog {
    /// Opens (appending) `path` and starts the writer.
    pub fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let file = open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = path.to_owned();
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("strata-request-log".into())
            .spawn(move || write_loop(path, file, rx, flag))?;
        let failures = std::sync::Mutex::new((FAILURES_PER_SECOND, std::time::Instant::now()));
        Ok(Arc::new(Self { tx, dropped: AtomicU64::new(0), reopen, failures }))
    }

    /// Queues a line (dropped, and counted, when the queue is full or the
    /// failures' budget is spent).
    pub fn write(&self, line: &Line) {
        if line.result != "OK" && !self.failure_allowed() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(text) = serde_json::to_string(line) else { return };
        if self.tx.try_send(Message::Line(text)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn failure_allowed(&self) -> bool {
        let Ok(mut b) = self.failures.lock() else { return false };
        let now = std::time::Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * FAILURES_PER_SECOND).min(FAILURES_PER_SECOND);
        b.1 = now;
        if b.0 < 1.0 {
            return false;
        }
        b.0 -= 1.0;
        true
    }

    /// Closes and opens the file again (after it was moved away), before
    /// the next line is written.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let _ = self.tx.try_send(Message::Wake);
    }
}

/// A line's common fields for a request by `identity`.
pub fn line(op: &'static str, identity: &Identity, topic: &str, latency: Duration) -> Line {
    Line {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        op,
        principal: identity.principal.to_string(),
        client: identity.remote.map(|ip| ip.to_string()),
        topic: topic.chars().take(255).collect(),
        parts: Vec::new(),
        records: 0,
        bytes: 0,
        latency_ms: latency.as_secs_f64() * 1000.0,
        result: "OK",
        reason: None,
        error: None,
    }
}

impl Line {
    /// Marks the line as a failure with `status`.
    pub fn failed(mut self, status: &tonic::Status) -> Self {
        self.result = crate::metrics::code_name(status.code());
        self.reason = Some(crate::metrics::reason_name(status));
        self.error = Some(status.message().chars().take(512).collect());
        self
    }
}

/// Writes lines as they come, flushing whenever the queue runs dry. A
/// write error is logged (once until writes work again) and the line lost.
fn write_loop(path: PathBuf, file: std::fs::File, mut rx: mpsc::Receiver<Message>, reopen: Arc<AtomicBool>) {
    let mut out = std::io::BufWriter::new(file);
    let mut failing = false;
    while let Some(message) = rx.blocking_recv() {
        let mut next = Some(message);
        while let Some(m) = next.take() {
            if reopen.swap(false, Ordering::AcqRel) {
                let reopened = out.flush().and_then(|()| open(&path)).map(|f| out = std::io::BufWriter::new(f));
                if let Err(e) = reopened {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the request log");
                }
            }
            let written = match m {
                Message::Line(text) => writeln!(out, "{text}"),
                Message::Wake => Ok(()),
            };
            match written {
                Err(e) if !failing => {
                    tracing::error!(path = %path.display(), error = %e, "cannot write the request log");
                    failing = true;
                }
                Err(_) => {}
                Ok(()) => failing = false,
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush()
            && !failing
        {
            tracing::error!(path = %path.display(), error = %e, "cannot write the request log");
            failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_a_reopen_starts_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("requests.log");
        let log = RequestLog::open(&path).expect("open");
        let identity = Identity::node(None);
        let mut l = line("produce", &identity, "orders", Duration::from_millis(3));
        l.parts.push(Part { partition: 2, offset: 40, records: 5 });
        l.records = 5;
        log.write(&l);
        let moved = dir.path().join("requests.log.1");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap_or_default().lines().count() < 1 {
            assert!(std::time::Instant::now() < deadline, "the line was not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::rename(&path, &moved).expect("rotate");
        log.reopen();
        log.write(&line("fetch", &identity, "orders", Duration::ZERO).failed(&tonic::Status::unavailable("x")));
        while std::fs::read_to_string(&path).unwrap_or_default().lines().count() < 1 {
            assert!(std::time::Instant::now() < deadline, "the line after the reopen was not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        let first: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&moved).expect("read").trim()).expect("json");
        assert_eq!(first["op"], "produce");
        assert_eq!(first["principal"], "Node:?");
        assert_eq!(first["parts"][0]["offset"], 40);
        assert_eq!(first["result"], "OK");
        let second: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).expect("read").trim()).expect("json");
        assert_eq!((second["op"].as_str(), second["result"].as_str()), (Some("fetch"), Some("UNAVAILABLE")));
        // A flood of failures is cut at the budget, and counted.
        let failed = line("fetch", &identity, "orders", Duration::ZERO).failed(&tonic::Status::permission_denied("x"));
        for _ in 0..1000 {
            log.write(&failed);
        }
        assert!(log.dropped.load(Ordering::Relaxed) >= 1000 - FAILURES_PER_SECOND as u64 - 20);
    }
}
