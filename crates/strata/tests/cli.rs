//! The `strata` CLI against a real server process.

mod common;

use common::{ServerProcess, ok, strata};

#[test]
fn topic_produce_consume_roundtrip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    let s = server.addr.as_str();

    let out = ok(s, &["topic", "create", "orders", "--partitions", "2", "--config", "retention.ms=3600000"], "");
    assert_eq!(out.trim(), "created topic orders with 2 partitions");
    assert!(ok(s, &["topic", "list"], "").contains("orders"));

    ok(s, &["produce", "orders", "--partition", "0", "--header", "source=test"], "alpha\nbeta\ngamma\n");
    ok(s, &["produce", "orders", "--partition", "1", "--key", "k"], "delta\n");

    let values = ok(s, &["consume", "orders", "--partition", "0", "--from", "earliest", "--max-messages", "3"], "");
    assert_eq!(values, "alpha\nbeta\ngamma\n");
    let from_offset = ok(s, &["consume", "orders", "-p", "0", "--from", "1", "-n", "2"], "");
    assert_eq!(from_offset, "beta\ngamma\n");

    let json = ok(s, &["consume", "orders", "-p", "0", "-n", "1", "--format", "json"], "");
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json line");
    assert_eq!(v["partition"], 0);
    assert_eq!(v["offset"], 0);
    assert_eq!(v["value"], "alpha");
    assert_eq!(v["key"], serde_json::Value::Null);
    assert_eq!(v["headers"]["source"], "test");
    assert!(v["timestamp"].as_str().expect("timestamp").ends_with('Z'));

    // Without --partition every partition is read.
    let mut all: Vec<String> = ok(s, &["consume", "orders", "-n", "4"], "").lines().map(str::to_owned).collect();
    all.sort();
    assert_eq!(all, ["alpha", "beta", "delta", "gamma"]);

    let describe = ok(s, &["topic", "describe", "orders"], "");
    assert!(describe.contains("retention.ms"), "{describe}");
    assert!(describe.contains("3600000"), "{describe}");
    let described: serde_json::Value =
        serde_json::from_str(&ok(s, &["topic", "describe", "orders", "--format", "json"], "")).expect("json");
    assert_eq!(described["partition_states"][0]["high_watermark"], 3);
    assert_eq!(described["partition_states"][1]["high_watermark"], 1);

    ok(s, &["topic", "alter-config", "orders", "--set", "retention.bytes=1048576"], "");
    let described: serde_json::Value =
        serde_json::from_str(&ok(s, &["topic", "describe", "orders", "--format", "json"], "")).expect("json");
    assert_eq!(described["config"]["retention.bytes"], "1048576");

    let out = ok(s, &["topic", "add-partitions", "orders", "--partitions", "4"], "");
    assert_eq!(out.trim(), "topic orders has 4 partitions now");
    let fewer = strata(s, &["topic", "add-partitions", "orders", "--partitions", "3"], "");
    assert!(!fewer.status.success());
    let stderr = String::from_utf8_lossy(&fewer.stderr);
    assert!(stderr.contains("has 4 partitions: the new count 3 must be larger"), "{stderr}");

    ok(s, &["topic", "delete", "orders"], "");
    assert!(!ok(s, &["topic", "list"], "").contains("orders"));
}

#[test]
fn errors_are_one_clear_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    let addr = server.addr.clone();
    let s = addr.as_str();

    let cases: &[(&[&str], &str)] = &[
        (&["consume", "nope", "-n", "1"], "error: unknown topic 'nope'"),
        (&["produce", "nope"], "error: unknown topic 'nope'"),
        (&["topic", "create", "zero", "--partitions", "0"], "error: invalid partition count 0"),
        (&["topic", "create", "bad name"], "error: invalid topic name 'bad name'"),
        (&["topic", "create", "t", "--config", "colour=blue"], "error: unknown topic config 'colour'"),
        (&["consume", "nope", "--from", "someday"], "error: --from 'someday' is not earliest"),
    ];
    for (args, expected) in cases {
        let out = strata(s, args, "x\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line, got {stderr}");
    }
    ok(s, &["topic", "create", "t", "--partitions", "1"], "");
    let out = strata(s, &["consume", "t", "--partition", "3", "-n", "1"], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no partition 3"));

    // Nothing listens on the closed port: the error names the address.
    drop(server);
    let out = strata(s, &["topic", "list"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("cannot connect to strata at {s}")), "{stderr}");
    assert!(stderr.contains("is the server running"), "{stderr}");
}

#[test]
fn server_flags_and_env_are_validated() {
    let out =
        std::process::Command::new(common::BIN).args(["server", "--listen", "not-an-address"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not HOST:PORT"));
    let out = std::process::Command::new(common::BIN)
        .args(["server"])
        .env("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES", "huge")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES=huge"));
    // Topic defaults below the storage floors: the node does not start ...
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::BIN)
        .args(["server", "--listen", "127.0.0.1:0"])
        .env("STRATA_DATA_DIR", dir.path())
        .env("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES", "4096")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("segment.bytes 4096 is below the minimum of 1048576 bytes (storage.min_segment_bytes)"),
        "{stderr}"
    );
    // ... unless the operator lowers them.
    let env = [
        ("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES".to_owned(), "4096".to_owned()),
        ("STRATA_STORAGE_MIN_SEGMENT_BYTES".to_owned(), "4096".to_owned()),
    ];
    ServerProcess::start_with(dir.path(), &env).kill();
    let out = std::process::Command::new(common::BIN).args(["server", "--print-default-config"]).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("[topic_defaults]"));
}

#[test]
fn group_consume_commits_describe_shows_lag_and_reset_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    let s = server.addr.as_str();
    ok(s, &["topic", "create", "jobs", "--partitions", "1"], "");
    ok(s, &["produce", "jobs", "--partition", "0"], "one\ntwo\nthree\nfour\n");

    // A group member reads and commits what it printed.
    assert_eq!(ok(s, &["consume", "jobs", "--group", "g", "-n", "3"], ""), "one\ntwo\nthree\n");
    let d: serde_json::Value =
        serde_json::from_str(&ok(s, &["group", "describe", "g", "--format", "json"], "")).expect("json");
    assert_eq!(d["kind"], "consumer");
    assert_eq!(d["partitions"][0]["committed"], 3);
    assert_eq!(d["partitions"][0]["lag"], 1);
    // The next member goes on from the commit.
    assert_eq!(ok(s, &["consume", "jobs", "--group", "g", "-n", "1"], ""), "four\n");
    assert!(ok(s, &["group", "list"], "").contains('g'));

    // Reset: a dry run commits nothing; then replay from offset 1.
    let dry = ok(s, &["group", "reset", "g", "--topic", "jobs", "--to", "1", "--dry-run"], "");
    assert!(dry.contains("dry run"), "{dry}");
    let planned: Vec<Vec<&str>> = dry
        .lines()
        .map(|l| l.split(|c: char| c.is_whitespace() || c == '|' || c == '│').filter(|w| !w.is_empty()).collect())
        .filter(|w: &Vec<&str>| w.first() == Some(&"jobs"))
        .collect();
    assert_eq!(planned, vec![vec!["jobs", "0", "1"]], "the dry run shows the offset it would commit: {dry}");
    let d: serde_json::Value =
        serde_json::from_str(&ok(s, &["group", "describe", "g", "--format", "json"], "")).expect("json");
    assert_eq!(d["partitions"][0]["committed"], 4, "the dry run committed: {d}");
    ok(s, &["group", "reset", "g", "--topic", "jobs", "--to", "1"], "");
    assert_eq!(ok(s, &["consume", "jobs", "--group", "g", "-n", "3"], ""), "two\nthree\nfour\n");
    let bad = strata(s, &["group", "reset", "g", "--topic", "jobs", "--to", "yesterday"], "");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("earliest, latest"), "{bad:?}");

    // A share group: each record once, acknowledged after printing.
    let mut got: Vec<String> =
        ok(s, &["consume", "jobs", "--share-group", "q", "-n", "4"], "").lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, ["four", "one", "three", "two"]);
    let d: serde_json::Value =
        serde_json::from_str(&ok(s, &["group", "describe", "q", "--format", "json"], "")).expect("json");
    assert_eq!(d["kind"], "share");
    assert_eq!((d["partitions"][0]["lag"].as_u64(), d["partitions"][0]["in_flight"].as_u64()), (Some(0), Some(0)));
}

/// Records per partition of `topic`, from `topic describe`.
fn records_per_partition(s: &str, topic: &str) -> Vec<u64> {
    let d: serde_json::Value =
        serde_json::from_str(&ok(s, &["topic", "describe", topic, "--format", "json"], "")).expect("json");
    d["partition_states"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["high_watermark"].as_u64().expect("high watermark"))
        .collect()
}

#[test]
fn lines_without_a_key_spread_over_every_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(dir.path());
    let s = server.addr.as_str();
    ok(s, &["topic", "create", "spread", "--partitions", "3"], "");
    // A linger longer than the run: the whole input fits in one batch, as
    // it does with the default 5 ms when the machine reads it fast enough.
    // The sticky partition used to move on only when a batch was sealed:
    // all 6,000 went to partition 0.
    let lines: String = (0..6_000).map(|i| format!("line-{i}\n")).collect();
    ok(s, &["produce", "spread", "--linger", "10s"], &lines);
    let per_partition = records_per_partition(s, "spread");
    eprintln!("records per partition: {per_partition:?}");
    assert_eq!(per_partition.iter().sum::<u64>(), 6_000, "{per_partition:?}");
    assert!(per_partition.iter().all(|n| *n > 0), "records per partition: {per_partition:?}");

    // Short-lived producers start at a random partition (each at partition
    // 0 before). 20 single records on one partition: odds of 3 in 3^20
    // with random starts.
    ok(s, &["topic", "create", "starts", "--partitions", "3"], "");
    for i in 0..20 {
        ok(s, &["produce", "starts"], &format!("record-{i}\n"));
    }
    let per_partition = records_per_partition(s, "starts");
    eprintln!("single records per partition: {per_partition:?}");
    assert_eq!(per_partition.iter().sum::<u64>(), 20, "{per_partition:?}");
    assert!(
        per_partition.iter().filter(|n| **n > 0).count() > 1,
        "every producer started at one partition: {per_partition:?}"
    );
}
