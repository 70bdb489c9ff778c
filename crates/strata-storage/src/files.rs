//! A node-wide cache of open sealed segment files, least recently used
//! closed first, so that a node with many segments neither runs out of file
//! descriptors nor opens every file when it starts. The active segment of
//! each partition is not in it: its writer holds it open (see
//! [`crate::segment::Segment`]).
//!
//! A reader takes an `Arc<File>` from the cache and keeps it for the whole
//! read: a file closed by the cache meanwhile (another read needed room)
//! stays open until that reader drops it, and a segment deleted by
//! retention stays readable by a reader that holds its file, as with any
//! open file on Unix. At most `capacity` files are held by the cache, plus
//! those reads in progress hold.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{IoContext, Result, StorageError};

/// Open read-only files of sealed segments, by segment key.
#[derive(Debug)]
pub struct FileCache {
    capacity: usize,
    state: Mutex<Lru>,
    next_key: AtomicU64,
}

#[derive(Debug, Default)]
struct Lru {
    /// Key -> (file, last use).
    files: HashMap<u64, (Arc<File>, u64)>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, u64>,
    clock: u64,
}

impl Lru {
    fn touch(&mut self, key: u64) -> Option<Arc<File>> {
        self.clock += 1;
        let clock = self.clock;
        let (file, used) = self.files.get_mut(&key)?;
        self.order.remove(used);
        *used = clock;
        self.order.insert(clock, key);
        Some(Arc::clone(file))
    }
}

impl FileCache {
    /// A cache holding at most `capacity` files (at least one).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity: capacity.max(1), state: Mutex::new(Lru::default()), next_key: AtomicU64::new(1) })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Files the cache holds open now.
    pub fn len(&self) -> usize {
        self.state.lock().map_or(0, |s| s.files.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A key for a new segment: never reused, so a segment deleted and
    /// created again under the same name (a truncation) never gets the old
    /// file.
    pub(crate) fn new_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// The open file of segment `key` at `path`, opened (read-only) if the
    /// cache does not hold it; the least recently used file is closed when
    /// the cache is full.
    pub(crate) fn get(&self, key: u64, path: &Path) -> Result<Arc<File>> {
        if let Some(file) = self.lock()?.touch(key) {
            return Ok(file);
        }
        // Opened without the lock: other partitions' reads go on meanwhile.
        let opened = Arc::new(File::open(path).at(path)?);
        let mut state = self.lock()?;
        if let Some(file) = state.touch(key) {
            return Ok(file); // another reader opened it first
        }
        state.clock += 1;
        let clock = state.clock;
        state.files.insert(key, (Arc::clone(&opened), clock));
        state.order.insert(clock, key);
        while state.files.len() > self.capacity {
            let Some((_, oldest)) = state.order.pop_first() else { break };
            state.files.remove(&oldest);
        }
        Ok(opened)
    }

    /// Closes segment `key`'s file (readers holding it keep it).
    pub(crate) fn forget(&self, key: u64) {
        if let Ok(mut state) = self.state.lock()
            && let Some((_, used)) = state.files.remove(&key)
        {
            state.order.remove(&used);
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Lru>> {
        self.state.lock().map_err(|_| StorageError::Index("the open file cache's lock was poisoned by a panic".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_file_is_closed_first_and_readers_keep_theirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<_> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("{i}.log"));
                std::fs::write(&p, [i as u8; 8]).expect("write");
                p
            })
            .collect();
        let cache = FileCache::new(2);
        let keys: Vec<u64> = (0..4).map(|_| cache.new_key()).collect();
        let first = cache.get(keys[0], &paths[0]).expect("open");
        cache.get(keys[1], &paths[1]).expect("open");
        // Using 0 again makes 1 the oldest: opening 2 closes 1.
        assert!(Arc::ptr_eq(&first, &cache.get(keys[0], &paths[0]).expect("cached")));
        cache.get(keys[2], &paths[2]).expect("open");
        assert_eq!(cache.len(), 2);
        let state = cache.state.lock().expect("lock");
        assert!(state.files.contains_key(&keys[0]) && state.files.contains_key(&keys[2]));
        drop(state);
        // 0 is closed by the cache, but the reader's handle still reads,
        // even after the file is unlinked.
        cache.get(keys[3], &paths[3]).expect("open");
        cache.get(keys[2], &paths[2]).expect("cached");
        assert!(!cache.state.lock().expect("lock").files.contains_key(&keys[0]));
        std::fs::remove_file(&paths[0]).expect("unlink");
        let mut buf = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&*first, &mut buf, 0).expect("read");
        assert_eq!(buf, [0u8; 8]);
        cache.forget(keys[2]);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(keys[0], &paths[0]).is_err(), "an unlinked file cannot be opened again");
    }
}
