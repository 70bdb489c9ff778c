//! A node's TLS material and the configurations built from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::TlsError;
use crate::names::{node_name, node_named_by};

/// A node's cluster CA, certificate chain and key (PEM files), checked when
/// loaded: the certificate chains to the CA, is valid now, and names this
/// node. `Debug` shows the files, never the key.
#[derive(Clone)]
pub struct NodeTls {
    node_id: u64,
    files: [PathBuf; 3],
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("node_id", &self.node_id).field("files", &self.files).finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

fn invalid(what: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid { what, path: path.to_owned(), problem: problem.into() }
}

fn certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "holds no certificate (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

impl NodeTls {
    /// Loads and checks node `node_id`'s files.
    pub fn load(node_id: u64, ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_pem = read("CA certificate", ca)?;
        let cert_pem = read("node certificate", cert)?;
        let key_pem = read("node key", key)?;
        let mut roots = RootCertStore::empty();
        for c in certificates("CA certificate", ca, &ca_pem)? {
            roots.add(c).map_err(|e| invalid("CA certificate", ca, format!("is not a usable CA: {e}")))?;
        }
        let chain = certificates("node certificate", cert, &cert_pem)?;
        PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid("node key", key, format!("holds no private key in PEM: {e}")))?;
        let tls = Self {
            node_id,
            files: [ca.to_owned(), cert.to_owned(), key.to_owned()],
            ca_pem,
            cert_pem,
            key_pem,
            roots: Arc::new(roots),
            chain,
        };
        tls.check(cert)?;
        // The key must be the certificate's: rustls checks that when it
        // builds a configuration.
        tls.server_config(vec![node_id])
            .map_err(|e| invalid("node key", key, format!("does not fit {}: {e}", cert.display())))?;
        Ok(tls)
    }

    /// The certificate chains to the CA, is valid now and names this node.
    fn check(&self, cert: &Path) -> Result<(), TlsError> {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), crate::provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let name = node_name(self.node_id);
        let server_name = ServerName::try_from(name.clone()).map_err(|e| TlsError::Config(e.to_string()))?;
        let (leaf, intermediates) =
            self.chain.split_first().ok_or_else(|| invalid("node certificate", cert, "is empty"))?;
        verifier.verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now()).map_err(|e| {
            let problem = match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. }) => {
                    format!(
                        "does not name node {} (it must carry the name {name}): issue one with \
                         `strata certs node --node-id {}`",
                        self.node_id, self.node_id
                    )
                }
                other => format!("is not valid for this cluster's CA {}: {other}", self.files[0].display()),
            };
            invalid("node certificate", cert, problem)
        })?;
        Ok(())
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| TlsError::Config(format!("node key: {e}")))
    }

    /// The cluster listener's configuration: TLS 1.3, HTTP/2, and a client
    /// certificate required that chains to the CA and names one of
    /// `members`.
    pub fn server_config(&self, members: Vec<u64>) -> Result<Arc<ServerConfig>, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), crate::provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(MemberVerifier { inner, members });
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }

    /// How this node connects to node `target`: it presents its own
    /// certificate and accepts only a certificate that names `target`.
    pub fn client_config(&self, target: u64) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(node_name(target))
    }
}

/// The cluster listener's check of a connecting node: the CA's usual chain
/// check, then the certificate must name a member.
#[derive(Debug)]
struct MemberVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    members: Vec<u64>,
}

impl ClientCertVerifier for MemberVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if node_named_by(end_entity, &self.members).is_none() {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::Authority;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(ca: &Authority) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            ca.issued().write(dir.path(), "ca", false).expect("ca");
            Self { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn load(&self, id: u64, stem: &str) -> Result<NodeTls, TlsError> {
            NodeTls::load(
                id,
                &self.path("ca.crt"),
                &self.path(&format!("{stem}.crt")),
                &self.path(&format!("{stem}.key")),
            )
        }
    }

    #[test]
    fn a_node_loads_only_its_own_certificate_from_its_own_ca() {
        let ca = Authority::create(10).expect("ca");
        let files = Files::new(&ca);
        ca.node(2, &[], 10).expect("issue").write(files.dir.path(), "node-2", false).expect("write");
        files.load(2, "node-2").expect("node 2 loads its certificate");

        let err = files.load(3, "node-2").expect_err("node 3 with node 2's certificate").to_string();
        assert!(err.contains("does not name node 3") && err.contains("node-3.strata.internal"), "{err}");

        let other = Authority::create(10).expect("another ca");
        other.node(2, &[], 10).expect("issue").write(files.dir.path(), "foreign", false).expect("write");
        let err = files.load(2, "foreign").expect_err("another CA's certificate").to_string();
        assert!(err.contains("is not valid for this cluster's CA"), "{err}");

        // A key that is not the certificate's.
        std::fs::copy(files.path("foreign.key"), files.path("node-2.key")).expect("swap the key");
        let err = files.load(2, "node-2").expect_err("a key of another certificate").to_string();
        assert!(err.contains("does not fit"), "{err}");

        std::fs::write(files.path("ca.crt"), "not pem").expect("write");
        let err = files.load(2, "node-2").expect_err("no CA").to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = files.load(2, "missing").expect_err("no file").to_string();
        assert!(err.contains("cannot read the node certificate"), "{err}");
        assert!(!format!("{:?}", ca.issued()).contains("PRIVATE"), "keys stay out of Debug");
    }
}
