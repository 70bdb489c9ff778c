//! One produce on a three-node cluster, traced end to end: a real OTLP/gRPC
//! trace receiver in the test (the `opentelemetry-proto` service) gets the
//! spans of the client (this process, through the OpenTelemetry SDK and
//! the OTLP exporter) and of the three `strata server` processes, and the
//! test checks the chain: the client's `send orders` span, the leader's
//! `send orders` under it, the leader's `strata.commit` and `strata.fsync`
//! under that, a `strata.replicate to node N` per follower under it too,
//! and each follower's `strata.fsync` under its replicate span; then the
//! consumer's `receive orders` span links back to the client's span.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ClusterPorts, ServerProcess, seed};
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use strata_client::{Client, PartitionConsumer, StartOffset, TopicConfig, proto};

/// A span as received, with the service instance that sent it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    service: String,
    instance: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    links: Vec<(Vec<u8>, Vec<u8>)>,
    attributes: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let attrs: HashMap<String, String> =
                rs.resource.iter().flat_map(|r| &r.attributes).map(|kv| (kv.key.clone(), text(&kv.value))).collect();
            let service = attrs.get("service.name").cloned().unwrap_or_default();
            let instance = attrs.get("service.instance.id").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Received {
                        name: s.name,
                        service: service.clone(),
                        instance: instance.clone(),
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        links: s.links.into_iter().map(|l| (l.trace_id, l.span_id)).collect(),
                        attributes: s.attributes.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect(),
                    });
                }
            }
        }
        if let Ok(mut all) = self.0.lock() {
            all.extend(got);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_produce_is_traced_from_the_client_through_every_replica_and_the_consumer_links_back() {
    let _ = seed();
    // The receiver.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let receiver = Receiver::default();
    let spans = Arc::clone(&receiver.0);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // Three nodes exporting to it, sampling 1% of new traces (and every
    // trace whose caller sampled it).
    let ports = ClusterPorts::new(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.clone()),
        ("OTEL_TRACES_SAMPLER".to_owned(), "parentbased_traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG".to_owned(), "0.01".to_owned()),
    ];
    let _nodes: Vec<_> =
        (1..=3).map(|id| ServerProcess::start_node_with(dirs[id as usize - 1].path(), id, &ports, &env)).collect();

    // The client: this process's own tracer provider, every trace sampled.
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&endpoint).build().expect("exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("orders-app").build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let client = Client::connect(&ports.bootstrap()).await.expect("connect");
    client.create_topic_replicated("orders", 1, Some(3), TopicConfig::default()).await.expect("create");
    let leader = common::leader_of(&client, "orders", 0).await;
    let record = proto::Record { key: None, value: b"order 1".to_vec().into(), ..Default::default() };
    let app = provider.tracer("orders-app");
    let checkout = app.start("checkout");
    let cx = opentelemetry::Context::current_with_span(checkout);
    // `produce_records` goes to the node it is called on: the leader's.
    let at_leader = client.partition_leader("orders", 0).await.expect("the leader's client");
    let appends = {
        let _attached = cx.clone().attach();
        at_leader.produce_records("orders", Some(0), vec![record]).await.expect("produce")
    };
    assert_eq!(appends.len(), 1);
    cx.span().end();

    // Consumed: the receive span links back.
    let mut consumer =
        PartitionConsumer::new(client.clone(), "orders", 0, StartOffset::Earliest).await.expect("consumer");
    let deadline = std::time::Instant::now() + common::WAIT;
    let got = loop {
        let polled = consumer.poll().await.expect("poll");
        if !polled.is_empty() {
            break polled;
        }
        assert!(std::time::Instant::now() < deadline, "the record was not consumed");
    };
    assert!(strata_client::trace::context_of(&got[0]).is_some(), "the record carries the producer's context");
    provider.force_flush().expect("flush the client's spans");

    let find = |all: &[Received], name: &str, service: &str| -> Vec<Received> {
        all.iter().filter(|s| s.name == name && s.service == service).cloned().collect()
    };
    // Each node exports in batches (every 5 s by default): wait for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let all = spans.lock().expect("spans").clone();
        let fsyncs = find(&all, "strata.fsync", "strata").len();
        let replicates = all.iter().filter(|s| s.name.starts_with("strata.replicate")).count();
        let commits = find(&all, "strata.commit", "strata").len();
        if fsyncs >= 3 && replicates >= 2 && commits >= 1 && !find(&all, "receive orders", "orders-app").is_empty() {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spans missing after 60 s: {} fsync, {} replicate, {} commit; got {:#?}",
            fsyncs,
            replicates,
            commits,
            all.iter().map(|s| (&s.name, &s.service, &s.instance)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The chain.
    let client_send = find(&all, "send orders", "orders-app");
    assert_eq!(client_send.len(), 1, "one client send span");
    let client_send = &client_send[0];
    let broker = find(&all, "send orders", "strata");
    assert_eq!(broker.len(), 1, "one broker send span: {broker:#?}");
    let broker = &broker[0];
    assert_eq!(broker.trace_id, client_send.trace_id, "the broker continues the client's trace");
    assert_eq!(broker.parent, client_send.span_id, "the broker's span is the client's child");
    assert_eq!(broker.instance, leader.to_string(), "the leader serves the produce");
    assert_eq!(broker.attributes.get("messaging.system").map(String::as_str), Some("strata"));
    assert_eq!(broker.attributes.get("messaging.destination.name").map(String::as_str), Some("orders"));
    assert_eq!(broker.attributes.get("messaging.operation.type").map(String::as_str), Some("send"));
    let commit = find(&all, "strata.commit", "strata");
    assert!(commit.iter().any(|c| c.parent == broker.span_id && c.instance == broker.instance), "{commit:#?}");
    let fsyncs = find(&all, "strata.fsync", "strata");
    let leader_fsync = fsyncs.iter().filter(|f| f.instance == broker.instance && f.parent == broker.span_id).count();
    assert_eq!(leader_fsync, 1, "the leader's fsync is under the request: {fsyncs:#?}");
    for follower in (1..=3u64).filter(|id| *id != leader) {
        let name = format!("strata.replicate to node {follower}");
        let replicate: Vec<_> = all.iter().filter(|s| s.name == name).collect();
        assert_eq!(replicate.len(), 1, "{name}: {replicate:#?}");
        let replicate = replicate[0];
        assert_eq!(replicate.parent, broker.span_id, "replication is under the request");
        assert_eq!(replicate.instance, broker.instance);
        let theirs: Vec<_> = fsyncs.iter().filter(|f| f.instance == follower.to_string()).collect();
        assert_eq!(theirs.len(), 1, "node {follower}'s fsync: {fsyncs:#?}");
        assert_eq!(theirs[0].parent, replicate.span_id, "node {follower}'s fsync is under its replication");
        assert_eq!(theirs[0].trace_id, client_send.trace_id);
        assert_eq!(theirs[0].attributes.get("messaging.destination.partition.id").map(String::as_str), Some("0"));
    }
    let receive = find(&all, "receive orders", "orders-app");
    assert!(
        receive.iter().any(|r| r.links.contains(&(client_send.trace_id.clone(), client_send.span_id.clone()))),
        "the consumer's span links to the producer's: {receive:#?}"
    );
    let _ = provider.shutdown();
}
