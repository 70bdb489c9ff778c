//! The history of a run: every client operation as `invoke`, then `ok`,
//! `fail` (it definitely did not happen) or `info` (unknown: timeout,
//! connection lost), and every fault, each with its time. Written as JSON
//! lines (`history.jsonl`), one [`Event`] per line.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What became of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    /// Definitely did not happen.
    Fail,
    /// May or may not have happened.
    Info,
}

/// One operation (or fault), tagged by `f` in the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Op {
    /// Produce one unique `value` to `partition` (acks=quorum). `offset`
    /// is set on `ok`: where the cluster said the value is.
    Send {
        partition: u32,
        value: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Read `partition` from offset `from` (assign mode, no group). On `ok`,
    /// `records` holds what was read as (offset, value), in the order the
    /// server returned them. `drain`: part of the final full read.
    Poll {
        partition: u32,
        from: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        records: Vec<(u64, u64)>,
        #[serde(default)]
        drain: bool,
    },
    /// A fault (`process` is [`NEMESIS`]): `invoke` when it is attempted,
    /// then `ok` once the nemesis saw it take effect (`detail` says how) or
    /// `fail` (`error` says why); a heal is one `ok` event named by
    /// [`is_heal`].
    Nemesis { fault: String, nodes: Vec<u32>, detail: String },
    /// A replica's digest of `partition` up to Raft index `upto`, taken
    /// after the cluster healed and drained (`process` is [`CHECKER`]).
    Digest { partition: u32, node: u32, upto: u64, first_index: u64, entries: u64, crc32c: u32 },
    /// A consumer group member commits `offsets` as (partition, offset):
    /// the next offset to read in each partition (the `group` workload).
    Commit { group: String, offsets: Vec<(u32, u64)> },
    /// A read of a group's committed offsets; on `ok`, `offsets` holds what
    /// it returned as (partition, offset).
    ReadCommitted {
        group: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offsets: Vec<(u32, u64)>,
    },
    /// A group member joined, left or crashed (for the reader of the
    /// history; not checked).
    Member { group: String, member: String, action: String },
}

/// Whether a nemesis event names a heal (the end of a fault, or the final
/// heal of the run) rather than a fault.
pub fn is_heal(fault: &str) -> bool {
    fault == "heal" || fault == "final-heal"
}

/// The process number of the fault injector.
pub const NEMESIS: i64 = -1;
/// The process number of the final checks (drain, digests).
pub const CHECKER: i64 = -2;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history (0, 1, 2, ...).
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    /// The client process (a logical thread: one operation at a time).
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten)]
    pub op: Op,
    /// Why it failed, for `fail` and `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Appends events to `history.jsonl` as they happen and keeps them for the
/// checker. Shared by every client task.
pub struct Recorder {
    start: Instant,
    /// Events, the file, and the first error writing it.
    inner: Mutex<(Vec<Event>, std::io::BufWriter<std::fs::File>, Option<std::io::Error>)>,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Self { start: Instant::now(), inner: Mutex::new((Vec::new(), std::io::BufWriter::new(file), None)) })
    }

    /// Records one event and returns it.
    pub fn record(&self, process: i64, kind: Kind, op: Op, error: Option<String>) -> Event {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Taken under the lock: times follow the order of the history.
        let time_ns = self.start.elapsed().as_nanos() as u64;
        let event = Event { index: inner.0.len() as u64, time_ns, process, kind, op, error };
        let written =
            serde_json::to_string(&event).map_err(std::io::Error::other).and_then(|line| writeln!(inner.1, "{line}"));
        if let Err(e) = written {
            // Reported by `finish`.
            inner.2.get_or_insert(e);
        }
        inner.0.push(event.clone());
        event
    }

    /// Events recorded so far.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// Flushes the file and hands back every event recorded.
    pub fn finish(&self) -> std::io::Result<Vec<Event>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner.2.take() {
            return Err(e);
        }
        inner.1.flush()?;
        Ok(inner.0.clone())
    }
}

/// Reads a `history.jsonl`.
pub fn load(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path)?;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a history event: {e}", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}
