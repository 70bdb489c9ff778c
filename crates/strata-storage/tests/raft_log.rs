//! The partition log as a Raft log, against real segment files and a real
//! RocksDB: entries with given ids, control batches, reads by log index,
//! truncating a suffix, purging a prefix, visibility of applied entries.

mod common;

use common::{Fixture, batch, close, read_all, small_segments};
use strata_storage::{EntryId, LogConfig, PartitionLog, StorageError};

fn id(term: u64, index: u64) -> EntryId {
    EntryId { term, index }
}

async fn put(log: &PartitionLog, term: u64, indices: std::ops::Range<u64>) {
    for i in indices {
        log.submit_entry(batch(2, 1, &format!("e{i}")), id(term, i))
            .await
            .expect("submit")
            .wait()
            .await
            .expect("durable");
    }
}

async fn indices(log: &PartitionLog) -> Vec<u64> {
    log.entries(0, u64::MAX, 1 << 20).await.expect("entries").iter().map(|(e, _)| e.index).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_entries_keep_their_ids_and_control_batches_take_no_offset_and_are_not_read() {
    let fx = Fixture::new();
    let control = |kind: &str| strata_record::control_batch(kind, b"{}", 1);
    {
        let (db, log) = fx.open(small_segments());
        // A log may start at any entry (after a snapshot, say).
        let blank = log.submit_entry(control("raft.blank"), id(1, 5)).await.expect("submit");
        let data = log.submit_entry(batch(3, 1, "a"), id(1, 6)).await.expect("submit");
        assert_eq!(blank.wait().await.expect("durable").base_offset, 0);
        assert_eq!(data.wait().await.expect("durable").base_offset, 0, "the blank entry took no offset");
        // Out of order: refused, and the partition keeps serving.
        for bad in [id(1, 8), id(1, 6), id(0, 7)] {
            let err = log.submit_entry(batch(1, 1, "x"), bad).await.expect_err("gap");
            assert!(matches!(err, StorageError::EntryOutOfOrder { .. }), "{err}");
        }
        // Producers cannot send control batches.
        assert!(matches!(log.append(control("raft.blank")).await, Err(StorageError::InvalidBatch(_))));
        log.submit_entry(control("raft.membership"), id(2, 7)).await.expect("submit").wait().await.expect("ok");
        for i in 8..40 {
            log.submit_entry(batch(2, 1, &format!("e{i}")), id(2, i)).await.expect("submit").wait().await.expect("ok");
        }
        assert_eq!(log.last_entry(), Some(id(2, 39)));
        assert!(log.status().segments > 1, "1 KiB segments must have rolled");
        // Consumers see the data only, at contiguous offsets.
        let got = read_all(&log, 0).await;
        assert_eq!(got.len(), 3 + 32 * 2);
        assert!(got.iter().enumerate().all(|(i, r)| r.offset == i as u64), "contiguous offsets");
        // Offset 3 is where the membership entry sits and where e8 starts:
        // the read returns e8.
        let at_control = log.read(3, 1).await.expect("read");
        assert_eq!(at_control.batches.len(), 1);
        assert_eq!(strata_record::decode(&at_control.batches[0]).expect("records")[0].value, "e8-0");
        assert_eq!(at_control.next_offset, 5);
        close(db, log).await;
    }
    let (_db, log) = fx.open(small_segments());
    assert_eq!(log.last_entry(), Some(id(2, 39)), "recovered from the segments");
    // Entries by log index, across segments, with their ids.
    let all = log.entries(5, 40, 1 << 20).await.expect("entries");
    let ids: Vec<_> = all.iter().map(|(e, _)| *e).collect();
    let want: Vec<_> = [id(1, 5), id(1, 6), id(2, 7)].into_iter().chain((8..40).map(|i| id(2, i))).collect();
    assert_eq!(ids, want);
    assert!(strata_record::verify(&all[2].1).expect("valid").control);
    let some = log.entries(10, 13, 1 << 20).await.expect("entries");
    assert_eq!(some.iter().map(|(e, _)| e.index).collect::<Vec<_>>(), vec![10, 11, 12]);
    assert_eq!(log.entries(30, 40, 1).await.expect("entries").len(), 1, "at least one entry, however small the limit");
    assert!(log.entries(40, 50, 1 << 20).await.expect("entries").is_empty());
    assert!(log.entries(0, 5, 1 << 20).await.expect("entries").is_empty(), "before the first entry");
    let from_zero = log.entries(0, 7, 1 << 20).await.expect("entries");
    assert_eq!(from_zero.iter().map(|(e, _)| e.index).collect::<Vec<_>>(), vec![5, 6], "starts at the first entry");
    log.submit_entry(batch(1, 1, "next"), id(3, 40)).await.expect("submit").wait().await.expect("continues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_removes_a_suffix_across_segments_and_appends_continue_from_the_cut() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open_applied(small_segments());
        put(&log, 1, 0..30).await;
        let segments_before = log.status().segments;
        assert!(segments_before >= 3, "1 KiB segments must have rolled");
        // A replicated log is trimmed through consensus only.
        log.set_config(LogConfig { retention_bytes: 0, retention_ms: 1, ..small_segments() });
        assert_eq!(log.apply_retention(i64::MAX / 2).expect("retention"), 0, "retention leaves a Raft log alone");
        assert_eq!(log.status().segments, segments_before);
        log.set_applied(9).expect("applied");
        assert_eq!(log.high_watermark(), 20, "entries 0-9 hold offsets 0-19");
        let err = log.truncate(5).await.expect_err("below the high watermark");
        assert!(err.to_string().contains("below the high watermark"), "{err}");
        log.truncate(12).await.expect("truncate");
        assert_eq!(log.last_entry(), Some(id(1, 11)));
        assert!(log.status().segments < segments_before, "later segments deleted");
        assert_eq!(indices(&log).await, (0..12).collect::<Vec<_>>());
        // The next entry follows the cut, in a newer term.
        let err = log.submit_entry(batch(1, 1, "x"), id(2, 13)).await.expect_err("gap");
        assert!(matches!(err, StorageError::EntryOutOfOrder { .. }), "{err}");
        let info = log.submit_entry(batch(1, 1, "y"), id(2, 12)).await.expect("queued").wait().await.expect("ok");
        assert_eq!(info.base_offset, 24, "offsets continue from the cut");
        // A copy of entry 13 the leader stamped at another offset: refused,
        // never restamped (replicas must agree on offsets).
        let mut theirs = batch(1, 1, "z").to_vec();
        strata_record::stamp(&mut theirs, strata_record::Placement { base_offset: 99, term: 2, log_index: 13 });
        let err = log.submit_entry(theirs.into(), id(2, 13)).await.expect_err("diverged");
        assert!(matches!(err, StorageError::OffsetMismatch { stamped: 99, local: 25, .. }), "{err}");
        log.truncate(40).await.expect("beyond the end: nothing to do");
        close(db, log).await;
    }
    let (_db, log) = fx.open_applied(small_segments());
    assert_eq!(log.last_entry(), Some(id(2, 12)));
    assert_eq!(indices(&log).await, (0..13).collect::<Vec<_>>());
    let entries = log.entries(12, 13, 1 << 20).await.expect("entries");
    assert_eq!(strata_record::verify(&entries[0].1).expect("valid").base_offset, 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_forgets_a_prefix_even_beyond_the_last_entry() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open(small_segments());
        put(&log, 1, 0..20).await;
        log.purge(id(1, 4)).await.expect("purge");
        assert_eq!(log.last_purged(), Some(id(1, 4)));
        assert_eq!(log.log_start_offset(), 10, "entries 0-4 held offsets 0-9");
        assert_eq!(indices(&log).await, (5..20).collect::<Vec<_>>());
        let err = log.read(3, 1024).await.expect_err("purged offsets are out of range");
        assert!(matches!(err, StorageError::OffsetOutOfRange { start: 10, .. }), "{err}");
        assert_eq!(read_all(&log, 10).await.len(), 30);
        log.purge(id(1, 2)).await.expect("an older purge changes nothing");
        assert_eq!(log.last_purged(), Some(id(1, 4)));
        close(db, log).await;
    }
    {
        let (db, log) = fx.open(small_segments());
        assert_eq!(log.last_purged(), Some(id(1, 4)), "the purge is durable");
        assert_eq!(log.log_start_offset(), 10);
        assert_eq!(indices(&log).await, (5..20).collect::<Vec<_>>());
        // A snapshot beyond the log: everything goes, and the log goes on
        // after the snapshot's last entry.
        log.purge(id(3, 50)).await.expect("purge");
        assert!(indices(&log).await.is_empty());
        assert_eq!(log.log_start_offset(), 40);
        let err = log.submit_entry(batch(1, 1, "x"), id(3, 20)).await.expect_err("old");
        assert!(matches!(err, StorageError::EntryOutOfOrder { .. }), "{err}");
        put(&log, 3, 51..53).await;
        close(db, log).await;
    }
    let (_db, log) = fx.open(small_segments());
    assert_eq!(indices(&log).await, vec![51, 52]);
    assert_eq!(read_all(&log, 40).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_applied_visibility_readers_see_only_applied_durable_entries() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open_applied(LogConfig::default());
        put(&log, 1, 0..5).await;
        assert_eq!(log.progress().durable, Some(id(1, 4)));
        log.wait_durable(4).await.expect("durable");
        log.wait_durable(99).await.expect("an entry the log does not hold does not block");
        assert_eq!(log.high_watermark(), 0, "durable but not applied: invisible");
        assert!(read_all(&log, 0).await.is_empty());
        log.set_applied(2).expect("applied");
        assert_eq!(log.high_watermark(), 6);
        assert_eq!(read_all(&log, 0).await.len(), 6);
        log.set_applied(1).expect("an older apply changes nothing");
        log.set_applied(77).expect("an entry the log does not hold is ignored");
        assert_eq!(log.high_watermark(), 6);
        log.save_state("vote", b"term 1".to_vec(), true).await.expect("state");
        close(db, log).await;
    }
    let (_db, log) = fx.open_applied(LogConfig::default());
    assert_eq!(log.high_watermark(), 0, "after a restart, visible once applied again");
    assert_eq!(log.load_state("vote").await.expect("state"), Some(b"term 1".to_vec()));
    log.set_applied(4).expect("applied");
    assert_eq!(log.high_watermark(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_agree_exactly_when_the_logs_hold_the_same_entries() {
    let (a, b) = (Fixture::new(), Fixture::new());
    let (_da, left) = a.open_applied(small_segments());
    let (_db, right) = b.open_applied(small_segments());
    for log in [&left, &right] {
        put(log, 1, 0..20).await;
    }
    let (l, r) = (left.digest(19).await.expect("digest"), right.digest(19).await.expect("digest"));
    assert_eq!(l, r);
    assert_eq!((l.first, l.last, l.entries), (Some(id(1, 0)), Some(id(1, 19)), 20));
    assert_eq!(left.digest(7).await.expect("digest").entries, 8, "up to the index asked for");
    // The same indices and terms but other bytes: a different digest.
    right.truncate(15).await.expect("truncate");
    for i in 15..20 {
        right
            .submit_entry(batch(2, 1, &format!("other{i}")), id(1, i))
            .await
            .expect("submit")
            .wait()
            .await
            .expect("ok");
    }
    let r = right.digest(19).await.expect("digest");
    assert_eq!((r.last, r.entries), (l.last, l.entries));
    assert_ne!(r.crc32c, l.crc32c);
    assert_eq!(left.digest(14).await.expect("digest"), right.digest(14).await.expect("digest"), "same prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_a_snapshot_drops_the_log_and_goes_on_at_the_leaders_offset() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open(small_segments());
        put(&log, 1, 0..20).await;
        log.reset_to(id(3, 50), 1000).await.expect("reset");
        assert!(indices(&log).await.is_empty());
        assert_eq!((log.last_purged(), log.last_entry()), (Some(id(3, 50)), None));
        assert_eq!((log.log_start_offset(), log.high_watermark()), (1000, 1000));
        assert_eq!(log.status().segments, 1);
        let info = log.submit_entry(batch(2, 1, "after"), id(3, 51)).await.expect("submit").wait().await.expect("ok");
        assert_eq!(info.base_offset, 1000);
        close(db, log).await;
    }
    {
        let (db, log) = fx.open(small_segments());
        assert_eq!(indices(&log).await, vec![51]);
        assert_eq!((log.log_start_offset(), log.high_watermark()), (1000, 1002));
        assert_eq!(read_all(&log, 1000).await.len(), 2);
        close(db, log).await;
    }
    // A crash right after the reset marker was written: recovery finishes it.
    {
        let db = strata_storage::IndexDb::open(&fx.root.join("index")).expect("index");
        let index = db.partition(1, 0);
        let mut marker = Vec::new();
        for v in [4u64, 80, 5000] {
            marker.extend_from_slice(&v.to_le_bytes());
        }
        strata_storage::LogIndex::put_state(&index, "reset", &marker, true).expect("marker");
    }
    let (_db, log) = fx.open(small_segments());
    assert!(indices(&log).await.is_empty(), "the old entries are gone");
    assert_eq!((log.last_purged(), log.log_start_offset()), (Some(id(4, 80)), 5000));
    let info = log.submit_entry(batch(1, 1, "next"), id(4, 81)).await.expect("submit").wait().await.expect("ok");
    assert_eq!(info.base_offset, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_empty_lets_the_log_start_again_with_its_first_entry() {
    let fx = Fixture::new();
    {
        let (db, log) = fx.open(small_segments());
        put(&log, 1, 0..10).await;
        log.reset_to_empty(0).await.expect("reset");
        assert!(indices(&log).await.is_empty());
        assert_eq!((log.last_purged(), log.last_entry()), (None, None));
        put(&log, 2, 0..3).await;
        close(db, log).await;
    }
    // Recovered as written: entries 0..3 of term 2, nothing purged. Then a
    // crash right after an empty reset's marker (the next offset alone).
    {
        let (db, log) = fx.open(small_segments());
        assert_eq!(indices(&log).await, vec![0, 1, 2]);
        assert_eq!(log.last_purged(), None);
        close(db, log).await;
        let db = strata_storage::IndexDb::open(&fx.root.join("index")).expect("index");
        strata_storage::LogIndex::put_state(&db.partition(1, 0), "reset", &7u64.to_le_bytes(), true).expect("marker");
    }
    let (_db, log) = fx.open(small_segments());
    assert!(indices(&log).await.is_empty(), "recovery finished the reset");
    assert_eq!((log.last_purged(), log.log_start_offset()), (None, 7));
    let info = log.submit_entry(batch(1, 1, "first"), id(5, 0)).await.expect("submit").wait().await.expect("ok");
    assert_eq!(info.base_offset, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_cut_of_a_raft_log_is_the_last_entry_of_the_segments_to_delete() {
    let fx = Fixture::new();
    let config = LogConfig { segment_bytes: 1024, retention_bytes: 2048, ..LogConfig::default() };
    let (_db, log) = fx.open_applied(config);
    put(&log, 1, 0..60).await;
    log.set_applied(59).expect("applied");
    // A Raft log is never trimmed behind consensus' back.
    assert_eq!(log.apply_retention(strata_record::now_ms()).expect("retention"), 0);
    let segments = log.status().segments;
    let cut = log.retention_cut(strata_record::now_ms()).expect("cut").expect("something to delete");
    assert!(cut.index > 0 && cut.index < 59, "{cut:?}");
    assert_eq!(log.log_start_offset(), 0, "asking deletes nothing");
    // Purging up to the cut deletes whole segments: the next entry starts one.
    log.purge(cut).await.expect("purge");
    assert!(log.status().segments < segments);
    assert_eq!(log.log_start_offset(), (cut.index + 1) * 2, "two records per entry");
    assert!(log.status().size_bytes <= 2048 + 1024, "{:?}", log.status());
    assert_eq!(indices(&log).await.first(), Some(&(cut.index + 1)));
    assert_eq!(log.retention_cut(strata_record::now_ms()).expect("cut"), None, "within the limit now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_of_control_batches_alone_does_not_roll_onto_its_own_name() {
    // Many leader changes (blank entries) on a quiet partition: more control
    // bytes than a segment holds, and no record to give a new segment another
    // base offset.
    let fx = Fixture::new();
    let config = LogConfig { segment_bytes: 1024, segment_ms: 1, ..LogConfig::default() };
    {
        // (Without consensus the log keeps no recent entries in memory:
        // reads come from the segment files, at their indexed positions.)
        let (db, log) = fx.open(config);
        for i in 0..40 {
            let blank = strata_record::control_batch("raft.blank", b"", 0);
            log.submit_entry(blank, id(i + 1, i)).await.expect("submit").wait().await.expect("durable");
        }
        put(&log, 50, 40..45).await;
        assert_eq!(log.last_entry(), Some(id(50, 44)));
        assert_eq!(indices(&log).await, (0..45).collect::<Vec<_>>(), "every entry reads back");
        assert_eq!(read_all(&log, 0).await.len(), 10);
        assert!(log.status().failure.is_none(), "{:?}", log.status());
        close(db, log).await;
    }
    let (_db, log) = fx.open(config);
    assert_eq!(indices(&log).await, (0..45).collect::<Vec<_>>(), "every entry survives a restart");
    assert!(log.status().failure.is_none(), "{:?}", log.status());
}
