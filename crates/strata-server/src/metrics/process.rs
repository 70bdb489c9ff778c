//! Process and file-system figures, read from `/proc` and `statvfs` at
//! scrape time (Linux), under the names every Prometheus client library
//! uses (`process_cpu_seconds_total`, ...).

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Collects `process_*`.
#[derive(Debug)]
pub struct ProcessCollector;

/// What `/proc/<pid>` says of a process.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// Fields of `/proc/<pid>/stat` after the command name: state is field 3,
/// so field N is at index N - 3.
fn stat_field(rest: &[&str], n: usize) -> Option<u64> {
    rest.get(n - 3)?.parse().ok()
}

/// This process's figures.
pub fn process_stats() -> Option<ProcessStats> {
    stats_of("self")
}

/// The figures of process `pid` (a number, or `self`).
pub fn stats_of(pid: &str) -> Option<ProcessStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let utime = stat_field(&rest, 14)?;
    let stime = stat_field(&rest, 15)?;
    let threads = stat_field(&rest, 20)?;
    let start_ticks = stat_field(&rest, 22)?;
    let vsize = stat_field(&rest, 23)?;
    let rss_pages = stat_field(&rest, 24)?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok()))?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    // "Max open files  <soft>  <hard>  files" ("unlimited" or a number).
    let max_fds = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .map_or(u64::MAX, |soft| soft.parse().unwrap_or(u64::MAX));
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: rss_pages * page,
        virtual_bytes: vsize,
        start_time_seconds: boot as f64 + start_ticks as f64 / ticks,
        threads,
        open_fds,
        max_fds,
    })
}

/// (total, available to unprivileged users) bytes of the file system that
/// holds `dir`.
pub fn disk(dir: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = process_stats() else { return Ok(()) };
        let counter = ConstCounter::new(p.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", p.resident_bytes as f64),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", p.virtual_bytes as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                p.start_time_seconds,
            ),
            ("process_threads", "Threads of the process", p.threads as f64),
            ("process_open_fds", "Open file descriptors", p.open_fds as f64),
            ("process_max_fds", "Most open file descriptors allowed", p.max_fds as f64),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read_from_proc() {
        let before = process_stats().expect("/proc/self");
        let files: Vec<_> = (0..20).map(|_| tempfile::tempfile().expect("tempfile")).collect();
        let after = process_stats().expect("/proc/self");
        assert!(after.open_fds >= before.open_fds + 20, "{before:?} -> {after:?}");
        drop(files);
        assert!(after.resident_bytes > 1024 * 1024 && after.virtual_bytes >= after.resident_bytes, "{after:?}");
        assert!(after.threads >= 1 && after.max_fds >= after.open_fds);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        assert!(after.start_time_seconds > now - 3600.0 && after.start_time_seconds <= now + 1.0, "{after:?}");
        let (total, free) = disk(Path::new("/")).expect("statvfs");
        assert!(total > 0 && free <= total);
    }
}
