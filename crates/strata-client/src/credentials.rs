//! Credentials the client sends: an API token, or a session token from a
//! password login, as `authorization: Bearer <token>` on every call.
//!
//! A password is exchanged for a session token when the client connects
//! (over TLS: nodes refuse passwords otherwise), and again before the
//! session expires, by a task that ends with the client.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use strata_proto::v1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;

use crate::{ClientError, Result};

/// How the client proves who it is.
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing (a node without `--require-auth`, or a client certificate).
    #[default]
    None,
    /// An API token (`strata token create`).
    Token(String),
    /// A user's password, exchanged for session tokens.
    Password { user: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => write!(f, "None"),
            Credentials::Token(_) => write!(f, "Token(<secret>)"),
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?}, password: <secret> }}"),
        }
    }
}

/// The bearer token in use, shared by every connection of a client.
#[derive(Debug, Clone, Default)]
pub struct Bearer {
    value: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

impl Bearer {
    fn set(&self, token: &str) -> Result<()> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Auth("the token holds characters a header cannot carry".into()))?;
        if let Ok(mut v) = self.value.write() {
            *v = Some(value);
        }
        Ok(())
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Ok(v) = self.value.read()
            && let Some(value) = v.as_ref()
        {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Sets up `bearer` from `credentials`: a token at once; a password by
/// logging in through `channel`, then renewing in the background while
/// `alive` (the client) exists.
pub(crate) async fn start(credentials: &Credentials, bearer: &Bearer, channel: Channel, alive: Weak<()>) -> Result<()> {
    match credentials {
        Credentials::None => Ok(()),
        Credentials::Token(token) => bearer.set(token),
        Credentials::Password { user, password } => {
            let expires_ms = renew(bearer, channel.clone(), user, password).await?;
            let (bearer, user, password) = (bearer.clone(), user.clone(), password.clone());
            tokio::spawn(async move {
                let mut expires_ms = expires_ms;
                loop {
                    // Renew at half the remaining lifetime (at least 1 s).
                    let left = expires_ms.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis((left / 2).max(1000))).await;
                    if alive.upgrade().is_none() {
                        return;
                    }
                    match renew(&bearer, channel.clone(), &user, &password).await {
                        Ok(e) => expires_ms = e,
                        Err(e) => tracing::warn!(error = %e, "cannot renew the session; retrying"),
                    }
                }
            });
            Ok(())
        }
    }
}

async fn renew(bearer: &Bearer, channel: Channel, user: &str, password: &str) -> Result<u64> {
    let mut security = pb::security_client::SecurityClient::new(channel);
    let mut request = tonic::Request::new(pb::LoginRequest { user: user.to_owned(), password: password.to_owned() });
    request.set_timeout(Duration::from_secs(10));
    let answer = security.login(request).await.map_err(ClientError::from)?.into_inner();
    bearer.set(&answer.token)?;
    Ok(answer.expires_ms)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
