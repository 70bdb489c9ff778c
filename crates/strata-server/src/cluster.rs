//! A node's place in a statically configured cluster: its id, its peers,
//! and the identity its data directory records.
//!
//! The first start of a data directory writes `node.json` (node id, a
//! random incarnation id, the members it was started with). Every later
//! start checks the flags against it, so a data directory is never used as
//! another node, and a cluster's members do not change behind its back.
//! The cluster's id is learnt from the controller and recorded there too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_raft::NodeId;

/// The static cluster configuration of a node (`--node-id`, `--peers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Every member (this node included) and the address it is reached at.
    pub peers: BTreeMap<NodeId, String>,
}

/// A configuration or data-directory identity problem, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--peers: {0}")]
    Peers(String),
    #[error("{0}")]
    Identity(String),
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl ClusterConfig {
    /// A cluster of this node alone.
    pub fn single(node_id: NodeId, addr: String) -> Self {
        Self { node_id, peers: BTreeMap::from([(node_id, addr)]) }
    }

    /// Parses `1=host:port,2=host:port,...` and checks that `node_id` is
    /// one of them.
    pub fn parse(node_id: NodeId, peers: &str) -> Result<Self, ClusterError> {
        let bad = |m: String| ClusterError::Peers(m);
        if node_id == 0 {
            return Err(bad("node ids start at 1; --node-id 0 is not allowed".into()));
        }
        let mut map = BTreeMap::new();
        for item in peers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, addr) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("'{item}' is not ID=HOST:PORT (e.g. 1=10.0.0.1:7878)")))?;
            let id: NodeId = id.trim().parse().map_err(|_| bad(format!("'{id}' in '{item}' is not a node id")))?;
            if id == 0 {
                return Err(bad(format!("'{item}': node ids start at 1")));
            }
            let addr = addr.trim();
            let port = addr.rsplit_once(':').map(|(_, p)| p);
            if addr.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(bad(format!("'{item}': '{addr}' is not HOST:PORT")));
            }
            if map.insert(id, addr.to_owned()).is_some() {
                return Err(bad(format!("node {id} is listed twice")));
            }
        }
        if map.is_empty() {
            return Err(bad("no peers given".into()));
        }
        if !map.contains_key(&node_id) {
            let ids: Vec<_> = map.keys().collect();
            return Err(bad(format!(
                "this node's id {node_id} is not among the peers {ids:?}: list every member, this node included"
            )));
        }
        Ok(Self { node_id, peers: map })
    }

    pub fn members(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// This node's address as its peers know it.
    pub fn advertised(&self) -> &str {
        self.peers.get(&self.node_id).map_or("", String::as_str)
    }
}

/// What a data directory records about the node that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    /// Random, fixed when the directory was first used.
    pub incarnation: String,
    pub members: Vec<NodeId>,
    /// Set once the node has learnt it from the controller.
    #[serde(default)]
    pub cluster_id: Option<String>,
}

const IDENTITY_FILE: &str = "node.json";

/// A fresh random id (128 bits, hex).
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl NodeIdentity {
    /// Loads the data directory's identity and checks it against the
    /// configuration; a new directory gets one.
    pub fn load_or_create(data_dir: &Path, config: &ClusterConfig) -> Result<Self, ClusterError> {
        let path = data_dir.join(IDENTITY_FILE);
        let io = |source| ClusterError::Io { path: path.clone(), source };
        let identity = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<NodeIdentity>(&bytes)
                .map_err(|e| ClusterError::Identity(format!("{} is not a valid identity file: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = NodeIdentity {
                    node_id: config.node_id,
                    incarnation: random_id(),
                    members: config.members(),
                    cluster_id: None,
                };
                fresh.save(data_dir)?;
                return Ok(fresh);
            }
            Err(e) => return Err(io(e)),
        };
        if identity.node_id != config.node_id {
            return Err(ClusterError::Identity(format!(
                "the data directory {} belongs to node {}{}, not node {}: start node {} with its own directory",
                data_dir.display(),
                identity.node_id,
                identity.cluster_id.as_ref().map(|c| format!(" of cluster {c}")).unwrap_or_default(),
                config.node_id,
                config.node_id,
            )));
        }
        if identity.members != config.members() {
            let unknown: Vec<_> = config.members().into_iter().filter(|m| !identity.members.contains(m)).collect();
            let missing: Vec<_> = identity.members.iter().filter(|m| !config.peers.contains_key(m)).collect();
            let mut what = Vec::new();
            if !unknown.is_empty() {
                what.push(format!("names unknown node ids {unknown:?}"));
            }
            if !missing.is_empty() {
                what.push(format!("leaves out members {missing:?}"));
            }
            return Err(ClusterError::Identity(format!(
                "--peers {} of this cluster (members {:?}, fixed when it was first started; \
                 membership changes are not supported, and node ids are never reused)",
                what.join(" and "),
                identity.members
            )));
        }
        Ok(identity)
    }

    /// Writes the identity durably (temporary file, fsync, rename, fsync of
    /// the directory).
    pub fn save(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let path = data_dir.join(IDENTITY_FILE);
        let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let io = |source| ClusterError::Io { path: path.clone(), source };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_lists_say_what_is_wrong() {
        let c = ClusterConfig::parse(2, "1=127.0.0.1:7001, 2=127.0.0.1:7002,3=node3:7003").expect("parse");
        assert_eq!(c.members(), vec![1, 2, 3]);
        assert_eq!(c.advertised(), "127.0.0.1:7002");
        for (id, peers, needle) in [
            (1, "1=a:1,1=b:2", "listed twice"),
            (4, "1=a:1,2=b:2", "not among the peers"),
            (1, "1=a", "not HOST:PORT"),
            (1, "x=a:1", "not a node id"),
            (1, "1=a:1,0=b:2", "start at 1"),
            (0, "1=a:1", "--node-id 0"),
            (1, "", "no peers"),
        ] {
            let err = ClusterConfig::parse(id, peers).expect_err(peers).to_string();
            assert!(err.contains(needle), "{peers}: {err}");
        }
    }

    #[test]
    fn a_data_directory_stays_with_its_node_and_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ClusterConfig::parse(1, "1=a:1,2=b:2,3=c:3").expect("parse");
        let first = NodeIdentity::load_or_create(dir.path(), &config).expect("create");
        let again = NodeIdentity::load_or_create(dir.path(), &config).expect("load");
        assert_eq!(first, again, "the identity is kept");

        let as_two = ClusterConfig::parse(2, "1=a:1,2=b:2,3=c:3").expect("parse");
        let err = NodeIdentity::load_or_create(dir.path(), &as_two).expect_err("another node").to_string();
        assert!(err.contains("belongs to node 1, not node 2"), "{err}");

        let grown = ClusterConfig::parse(1, "1=a:1,2=b:2,4=d:4").expect("parse");
        let err = NodeIdentity::load_or_create(dir.path(), &grown).expect_err("other members").to_string();
        assert!(err.contains("names unknown node ids [4]") && err.contains("leaves out members [3]"), "{err}");
    }
}
