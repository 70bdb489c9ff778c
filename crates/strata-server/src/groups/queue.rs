//! Share groups at the coordinator: acquiring records for a consumer,
//! acknowledgements, lock expiry and dead letters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::v1 as pb;
use strata_record::{BatchBuilder, Compression, Header};
use tonic::{Code, Status};
use tracing::{info, warn};

use super::share::{DEFAULT_PREFETCH, Outcome, ShareConfig, SharePartition};
use super::{Coordinator, Entry, RESERVED_PREFIX, ShardState, ShareGroup, client_status, reserved};
use crate::replication::Leadership;
use crate::service::MAX_WAIT_LIMIT;
use crate::status::{from_storage, invalid};

/// The most records one consumer may hold.
pub const MAX_PREFETCH: u32 = 10_000;
/// Bytes read from a partition per acquisition.
const ACQUIRE_READ_BYTES: u32 = 1024 * 1024;
/// A consumer not heard from for this long (holding nothing) is forgotten.
const CONSUMER_IDLE: Duration = Duration::from_secs(60);

type LockKey = (String, u32, u64);

/// A record given back for the dead-letter topic.
struct DeadLetter {
    partition: u32,
    offset: u64,
    reason: &'static str,
    deliveries: u32,
}

fn not_acquired(a: &pb::Acknowledgement, why: &str) -> pb::AckFailure {
    pb::AckFailure {
        partition: a.partition,
        offset: a.offset,
        code: Code::FailedPrecondition as i32,
        reason: pb::ErrorReason::RecordNotAcquired.as_str_name().to_owned(),
        message: why.to_owned(),
    }
}

impl Coordinator {
    fn check_share_request(&self, group: &str, topic: &str, consumer: &str) -> Result<u32, Status> {
        if consumer.is_empty() {
            return Err(invalid("consumer_id must be set (any string unique to the consumer, the same on every call)"));
        }
        if topic.starts_with(RESERVED_PREFIX) {
            return Err(reserved(topic));
        }
        let _ = group;
        self.logs.partition_count(topic).map_err(from_storage)
    }

    /// Acknowledges records, then acquires up to the consumer's prefetch,
    /// waiting up to `max_wait_ms` for one.
    pub async fn share_fetch(self: &Arc<Self>, req: pb::ShareFetchRequest) -> Result<pb::ShareFetchResponse, Status> {
        self.check_share_request(&req.group, &req.topic, &req.consumer_id)?;
        let prefetch = match req.max_records {
            0 => DEFAULT_PREFETCH,
            n if n <= MAX_PREFETCH => n,
            n => return Err(invalid(format!("max_records {n} is above {MAX_PREFETCH}"))),
        };
        let wait = Duration::from_millis(u64::from(req.max_wait_ms)).min(MAX_WAIT_LIMIT);
        let deadline = Instant::now() + wait;
        // Acknowledgements and acquisitions write: they run to their end
        // even if the consumer gives up waiting; the wait itself does not.
        let failed = if req.acks.is_empty() {
            Vec::new()
        } else {
            let (group, topic, consumer, acks) =
                (req.group.clone(), req.topic.clone(), req.consumer_id.clone(), req.acks.clone());
            super::service::detached(self, move |c| async move { c.share_ack(&group, &topic, &consumer, &acks).await })
                .await?
        };
        loop {
            // Registered before looking, so a release meanwhile is not missed.
            let changed = self.share_changed.notified();
            let for_acquire = req.clone();
            let (records, ends) =
                super::service::detached(self, move |c| async move { c.acquire(&for_acquire, prefetch).await }).await?;
            let now = Instant::now();
            if !records.is_empty() || now >= deadline {
                return Ok(pb::ShareFetchResponse { records, failed });
            }
            let left = deadline - now;
            // Wake on new records in any partition, or on a release.
            let client = self.client().await?;
            let polls = ends.into_iter().map(|(p, end)| {
                let topic = req.topic.clone();
                Box::pin(async move {
                    if client.fetch(&topic, p, end, 1, left).await.is_err() {
                        // Not a wake-up: wait a little before looking again.
                        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
                    }
                }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
            });
            let mut waits: Vec<_> = polls.collect();
            waits.push(Box::pin(async move {
                let _ = tokio::time::timeout(left, changed).await;
            }));
            futures::future::select_all(waits).await;
        }
    }

    /// One acquisition pass. Returns the records acquired and, per
    /// partition, the offset from which nothing was delivered yet.
    async fn acquire(
        &self,
        req: &pb::ShareFetchRequest,
        prefetch: u32,
    ) -> Result<(Vec<pb::SharedRecord>, Vec<(u32, u64)>), Status> {
        let count = self.logs.partition_count(&req.topic).map_err(from_storage)?;
        let (shard, view, mut st) = self.lock(&req.group).await?;
        if st.consumer.contains_key(&req.group) || st.offsets.contains_key(&req.group) {
            return Err(invalid(format!("'{}' is a consumer group; a share group needs another name", req.group)));
        }
        let mut g = st.share.get(&req.group).cloned().unwrap_or_default();
        let mut entries = Vec::new();
        let config = match g.topics.get(&req.topic) {
            Some((config, _)) => {
                config
                    .check(req.lock_timeout_ms, req.max_deliveries, &req.dead_letter_topic)
                    .map_err(|why| invalid(format!("share group '{}' on '{}': {why}", req.group, req.topic)))?;
                config.clone()
            }
            None => {
                let config = ShareConfig::requested(
                    &req.topic,
                    &req.group,
                    req.lock_timeout_ms,
                    req.max_deliveries,
                    &req.dead_letter_topic,
                );
                if config.dead_letter_topic == req.topic {
                    return Err(invalid("the dead-letter topic must not be the topic itself"));
                }
                strata_storage::validate_topic_name(&config.dead_letter_topic).map_err(from_storage)?;
                if config.dead_letter_topic.starts_with(RESERVED_PREFIX) {
                    return Err(reserved(&config.dead_letter_topic));
                }
                g.topics.insert(req.topic.clone(), (config.clone(), BTreeMap::new()));
                entries.push(Entry::ShareConfig { topic: req.topic.clone(), config: config.clone() });
                config
            }
        };
        let now = Instant::now();
        g.consumers.insert(req.consumer_id.clone(), now);
        let held = g.locks.values().filter(|(c, _)| *c == req.consumer_id).count() as u32;
        let mut budget = prefetch.saturating_sub(held);
        let lock_until = now + Duration::from_millis(u64::from(config.lock_timeout_ms));
        let client = self.client().await?;
        let mut out = Vec::new();
        let mut changed: BTreeSet<u32> = BTreeSet::new();
        let first = (self.tokens.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % u64::from(count.max(1))) as u32;
        for i in 0..count {
            if budget == 0 {
                break;
            }
            let p = (first + i) % count;
            let parts = &mut g.topics.get_mut(&req.topic).expect("configured above").1;
            if let std::collections::btree_map::Entry::Vacant(slot) = parts.entry(p) {
                let (start, _) = self.bounds(&req.topic, p).await?;
                slot.insert(SharePartition::starting_at(start));
                changed.insert(p);
            }
            let state = parts.get_mut(&p).expect("inserted above");
            // Records to deliver again first, oldest first.
            let again: Vec<u64> = state
                .pending
                .keys()
                .copied()
                .filter(|o| !g.locks.contains_key(&(req.topic.clone(), p, *o)))
                .take(budget as usize)
                .collect();
            for offset in again {
                if state.deliveries(offset).unwrap_or(0) >= config.max_deliveries {
                    // Delivered as often as it may be (e.g. counted by a
                    // coordinator that failed before giving it back): not
                    // again. Held as expired, the timer dead-letters it.
                    g.locks.insert((req.topic.clone(), p, offset), (String::new(), now));
                    continue;
                }
                match client.fetch(&req.topic, p, offset, 1, Duration::ZERO).await {
                    Ok(r) => {
                        let Some(record) = r.records.into_iter().find(|rec| rec.offset == offset) else { continue };
                        state.redeliver(offset);
                        g.stats.entry(req.topic.clone()).or_default().redeliveries += 1;
                        let deliveries = state.deliveries(offset).unwrap_or(1);
                        g.locks.insert((req.topic.clone(), p, offset), (req.consumer_id.clone(), lock_until));
                        out.push(shared(p, record, deliveries));
                        budget -= 1;
                        changed.insert(p);
                    }
                    Err(e) if e.reason() == Some("OFFSET_OUT_OF_RANGE") => {
                        let (start, _) = self.bounds(&req.topic, p).await?;
                        state.skip_to(start);
                        changed.insert(p);
                    }
                    Err(e) => return Err(client_status(e)),
                }
            }
            if budget == 0 {
                break;
            }
            // Then records never delivered.
            match client.fetch(&req.topic, p, state.end, ACQUIRE_READ_BYTES, Duration::ZERO).await {
                Ok(r) => {
                    let take: Vec<_> =
                        r.records.into_iter().filter(|rec| rec.offset >= state.end).take(budget as usize).collect();
                    if let Some(last) = take.last() {
                        state.deliver_new(last.offset + 1);
                        changed.insert(p);
                    }
                    for record in take {
                        g.locks.insert((req.topic.clone(), p, record.offset), (req.consumer_id.clone(), lock_until));
                        out.push(shared(p, record, 1));
                        budget -= 1;
                    }
                }
                Err(e) if e.reason() == Some("OFFSET_OUT_OF_RANGE") => {
                    let (start, _) = self.bounds(&req.topic, p).await?;
                    state.skip_to(start);
                    changed.insert(p);
                }
                Err(e) => return Err(client_status(e)),
            }
        }
        let parts = &g.topics[&req.topic].1;
        // A consumer holding all it may hold waits for a release or an
        // acknowledgement, not for new records.
        let ends: Vec<(u32, u64)> = if budget == 0 {
            Vec::new()
        } else {
            (0..count).map(|p| (p, parts.get(&p).map_or(0, |s| s.end))).collect()
        };
        for p in changed {
            entries.push(Entry::SharePartition { topic: req.topic.clone(), partition: p, state: parts[&p].clone() });
        }
        if !entries.is_empty() {
            self.write(shard, &view, &mut st, &req.group, &entries).await?;
        }
        keep_runtime(&mut st, &req.group, g);
        Ok((out, ends))
    }

    /// Applies acknowledgements; returns those that did not apply.
    pub async fn share_ack(
        &self,
        group: &str,
        topic: &str,
        consumer: &str,
        acks: &[pb::Acknowledgement],
    ) -> Result<Vec<pb::AckFailure>, Status> {
        self.check_share_request(group, topic, consumer)?;
        if acks.is_empty() {
            return Err(invalid("the request holds no acknowledgements"));
        }
        let (shard, view, mut st) = self.lock(group).await?;
        let Some(mut g) = st.share.get(group).cloned() else {
            return Ok(acks.iter().map(|a| not_acquired(a, "no record of this share group was delivered")).collect());
        };
        let Some((config, _)) = g.topics.get(topic).cloned() else {
            return Ok(acks
                .iter()
                .map(|a| not_acquired(a, "no record of this topic was delivered to the group"))
                .collect());
        };
        g.consumers.insert(consumer.to_owned(), Instant::now());
        let mut failed = Vec::new();
        let mut done: Vec<(u32, u64)> = Vec::new();
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut released = false;
        for a in acks {
            let key: LockKey = (topic.to_owned(), a.partition, a.offset);
            match g.locks.get(&key) {
                Some((holder, _)) if holder == consumer => {}
                Some(_) => {
                    failed.push(not_acquired(a, "the record is held by another consumer (this one's lock expired)"));
                    continue;
                }
                None => {
                    failed.push(not_acquired(
                        a,
                        "the record is not held by this consumer (its lock expired, or it was acknowledged)",
                    ));
                    continue;
                }
            }
            let deliveries = g
                .topics
                .get(topic)
                .and_then(|(_, parts)| parts.get(&a.partition))
                .and_then(|s| s.deliveries(a.offset))
                .unwrap_or(1);
            match pb::AckKind::try_from(a.kind) {
                Ok(pb::AckKind::Accept) => done.push((a.partition, a.offset)),
                Ok(pb::AckKind::Release) => match SharePartition::outcome(deliveries, config.max_deliveries) {
                    Outcome::Redeliver => released = true,
                    Outcome::DeadLetter(reason) => {
                        dead.push(DeadLetter { partition: a.partition, offset: a.offset, reason, deliveries })
                    }
                },
                Ok(pb::AckKind::Reject) => {
                    dead.push(DeadLetter { partition: a.partition, offset: a.offset, reason: "rejected", deliveries });
                }
                _ => {
                    failed.push(pb::AckFailure {
                        partition: a.partition,
                        offset: a.offset,
                        code: Code::InvalidArgument as i32,
                        reason: pb::ErrorReason::InvalidRequest.as_str_name().to_owned(),
                        message: format!(
                            "unknown acknowledgement kind {} (ACCEPT = 1, RELEASE = 2, REJECT = 3)",
                            a.kind
                        ),
                    });
                    continue;
                }
            }
            g.locks.remove(&key);
        }
        let written = self.dead_letter(group, topic, &config, &dead).await;
        if let Ok(n) = written {
            g.stats.entry(topic.to_owned()).or_default().dead_letters += n;
        }
        if let Err(e) = written {
            // The other acknowledgements apply; these records are held by
            // nobody, expired, so the timer writes them to the dead-letter
            // topic again (never delivered meanwhile).
            warn!(group, topic, error = %e.message(), "could not write to the dead-letter topic; the timer retries");
            let now = Instant::now();
            for d in dead.drain(..) {
                let key = (topic.to_owned(), d.partition, d.offset);
                if d.reason == "rejected" {
                    g.rejected.insert(key.clone());
                }
                g.locks.insert(key, (String::new(), now));
                failed.push(pb::AckFailure {
                    partition: d.partition,
                    offset: d.offset,
                    code: e.code() as i32,
                    reason: pb::ErrorReason::Unspecified.as_str_name().to_owned(),
                    message: format!(
                        "the record could not be written to the dead-letter topic '{}' yet ({}); it is retried, the record is not delivered again",
                        config.dead_letter_topic,
                        e.message()
                    ),
                });
            }
        }
        done.extend(dead.iter().map(|d| (d.partition, d.offset)));
        let entries = finish(&mut g, topic, &done);
        if !entries.is_empty() {
            self.write(shard, &view, &mut st, group, &entries).await?;
        }
        keep_runtime(&mut st, group, g);
        if released || !done.is_empty() {
            // Records to deliver again, or room in a consumer's prefetch.
            self.share_changed.notify_waiters();
        }
        Ok(failed)
    }

    /// Writes records to the dead-letter topic (before they are marked
    /// done: a crash in between dead-letters a record twice, never zero
    /// times); returns how many were written (those gone to retention are
    /// not).
    async fn dead_letter(
        &self,
        group: &str,
        topic: &str,
        config: &ShareConfig,
        dead: &[DeadLetter],
    ) -> Result<u64, Status> {
        if dead.is_empty() {
            return Ok(0);
        }
        let dlq = &config.dead_letter_topic;
        if self.logs.partition_count(dlq).is_err() {
            match self.replication.create_topic(dlq, 1, None, strata_storage::TopicOverrides::default()).await {
                Ok(()) => info!(topic = %dlq, "created a dead-letter topic"),
                Err(s) if s.code() == Code::AlreadyExists => {}
                Err(s) => {
                    return Err(Status::new(
                        s.code(),
                        format!("cannot create the dead-letter topic '{dlq}': {}", s.message()),
                    ));
                }
            }
        }
        let client = self.client().await?;
        let mut builder = BatchBuilder::new(Compression::None);
        let now = strata_storage::now_ms();
        for d in dead {
            let r = client.fetch(topic, d.partition, d.offset, 1, Duration::ZERO).await.map_err(client_status)?;
            let Some(record) = r.records.into_iter().find(|rec| rec.offset == d.offset) else {
                warn!(
                    group,
                    topic,
                    partition = d.partition,
                    offset = d.offset,
                    "a record for the dead-letter topic is gone (retention)"
                );
                continue;
            };
            let mut headers = record.headers.clone();
            let h = |k: &str, v: String| Header { key: k.to_owned(), value: v.into_bytes().into() };
            headers.push(h("strata.dlq.reason", d.reason.to_owned()));
            headers.push(h("strata.dlq.group", group.to_owned()));
            headers.push(h("strata.dlq.topic", topic.to_owned()));
            headers.push(h("strata.dlq.partition", d.partition.to_string()));
            headers.push(h("strata.dlq.offset", d.offset.to_string()));
            headers.push(h("strata.dlq.deliveries", d.deliveries.to_string()));
            builder.push_parts(now, record.key.as_deref(), &record.value, &headers);
            info!(group, topic, partition = d.partition, offset = d.offset, reason = d.reason, deliveries = d.deliveries, dlq = %dlq, "record dead-lettered");
        }
        if builder.is_empty() {
            return Ok(0);
        }
        let written = u64::from(builder.len());
        client.produce_batch(dlq, 0, builder.build()).await.map_err(client_status)?;
        Ok(written)
    }

    /// Locks that expired go back (or to the dead-letter topic after the
    /// last delivery); idle consumers are forgotten.
    pub(super) async fn tick_share(&self, shard: u32, view: &Leadership, st: &mut ShardState) {
        let now = Instant::now();
        let names: Vec<String> = st.share.keys().cloned().collect();
        for name in names {
            let Some(mut g) = st.share.get(&name).cloned() else { continue };
            let expired: Vec<LockKey> =
                g.locks.iter().filter(|(_, (_, until))| *until <= now).map(|(k, _)| k.clone()).collect();
            let holding: BTreeSet<String> = g.locks.values().map(|(c, _)| c.clone()).collect();
            g.consumers.retain(|c, seen| holding.contains(c) || now.duration_since(*seen) < CONSUMER_IDLE);
            if expired.is_empty() {
                keep_runtime(st, &name, g);
                continue;
            }
            let mut by_topic: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
            for key in &expired {
                g.locks.remove(key);
                let (topic, p, offset) = key;
                let Some((config, parts)) = g.topics.get(topic) else { continue };
                let deliveries = parts.get(p).and_then(|s| s.deliveries(*offset)).unwrap_or(1);
                let outcome = if g.rejected.remove(key) {
                    Outcome::DeadLetter("rejected")
                } else {
                    SharePartition::outcome(deliveries, config.max_deliveries)
                };
                if let Outcome::DeadLetter(reason) = outcome {
                    by_topic.entry(topic.clone()).or_default().push(DeadLetter {
                        partition: *p,
                        offset: *offset,
                        reason,
                        deliveries,
                    });
                }
            }
            let mut entries = Vec::new();
            for (topic, dead) in by_topic {
                let Some((config, _)) = g.topics.get(&topic).cloned() else { continue };
                let written = self.dead_letter(&name, &topic, &config, &dead).await;
                if let Ok(n) = written {
                    g.stats.entry(topic.clone()).or_default().dead_letters += n;
                }
                if let Err(e) = written {
                    warn!(group = %name, topic, error = %e.message(), "could not dead-letter records; retrying later");
                    // Put the locks back as expired: retried on the next tick.
                    for d in &dead {
                        let key = (topic.clone(), d.partition, d.offset);
                        if d.reason == "rejected" {
                            g.rejected.insert(key.clone());
                        }
                        g.locks.insert(key, (String::new(), now));
                    }
                    continue;
                }
                let done: Vec<(u32, u64)> = dead.iter().map(|d| (d.partition, d.offset)).collect();
                entries.extend(finish(&mut g, &topic, &done));
            }
            if !entries.is_empty() && self.write(shard, view, st, &name, &entries).await.is_err() {
                return;
            }
            keep_runtime(st, &name, g);
            self.share_changed.notify_waiters();
        }
    }

    /// A share group's consumers and partitions (for describe).
    pub(super) async fn describe_share(
        &self,
        group: &str,
        g: &ShareGroup,
    ) -> Result<pb::DescribeGroupResponse, Status> {
        let mut holding: BTreeMap<&str, BTreeSet<(String, u32)>> = BTreeMap::new();
        for ((topic, p, _), (consumer, _)) in &g.locks {
            holding.entry(consumer.as_str()).or_default().insert((topic.clone(), *p));
        }
        let members = g
            .consumers
            .keys()
            .map(|c| pb::GroupMember {
                member_id: c.clone(),
                client_id: String::new(),
                member_epoch: 0,
                topics: g.topics.keys().cloned().collect(),
                assignment: strata_client::topic_partitions_to_proto(
                    &holding.get(c.as_str()).cloned().unwrap_or_default(),
                ),
            })
            .collect();
        let mut partitions = Vec::new();
        for (topic, (_, parts)) in &g.topics {
            let Ok(count) = self.logs.partition_count(topic) else { continue };
            for p in 0..count {
                let (start, end) = self.bounds(topic, p).await?;
                let state = parts.get(&p);
                let done_upto = state.map_or(start, |s| s.start);
                partitions.push(pb::PartitionLag {
                    topic: topic.clone(),
                    partition: p,
                    committed: state.map(|s| s.start),
                    log_end_offset: end,
                    lag: end.saturating_sub(done_upto),
                    member_id: String::new(),
                    in_flight: state.map_or(0, |s| s.pending.len() as u32),
                });
            }
        }
        let state = if g.consumers.is_empty() { "empty" } else { "stable" };
        Ok(pb::DescribeGroupResponse {
            group: group.to_owned(),
            kind: "share".into(),
            state: state.into(),
            group_epoch: 0,
            assignor: pb::Assignor::Unspecified as i32,
            members,
            partitions,
            coordinator: self.replication.node_id(),
        })
    }
}

fn shared(partition: u32, record: strata_record::Record, delivery_count: u32) -> pb::SharedRecord {
    pb::SharedRecord { partition, record: Some(crate::convert::record_to_proto(record)), delivery_count }
}

/// Marks records done and returns the partition states to persist.
fn finish(g: &mut ShareGroup, topic: &str, done: &[(u32, u64)]) -> Vec<Entry> {
    let Some((_, parts)) = g.topics.get_mut(topic) else { return Vec::new() };
    let mut touched = BTreeSet::new();
    for (p, offset) in done {
        if let Some(state) = parts.get_mut(p) {
            state.done(*offset);
            touched.insert(*p);
        }
    }
    touched
        .into_iter()
        .map(|p| Entry::SharePartition { topic: topic.to_owned(), partition: p, state: parts[&p].clone() })
        .collect()
}

/// Keeps the in-memory parts of a share group (locks, consumers) after its
/// persisted parts were applied by a write.
fn keep_runtime(st: &mut ShardState, group: &str, g: ShareGroup) {
    let entry = st.share.entry(group.to_owned()).or_default();
    entry.locks = g.locks;
    entry.consumers = g.consumers;
    entry.rejected = g.rejected;
    entry.stats = g.stats;
}
