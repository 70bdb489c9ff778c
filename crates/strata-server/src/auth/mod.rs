//! Who is calling, and what they may do.
//!
//! - [`layer`]: every request on the client listener passes through
//!   [`AuthLayer`], which refuses a plaintext client on a TLS listener,
//!   authenticates the caller ([`Auth::authenticate`]) and puts its
//!   [`Identity`] in the request's extensions; on the cluster listener the
//!   caller is the peer node its certificate names.
//! - Services call [`Auth::authorize`] with the operation and resource
//!   Kafka checks for the same job (`docs/ARCHITECTURE.md` has the table).
//! - [`credentials`]: password hashes, API tokens, session tokens.
//! - [`rules`]: client certificate subjects to principal names.
//! - [`acl`]: ACL evaluation.
//! - [`service`]: the `strata.v1.Security` service (login, users, tokens,
//!   ACLs).
//!
//! Authentication is required when the node is started with
//! `--require-auth`, and then authorization is on, with no way to turn it
//! off alone: everything an ACL does not allow is refused. Without it,
//! every caller is `User:ANONYMOUS` and may do everything (a node says so
//! at startup when it listens beyond loopback).

pub mod acl;
pub mod credentials;
pub mod layer;
pub mod rules;
pub mod service;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_proto::v1::ErrorReason;
use strata_raft::controller::Metadata;
use strata_raft::security::{Operation, SecurityState};
use tokio::sync::watch;
use tonic::{Code, Status};

pub use acl::Resource;
pub use layer::AuthLayer;
pub use rules::PrincipalRules;
pub use strata_raft::security::{check_principal_name, check_user_name};

use crate::incoming::ClientInfo;

/// How a node authenticates and authorizes.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Authentication required (and so authorization on).
    pub require_auth: bool,
    /// Principals (`User:NAME`) that every check lets through.
    pub superusers: Vec<String>,
    /// Client certificate subjects to principal names.
    pub principal_rules: PrincipalRules,
    /// The first user of a new cluster (`STRATA_BOOTSTRAP_USER`), created
    /// while the cluster has no users; a superuser.
    pub bootstrap_user: Option<(String, String)>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("require_auth", &self.require_auth)
            .field("superusers", &self.superusers)
            .field("bootstrap_user", &self.bootstrap_user.as_ref().map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

/// Who a caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off.
    Anonymous,
    /// `User:NAME`.
    User(String),
    /// A cluster node: this one (its group coordinator's own requests) or
    /// a peer on the cluster listener (`None` when the cluster runs without
    /// TLS, where nothing is known).
    Node(Option<u64>),
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => write!(f, "User:ANONYMOUS"),
            Principal::User(name) => write!(f, "User:{name}"),
            Principal::Node(Some(id)) => write!(f, "Node:{id}"),
            Principal::Node(None) => write!(f, "Node:?"),
        }
    }
}

/// How a caller proved who it is (checked again on long streams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Certificate,
    Token { id: String },
    Session { generation: u64, expires_ms: u64 },
}

/// The caller of a request (in its extensions).
#[derive(Debug, Clone)]
pub struct Identity {
    pub principal: Principal,
    pub remote: Option<IpAddr>,
    pub credential: Credential,
}

impl Identity {
    pub fn node(id: Option<u64>) -> Self {
        Self { principal: Principal::Node(id), remote: None, credential: Credential::None }
    }
}

/// The part of the metadata checks read, derived once per change.
struct View {
    metadata: Arc<Metadata>,
    acls: acl::AclIndex,
}

/// The node's authenticator and authorizer.
pub struct Auth {
    config: AuthConfig,
    metadata: watch::Receiver<Arc<Metadata>>,
    view: Mutex<Arc<View>>,
    /// When a refusal was last logged per (principal, operation, resource)
    /// kind, to keep a refused client's retries from flooding the log.
    audit: Mutex<std::collections::HashMap<String, Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("require_auth", &self.config.require_auth).finish_non_exhaustive()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn unauthenticated(message: impl Into<String>) -> Status {
    crate::status::status(Code::Unauthenticated, ErrorReason::AuthenticationFailed, message)
}

/// Refusals of one kind are logged at most this often.
const AUDIT_QUIET: Duration = Duration::from_secs(1);
/// Most refusal kinds remembered for [`AUDIT_QUIET`].
const AUDIT_KEYS: usize = 4096;

impl Auth {
    pub fn new(config: AuthConfig, metadata: watch::Receiver<Arc<Metadata>>) -> Arc<Self> {
        let view =
            Mutex::new(Arc::new(View { metadata: Arc::new(Metadata::default()), acls: acl::AclIndex::default() }));
        Arc::new(Self { config, metadata, view, audit: Mutex::default() })
    }

    /// Whether authentication is required (and so authorization on).
    pub fn enabled(&self) -> bool {
        self.config.require_auth
    }

    /// The metadata's security state and ACL index as of now.
    fn view(&self) -> Arc<View> {
        let metadata = Arc::clone(&self.metadata.borrow());
        let Ok(mut cached) = self.view.lock() else {
            return Arc::new(View { acls: acl::AclIndex::new(&metadata.security.acls), metadata });
        };
        if !Arc::ptr_eq(&cached.metadata, &metadata) {
            *cached = Arc::new(View { acls: acl::AclIndex::new(&metadata.security.acls), metadata });
        }
        Arc::clone(&cached)
    }

    /// `read` of the security state as of now (without copying it).
    pub fn with_security<T>(&self, read: impl FnOnce(&SecurityState) -> T) -> T {
        read(&self.view().metadata.security)
    }

    /// One user's record, if it exists (without copying the rest).
    pub fn user(&self, name: &str) -> Option<strata_raft::security::UserRecord> {
        self.with_security(|s| s.users.get(name).cloned())
    }

    /// Whether a line about `key` may be logged now (at most one per key
    /// per second, a bounded table).
    pub fn audit_once(&self, key: &str) -> bool {
        self.audit
            .lock()
            .map(|mut seen| {
                let now = Instant::now();
                if seen.len() >= AUDIT_KEYS {
                    seen.retain(|_, t| now.duration_since(*t) < AUDIT_QUIET);
                    if seen.len() >= AUDIT_KEYS {
                        seen.clear();
                    }
                }
                match seen.get(key) {
                    Some(t) if now.duration_since(*t) < AUDIT_QUIET => false,
                    _ => {
                        seen.insert(key.to_owned(), now);
                        true
                    }
                }
            })
            .unwrap_or(true)
    }

    /// Who sent a request on the client listener: a bearer token (API or
    /// session), else a client certificate, else nobody. Errors name what
    /// is wrong with the credentials given.
    pub fn authenticate(&self, headers: &http::HeaderMap, info: Option<&ClientInfo>) -> Result<Identity, Status> {
        let remote = info.and_then(|i| i.remote).map(|a| a.ip());
        if info.is_some_and(|i| i.internal) {
            return Ok(Identity::node(None));
        }
        if !self.config.require_auth {
            return Ok(Identity { principal: Principal::Anonymous, remote, credential: Credential::None });
        }
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let value = value.to_str().map_err(|_| unauthenticated("the authorization header is not text"))?;
            let token = value
                .strip_prefix("Bearer ")
                .ok_or_else(|| unauthenticated("the authorization header must be 'Bearer <token>'"))?
                .trim();
            let (principal, credential) = self.check_bearer(token)?;
            return Ok(Identity { principal, remote, credential });
        }
        if let Some(subject) = info.and_then(|i| i.certificate_subject.as_deref()) {
            let name = self.config.principal_rules.map(subject).ok_or_else(|| {
                unauthenticated(format!(
                    "the client certificate's subject '{subject}' matches no principal mapping rule \
                     (tls_principal_rules)"
                ))
            })?;
            return Ok(Identity { principal: Principal::User(name), remote, credential: Credential::Certificate });
        }
        Err(unauthenticated(
            "this node requires authentication: send 'authorization: Bearer <token>' (an API token, or a session \
             token from Security/Login), or present a client certificate (the CLI: --token, --user/--password, \
             --tls-cert/--tls-key)",
        ))
    }

    fn check_bearer(&self, token: &str) -> Result<(Principal, Credential), Status> {
        let view = self.view();
        let security = &view.metadata.security;
        if credentials::is_session(token) {
            let key = security.session_key.as_deref().ok_or_else(|| unauthenticated("unknown session token"))?;
            let (user, generation, expires_ms) = credentials::verify_session(key, token)
                .ok_or_else(|| unauthenticated("the session token is not valid (not issued by this cluster)"))?;
            // Nodes issue sessions for at most their lifetime (a minute of
            // clock skew allowed): a longer one was not made by a node.
            if expires_ms > now_ms() + credentials::SESSION_LIFETIME_MS + 60_000 {
                return Err(unauthenticated("the session token is not valid (too long a lifetime)"));
            }
            let credential = Credential::Session { generation, expires_ms };
            self.still_valid_in(security, &Principal::User(user.clone()), &credential)?;
            return Ok((Principal::User(user), credential));
        }
        let (id, hash) = credentials::parse_token(token).ok_or_else(|| unauthenticated("malformed token"))?;
        let record = security.tokens.get(id).ok_or_else(|| unauthenticated("unknown or revoked token"))?;
        if !credentials::same_hash(&record.hash, &hash) {
            return Err(unauthenticated("unknown or revoked token"));
        }
        let credential = Credential::Token { id: id.to_owned() };
        let principal = Principal::User(record.user.clone());
        self.still_valid_in(security, &principal, &credential)?;
        Ok((principal, credential))
    }

    /// Whether a caller's credential still holds (the user and token exist,
    /// nothing expired, the password did not change): long streams are
    /// checked with it every second.
    pub fn still_valid(&self, identity: &Identity) -> Result<(), Status> {
        let view = self.view();
        self.still_valid_in(&view.metadata.security, &identity.principal, &identity.credential)
    }

    fn still_valid_in(
        &self,
        security: &SecurityState,
        principal: &Principal,
        credential: &Credential,
    ) -> Result<(), Status> {
        let Principal::User(user) = principal else { return Ok(()) };
        match credential {
            Credential::None | Credential::Certificate => Ok(()),
            Credential::Token { id } => {
                let record = security.tokens.get(id).ok_or_else(|| unauthenticated("the token was revoked"))?;
                if record.expires_ms != 0 && record.expires_ms <= now_ms() {
                    return Err(unauthenticated("the token has expired"));
                }
                if !security.users.contains_key(&record.user) {
                    return Err(unauthenticated(format!("user '{}' was deleted", record.user)));
                }
                Ok(())
            }
            Credential::Session { generation, expires_ms } => {
                if *expires_ms <= now_ms() {
                    return Err(unauthenticated("the session has expired: log in again"));
                }
                match security.users.get(user) {
                    None => Err(unauthenticated(format!("user '{user}' was deleted"))),
                    Some(u) if u.generation != *generation => {
                        Err(unauthenticated("the password was changed: log in again"))
                    }
                    Some(_) => Ok(()),
                }
            }
        }
    }

    /// Whether every check lets `principal` through: a node, a configured
    /// superuser or the bootstrap user.
    pub fn is_superuser(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Node(_) => true,
            Principal::Anonymous => false,
            Principal::User(name) => {
                self.config.superusers.iter().any(|s| s.strip_prefix("User:") == Some(name.as_str()))
                    || self.config.bootstrap_user.as_ref().is_some_and(|(b, _)| b == name)
            }
        }
    }

    /// Whether `identity` may do `operation` on `resource` (no logging:
    /// for filtering listings).
    pub fn may(&self, identity: &Identity, operation: Operation, resource: Resource<'_>) -> bool {
        if !self.config.require_auth || self.is_superuser(&identity.principal) {
            return true;
        }
        let Principal::User(name) = &identity.principal else { return false };
        let view = self.view();
        if view.acls.is_empty() {
            return false;
        }
        view.acls.allows(&format!("User:{name}"), identity.remote, operation, resource)
    }

    /// `Ok` when the request's caller may do `operation` on `resource`;
    /// else `PERMISSION_DENIED` naming the missing permission, and one
    /// audit line.
    pub fn authorize<T>(
        &self,
        request: &tonic::Request<T>,
        operation: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        self.authorize_identity(&identity_of(request), operation, resource)
    }

    pub fn authorize_identity(
        &self,
        identity: &Identity,
        operation: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        if self.may(identity, operation, resource) {
            return Ok(());
        }
        let principal = identity.principal.to_string();
        let log = self.audit_once(&format!("{principal} {} {resource}", operation.name()));
        if log {
            // Names as debug strings: a client's newline cannot forge a line.
            tracing::warn!(
                target: "strata::audit",
                principal = ?principal,
                client = ?identity.remote,
                operation = operation.name(),
                resource = ?resource.to_string(),
                "refused: no ACL allows the operation"
            );
        }
        Err(crate::status::status(
            Code::PermissionDenied,
            ErrorReason::NotAuthorized,
            format!("{principal} may not {} {resource}: no ACL allows it", operation.name()),
        ))
    }
}

/// The caller of a request; a request without one (it did not pass the
/// layer) is nobody's, and only an open node lets it through.
pub fn identity_of<T>(request: &tonic::Request<T>) -> Identity {
    request.extensions().get::<Identity>().cloned().unwrap_or(Identity {
        principal: Principal::Anonymous,
        remote: None,
        credential: Credential::None,
    })
}
