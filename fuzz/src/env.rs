//! What the harnesses that touch storage share within one process: a tokio
//! runtime, one RocksDB (as a node has), and fresh directories.
//!
//! Each execution gets a partition of its own (a fresh topic id in the
//! shared RocksDB, a fresh directory) and removes both when it ends, so
//! executions do not see each other. Everything lives under
//! `$STRATA_FUZZ_TMP` (default: `/dev/shm` when it exists, where an fsync
//! costs nothing, else the system's temporary directory), in a folder named
//! after the process id; folders of processes that are gone are removed
//! when the next process starts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use strata_storage::{IndexDb, LogIndex, RocksIndex};

/// The shared state of this process.
pub struct Env {
    pub runtime: tokio::runtime::Runtime,
    pub db: Arc<IndexDb>,
    root: PathBuf,
    next: AtomicU64,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("root", &self.root).finish()
    }
}

/// A fresh partition: its directory and its index. Removed on drop.
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
    pub index: Arc<RocksIndex>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The harness checked what it needed; a failure to clean up only
        // leaves garbage in the process's folder, removed with it.
        let _ = self.index.destroy();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_FUZZ_TMP") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() }
}

/// Removes the folders of fuzzing processes that no longer run.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// This process's environment, created on first use (after AFL++'s fork
/// server has forked, so no thread is lost in a fork).
pub fn get() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let parent = base_dir().join("strata-fuzz");
        remove_stale(&parent);
        let root = parent.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let db = IndexDb::open(&root.join("index")).expect("open the RocksDB index");
        Env { runtime, db, root, next: AtomicU64::new(1) }
    })
}

impl Env {
    /// A fresh partition directory and index.
    pub fn scratch(&self) -> Scratch {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("p{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Scratch { dir, index: Arc::new(self.db.partition(n, 0)) }
    }

    /// Removes this process's folder (the runner calls it when done).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
