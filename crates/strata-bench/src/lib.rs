//! The load generator shared by `strata bench` and `strata-peer-bench`, so
//! Strata and its peers are measured by the same loop, clock and histogram.
//!
//! A run has `concurrency` workers. Each worker repeatedly performs one
//! operation (for a producer: send `batch` records and wait for their
//! acknowledgement) and the harness records the operation's latency in an HDR
//! histogram. The run stops after a record count or a duration, whichever is
//! given (a count-bounded run is also capped by `max_duration`). Progress
//! (records and that second's latency percentiles) goes to stderr once a
//! second; the report to stdout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one operation moved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Op {
    pub records: u64,
    pub bytes: u64,
}

/// One benchmark worker; `op` is called until the run ends. Returning
/// `Ok(None)` means the worker has nothing more to do (e.g. end of data).
pub trait Worker: Send + 'static {
    fn op(&mut self) -> impl Future<Output = anyhow::Result<Option<Op>>> + Send;
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub records: Option<u64>,
    pub duration: Option<Duration>,
    /// Hard cap, whatever else is set.
    pub max_duration: Duration,
    /// Operations in the first `warmup` are not measured.
    pub warmup: Duration,
    /// Target records per second over all workers (`None`: as fast as
    /// they go). Each worker paces itself to its share; latency is measured
    /// from when an operation was due, so a slow answer that delays the
    /// next operations is counted against them too (no coordinated
    /// omission). Workers are spread evenly over each one's interval
    /// (worker `i` of `n` runs `i/n` of an interval behind the first), so
    /// the load arrives steadily instead of in bursts of `n` at once.
    pub rate: Option<f64>,
}

/// Hard cap on any run, whatever the flags say.
pub const MAX_RUN: Duration = Duration::from_secs(3600);

impl Limits {
    /// Limits from the usual bench flags: a record count and/or a duration
    /// (10 s when neither is given), always capped at [`MAX_RUN`].
    pub fn from_flags(records: Option<u64>, duration: Option<Duration>, warmup: Duration) -> Self {
        let duration = match (records, duration) {
            (None, None) => Some(Duration::from_secs(10)),
            (_, d) => d,
        };
        Self { records, duration, max_duration: MAX_RUN, warmup, rate: None }
    }
}

/// Results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub records: u64,
    pub bytes: u64,
    pub operations: u64,
    pub elapsed_secs: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
}

impl Report {
    /// Prints the report to stdout: one line of text, or one JSON object.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            self.print_text();
        }
        Ok(())
    }

    pub fn print_text(&self) {
        println!(
            "{}: {} records in {:.1} s: {:.0} records/s, {:.1} MB/s; latency per operation p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} operations)",
            self.label,
            self.records,
            self.elapsed_secs,
            self.records_per_sec,
            self.mb_per_sec,
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_p999,
            self.latency_ms_max,
            self.operations,
        );
    }
}

struct Shared {
    records: AtomicU64,
    bytes: AtomicU64,
    stop: AtomicBool,
    /// Latencies of the current progress interval (reset once a second).
    window: std::sync::Mutex<Histogram<u64>>,
}

/// Runs `workers` to the limits and reports.
pub async fn run<W: Worker>(label: &str, workers: Vec<W>, limits: Limits) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        window: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let start = Instant::now();
    let measure_from = start + limits.warmup;
    let deadline = start + limits.duration.unwrap_or(limits.max_duration).min(limits.max_duration) + limits.warmup;
    let mut tasks = Vec::with_capacity(workers.len());
    let per_worker_rate = limits.rate.map(|r| r / workers.len().max(1) as f64).filter(|r| *r > 0.0);
    let worker_count = workers.len().max(1);
    for (index, mut worker) in workers.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let mut ops = 0u64;
            let mut due = Instant::now();
            let mut first = true;
            while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t0 = match per_worker_rate {
                    Some(_) => {
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => Instant::now(),
                };
                let Some(op) = worker.op().await? else { break };
                if let Some(rate) = per_worker_rate {
                    let interval = Duration::from_secs_f64(op.records as f64 / rate);
                    due += interval;
                    if std::mem::take(&mut first) {
                        // The first operations (in the warm-up) go out
                        // together; from then on worker `index` keeps its phase.
                        due += interval.mul_f64(index as f64 / worker_count as f64);
                    }
                }
                if t0 < measure_from {
                    continue;
                }
                let micros = t0.elapsed().as_micros().max(1) as u64;
                hist.saturating_record(micros);
                if let Ok(mut window) = shared.window.lock() {
                    window.saturating_record(micros);
                }
                ops += 1;
                let total = shared.records.fetch_add(op.records, Ordering::Relaxed) + op.records;
                shared.bytes.fetch_add(op.bytes, Ordering::Relaxed);
                if limits.records.is_some_and(|n| total >= n) {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
            anyhow::Ok((hist, ops))
        }));
    }
    let progress = {
        let shared = Arc::clone(&shared);
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let now = shared.records.load(Ordering::Relaxed);
                let latency = match shared.window.lock() {
                    Ok(mut w) if !w.is_empty() => {
                        let ms = |v: u64| v as f64 / 1000.0;
                        let line = format!(
                            "  latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                            ms(w.value_at_quantile(0.5)),
                            ms(w.value_at_quantile(0.99)),
                            ms(w.max())
                        );
                        w.reset();
                        line
                    }
                    _ => String::new(),
                };
                eprintln!(
                    "[{label}] {:>5.0}s  {:>10} records  {:>10} records/s{latency}",
                    start.elapsed().as_secs_f64(),
                    now,
                    now - last
                );
                last = now;
            }
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut operations = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await? {
            Ok((h, ops)) => {
                hist.add(h)?;
                operations += ops;
            }
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
    }
    progress.abort();
    if let Some(e) = first_error {
        return Err(e.context(format!("{label}: a worker failed")));
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from).as_secs_f64().max(1e-9);
    let records = shared.records.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        label: label.to_owned(),
        records,
        bytes,
        operations,
        elapsed_secs: elapsed,
        records_per_sec: records as f64 / elapsed,
        mb_per_sec: bytes as f64 / elapsed / 1e6,
        latency_ms_p50: ms(0.5),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: hist.max() as f64 / 1000.0,
    })
}

/// Deterministic payload bytes for a worker (seeded, so runs are repeatable).
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64*: cheap, seeded, and not trivially compressible.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        left: u32,
    }

    impl Worker for Counter {
        async fn op(&mut self) -> anyhow::Result<Option<Op>> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            tokio::task::yield_now().await;
            Ok(Some(Op { records: 10, bytes: 100 }))
        }
    }

    #[tokio::test]
    async fn run_counts_every_operation_until_workers_finish() {
        let limits = Limits {
            records: None,
            duration: None,
            max_duration: Duration::from_secs(60),
            warmup: Duration::ZERO,
            rate: None,
        };
        let report = run("t", vec![Counter { left: 5 }, Counter { left: 7 }], limits).await.expect("run");
        assert_eq!(report.operations, 12);
        assert_eq!(report.records, 120);
        assert_eq!(report.bytes, 1200);
    }

    #[tokio::test]
    async fn run_stops_at_the_record_limit() {
        let limits = Limits {
            records: Some(50),
            duration: None,
            max_duration: Duration::from_secs(60),
            warmup: Duration::ZERO,
            rate: None,
        };
        let report = run("t", vec![Counter { left: 1000 }], limits).await.expect("run");
        assert_eq!(report.records, 50);
    }

    /// Records when each of its operations started.
    struct Clocked {
        starts: Arc<std::sync::Mutex<Vec<(usize, Duration)>>>,
        index: usize,
        origin: Instant,
    }

    impl Worker for Clocked {
        async fn op(&mut self) -> anyhow::Result<Option<Op>> {
            self.starts.lock().expect("lock").push((self.index, self.origin.elapsed()));
            Ok(Some(Op { records: 1, bytes: 1 }))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paced_workers_are_spread_over_their_interval() {
        // 4 workers at 40 records/s in all: each sends one record every
        // 100 ms; after the first round, worker i runs i x 25 ms behind.
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let origin = Instant::now();
        let workers = (0..4).map(|index| Clocked { starts: Arc::clone(&starts), index, origin }).collect::<Vec<_>>();
        let limits = Limits {
            records: None,
            duration: Some(Duration::from_millis(450)),
            max_duration: Duration::from_secs(60),
            warmup: Duration::ZERO,
            rate: Some(40.0),
        };
        run("t", workers, limits).await.expect("run");
        let starts = starts.lock().expect("lock").clone();
        for index in 0..4 {
            let mine: Vec<u128> = starts.iter().filter(|(i, _)| *i == index).map(|(_, t)| t.as_millis()).collect();
            let phase = 25 * index as u128;
            assert_eq!(mine[..4], [0, 100 + phase, 200 + phase, 300 + phase], "worker {index}: {mine:?}");
        }
    }

    #[test]
    fn payload_is_seeded() {
        assert_eq!(payload(1, 64), payload(1, 64));
        assert_ne!(payload(1, 64), payload(2, 64));
    }
}
