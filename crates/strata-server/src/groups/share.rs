//! A share group's delivery state for one partition (queue semantics):
//! which records are done, which wait for (re)delivery, and how often each
//! was delivered. Persisted in full after every change; which consumer
//! holds a record now (its acquisition lock) is kept in memory only: after
//! a coordinator failover every unacknowledged record is available again,
//! its delivery count kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Settings of a share group on a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareConfig {
    pub lock_timeout_ms: u32,
    pub max_deliveries: u32,
    pub dead_letter_topic: String,
}

pub const DEFAULT_LOCK_TIMEOUT_MS: u32 = 30_000;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
pub const DEFAULT_PREFETCH: u32 = 100;

impl ShareConfig {
    /// The settings a request asks for, defaults filled in.
    pub fn requested(topic: &str, group: &str, lock_timeout_ms: u32, max_deliveries: u32, dlq: &str) -> Self {
        Self {
            lock_timeout_ms: if lock_timeout_ms == 0 { DEFAULT_LOCK_TIMEOUT_MS } else { lock_timeout_ms },
            max_deliveries: if max_deliveries == 0 { DEFAULT_MAX_DELIVERIES } else { max_deliveries },
            dead_letter_topic: if dlq.is_empty() { format!("{topic}.{group}.dlq") } else { dlq.to_owned() },
        }
    }

    /// Whether a request's settings (0 / empty: whatever the group has)
    /// agree with these; `Err` names the first that differs.
    pub fn check(&self, lock_timeout_ms: u32, max_deliveries: u32, dlq: &str) -> Result<(), String> {
        if lock_timeout_ms != 0 && lock_timeout_ms != self.lock_timeout_ms {
            return Err(format!("lock_timeout_ms is {} for this group, not {lock_timeout_ms}", self.lock_timeout_ms));
        }
        if max_deliveries != 0 && max_deliveries != self.max_deliveries {
            return Err(format!("max_deliveries is {} for this group, not {max_deliveries}", self.max_deliveries));
        }
        if !dlq.is_empty() && dlq != self.dead_letter_topic {
            return Err(format!("the dead-letter topic is '{}' for this group, not '{dlq}'", self.dead_letter_topic));
        }
        Ok(())
    }
}

/// Delivery state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharePartition {
    /// Every record below is done (accepted, rejected or dead-lettered).
    pub start: u64,
    /// Records from here on were never delivered.
    pub end: u64,
    /// Records in `[start, end)` not done yet, with their delivery counts;
    /// the others in that range are done.
    #[serde(with = "u64_map")]
    pub pending: BTreeMap<u64, u32>,
}

/// What happens to a record whose delivery ended without an accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered again later.
    Redeliver,
    /// To the dead-letter topic, for this reason.
    DeadLetter(&'static str),
}

impl SharePartition {
    /// Starts at `offset` (the log start when the group first reads it).
    pub fn starting_at(offset: u64) -> Self {
        Self { start: offset, end: offset, pending: BTreeMap::new() }
    }

    /// Records taken from the log for the first time: `[end, upto)`.
    pub fn deliver_new(&mut self, upto: u64) {
        for o in self.end..upto {
            self.pending.insert(o, 1);
        }
        self.end = self.end.max(upto);
    }

    /// A pending record delivered again.
    pub fn redeliver(&mut self, offset: u64) {
        if let Some(count) = self.pending.get_mut(&offset) {
            *count += 1;
        }
    }

    /// The record is done: accepted, rejected or dead-lettered.
    pub fn done(&mut self, offset: u64) {
        self.pending.remove(&offset);
        self.advance();
    }

    /// The log starts beyond what this state knows (retention deleted
    /// records): skip to it.
    pub fn skip_to(&mut self, log_start: u64) {
        if log_start > self.end {
            self.end = log_start;
        }
        self.pending.retain(|o, _| *o >= log_start);
        self.advance();
    }

    fn advance(&mut self) {
        self.start = self.pending.keys().next().copied().unwrap_or(self.end);
    }

    pub fn deliveries(&self, offset: u64) -> Option<u32> {
        self.pending.get(&offset).copied()
    }

    /// What becomes of a record given back (released, or its lock expired)
    /// after `deliveries` deliveries.
    pub fn outcome(deliveries: u32, max_deliveries: u32) -> Outcome {
        if deliveries >= max_deliveries { Outcome::DeadLetter("delivery-limit") } else { Outcome::Redeliver }
    }
}

/// `BTreeMap<u64, V>` as a JSON list of `[key, value]`.
mod u64_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, V: Serialize>(m: &BTreeMap<u64, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<BTreeMap<u64, V>, D::Error> {
        Ok(Vec::<(u64, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_moves_past_done_records_only() {
        let mut s = SharePartition::starting_at(10);
        s.deliver_new(15);
        assert_eq!((s.start, s.end, s.pending.len()), (10, 15, 5));
        s.done(11);
        assert_eq!(s.start, 10, "10 is not done yet");
        s.done(10);
        assert_eq!(s.start, 12);
        for o in 12..15 {
            s.done(o);
        }
        assert_eq!((s.start, s.end), (15, 15));
        assert!(s.pending.is_empty());
    }

    #[test]
    fn delivery_counts_grow_and_end_in_the_dead_letter_topic() {
        let mut s = SharePartition::starting_at(0);
        s.deliver_new(1);
        assert_eq!(s.deliveries(0), Some(1));
        assert_eq!(SharePartition::outcome(1, 3), Outcome::Redeliver);
        s.redeliver(0);
        s.redeliver(0);
        assert_eq!(s.deliveries(0), Some(3));
        assert_eq!(SharePartition::outcome(3, 3), Outcome::DeadLetter("delivery-limit"));
    }

    #[test]
    fn retention_skips_what_it_deleted() {
        let mut s = SharePartition::starting_at(0);
        s.deliver_new(5);
        s.skip_to(3);
        assert_eq!((s.start, s.end), (3, 5));
        s.skip_to(9);
        assert_eq!((s.start, s.end), (9, 9));
        assert!(s.pending.is_empty());
    }

    #[test]
    fn settings_are_fixed_by_the_first_use() {
        let c = ShareConfig::requested("t", "g", 0, 0, "");
        assert_eq!(c.dead_letter_topic, "t.g.dlq");
        assert_eq!((c.lock_timeout_ms, c.max_deliveries), (DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_MAX_DELIVERIES));
        c.check(0, 0, "").expect("zero takes the group's");
        c.check(DEFAULT_LOCK_TIMEOUT_MS, 5, "t.g.dlq").expect("the same values");
        assert!(c.check(1000, 0, "").is_err());
        assert!(c.check(0, 2, "").is_err());
        assert!(c.check(0, 0, "other").is_err());
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut s = SharePartition::starting_at(3);
        s.deliver_new(6);
        s.redeliver(4);
        let back: SharePartition = serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(back, s);
    }
}
