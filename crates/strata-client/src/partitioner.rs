//! Where a producer sends records without a key: a sticky partition per
//! topic, as Kafka's sticky partitioner (KIP-480, KIP-794).
//!
//! Records stick to one partition, so that they fill batches instead of
//! spreading one record per batch over every partition. The first sticky
//! partition is random (a producer that sends a few records and exits, the
//! CLI for one, would otherwise put everything on partition 0). The
//! producer moves on when a batch of the sticky partition is sealed (to be
//! sent), or once [`STINT_BYTES`] went to it since it became sticky (as
//! Kafka's `batch.size`), so that a burst that fits in one batch is spread
//! too. It moves on to another partition, in a random order that visits
//! every partition once before any is visited again (records spread evenly).

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Bytes that go to a sticky partition before the producer moves on, if no
/// batch of it was sealed before (Kafka's default `batch.size`).
pub(crate) const STINT_BYTES: usize = 16 * 1024;

/// The sticky partition of each topic.
#[derive(Debug)]
pub(crate) struct StickyPartitioner {
    rng: StdRng,
    topics: HashMap<Arc<str>, Stint>,
}

#[derive(Debug)]
struct Stint {
    /// The topic's partition count when the order was drawn.
    count: u32,
    partition: u32,
    /// Bytes that went to `partition` in this stint.
    bytes: usize,
    /// Partitions still to visit in this round, next last.
    upcoming: Vec<u32>,
}

impl StickyPartitioner {
    pub(crate) fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), topics: HashMap::new() }
    }

    /// The partition for a record without a key of `topic` (which has
    /// `count` partitions).
    pub(crate) fn partition(&mut self, topic: &Arc<str>, count: u32) -> u32 {
        let count = count.max(1);
        match self.topics.get(topic) {
            Some(stint) if stint.count == count => stint.partition,
            // New to this producer, or the topic grew: start afresh.
            _ => {
                let partition = self.rng.random_range(0..count);
                let upcoming = round(&mut self.rng, count, partition);
                self.topics.insert(Arc::clone(topic), Stint { count, partition, bytes: 0, upcoming });
                partition
            }
        }
    }

    /// `bytes` of a record went to `partition`: once a stint's worth went
    /// to the sticky partition, the next record goes to another.
    pub(crate) fn added(&mut self, topic: &Arc<str>, partition: u32, bytes: usize) {
        let Some(stint) = self.topics.get_mut(topic) else { return };
        if stint.partition != partition {
            return;
        }
        stint.bytes += bytes;
        if stint.bytes >= STINT_BYTES {
            self.move_on(topic);
        }
    }

    /// A batch of `partition` was sealed: if it is the sticky one, the next
    /// record goes to another.
    pub(crate) fn sealed(&mut self, topic: &Arc<str>, partition: u32) {
        if self.topics.get(topic).is_some_and(|s| s.partition == partition) {
            self.move_on(topic);
        }
    }

    fn move_on(&mut self, topic: &Arc<str>) {
        let Some(stint) = self.topics.get_mut(topic) else { return };
        let (count, current) = (stint.count, stint.partition);
        let next = match stint.upcoming.pop() {
            Some(p) => p,
            None => {
                let mut upcoming = round(&mut self.rng, count, current);
                let p = upcoming.pop().unwrap_or(current);
                stint.upcoming = upcoming;
                p
            }
        };
        stint.partition = next;
        stint.bytes = 0;
    }
}

/// Every partition but `current`, in random order (popped from the end).
fn round(rng: &mut StdRng, count: u32, current: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..count).filter(|p| *p != current).collect();
    order.shuffle(rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> u64 {
        let seed = std::env::var("STRATA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| strata_record::now_ms() as u64);
        eprintln!("STRATA_TEST_SEED={seed}");
        seed
    }

    #[test]
    fn new_producers_start_at_random_partitions() {
        let seed = seed();
        let topic: Arc<str> = "t".into();
        let mut starts = [0u32; 3];
        for i in 0..64 {
            let mut sticky = StickyPartitioner::new(seed.wrapping_add(i));
            starts[sticky.partition(&topic, 3) as usize] += 1;
        }
        // Each of 64 producers starts at partition p with probability 1/3:
        // all at one or two partitions has odds below 1e-10.
        assert!(starts.iter().all(|n| *n > 0), "starts per partition: {starts:?}");
    }

    #[test]
    fn a_sealed_batch_moves_on_and_every_partition_is_visited_once_per_round() {
        let seed = seed();
        let topic: Arc<str> = "t".into();
        let mut sticky = StickyPartitioner::new(seed);
        let count = 5;
        let mut visited = Vec::new();
        for _ in 0..(count * 4) {
            let p = sticky.partition(&topic, count);
            assert_eq!(sticky.partition(&topic, count), p, "sticky until a batch is sealed");
            // A batch of another partition does not move it.
            sticky.sealed(&topic, (p + 1) % count);
            assert_eq!(sticky.partition(&topic, count), p);
            visited.push(p);
            sticky.sealed(&topic, p);
        }
        for pair in visited.windows(2) {
            assert_ne!(pair[0], pair[1], "moved on to another partition: {visited:?}");
        }
        // The first round is the start and every other partition once.
        let mut first: Vec<u32> = visited[..count as usize].to_vec();
        first.sort_unstable();
        assert_eq!(first, (0..count).collect::<Vec<_>>(), "{visited:?}");
        // Later rounds visit every partition but the one just left: none is
        // left out for two rounds in a row.
        for p in 0..count {
            let n = visited.iter().filter(|v| **v == p).count();
            assert!((2..=5).contains(&n), "partition {p} visited {n} times in 20 stints: {visited:?}");
        }
    }

    #[test]
    fn a_stint_ends_after_a_batch_size_of_bytes_and_a_grown_topic_starts_afresh() {
        let seed = seed();
        let topic: Arc<str> = "t".into();
        let mut sticky = StickyPartitioner::new(seed);
        let p = sticky.partition(&topic, 3);
        // Bytes that went elsewhere (a record with a key) do not count.
        sticky.added(&topic, (p + 1) % 3, STINT_BYTES);
        assert_eq!(sticky.partition(&topic, 3), p);
        sticky.added(&topic, p, STINT_BYTES - 1);
        assert_eq!(sticky.partition(&topic, 3), p);
        sticky.added(&topic, p, 1);
        let q = sticky.partition(&topic, 3);
        assert_ne!(q, p, "a full stint moves on");
        let grown = sticky.partition(&topic, 6);
        assert!(grown < 6);
        assert_eq!(sticky.partition(&topic, 6), grown);
        // One partition: always 0.
        let one: Arc<str> = "one".into();
        assert_eq!(sticky.partition(&one, 1), 0);
        sticky.sealed(&one, 0);
        assert_eq!(sticky.partition(&one, 1), 0);
    }
}
