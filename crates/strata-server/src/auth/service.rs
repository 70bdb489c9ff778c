//! The `strata.v1.Security` service: login, users, API tokens, ACLs.
//!
//! Every change is a controller command (replicated, applied the same on
//! every node) and is logged on the node that made it, with who asked.
//! Changes need ALTER on the cluster and listings DESCRIBE on the cluster
//! (superusers pass every check). A password is accepted only over TLS.

use std::sync::Arc;

use strata_proto::v1 as pb;
use strata_raft::security::{
    AclBinding, CLUSTER_RESOURCE, MAX_DESCRIPTION_LEN, Operation, PatternType, Permission, ResourceType,
    SecurityCommand, TokenRecord, check_acl, check_user_name,
};
use tonic::{Code, Request, Response, Status};

use super::credentials::{self, SESSION_LIFETIME_MS};
use super::{Auth, Identity, Resource, identity_of, now_ms, unauthenticated};
use crate::incoming::ClientInfo;
use crate::replication::Replication;
use crate::status::{invalid, status};

/// Longest password accepted (PBKDF2 hashes any length; this bounds the
/// work a request can ask for).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Most password hashes computed at once (each is ~100,000 HMACs: unbounded,
/// logins could take every core and the blocking threads storage needs).
pub const PASSWORD_HASHES_AT_ONCE: usize = 2;
/// How long a login waits for its turn before `SERVER_BUSY`.
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Largest request of this service (passwords, names, ACL batches).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct SecurityService {
    auth: Arc<Auth>,
    replication: Arc<Replication>,
    hashing: Arc<tokio::sync::Semaphore>,
}

impl SecurityService {
    pub fn new(auth: Arc<Auth>, replication: Arc<Replication>) -> Self {
        Self { auth, replication, hashing: Arc::new(tokio::sync::Semaphore::new(PASSWORD_HASHES_AT_ONCE)) }
    }

    pub fn into_server(self) -> pb::security_server::SecurityServer<Self> {
        pb::security_server::SecurityServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// A new user (`create`) or a new password: over TLS, by a caller with
    /// ALTER on the cluster.
    async fn put_user<T>(
        &self,
        request: &Request<T>,
        name: String,
        password: String,
        create: bool,
    ) -> Result<(), Status> {
        over_tls(request)?;
        let identity = self.require(request, Operation::Alter)?;
        check_user_name(&name).map_err(|e| invalid(e.to_string()))?;
        password_checked(&password)?;
        let hashed = name.clone();
        let user = self
            .hash(move || credentials::hash_password(&hashed, &password))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        self.replication.propose_security(SecurityCommand::PutUser { user, create }).await?;
        let what = if create { "created user" } else { "set the password (its sessions end) of user" };
        audit(&identity, &format!("{what} '{name}'"));
        Ok(())
    }

    /// Runs a password hash on a blocking thread, at most
    /// [`PASSWORD_HASHES_AT_ONCE`] at a time.
    async fn hash<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
        let permit = tokio::time::timeout(HASH_WAIT, Arc::clone(&self.hashing).acquire_owned())
            .await
            .map_err(|_| {
                status(
                    Code::ResourceExhausted,
                    pb::ErrorReason::ServerBusy,
                    format!("{PASSWORD_HASHES_AT_ONCE} password checks are running; retry later"),
                )
            })?
            .map_err(|_| Status::unavailable("the node is shutting down"))?;
        let done = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        });
        done.await.map_err(|e| Status::internal(e.to_string()))
    }

    fn require<T>(&self, request: &Request<T>, operation: Operation) -> Result<Identity, Status> {
        let identity = identity_of(request);
        self.auth.authorize_identity(&identity, operation, Resource::Cluster)?;
        Ok(identity)
    }

    /// Session tokens need the cluster's session key: made once, by the
    /// first node that needs it (a race is settled by the controller).
    async fn session_key(&self) -> Result<String, Status> {
        if let Some(key) = self.auth.with_security(|s| s.session_key.clone()) {
            return Ok(key);
        }
        let key = credentials::new_session_key().map_err(|e| Status::internal(e.to_string()))?;
        match self.replication.propose_security(SecurityCommand::SetSessionKey { key }).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::FailedPrecondition => {}
            Err(s) => return Err(s),
        }
        self.auth
            .with_security(|s| s.session_key.clone())
            .ok_or_else(|| Status::unavailable("the session key is not set yet; retry"))
    }
}

/// What a login for a user that does not exist is checked against (its
/// hash matches no password: a 32-byte key of zeros).
static UNKNOWN_USER: std::sync::LazyLock<strata_raft::security::UserRecord> =
    std::sync::LazyLock::new(|| strata_raft::security::UserRecord {
        name: String::new(),
        salt: "00".repeat(16),
        iterations: credentials::PASSWORD_ITERATIONS,
        hash: "00".repeat(32),
        generation: 0,
    });

fn password_checked(password: &str) -> Result<(), Status> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(invalid(format!("a password is 1 to {MAX_PASSWORD_LEN} bytes")));
    }
    Ok(())
}

/// Passwords travel only inside TLS.
fn over_tls<T>(request: &Request<T>) -> Result<(), Status> {
    let info = request.extensions().get::<ClientInfo>();
    if info.is_some_and(|i| i.tls || i.internal) {
        return Ok(());
    }
    Err(status(
        Code::FailedPrecondition,
        pb::ErrorReason::TlsRequired,
        "a password is accepted only over TLS: give the node --tls-cert and --tls-key, and the client --tls-ca",
    ))
}

fn audit(identity: &Identity, what: &str) {
    tracing::info!(target: "strata::audit", principal = %identity.principal, client = ?identity.remote, "{what}");
}

pub fn acl_from_proto(b: &pb::AclBinding) -> Result<AclBinding, Status> {
    let acl = AclBinding {
        principal: b.principal.clone(),
        host: if b.host.is_empty() {
            "*".to_owned()
        } else {
            strata_raft::security::canonical_host(&b.host)
                .ok_or_else(|| invalid(format!("an ACL host is an IP address or *, not {:?}", b.host)))?
        },
        resource_type: resource_type(b.resource_type)?.ok_or_else(|| invalid("an ACL needs a resource type"))?,
        resource_name: b.resource_name.clone(),
        pattern_type: pattern_type(b.pattern_type)?.unwrap_or(PatternType::Literal),
        operation: operation(b.operation)?.ok_or_else(|| invalid("an ACL needs an operation"))?,
        permission: permission(b.permission)?.ok_or_else(|| invalid("an ACL needs a permission (allow or deny)"))?,
    };
    let acl = if acl.resource_type == ResourceType::Cluster && acl.resource_name.is_empty() {
        AclBinding { resource_name: CLUSTER_RESOURCE.to_owned(), ..acl }
    } else {
        acl
    };
    check_acl(&acl).map_err(|e| invalid(e.to_string()))?;
    Ok(acl)
}

pub fn acl_to_proto(a: &AclBinding) -> pb::AclBinding {
    pb::AclBinding {
        principal: a.principal.clone(),
        host: a.host.clone(),
        resource_type: match a.resource_type {
            ResourceType::Topic => pb::AclResourceType::AclResourceTopic,
            ResourceType::Group => pb::AclResourceType::AclResourceGroup,
            ResourceType::Cluster => pb::AclResourceType::AclResourceCluster,
        } as i32,
        resource_name: a.resource_name.clone(),
        pattern_type: match a.pattern_type {
            PatternType::Literal => pb::AclPatternType::AclPatternLiteral,
            PatternType::Prefixed => pb::AclPatternType::AclPatternPrefixed,
        } as i32,
        operation: operation_to_proto(a.operation) as i32,
        permission: match a.permission {
            Permission::Allow => pb::AclPermission::Allow,
            Permission::Deny => pb::AclPermission::Deny,
        } as i32,
    }
}

fn resource_type(v: i32) -> Result<Option<ResourceType>, Status> {
    match pb::AclResourceType::try_from(v) {
        Ok(pb::AclResourceType::Unspecified) => Ok(None),
        Ok(pb::AclResourceType::AclResourceTopic) => Ok(Some(ResourceType::Topic)),
        Ok(pb::AclResourceType::AclResourceGroup) => Ok(Some(ResourceType::Group)),
        Ok(pb::AclResourceType::AclResourceCluster) => Ok(Some(ResourceType::Cluster)),
        Err(_) => Err(invalid(format!("unknown ACL resource type {v}"))),
    }
}

fn pattern_type(v: i32) -> Result<Option<PatternType>, Status> {
    match pb::AclPatternType::try_from(v) {
        Ok(pb::AclPatternType::Unspecified) => Ok(None),
        Ok(pb::AclPatternType::AclPatternLiteral) => Ok(Some(PatternType::Literal)),
        Ok(pb::AclPatternType::AclPatternPrefixed) => Ok(Some(PatternType::Prefixed)),
        Err(_) => Err(invalid(format!("unknown ACL pattern type {v}"))),
    }
}

const OPERATIONS: [(pb::AclOperation, Operation); 10] = [
    (pb::AclOperation::All, Operation::All),
    (pb::AclOperation::Read, Operation::Read),
    (pb::AclOperation::Write, Operation::Write),
    (pb::AclOperation::Create, Operation::Create),
    (pb::AclOperation::Delete, Operation::Delete),
    (pb::AclOperation::Alter, Operation::Alter),
    (pb::AclOperation::Describe, Operation::Describe),
    (pb::AclOperation::DescribeConfigs, Operation::DescribeConfigs),
    (pb::AclOperation::AlterConfigs, Operation::AlterConfigs),
    (pb::AclOperation::ClusterAction, Operation::ClusterAction),
];

fn operation(v: i32) -> Result<Option<Operation>, Status> {
    match pb::AclOperation::try_from(v) {
        Ok(pb::AclOperation::Unspecified) => Ok(None),
        Ok(p) => Ok(OPERATIONS.iter().find(|(q, _)| *q == p).map(|(_, o)| *o)),
        Err(_) => Err(invalid(format!("unknown ACL operation {v}"))),
    }
}

fn operation_to_proto(o: Operation) -> pb::AclOperation {
    OPERATIONS.iter().find(|(_, q)| *q == o).map_or(pb::AclOperation::Unspecified, |(p, _)| *p)
}

fn permission(v: i32) -> Result<Option<Permission>, Status> {
    match pb::AclPermission::try_from(v) {
        Ok(pb::AclPermission::Unspecified) => Ok(None),
        Ok(pb::AclPermission::Allow) => Ok(Some(Permission::Allow)),
        Ok(pb::AclPermission::Deny) => Ok(Some(Permission::Deny)),
        Err(_) => Err(invalid(format!("unknown ACL permission {v}"))),
    }
}

/// The bindings of `security` that `filter` selects (unset fields match
/// anything; a host is compared in its canonical form, as stored).
fn matching(
    security: &strata_raft::security::SecurityState,
    filter: &pb::AclFilter,
) -> Result<Vec<AclBinding>, Status> {
    let host = match &filter.host {
        Some(h) => Some(
            strata_raft::security::canonical_host(h)
                .ok_or_else(|| invalid(format!("an ACL host is an IP address or *, not {h:?}")))?,
        ),
        None => None,
    };
    let (kind, pattern) = (resource_type(filter.resource_type)?, pattern_type(filter.pattern_type)?);
    let (op, permission) = (operation(filter.operation)?, permission(filter.permission)?);
    Ok(security
        .acls
        .iter()
        .filter(|acl| {
            filter.principal.as_ref().is_none_or(|p| *p == acl.principal)
                && host.as_ref().is_none_or(|h| *h == acl.host)
                && kind.is_none_or(|t| t == acl.resource_type)
                && filter.resource_name.as_ref().is_none_or(|n| *n == acl.resource_name)
                && pattern.is_none_or(|t| t == acl.pattern_type)
                && op.is_none_or(|o| o == acl.operation)
                && permission.is_none_or(|p| p == acl.permission)
        })
        .cloned()
        .collect())
}

fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        user: t.user.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        description: t.description.clone(),
    }
}

#[tonic::async_trait]
impl pb::security_server::Security for SecurityService {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        over_tls(&request)?;
        let remote = identity_of(&request).remote;
        let req = request.into_inner();
        let wrong = || unauthenticated("wrong user name or password");
        if check_user_name(&req.user).is_err() || req.password.len() > MAX_PASSWORD_LEN {
            return Err(wrong());
        }
        // An unknown user costs the same hash as a known one: the answer's
        // time does not tell which names exist.
        let user = self.auth.user(&req.user);
        let known = user.clone().unwrap_or_else(|| UNKNOWN_USER.clone());
        let password = req.password;
        let matches = self.hash(move || credentials::password_matches(&known, &password)).await?;
        let Some(user) = user.filter(|_| matches) else {
            if self.auth.audit_once(&format!("login {}", req.user)) {
                tracing::warn!(target: "strata::audit", user = ?req.user, client = ?remote, "refused a login: wrong user or password");
            }
            return Err(wrong());
        };
        let key = self.session_key().await?;
        let expires_ms = now_ms() + SESSION_LIFETIME_MS;
        let token = credentials::new_session(&key, &user.name, user.generation, expires_ms)
            .ok_or_else(|| Status::internal("the session key is unusable"))?;
        Ok(Response::new(pb::LoginResponse { token, expires_ms }))
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let identity = identity_of(&request);
        Ok(Response::new(pb::WhoAmIResponse {
            principal: identity.principal.to_string(),
            superuser: self.auth.is_superuser(&identity.principal),
            authorization_enabled: self.auth.enabled(),
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let (name, password) = (request.get_ref().name.clone(), request.get_ref().password.clone());
        self.put_user(&request, name, password, true).await?;
        Ok(Response::new(pb::CreateUserResponse {}))
    }

    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let (name, password) = (request.get_ref().name.clone(), request.get_ref().password.clone());
        self.put_user(&request, name, password, false).await?;
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let identity = self.require(&request, Operation::Alter)?;
        let name = request.into_inner().name;
        check_user_name(&name).map_err(|e| invalid(e.to_string()))?;
        let tokens = self.auth.with_security(|s| s.tokens.values().filter(|t| t.user == name).count()) as u32;
        self.replication.propose_security(SecurityCommand::DeleteUser { name: name.clone() }).await?;
        audit(&identity, &format!("deleted user '{name}' and its {tokens} token(s)"));
        Ok(Response::new(pb::DeleteUserResponse { tokens_revoked: tokens }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.require(&request, Operation::Describe)?;
        let users = self.auth.with_security(|s| s.users.keys().cloned().collect());
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let identity = self.require(&request, Operation::Alter)?;
        let req = request.into_inner();
        check_user_name(&req.user).map_err(|e| invalid(e.to_string()))?;
        if req.description.len() > MAX_DESCRIPTION_LEN {
            return Err(invalid(format!("a token description is at most {MAX_DESCRIPTION_LEN} bytes")));
        }
        let (token, id, hash) = credentials::new_token().map_err(|e| Status::internal(e.to_string()))?;
        let created_ms = now_ms();
        let expires_ms = match req.expires_in_ms {
            0 => 0,
            d => created_ms.checked_add(d).ok_or_else(|| invalid("the token's lifetime is too long"))?,
        };
        let record =
            TokenRecord { id, user: req.user.clone(), hash, created_ms, expires_ms, description: req.description };
        let info = token_info(&record);
        self.replication.propose_security(SecurityCommand::CreateToken(record)).await?;
        audit(&identity, &format!("created token {} for user '{}'", info.id, req.user));
        Ok(Response::new(pb::CreateTokenResponse { token, info: Some(info) }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let identity = self.require(&request, Operation::Alter)?;
        let id = request.into_inner().id;
        // The whole token may be given: its id is the part after stk_.
        let id = credentials::parse_token(&id).map_or(id.clone(), |(id, _)| id.to_owned());
        self.replication.propose_security(SecurityCommand::RevokeToken { id: id.clone() }).await?;
        audit(&identity, &format!("revoked token {id}"));
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.require(&request, Operation::Describe)?;
        let user = request.into_inner().user;
        let tokens = self.auth.with_security(|s| {
            s.tokens.values().filter(|t| user.is_empty() || t.user == user).map(token_info).collect()
        });
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn create_acls(
        &self,
        request: Request<pb::CreateAclsRequest>,
    ) -> Result<Response<pb::CreateAclsResponse>, Status> {
        let identity = self.require(&request, Operation::Alter)?;
        let acls = request.into_inner().acls.iter().map(acl_from_proto).collect::<Result<Vec<_>, _>>()?;
        if acls.is_empty() {
            return Err(invalid("no ACL binding given"));
        }
        let created = self.auth.with_security(|s| acls.iter().filter(|a| !s.acls.contains(*a)).count()) as u32;
        self.replication.propose_security(SecurityCommand::CreateAcls { acls: acls.clone() }).await?;
        for acl in &acls {
            audit(&identity, &format!("created ACL {acl:?}"));
        }
        Ok(Response::new(pb::CreateAclsResponse { created }))
    }

    async fn delete_acls(
        &self,
        request: Request<pb::DeleteAclsRequest>,
    ) -> Result<Response<pb::DeleteAclsResponse>, Status> {
        let identity = self.require(&request, Operation::Alter)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let unset = pb::AclFilter::default();
        if filter == unset {
            return Err(invalid(
                "a deletion needs a filter: at least one field set (a resource type selects all of it)",
            ));
        }
        let matched = self.auth.with_security(|s| matching(s, &filter))?;
        for chunk in matched.chunks(strata_raft::security::MAX_ACLS_PER_COMMAND) {
            self.replication.propose_security(SecurityCommand::DeleteAcls { acls: chunk.to_vec() }).await?;
        }
        for acl in &matched {
            audit(&identity, &format!("deleted ACL {acl:?}"));
        }
        Ok(Response::new(pb::DeleteAclsResponse { deleted: matched.iter().map(acl_to_proto).collect() }))
    }

    async fn list_acls(&self, request: Request<pb::ListAclsRequest>) -> Result<Response<pb::ListAclsResponse>, Status> {
        self.require(&request, Operation::Describe)?;
        let filter = request.into_inner().filter.unwrap_or_default();
        let acls = self.auth.with_security(|s| matching(s, &filter))?;
        Ok(Response::new(pb::ListAclsResponse { acls: acls.iter().map(acl_to_proto).collect() }))
    }
}

/// Creates the bootstrap user (`STRATA_BOOTSTRAP_USER`) while the cluster
/// has no users; retries until the controller takes it, another node made
/// it, or some user exists.
pub async fn bootstrap_user(auth: Arc<Auth>, replication: Arc<Replication>, name: String, password: String) {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        if auth.with_security(|s| !s.users.is_empty()) {
            return;
        }
        let hashed = {
            let (name, password) = (name.clone(), password.clone());
            tokio::task::spawn_blocking(move || credentials::hash_password(&name, &password)).await
        };
        let Ok(Ok(user)) = hashed else {
            tracing::error!("cannot hash the bootstrap user's password");
            return;
        };
        match replication.propose_security(SecurityCommand::PutUser { user, create: true }).await {
            Ok(_) => {
                tracing::info!(target: "strata::audit", user = %name, "created the bootstrap user (a superuser)");
                return;
            }
            Err(s) if s.code() == Code::FailedPrecondition => return,
            Err(s) => tracing::debug!(error = %s.message(), "the bootstrap user is not created yet; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}
