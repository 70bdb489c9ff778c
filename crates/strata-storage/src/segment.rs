//! Segment files: append-only files of whole record batches, named by the
//! base offset of their first batch (`00000000000000000000.log`).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use strata_record::{BatchHeader, FormatError, HEADER_LEN};

use crate::error::{IoContext, Result, StorageError};
use crate::files::FileCache;

pub(crate) const SUFFIX: &str = ".log";

/// Durable bytes at the end of a segment left in the page cache for tail
/// readers (at least these, less than one [`RELEASE_STEP`] more); the kernel
/// is told it may drop what lies before them.
pub const CACHED_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// The page cache is given back in whole steps of this size, aligned to it:
/// the largest folio the kernel caches a file in (2 MiB, a PMD on x86-64)
/// is aligned to its own size, so no folio straddles a boundary of the
/// range. A range cut inside a large folio leaves that folio cached, and
/// the next call, starting where this one ended, would skip it again.
const RELEASE_STEP: u64 = 2 * 1024 * 1024;

pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}{SUFFIX}")
}

/// Base offsets of the segment files in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(SUFFIX)
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// Creates an empty segment file (recovery of a partition with none).
pub(crate) fn create_empty(dir: &Path, base: u64) -> Result<()> {
    let path = dir.join(file_name(base));
    OpenOptions::new().append(true).create(true).open(&path).at(&path).map(drop)
}

/// A segment. `durable_len` bytes are fsync'd and indexed: the only part
/// readers may see.
///
/// While it is written (the active segment, and a rolled one until it is
/// sealed durably) it holds its file open for writing; a sealed segment's
/// file is opened on demand through the node's [`FileCache`], so a node
/// holds a bounded number of them open whatever the number of segments.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: PathBuf,
    files: Arc<FileCache>,
    /// This segment's key in `files`.
    key: u64,
    /// The file open for writing, while the segment is written.
    writer: RwLock<Option<Arc<File>>>,
    pub durable_len: AtomicU64,
    pub next_offset: AtomicU64,
    pub max_timestamp_ms: AtomicI64,
    pub created_ms: i64,
    /// Set once the segment is sealed durably: all its batches fsync'd and
    /// indexed, its metadata recorded. Only such segments may be deleted.
    pub sealed: std::sync::atomic::AtomicBool,
    /// Where the page-cache range not yet given back starts (see
    /// [`Segment::release_cache`]).
    cached_from: AtomicU64,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.files.forget(self.key);
    }
}

impl Segment {
    /// The segment to write to, its file open for writing (created when
    /// `create`).
    pub fn active(dir: &Path, base: u64, create: bool, files: &Arc<FileCache>) -> Result<Self> {
        let seg = Self::sealed(dir, base, files);
        let file = OpenOptions::new().read(true).append(true).create(create).open(&seg.path).at(&seg.path)?;
        *seg.writer.write().map_err(|_| seg.poisoned())? = Some(Arc::new(file));
        Ok(seg)
    }

    /// A segment no longer written: nothing is opened until it is read.
    pub fn sealed(dir: &Path, base: u64, files: &Arc<FileCache>) -> Self {
        Self {
            base,
            path: dir.join(file_name(base)),
            files: Arc::clone(files),
            key: files.new_key(),
            writer: RwLock::new(None),
            durable_len: AtomicU64::new(0),
            next_offset: AtomicU64::new(base),
            max_timestamp_ms: AtomicI64::new(i64::MIN),
            created_ms: crate::now_ms(),
            sealed: std::sync::atomic::AtomicBool::new(false),
            cached_from: AtomicU64::new(0),
        }
    }

    fn poisoned(&self) -> StorageError {
        StorageError::Index(format!("the lock of segment {} was poisoned by a panic", self.base))
    }

    /// The file open for writing; `None` once the segment is sealed.
    pub fn writable(&self) -> Option<Arc<File>> {
        self.writer.read().ok().and_then(|w| w.clone())
    }

    /// The file open for writing, opened again if the segment was sealed (a
    /// truncation makes a sealed segment the active one again).
    pub fn reopen_writable(&self) -> Result<Arc<File>> {
        let mut writer = self.writer.write().map_err(|_| self.poisoned())?;
        if let Some(file) = &*writer {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(OpenOptions::new().read(true).append(true).open(&self.path).at(&self.path)?);
        *writer = Some(Arc::clone(&file));
        self.files.forget(self.key);
        Ok(file)
    }

    /// The segment is sealed durably: its file goes back to the cache's care
    /// (closed now, opened again when read).
    pub fn stop_writing(&self) {
        if let Ok(mut w) = self.writer.write() {
            *w = None;
        }
    }

    /// The segment is being deleted: the cache closes its file (readers
    /// holding it keep reading).
    pub fn close(&self) {
        self.files.forget(self.key);
    }

    /// An open file of the segment, to read from: the writer's while it is
    /// written, otherwise one from the cache. A reader keeps it for as long
    /// as it reads, so the file stays readable even if the segment is
    /// deleted meanwhile.
    pub fn file(&self) -> Result<Arc<File>> {
        match self.writable() {
            Some(file) => Ok(file),
            None => self.files.get(self.key, &self.path),
        }
    }

    /// Tells the kernel that the durable bytes before the last
    /// [`CACHED_TAIL_BYTES`] need not stay in the page cache. Written pages
    /// otherwise pile up in memory until reclaim has to find them, and every
    /// new write then waits on fresh pages; this way the memory of data
    /// already durable is reused. Readers further behind read from the disk.
    /// Only advice, for a segment being written: an error is ignored.
    pub fn release_cache(&self) {
        let Some(file) = self.writable() else { return };
        let keep_from = self.len().saturating_sub(CACHED_TAIL_BYTES) & !(RELEASE_STEP - 1);
        let from = self.cached_from.load(Ordering::Acquire);
        if keep_from <= from {
            return;
        }
        self.cached_from.store(keep_from, Ordering::Release);
        let len = std::num::NonZeroU64::new(keep_from - from);
        if let Err(error) = rustix::fs::fadvise(&*file, from, len, rustix::fs::Advice::DontNeed) {
            tracing::debug!(file = %self.path.display(), %error, "posix_fadvise(DONTNEED) failed");
        }
    }

    /// The file was cut to `len`: bytes written there again are cached anew.
    pub fn cut_cache_mark(&self, len: u64) {
        self.cached_from.fetch_min(len & !(RELEASE_STEP - 1), Ordering::AcqRel);
    }

    pub fn len(&self) -> u64 {
        self.durable_len.load(Ordering::Acquire)
    }
}

/// Reads `len` bytes of `file` (at `path`) at `position`.
pub(crate) fn read_at(file: &File, path: &Path, position: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, position).at(path)?;
    Ok(buf)
}

/// One batch found by a scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScannedBatch {
    pub position: u64,
    pub header: BatchHeader,
}

/// Where and why a scan stopped early.
#[derive(Debug, Clone)]
pub(crate) struct ScanFault {
    pub position: u64,
    pub error: String,
    /// The faulty batch's declared end lies within the file and a valid batch
    /// follows it there: the fault is in the middle of data, not a torn tail.
    pub valid_batch_follows: bool,
}

#[derive(Debug)]
pub(crate) struct Scan {
    pub batches: Vec<ScannedBatch>,
    /// Bytes of the file made of valid batches.
    pub valid_len: u64,
    pub fault: Option<ScanFault>,
}

/// Reads a whole segment, verifying every batch's checksum and that offsets
/// run on contiguously from `expected_base`.
pub(crate) fn scan(path: &Path, expected_base: u64) -> Result<Scan> {
    let file = File::open(path).at(path)?;
    let file_len = file.metadata().at(path)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut batches = Vec::new();
    let mut pos = 0u64;
    let mut expected = expected_base;
    let mut buf = Vec::new();
    while pos < file_len {
        let outcome = read_one(&mut reader, &mut buf, file_len - pos, expected);
        match outcome {
            Ok(header) => {
                batches.push(ScannedBatch { position: pos, header });
                pos += header.size as u64;
                expected = header.next_offset();
            }
            Err(error) => {
                let valid_batch_follows = valid_batch_after(&file, file_len, pos, &buf);
                return Ok(Scan {
                    batches,
                    valid_len: pos,
                    fault: Some(ScanFault { position: pos, error, valid_batch_follows }),
                });
            }
        }
    }
    Ok(Scan { batches, valid_len: pos, fault: None })
}

fn read_one(reader: &mut impl Read, buf: &mut Vec<u8>, remaining: u64, expected: u64) -> Result<BatchHeader, String> {
    buf.clear();
    buf.resize(HEADER_LEN.min(remaining as usize), 0);
    reader.read_exact(buf).map_err(|e| e.to_string())?;
    let header = BatchHeader::parse(buf).map_err(|e| e.to_string())?;
    if header.size as u64 > remaining {
        return Err(FormatError::Truncated { needed: header.size, available: remaining as usize }.to_string());
    }
    buf.resize(header.size, 0);
    reader.read_exact(&mut buf[HEADER_LEN..]).map_err(|e| e.to_string())?;
    strata_record::verify(buf).map_err(|e| e.to_string())?;
    if header.base_offset != expected {
        return Err(format!("batch base offset {} where {expected} was expected", header.base_offset));
    }
    if header.record_count == 0 {
        return Err("batch holds no records".into());
    }
    Ok(header)
}

/// Whether a checksum-valid batch starts where the faulty batch at `pos`
/// (its header bytes in `head`) declares its end.
fn valid_batch_after(file: &File, file_len: u64, pos: u64, head: &[u8]) -> bool {
    let Ok(header) = BatchHeader::parse(head) else { return false };
    let next = pos + header.size as u64;
    if next + HEADER_LEN as u64 > file_len {
        return false;
    }
    let mut h = vec![0u8; HEADER_LEN];
    if file.read_exact_at(&mut h, next).is_err() {
        return false;
    }
    let Ok(next_header) = BatchHeader::parse(&h) else { return false };
    if next + next_header.size as u64 > file_len {
        return false;
    }
    let mut whole = vec![0u8; next_header.size];
    file.read_exact_at(&mut whole, next).is_ok() && strata_record::verify(&whole).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a byte pattern (byte `i` of the file is `i % 251`) up to
    /// `len` bytes, fsyncs, and marks it durable.
    fn fill(seg: &Segment, len: u64) {
        use std::io::Write;
        let file = seg.writable().expect("written");
        let mut at = file.metadata().expect("metadata").len();
        while at < len {
            let n = 65536.min(len - at);
            let chunk: Vec<u8> = (at..at + n).map(|i| (i % 251) as u8).collect();
            (&*file).write_all(&chunk).expect("write");
            at += n;
        }
        file.sync_data().expect("sync");
        seg.durable_len.store(len, Ordering::Release);
    }

    #[test]
    fn release_cache_keeps_the_tail_and_data_stays_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = Segment::active(dir.path(), 0, true, &FileCache::new(4)).expect("open");
        // Less than the cached tail: nothing is given back.
        fill(&seg, CACHED_TAIL_BYTES / 2);
        seg.release_cache();
        assert_eq!(seg.cached_from.load(Ordering::Acquire), 0);
        // Past it by less than a step: still nothing.
        fill(&seg, CACHED_TAIL_BYTES + RELEASE_STEP - 1);
        seg.release_cache();
        assert_eq!(seg.cached_from.load(Ordering::Acquire), 0);
        // Past it: everything before the last CACHED_TAIL_BYTES, in whole steps.
        let len = CACHED_TAIL_BYTES + 2 * RELEASE_STEP + 3 * 65536 + 100;
        fill(&seg, len);
        seg.release_cache();
        let from = seg.cached_from.load(Ordering::Acquire);
        assert_eq!(from, 2 * RELEASE_STEP);
        // A second call with nothing new durable does nothing.
        seg.release_cache();
        assert_eq!(seg.cached_from.load(Ordering::Acquire), from);
        // Bytes given back to the kernel read back from the disk unchanged.
        assert_eq!(seg.file().expect("file").metadata().expect("metadata").len(), len);
        for at in [0u64, 65536, from - 10, len - 10] {
            let got = read_at(&seg.file().expect("file"), &seg.path, at, 10).expect("read");
            let want: Vec<u8> = (at..at + 10).map(|i| (i % 251) as u8).collect();
            assert_eq!(got, want, "bytes at {at}");
        }
    }

    /// Bytes of `path` in the page cache, from util-linux's `fincore`
    /// (essential on Debian).
    fn resident_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("run fincore (util-linux)");
        assert!(out.status.success(), "fincore failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("fincore prints a byte count")
    }

    /// A fresh directory on a filesystem with a page cache to give back:
    /// not tmpfs or ramfs, whose pages are the files themselves (fadvise
    /// cannot drop them). Tried in order: `$STRATA_PAGE_CACHE_DIR`, the
    /// temporary directory, `/var/tmp`, and the build's own target
    /// directory (where this test binary lives, so on the build's disk).
    /// None of them: the test fails rather than pass without checking.
    #[allow(clippy::unnecessary_cast)] // statfs's f_type is not i64 on every target
    fn disk_backed_dir() -> tempfile::TempDir {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        const RAMFS_MAGIC: i64 = 0x8584_58f6;
        let mut candidates: Vec<std::path::PathBuf> =
            std::env::var_os("STRATA_PAGE_CACHE_DIR").map(Into::into).into_iter().collect();
        candidates.push(std::env::temp_dir());
        candidates.push("/var/tmp".into());
        if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
            candidates.push(dir);
        }
        let mut refused = Vec::new();
        for dir in candidates {
            match rustix::fs::statfs(&dir) {
                Ok(fs) if ![TMPFS_MAGIC, RAMFS_MAGIC].contains(&(fs.f_type as i64)) => {
                    if let Ok(t) = tempfile::tempdir_in(&dir) {
                        return t;
                    }
                    refused.push(format!("{} (not writable)", dir.display()));
                }
                Ok(_) => refused.push(format!("{} (tmpfs or ramfs)", dir.display())),
                Err(e) => refused.push(format!("{} ({e})", dir.display())),
            }
        }
        panic!(
            "no directory on a disk-backed filesystem to check the page cache in: {}; set STRATA_PAGE_CACHE_DIR to one",
            refused.join(", ")
        );
    }

    /// Appended as the syncer does (writes of a 64-record batch of 1 KiB
    /// records, which do not fall on page boundaries, each fsync'd and then
    /// released), a segment keeps only about its tail in the page cache,
    /// however the kernel sized the folios it cached the file in.
    ///
    /// Needs a disk-backed directory (see [`disk_backed_dir`]) and
    /// util-linux's `fincore`. CI (root on Debian, its temporary directory
    /// on the root filesystem) runs it in the temporary directory; where
    /// that is a tmpfs it runs in `/var/tmp` or the target directory.
    #[test]
    fn released_pages_leave_the_page_cache() {
        let dir = disk_backed_dir();
        eprintln!("checking the page cache in {}", dir.path().display());
        let seg = Segment::active(dir.path(), 0, true, &FileCache::new(4)).expect("open");
        let total = CACHED_TAIL_BYTES + 24 * 1024 * 1024;
        let mut len = 0;
        while len < total {
            len += 64 * 1100;
            fill(&seg, len);
            seg.release_cache();
        }
        let resident = resident_bytes(&seg.path);
        assert!(
            // The tail, plus at most a 2 MiB step not yet given back.
            resident <= CACHED_TAIL_BYTES + 2 * 1024 * 1024,
            "{resident} bytes of a {len}-byte segment are still cached"
        );
    }
}
