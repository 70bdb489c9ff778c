//! What an attacker on the network can do to a three-process cluster
//! (issue 19's findings 1-3), with real processes on loopback:
//!
//! - Without a node certificate, the internal Raft service cannot be
//!   reached at all: the client port does not serve it (`UNIMPLEMENTED`),
//!   and the cluster port refuses a plaintext client, a client certificate,
//!   another CA's node certificate, and no certificate (the TLS handshake
//!   fails).
//! - With a valid node certificate (a member's), a garbage controller
//!   proposal, a command with settings the public API refuses, a proposal
//!   to a partition, out-of-range votes, a vote for another node, a
//!   leadership transfer, a snapshot under a forged vote and an append with
//!   a forged term are each refused with `INVALID_ARGUMENT`, and the cluster
//!   keeps serving every acknowledged record, also after every node is
//!   restarted.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ClusterPorts, ServerProcess, WAIT, leader_of};
use futures::StreamExt;
use strata_client::{Client, Compression, Record, StartOffset, TopicConfig};
use strata_proto::internal as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const RECORDS: usize = 30;

struct Cluster {
    ports: ClusterPorts,
    nodes: Vec<Option<ServerProcess>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = ClusterPorts::new(3);
        let mut cluster = Self { ports, nodes: vec![None, None, None], dir };
        for id in 1..=3 {
            cluster.restart(id);
        }
        cluster
    }

    fn restart(&mut self, id: u64) {
        let data = self.dir.path().join(format!("node-{id}"));
        self.nodes[id as usize - 1] = Some(ServerProcess::start_node(&data, id, &self.ports));
    }

    fn stop_all(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            node.kill();
        }
    }
}

fn record(value: &str) -> Bytes {
    let r = Record { value: Bytes::from(value.to_owned()), ..Record::default() };
    strata_record::encode(&[r], Compression::None)
}

/// A certificate and its key, PEM.
type CertAndKey = (Vec<u8>, Vec<u8>);

/// A channel to `addr` over TLS trusting `ca`, presenting `identity` (if
/// any), expecting the server to be node `target`.
async fn tls_channel(addr: &str, ca: &[u8], identity: Option<CertAndKey>, target: u64) -> Result<Channel, String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(strata_tls::node_name(target));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

async fn identify(channel: Channel) -> Result<pb::IdentifyResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::IdentifyRequest {});
    request.set_timeout(Duration::from_secs(5));
    pb::raft_client::RaftClient::new(channel).identify(request).await.map(tonic::Response::into_inner)
}

fn read(path: std::path::PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every record of `topic` partition 0 as node `addr` serves it, once
/// `expected` records are there (at most [`WAIT`]).
async fn values_at(addr: &str, topic: &str, expected: usize) -> Vec<String> {
    let client = Client::connect(addr).await.expect("connect").with_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + WAIT;
    loop {
        let mut out = Vec::new();
        let mut offset = 0;
        while let Ok(r) = client.fetch(topic, 0, offset, 1 << 20, Duration::ZERO).await {
            if r.records.is_empty() {
                break;
            }
            offset = r.next_offset;
            out.extend(r.records.iter().map(|r| String::from_utf8_lossy(&r.value).into_owned()));
        }
        if out.len() >= expected || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_service_is_out_of_reach_without_a_node_certificate() {
    let cluster = Cluster::start();
    let tls = cluster.ports.tls_dir().to_owned();
    let ca = read(tls.join("ca.crt"));
    let node1 = cluster.ports.cluster_addr(1);

    // The client port does not serve the Raft service at all.
    let channel = Endpoint::from_shared(format!("http://{}", cluster.ports.addr(1)))
        .expect("endpoint")
        .connect()
        .await
        .expect("the client port takes plaintext gRPC");
    let status = identify(channel).await.expect_err("Raft on the client port");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // Plaintext to the cluster port: no gRPC answer.
    let plain =
        Endpoint::from_shared(format!("http://{node1}")).expect("endpoint").connect_timeout(Duration::from_secs(5));
    match plain.connect().await {
        Err(_) => {}
        Ok(channel) => {
            let status = identify(channel).await.expect_err("plaintext on the cluster port");
            assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
        }
    }

    // TLS without a certificate, with a client certificate, with another
    // CA's node certificate: the handshake fails (tonic may report it at
    // connect or at the first call).
    let ca_dir = cluster.ports.ca_dir();
    let ca_dir = ca_dir.to_str().expect("utf-8");
    common::run_ok(&[
        "certs",
        "client",
        "--name",
        "mallory",
        "--ca-dir",
        ca_dir,
        "--dir",
        tls.to_str().expect("utf-8"),
    ]);
    let other = tempfile::tempdir().expect("tempdir");
    let other_dir = other.path().to_str().expect("utf-8");
    common::run_ok(&["certs", "ca", "--dir", other_dir]);
    common::run_ok(&["certs", "node", "--node-id", "2", "--dir", other_dir]);
    let attempts: Vec<(&str, Option<CertAndKey>)> = vec![
        ("no certificate", None),
        ("a client certificate", Some((read(tls.join("client-mallory.crt")), read(tls.join("client-mallory.key"))))),
        (
            "another CA's node certificate",
            Some((read(other.path().join("node-2.crt")), read(other.path().join("node-2.key")))),
        ),
    ];
    for (what, identity) in attempts {
        match tls_channel(&node1, &ca, identity, 1).await {
            Err(e) => eprintln!("{what}: refused at connect: {e}"),
            Ok(channel) => {
                // TLS 1.3: the client learns of the refused certificate
                // from the server's alert or its closing the connection, at
                // the transport, before any gRPC answer.
                let status = identify(channel).await.expect_err(what);
                eprintln!("{what}: refused: {status:?}");
                let transport = format!("{status:?}").contains("tonic::transport::Error");
                assert!(transport, "{what}: refused by the transport, not by the service: {status:?}");
            }
        }
    }

    // A member's certificate gets in: the cluster port itself works.
    let identity = Some((read(tls.join("node-2.crt")), read(tls.join("node-2.key"))));
    let channel = tls_channel(&node1, &ca, identity, 1).await.expect("a member connects");
    assert_eq!(identify(channel).await.expect("identify").node_id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_certificate_cannot_wipe_brick_or_stall_the_cluster() {
    let mut cluster = Cluster::start();
    let admin = Client::connect(&cluster.ports.bootstrap()).await.expect("connect");
    let topic = admin.create_topic_replicated("precious", 1, Some(3), TopicConfig::default()).await.expect("create");
    let mut acked = Vec::new();
    for i in 0..RECORDS {
        let value = format!("r{i}");
        admin.produce_batch("precious", 0, record(&value)).await.expect("produce with acks=quorum");
        acked.push(value);
    }

    // Node 2's certificate, against node 1 (and 3): a compromised or buggy
    // member.
    let tls = cluster.ports.tls_dir().to_owned();
    let ca = read(tls.join("ca.crt"));
    let as_node2 = Some((read(tls.join("node-2.crt")), read(tls.join("node-2.key"))));
    let partition = pb::GroupId { topic_id: topic.topic_id, partition: 0 };
    let controller = pb::GroupId { topic_id: 0, partition: 0 };
    for target in [1u64, 3] {
        let channel = tls_channel(&cluster.ports.cluster_addr(target), &ca, as_node2.clone(), target)
            .await
            .expect("a member connects");
        let mut raft = pb::raft_client::RaftClient::new(channel);
        let cluster_id = raft.identify(pb::IdentifyRequest {}).await.expect("identify").into_inner().cluster_id;
        let refused = |what: &str, r: Result<(), tonic::Status>| {
            let status = r.expect_err(what);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}: {status:?}");
            eprintln!("node {target}: {what}: {}", status.message());
        };

        // Finding 2: a batch with a valid CRC that is not a command, to the
        // controller; and any proposal to a partition.
        for (what, group) in [("garbage to the controller", controller), ("a proposal to a partition", partition)] {
            let req = pb::ProposeRequest {
                group: Some(group),
                target,
                cluster_id: cluster_id.clone(),
                batch: record("not a command"),
            };
            refused(what, raft.propose(req).await.map(drop));
        }

        // A well-formed command that the public API would refuse: 1 KiB
        // segments (a node's files would run out).
        let tiny = r#"{"CreateTopic":{"name":"tiny","replicas":[[1,2,3]],"overrides":{"segment_bytes":1024}}}"#;
        let req =
            pb::ProposeRequest { group: Some(controller), target, cluster_id: cluster_id.clone(), batch: record(tiny) };
        refused("a topic with 1 KiB segments", raft.propose(req).await.map(drop));

        // Finding 3: a leadership-transfer vote with term u64::MAX and a
        // huge last log id; a vote of 2^63; a vote for another node.
        let vote = |term: u64, voted_for: u64, last: Option<(u64, u64)>, transfer: bool| pb::VoteRequest {
            group: Some(partition),
            target,
            cluster_id: cluster_id.clone(),
            vote: Some(pb::Vote { term, voted_for, committed: false }),
            last_log_id: last.map(|(term, index)| pb::LogId { term, index }),
            leadership_transfer: transfer,
        };
        refused(
            "a vote of term u64::MAX",
            raft.vote(vote(u64::MAX, 2, Some((u64::MAX, u64::MAX)), true)).await.map(drop),
        );
        refused("a vote of term 2^63", raft.vote(vote(1 << 63, 2, None, false)).await.map(drop));
        refused("a pre-vote of term u64::MAX", raft.pre_vote(vote(u64::MAX, 2, None, false)).await.map(drop));
        refused(
            "a vote for node 3 from node 2",
            raft.vote(vote(1000, 3, Some((1000, 1 << 40)), false)).await.map(drop),
        );
        refused("a vote just under 2^63", raft.vote(vote((1 << 63) - 1, 2, None, false)).await.map(drop));
        // A leadership-transfer vote that no leader asked for (it would pass
        // every voter's lease): never granted.
        let answer = raft.vote(vote(1000, 2, Some((1000, 1 << 40)), true)).await.expect("answered");
        assert!(!answer.get_ref().vote_granted, "an unasked-for transfer vote was granted");
        refused("a pre-vote for a leadership transfer", raft.pre_vote(vote(1000, 2, None, true)).await.map(drop));
        // Handovers: under a leader's vote this replica does not hold, in
        // another node's name, or to a stranger.
        let handover = |term: u64, leader: u64, to: u64| pb::TransferLeaderRequest {
            group: Some(partition),
            target,
            cluster_id: cluster_id.clone(),
            from_leader: Some(pb::Vote { term, voted_for: leader, committed: true }),
            to,
            last_log_id: Some(pb::LogId { term, index: 1 << 40 }),
        };
        let answer = raft.transfer_leader(handover(1000, 2, target)).await.expect("answered").into_inner();
        assert!(answer.refused.contains("not the handing leader's"), "a forged leader's handover: {answer:?}");
        refused("a handover in node 3's name", raft.transfer_leader(handover(1000, 3, 1)).await.map(drop));
        refused("a handover to a stranger", raft.transfer_leader(handover(1000, 2, 9)).await.map(drop));
        refused(
            "a last log id beyond the vote's term",
            raft.vote(vote(1000, 2, Some((1001, 5)), false)).await.map(drop),
        );

        // Finding 1: a unary snapshot of the partition claiming an entry far
        // beyond the log, with a higher vote.
        // (A committed leader id is its term alone with standard Raft.)
        let meta = serde_json::json!({
            "last_log_id": { "leader_id": 1000, "index": 1_000_000 },
            "last_membership": { "log_id": null, "membership": { "configs": [], "nodes": {} } },
            "snapshot_id": "forged"
        });
        let snapshot = pb::InstallSnapshotRequest {
            group: Some(partition),
            target,
            cluster_id: cluster_id.clone(),
            vote: Some(pb::Vote { term: 1000, voted_for: 2, committed: true }),
            meta_json: serde_json::to_vec(&meta).expect("json").into(),
            data_json: br#"{"next_offset": 0}"#.to_vec().into(),
        };
        let status = raft.install_snapshot(snapshot).await.expect_err("a unary snapshot of a partition");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("this replica follows"), "decoded, then refused: {status:?}");

        // An append with an entry of a term beyond its vote, and one whose
        // vote is out of range.
        let append = |term: u64, entry_term: u64| pb::AppendEntriesRequest {
            group: Some(partition),
            target,
            cluster_id: cluster_id.clone(),
            vote: Some(pb::Vote { term, voted_for: 2, committed: true }),
            prev_log_id: None,
            entries: vec![pb::Entry {
                id: Some(pb::LogId { term: entry_term, index: 0 }),
                batch: record("x"),
                traceparent: Default::default(),
            }],
            leader_commit: None,
            sender_incarnation: 1,
        };
        refused("an entry beyond the vote's term", raft.append_entries(append(1000, 1001)).await.map(drop));
        refused("an append of term u64::MAX", raft.append_entries(append(u64::MAX, 1)).await.map(drop));
    }

    // Every acknowledged record is still there, on every node, and the
    // partition takes more.
    admin.produce_batch("precious", 0, record("after")).await.expect("the partition still has a leader");
    acked.push("after".into());
    for id in 1..=3 {
        assert_eq!(values_at(&cluster.ports.addr(id), "precious", acked.len()).await, acked, "node {id}");
    }

    // ... also after every node is restarted (nothing bad was persisted).
    cluster.stop_all();
    for id in 1..=3 {
        cluster.restart(id);
    }
    let admin = Client::connect(&cluster.ports.bootstrap()).await.expect("connect");
    leader_of(&admin, "precious", 0).await;
    admin.produce_batch("precious", 0, record("restarted")).await.expect("produce after the restart");
    acked.push("restarted".into());
    for id in 1..=3 {
        assert_eq!(
            values_at(&cluster.ports.addr(id), "precious", acked.len()).await,
            acked,
            "node {id} after restarts"
        );
    }
    let mut records = admin.subscribe("precious", 0, StartOffset::Earliest).await.expect("subscribe");
    assert!(records.next().await.is_some(), "subscriptions work too");
}
