//! TLS on the client listener: the server certificate and key from files,
//! reloaded when they change, and client certificates accepted (not
//! required) from a client CA.
//!
//! Certificate rotation is routine, so a node never needs a restart for
//! it: [`ServingTls::reload_if_changed`] (called on a timer and on
//! `SIGHUP`) reads the files again when their size or modification time
//! changed, checks that the key fits the certificate, and swaps them in
//! for the next handshakes. Files that do not load (half written, a key of
//! another certificate) are reported and the current pair stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

fn invalid(what: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Invalid { what, path: path.to_owned(), problem: problem.into() }
}

/// The certificates in a PEM file (at least one).
pub fn load_certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, path, "holds no certificate (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// A file's identity for change detection.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The server certificate and key, swapped when the files change.
#[derive(Debug)]
struct Reloading {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl Reloading {
    fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
        let chain = load_certificates("server certificate", cert_file)?;
        let key_pem = read("server key", key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid("server key", key_file, format!("holds no private key in PEM: {e}")))?;
        let key = crate::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| invalid("server key", key_file, format!("cannot be used: {e}")))?;
        let certified = CertifiedKey::new(chain, key);
        certified.keys_match().map_err(|e| {
            invalid("server key", key_file, format!("does not fit the certificate {}: {e}", cert_file.display()))
        })?;
        Ok(certified)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// The client listener's TLS: a rustls configuration whose certificate
/// follows its files.
#[derive(Debug, Clone)]
pub struct ServingTls {
    config: Arc<ServerConfig>,
    certs: Arc<Reloading>,
}

impl ServingTls {
    /// Loads the certificate and key, and the CA whose client certificates
    /// are accepted (`None`: clients present none).
    pub fn load(cert_file: &Path, key_file: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let stamps = (stamp(cert_file), stamp(key_file));
        let first = Reloading::load(cert_file, key_file)?;
        let certs = Arc::new(Reloading {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(first)),
            stamps: Mutex::new(stamps),
        });
        let builder = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in load_certificates("client CA certificate", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| invalid("client CA certificate", ca, format!("is not a usable CA: {e}")))?;
                }
                // Offered, not required: clients without a certificate
                // authenticate with a token or a password instead.
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.ignore_client_order = true;
        Ok(Self { config: Arc::new(config), certs })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// Reads the certificate and key again if either file changed since
    /// they were last read. `Ok(true)`: new ones are in use. On an error
    /// the current pair stays (and the same files are not retried until
    /// they change again).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.certs.cert_file), stamp(&self.certs.key_file));
        {
            let mut stamps = self.certs.stamps.lock().map_err(|_| TlsError::Config("lock poisoned".into()))?;
            if *stamps == now {
                return Ok(false);
            }
            *stamps = now;
        }
        let fresh = Reloading::load(&self.certs.cert_file, &self.certs.key_file)?;
        *self.certs.current.write().map_err(|_| TlsError::Config("lock poisoned".into()))? = Arc::new(fresh);
        Ok(true)
    }

    /// The leaf certificate in use (DER), e.g. to tell which one clients get.
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.certs.current.read().ok().and_then(|c| c.cert.first().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Authority;

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_broken_one_is_refused_keeping_the_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::create(30).expect("ca");
        let (cert, key) =
            ca.server(&["localhost".into()], 30).expect("server").write(dir.path(), "s", false).expect("write");
        let tls = ServingTls::load(&cert, &key, None).expect("load");
        let first = tls.current_certificate().expect("a certificate");
        assert!(!tls.reload_if_changed().expect("unchanged"), "nothing changed");

        // A key of another certificate: refused, the first pair stays.
        let other = ca.server(&["localhost".into()], 30).expect("server");
        std::fs::write(&key, &other.key_pem).expect("write key");
        let err = tls.reload_if_changed().expect_err("key does not fit");
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert_eq!(tls.current_certificate(), Some(first.clone()));

        // The matching certificate arrives: swapped in.
        std::fs::write(&cert, &other.cert_pem).expect("write cert");
        assert!(tls.reload_if_changed().expect("reloads"));
        assert_ne!(tls.current_certificate(), Some(first));
    }
}
