//! `strata cluster rolling-restart` and `strata cluster wait-healthy`
//! against three real `strata server` processes on loopback, under a
//! producer per partition (acks=quorum, the client's routed produce).
//!
//! The restart command the CLI runs (`--exec`) asks this test to restart a
//! node: it writes `restart-ID` into a folder and waits for `done-ID`; the
//! test stops the node with SIGTERM (it hands its leaderships over),
//! starts it again and answers. So the CLI is driven exactly as it drives
//! `systemctl restart` (a command that returns once the node is back).

mod common;

use std::time::{Duration, Instant};

use common::{BIN, Cluster, Producers, assert_stored};
use strata_client::{Client, TopicConfig};

const PARTS: u32 = 6;

/// The restart command: asks the test and waits (at most 3 minutes) for its
/// answer.
const RESTART_SCRIPT: &str = r#"#!/bin/sh
set -e
dir=$(dirname "$0")
: > "$dir/restart-$1"
n=0
until [ -e "$dir/done-$1" ]; do
  n=$((n + 1))
  [ "$n" -lt 1800 ] || { echo "no answer for node $1" >&2; exit 1; }
  sleep 0.1
done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_restarts_every_node_once_in_turn_and_producers_see_no_error() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    let client = Client::connect(&bootstrap).await.expect("connect");
    let topic = "rolling";
    client.create_topic_replicated(topic, PARTS, Some(3), TopicConfig::default()).await.expect("create");

    // wait-healthy: healthy now; with node 3 down it says what is wrong and
    // fails within its --wait.
    let out = cli(&bootstrap, &["cluster", "wait-healthy", "--wait", "60s"]);
    assert!(out.status.success(), "wait-healthy: {}", text(&out));
    assert!(text(&out).contains("healthy: 3 of 3 nodes up"), "{}", text(&out));
    let (exit, _) = tokio::task::block_in_place(|| cluster.stop(3));
    assert!(exit.success());
    let out = cli(&bootstrap, &["cluster", "wait-healthy", "--wait", "2s"]);
    assert!(!out.status.success(), "healthy with a node down: {}", text(&out));
    assert!(text(&out).contains("not healthy") && text(&out).contains("down: 3"), "{}", text(&out));
    tokio::task::block_in_place(|| cluster.restart(3));

    let mut producers = Producers::start(&client, topic, PARTS);

    // A node not in the cluster is refused before anything restarts.
    let asks = tempfile::tempdir().expect("tempdir");
    let script = asks.path().join("restart.sh");
    std::fs::write(&script, RESTART_SCRIPT).expect("script");
    let exec = format!("sh {} {{node}}", script.display());
    // Off the runtime's workers: the producers' tasks go on meanwhile.
    let out = tokio::task::block_in_place(|| {
        cli(&bootstrap, &["cluster", "rolling-restart", "--exec", &exec, "--nodes", "1,9"])
    });
    assert!(!out.status.success() && text(&out).contains("node 9 is not in the cluster"), "{}", text(&out));

    let term_before = client.metadata(&[]).await.expect("metadata").controller_term;
    let mut rolling = tokio::process::Command::new(BIN)
        .args(["cluster", "rolling-restart", "--exec", &exec, "--wait", "120s"])
        .env("STRATA_SERVER", &bootstrap)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn rolling-restart");
    // Answer the command's requests until it ends.
    let mut restarted = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = rolling.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the rolling restart did not end within 10 minutes");
        for id in 1..=3u64 {
            let ask = asks.path().join(format!("restart-{id}"));
            if ask.exists() {
                std::fs::remove_file(&ask).expect("rm");
                let (exit, lines) = tokio::task::block_in_place(|| cluster.stop(id));
                assert!(exit.success(), "node {id} exited with {exit:?}");
                let handed = lines.iter().find(|l| l.contains("led groups over")).cloned();
                let handed = handed.unwrap_or_else(|| panic!("node {id} did not report its handover"));
                eprintln!("node {id} stopped: {handed}");
                assert!(!handed.contains("left to the peers"), "node {id}: {handed}");
                tokio::task::block_in_place(|| cluster.restart(id));
                restarted.push(id);
                std::fs::write(asks.path().join(format!("done-{id}")), b"").expect("answer");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stdout = String::new();
    if let Some(mut out) = rolling.stdout.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout).await.expect("stdout");
    }
    eprintln!("{stdout}");
    assert!(status.success(), "rolling-restart failed: {stdout}");
    // Every node once, in id order, the controller's leader (as the CLI
    // found it when it planned) last.
    let controller: u64 = stdout
        .split_once(" leads the controller)")
        .and_then(|(before, _)| before.rsplit_once("(node ")?.1.parse().ok())
        .unwrap_or_else(|| panic!("no controller leader in the plan: {stdout}"));
    let mut expected: Vec<u64> = (1..=3).filter(|id| *id != controller).collect();
    expected.push(controller);
    assert_eq!(restarted, expected, "the controller's leader ({controller}) last");
    let term_after = client.metadata(&[]).await.expect("metadata").controller_term;
    eprintln!("controller term {term_before} -> {term_after} over the rolling restart");
    for (i, id) in expected.iter().enumerate() {
        assert!(stdout.contains(&format!("[{}/3] restarting node {id}", i + 1)), "{stdout}");
    }
    assert!(stdout.contains("rolling restart done: 3 nodes"), "{stdout}");

    // Producers went on through it all without an error, and every record
    // acknowledged is there at its offset.
    producers.wait_for(producers.acknowledged() + 100).await;
    let (errors, acked) = producers.stop().await;
    assert!(errors.is_empty(), "producers saw errors during the rolling restart: {errors:?}");
    assert_stored(&client, topic, PARTS, &acked).await;
}

/// A new cluster whose third member has not started yet is not healthy,
/// though every registered node is up and every partition in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_healthy_waits_for_a_configured_member_that_never_registered() {
    let mut cluster = Cluster::start_nodes(3, &[1, 2], &[]);
    let bootstrap = cluster.bootstrap();
    let client = Client::connect(&bootstrap).await.expect("connect");
    client.create_topic_replicated("two", 2, Some(2), TopicConfig::default()).await.expect("create");
    let out = tokio::task::block_in_place(|| cli(&bootstrap, &["cluster", "wait-healthy", "--wait", "5s"]));
    assert!(!out.status.success(), "healthy without node 3: {}", text(&out));
    assert!(text(&out).contains("2 of 2 nodes up, 3 not registered yet"), "{}", text(&out));
    let out = tokio::task::block_in_place(|| {
        cli(&bootstrap, &["cluster", "rolling-restart", "--exec", "true", "--nodes", "3", "--dry-run"])
    });
    assert!(!out.status.success() && text(&out).contains("node 3 has not registered"), "{}", text(&out));
    let out = tokio::task::block_in_place(|| cli(&bootstrap, &["cluster", "status", "--format", "json"]));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cluster status json");
    let node3 = status["nodes"].as_array().expect("nodes").iter().find(|n| n["node_id"] == 3).cloned();
    assert_eq!(node3.map(|n| (n["registered"].clone(), n["alive"].clone())), Some((false.into(), false.into())));

    tokio::task::block_in_place(|| cluster.restart(3));
    let out = tokio::task::block_in_place(|| cli(&bootstrap, &["cluster", "wait-healthy", "--wait", "60s"]));
    assert!(out.status.success(), "wait-healthy after node 3 started: {}", text(&out));
    assert!(text(&out).contains("healthy: 3 of 3 nodes up"), "{}", text(&out));
}

fn cli(server: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env("STRATA_SERVER", server)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run strata")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
