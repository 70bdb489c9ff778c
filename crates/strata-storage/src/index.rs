//! Partition indices and small durable state, behind the [`LogIndex`] trait;
//! [`RocksIndex`] implements it on one node-wide RocksDB.
//!
//! Contract (what the partition log relies on):
//! - Index entries describe batches that are already fsync'd in their segment.
//!   They are written without a RocksDB sync: after a crash the index may lag
//!   the segments (recovery re-adds what is missing) but never leads them.
//! - `put_meta` and `put_segment_meta` are durable when they return when the
//!   caller asks for it (`sync`); retention depends on that ordering.
//! - Keys are prefixed by (topic id, partition), so one RocksDB serves every
//!   partition and a deleted topic's keys are one range delete.

use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// Bytes of an offset-index value; an entry-index value is the base offset
/// followed by the same fields.
const ENTRY_VALUE_LEN: usize = 44;

/// A RocksDB key and value.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Where one batch lives, and which Raft entry it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: u64,
    pub next_offset: u64,
    pub segment_base: u64,
    pub position: u64,
    pub size: u32,
    pub log_index: u64,
    pub term: u64,
}

/// Durable per-partition state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// First offset still held; everything below was deleted by retention.
    pub log_start_offset: u64,
}

/// What the log records about a segment when it is sealed (rolled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub size: u64,
    pub next_offset: u64,
    pub max_timestamp_ms: i64,
}

/// Offset and time indices plus durable metadata of one partition.
pub trait LogIndex: Send + Sync + 'static {
    /// Adds batch entries and time-index points `(running max timestamp, base offset)`.
    fn put(&self, entries: &[IndexEntry], time_points: &[(i64, u64)]) -> Result<()>;
    /// The batch holding `offset`: the entry with the greatest base offset <= `offset`.
    fn lookup(&self, offset: u64) -> Result<Option<IndexEntry>>;
    /// The data batch with the greatest base offset.
    fn last(&self) -> Result<Option<IndexEntry>>;
    /// The entry (data or control batch) with the greatest log index.
    fn last_entry(&self) -> Result<Option<IndexEntry>>;
    /// The batch that is Raft entry `log_index`.
    fn lookup_entry(&self, log_index: u64) -> Result<Option<IndexEntry>>;
    /// The first indexed entry with log index >= `log_index`.
    fn lookup_entry_from(&self, log_index: u64) -> Result<Option<IndexEntry>>;
    /// Base offset of the first batch whose running max timestamp is >= `ts`.
    fn lookup_time(&self, ts: i64) -> Result<Option<u64>>;
    /// The newest time-index point.
    fn last_time(&self) -> Result<Option<(i64, u64)>>;
    /// Removes the batches at or after `offset` and the entries from log
    /// index `log_index` on (the two name the same cut: control batches take
    /// no offset, so only the index says on which side of a cut they are).
    fn truncate_from(&self, offset: u64, log_index: u64) -> Result<()>;
    /// Removes every batch and entry held in segments from `segment_base` on
    /// (recovery re-adds them from the files).
    fn truncate_segments_from(&self, segment_base: u64) -> Result<()>;
    /// Removes the batches before `offset` and the entries held in segments
    /// before `segment_base` (retention, purge). The time point that covered
    /// the removed range moves to `offset`, so time lookups stay exact for
    /// what remains.
    fn purge_before(&self, offset: u64, segment_base: u64) -> Result<()>;
    fn meta(&self) -> Result<PartitionMeta>;
    fn put_meta(&self, meta: &PartitionMeta, sync: bool) -> Result<()>;
    fn segment_meta(&self, base: u64) -> Result<Option<SegmentMeta>>;
    fn put_segment_meta(&self, base: u64, meta: &SegmentMeta) -> Result<()>;
    fn delete_segment_meta(&self, base: u64) -> Result<()>;
    /// Small durable state kept for the consensus layer (vote, applied
    /// entry...), by name; opaque to the storage layer.
    fn state(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn put_state(&self, name: &str, value: &[u8], sync: bool) -> Result<()>;
    /// Removes everything this partition stored.
    fn destroy(&self) -> Result<()>;
}

const CF_OFFSETS: &str = "offset_index";
const CF_TIMES: &str = "time_index";
const CF_PARTITIONS: &str = "partition_meta";
const CF_SEGMENTS: &str = "segment_meta";
/// Raft log index -> the batch that is that entry (data or control).
const CF_ENTRIES: &str = "entry_index";
/// Node-wide catalog (topics, id counter); used by the log manager.
pub(crate) const CF_CATALOG: &str = "catalog";

/// The node-wide RocksDB.
pub struct IndexDb {
    db: DB,
}

impl std::fmt::Debug for IndexDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexDb").field("path", &self.db.path()).finish()
    }
}

/// Table files RocksDB keeps open at most.
pub const INDEX_OPEN_FILES: i32 = 256;

impl IndexDb {
    pub fn open(path: &std::path::Path) -> Result<Arc<Self>> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(64 * 1024 * 1024);
        // RocksDB keeps every table file open by default: bounded like the
        // segment files (a table cache closes the least recently used).
        opts.set_max_open_files(INDEX_OPEN_FILES);
        let cfs = [CF_OFFSETS, CF_TIMES, CF_PARTITIONS, CF_SEGMENTS, CF_ENTRIES, CF_CATALOG]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Arc::new(Self { db }))
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| StorageError::Index(format!("column family {name} is missing")))
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Index of one partition.
    pub fn partition(self: &Arc<Self>, topic_id: u64, partition: u32) -> RocksIndex {
        let mut prefix = [0u8; 12];
        prefix[..8].copy_from_slice(&topic_id.to_be_bytes());
        prefix[8..].copy_from_slice(&partition.to_be_bytes());
        RocksIndex { db: Arc::clone(self), prefix }
    }
}

/// [`LogIndex`] of one partition in the node's [`IndexDb`].
#[derive(Debug, Clone)]
pub struct RocksIndex {
    db: Arc<IndexDb>,
    prefix: [u8; 12],
}

fn ts_key(ts: i64) -> [u8; 8] {
    // Flip the sign bit so that big-endian byte order sorts like i64.
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn ts_from_key(b: &[u8]) -> i64 {
    (be_u64(b) ^ (1 << 63)) as i64
}

fn eight(b: &[u8], at: usize) -> [u8; 8] {
    // Keys and values are written by this module with fixed sizes; a shorter
    // one (a damaged database) reads as zeros here and fails the checks of
    // the caller (offsets out of order) rather than panicking.
    let mut a = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        a.copy_from_slice(src);
    }
    a
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(eight(b, 0))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(eight(b, at))
}

impl RocksIndex {
    fn key(&self, suffix: u64) -> [u8; 20] {
        let mut k = [0u8; 20];
        k[..12].copy_from_slice(&self.prefix);
        k[12..].copy_from_slice(&suffix.to_be_bytes());
        k
    }

    fn prefix_end(&self) -> [u8; 20] {
        let mut k = [0xffu8; 20];
        k[..12].copy_from_slice(&self.prefix);
        k
    }

    fn encode_entry(e: &IndexEntry) -> [u8; ENTRY_VALUE_LEN] {
        let mut v = [0u8; ENTRY_VALUE_LEN];
        v[..8].copy_from_slice(&e.next_offset.to_le_bytes());
        v[8..16].copy_from_slice(&e.segment_base.to_le_bytes());
        v[16..24].copy_from_slice(&e.position.to_le_bytes());
        v[24..28].copy_from_slice(&e.size.to_le_bytes());
        v[28..36].copy_from_slice(&e.log_index.to_le_bytes());
        v[36..].copy_from_slice(&e.term.to_le_bytes());
        v
    }

    fn decode_entry(key: &[u8], v: &[u8]) -> Result<IndexEntry> {
        if key.len() != 20 || v.len() != ENTRY_VALUE_LEN {
            return Err(StorageError::Index(format!(
                "malformed offset index entry (key {} bytes, value {} bytes)",
                key.len(),
                v.len()
            )));
        }
        Ok(IndexEntry {
            base_offset: be_u64(&key[12..]),
            next_offset: le_u64(v, 0),
            segment_base: le_u64(v, 8),
            position: le_u64(v, 16),
            size: u32::from_le_bytes([v[24], v[25], v[26], v[27]]),
            log_index: le_u64(v, 28),
            term: le_u64(v, 36),
        })
    }

    fn state_key(&self, name: &str) -> Vec<u8> {
        let mut k = self.prefix.to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }

    fn encode_by_index(e: &IndexEntry) -> [u8; 8 + ENTRY_VALUE_LEN] {
        let mut v = [0u8; 8 + ENTRY_VALUE_LEN];
        v[..8].copy_from_slice(&e.base_offset.to_le_bytes());
        v[8..].copy_from_slice(&Self::encode_entry(e));
        v
    }

    fn decode_by_index(v: &[u8]) -> Result<IndexEntry> {
        let base = v.get(..8).ok_or_else(|| StorageError::Index("malformed entry index value".into()))?;
        // Rebuild the offset key it mirrors (base offset big-endian).
        let mut key = [0u8; 20];
        key[12..].copy_from_slice(&le_u64(base, 0).to_be_bytes());
        Self::decode_entry(&key, v.get(8..).unwrap_or_default())
    }

    /// Deletes the entry-index keys, scanning from the newest (or, `front`,
    /// the oldest) while `doomed` says so.
    fn drop_entries_while(
        &self,
        batch: &mut WriteBatch,
        front: bool,
        mut doomed: impl FnMut(&IndexEntry) -> bool,
    ) -> Result<()> {
        let cf = self.db.cf(CF_ENTRIES)?;
        let (start, dir) =
            if front { (self.key(0), Direction::Forward) } else { (self.prefix_end(), Direction::Reverse) };
        for item in self.db.db().iterator_cf(cf, IteratorMode::From(&start, dir)) {
            let (k, v) = item?;
            if !k.starts_with(&self.prefix) || !doomed(&Self::decode_by_index(&v)?) {
                break;
            }
            batch.delete_cf(cf, &k);
        }
        Ok(())
    }

    /// Adds deletions of the offset and time entries at or after `offset`.
    fn drop_offsets_from(&self, batch: &mut WriteBatch, offset: u64) -> Result<()> {
        let offsets = self.db.cf(CF_OFFSETS)?;
        let times = self.db.cf(CF_TIMES)?;
        batch.delete_range_cf(offsets, self.key(offset), self.prefix_end());
        batch.delete_cf(offsets, self.prefix_end());
        // Time points are monotonic in offset too: the ones to drop are a suffix.
        for (ts, _) in self.time_points_rev(|base| base >= offset)? {
            let mut k = [0u8; 20];
            k[..12].copy_from_slice(&self.prefix);
            k[12..].copy_from_slice(&ts_key(ts));
            batch.delete_cf(times, k);
        }
        Ok(())
    }

    /// The entry at or before `key` within this partition, in `cf`.
    fn seek_prev(&self, cf: &str, key: &[u8]) -> Result<Option<KeyValue>> {
        let cf = self.db.cf(cf)?;
        let mut it = self.db.db().iterator_cf(cf, IteratorMode::From(key, Direction::Reverse));
        match it.next() {
            Some(Ok((k, v))) if k.starts_with(&self.prefix) => Ok(Some((k, v))),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    fn seek_next(&self, cf: &str, key: &[u8]) -> Result<Option<KeyValue>> {
        let cf = self.db.cf(cf)?;
        let mut it = self.db.db().iterator_cf(cf, IteratorMode::From(key, Direction::Forward));
        match it.next() {
            Some(Ok((k, v))) if k.starts_with(&self.prefix) => Ok(Some((k, v))),
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    /// Time points of this partition, newest first while `keep` says so.
    fn time_points_rev(&self, mut keep: impl FnMut(u64) -> bool) -> Result<Vec<(i64, u64)>> {
        let cf = self.db.cf(CF_TIMES)?;
        let end = self.prefix_end();
        let mut out = Vec::new();
        for item in self.db.db().iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse)) {
            let (k, v) = item?;
            if !k.starts_with(&self.prefix) || !keep(le_u64(&v, 0)) {
                break;
            }
            out.push((ts_from_key(k.get(12..).unwrap_or_default()), le_u64(&v, 0)));
        }
        Ok(out)
    }
}

impl LogIndex for RocksIndex {
    fn put(&self, entries: &[IndexEntry], time_points: &[(i64, u64)]) -> Result<()> {
        let offsets = self.db.cf(CF_OFFSETS)?;
        let times = self.db.cf(CF_TIMES)?;
        let by_index = self.db.cf(CF_ENTRIES)?;
        let mut batch = WriteBatch::default();
        for e in entries {
            // Control batches take no offset: only the entry index has them.
            if e.next_offset > e.base_offset {
                batch.put_cf(offsets, self.key(e.base_offset), Self::encode_entry(e));
            }
            batch.put_cf(by_index, self.key(e.log_index), Self::encode_by_index(e));
        }
        for (ts, base) in time_points {
            let mut k = [0u8; 20];
            k[..12].copy_from_slice(&self.prefix);
            k[12..].copy_from_slice(&ts_key(*ts));
            batch.put_cf(times, k, base.to_le_bytes());
        }
        self.db.write(batch, false)
    }

    fn lookup(&self, offset: u64) -> Result<Option<IndexEntry>> {
        self.seek_prev(CF_OFFSETS, &self.key(offset))?.map(|(k, v)| Self::decode_entry(&k, &v)).transpose()
    }

    fn last(&self) -> Result<Option<IndexEntry>> {
        self.seek_prev(CF_OFFSETS, &self.prefix_end())?.map(|(k, v)| Self::decode_entry(&k, &v)).transpose()
    }

    fn last_entry(&self) -> Result<Option<IndexEntry>> {
        self.seek_prev(CF_ENTRIES, &self.prefix_end())?.map(|(_, v)| Self::decode_by_index(&v)).transpose()
    }

    fn lookup_entry(&self, log_index: u64) -> Result<Option<IndexEntry>> {
        let cf = self.db.cf(CF_ENTRIES)?;
        self.db.db().get_cf(cf, self.key(log_index))?.map(|v| Self::decode_by_index(&v)).transpose()
    }

    fn lookup_entry_from(&self, log_index: u64) -> Result<Option<IndexEntry>> {
        self.seek_next(CF_ENTRIES, &self.key(log_index))?.map(|(_, v)| Self::decode_by_index(&v)).transpose()
    }

    fn lookup_time(&self, ts: i64) -> Result<Option<u64>> {
        let mut k = [0u8; 20];
        k[..12].copy_from_slice(&self.prefix);
        k[12..].copy_from_slice(&ts_key(ts));
        Ok(self.seek_next(CF_TIMES, &k)?.map(|(_, v)| le_u64(&v, 0)))
    }

    fn last_time(&self) -> Result<Option<(i64, u64)>> {
        Ok(self
            .seek_prev(CF_TIMES, &self.prefix_end())?
            .map(|(k, v)| (ts_from_key(k.get(12..).unwrap_or_default()), le_u64(&v, 0))))
    }

    fn truncate_from(&self, offset: u64, log_index: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.drop_offsets_from(&mut batch, offset)?;
        let entries = self.db.cf(CF_ENTRIES)?;
        batch.delete_range_cf(entries, self.key(log_index), self.prefix_end());
        batch.delete_cf(entries, self.prefix_end());
        self.db.write(batch, false)
    }

    fn truncate_segments_from(&self, segment_base: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.drop_offsets_from(&mut batch, segment_base)?;
        self.drop_entries_while(&mut batch, false, |e| e.segment_base >= segment_base)?;
        self.db.write(batch, false)
    }

    fn purge_before(&self, offset: u64, segment_base: u64) -> Result<()> {
        let offsets = self.db.cf(CF_OFFSETS)?;
        let times = self.db.cf(CF_TIMES)?;
        let mut batch = WriteBatch::default();
        self.drop_entries_while(&mut batch, true, |e| e.segment_base < segment_base)?;
        batch.delete_range_cf(offsets, self.key(0), self.key(offset));
        let start = self.key(0);
        let mut last_removed = None;
        for item in self.db.db().iterator_cf(times, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&self.prefix) || le_u64(&v, 0) >= offset {
                break;
            }
            last_removed = Some(k.clone());
            batch.delete_cf(times, &k);
        }
        if let Some(k) = last_removed {
            // Keep the running maximum, now attached to the first kept batch,
            // unless a later point already starts there.
            let ts = ts_from_key(k.get(12..).unwrap_or_default());
            let next = self.lookup_time(ts.saturating_add(1))?;
            if next != Some(offset) {
                batch.put_cf(times, &k, offset.to_le_bytes());
            }
        }
        self.db.write(batch, false)
    }

    fn meta(&self) -> Result<PartitionMeta> {
        let cf = self.db.cf(CF_PARTITIONS)?;
        match self.db.db().get_cf(cf, self.prefix)? {
            None => Ok(PartitionMeta::default()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| StorageError::Index(format!("malformed partition metadata: {e}"))),
        }
    }

    fn put_meta(&self, meta: &PartitionMeta, sync: bool) -> Result<()> {
        let cf = self.db.cf(CF_PARTITIONS)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, self.prefix, serde_json::to_vec(meta).map_err(|e| StorageError::Index(e.to_string()))?);
        self.db.write(batch, sync)
    }

    fn segment_meta(&self, base: u64) -> Result<Option<SegmentMeta>> {
        let cf = self.db.cf(CF_SEGMENTS)?;
        match self.db.db().get_cf(cf, self.key(base))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StorageError::Index(format!("malformed segment metadata: {e}"))),
        }
    }

    fn put_segment_meta(&self, base: u64, meta: &SegmentMeta) -> Result<()> {
        let cf = self.db.cf(CF_SEGMENTS)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, self.key(base), serde_json::to_vec(meta).map_err(|e| StorageError::Index(e.to_string()))?);
        self.db.write(batch, false)
    }

    fn delete_segment_meta(&self, base: u64) -> Result<()> {
        let cf = self.db.cf(CF_SEGMENTS)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf, self.key(base));
        self.db.write(batch, false)
    }

    fn state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.db().get_cf(self.db.cf(CF_PARTITIONS)?, self.state_key(name))?)
    }

    fn put_state(&self, name: &str, value: &[u8], sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_PARTITIONS)?, self.state_key(name), value);
        self.db.write(batch, sync)
    }

    fn destroy(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        for name in [CF_OFFSETS, CF_TIMES, CF_SEGMENTS, CF_ENTRIES] {
            let cf = self.db.cf(name)?;
            batch.delete_range_cf(cf, self.key(0), self.prefix_end());
            batch.delete_cf(cf, self.prefix_end());
        }
        // The metadata key is the bare prefix; named state keys extend it.
        let partitions = self.db.cf(CF_PARTITIONS)?;
        batch.delete_range_cf(partitions, &self.prefix[..], &self.prefix_end()[..]);
        batch.delete_cf(partitions, self.prefix_end());
        self.db.write(batch, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: u64, next: u64) -> IndexEntry {
        IndexEntry {
            base_offset: base,
            next_offset: next,
            segment_base: base,
            position: base * 10,
            size: 10,
            log_index: base + 100,
            term: 2,
        }
    }

    #[test]
    fn lookup_finds_the_batch_holding_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = IndexDb::open(dir.path()).expect("open");
        let idx = db.partition(1, 0);
        let other = db.partition(1, 1);
        idx.put(&[entry(0, 5), entry(5, 9), entry(9, 10)], &[]).expect("put");
        other.put(&[entry(100, 200)], &[]).expect("put");
        assert_eq!(idx.lookup(0).expect("lookup"), Some(entry(0, 5)));
        assert_eq!(idx.lookup(7).expect("lookup"), Some(entry(5, 9)));
        assert_eq!(idx.lookup(500).expect("lookup"), Some(entry(9, 10)));
        assert_eq!(idx.last().expect("last"), Some(entry(9, 10)));
        assert_eq!(other.lookup(50).expect("lookup"), None);
        assert_eq!(idx.lookup_entry(105).expect("entry"), Some(entry(5, 9)));
        assert_eq!(idx.lookup_entry(106).expect("entry"), None, "no batch is entry 106");
        assert_eq!(idx.lookup_entry_from(106).expect("entry"), Some(entry(9, 10)), "the next entry is 109");
        assert_eq!(idx.lookup_entry_from(0).expect("entry"), Some(entry(0, 5)));
        assert_eq!(idx.lookup_entry_from(110).expect("entry"), None);
        idx.truncate_from(5, 105).expect("truncate");
        assert_eq!(idx.last().expect("last"), Some(entry(0, 5)));
        assert_eq!(idx.lookup_entry(105).expect("entry"), None, "truncated with its batch");
        assert_eq!(idx.lookup_entry(109).expect("entry"), None, "truncated with its batch");
        assert_eq!(idx.lookup_entry(100).expect("entry"), Some(entry(0, 5)));
        assert_eq!(other.last().expect("last"), Some(entry(100, 200)));
        assert_eq!(other.lookup_entry(200).expect("entry"), Some(entry(100, 200)));
        idx.purge_before(5, 5).expect("purge");
        assert_eq!(idx.last().expect("last"), None);
        assert_eq!(idx.lookup_entry(100).expect("entry"), None, "purged with its batch");
    }

    #[test]
    fn control_entries_take_no_offset_and_cuts_by_index_are_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = IndexDb::open(dir.path()).expect("open");
        let idx = db.partition(3, 0);
        // Entries 100 (data, offsets 0-4), 101 and 102 (control, at offset 5), 103 (data, 5-6).
        let control = |index| IndexEntry { log_index: index, ..entry(5, 5) };
        let data = IndexEntry { log_index: 103, ..entry(5, 7) };
        idx.put(&[entry(0, 5), control(101), control(102), data], &[]).expect("put");
        assert_eq!(idx.lookup(5).expect("lookup"), Some(data), "offsets find data batches only");
        assert_eq!(idx.lookup_entry(101).expect("entry"), Some(control(101)));
        assert_eq!(idx.last_entry().expect("last"), Some(data));
        // A cut between the two control batches keeps the first one.
        idx.truncate_from(5, 102).expect("truncate");
        assert_eq!(idx.last_entry().expect("last"), Some(control(101)));
        assert_eq!(idx.last().expect("last"), Some(entry(0, 5)));
        assert_eq!(idx.lookup_entry(102).expect("entry"), None);
        // Recovery drops whole segments: both entries of segment 5 go.
        idx.truncate_segments_from(5).expect("truncate");
        assert_eq!(idx.last_entry().expect("last"), Some(entry(0, 5)));
    }

    #[test]
    fn time_lookup_returns_first_batch_reaching_a_timestamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = IndexDb::open(dir.path()).expect("open");
        let idx = db.partition(2, 3);
        idx.put(&[], &[(-5, 0), (100, 10), (250, 20)]).expect("put");
        assert_eq!(idx.lookup_time(-100).expect("t"), Some(0));
        assert_eq!(idx.lookup_time(100).expect("t"), Some(10));
        assert_eq!(idx.lookup_time(101).expect("t"), Some(20));
        assert_eq!(idx.lookup_time(251).expect("t"), None);
        assert_eq!(idx.last_time().expect("t"), Some((250, 20)));
        // Retention removes batches below 15: the point (100, 10) moves to 15.
        idx.purge_before(15, 15).expect("purge");
        assert_eq!(idx.lookup_time(0).expect("t"), Some(15));
        assert_eq!(idx.lookup_time(101).expect("t"), Some(20));
        idx.truncate_from(20, 120).expect("truncate");
        assert_eq!(idx.last_time().expect("t"), Some((100, 15)));
    }

    #[test]
    fn meta_roundtrip_and_destroy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = IndexDb::open(dir.path()).expect("open");
        let idx = db.partition(9, 0);
        assert_eq!(idx.meta().expect("meta"), PartitionMeta::default());
        idx.put_meta(&PartitionMeta { log_start_offset: 42 }, true).expect("put");
        let seg = SegmentMeta { size: 1, next_offset: 2, max_timestamp_ms: 3 };
        idx.put_segment_meta(0, &seg).expect("seg");
        idx.put(&[entry(0, 1)], &[(1, 0)]).expect("put");
        idx.put_state("vote", b"v1", true).expect("state");
        assert_eq!(idx.state("vote").expect("state"), Some(b"v1".to_vec()));
        assert_eq!(db.partition(9, 1).state("vote").expect("state"), None, "state is per partition");
        assert_eq!(idx.meta().expect("meta").log_start_offset, 42);
        assert_eq!(idx.segment_meta(0).expect("seg"), Some(seg));
        idx.destroy().expect("destroy");
        assert_eq!(idx.meta().expect("meta"), PartitionMeta::default());
        assert_eq!(idx.last().expect("last"), None);
        assert_eq!(idx.last_time().expect("last"), None);
        assert_eq!(idx.segment_meta(0).expect("seg"), None);
        assert_eq!(idx.state("vote").expect("state"), None);
        assert_eq!(idx.lookup_entry(100).expect("entry"), None);
    }
}
