//! A cluster CA and the certificates it issues (rcgen): what `strata certs`,
//! `strata dev` and the test suites use. Keys are ECDSA P-256; a
//! certificate is valid from an hour ago (clocks differ a little) for the
//! number of days asked.
//!
//! Files: `ca.crt`/`ca.key`, `node-<ID>.crt`/`.key`, `client-<NAME>.crt`/
//! `.key`. Keys are written readable by their owner only (0600), and an
//! existing file is never replaced unless asked.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::TlsError;
use crate::names::node_name;

/// A certificate and its private key, PEM. `Debug` leaves the key out.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Issued {
    /// The certificate, DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Config(format!("an issued certificate is not PEM: {e}")))
    }

    /// Writes `DIR/STEM.crt` (0644) and `DIR/STEM.key` (0600); refuses to
    /// replace an existing file unless `force`. Returns both paths.
    pub fn write(&self, dir: &Path, stem: &str, force: bool) -> Result<(PathBuf, PathBuf), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        if !force {
            for path in [&cert, &key] {
                if path.exists() {
                    return Err(TlsError::Exists { path: path.clone() });
                }
            }
        }
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Write { path: path.to_owned(), source };
    // A new name, then a rename: a reader never sees half a file, and the
    // mode is right from the first byte (an existing file's mode would
    // otherwise stay as it was).
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A cluster's certificate authority: issues node and client certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

fn serial() -> rcgen::SerialNumber {
    // 128 random bits, the top bit clear (a positive DER integer).
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

fn rand_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    // ring's system random: failing here means the OS has no randomness to
    // give, and a zero serial is still a valid (if poor) serial.
    let _ = rustls::crypto::ring::default_provider().secure_random.fill(&mut out);
    out
}

impl Authority {
    /// A new CA, valid for `days`.
    pub fn create(days: u32) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Strata");
        dn.push(DnType::CommonName, "Strata cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(serial());
        validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A CA from its certificate and key (PEM), e.g. as written by
    /// [`Authority::issued`] and [`Issued::write`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self { issuer, cert_pem: cert_pem.to_owned() })
    }

    /// Reads `ca.crt` and `ca.key` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str, what| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { what, path, source })
        };
        Self::load(&read("ca.crt", "CA certificate")?, &read("ca.key", "CA key")?)
    }

    /// The CA's certificate and key, to write out.
    pub fn issued(&self) -> Issued {
        Issued { cert_pem: self.cert_pem.clone(), key_pem: self.issuer.key().serialize_pem() }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for node `id`: it names the node (see
    /// [`crate::names`]) and, optionally, the host names and addresses in
    /// `hosts`; good for both ends of a connection between nodes.
    pub fn node(&self, id: u64, hosts: &[String], days: u32) -> Result<Issued, TlsError> {
        if let Some(bad) = hosts.iter().find(|h| !crate::names::extra_host_allowed(h)) {
            return Err(TlsError::Config(format!(
                "--host {bad}: a node certificate may not carry a wildcard or another name under {} \
                 (it could pass for another node)",
                crate::names::NODE_DOMAIN
            )));
        }
        let mut names = vec![node_name(id)];
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = common_name(&format!("strata node {id}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, days)
    }

    /// A client certificate whose subject is `CN=<name>`: it names no node,
    /// so the cluster listener refuses it.
    pub fn client(&self, name: &str, days: u32) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, days)
    }

    /// A server certificate for a client-facing listener reached at `hosts`.
    /// It may not name a node (it could then pass for that node towards its
    /// peers).
    pub fn server(&self, hosts: &[String], days: u32) -> Result<Issued, TlsError> {
        let domain = crate::names::NODE_DOMAIN;
        let under_nodes = |h: &String| {
            let lower = h.to_ascii_lowercase();
            lower == domain || lower.ends_with(&format!(".{domain}"))
        };
        if let Some(bad) = hosts.iter().find(|h| under_nodes(h)) {
            return Err(TlsError::Config(format!(
                "--host {bad}: a server certificate may not carry a name under {} (it could pass for a node)",
                crate::names::NODE_DOMAIN
            )));
        }
        let mut params = CertificateParams::new(hosts.to_vec())?;
        if params.subject_alt_names.is_empty() {
            params.subject_alt_names.push(SanType::DnsName("localhost".try_into()?));
        }
        params.distinguished_name = common_name(hosts.first().map_or("localhost", String::as_str));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, days)
    }

    fn sign(&self, mut params: CertificateParams, days: u32) -> Result<Issued, TlsError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strata");
    dn.push(DnType::CommonName, name);
    dn
}

/// Where `strata certs` and `strata dev` put a node's files, relative to the
/// certificate directory.
pub fn node_stem(id: u64) -> String {
    format!("node-{id}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_written_authority_loads_again_and_keeps_issuing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::create(10).expect("ca");
        ca.issued().write(dir.path(), "ca", false).expect("write");
        let mode = std::fs::metadata(dir.path().join("ca.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "keys are readable by their owner only");
        let err = ca.issued().write(dir.path(), "ca", false).expect_err("no silent replace");
        assert!(err.to_string().contains("already exists"), "{err}");
        ca.issued().write(dir.path(), "ca", true).expect("replace when asked");

        let again = Authority::load_dir(dir.path()).expect("load");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let node = again.node(1, &[], 1).expect("issue");
        assert!(crate::names::names_node(&node.cert_der().expect("der"), 1));
        assert!(!format!("{node:?}").contains("PRIVATE KEY"), "Debug leaves the key out");
    }
}
