//! The checker: reads a whole history and reports every anomaly named in
//! `RELIABILITY.md` (Jepsen's kafka workload names, plus Strata's own).
//!
//! It is pure: [`check`] takes the events and returns a [`Report`]. Offsets
//! in a partition are contiguous (every record takes exactly one offset,
//! starting at 0, and nothing is removed by retention in these runs), and
//! every send invocation carries a value unique across the whole history.
//!
//! An operation's completion (`ok`, `fail` or `info`) is matched to its
//! `invoke` by `process`: a process has at most one operation outstanding.
//! The invoke says what was asked (partition, value, `from`); the completion
//! says what came of it (the acknowledged offset, the records read). A send
//! that never completed is as uncertain as an `info` one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::history::{Event, Kind, Op};

/// How many examples of each kind a [`Report`] keeps (all are counted).
const MAX_EXAMPLES: usize = 20;
/// How many values an `unseen` anomaly lists.
const MAX_UNSEEN_VALUES: usize = 10;

/// The kinds of anomaly, named as in Jepsen's kafka workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// An acknowledged value that no poll read, though a poll of its
    /// partition read past its offset.
    LostWrite,
    /// An acknowledged value that no poll read, and nothing past it either.
    Unseen,
    /// One value at two offsets (or in two partitions).
    Duplicate,
    /// Two values at one (partition, offset).
    InconsistentOffsets,
    /// A producer's acknowledged offsets in a partition going backwards.
    NonmonotonicSend,
    /// Offsets going backwards within one poll, or before its `from`.
    NonmonotonicPoll,
    /// A poll skipping offsets it should have read.
    PollSkip,
    /// An aborted read: a value from a failed (or never invoked) send.
    #[serde(rename = "G1a")]
    G1a,
    /// A consumer group's committed offset going backwards: a commit, or a
    /// read of the committed offsets, below a commit that had been
    /// acknowledged before it was invoked.
    CommittedOffsetRegression,
    /// Replicas whose digests of the same log range differ.
    ReplicaDivergence,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 10] = [
        AnomalyKind::LostWrite,
        AnomalyKind::Unseen,
        AnomalyKind::Duplicate,
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::NonmonotonicSend,
        AnomalyKind::NonmonotonicPoll,
        AnomalyKind::PollSkip,
        AnomalyKind::G1a,
        AnomalyKind::CommittedOffsetRegression,
        AnomalyKind::ReplicaDivergence,
    ];

    /// The name used in reports (the same as its JSON form).
    pub fn name(&self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::Unseen => "unseen",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::InconsistentOffsets => "inconsistent-offsets",
            AnomalyKind::NonmonotonicSend => "nonmonotonic-send",
            AnomalyKind::NonmonotonicPoll => "nonmonotonic-poll",
            AnomalyKind::PollSkip => "poll-skip",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::CommittedOffsetRegression => "committed-offset-regression",
            AnomalyKind::ReplicaDivergence => "replica-divergence",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One example of an anomaly.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub partition: Option<u32>,
    /// What was seen, with the history indexes of the events involved.
    pub detail: String,
}

/// What the checker found in a history.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Completions of client operations (sends and polls) by outcome.
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_info: u64,
    /// Sends completed `ok`.
    pub sends_acked: u64,
    /// Faults that took effect (nemesis `ok` events other than heals: the
    /// nemesis checked that the kill killed, the cut routes were in place,
    /// the paused process stopped).
    pub faults: u64,
    /// Faults attempted (nemesis `invoke` events).
    pub faults_attempted: u64,
    /// Every anomaly name, with how many were found (0 when none).
    pub counts: BTreeMap<String, u64>,
    /// Examples: at most [`MAX_EXAMPLES`] of each kind.
    pub anomalies: Vec<Anomaly>,
}

/// What a run shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict", content = "why")]
pub enum Verdict {
    /// No anomaly, with acknowledged sends and faults that took effect.
    Valid,
    /// Anomalies were found.
    Invalid,
    /// No anomaly, but the run proves nothing: no acknowledged send (so
    /// nothing that could have been lost), or no fault that took effect
    /// (when faults were asked for). Says why.
    Vacuous(Vec<String>),
}

impl Verdict {
    /// The process exit status for this verdict (2 is taken by a run that
    /// could not be carried out).
    pub fn exit_code(&self) -> i32 {
        match self {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Vacuous(_) => 3,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Valid => f.write_str("valid: no anomaly"),
            Verdict::Invalid => f.write_str("INVALID: anomalies found"),
            Verdict::Vacuous(why) => write!(f, "NOT VALID: no anomaly, but the run proves nothing: {}", why.join("; ")),
        }
    }
}

impl Report {
    /// No anomaly of any kind.
    pub fn anomaly_free(&self) -> bool {
        self.counts.values().all(|&n| n == 0)
    }

    /// The verdict: anomalies make it invalid; without any, a run with no
    /// acknowledged send, or (`faults_required`) no fault that took
    /// effect, is vacuous.
    pub fn verdict(&self, faults_required: bool) -> Verdict {
        if !self.anomaly_free() {
            return Verdict::Invalid;
        }
        let mut why = Vec::new();
        if self.sends_acked == 0 {
            why.push("no send was acknowledged".to_owned());
        }
        if faults_required && self.faults == 0 {
            why.push(format!("no fault took effect ({} attempted)", self.faults_attempted));
        }
        if why.is_empty() { Verdict::Valid } else { Verdict::Vacuous(why) }
    }

    /// How many anomalies of `kind` were found.
    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.counts.get(kind.name()).copied().unwrap_or(0)
    }
}

/// Checks a whole history (events in history order).
pub fn check(history: &[Event]) -> Report {
    let mut checker = Checker::default();
    for event in history {
        checker.event(event);
    }
    checker.finish()
}

/// What became of a send invocation.
struct Send {
    partition: u32,
    invoke_index: u64,
    /// `None` while (or if never) completed.
    outcome: Option<Kind>,
}

/// A record read by an `ok` poll.
#[derive(Clone, Copy)]
struct Read {
    offset: u64,
    index: u64,
}

/// A replica's digest of one range of a partition's log.
struct Digest {
    node: u32,
    entries: u64,
    crc32c: u32,
    index: u64,
}

/// Accumulates everything the checks need in one pass over the history;
/// the checks that need the whole history run in [`Checker::finish`].
#[derive(Default)]
struct Checker {
    found: Findings,
    ops_ok: u64,
    ops_fail: u64,
    ops_info: u64,
    sends_acked: u64,
    faults: u64,
    faults_attempted: u64,
    /// Each process's outstanding invoke (a send or a poll).
    pending: HashMap<i64, Event>,
    /// Every send invoked, by value.
    sends: HashMap<u64, Send>,
    /// `ok` sends in completion order: (partition, value, offset, index).
    acked: Vec<(u32, u64, Option<u64>, u64)>,
    /// The last `ok` send offset of each (process, partition), and its index.
    last_send: HashMap<(i64, u32), (u64, u64)>,
    /// Where each value was observed, with the first event that showed it.
    positions: BTreeMap<u64, BTreeMap<(u32, u64), u64>>,
    /// Which values were observed at each (partition, offset).
    values_at: BTreeMap<(u32, u64), BTreeMap<u64, u64>>,
    /// The first read of each value in each partition it was read from.
    first_reads: BTreeMap<u64, BTreeMap<u32, Read>>,
    /// The highest offset read in each partition.
    max_read: HashMap<u32, u64>,
    /// The highest `ok` commit of each (group, partition) so far, with the
    /// index of its `ok`.
    commit_floor: HashMap<(String, u32), (u64, u64)>,
    /// Each outstanding commit or committed-offsets read: the floors of its
    /// group when it was invoked (what it must not go below).
    floors_at_invoke: HashMap<i64, Vec<(u32, u64, u64)>>,
    /// Digests by (partition, upto, first_index).
    digests: BTreeMap<(u32, u64, u64), Vec<Digest>>,
}

impl Checker {
    fn event(&mut self, event: &Event) {
        match &event.op {
            Op::Nemesis { fault, .. } => match event.kind {
                Kind::Invoke => self.faults_attempted += 1,
                Kind::Ok if !crate::history::is_heal(fault) => self.faults += 1,
                _ => {}
            },
            Op::Digest { partition, node, upto, first_index, entries, crc32c } => {
                if event.kind == Kind::Ok {
                    self.digests.entry((*partition, *upto, *first_index)).or_default().push(Digest {
                        node: *node,
                        entries: *entries,
                        crc32c: *crc32c,
                        index: event.index,
                    });
                }
            }
            Op::Member { .. } => {}
            Op::Send { .. } | Op::Poll { .. } | Op::Commit { .. } | Op::ReadCommitted { .. } => match event.kind {
                Kind::Invoke => self.invoke(event),
                Kind::Ok | Kind::Fail | Kind::Info => self.complete(event),
            },
        }
    }

    fn invoke(&mut self, event: &Event) {
        if let Op::Send { partition, value, .. } = event.op {
            self.sends.entry(value).or_insert(Send { partition, invoke_index: event.index, outcome: None });
        }
        if let Op::Commit { group, .. } | Op::ReadCommitted { group, .. } = &event.op {
            self.floors_at_invoke.insert(event.process, self.floors(group));
        }
        // A process has one operation outstanding; an invoke that replaces
        // another means the earlier one never completed (it stays uncertain).
        self.pending.insert(event.process, event.clone());
    }

    fn complete(&mut self, event: &Event) {
        match event.kind {
            Kind::Ok => self.ops_ok += 1,
            Kind::Fail => self.ops_fail += 1,
            Kind::Info => self.ops_info += 1,
            Kind::Invoke => return,
        }
        // The invoke this completes: the outstanding one of the same process,
        // if it is the same kind of operation. Without one, the completion
        // stands for itself.
        let invoke = self.pending.remove(&event.process);
        let invoked = match (&invoke, &event.op) {
            (Some(matched @ Event { op: Op::Send { .. }, .. }), Op::Send { .. })
            | (Some(matched @ Event { op: Op::Poll { .. }, .. }), Op::Poll { .. })
            | (Some(matched @ Event { op: Op::Commit { .. }, .. }), Op::Commit { .. })
            | (Some(matched @ Event { op: Op::ReadCommitted { .. }, .. }), Op::ReadCommitted { .. }) => matched,
            _ => event,
        };
        // Without its invoke, a completion is held to what was known when
        // it completed.
        let floors = match &event.op {
            Op::Commit { group, .. } | Op::ReadCommitted { group, .. } => {
                let at_invoke =
                    if std::ptr::eq(invoked, event) { None } else { self.floors_at_invoke.remove(&event.process) };
                at_invoke.unwrap_or_else(|| self.floors(group))
            }
            _ => Vec::new(),
        };
        match (&invoked.op, &event.op) {
            (Op::Send { partition, value, .. }, Op::Send { offset, .. }) => {
                self.send_done(event, *partition, *value, *offset);
            }
            (Op::Poll { partition, from, .. }, Op::Poll { records, .. }) if event.kind == Kind::Ok => {
                self.poll_ok(event, *partition, *from, records);
            }
            (Op::Commit { group, offsets }, Op::Commit { .. }) if event.kind == Kind::Ok => {
                self.commit_ok(event, group, offsets, &floors);
            }
            (Op::ReadCommitted { group, .. }, Op::ReadCommitted { offsets, .. }) if event.kind == Kind::Ok => {
                self.read_committed_ok(event, group, offsets, &floors);
            }
            _ => {}
        }
    }

    fn send_done(&mut self, event: &Event, partition: u32, value: u64, offset: Option<u64>) {
        let send = self.sends.entry(value).or_insert(Send { partition, invoke_index: event.index, outcome: None });
        send.outcome = Some(event.kind);
        if event.kind != Kind::Ok {
            return;
        }
        self.sends_acked += 1;
        self.acked.push((partition, value, offset, event.index));
        let Some(offset) = offset else { return };
        self.observe(partition, offset, value, event.index);

        let key = (event.process, partition);
        if let Some(&(last, last_index)) = self.last_send.get(&key)
            && offset <= last
        {
            self.found.add(AnomalyKind::NonmonotonicSend, Some(partition), 1, || {
                format!(
                    "process {} was acknowledged offset {offset} for value {value} (event {}) after offset \
                     {last} (event {last_index})",
                    event.process, event.index
                )
            });
        }
        self.last_send.insert(key, (offset, event.index));
    }

    fn poll_ok(&mut self, event: &Event, partition: u32, from: u64, records: &[(u64, u64)]) {
        let poll = || {
            format!("poll by process {} of partition {partition} from {from} (event {})", event.process, event.index)
        };
        if let Some(&(first, _)) = records.first() {
            if first < from {
                self.found.add(AnomalyKind::NonmonotonicPoll, Some(partition), 1, || {
                    format!("{} returned offset {first} first, before its start", poll())
                });
            } else if first > from {
                self.found.add(AnomalyKind::PollSkip, Some(partition), 1, || {
                    format!("{} returned offset {first} first, skipping {from}..{first}", poll())
                });
            }
        }
        for pair in records.windows(2) {
            let (prev, next) = (pair[0].0, pair[1].0);
            if next <= prev {
                self.found.add(AnomalyKind::NonmonotonicPoll, Some(partition), 1, || {
                    format!("{} returned offset {next} after offset {prev}", poll())
                });
            } else if next > prev + 1 {
                self.found.add(AnomalyKind::PollSkip, Some(partition), 1, || {
                    format!("{} jumped from offset {prev} to {next}, skipping {}..{next}", poll(), prev + 1)
                });
            }
        }
        for &(offset, value) in records {
            self.observe(partition, offset, value, event.index);
            let reads = self.first_reads.entry(value).or_default();
            reads.entry(partition).or_insert(Read { offset, index: event.index });
            let max = self.max_read.entry(partition).or_insert(offset);
            *max = (*max).max(offset);
        }
    }

    /// `value` seen at (`partition`, `offset`) by event `index`.
    fn observe(&mut self, partition: u32, offset: u64, value: u64, index: u64) {
        self.positions.entry(value).or_default().entry((partition, offset)).or_insert(index);
        self.values_at.entry((partition, offset)).or_default().entry(value).or_insert(index);
    }

    /// The commit floors of `group`: (partition, offset, index of its `ok`).
    fn floors(&self, group: &str) -> Vec<(u32, u64, u64)> {
        self.commit_floor
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, partition), (offset, index))| (*partition, *offset, *index))
            .collect()
    }

    /// An acknowledged commit: none of its offsets may be below a commit
    /// acknowledged before it was invoked (commits that overlap in time may
    /// land in either order).
    fn commit_ok(&mut self, event: &Event, group: &str, offsets: &[(u32, u64)], floors: &[(u32, u64, u64)]) {
        for &(partition, offset) in offsets {
            if let Some(&(_, floor, floor_index)) = floors.iter().find(|(p, _, _)| *p == partition)
                && offset < floor
            {
                self.found.add(AnomalyKind::CommittedOffsetRegression, Some(partition), 1, || {
                    format!(
                        "group {group:?} committed offset {offset} (event {}) after a commit of offset {floor} \
                         was acknowledged (event {floor_index})",
                        event.index
                    )
                });
            }
            let entry = self.commit_floor.entry((group.to_owned(), partition)).or_insert((offset, event.index));
            if offset > entry.0 {
                *entry = (offset, event.index);
            }
        }
    }

    /// A read of committed offsets: it must see at least every commit
    /// acknowledged before it was invoked.
    fn read_committed_ok(&mut self, event: &Event, group: &str, offsets: &[(u32, u64)], floors: &[(u32, u64, u64)]) {
        for &(partition, floor, floor_index) in floors {
            let read = offsets.iter().find(|(p, _)| *p == partition).map(|(_, o)| *o);
            if read.is_none_or(|o| o < floor) {
                self.found.add(AnomalyKind::CommittedOffsetRegression, Some(partition), 1, || {
                    let read = read.map_or("no committed offset".to_owned(), |o| format!("committed offset {o}"));
                    format!(
                        "a read of group {group:?}'s offsets (event {}) returned {read} after a commit of \
                         offset {floor} was acknowledged (event {floor_index})",
                        event.index
                    )
                });
            }
        }
    }

    fn finish(mut self) -> Report {
        self.check_offsets();
        self.check_reads();
        self.check_acked();
        self.check_digests();
        Report {
            ops_ok: self.ops_ok,
            ops_fail: self.ops_fail,
            ops_info: self.ops_info,
            sends_acked: self.sends_acked,
            faults: self.faults,
            faults_attempted: self.faults_attempted,
            counts: self.found.counts,
            anomalies: self.found.anomalies,
        }
    }

    /// `inconsistent-offsets` and `duplicate`.
    fn check_offsets(&mut self) {
        for (&(partition, offset), values) in &self.values_at {
            if values.len() > 1 {
                self.found.add(AnomalyKind::InconsistentOffsets, Some(partition), 1, || {
                    let values = values
                        .iter()
                        .map(|(value, index)| format!("{value} (event {index})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("partition {partition} offset {offset} held values {values}")
                });
            }
        }
        for (&value, positions) in &self.positions {
            if positions.len() > 1 {
                let partitions: BTreeSet<u32> = positions.keys().map(|&(p, _)| p).collect();
                // In two partitions, it belongs to neither.
                let partition = if partitions.len() == 1 { partitions.first().copied() } else { None };
                self.found.add(AnomalyKind::Duplicate, partition, 1, || {
                    let at = positions
                        .iter()
                        .map(|(&(p, o), i)| format!("partition {p} offset {o} (event {i})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("value {value} observed at {at}")
                });
            }
        }
    }

    /// `G1a`: every value read must come from a send to that partition that
    /// did not fail.
    fn check_reads(&mut self) {
        for (&value, reads) in &self.first_reads {
            let send = self.sends.get(&value);
            for (&partition, &Read { offset, index }) in reads {
                let problem = match send {
                    None => "no send of it was ever invoked".to_owned(),
                    Some(send) if send.outcome == Some(Kind::Fail) => {
                        format!("its send (invoked at event {}) failed", send.invoke_index)
                    }
                    Some(send) if send.partition != partition => {
                        format!("it was sent to partition {} (event {})", send.partition, send.invoke_index)
                    }
                    Some(_) => continue,
                };
                self.found.add(AnomalyKind::G1a, Some(partition), 1, || {
                    format!(
                        "value {value} was read at partition {partition} offset {offset} (event {index}), but {problem}"
                    )
                });
                // A value that should never be read counts once, however
                // many partitions it turned up in.
                if send.is_none_or(|send| send.outcome == Some(Kind::Fail)) {
                    break;
                }
            }
        }
    }

    /// `lost-write` and `unseen`: every acknowledged value must be read.
    fn check_acked(&mut self) {
        // Per partition: how many went unseen, and the first few.
        let mut unseen: BTreeMap<u32, (u64, Vec<u64>)> = BTreeMap::new();
        for &(partition, value, offset, index) in &self.acked {
            if self.first_reads.contains_key(&value) {
                continue;
            }
            let max_read = self.max_read.get(&partition).copied();
            match (offset, max_read) {
                (Some(offset), Some(max_read)) if max_read > offset => {
                    self.found.add(AnomalyKind::LostWrite, Some(partition), 1, || {
                        format!(
                            "value {value}, acknowledged at partition {partition} offset {offset} (event {index}), \
                             was never read, though offsets up to {max_read} were"
                        )
                    });
                }
                _ => {
                    let (count, examples) = unseen.entry(partition).or_default();
                    *count += 1;
                    if examples.len() < MAX_UNSEEN_VALUES {
                        examples.push(value);
                    }
                }
            }
        }
        for (partition, (count, examples)) in unseen {
            let max_read = self.max_read.get(&partition).copied();
            self.found.add(AnomalyKind::Unseen, Some(partition), count, || {
                let read = match max_read {
                    Some(max) => format!("offsets up to {max} were read"),
                    None => "nothing was read".to_owned(),
                };
                let values = examples.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                let more = if count > examples.len() as u64 { ", ..." } else { "" };
                format!("{count} acknowledged value(s) of partition {partition} never read ({read}): {values}{more}")
            });
        }
    }

    /// `replica-divergence`: digests of the same range must agree.
    fn check_digests(&mut self) {
        for (&(partition, upto, first_index), digests) in &self.digests {
            let distinct: HashSet<(u64, u32)> = digests.iter().map(|d| (d.entries, d.crc32c)).collect();
            if distinct.len() > 1 {
                self.found.add(AnomalyKind::ReplicaDivergence, Some(partition), 1, || {
                    let mut detail = format!("partition {partition} from Raft index {first_index} up to {upto}:");
                    for d in digests {
                        let _ = write!(
                            detail,
                            " node {} has {} entries, crc32c {:#010x} (event {});",
                            d.node, d.entries, d.crc32c, d.index
                        );
                    }
                    detail.pop();
                    detail
                });
            }
        }
    }
}

/// Counts every anomaly and keeps the first few examples of each kind.
struct Findings {
    counts: BTreeMap<String, u64>,
    kept: HashMap<AnomalyKind, usize>,
    anomalies: Vec<Anomaly>,
}

impl Default for Findings {
    fn default() -> Self {
        Self {
            counts: AnomalyKind::ALL.iter().map(|kind| (kind.name().to_owned(), 0)).collect(),
            kept: HashMap::new(),
            anomalies: Vec::new(),
        }
    }
}

impl Findings {
    /// `n` anomalies of `kind`, described by one example (`detail` is only
    /// formatted if the example is kept).
    fn add(&mut self, kind: AnomalyKind, partition: Option<u32>, n: u64, detail: impl FnOnce() -> String) {
        *self.counts.entry(kind.name().to_owned()).or_insert(0) += n;
        let kept = self.kept.entry(kind).or_insert(0);
        if *kept < MAX_EXAMPLES {
            *kept += 1;
            self.anomalies.push(Anomaly { kind, partition, detail: detail() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{CHECKER, NEMESIS};

    /// Builds a history event by event, numbering them as a recorder would.
    #[derive(Default)]
    struct History {
        events: Vec<Event>,
    }

    impl History {
        fn new() -> Self {
            Self::default()
        }

        fn push(mut self, process: i64, kind: Kind, op: Op) -> Self {
            let index = self.events.len() as u64;
            let error = matches!(kind, Kind::Fail | Kind::Info).then(|| "test".to_owned());
            self.events.push(Event { index, time_ns: index * 1_000, process, kind, op, error });
            self
        }

        fn send_invoke(self, process: i64, partition: u32, value: u64) -> Self {
            self.push(process, Kind::Invoke, Op::Send { partition, value, offset: None })
        }

        fn send_ok(self, process: i64, partition: u32, value: u64, offset: u64) -> Self {
            self.push(process, Kind::Ok, Op::Send { partition, value, offset: Some(offset) })
        }

        fn send_end(self, process: i64, kind: Kind, partition: u32, value: u64) -> Self {
            self.push(process, kind, Op::Send { partition, value, offset: None })
        }

        /// A send acknowledged at `offset`.
        fn send(self, process: i64, partition: u32, value: u64, offset: u64) -> Self {
            self.send_invoke(process, partition, value).send_ok(process, partition, value, offset)
        }

        fn send_fail(self, process: i64, partition: u32, value: u64) -> Self {
            self.send_invoke(process, partition, value).send_end(process, Kind::Fail, partition, value)
        }

        fn send_info(self, process: i64, partition: u32, value: u64) -> Self {
            self.send_invoke(process, partition, value).send_end(process, Kind::Info, partition, value)
        }

        fn poll_op(partition: u32, from: u64, records: &[(u64, u64)], drain: bool) -> Op {
            Op::Poll { partition, from, records: records.to_vec(), drain }
        }

        /// A poll from `from` that returned `records` as (offset, value).
        fn poll(self, process: i64, partition: u32, from: u64, records: &[(u64, u64)]) -> Self {
            self.push(process, Kind::Invoke, Self::poll_op(partition, from, &[], false)).push(
                process,
                Kind::Ok,
                Self::poll_op(partition, from, records, false),
            )
        }

        /// A final drain read by the checker process.
        fn drain(self, partition: u32, from: u64, records: &[(u64, u64)]) -> Self {
            self.push(CHECKER, Kind::Invoke, Self::poll_op(partition, from, &[], true)).push(
                CHECKER,
                Kind::Ok,
                Self::poll_op(partition, from, records, true),
            )
        }

        fn nemesis(self, kind: Kind, fault: &str, nodes: &[u32]) -> Self {
            self.push(
                NEMESIS,
                kind,
                Op::Nemesis { fault: fault.to_owned(), nodes: nodes.to_vec(), detail: String::new() },
            )
        }

        fn digest(self, partition: u32, node: u32, upto: u64, entries: u64, crc32c: u32) -> Self {
            self.push(CHECKER, Kind::Ok, Op::Digest { partition, node, upto, first_index: 1, entries, crc32c })
        }

        /// A commit of `offset` to `partition` by `process`, invoked and
        /// acknowledged at once.
        fn commit(self, process: i64, group: &str, partition: u32, offset: u64) -> Self {
            let op = Op::Commit { group: group.to_owned(), offsets: vec![(partition, offset)] };
            self.push(process, Kind::Invoke, op.clone()).push(process, Kind::Ok, op)
        }

        /// A read of `group`'s committed offsets that returned `offsets`.
        fn read_committed(self, process: i64, group: &str, offsets: &[(u32, u64)]) -> Self {
            self.push(process, Kind::Invoke, Op::ReadCommitted { group: group.to_owned(), offsets: Vec::new() }).push(
                process,
                Kind::Ok,
                Op::ReadCommitted { group: group.to_owned(), offsets: offsets.to_vec() },
            )
        }

        fn check(&self) -> Report {
            check(&self.events)
        }
    }

    /// Asserts that `kind` was found and nothing else was.
    #[track_caller]
    fn assert_only(report: &Report, kind: AnomalyKind) {
        assert!(report.count(kind) > 0, "expected {kind}: {report:#?}");
        for other in AnomalyKind::ALL.into_iter().filter(|&k| k != kind) {
            assert_eq!(report.count(other), 0, "unexpected {other}: {report:#?}");
        }
        assert!(!report.anomaly_free());
        assert_eq!(report.verdict(true), Verdict::Invalid);
        assert_eq!(report.verdict(false), Verdict::Invalid);
        assert!(report.anomalies.iter().all(|a| a.kind == kind));
    }

    #[track_caller]
    fn assert_valid(report: &Report) {
        assert!(report.anomaly_free(), "{report:#?}");
        assert!(report.anomalies.is_empty());
        assert_eq!(report.counts.len(), AnomalyKind::ALL.len());
    }

    #[test]
    fn clean_history_passes() {
        let report = History::new()
            // A fault attempted that did not take effect...
            .nemesis(Kind::Invoke, "pause", &[3])
            .nemesis(Kind::Fail, "pause", &[3])
            .nemesis(Kind::Ok, "heal", &[3])
            // ...and one that did.
            .nemesis(Kind::Invoke, "partition", &[1])
            .nemesis(Kind::Ok, "partition", &[1])
            // Two producers, concurrently: 2 is acknowledged first.
            .send_invoke(1, 0, 10)
            .send_invoke(2, 0, 20)
            .send_ok(2, 0, 20, 0)
            .send_ok(1, 0, 10, 1)
            // An info send that did happen, one that did not, and a fail.
            .send_info(1, 0, 11)
            .send_info(2, 0, 21)
            .send_fail(2, 0, 22)
            .nemesis(Kind::Ok, "heal", &[1])
            .send(1, 0, 12, 3)
            .send(2, 1, 23, 0)
            .nemesis(Kind::Invoke, "kill", &[2])
            .nemesis(Kind::Ok, "kill", &[2])
            .poll(3, 0, 0, &[(0, 20), (1, 10)])
            .poll(3, 0, 2, &[])
            .nemesis(Kind::Ok, "heal", &[2])
            .nemesis(Kind::Ok, "final-heal", &[])
            .commit(7, "g", 0, 1)
            .commit(7, "g", 0, 1)
            .commit(7, "g", 0, 4)
            .read_committed(8, "g", &[(0, 4)])
            .drain(0, 0, &[(0, 20), (1, 10), (2, 11), (3, 12)])
            .drain(1, 0, &[(0, 23)])
            .drain(1, 1, &[])
            .digest(0, 1, 5, 5, 0xdead_beef)
            .digest(0, 2, 5, 5, 0xdead_beef)
            .digest(0, 3, 5, 5, 0xdead_beef)
            .check();
        assert_valid(&report);
        assert_eq!(report.verdict(true), Verdict::Valid);
        assert_eq!(report.sends_acked, 4);
        assert_eq!((report.faults, report.faults_attempted), (2, 3));
        // Sends, polls and drains, commits and the read of the commits.
        assert_eq!(report.ops_ok, 4 + 5 + 3 + 1);
        assert_eq!(report.ops_fail, 1);
        assert_eq!(report.ops_info, 2);
    }

    #[test]
    fn an_empty_history_has_no_anomaly_but_proves_nothing() {
        let report = check(&[]);
        assert_valid(&report);
        assert_eq!((report.ops_ok, report.ops_fail, report.ops_info, report.faults), (0, 0, 0, 0));
        let both = vec!["no send was acknowledged".to_owned(), "no fault took effect (0 attempted)".to_owned()];
        assert_eq!(report.verdict(true), Verdict::Vacuous(both));
        assert_eq!(report.verdict(false), Verdict::Vacuous(vec!["no send was acknowledged".to_owned()]));
        assert_eq!(report.verdict(true).exit_code(), 3);
    }

    /// Faults that worked, a clean read of everything, but no send was
    /// ever acknowledged: nothing could have been lost.
    #[test]
    fn a_run_without_an_acknowledged_send_is_not_valid() {
        let report = History::new()
            .nemesis(Kind::Invoke, "kill", &[1])
            .nemesis(Kind::Ok, "kill", &[1])
            .send_info(1, 0, 10)
            .send_fail(2, 0, 11)
            .nemesis(Kind::Ok, "heal", &[1])
            .drain(0, 0, &[(0, 10)])
            .check();
        assert_valid(&report);
        assert_eq!(report.faults, 1);
        assert_eq!(report.verdict(true), Verdict::Vacuous(vec!["no send was acknowledged".to_owned()]));
        assert_ne!(report.verdict(true).exit_code(), 0);
    }

    /// Acknowledged sends all read back, but every fault failed to take
    /// effect (a heal is not a fault).
    #[test]
    fn a_run_whose_faults_never_took_effect_is_not_valid() {
        let report = History::new()
            .nemesis(Kind::Invoke, "partition-one", &[1])
            .nemesis(Kind::Fail, "partition-one", &[1])
            .send(1, 0, 10, 0)
            .nemesis(Kind::Ok, "heal", &[1])
            .nemesis(Kind::Invoke, "pause-one", &[2])
            .nemesis(Kind::Ok, "heal", &[2])
            .nemesis(Kind::Ok, "final-heal", &[])
            .drain(0, 0, &[(0, 10)])
            .check();
        assert_valid(&report);
        assert_eq!((report.faults, report.faults_attempted), (0, 2));
        let why = vec!["no fault took effect (2 attempted)".to_owned()];
        assert_eq!(report.verdict(true), Verdict::Vacuous(why));
        assert_eq!(report.verdict(true).exit_code(), 3);
        // A run without faults asked for (--nemesis none) needs none.
        assert_eq!(report.verdict(false), Verdict::Valid);
    }

    #[test]
    fn anomalies_make_a_run_invalid_whatever_else() {
        let report = History::new().send(1, 0, 10, 0).drain(0, 0, &[]).check();
        assert!(!report.anomaly_free());
        assert_eq!(report.verdict(true), Verdict::Invalid);
        assert_eq!(report.verdict(true).exit_code(), 1);
    }

    #[test]
    fn the_verdict_serializes_with_its_reasons() {
        let json = serde_json::to_value(Verdict::Vacuous(vec!["no send was acknowledged".into()])).expect("json");
        assert_eq!(json, serde_json::json!({"verdict": "vacuous", "why": ["no send was acknowledged"]}));
        assert_eq!(serde_json::to_value(Verdict::Valid).expect("json"), serde_json::json!({"verdict": "valid"}));
    }

    #[test]
    fn uncompleted_send_may_be_read() {
        // The run ended before the send completed: as uncertain as info.
        let report = History::new().send_invoke(1, 0, 10).drain(0, 0, &[(0, 10)]).check();
        assert_valid(&report);
    }

    #[test]
    fn completion_is_matched_by_process() {
        // Both sends are outstanding together; 2's fails, 1's succeeds.
        let report = History::new()
            .send_invoke(1, 0, 10)
            .send_invoke(2, 0, 20)
            .send_end(2, Kind::Fail, 0, 20)
            .send_ok(1, 0, 10, 0)
            .drain(0, 0, &[(0, 10)])
            .check();
        assert_valid(&report);
        assert_eq!((report.ops_ok, report.ops_fail), (2, 1));
    }

    #[test]
    fn lost_write() {
        let report = History::new().send(1, 0, 10, 0).send(1, 0, 11, 1).drain(0, 1, &[(1, 11)]).check();
        assert_only(&report, AnomalyKind::LostWrite);
        assert_eq!(report.count(AnomalyKind::LostWrite), 1);
        assert_eq!(report.anomalies[0].partition, Some(0));
        assert!(report.anomalies[0].detail.contains("value 10"), "{}", report.anomalies[0].detail);
    }

    #[test]
    fn unseen() {
        let report = History::new()
            .send(1, 0, 10, 0)
            .send(1, 0, 11, 1)
            .send(1, 0, 12, 2)
            .send(1, 0, 13, 3)
            .send(2, 1, 20, 0)
            .drain(0, 0, &[(0, 10)])
            .check();
        assert_only(&report, AnomalyKind::Unseen);
        // Counted per value, reported per partition.
        assert_eq!(report.count(AnomalyKind::Unseen), 4);
        assert_eq!(report.anomalies.len(), 2);
        assert!(report.anomalies[0].detail.contains("11, 12, 13"), "{}", report.anomalies[0].detail);
        assert_eq!(report.anomalies[1].partition, Some(1));
    }

    #[test]
    fn unseen_is_not_also_lost() {
        // 10 was skipped (lost); 12 is past everything read (unseen).
        let report =
            History::new().send(1, 0, 10, 0).send(1, 0, 11, 1).send(1, 0, 12, 2).drain(0, 1, &[(1, 11)]).check();
        assert_eq!(report.count(AnomalyKind::LostWrite), 1);
        assert_eq!(report.count(AnomalyKind::Unseen), 1);
    }

    #[test]
    fn duplicate_at_two_offsets() {
        let report = History::new().send(1, 0, 10, 0).send_info(1, 0, 11).poll(2, 0, 0, &[(0, 10), (1, 10)]).check();
        assert_only(&report, AnomalyKind::Duplicate);
        assert_eq!(report.count(AnomalyKind::Duplicate), 1);
    }

    #[test]
    fn duplicate_of_an_info_send() {
        // An info send may appear, but never twice.
        let report = History::new().send_info(1, 0, 10).poll(2, 0, 0, &[(0, 10), (1, 10)]).check();
        assert_only(&report, AnomalyKind::Duplicate);
    }

    #[test]
    fn duplicate_between_ack_and_read() {
        // Acknowledged at 1, read only at 0: the ack's offset is an observation.
        let report = History::new().send(1, 0, 10, 1).drain(0, 0, &[(0, 10)]).check();
        assert_eq!(report.count(AnomalyKind::Duplicate), 1);
        assert_eq!(report.count(AnomalyKind::LostWrite), 0);
        assert_eq!(report.count(AnomalyKind::Unseen), 0);
    }

    #[test]
    fn duplicate_in_two_partitions() {
        let report = History::new().send(1, 0, 10, 0).poll(2, 0, 0, &[(0, 10)]).poll(2, 1, 0, &[(0, 10)]).check();
        assert_eq!(report.count(AnomalyKind::Duplicate), 1);
        let duplicate = report.anomalies.iter().find(|a| a.kind == AnomalyKind::Duplicate).expect("a duplicate");
        assert_eq!(duplicate.partition, None);
        // Read where it was never sent.
        assert_eq!(report.count(AnomalyKind::G1a), 1);
    }

    #[test]
    fn inconsistent_offsets_between_reads() {
        let report = History::new()
            .send(1, 0, 10, 0)
            .send_info(2, 0, 20)
            .poll(3, 0, 0, &[(0, 10)])
            .poll(4, 0, 0, &[(0, 20)])
            .check();
        assert_only(&report, AnomalyKind::InconsistentOffsets);
        assert_eq!(report.count(AnomalyKind::InconsistentOffsets), 1);
        assert!(report.anomalies[0].detail.contains("offset 0"), "{}", report.anomalies[0].detail);
    }

    #[test]
    fn inconsistent_offsets_between_acks() {
        let report = History::new().send(1, 0, 10, 0).send(2, 0, 20, 0).drain(0, 0, &[(0, 10), (1, 20)]).check();
        assert_eq!(report.count(AnomalyKind::InconsistentOffsets), 1);
        assert_eq!(report.count(AnomalyKind::Duplicate), 1);
    }

    #[test]
    fn nonmonotonic_send() {
        let report = History::new()
            .send(1, 0, 10, 1)
            .send(1, 0, 11, 0)
            // Another process, and another partition, are independent.
            .send(2, 0, 20, 2)
            .send(1, 1, 12, 0)
            .drain(0, 0, &[(0, 11), (1, 10), (2, 20)])
            .drain(1, 0, &[(0, 12)])
            .check();
        assert_only(&report, AnomalyKind::NonmonotonicSend);
        assert_eq!(report.count(AnomalyKind::NonmonotonicSend), 1);
    }

    #[test]
    fn nonmonotonic_poll_within_a_poll() {
        let report =
            History::new().send(1, 0, 10, 0).send(1, 0, 11, 1).poll(2, 0, 0, &[(0, 10), (1, 11), (1, 11)]).check();
        assert_only(&report, AnomalyKind::NonmonotonicPoll);
        assert_eq!(report.count(AnomalyKind::NonmonotonicPoll), 1);
    }

    #[test]
    fn nonmonotonic_poll_before_from() {
        let report = History::new().send(1, 0, 10, 0).send(1, 0, 11, 1).poll(2, 0, 1, &[(0, 10), (1, 11)]).check();
        assert_only(&report, AnomalyKind::NonmonotonicPoll);
    }

    #[test]
    fn poll_skip_within_a_poll() {
        let report = History::new()
            .send(1, 0, 10, 0)
            .send(1, 0, 11, 1)
            .send(1, 0, 12, 2)
            .poll(2, 0, 0, &[(0, 10), (2, 12)])
            .poll(2, 0, 1, &[(1, 11)])
            .check();
        assert_only(&report, AnomalyKind::PollSkip);
        assert_eq!(report.count(AnomalyKind::PollSkip), 1);
    }

    #[test]
    fn poll_skip_after_from() {
        let report = History::new()
            .send(1, 0, 10, 0)
            .send(1, 0, 11, 1)
            .poll(2, 0, 0, &[(1, 11)])
            .drain(0, 0, &[(0, 10)])
            .check();
        assert_only(&report, AnomalyKind::PollSkip);
    }

    #[test]
    fn skipped_and_never_read_is_also_lost() {
        let report = History::new().send(1, 0, 10, 0).send(1, 0, 11, 1).poll(2, 0, 0, &[(1, 11)]).check();
        assert_eq!(report.count(AnomalyKind::PollSkip), 1);
        assert_eq!(report.count(AnomalyKind::LostWrite), 1);
    }

    #[test]
    fn failed_polls_are_not_checked() {
        let report = History::new()
            .send(1, 0, 10, 0)
            .push(2, Kind::Invoke, History::poll_op(0, 0, &[], false))
            .push(2, Kind::Fail, History::poll_op(0, 0, &[(5, 99)], false))
            .drain(0, 0, &[(0, 10)])
            .check();
        assert_valid(&report);
    }

    #[test]
    fn g1a_read_of_a_failed_send() {
        let report = History::new().send_fail(1, 0, 10).poll(2, 0, 0, &[(0, 10)]).check();
        assert_only(&report, AnomalyKind::G1a);
        assert_eq!(report.count(AnomalyKind::G1a), 1);
        assert!(report.anomalies[0].detail.contains("failed"), "{}", report.anomalies[0].detail);
    }

    #[test]
    fn g1a_read_before_the_send_failed() {
        // The read happens while the send is outstanding; it then fails.
        let report =
            History::new().send_invoke(1, 0, 10).poll(2, 0, 0, &[(0, 10)]).send_end(1, Kind::Fail, 0, 10).check();
        assert_only(&report, AnomalyKind::G1a);
    }

    #[test]
    fn g1a_read_of_a_value_never_sent() {
        let report = History::new().send(1, 0, 10, 0).poll(2, 0, 0, &[(0, 10), (1, 99)]).check();
        assert_only(&report, AnomalyKind::G1a);
        assert!(report.anomalies[0].detail.contains("value 99"), "{}", report.anomalies[0].detail);
    }

    #[test]
    fn g1a_counts_each_value_once() {
        let report = History::new().send_fail(1, 0, 10).poll(2, 0, 0, &[(0, 10)]).poll(3, 0, 0, &[(0, 10)]).check();
        assert_eq!(report.count(AnomalyKind::G1a), 1);
    }

    #[test]
    fn committed_offset_regression() {
        let report = History::new()
            .commit(7, "g", 0, 5)
            .commit(7, "g", 0, 5)
            .commit(7, "g", 1, 2) // another partition
            .commit(7, "h", 0, 1) // another group
            .commit(7, "g", 0, 3)
            // Only ok commits count.
            .push(7, Kind::Invoke, Op::Commit { group: "g".to_owned(), offsets: vec![(0, 0)] })
            .push(7, Kind::Fail, Op::Commit { group: "g".to_owned(), offsets: vec![(0, 0)] })
            .check();
        assert_only(&report, AnomalyKind::CommittedOffsetRegression);
        assert_eq!(report.count(AnomalyKind::CommittedOffsetRegression), 1);
        assert!(report.anomalies[0].detail.contains("offset 3"), "{}", report.anomalies[0].detail);
    }

    #[test]
    fn commits_that_overlap_in_time_may_land_in_either_order() {
        let commit = |offset| Op::Commit { group: "g".to_owned(), offsets: vec![(0, offset)] };
        let report = History::new()
            .push(1, Kind::Invoke, commit(4))
            .push(2, Kind::Invoke, commit(6))
            .push(2, Kind::Ok, commit(6))
            // Invoked before 6 was acknowledged: not a regression.
            .push(1, Kind::Ok, commit(4))
            .check();
        assert!(report.anomaly_free(), "{:?}", report.anomalies);
        // Invoked after: a regression.
        let report = History::new().commit(2, "g", 0, 6).commit(1, "g", 0, 4).check();
        assert_only(&report, AnomalyKind::CommittedOffsetRegression);
    }

    #[test]
    fn a_read_of_committed_offsets_must_see_every_acknowledged_commit() {
        let report = History::new()
            .commit(1, "g", 0, 5)
            .commit(1, "g", 1, 2)
            .read_committed(9, "g", &[(0, 5), (1, 3)]) // at or above: fine
            .read_committed(9, "g", &[(0, 4), (1, 2)]) // 4 < 5
            .read_committed(9, "g", &[(0, 5)]) // partition 1 missing: lost
            .read_committed(9, "h", &[]) // another group
            .check();
        assert_only(&report, AnomalyKind::CommittedOffsetRegression);
        assert_eq!(report.count(AnomalyKind::CommittedOffsetRegression), 2);
        assert!(report.anomalies[0].detail.contains("committed offset 4"), "{}", report.anomalies[0].detail);
        assert!(report.anomalies[1].detail.contains("no committed offset"), "{}", report.anomalies[1].detail);
    }

    #[test]
    fn replica_divergence() {
        let report = History::new()
            .digest(0, 1, 10, 10, 0x1111)
            .digest(0, 2, 10, 10, 0x2222)
            .digest(0, 3, 10, 10, 0x1111)
            // Different ranges are not compared.
            .digest(1, 1, 10, 10, 0x1111)
            .digest(1, 2, 12, 12, 0x3333)
            .check();
        assert_only(&report, AnomalyKind::ReplicaDivergence);
        assert_eq!(report.count(AnomalyKind::ReplicaDivergence), 1);
        let detail = &report.anomalies[0].detail;
        for node in ["node 1", "node 2", "node 3"] {
            assert!(detail.contains(node), "{detail}");
        }
    }

    #[test]
    fn replica_divergence_in_entry_count() {
        let report = History::new().digest(0, 1, 10, 10, 0x1111).digest(0, 2, 10, 9, 0x1111).check();
        assert_only(&report, AnomalyKind::ReplicaDivergence);
    }

    #[test]
    fn examples_are_capped_but_all_are_counted() {
        let mut history = History::new();
        for offset in (0..30).rev() {
            history = history.commit(7, "g", 0, offset);
        }
        let report = history.check();
        assert_eq!(report.count(AnomalyKind::CommittedOffsetRegression), 29);
        assert_eq!(report.anomalies.len(), MAX_EXAMPLES);
    }

    #[test]
    fn names_match_serialization() {
        let names: BTreeSet<&str> = AnomalyKind::ALL.iter().map(AnomalyKind::name).collect();
        assert_eq!(names.len(), AnomalyKind::ALL.len());
        for kind in AnomalyKind::ALL {
            assert_eq!(serde_json::to_value(kind).expect("serializes"), serde_json::json!(kind.name()));
        }
        assert_eq!(AnomalyKind::G1a.name(), "G1a");
        assert_eq!(AnomalyKind::LostWrite.name(), "lost-write");
    }

    #[test]
    fn report_serializes_every_count() {
        let report = History::new().send_fail(1, 0, 10).poll(2, 0, 0, &[(0, 10)]).check();
        let json = serde_json::to_value(&report).expect("serializes");
        let counts = json["counts"].as_object().expect("counts is an object");
        for kind in AnomalyKind::ALL {
            assert!(counts.contains_key(kind.name()), "{} missing from {json}", kind.name());
        }
        assert_eq!(counts["G1a"], 1);
        assert_eq!(counts["lost-write"], 0);
        assert_eq!(json["anomalies"][0]["kind"], "G1a");
        assert_eq!(json["anomalies"][0]["partition"], 0);
        assert_eq!(json["ops_ok"], 1);
        assert_eq!(json["ops_fail"], 1);
    }
}
