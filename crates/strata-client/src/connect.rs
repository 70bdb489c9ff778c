//! How the client reaches a node: plaintext or TLS ([`ConnectOptions`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{ClientError, Result, error_chain};

/// TLS towards the nodes' client listeners.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The CA that issued the nodes' certificates (PEM); `None`: the
    /// system's trusted CAs.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and key (PEM) to present (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the nodes' certificates must carry; `None`: the host of
    /// the address connected to.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca", &self.ca_pem.as_ref().map(|_| "PEM"))
            .field("identity", &self.identity.as_ref().map(|_| "PEM"))
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsOptions {
    /// Reads the CA (`None`: the system's) and the client certificate and
    /// key files.
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        let read = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| ClientError::Tls(format!("cannot read the {what} {}: {e}", p.display())))
        };
        let ca_pem = ca.map(|p| read("CA certificate", p)).transpose()?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
            (None, None) => None,
            (Some(_), None) => return Err(ClientError::Tls("a client certificate needs its key (--tls-key)".into())),
            (None, Some(_)) => return Err(ClientError::Tls("a client key needs its certificate (--tls-cert)".into())),
        };
        Ok(Self { ca_pem, identity, domain: None })
    }
}

/// Makes the channel to a node in place of a connection to its client
/// listener: a Strata node's own client reaches itself in-process and its
/// peers over their cluster listeners, where nodes prove who they are.
pub trait Dialer: Send + Sync + 'static {
    /// The channel to the node whose client listener is `addr`; `None`:
    /// connect to `addr` as usual.
    fn channel(&self, addr: &str) -> Option<Channel>;
}

/// How to connect to a cluster.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// TLS; `None`: plaintext, unless an address says `https://`.
    pub tls: Option<TlsOptions>,
    /// Channels made otherwise (see [`Dialer`]).
    pub dialer: Option<std::sync::Arc<dyn Dialer>>,
    /// What proves who the client is.
    pub credentials: crate::Credentials,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("tls", &self.tls)
            .field("dialer", &self.dialer.is_some())
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl ConnectOptions {
    /// Options with TLS files, e.g. from `--tls-ca`, `--tls-cert`,
    /// `--tls-key` (TLS when any is given or `tls` is true).
    pub fn with_tls_files(tls: bool, ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Self> {
        let wanted = tls || ca.is_some() || cert.is_some() || key.is_some();
        let tls = wanted.then(|| TlsOptions::from_files(ca.as_deref(), cert.as_deref(), key.as_deref())).transpose()?;
        Ok(Self { tls, ..Self::default() })
    }
}

/// The URI of a node address: `host:port`, or with its scheme.
fn endpoint_uri(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// Whether a connection failure looks like a TLS client meeting a
/// plaintext server (it answers the ClientHello with HTTP/2 bytes, or
/// closes).
fn plaintext_server(reason: &str) -> bool {
    ["InvalidContentType", "corrupt message", "tls handshake eof", "unexpected EOF", "WrongVersion"]
        .iter()
        .any(|needle| reason.contains(needle))
}

/// Whether `addr` (`host:port`, maybe with a scheme) names this machine.
fn loopback(addr: &str) -> bool {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(crate) async fn open_channel(addr: &str, options: &ConnectOptions) -> Result<Channel> {
    if let Some(channel) = options.dialer.as_ref().and_then(|d| d.channel(addr)) {
        return Ok(channel);
    }
    let tls = options.tls.clone().or_else(|| addr.starts_with("https://").then(TlsOptions::default));
    // Credentials cross the network only inside TLS.
    if tls.is_none() && !matches!(options.credentials, crate::Credentials::None) && !loopback(addr) {
        return Err(ClientError::Auth(format!(
            "refusing to send credentials to {addr} without TLS: connect with TLS (--tls-ca FILE, --tls, or an \
             https:// server address)"
        )));
    }
    let uri = endpoint_uri(addr, tls.is_some());
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::InvalidAddress { addr: addr.to_owned(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(32 * 1024 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if let Some(tls) = &tls {
        let mut config = ClientTlsConfig::new();
        config = match &tls.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| ClientError::Tls(format!("the TLS settings for {addr} are unusable: {}", error_chain(&e))))?;
    }
    endpoint.connect().await.map_err(|e| {
        let reason = error_chain(&e);
        if tls.is_some() && plaintext_server(&reason) {
            ClientError::Tls(format!(
                "cannot connect to strata at {addr}: the server did not answer the TLS handshake; its client \
                 listener is probably plaintext (connect without --tls-ca / https://, or give the node --tls-cert \
                 and --tls-key) ({reason})"
            ))
        } else if tls.is_some() && reason.contains("invalid peer certificate") {
            ClientError::Tls(format!(
                "cannot connect to strata at {addr}: the server's certificate is not trusted ({reason}); give the \
                 CA that issued it with --tls-ca (STRATA_TLS_CA)"
            ))
        } else {
            ClientError::Connect { addr: addr.to_owned(), reason, closed: false }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_told_from_others() {
        for a in ["127.0.0.1:7878", "localhost:1", "[::1]:7878", "http://127.0.0.2:9"] {
            assert!(loopback(a), "{a}");
        }
        for a in ["10.0.0.1:7878", "db1.example.com:7878", "https://[2001:db8::1]:7878"] {
            assert!(!loopback(a), "{a}");
        }
    }
}
