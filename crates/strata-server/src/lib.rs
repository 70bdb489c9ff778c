//! A Strata node: opens the storage layer, serves the `strata.v1` gRPC API
//! (plus the standard health and reflection services) and runs retention.
//!
//! Owns the gRPC edge: request validation and the single mapping from
//! storage errors to `tonic::Status` ([`status`]).

pub mod auth;
pub mod cluster;
mod convert;
pub mod groups;
pub mod incoming;
mod internal;
pub mod metrics;
mod replication;
pub mod request_log;
pub mod request_memory;
mod service;
pub mod status;
mod tracing_spans;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::v1::{
    admin_server::AdminServer, consumer_server::ConsumerServer, groups_server::GroupsServer,
    producer_server::ProducerServer,
};
use strata_storage::{LogManager, StorageError, Visibility};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tracing::info;

pub use cluster::{ClusterConfig, ClusterError, NodeIdentity};
pub use replication::{DEFAULT_REPLICATION_FACTOR, Replication};
pub use service::{FETCH_MAX_BYTES_DEFAULT, FETCH_MAX_BYTES_LIMIT, MAX_WAIT_LIMIT, Services};
pub use strata_raft::trace::HeadSampling;
pub use strata_storage::{LogConfig, StorageLimits};

/// Largest gRPC message accepted or sent (above the largest batch allowed).
pub const GRPC_MESSAGE_LIMIT: usize = strata_storage::MAX_MESSAGE_BYTES_LIMIT as usize + 1024 * 1024;

/// HTTP/2 flow-control windows (the 64 KiB default throttles large batches).
pub const H2_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Largest HTTP/2 frame peers may send this server. With the 16 KiB default
/// a 64 KiB batch (a produce request, a replicated entry) crosses the socket
/// as five frames, each its own `writev` and `recvfrom`s on the other side;
/// measured at half of peak on three nodes, that was most of the system
/// calls per request. A larger frame holds the connection a little longer
/// (1 MiB is under a millisecond on loopback or a 10 Gb/s link) before a
/// frame of another stream, a heartbeat say, can go.
pub const H2_MAX_FRAME: u32 = 1024 * 1024;

/// Most concurrent requests (HTTP/2 streams) one client connection may have
/// open; more wait for one to finish (the client's HTTP/2 stack queues them).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The id of a node that runs alone (no `--peers`).
pub const SINGLE_NODE_ID: strata_raft::NodeId = 1;

/// Settings of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The client listener (the public gRPC API).
    pub listen: SocketAddr,
    /// The address clients are sent to for this node (in metadata and
    /// `NOT_LEADER` answers); `None`: the client listener's address.
    pub advertised: Option<String>,
    pub data_dir: PathBuf,
    pub defaults: LogConfig,
    /// Floors under topic settings and the open segment files (operator only).
    pub storage: StorageLimits,
    pub retention_check_interval: Duration,
    /// The static cluster this node belongs to; `None`: a cluster of this
    /// node alone (id 1), with no cluster listener.
    pub cluster: Option<ClusterConfig>,
    /// Where the cluster listener binds; `None`: this node's address in
    /// the cluster's peer list.
    pub cluster_listen: Option<String>,
    /// How nodes prove who they are to each other.
    pub cluster_security: ClusterSecurity,
    /// The node-wide budget of request messages being received, in bytes
    /// (see [`request_memory`]).
    pub request_memory: u64,
    /// TLS on the client listener (`--tls-cert`, `--tls-key`,
    /// `--tls-client-ca`); `None`: plaintext.
    pub client_tls: Option<strata_tls::ServingTls>,
    /// Authentication and authorization (`--require-auth`).
    pub auth: auth::AuthConfig,
    /// The Prometheus metrics listener (`--metrics-listen`).
    pub metrics: metrics::MetricsConfig,
    /// Where the request log goes (`request_log`); `None`: no request log.
    pub request_log: Option<PathBuf>,
}

impl NodeConfig {
    /// A node alone (no cluster listener) on `listen`, with the default topic
    /// settings and storage limits, retention checked hourly: what embedding
    /// and tests start from (`NodeConfig { field: ..., ..NodeConfig::single(..) }`).
    pub fn single(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            advertised: None,
            data_dir,
            defaults: LogConfig::default(),
            storage: StorageLimits::default(),
            retention_check_interval: Duration::from_secs(3600),
            cluster: None,
            cluster_listen: None,
            cluster_security: ClusterSecurity::Insecure,
            request_memory: request_memory::DEFAULT_REQUEST_MEMORY_BYTES,
            client_tls: None,
            auth: auth::AuthConfig::default(),
            metrics: metrics::MetricsConfig::default(),
            request_log: None,
        }
    }
}

/// How the cluster listener and this node's connections to its peers are
/// secured.
#[derive(Debug, Clone)]
pub enum ClusterSecurity {
    /// Mutual TLS with certificates from the cluster's CA, each naming its
    /// node.
    Mutual(strata_tls::NodeTls),
    /// Plaintext, no authentication: anyone who reaches the cluster
    /// listener can take part in Raft (`--insecure-cluster`).
    Insecure,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Tls(#[from] strata_tls::TlsError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("startup task failed: {0}")]
    Startup(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Turns span recording on for this process, once the binary installed an
/// OpenTelemetry tracer provider (see `strata_raft::trace`): `head` says
/// which produce requests are traced.
pub fn enable_tracing(head: strata_raft::trace::HeadSampling) {
    strata_raft::trace::enable(head);
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    addr: SocketAddr,
    cluster_addr: Option<SocketAddr>,
    /// The metrics listener's address and server.
    metrics_server: Option<(SocketAddr, JoinHandle<()>)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServerError>>,
    /// The cluster listener's server and its stop signal.
    cluster_server: Option<Serving>,
    retention: JoinHandle<()>,
    group_timer: JoinHandle<()>,
    /// Client listener TLS, and the task that reloads its certificate.
    client_tls: Option<(strata_tls::ServingTls, JoinHandle<()>)>,
    logs: Arc<LogManager>,
    replication: Arc<Replication>,
    request_log: Option<Arc<request_log::RequestLog>>,
    /// The health service's statuses (NOT_SERVING from the start of a
    /// drain).
    health: tonic_health::server::HealthReporter,
}

impl Node {
    /// Recovers the data directory, binds, and starts serving. Returns once
    /// the node accepts connections.
    pub async fn start(config: NodeConfig) -> Result<Self, ServerError> {
        request_memory::check_limit(config.request_memory).map_err(ServerError::Startup)?;
        let (data_dir, defaults, limits) = (config.data_dir.clone(), config.defaults, config.storage);
        // Every partition is a Raft group: what consumers see moves when
        // entries are applied, not when they are fsync'd.
        let open = move || LogManager::open_with_limits(&data_dir, defaults, Visibility::Applied, limits);
        let logs = tokio::task::spawn_blocking(open).await.map_err(|e| ServerError::Startup(e.to_string()))??;
        let logs = Arc::new(logs);
        let bind_error = |addr: String| move |source| ServerError::Bind { addr, source };
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.map_err(bind_error(config.listen.to_string()))?;
        let addr = listener.local_addr().map_err(bind_error(config.listen.to_string()))?;
        let advertised = config.advertised.clone().unwrap_or_else(|| addr.to_string());
        // The cluster listener: Raft between nodes, never on the client
        // listener. A node alone has none.
        // A node alone (no peers, whatever its id) has none.
        let cluster_listener = match &config.cluster {
            Some(c) if c.peers.len() > 1 || config.cluster_listen.is_some() => {
                let at = config.cluster_listen.clone().unwrap_or_else(|| c.advertised().to_owned());
                let l = tokio::net::TcpListener::bind(&at).await.map_err(bind_error(at.clone()))?;
                Some(l)
            }
            _ => None,
        };
        let metrics_listener = match config.metrics.listen {
            Some(at) => match tokio::net::TcpListener::bind(at).await {
                Ok(l) => Some(l),
                Err(e) if !config.metrics.required && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::warn!(
                        %at,
                        "the default metrics address is in use (another node on this host?): this node serves no \
                         metrics; give it one with --metrics-listen"
                    );
                    None
                }
                Err(e) => return Err(bind_error(at.to_string())(e)),
            },
            None => None,
        };
        let cluster_addr = match &cluster_listener {
            Some(l) => Some(l.local_addr().map_err(bind_error("the cluster listener".into()))?),
            None => None,
        };
        let cluster = config.cluster.clone().unwrap_or_else(|| ClusterConfig::single(SINGLE_NODE_ID, addr.to_string()));
        let tls = match &config.cluster_security {
            ClusterSecurity::Mutual(tls) => Some(tls.clone()),
            ClusterSecurity::Insecure => None,
        };
        let identity = NodeIdentity::load_or_create(&config.data_dir, &cluster)?;
        let members = cluster.members();
        let replication =
            Replication::start(cluster, identity, config.data_dir.clone(), Arc::clone(&logs), advertised, tls.clone())
                .await?;

        let (stop_streams, streams_stop) = tokio::sync::watch::channel(false);
        let auth = auth::Auth::new(config.auth.clone(), replication.metadata_watch());
        let metrics = Arc::new(if config.metrics.listen.is_some() {
            metrics::Metrics::default()
        } else {
            metrics::Metrics::off()
        });
        let request_log =
            match &config.request_log {
                Some(path) => Some(request_log::RequestLog::open(path).map_err(|e| {
                    ServerError::Startup(format!("cannot open the request log {}: {e}", path.display()))
                })?),
                None => None,
            };
        let services = Services::new(
            Arc::clone(&logs),
            Arc::clone(&replication),
            Arc::clone(&auth),
            streams_stop.clone(),
            Arc::clone(&metrics),
        )
        .with_request_log(request_log.clone());
        let connections = incoming::Connections::default();
        let coordinator =
            groups::Coordinator::new(Arc::clone(&logs), Arc::clone(&replication), connections.in_process());
        let metrics_server = match metrics_listener {
            Some(listener) => {
                let at = listener.local_addr().map_err(bind_error("the metrics listener".into()))?;
                let collector = metrics::collect::NodeCollector::new(
                    Arc::clone(&logs),
                    Arc::clone(&replication),
                    Arc::clone(&coordinator),
                    connections.stats(),
                    config.metrics.partition_labels,
                )
                .with_request_log(request_log.clone());
                let exposition = Arc::new(metrics::Exposition::new(&metrics, logs.metrics(), collector));
                info!(addr = %at, "metrics served at http://{at}/metrics");
                Some((at, tokio::spawn(metrics::http::serve(listener, exposition))))
            }
            None => None,
        };
        let group_service =
            groups::service::GroupService::new(Arc::clone(&coordinator), Arc::clone(&auth), streams_stop);
        let security_service = auth::service::SecurityService::new(Arc::clone(&auth), Arc::clone(&replication));
        let (health, health_service) = tonic_health::server::health_reporter();
        let reporter = health.clone();
        health.set_serving::<ProducerServer<Services>>().await;
        health.set_serving::<ConsumerServer<Services>>().await;
        health.set_serving::<AdminServer<Services>>().await;
        health.set_serving::<GroupsServer<groups::service::GroupService>>().await;
        health.set_service_status("", ServingStatus::Serving).await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(strata_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServerError::Startup(e.to_string()))?;

        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            // Large windows: a produce request carries up to a whole batch.
            .initial_stream_window_size(Some(H2_STREAM_WINDOW))
            .initial_connection_window_size(Some(H2_CONNECTION_WINDOW))
            .max_frame_size(Some(H2_MAX_FRAME))
            // Bounded per connection: concurrent requests (HTTP/2 streams).
            // No keepalive pings from the node: their answers would keep
            // every connection busy, and one that sends nothing for
            // `incoming::CLIENT_IDLE_TIMEOUT` is closed (gone peers too).
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            // Bounded per node: the memory of request messages being received.
            .layer(request_memory::RequestMemoryLayer::new(request_memory::RequestMemory::new(config.request_memory)))
            .layer(auth::AuthLayer::new(Arc::clone(&auth)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ProducerServer::new(services.clone())
                    .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
                    .max_encoding_message_size(GRPC_MESSAGE_LIMIT),
            )
            .add_service(
                ConsumerServer::new(services.clone())
                    .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
                    .max_encoding_message_size(GRPC_MESSAGE_LIMIT),
            )
            .add_service(AdminServer::new(services.clone()))
            .add_service(group_service.clone().into_server())
            .add_service(security_service.into_server());
        let incoming = connections.accept(listener, incoming::MAX_CLIENT_CONNECTIONS, config.client_tls.clone());
        let client_tls = config.client_tls.clone().map(|tls| {
            let reloader = tokio::spawn(reload_certificates_every(tls.clone(), CERTIFICATE_CHECK_INTERVAL));
            (tls, reloader)
        });
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown_rx.await;
                    health.set_service_status("", ServingStatus::NotServing).await;
                    // Subscriptions, produce streams and long polls end now.
                    let _ = stop_streams.send(true);
                })
                .await
                .map_err(ServerError::from)
        });
        // Serving first: peers reach this node's groups while it joins.
        let cluster_server = match cluster_listener {
            Some(listener) => {
                let security = match &tls {
                    Some(t) => strata_tls::Security::Mutual { config: t.server_config(members.clone())?, members },
                    None => {
                        tracing::warn!(
                            "the cluster listener runs WITHOUT TLS (--insecure-cluster): anyone who reaches it \
                             can take part in Raft and destroy data; use it on a trusted network only"
                        );
                        strata_tls::Security::Insecure
                    }
                };
                let public = PublicServices { services, groups: group_service, auth: Arc::clone(&auth) };
                Some(serve_cluster(listener, security, replication.service(), public))
            }
            None => None,
        };
        replication.run().await?;
        if let Some((user, password)) = config.auth.bootstrap_user.clone() {
            tokio::spawn(auth::service::bootstrap_user(Arc::clone(&auth), Arc::clone(&replication), user, password));
        }
        let retention =
            tokio::spawn(retention_loop(Arc::clone(&logs), Arc::clone(&replication), config.retention_check_interval));
        let group_timer = tokio::spawn(groups::run_timer(Arc::clone(&coordinator)));
        info!(%addr, cluster = ?cluster_addr, data_dir = %config.data_dir.display(), "strata node serving");
        Ok(Self {
            addr,
            cluster_addr,
            metrics_server,
            shutdown: Some(shutdown_tx),
            server,
            cluster_server,
            retention,
            group_timer,
            client_tls,
            logs,
            replication,
            request_log,
            health: reporter,
        })
    }

    /// The first step of a graceful stop: the health service answers
    /// NOT_SERVING (load balancers and orchestrators stop sending), then
    /// every partition and the controller this node leads is handed over to
    /// a follower that holds its last entry (`strata_raft::handover`), for
    /// at most `within`. Requests are still served meanwhile (a write to a
    /// group being handed over is answered `NOT_LEADER`, which clients
    /// retry at the new leader). `progress` is told, about once a second,
    /// how many groups are still led here.
    pub async fn drain(&self, within: Duration, progress: impl FnMut(usize)) -> strata_raft::handover::Handover {
        self.health.set_service_status("", ServingStatus::NotServing).await;
        self.health.set_not_serving::<ProducerServer<Services>>().await;
        self.health.set_not_serving::<ConsumerServer<Services>>().await;
        self.health.set_not_serving::<AdminServer<Services>>().await;
        self.health.set_not_serving::<GroupsServer<groups::service::GroupService>>().await;
        self.replication.hand_over(within, progress).await
    }

    /// Closes and opens the request log's file again (after logrotate
    /// moved it; `SIGHUP` does this).
    pub fn reopen_request_log(&self) {
        if let Some(log) = &self.request_log {
            log.reopen();
        }
    }

    /// Reads the client listener's certificate and key again if their files
    /// changed (also done every [`CERTIFICATE_CHECK_INTERVAL`]; `SIGHUP`
    /// calls this at once). `Ok(false)`: unchanged, or no TLS.
    pub fn reload_certificates(&self) -> Result<bool, strata_tls::TlsError> {
        match &self.client_tls {
            Some((tls, _)) => reload_logged(tls),
            None => Ok(false),
        }
    }

    /// Resolves with the reason when the node must stop (it found that it
    /// must not take part in the cluster, e.g. its id was reused).
    pub fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.replication.fatal()
    }

    /// The address the node listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics listener's address (`None`: metrics are not served).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(at, _)| *at)
    }

    /// The cluster listener's address (`None`: a node alone has none).
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster_addr
    }

    /// Stops accepting requests, lets in-flight ones finish, closes the
    /// storage (every queued append completes) and returns.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.retention.abort();
        let _ = (&mut self.retention).await;
        self.group_timer.abort();
        let _ = (&mut self.group_timer).await;
        if let Some((_, server)) = self.metrics_server.take() {
            server.abort();
        }
        if let Some((_, reloader)) = &self.client_tls {
            reloader.abort();
        }
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.server).await {
            Ok(joined) => joined.map_err(|e| ServerError::Startup(e.to_string()))?,
            Err(_) => {
                tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; closing their connections");
                self.server.abort();
                Ok(())
            }
        };
        // The groups hold the partition logs: they stop before the logs close.
        self.replication.shutdown().await;
        if let Some((stop, server)) = self.cluster_server.take() {
            let _ = stop.send(());
            server.abort();
            let _ = server.await;
        }
        self.logs.close().await;
        served
    }
}

/// A server task and the signal that stops it.
type Serving = (oneshot::Sender<()>, JoinHandle<Result<(), ServerError>>);

/// Serves the Raft service on the cluster listener until told to stop.
/// The public services, served on the cluster listener too: to the peers'
/// own clients (their group coordinators) and to groups requests they
/// forward.
struct PublicServices {
    services: Services,
    groups: groups::service::GroupService,
    /// Callers there are nodes; the layer says so to the services' checks.
    auth: Arc<auth::Auth>,
}

/// Calls a peer may have reset (or this node refused) at once on one
/// cluster connection before the node closes it (h2's defaults: 20 and
/// 1,024). Still a bound: with `--insecure-cluster` anyone who reaches the
/// listener is a peer.
const CLUSTER_MAX_RESET_STREAMS: usize = 4096;

fn serve_cluster(
    listener: tokio::net::TcpListener,
    security: strata_tls::Security,
    service: strata_proto::internal::raft_server::RaftServer<strata_raft::RaftService>,
    public: PublicServices,
) -> Serving {
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = strata_tls::incoming(listener, security);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(H2_STREAM_WINDOW))
            .initial_connection_window_size(Some(H2_CONNECTION_WINDOW))
            .max_frame_size(Some(H2_MAX_FRAME))
            // A peer that vanished (power loss, cut cable) is noticed.
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            // Peers reset the calls whose deadline passed; a node behind on
            // thousands of elections has many such calls at once. h2's
            // defaults (against rapid-reset floods from strangers) would
            // then close the whole connection, failing every other call on
            // it, and make the node fall further behind.
            .http2_max_pending_accept_reset_streams(Some(CLUSTER_MAX_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(CLUSTER_MAX_RESET_STREAMS))
            .layer(auth::AuthLayer::new(public.auth))
            .add_service(service)
            .add_service(
                ProducerServer::new(public.services.clone())
                    .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
                    .max_encoding_message_size(GRPC_MESSAGE_LIMIT),
            )
            .add_service(
                ConsumerServer::new(public.services.clone())
                    .max_decoding_message_size(GRPC_MESSAGE_LIMIT)
                    .max_encoding_message_size(GRPC_MESSAGE_LIMIT),
            )
            .add_service(AdminServer::new(public.services))
            .add_service(public.groups.into_server())
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.await;
            })
            .await
            .map_err(ServerError::from)
    });
    (stop, server)
}

/// How often the client listener's certificate files are checked for a
/// change.
pub const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

fn reload_logged(tls: &strata_tls::ServingTls) -> Result<bool, strata_tls::TlsError> {
    match tls.reload_if_changed() {
        Ok(true) => {
            info!("the client listener's certificate changed on disk: new connections get the new one");
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the client listener's new certificate; the current one stays");
            Err(e)
        }
    }
}

async fn reload_certificates_every(tls: strata_tls::ServingTls, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = reload_logged(&tls);
    }
}

/// Every `every`: retention of the logs without consensus, then of every
/// replica this node holds (through its Raft group).
async fn retention_loop(logs: Arc<LogManager>, replication: Arc<Replication>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let local = Arc::clone(&logs);
        let _ = tokio::task::spawn_blocking(move || local.apply_retention(strata_storage::now_ms())).await;
        replication.apply_retention(strata_storage::now_ms()).await;
    }
}
