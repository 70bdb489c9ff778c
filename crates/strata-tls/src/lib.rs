//! TLS between Strata nodes.
//!
//! Nodes talk to each other (Raft, forwarded controller commands) on a
//! listener of their own, with mutual TLS: both ends present a certificate
//! issued by the cluster's CA, and each end checks that the other's
//! certificate names the node it claims to be.
//!
//! - [`names`]: a node's certificate names it with the DNS name
//!   `node-<ID>.strata.internal` ([`node_name`]); a client certificate names
//!   no node and is refused on the cluster listener.
//! - [`NodeTls`]: a node's CA, certificate and key, loaded from PEM files and
//!   checked (the certificate chains to the CA and names this node); the
//!   rustls configuration of the cluster listener (which refuses any peer
//!   whose certificate does not name a member) and the tonic configuration
//!   of connections to a peer (which must present that peer's name).
//! - [`issue`]: a CA and node or client certificates (rcgen), for
//!   `strata certs`, `strata dev` and the test suites.
//! - [`listener`]: the cluster listener's accept loop: TLS handshakes with a
//!   deadline, off the accept path, each connection tagged with the node
//!   its certificate names.
//! - [`serving`]: TLS on the client listener ([`ServingTls`]): a server
//!   certificate reloaded when its files change, client certificates
//!   accepted from a client CA.

pub mod issue;
pub mod listener;
pub mod names;
mod node;
pub mod serving;

pub use issue::{Authority, Issued};
pub use listener::{PeerInfo, PeerStream, Security, incoming};
pub use names::{certificate_subject, node_name, node_named_by};
pub use node::NodeTls;
pub use serving::ServingTls;

use std::path::PathBuf;

/// Why TLS material could not be read, checked, made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: remove it first, or pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("the {what} {path} {problem}")]
    Invalid { what: &'static str, path: PathBuf, problem: String },
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of every Strata TLS configuration (ring: a C and
/// assembly build with `cc` only, no cmake), preferring AES-128-GCM: as
/// secure in practice as AES-256 and about a third cheaper per byte, which
/// matters at hundreds of MB/s per node. Servers pick by their own order
/// (`ignore_client_order`), so clients that list AES-256 first get it too.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let name = format!("{:?}", suite.suite());
        (!name.starts_with("TLS13"), !name.contains("AES_128_GCM"))
    });
    std::sync::Arc::new(provider)
}

#[cfg(test)]
mod tests {
    #[test]
    fn aes_128_gcm_comes_first_in_tls_1_3_and_1_2() {
        let suites: Vec<String> = super::provider().cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(suites[0], "TLS13_AES_128_GCM_SHA256", "{suites:?}");
        let first12 = suites.iter().find(|s| !s.starts_with("TLS13")).expect("a TLS 1.2 suite");
        assert!(first12.contains("AES_128_GCM"), "{suites:?}");
    }
}
