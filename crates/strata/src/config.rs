//! Node configuration: embedded defaults, then a TOML file, then `STRATA_*`
//! environment variables, then flags.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;
use strata_server::NodeConfig;

/// The embedded default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub node_id: u64,
    pub peers: String,
    pub data_dir: PathBuf,
    pub retention_check_interval_ms: u64,
    pub log_format: String,
    pub log_level: String,
    pub topic_defaults: strata_server::LogConfig,
    pub storage: strata_server::StorageLimits,
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
        toml::Value::Table(table).try_into().context("invalid configuration")
    }

    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let listen = self
            .listen
            .parse()
            .with_context(|| format!("listen address '{}' is not HOST:PORT (e.g. 127.0.0.1:7878)", self.listen))?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be \"text\" or \"json\", not \"{}\"", self.log_format);
        }
        let cluster = if self.peers.trim().is_empty() {
            (self.node_id != strata_server::SINGLE_NODE_ID)
                .then(|| strata_server::ClusterConfig::single(self.node_id, self.listen.clone()))
        } else {
            let cluster = strata_server::ClusterConfig::parse(self.node_id, &self.peers)?;
            let port = |a: &str| a.rsplit_once(':').map(|(_, p)| p.to_owned());
            if port(cluster.advertised()) != port(&self.listen) {
                bail!(
                    "--peers gives node {} the address {}, but it listens on {}: the ports must match",
                    self.node_id,
                    cluster.advertised(),
                    self.listen
                );
            }
            Some(cluster)
        };
        Ok(NodeConfig {
            cluster,
            listen,
            data_dir: self.data_dir.clone(),
            defaults: self.topic_defaults,
            storage: self.storage,
            retention_check_interval: std::time::Duration::from_millis(self.retention_check_interval_ms.max(100)),
        })
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
    }
}
