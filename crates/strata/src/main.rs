//! `strata`: the node (`strata server`), the command-line client (`topic`,
//! `produce`, `consume`) and the load generator (`bench`).

mod bench;
mod certs;
mod cli;
mod cluster;
mod config;
mod failover;
mod generate;
mod group;
mod group_bench;
mod log_limit;
mod partitions_bench;
mod rolling;
mod security;
mod systemd;
mod traces;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "strata", version, about = "Strata: a durable, partitioned, replicated log", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of every command that talks to a server.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Server address, HOST:PORT.
    #[arg(long, global = true, env = "STRATA_SERVER", default_value = strata_client::DEFAULT_SERVER)]
    pub server: String,
    /// Deadline of each request, e.g. 10s or 500ms.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: TlsOpts,
    /// Log in as this user (with --password; over TLS only).
    #[arg(long, global = true, env = "STRATA_USER", requires = "password")]
    pub user: Option<String>,
    /// The user's password (prefer STRATA_PASSWORD: a flag shows in `ps`).
    #[arg(long, global = true, env = "STRATA_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
    /// An API token (`strata token create`), sent as a bearer token (wins
    /// over --user and --password).
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// TLS towards the nodes (every client command's).
#[derive(Args, Debug, Clone)]
pub struct TlsOpts {
    /// Connect with TLS, trusting this CA's certificates (PEM).
    #[arg(long, global = true, env = "STRATA_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Connect with TLS, trusting the system's CAs (implied by --tls-ca,
    /// --tls-cert and an https:// server address).
    #[arg(long, global = true)]
    pub tls: bool,
    /// A client certificate to present (PEM; mutual TLS).
    #[arg(long, global = true, env = "STRATA_CLIENT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "STRATA_CLIENT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientOpts {
    /// How to connect, from the TLS flags.
    pub fn connect_options(&self) -> anyhow::Result<strata_client::ConnectOptions> {
        let t = &self.tls;
        let mut options = strata_client::ConnectOptions::with_tls_files(
            t.tls,
            t.tls_ca.clone(),
            t.tls_cert.clone(),
            t.tls_key.clone(),
        )?;
        options.credentials = match (&self.user, &self.password, &self.token) {
            (_, _, Some(token)) => strata_client::Credentials::Token(token.clone()),
            (Some(user), Some(password), None) => {
                strata_client::Credentials::Password { user: user.clone(), password: password.clone() }
            }
            _ => strata_client::Credentials::None,
        };
        Ok(options)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node.
    Server(ServerArgs),
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: cli::TopicCommand,
    },
    /// Produce one record per line of standard input.
    Produce {
        #[command(flatten)]
        client: ClientOpts,
        #[command(flatten)]
        args: cli::ProduceArgs,
    },
    /// Print records of a topic, one per line.
    Consume {
        #[command(flatten)]
        client: ClientOpts,
        #[command(flatten)]
        args: cli::ConsumeArgs,
    },
    /// Consumer and share groups: list, describe (lag), reset offsets.
    Group {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Cluster state: nodes, partition leaders, replica lag.
    Cluster {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Run a local cluster of several nodes (for trying replication).
    Dev(cluster::DevArgs),
    /// Users with passwords (authentication).
    User {
        #[command(flatten)]
        client: security::UserClientOpts,
        #[command(subcommand)]
        command: security::UserCommand,
    },
    /// API tokens for services and non-Rust clients.
    Token {
        #[command(flatten)]
        client: security::UserClientOpts,
        #[command(subcommand)]
        command: security::TokenCommand,
    },
    /// Access control lists (authorization).
    Acl {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: security::AclCommand,
    },
    /// Whether the node at --server serves clients (its gRPC health
    /// service): prints SERVING and exits 0, else prints why and exits 1.
    /// A container health check or load balancer probe.
    Health {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Who the node takes you for.
    Whoami {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Make a cluster CA and node or client certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Print a shell completion script, e.g. `strata completions bash >
    /// /etc/bash_completion.d/strata` (the Debian package installs them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (strata.1, strata-server.1, ...) into a folder.
    #[command(hide = true)]
    ManPages {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Measure produce or consume throughput and latency.
    Bench {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// TOML config file (see `strata server --print-default-config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Client listen address, HOST:PORT (overrides the config).
    #[arg(long)]
    listen: Option<String>,
    /// The address clients are sent to for this node (overrides the config).
    #[arg(long)]
    advertised_listen: Option<String>,
    /// Data directory (overrides the config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This node's id in its cluster, from 1 (overrides the config).
    #[arg(long)]
    node_id: Option<u64>,
    /// Every cluster member's CLUSTER listener as ID=HOST:PORT,... this node
    /// included, e.g. 1=10.0.0.1:7879,2=10.0.0.2:7879,3=10.0.0.3:7879
    /// (overrides the config).
    #[arg(long)]
    peers: Option<String>,
    /// Where this node's cluster listener binds (default: its entry in --peers).
    #[arg(long)]
    cluster_listen: Option<String>,
    /// Folder with the cluster's CA and this node's certificate and key
    /// (ca.crt, node-ID.crt, node-ID.key, as `strata certs` writes them).
    #[arg(long)]
    cluster_tls_dir: Option<PathBuf>,
    /// Run node-to-node traffic without TLS or authentication. Anyone who
    /// reaches a cluster listener can then destroy data: a trusted,
    /// isolated network only.
    #[arg(long)]
    insecure_cluster: bool,
    /// TLS on the client listener: the server certificate (PEM), reloaded
    /// when the file changes (overrides the config; STRATA_TLS_CERT).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM; STRATA_TLS_KEY).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Accept client certificates issued by this CA (PEM; STRATA_TLS_CLIENT_CA).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Require authentication on the client listener, and so authorize
    /// every request with ACLs (STRATA_REQUIRE_AUTH).
    #[arg(long)]
    require_auth: bool,
    /// Where Prometheus metrics are served, HOST:PORT (GET /metrics;
    /// overrides the config; STRATA_METRICS_LISTEN). Empty: no metrics.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Write a JSON line per produce and consume request to this file
    /// (overrides the config; STRATA_REQUEST_LOG). SIGHUP reopens it.
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Log format: text or json (overrides the config).
    #[arg(long)]
    log_format: Option<String>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
}

/// How long the process waits for blocking work left on its runtime once
/// `main`'s work is done.
const RUNTIME_SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Work still on the runtime's blocking threads (a node's logs are closed
    // by now) gets a moment, not as long as it likes: dropping the runtime
    // would wait for it without bound.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_WAIT);
    if let Err(e) = result {
        if is_broken_pipe(&e) {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server(args) => run_server(args).await,
        Command::Topic { client, command } => cli::topic(&client, command).await,
        Command::Produce { client, args } => cli::produce(&client, args).await,
        Command::Consume { client, args } => cli::consume(&client, args).await,
        Command::Bench { client, command } => bench::run(&client, command).await,
        Command::Cluster { client, command } => cluster::run(&client, command).await,
        Command::Group { client, command } => group::run(&client, command).await,
        Command::Dev(args) => cluster::dev(args).await,
        Command::Certs { command } => certs::run(command),
        Command::Completions { shell } => generate::completions::<Cli>(shell),
        Command::ManPages { dir } => {
            let n = generate::man_pages::<Cli>(&dir)?;
            eprintln!("strata: wrote {n} man pages into {}", dir.display());
            Ok(())
        }
        Command::User { client, command } => security::user(&client, command).await,
        Command::Token { client, command } => security::token(&client, command).await,
        Command::Acl { client, command } => security::acl(&client, command).await,
        Command::Whoami { client } => security::whoami(&client).await,
        Command::Health { client } => {
            if cli::connect(&client).await?.serving().await? {
                println!("SERVING");
                Ok(())
            } else {
                anyhow::bail!("NOT_SERVING: the node at {} is stopping or not ready", client.server)
            }
        }
    }
}

fn init_logging(format: &str, level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let limit = tracing_subscriber::filter::filter_fn(log_limit::allow);
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let layer = match (format == "json", systemd::stderr_is_journal()) {
        (true, _) => layer.json().boxed(),
        // journald stamps every line itself.
        (false, true) => layer.without_time().boxed(),
        (false, false) => layer.boxed(),
    };
    tracing_subscriber::registry().with(layer.with_filter(limit).with_filter(filter)).init();
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{}", config::DEFAULT_CONFIG);
        return Ok(());
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut config = config::ServerConfig::load(args.config.as_deref(), &env)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(peers) = args.peers {
        config.peers = peers;
    }
    if let Some(addr) = args.advertised_listen {
        config.advertised_listen = addr;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = addr;
    }
    if let Some(path) = args.request_log {
        config.request_log = path;
    }
    if let Some(addr) = args.cluster_listen {
        config.cluster_listen = addr;
    }
    if let Some(dir) = args.cluster_tls_dir {
        config.cluster_tls.dir = dir;
    }
    if args.insecure_cluster {
        config.insecure_cluster = true;
    }
    if args.require_auth {
        config.require_auth = true;
    }
    for (flag, key) in [
        (args.tls_cert, &mut config.tls_cert),
        (args.tls_key, &mut config.tls_key),
        (args.tls_client_ca, &mut config.tls_client_ca),
    ] {
        if let Some(path) = flag {
            *key = path;
        }
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    // Logging first: loading the configuration may warn (e.g. the CA's key
    // beside the node's certificate).
    init_logging(&config.log_format, &config.log_level);
    let node_config = config.node_config()?;
    let tracer_provider = match traces::settings(&config.traces, &env)? {
        Some(s) => {
            let provider = traces::install(&s, config.node_id)?;
            tracing::info!(endpoint = %s.endpoint, sampler = %s.sampler, ratio = s.ratio, "exporting traces over OTLP");
            Some(provider)
        }
        None => None,
    };
    let insecure = config.insecure_cluster && node_config.cluster.is_some();
    let client_tls = node_config.client_tls.is_some();
    let node = strata_server::Node::start(node_config).await?;
    let cluster = match node.cluster_addr() {
        Some(a) if insecure => format!("; cluster listener on {a} WITHOUT TLS (--insecure-cluster)"),
        Some(a) => format!("; cluster listener on {a} with mutual TLS"),
        None => String::new(),
    };
    eprintln!(
        "strata {} listening on {}{} (data in {}){cluster}",
        env!("CARGO_PKG_VERSION"),
        node.addr(),
        if client_tls { " with TLS" } else { "" },
        config.data_dir.display()
    );
    let mut fatal = node.fatal();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let serving = format!("serving clients on {}", node.addr());
    systemd::ready(&serving);
    let stopped = loop {
        tokio::select! {
            () = shutdown_signal() => break None,
            reason = fatal.wait_for(Option::is_some) => break reason.ok().and_then(|r| r.clone()),
            // SIGHUP (systemctl reload): read the client listener's
            // certificate again now, and reopen the request log.
            _ = hangup.recv() => {
                systemd::reloading();
                let _ = node.reload_certificates();
                node.reopen_request_log();
                systemd::ready(&serving);
            }
        }
    };
    systemd::stopping("stopping");
    if stopped.is_none() && config.handover_timeout_ms > 0 {
        let within = Duration::from_millis(config.handover_timeout_ms);
        eprintln!("strata: stopping: handing leaderships over (at most {within:?})");
        let started = std::time::Instant::now();
        let progress = |left: usize| {
            eprintln!("strata: {left} groups still led here");
            systemd::status(&format!("stopping: handing leaderships over, {left} groups still led here"));
        };
        let drained = tokio::select! {
            report = node.drain(within, progress) => Some(report),
            // A second signal: stop now.
            () = shutdown_signal() => None,
        };
        // Said also when the node led nothing (its leaderships had moved
        // away, e.g. after its own earlier restart): a stop always reports.
        if let Some(report) = drained {
            eprintln!(
                "strata: handed {} of {} led groups over in {:.1} s{}",
                report.led.saturating_sub(report.left.len()),
                report.led,
                started.elapsed().as_secs_f64(),
                if report.left.is_empty() {
                    String::new()
                } else {
                    format!("; {} left to the peers' failover", report.left.len())
                }
            );
        }
    }
    eprintln!("strata: shutting down");
    systemd::status("stopping: finishing requests, closing the logs");
    let closing = std::time::Instant::now();
    node.shutdown().await?;
    eprintln!("strata: stopped ({:.1} s to finish requests and close the logs)", closing.elapsed().as_secs_f64());
    if let Some(provider) = tracer_provider {
        // The spans still buffered go out (bounded by the exporter's timeout).
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    match stopped {
        Some(reason) => anyhow::bail!("{reason}"),
        None => Ok(()),
    }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_ago_is_the_value_of_from_not_a_flag() {
        let cli = Cli::try_parse_from(["strata", "consume", "orders", "--format", "json", "--from", "-15m"])
            .expect("--from -15m parses");
        match cli.command {
            Command::Consume { args, .. } => assert_eq!(args.from, "-15m"),
            other => panic!("parsed as {other:?}"),
        }
        // Flags after it are still flags.
        let cli = Cli::try_parse_from(["strata", "consume", "orders", "--from", "-1h", "-n", "3"]).expect("parses");
        match cli.command {
            Command::Consume { args, .. } => assert_eq!((args.from.as_str(), args.max_messages), ("-1h", Some(3))),
            other => panic!("parsed as {other:?}"),
        }
    }
}
