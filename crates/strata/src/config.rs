//! Node configuration: embedded defaults, then a TOML file, then `STRATA_*`
//! environment variables, then flags.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;
use strata_server::NodeConfig;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The longest leadership handover a stop may take.
pub const MAX_HANDOVER_TIMEOUT_MS: u64 = 600_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub advertised_listen: String,
    pub node_id: u64,
    pub peers: String,
    pub cluster_listen: String,
    pub insecure_cluster: bool,
    pub cluster_tls: ClusterTls,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_client_ca: PathBuf,
    pub require_auth: bool,
    pub superusers: String,
    pub tls_principal_rules: String,
    /// `STRATA_BOOTSTRAP_USER` (NAME:PASSWORD): environment only.
    #[serde(skip)]
    pub bootstrap_user: Option<String>,
    pub metrics_listen: String,
    pub request_log: PathBuf,
    pub metrics: Metrics,
    pub traces: crate::traces::TracesConfig,
    pub data_dir: PathBuf,
    pub retention_check_interval_ms: u64,
    /// On SIGTERM, how long the node hands its leaderships over before it
    /// stops serving (0: it stops at once).
    pub handover_timeout_ms: u64,
    pub log_format: String,
    pub log_level: String,
    pub topic_defaults: strata_server::LogConfig,
    pub storage: strata_server::StorageLimits,
    pub limits: Limits,
}

/// `[limits]`: what the node spends on clients' requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Bytes of request messages being received, node-wide.
    pub request_memory_bytes: u64,
}

/// `[metrics]`: how metrics are labelled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub partition_labels: bool,
}

/// The embedded default of `metrics_listen`: while it is in use by another
/// process, a node runs without metrics (and says so).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// `[cluster_tls]`: where a node's certificate, key and CA are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ClusterTls {
    fn is_set(&self) -> bool {
        [&self.dir, &self.ca_file, &self.cert_file, &self.key_file].iter().any(|p| !p.as_os_str().is_empty())
    }

    /// The CA, certificate and key files of node `id` (each file key wins
    /// over `dir`).
    fn files(&self, id: u64) -> anyhow::Result<[PathBuf; 3]> {
        let pick = |file: &PathBuf, name: String, key: &str| -> anyhow::Result<PathBuf> {
            if !file.as_os_str().is_empty() {
                Ok(file.clone())
            } else if !self.dir.as_os_str().is_empty() {
                Ok(self.dir.join(name))
            } else {
                bail!("cluster_tls.{key} is not set (nor cluster_tls.dir, --cluster-tls-dir)")
            }
        };
        let stem = strata_tls::issue::node_stem(id);
        Ok([
            pick(&self.ca_file, "ca.crt".into(), "ca_file")?,
            pick(&self.cert_file, format!("{stem}.crt"), "cert_file")?,
            pick(&self.key_file, format!("{stem}.key"), "key_file")?,
        ])
    }
}

impl ServerConfig {
    /// Loads the layered configuration. `env` is the process environment
    /// (a parameter so tests need not touch the real one).
    pub fn load(file: Option<&std::path::Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut table: toml::Table = DEFAULT_CONFIG.parse().context("embedded default config")?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
            let overlay: toml::Table =
                text.parse().with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            merge(&mut table, overlay, "")?;
        }
        apply_env(&mut table, "STRATA", env)?;
        let mut config: Self = toml::Value::Table(table).try_into().context("invalid configuration")?;
        config.bootstrap_user = env.iter().find(|(k, _)| k == "STRATA_BOOTSTRAP_USER").map(|(_, v)| v.clone());
        Ok(config)
    }

    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let listen: std::net::SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("listen address '{}' is not HOST:PORT (e.g. 127.0.0.1:7878)", self.listen))?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be \"text\" or \"json\", not \"{}\"", self.log_format);
        }
        if self.handover_timeout_ms > MAX_HANDOVER_TIMEOUT_MS {
            bail!(
                "handover_timeout_ms is {}, more than the limit of {MAX_HANDOVER_TIMEOUT_MS} (10 minutes)",
                self.handover_timeout_ms
            );
        }
        let cluster = if self.peers.trim().is_empty() {
            (self.node_id != strata_server::SINGLE_NODE_ID)
                .then(|| strata_server::ClusterConfig::single(self.node_id, self.listen.clone()))
        } else {
            let cluster = strata_server::ClusterConfig::parse(self.node_id, &self.peers)?;
            let same_port = cluster.advertised().rsplit_once(':').map(|(_, p)| p) == Some(&listen.port().to_string());
            let same_host = listen.ip().is_unspecified()
                || cluster.advertised().rsplit_once(':').is_some_and(|(h, _)| h == listen.ip().to_string());
            if cluster.advertised() == self.listen || (same_port && same_host) {
                bail!(
                    "--peers gives node {} the address {}, which is its client listener (--listen): peers are \
                     the nodes' cluster listeners, a port of their own (e.g. 7879)",
                    self.node_id,
                    self.listen
                );
            }
            Some(cluster)
        };
        // Peers given: a cluster listener, which needs node certificates.
        let has_peers = !self.peers.trim().is_empty();
        let cluster_security = match (has_peers, self.insecure_cluster, self.cluster_tls.is_set()) {
            (_, true, true) => bail!("--insecure-cluster and node certificates (cluster_tls) exclude each other"),
            (_, true, false) | (false, false, false) => strata_server::ClusterSecurity::Insecure,
            (_, false, true) => {
                let [ca, cert, key] = self.cluster_tls.files(self.node_id)?;
                if let Some(ca_key) = cert.parent().map(|d| d.join("ca.key")).filter(|k| k.exists()) {
                    tracing::warn!(
                        "{} (the cluster CA's key) sits beside this node's certificate: whoever can read this \
                         node's files can make node certificates; keep the CA's key off the nodes \
                         (`strata certs node --ca-dir`)",
                        ca_key.display()
                    );
                }
                strata_server::ClusterSecurity::Mutual(strata_tls::NodeTls::load(self.node_id, &ca, &cert, &key)?)
            }
            (true, false, false) => bail!(
                "a cluster needs node certificates: give --cluster-tls-dir DIR holding ca.crt, node-{id}.crt and \
                 node-{id}.key (made with `strata certs ca --dir DIR` and `strata certs node --node-id {id} --dir DIR`), \
                 or --insecure-cluster to run nodes without TLS on a trusted network",
                id = self.node_id
            ),
        };
        let advertised = if !self.advertised_listen.trim().is_empty() {
            let addr = self.advertised_listen.trim();
            let port = addr.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) || addr.len() > 255 {
                bail!("advertised_listen '{addr}' is not HOST:PORT (the address clients reach this node at)");
            }
            Some(addr.to_owned())
        } else if listen.ip().is_unspecified() {
            // Bound to every interface: clients are sent to this node's
            // host as its peers know it.
            cluster
                .as_ref()
                .filter(|_| !self.peers.trim().is_empty())
                .and_then(|c| c.advertised().rsplit_once(':').map(|(host, _)| format!("{host}:{}", listen.port())))
        } else {
            None
        };
        let cluster_listen = (!self.cluster_listen.trim().is_empty()).then(|| self.cluster_listen.trim().to_owned());
        if cluster_listen.is_some() && !has_peers {
            bail!("--cluster-listen needs --peers: a node alone has no cluster listener");
        }
        strata_server::request_memory::check_limit(self.limits.request_memory_bytes).map_err(anyhow::Error::msg)?;
        let client_tls = self.client_tls()?;
        let auth = self.auth()?;
        if auth.require_auth && self.insecure_cluster && has_peers {
            bail!(
                "--require-auth with --insecure-cluster would let anyone who reaches a cluster listener act as a \
                 node, bypassing authentication: give the nodes certificates (--cluster-tls-dir)"
            );
        }
        if !listen.ip().is_loopback() {
            match (client_tls.is_some(), auth.require_auth) {
                (false, false) => tracing::warn!(
                    %listen,
                    "the client listener is reachable from other hosts WITHOUT TLS or authentication: anyone who \
                     reaches it can read, write and delete every topic; give --tls-cert, --tls-key and --require-auth"
                ),
                (true, false) => tracing::warn!(
                    %listen,
                    "the client listener is reachable from other hosts WITHOUT authentication: anyone who reaches \
                     it can read, write and delete every topic; give --require-auth"
                ),
                (false, true) => tracing::warn!(
                    %listen,
                    "the client listener is reachable from other hosts WITHOUT TLS: tokens cross the network in \
                     the clear (and passwords are refused); give --tls-cert and --tls-key"
                ),
                (true, true) => {}
            }
        }
        Ok(NodeConfig {
            cluster,
            cluster_listen,
            cluster_security,
            advertised,
            listen,
            data_dir: self.data_dir.clone(),
            defaults: self.topic_defaults,
            storage: self.storage,
            retention_check_interval: std::time::Duration::from_millis(self.retention_check_interval_ms.max(100)),
            request_memory: self.limits.request_memory_bytes,
            client_tls,
            auth,
            metrics: self.metrics_config()?,
            request_log: (!self.request_log.as_os_str().is_empty()).then(|| self.request_log.clone()),
        })
    }

    /// `metrics_listen` and `[metrics]`.
    fn metrics_config(&self) -> anyhow::Result<strata_server::metrics::MetricsConfig> {
        let at = self.metrics_listen.trim();
        let listen = if at.is_empty() {
            None
        } else {
            Some(at.parse::<std::net::SocketAddr>().with_context(|| {
                format!("metrics_listen '{at}' is not HOST:PORT with an IP address (e.g. 127.0.0.1:9464)")
            })?)
        };
        if let Some(addr) = listen.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(
                %addr,
                "the metrics listener is reachable from other hosts, without authentication: it shows topic and \
                 group names; keep it on a monitoring network"
            );
        }
        Ok(strata_server::metrics::MetricsConfig {
            listen,
            partition_labels: self.metrics.partition_labels,
            required: at != DEFAULT_METRICS_LISTEN,
        })
    }

    /// Authentication and authorization: `require_auth`, `superusers`,
    /// `tls_principal_rules`, `STRATA_BOOTSTRAP_USER`.
    fn auth(&self) -> anyhow::Result<strata_server::auth::AuthConfig> {
        let mut superusers = Vec::new();
        for s in self.superusers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let name = s.strip_prefix("User:").unwrap_or(s);
            strata_server::auth::check_principal_name(name).map_err(|e| anyhow::anyhow!("superusers: {e}"))?;
            superusers.push(format!("User:{name}"));
        }
        let principal_rules = strata_server::auth::PrincipalRules::parse(&self.tls_principal_rules)
            .map_err(|e| anyhow::anyhow!("tls_principal_rules: {e}"))?;
        let bootstrap_user = match self.bootstrap_user.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(spec) => {
                let (name, password) = spec
                    .split_once(':')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("STRATA_BOOTSTRAP_USER must be NAME:PASSWORD"))?;
                strata_server::auth::check_user_name(name)
                    .map_err(|e| anyhow::anyhow!("STRATA_BOOTSTRAP_USER: {e}"))?;
                Some((name.to_owned(), password.to_owned()))
            }
        };
        if bootstrap_user.is_some() && !self.require_auth {
            tracing::warn!(
                "STRATA_BOOTSTRAP_USER is set but authentication is off (--require-auth): the user is created, but nothing asks for it"
            );
        }
        Ok(strata_server::auth::AuthConfig {
            require_auth: self.require_auth,
            superusers,
            principal_rules,
            bootstrap_user,
        })
    }

    /// TLS on the client listener, from `tls_cert`, `tls_key` and
    /// `tls_client_ca`.
    fn client_tls(&self) -> anyhow::Result<Option<strata_tls::ServingTls>> {
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        match (set(&self.tls_cert), set(&self.tls_key)) {
            (false, false) => {
                if set(&self.tls_client_ca) {
                    bail!("--tls-client-ca needs TLS on the client listener: give --tls-cert and --tls-key too");
                }
                Ok(None)
            }
            (true, false) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
            (false, true) => bail!("--tls-key needs --tls-cert (the server certificate)"),
            (true, true) => {
                let ca = set(&self.tls_client_ca).then_some(self.tls_client_ca.as_path());
                Ok(Some(strata_tls::ServingTls::load(&self.tls_cert, &self.tls_key, ca)?))
            }
        }
    }
}

/// Deep-merges `overlay` into `base`.
fn merge(base: &mut toml::Table, overlay: toml::Table, path: &str) -> anyhow::Result<()> {
    for (key, value) in overlay {
        let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &full)?,
            (Some(toml::Value::Table(_)), _) => bail!("config key '{full}' must be a table"),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
    Ok(())
}

/// Overrides each leaf key from `PREFIX_KEY` (sections add `_SECTION`).
fn apply_env(table: &mut toml::Table, prefix: &str, env: &[(String, String)]) -> anyhow::Result<()> {
    for (key, value) in table.iter_mut() {
        let name = format!("{prefix}_{}", key.to_uppercase());
        if let toml::Value::Table(inner) = value {
            apply_env(inner, &name, env)?;
            continue;
        }
        let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) else { continue };
        *value = match value {
            toml::Value::Integer(_) => {
                toml::Value::Integer(raw.trim().parse().with_context(|| format!("{name}={raw} is not an integer"))?)
            }
            toml::Value::Boolean(_) => {
                toml::Value::Boolean(raw.trim().parse().with_context(|| format!("{name}={raw} is not true or false"))?)
            }
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse().with_context(|| format!("{name}={raw} is not a number"))?)
            }
            _ => toml::Value::String(raw.clone()),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn embedded_defaults_load() {
        let c = ServerConfig::load(None, &[]).expect("defaults");
        assert_eq!(c.listen, "127.0.0.1:7878");
        assert_eq!(c.topic_defaults, strata_server::LogConfig::default());
        assert_eq!(c.storage, strata_server::StorageLimits::default());
        assert_eq!(c.limits.request_memory_bytes, strata_server::request_memory::DEFAULT_REQUEST_MEMORY_BYTES);
        c.node_config().expect("valid");
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, "data_dir = \"/var/lib/strata\"\n[topic_defaults]\nsegment_bytes = 4096\n")
            .expect("write");
        let c = ServerConfig::load(
            Some(&path),
            &env(&[("STRATA_LISTEN", "0.0.0.0:9000"), ("STRATA_TOPIC_DEFAULTS_RETENTION_MS", "1000")]),
        )
        .expect("load");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/strata"));
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.topic_defaults.segment_bytes, 4096);
        assert_eq!(c.topic_defaults.retention_ms, 1000);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listn = \"x\"\n").expect("write");
        let err = format!("{:#}", ServerConfig::load(Some(&path), &[]).expect_err("unknown key"));
        assert!(err.contains("listn"), "{err}");
        let err = format!(
            "{:#}",
            ServerConfig::load(None, &env(&[("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES", "big")])).expect_err("bad env")
        );
        assert!(err.contains("STRATA_TOPIC_DEFAULTS_SEGMENT_BYTES"), "{err}");
        let c = ServerConfig::load(None, &env(&[("STRATA_LISTEN", "nonsense")])).expect("load");
        assert!(c.node_config().is_err());
        let c = ServerConfig::load(None, &env(&[("STRATA_LIMITS_REQUEST_MEMORY_BYTES", "1048576")])).expect("load");
        let err = format!("{:#}", c.node_config().expect_err("below the largest message"));
        assert!(err.contains("limits.request_memory_bytes"), "{err}");
    }
}
