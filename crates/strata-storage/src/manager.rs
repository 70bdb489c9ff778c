//! The node's topics: catalog (in RocksDB), directories, partition logs, and
//! the retention pass.
//!
//! Data directory layout:
//! ```text
//! DATA/strata.lock                  held while a node runs
//! DATA/index/                       RocksDB: indices, partition and topic metadata
//! DATA/topics/<name>-<id>/<p>/      segment files of partition p
//! ```
//! Topic ids are never reused, so a topic deleted and created again never
//! sees the old topic's files or index keys.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{LogConfig, TopicOverrides};
use crate::error::{IoContext, Result, StorageError};
use crate::files::FileCache;
use crate::index::{CF_CATALOG, IndexDb};
use crate::limits::StorageLimits;
use crate::log::{PartitionLog, PartitionStatus, Visibility};

/// Upper bound on partitions per topic.
pub const MAX_PARTITIONS: u32 = 10_000;
/// Longest file name in a directory (`NAME_MAX` of Linux filesystems).
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Longest topic name: a topic's directory is `<name>-<topic id>`, and a
/// topic id (a u64) takes up to 20 digits, so every topic's directory name
/// fits in [`MAX_FILE_NAME_LEN`] whatever its id (Kafka allows 249).
pub const MAX_TOPIC_NAME_LEN: usize = MAX_FILE_NAME_LEN - 1 - 20;

const TOPIC_KEY_PREFIX: &str = "topic/";
const NEXT_TOPIC_ID_KEY: &[u8] = b"next_topic_id";
/// `deleted/<dir>`: a deleted topic's directory may be removed.
const TOMBSTONE_PREFIX: &str = "deleted/";
/// Written by [`LogManager::close`] once every writer has finished and no
/// partition had failed, removed by the next open: says whether the last
/// stop was clean. Informational: recovery checks every partition's tail
/// either way.
const CLEAN_STOP_FILE: &str = "clean-stop";

/// A topic as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: u64,
    pub partitions: u32,
    pub overrides: TopicOverrides,
}

/// A topic with its effective config and partition states.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub id: u64,
    pub config: LogConfig,
    pub partitions: Vec<PartitionStatus>,
}

struct Topic {
    record: RwLock<TopicRecord>,
    dir: PathBuf,
    partitions: Vec<PartitionLog>,
}

impl Topic {
    fn id(&self) -> Result<u64> {
        Ok(self.record.read().map_err(|_| lock_poisoned())?.id)
    }
}

/// Owner of every topic of a node.
pub struct LogManager {
    root: PathBuf,
    db: Arc<IndexDb>,
    defaults: LogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises catalog changes (create, delete, alter).
    catalog_lock: tokio::sync::Mutex<()>,
    visibility: Visibility,
    limits: StorageLimits,
    /// Open files of every partition's sealed segments.
    files: Arc<FileCache>,
    metrics: crate::StorageMetrics,
    _lock: File,
}

impl std::fmt::Debug for LogManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogManager").field("root", &self.root).finish()
    }
}

/// Checks a topic name: 1 to [`MAX_TOPIC_NAME_LEN`] (234) characters of
/// `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| Err(StorageError::InvalidTopicName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return bad("the name is longer than 234 characters (its directory, <name>-<topic id>, must fit in 255 bytes)");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Waits until every partition writer has finished its queue, `limit` at
/// most in all (writers run concurrently; awaiting them in turn is enough).
/// Whether they all did.
async fn await_writers(writers: Vec<tokio::task::JoinHandle<()>>, limit: std::time::Duration, what: &str) -> bool {
    let all = async {
        for w in writers {
            let _ = w.await;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        warn!("{what}: partition writers still busy after {limit:?}; going on");
        return false;
    }
    true
}

/// The directory name of topic `name` with id `id`, refused if the
/// filesystem could not hold it (a topic named before names were bounded
/// this way, applied from the cluster's metadata, is checked here).
fn topic_dir_name(name: &str, id: u64) -> Result<String> {
    let dir = format!("{name}-{id}");
    if dir.len() > MAX_FILE_NAME_LEN {
        return Err(StorageError::InvalidTopicName {
            name: name.to_owned(),
            reason: "its directory name, <name>-<topic id>, would be longer than 255 bytes",
        });
    }
    Ok(dir)
}

fn dir_name(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn lock_poisoned() -> StorageError {
    StorageError::Index("topic table lock poisoned by a panic".into())
}

impl LogManager {
    /// Opens the data directory, recovering every partition. Blocking; call
    /// within a tokio runtime (partitions start writer tasks).
    pub fn open(root: &Path, defaults: LogConfig) -> Result<Self> {
        Self::open_with(root, defaults, Visibility::OnFlush)
    }

    /// [`LogManager::open`], with every partition's visibility rule (Raft:
    /// [`Visibility::Applied`]).
    pub fn open_with(root: &Path, defaults: LogConfig, visibility: Visibility) -> Result<Self> {
        Self::open_with_limits(root, defaults, visibility, StorageLimits::default())
    }

    /// [`LogManager::open_with`], with the node's storage limits. The topic
    /// defaults must respect them.
    pub fn open_with_limits(
        root: &Path,
        defaults: LogConfig,
        visibility: Visibility,
        limits: StorageLimits,
    ) -> Result<Self> {
        limits.validate()?;
        limits.check(&defaults).map_err(|e| match e {
            StorageError::InvalidConfig(m) => StorageError::InvalidConfig(format!("topic_defaults: {m}")),
            other => other,
        })?;
        std::fs::create_dir_all(root.join("topics")).at(root)?;
        let lock_path = root.join("strata.lock");
        let lock = File::create(&lock_path).at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::DataDirLocked(root.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => return Err(StorageError::io(&lock_path, e)),
        }
        let clean_stop = root.join(CLEAN_STOP_FILE);
        let stopped_cleanly = clean_stop.exists();
        if stopped_cleanly {
            // Gone before anything is written: a crash from here on is not
            // taken for a clean stop next time.
            std::fs::remove_file(&clean_stop).at(&clean_stop)?;
            crate::segment::sync_dir(root)?;
        }
        let db = IndexDb::open(&root.join("index"))?;
        let manager = Self {
            root: root.to_owned(),
            db,
            defaults,
            topics: RwLock::new(BTreeMap::new()),
            catalog_lock: tokio::sync::Mutex::new(()),
            visibility,
            limits,
            files: FileCache::new(limits.open_files()),
            metrics: crate::StorageMetrics::default(),
            _lock: lock,
        };
        let records = manager.load_catalog()?;
        let mut known_dirs = Vec::new();
        for record in records {
            let topic = manager.open_topic(record)?;
            known_dirs.push(topic.dir.clone());
            let name = topic.record.read().map_err(|_| lock_poisoned())?.name.clone();
            manager.topics.write().map_err(|_| lock_poisoned())?.insert(name, topic);
        }
        // A directory without a catalog entry is removed only when a deletion
        // left its tombstone (it crashed half-way). Anything else is left
        // alone: data is never deleted because metadata went missing.
        let topics_dir = root.join("topics");
        let catalog = manager.db.cf(CF_CATALOG)?;
        for entry in std::fs::read_dir(&topics_dir).at(&topics_dir)? {
            let path = entry.at(&topics_dir)?.path();
            if known_dirs.contains(&path) {
                continue;
            }
            let tombstone = format!("{TOMBSTONE_PREFIX}{}", dir_name(&path));
            if manager.db.db().get_cf(catalog, &tombstone)?.is_some() {
                warn!(dir = %path.display(), "finishing the deletion of a deleted topic");
                std::fs::remove_dir_all(&path).at(&path)?;
                let mut batch = WriteBatch::default();
                batch.delete_cf(catalog, tombstone);
                manager.db.write(batch, true)?;
            } else {
                warn!(dir = %path.display(), "directory of no known topic under topics/: left untouched");
            }
        }
        let topics = manager.topics.read().map_err(|_| lock_poisoned())?.len();
        if stopped_cleanly {
            info!(topics, "the data directory was closed cleanly when the node last stopped");
        } else if topics > 0 {
            warn!(
                topics,
                "the data directory was not closed cleanly when the node last stopped (a crash, kill -9 or power \
                 loss): every partition's tail was checked, and anything torn is reported above"
            );
        }
        Ok(manager)
    }

    fn shared(&self) -> crate::log::NodeShared {
        crate::log::NodeShared { files: Arc::clone(&self.files), metrics: self.metrics.clone() }
    }

    /// The node's storage histograms (fsync latency, group-commit sizes).
    pub fn metrics(&self) -> &crate::StorageMetrics {
        &self.metrics
    }

    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    pub fn defaults(&self) -> LogConfig {
        self.defaults
    }

    pub fn limits(&self) -> StorageLimits {
        self.limits
    }

    /// The node's cache of open segment files.
    pub fn open_files(&self) -> &FileCache {
        &self.files
    }

    fn load_catalog(&self) -> Result<Vec<TopicRecord>> {
        let cf = self.db.cf(CF_CATALOG)?;
        let mut out = Vec::new();
        for item in self.db.db().prefix_iterator_cf(cf, TOPIC_KEY_PREFIX) {
            let (k, v) = item?;
            if !k.starts_with(TOPIC_KEY_PREFIX.as_bytes()) {
                break;
            }
            out.push(
                serde_json::from_slice(&v).map_err(|e| StorageError::Index(format!("malformed topic record: {e}")))?,
            );
        }
        Ok(out)
    }

    fn open_partition(&self, record: &TopicRecord, dir: &Path, p: u32, config: LogConfig) -> Result<PartitionLog> {
        let index = Arc::new(self.db.partition(record.id, p));
        let dir = dir.join(p.to_string());
        PartitionLog::open_in(&record.name, p, &dir, index, config, self.visibility, self.shared())
    }

    fn open_topic(&self, record: TopicRecord) -> Result<Arc<Topic>> {
        let dir = self.root.join("topics").join(format!("{}-{}", record.name, record.id));
        let config = record.overrides.apply(&self.defaults);
        let mut partitions = Vec::with_capacity(record.partitions as usize);
        for p in 0..record.partitions {
            partitions.push(self.open_partition(&record, &dir, p, config)?);
        }
        Ok(Arc::new(Topic { record: RwLock::new(record), dir, partitions }))
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics
            .read()
            .map_err(|_| lock_poisoned())?
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::UnknownTopic(name.to_owned()))
    }

    fn info(&self, topic: &Topic) -> Result<TopicInfo> {
        let record = topic.record.read().map_err(|_| lock_poisoned())?.clone();
        Ok(TopicInfo {
            config: record.overrides.apply(&self.defaults),
            name: record.name,
            id: record.id,
            partitions: topic.partitions.iter().map(PartitionLog::status).collect(),
        })
    }

    fn put_record(&self, batch: &mut WriteBatch, record: &TopicRecord) -> Result<()> {
        let cf = self.db.cf(CF_CATALOG)?;
        let value = serde_json::to_vec(record).map_err(|e| StorageError::Index(e.to_string()))?;
        batch.put_cf(cf, format!("{TOPIC_KEY_PREFIX}{}", record.name), value);
        Ok(())
    }

    /// Checks a new topic's name, partition count and configuration, with
    /// the node's floors: what a client asks for, before it goes anywhere.
    pub fn validate_new_topic(&self, name: &str, partitions: u32, overrides: &TopicOverrides) -> Result<()> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(StorageError::InvalidPartitionCount { count: partitions, max: MAX_PARTITIONS });
        }
        self.limits.check(&overrides.apply(&self.defaults))
    }

    /// Checks a topic the cluster's metadata already holds (applied on every
    /// node): its name must make a directory this filesystem holds and its
    /// configuration must be consistent. The floors, checked before the
    /// topic was proposed, are left out: nodes whose floors differ (or a
    /// topic older than them) must still apply the same metadata.
    fn validate_recorded_topic(&self, name: &str, id: u64, partitions: u32, overrides: &TopicOverrides) -> Result<()> {
        topic_dir_name(name, id)?;
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(StorageError::InvalidTopicName { name: name.to_owned(), reason: "not a directory name" });
        }
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(StorageError::InvalidPartitionCount { count: partitions, max: MAX_PARTITIONS });
        }
        overrides.apply(&self.defaults).validate()
    }

    /// Creates a topic. The catalog entry is durable before this returns.
    pub async fn create_topic(&self, name: &str, partitions: u32, overrides: TopicOverrides) -> Result<TopicInfo> {
        self.create(name, partitions, overrides, None).await
    }

    /// Creates a topic under the id the cluster gave it.
    pub async fn create_topic_with_id(
        &self,
        name: &str,
        id: u64,
        partitions: u32,
        overrides: TopicOverrides,
    ) -> Result<TopicInfo> {
        self.create(name, partitions, overrides, Some(id)).await
    }

    async fn create(
        &self,
        name: &str,
        partitions: u32,
        overrides: TopicOverrides,
        id: Option<u64>,
    ) -> Result<TopicInfo> {
        match id {
            None => self.validate_new_topic(name, partitions, &overrides)?,
            Some(id) => self.validate_recorded_topic(name, id, partitions, &overrides)?,
        }
        let _guard = self.catalog_lock.lock().await;
        if self.topic(name).is_ok() {
            return Err(StorageError::TopicExists(name.to_owned()));
        }
        let cf = self.db.cf(CF_CATALOG)?;
        let mut batch = WriteBatch::default();
        let id = match id {
            Some(id) => id,
            None => {
                let id = match self.db.db().get_cf(cf, NEXT_TOPIC_ID_KEY)? {
                    Some(v) if v.len() == 8 => u64::from_le_bytes(v[..8].try_into().map_err(|_| lock_poisoned())?),
                    Some(_) => return Err(StorageError::Index("malformed topic id counter".into())),
                    None => 1,
                };
                batch.put_cf(cf, NEXT_TOPIC_ID_KEY, (id + 1).to_le_bytes());
                id
            }
        };
        topic_dir_name(name, id)?;
        let record = TopicRecord { name: name.to_owned(), id, partitions, overrides };
        self.put_record(&mut batch, &record)?;
        self.db.write(batch, true)?;
        // Creating the directories and empty segments is brief; done inline.
        let topic = self.open_topic(record)?;
        // Make the new directories' entries durable (partition directories
        // sync themselves when their first segment is created).
        crate::segment::sync_dir(&topic.dir)?;
        crate::segment::sync_dir(&self.root.join("topics"))?;
        self.topics.write().map_err(|_| lock_poisoned())?.insert(name.to_owned(), Arc::clone(&topic));
        info!(topic = name, partitions, id, "topic created");
        self.info(&topic)
    }

    /// Deletes a topic: catalog entry first (durable), then indices and files.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let _guard = self.catalog_lock.lock().await;
        let topic = self.topic(name)?;
        let catalog = self.db.cf(CF_CATALOG)?;
        let tombstone = format!("{TOMBSTONE_PREFIX}{}", dir_name(&topic.dir));
        let mut batch = WriteBatch::default();
        batch.delete_cf(catalog, format!("{TOPIC_KEY_PREFIX}{name}"));
        batch.put_cf(catalog, &tombstone, b"");
        self.db.write(batch, true)?;
        self.topics.write().map_err(|_| lock_poisoned())?.remove(name);
        // New requests fail at once; queued appends finish before the index
        // ranges and files go, so no late write recreates either.
        for p in &topic.partitions {
            p.close("the topic was deleted");
        }
        let writers: Vec<_> = topic.partitions.iter().filter_map(PartitionLog::take_writer).collect();
        let (dir, id, count) = (topic.dir.clone(), topic.id()?, topic.partitions.len() as u32);
        drop(topic);
        await_writers(writers, std::time::Duration::from_secs(10), &format!("deleting topic '{name}'")).await;
        for p in 0..count {
            crate::index::LogIndex::destroy(&self.db.partition(id, p))?;
        }
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir).at(&dir))
            .await
            .map_err(|e| StorageError::Index(format!("delete task failed: {e}")))??;
        let mut batch = WriteBatch::default();
        batch.delete_cf(catalog, tombstone);
        self.db.write(batch, false)?;
        info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Grows a topic to `count` partitions (the new ones empty). Existing
    /// partitions are untouched; records with a key may map to another
    /// partition from now on, as in Kafka.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicInfo> {
        let _guard = self.catalog_lock.lock().await;
        let topic = self.topic(name)?;
        let current = topic.partitions.len() as u32;
        if count <= current {
            return Err(StorageError::PartitionCountNotIncreasing {
                topic: name.to_owned(),
                current,
                requested: count,
            });
        }
        if count > MAX_PARTITIONS {
            return Err(StorageError::InvalidPartitionCount { count, max: MAX_PARTITIONS });
        }
        let mut record = topic.record.read().map_err(|_| lock_poisoned())?.clone();
        let config = record.overrides.apply(&self.defaults);
        let mut partitions = topic.partitions.clone();
        // Directories first, then the catalog: a crash in between leaves
        // empty directories that the next attempt opens again.
        for p in current..count {
            partitions.push(self.open_partition(&record, &topic.dir, p, config)?);
        }
        crate::segment::sync_dir(&topic.dir)?;
        record.partitions = count;
        let mut batch = WriteBatch::default();
        self.put_record(&mut batch, &record)?;
        self.db.write(batch, true)?;
        let grown = Arc::new(Topic { record: RwLock::new(record), dir: topic.dir.clone(), partitions });
        self.topics.write().map_err(|_| lock_poisoned())?.insert(name.to_owned(), Arc::clone(&grown));
        info!(topic = name, from = current, to = count, "partitions added");
        self.info(&grown)
    }

    /// A topic's overrides.
    pub fn topic_overrides(&self, name: &str) -> Result<TopicOverrides> {
        Ok(self.topic(name)?.record.read().map_err(|_| lock_poisoned())?.overrides)
    }

    /// Changes a topic's overrides (set fields only), within the node's
    /// floors; applies at once.
    pub async fn alter_topic(&self, name: &str, changes: TopicOverrides) -> Result<TopicInfo> {
        let merged = self.topic_overrides(name)?.merge(&changes);
        self.limits.check(&merged.apply(&self.defaults))?;
        self.set_topic_overrides(name, merged).await
    }

    /// Replaces a topic's overrides (as the cluster recorded them: checked
    /// against the floors before they were proposed).
    pub async fn set_topic_overrides(&self, name: &str, overrides: TopicOverrides) -> Result<TopicInfo> {
        let _guard = self.catalog_lock.lock().await;
        let topic = self.topic(name)?;
        let mut record = topic.record.read().map_err(|_| lock_poisoned())?.clone();
        record.overrides = overrides;
        let config = record.overrides.apply(&self.defaults);
        config.validate()?;
        let mut batch = WriteBatch::default();
        self.put_record(&mut batch, &record)?;
        self.db.write(batch, true)?;
        for p in &topic.partitions {
            p.set_config(config);
        }
        *topic.record.write().map_err(|_| lock_poisoned())? = record;
        self.info(&topic)
    }

    pub fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let topics: Vec<_> = self.topics.read().map_err(|_| lock_poisoned())?.values().cloned().collect();
        topics.iter().map(|t| self.info(t)).collect()
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        self.info(&*self.topic(name)?)
    }

    pub fn partition_count(&self, name: &str) -> Result<u32> {
        Ok(self.topic(name)?.partitions.len() as u32)
    }

    /// The cluster controller's log (`controller/` in the data directory; its
    /// index under topic id 0, which no topic has).
    pub fn open_controller_log(&self) -> Result<PartitionLog> {
        let index = Arc::new(self.db.partition(0, 0));
        let (config, dir) = (LogConfig::default(), self.root.join("controller"));
        PartitionLog::open_in("__controller", 0, &dir, index, config, Visibility::Applied, self.shared())
    }

    /// Every partition of every topic, with its topic's id.
    pub fn all_partitions(&self) -> Result<Vec<(u64, PartitionLog)>> {
        let topics = self.topics.read().map_err(|_| lock_poisoned())?;
        let mut out = Vec::new();
        for topic in topics.values() {
            let id = topic.id()?;
            out.extend(topic.partitions.iter().map(|p| (id, p.clone())));
        }
        Ok(out)
    }

    /// A partition with its topic's id.
    pub fn partition_with_id(&self, name: &str, partition: u32) -> Result<(u64, PartitionLog)> {
        let id = self.topic(name)?.id()?;
        Ok((id, self.partition(name, partition)?))
    }

    pub fn partition(&self, name: &str, partition: u32) -> Result<PartitionLog> {
        let topic = self.topic(name)?;
        topic.partitions.get(partition as usize).cloned().ok_or_else(|| StorageError::UnknownPartition {
            topic: name.to_owned(),
            partition,
            count: topic.partitions.len() as u32,
        })
    }

    /// Closes every partition, waiting (30 s at most in all) until their
    /// writers have finished what was queued. Partitions stop being served
    /// at once; a handle still held elsewhere gets `ShuttingDown` for any
    /// later append. Records a clean stop when all went well.
    pub async fn close(&self) {
        let topics = match self.topics.write() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        let named: Vec<(String, tokio::task::JoinHandle<()>)> = topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter_map(|p| p.take_writer().map(|w| (format!("{}/{}", p.topic(), p.partition()), w)))
            })
            .collect();
        // A partition that failed (an fsync error, a corrupt file) did not
        // stop cleanly, whatever its writer did.
        let failed = topics.values().flat_map(|t| t.partitions.iter()).find(|p| p.status().failure.is_some());
        let failed = failed.map(|p| format!("{}/{}", p.topic(), p.partition()));
        drop(topics);
        let (names, writers): (Vec<String>, Vec<_>) = named.into_iter().unzip();
        let watch: Vec<tokio::task::AbortHandle> = writers.iter().map(tokio::task::JoinHandle::abort_handle).collect();
        if await_writers(writers, std::time::Duration::from_secs(30), "closing the storage").await {
            if let Some(partition) = failed {
                warn!(partition, "not recording a clean stop: a partition had failed");
                return;
            }
            if let Err(e) = self.mark_clean_stop() {
                warn!(error = %e, "cannot record the clean stop");
            }
            return;
        }
        // Which ones: a handle still held elsewhere keeps a writer waiting.
        let busy: Vec<&str> =
            names.iter().zip(&watch).filter(|(_, w)| !w.is_finished()).map(|(n, _)| n.as_str()).take(20).collect();
        warn!(partitions = ?busy, "partition writers still busy at close (at most 20 named)");
    }

    /// Records that every writer finished (see [`CLEAN_STOP_FILE`]).
    fn mark_clean_stop(&self) -> Result<()> {
        let path = self.root.join(CLEAN_STOP_FILE);
        File::create(&path).at(&path)?.sync_all().at(&path)?;
        crate::segment::sync_dir(&self.root)
    }

    /// One retention pass over every partition. Blocking.
    pub fn apply_retention(&self, now_ms: i64) -> usize {
        let topics: Vec<_> = match self.topics.read() {
            Ok(t) => t.values().cloned().collect(),
            Err(_) => return 0,
        };
        let mut deleted = 0;
        for topic in topics {
            for p in &topic.partitions {
                match p.apply_retention(now_ms) {
                    Ok(n) => deleted += n,
                    Err(e) => warn!(topic = p.topic(), partition = p.partition(), error = %e, "retention pass failed"),
                }
            }
        }
        deleted
    }
}
