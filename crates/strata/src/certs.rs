//! `strata certs`: a cluster CA, and node and client certificates issued by
//! it, as PEM files in one folder (the layout `--cluster-tls-dir` reads).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use strata_tls::Authority;
use strata_tls::issue::node_stem;

/// Default folder of the certificate files.
pub const DEFAULT_DIR: &str = "strata-certs";

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a new cluster CA: DIR/ca.crt and DIR/ca.key (keep ca.key safe:
    /// whoever holds it can make node certificates).
    Ca {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Days the CA is valid for.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue node ID's certificate from the CA in --ca-dir: DIR/node-ID.crt
    /// and DIR/node-ID.key (it names the node as node-ID.strata.internal),
    /// and DIR/ca.crt if missing. Keep --ca-dir apart from DIR: DIR is what
    /// a node reads (--cluster-tls-dir), and the CA key must not reach it.
    Node {
        #[arg(long)]
        node_id: u64,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Where the CA's files are (default: DIR).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Extra host names or IP addresses for the certificate (repeat or
        /// comma-separate).
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// Days the certificate is valid for.
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Issue a server certificate for nodes' client listeners
    /// (`strata server --tls-cert --tls-key`): DIR/server.crt and
    /// DIR/server.key, naming the hosts clients connect to.
    Server {
        /// Host names or IP addresses clients use to reach the nodes
        /// (repeat or comma-separate), e.g. --host kafka1.example.com,10.0.0.1.
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
        /// Where to write server.crt and server.key (and ca.crt, if absent).
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The CA's folder (default: DIR).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Days the certificate is valid for.
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Issue a client certificate (subject CN=NAME) from DIR's CA:
    /// DIR/client-NAME.crt and DIR/client-NAME.key.
    Client {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Where the CA's files are (default: DIR).
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Ca { dir, days, force } => {
            let (cert, key) = Authority::create(days)?.issued().write(&dir, "ca", force)?;
            println!("wrote {} and {} (keep the key safe)", cert.display(), key.display());
        }
        CertsCommand::Node { node_id, dir, ca_dir, host, days, force } => {
            let ca_dir = ca_dir.unwrap_or_else(|| dir.clone());
            let (cert, key) = issue_node(&ca_dir, &dir, node_id, &host, days, force)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsCommand::Server { host, dir, ca_dir, days, force } => {
            let ca_dir = ca_dir.unwrap_or_else(|| dir.clone());
            let ca = Authority::load_dir(&ca_dir)
                .with_context(|| format!("no CA in {} (make one with `strata certs ca`)", ca_dir.display()))?;
            let (cert, key) = ca.server(&host, days)?.write(&dir, "server", force)?;
            copy_ca_cert(&ca, &dir)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsCommand::Client { name, dir, ca_dir, days, force } => {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                anyhow::bail!("a client name is letters, digits, '.', '_' and '-' (it names the files), not {name:?}");
            }
            let ca = Authority::load_dir(ca_dir.as_deref().unwrap_or(&dir))?;
            let (cert, key) = ca.client(&name, days)?.write(&dir, &format!("client-{name}"), force)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
    }
    Ok(())
}

/// Issues node `id`'s certificate from the CA in `ca_dir` into `dir`, with
/// the CA's certificate (not its key) beside it.
pub fn issue_node(
    ca_dir: &Path,
    dir: &Path,
    id: u64,
    hosts: &[String],
    days: u32,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if id == 0 {
        anyhow::bail!("node ids start at 1");
    }
    let ca = Authority::load_dir(ca_dir)
        .with_context(|| format!("no CA in {} (make one with `strata certs ca`)", ca_dir.display()))?;
    let written = ca.node(id, hosts, days)?.write(dir, &node_stem(id), force)?;
    copy_ca_cert(&ca, dir)?;
    Ok(written)
}

/// The CA's certificate beside what it issued (what peers and clients
/// trust), unless one is there.
fn copy_ca_cert(ca: &Authority, dir: &Path) -> anyhow::Result<()> {
    let ca_cert = dir.join("ca.crt");
    if !ca_cert.exists() {
        std::fs::write(&ca_cert, ca.cert_pem()).with_context(|| format!("cannot write {}", ca_cert.display()))?;
    }
    Ok(())
}

/// A CA in `ca_dir` and certificates for nodes 1..=n in `dir`, made if
/// missing (what `strata dev` runs on).
/// `strata dev --secure`'s certificate for the client listeners
/// (server.crt/.key in `dir`, for 127.0.0.1 and localhost), made once.
pub fn ensure_dev_server_cert(ca_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.join("server.crt").exists() {
        return Ok(());
    }
    let ca = Authority::load_dir(ca_dir)?;
    ca.server(&["127.0.0.1".into(), "localhost".into()], 825)?.write(dir, "server", true)?;
    copy_ca_cert(&ca, dir)
}

pub fn ensure_dev_certs(ca_dir: &Path, dir: &Path, n: u16) -> anyhow::Result<()> {
    if !ca_dir.join("ca.crt").exists() {
        Authority::create(3650)?.issued().write(ca_dir, "ca", false)?;
    }
    for id in 1..=u64::from(n) {
        if !dir.join(format!("{}.crt", node_stem(id))).exists() {
            issue_node(ca_dir, dir, id, &["localhost".into(), "127.0.0.1".into()], 825, true)?;
        }
    }
    Ok(())
}
