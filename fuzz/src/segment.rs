//! Segment recovery (`strata-storage`): a partition directory holding a
//! segment file of arbitrary bytes is opened as a node opens it after a
//! crash ([`PartitionLog::open`], with a real RocksDB index).
//!
//! Input: 11 bytes of settings, then the file's bytes.
//! - byte 0, bit 0: fix the length-chained batches' checksums first (so
//!   mutations reach the checks behind the checksum);
//! - bit 1: the segment starts at the offset in bytes 1..9 (little-endian),
//!   and so does the log (otherwise at 0);
//! - bit 2: the segment is sealed: an empty active segment follows it,
//!   named by its base plus the u16 in bytes 9..11.
//!
//! Checked: no panic, and either
//! - the partition refuses to serve, reporting corrupt data with the file
//!   and a byte position within it, or
//! - it recovered: the file lost at most a torn tail (a sealed segment
//!   nothing), every batch up to the high watermark reads back verified and
//!   at contiguous offsets, a new batch appends at the high watermark and
//!   reads back, and a second recovery finds the same log.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use strata_record::{Compression, HEADER_LEN};
use strata_storage::{LogConfig, LogIndex, PartitionLog, PartitionMeta, Visibility};

use crate::env;

const SETTINGS: usize = 11;

/// The file name of a segment starting at `base`.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Fixes the checksum of every batch chained by its length field from the
/// start of `file` (stops at the first length that does not fit).
pub fn fix_checksums(file: &mut [u8]) {
    let mut pos = 0usize;
    while pos + HEADER_LEN <= file.len() {
        let size = u32::from_le_bytes([file[pos], file[pos + 1], file[pos + 2], file[pos + 3]]) as usize + 4;
        if size < HEADER_LEN || size > file.len() - pos {
            break;
        }
        let crc = crc32c::crc32c(&file[pos + 8..pos + size]);
        file[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos += size;
    }
}

/// The settings byte and fields a seed file is stored with (no options).
pub fn seed(file: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; SETTINGS];
    out.extend_from_slice(file);
    out
}

pub fn run(data: &[u8]) -> bool {
    let flags = data.first().copied().unwrap_or(0);
    let field = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        let src = data.get(range.clone()).unwrap_or_default();
        b[..src.len()].copy_from_slice(src);
        u64::from_le_bytes(b)
    };
    let base = if flags & 2 != 0 { field(1..9) } else { 0 };
    // After the sealed segment: never its own name (base u64::MAX has none after it).
    let active_base =
        (flags & 4 != 0).then(|| base.saturating_add(field(9..11)).max(base.saturating_add(1))).filter(|b| *b != base);
    let mut file = data.get(SETTINGS..).unwrap_or_default().to_vec();
    if flags & 1 != 0 {
        fix_checksums(&mut file);
    }
    let env = env::get();
    let scratch = env.scratch();
    env.runtime.block_on(recover(&scratch, base, active_base, &file))
}

async fn open(scratch: &env::Scratch) -> PartitionLog {
    // Corruption does not fail the open (the partition refuses to serve);
    // an error here is an I/O or index error, which arbitrary file bytes
    // must not cause.
    PartitionLog::open_with("fuzz", 0, &scratch.dir, scratch.index.clone(), LogConfig::default(), Visibility::OnFlush)
        .unwrap_or_else(|e| panic!("opening the partition failed instead of recovering or failing it: {e}"))
}

async fn close(log: PartitionLog) {
    let writer = log.take_writer();
    drop(log);
    if let Some(w) = writer {
        w.await.expect("the writer task ends");
    }
}

async fn recover(scratch: &env::Scratch, base: u64, active_base: Option<u64>, file: &[u8]) -> bool {
    let path = scratch.dir.join(file_name(base));
    std::fs::write(&path, file).expect("write the segment");
    let mut files = vec![path.clone()];
    if let Some(b) = active_base {
        let active = scratch.dir.join(file_name(b));
        std::fs::write(&active, b"").expect("write the active segment");
        files.push(active);
    }
    if base != 0 {
        scratch.index.put_meta(&PartitionMeta { log_start_offset: base }, false).expect("put meta");
    }
    let log = open(scratch).await;
    let status = log.status();
    if let Some(reason) = status.failure {
        check_corruption_report(&reason, &files, file.len() as u64);
        assert!(log.read(base, 1 << 20).await.is_err(), "a failed partition served a read");
        close(log).await;
        return false;
    }
    assert_eq!(status.log_start_offset, base, "the log start moved");
    let on_disk = std::fs::read(&path).expect("read the segment back");
    if active_base.is_some() {
        assert_eq!(on_disk, file, "recovery changed a sealed segment");
    } else {
        assert!(file.starts_with(&on_disk), "recovery did more than cut a torn tail");
    }
    let hw = log.high_watermark();
    read_all(&log, base, hw).await;

    // The recovered log serves appends.
    let batch = strata_record::encode(
        &[strata_record::Record {
            value: Bytes::from_static(b"after recovery"),
            timestamp_ms: strata_record::now_ms(),
            ..Default::default()
        }],
        Compression::None,
    );
    // No room for one more offset, or no index after the last entry's: the
    // append must be refused, not wrap.
    let room = hw < u64::MAX && log.last_entry().is_none_or(|e| e.index < u64::MAX);
    let appended = match room {
        false => {
            assert!(log.append(batch).await.is_err(), "an append past the last offset or index was accepted");
            false
        }
        true => {
            let info = log.append(batch).await.unwrap_or_else(|e| panic!("append after recovery failed: {e}"));
            assert_eq!(info.base_offset, hw, "the append did not land at the high watermark");
            assert_eq!(log.high_watermark(), hw + 1);
            true
        }
    };
    let hw = log.high_watermark();
    close(log).await;

    // A second recovery finds the same log.
    let log = open(scratch).await;
    let status = log.status();
    assert_eq!(status.failure, None, "a recovered log failed its next recovery");
    assert_eq!((status.log_start_offset, status.high_watermark), (base, hw), "the second recovery found another log");
    let last = read_all(&log, base, hw).await;
    if appended {
        let last = last.expect("the appended batch reads back");
        let records = strata_record::decode(&last).expect("decode the appended batch");
        assert_eq!(records[0].value.as_ref(), b"after recovery");
    }
    close(log).await;
    true
}

/// The report names one of `files` and a byte position within it.
fn check_corruption_report(reason: &str, files: &[PathBuf], len: u64) {
    assert!(reason.contains("corrupt data"), "the partition failed for another reason than corruption: {reason}");
    // The reason names the segment by the offset it starts at (it reaches
    // clients, who get no paths); the node's log names the file as well.
    let file = files.iter().find(|f| {
        let base = f.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
        reason.contains(&f.display().to_string())
            || base.is_some_and(|b| reason.contains(&format!("the segment starting at offset {b} ")))
    });
    assert!(file.is_some(), "the corruption report names no segment: {reason}");
    let position = reason
        .split("at byte ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("the corruption report gives no byte position: {reason}"));
    let file_len = file.and_then(|f| std::fs::metadata(f).ok()).map_or(len, |m| m.len().max(len));
    assert!(position <= file_len, "the reported position {position} lies beyond the file ({file_len} bytes): {reason}");
}

/// Reads every batch from `from` to `hw`: each verifies and they follow
/// each other without a gap. Returns the last one.
async fn read_all(log: &PartitionLog, from: u64, hw: u64) -> Option<Bytes> {
    let mut expected = from;
    let mut last = None;
    // Each round reads at least one batch, and a batch holds at least one
    // record, so the loop ends; the bound is a backstop.
    for _ in 0..1_000_000 {
        if expected >= hw {
            break;
        }
        let read = log.read(expected, 1 << 20).await.unwrap_or_else(|e| panic!("read at {expected} failed: {e}"));
        assert!(!read.batches.is_empty(), "a read at {expected} below the high watermark {hw} returned nothing");
        for batch in &read.batches {
            let h = strata_record::verify(batch).unwrap_or_else(|e| panic!("a recovered batch does not verify: {e}"));
            assert_eq!(h.base_offset, expected, "a gap or an overlap in the recovered offsets");
            expected = h.base_offset.checked_add(u64::from(h.offset_count())).expect("offsets overflow");
            last = Some(batch.clone());
        }
    }
    assert_eq!(expected, hw, "the batches read do not end at the high watermark");
    last
}

/// The segment file of `dir` starting at `base` (for seeds).
pub fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base))
}
