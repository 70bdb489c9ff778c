//! The cluster's users, API tokens and ACLs, held in the controller's
//! metadata (replicated, and so the same on every node and kept across
//! restarts).
//!
//! Nothing secret is stored in a form that can be used: a password only as
//! a salted PBKDF2-HMAC-SHA256 hash, an API token only as the SHA-256 of
//! its secret. The session key signs short-lived session tokens; like every
//! node's data directory, it must be kept from other users of the host.
//!
//! The checks here are the ones applying relies on (bounded sizes, names
//! that can be printed); they are made before proposing and again when
//! applying, where a failure leaves the metadata unchanged on every node.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Most users, tokens and ACL bindings a cluster holds.
pub const MAX_USERS: usize = 10_000;
pub const MAX_TOKENS: usize = 10_000;
pub const MAX_ACLS: usize = 100_000;
/// Most ACL bindings one command carries.
pub const MAX_ACLS_PER_COMMAND: usize = 1_000;
/// Longest user name.
pub const MAX_USER_NAME_LEN: usize = 128;
/// Longest ACL resource name (a topic or group name), host and token
/// description.
pub const MAX_RESOURCE_NAME_LEN: usize = 249;
pub const MAX_HOST_LEN: usize = 255;
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// PBKDF2 iterations a stored password may claim.
pub const MIN_ITERATIONS: u32 = 1_000;
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// A user and its password's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// PBKDF2-HMAC-SHA256: salt and derived key in hex, iterations.
    pub salt: String,
    pub iterations: u32,
    pub hash: String,
    /// Bumped with each password change: session tokens carry it, so a
    /// change ends every session of the user.
    pub generation: u64,
}

/// An API token: its public id, whose it is, and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub hash: String,
    pub created_ms: u64,
    /// 0: never.
    pub expires_ms: u64,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    Literal,
    Prefixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    ClusterAction,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "ALL",
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::Describe => "DESCRIBE",
            Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
            Operation::AlterConfigs => "ALTER_CONFIGS",
            Operation::ClusterAction => "CLUSTER_ACTION",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One ACL: `permission` for `principal` from `host` to do `operation` on
/// the resources `pattern_type` + `resource_name` select.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub principal: String,
    pub host: String,
    pub resource_type: ResourceType,
    pub resource_name: String,
    pub pattern_type: PatternType,
    pub operation: Operation,
    pub permission: Permission,
}

/// The security part of the cluster's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    pub users: BTreeMap<String, UserRecord>,
    /// By token id.
    pub tokens: BTreeMap<String, TokenRecord>,
    pub acls: BTreeSet<AclBinding>,
    /// Signs session tokens (hex); set once, by the first node that needs it.
    pub session_key: Option<String>,
    /// The last user generation handed out: generations only go up, across
    /// users, so a user deleted and made again never revives an old
    /// session.
    #[serde(default)]
    pub last_generation: u64,
}

/// A change to the security state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// A new user (`create`), or a new password for an existing one.
    PutUser {
        user: UserRecord,
        create: bool,
    },
    /// The user and its tokens.
    DeleteUser {
        name: String,
    },
    CreateToken(TokenRecord),
    RevokeToken {
        id: String,
    },
    CreateAcls {
        acls: Vec<AclBinding>,
    },
    /// Exactly these bindings (the proposer resolved its filter).
    DeleteAcls {
        acls: Vec<AclBinding>,
    },
    SetSessionKey {
        key: String,
    },
}

/// What no security command may carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecurity {
    #[error(
        "a user name is 1 to {MAX_USER_NAME_LEN} characters of letters, digits and . _ @ - (not starting with \
         '-'), not {0:?}"
    )]
    UserName(String),
    #[error(
        "a stored password must be a PBKDF2 hash with a salt of 16 to 64 bytes, {MIN_ITERATIONS} to {MAX_ITERATIONS} iterations and a 32-byte key"
    )]
    Credential,
    #[error("a token id is 16 hexadecimal digits and its hash 64, not {0:?}")]
    Token(String),
    #[error("a token description is at most {MAX_DESCRIPTION_LEN} bytes")]
    Description,
    #[error("a session key is 64 hexadecimal digits")]
    SessionKey,
    #[error("an ACL principal is User:NAME or User:*, not {0:?}")]
    Principal(String),
    #[error("an ACL host is an IP address (in its canonical form) or *, not {0:?}")]
    Host(String),
    #[error("an ACL on {kind} names 1 to {MAX_RESOURCE_NAME_LEN} printable characters, not {name:?}")]
    ResourceName { kind: &'static str, name: String },
    #[error("an ACL on the cluster names the resource 'kafka-cluster' (or '*'), literally")]
    ClusterName,
    #[error("at most {MAX_ACLS_PER_COMMAND} ACL bindings at once, not {0}")]
    TooManyAcls(usize),
    #[error("an ACL operation {op} does not apply to {kind}")]
    OperationFor { op: &'static str, kind: &'static str },
    #[error("more users, tokens or ACL bindings than a cluster holds")]
    TooMany,
}

/// Why a security command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityRejected {
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("no user '{0}'")]
    UnknownUser(String),
    #[error("no token '{0}'")]
    UnknownToken(String),
    #[error("token id '{0}' is taken")]
    TokenExists(String),
    #[error("the cluster holds its most {what} ({max})")]
    Full { what: &'static str, max: usize },
    #[error("the session key is set already")]
    SessionKeySet,
    #[error(transparent)]
    Invalid(#[from] InvalidSecurity),
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a user name: printable in logs and ACL principals, safe in any
/// output.
pub fn check_user_name(name: &str) -> Result<(), InvalidSecurity> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME_LEN
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok { Ok(()) } else { Err(InvalidSecurity::UserName(name.to_owned())) }
}

fn check_user(user: &UserRecord) -> Result<(), InvalidSecurity> {
    check_user_name(&user.name)?;
    let salt_ok = user.salt.len().is_multiple_of(2)
        && (32..=128).contains(&user.salt.len())
        && is_hex(&user.salt, user.salt.len());
    if !salt_ok || !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&user.iterations) || !is_hex(&user.hash, 64) {
        return Err(InvalidSecurity::Credential);
    }
    Ok(())
}

fn check_token(token: &TokenRecord) -> Result<(), InvalidSecurity> {
    check_user_name(&token.user)?;
    if !is_hex(&token.id, 16) || !is_hex(&token.hash, 64) {
        return Err(InvalidSecurity::Token(token.id.clone()));
    }
    if token.description.len() > MAX_DESCRIPTION_LEN {
        return Err(InvalidSecurity::Description);
    }
    Ok(())
}

/// The cluster resource's name (Kafka's).
pub const CLUSTER_RESOURCE: &str = "kafka-cluster";

/// Checks one ACL binding.
/// Checks a principal's name (after `User:`): a password user's name, or
/// what a client certificate's subject maps to (`CN=alice,O=acme`):
/// 1 to 255 bytes without control characters.
pub fn check_principal_name(name: &str) -> Result<(), InvalidSecurity> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(InvalidSecurity::Principal(format!("User:{name}")));
    }
    Ok(())
}

/// An ACL host as it is stored and compared: `*`, or the address in its
/// canonical form (an IPv4-mapped IPv6 address is the IPv4 one).
pub fn canonical_host(host: &str) -> Option<String> {
    if host == "*" {
        return Some(host.to_owned());
    }
    host.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_canonical().to_string())
}

pub fn check_acl(acl: &AclBinding) -> Result<(), InvalidSecurity> {
    match acl.principal.strip_prefix("User:") {
        Some("*") => {}
        Some(name) => check_principal_name(name)?,
        None => return Err(InvalidSecurity::Principal(acl.principal.clone())),
    }
    if acl.host.len() > MAX_HOST_LEN || canonical_host(&acl.host).as_deref() != Some(acl.host.as_str()) {
        return Err(InvalidSecurity::Host(acl.host.clone()));
    }
    let kind = match acl.resource_type {
        ResourceType::Topic => "topics",
        ResourceType::Group => "groups",
        ResourceType::Cluster => "the cluster",
    };
    let name = &acl.resource_name;
    if name.is_empty() || name.len() > MAX_RESOURCE_NAME_LEN || name.chars().any(char::is_control) {
        return Err(InvalidSecurity::ResourceName { kind, name: name.clone() });
    }
    if acl.resource_type == ResourceType::Cluster
        && (acl.pattern_type != PatternType::Literal || (name != CLUSTER_RESOURCE && name != "*"))
    {
        return Err(InvalidSecurity::ClusterName);
    }
    use Operation::*;
    let applies = match acl.resource_type {
        ResourceType::Topic => {
            matches!(
                acl.operation,
                All | Read | Write | Create | Delete | Alter | Describe | DescribeConfigs | AlterConfigs
            )
        }
        ResourceType::Group => matches!(acl.operation, All | Read | Delete | Describe),
        ResourceType::Cluster => {
            matches!(acl.operation, All | Create | Alter | Describe | DescribeConfigs | AlterConfigs | ClusterAction)
        }
    };
    if !applies {
        return Err(InvalidSecurity::OperationFor { op: acl.operation.name(), kind });
    }
    Ok(())
}

impl SecurityCommand {
    /// The checks of [`InvalidSecurity`].
    pub fn check(&self) -> Result<(), InvalidSecurity> {
        match self {
            SecurityCommand::PutUser { user, .. } => check_user(user),
            SecurityCommand::DeleteUser { name } => check_user_name(name),
            SecurityCommand::CreateToken(token) => check_token(token),
            SecurityCommand::RevokeToken { id } => {
                if is_hex(id, 16) {
                    Ok(())
                } else {
                    Err(InvalidSecurity::Token(id.clone()))
                }
            }
            SecurityCommand::CreateAcls { acls } | SecurityCommand::DeleteAcls { acls } => {
                if acls.len() > MAX_ACLS_PER_COMMAND {
                    return Err(InvalidSecurity::TooManyAcls(acls.len()));
                }
                acls.iter().try_for_each(check_acl)
            }
            SecurityCommand::SetSessionKey { key } => {
                if is_hex(key, 64) {
                    Ok(())
                } else {
                    Err(InvalidSecurity::SessionKey)
                }
            }
        }
    }
}

impl SecurityState {
    /// Applies `command`, or leaves the state as it was.
    pub fn apply(&mut self, command: &SecurityCommand) -> Result<(), SecurityRejected> {
        command.check()?;
        match command {
            SecurityCommand::PutUser { user, create } => {
                let known = self.users.get(&user.name);
                match (create, known) {
                    (true, Some(_)) => return Err(SecurityRejected::UserExists(user.name.clone())),
                    (false, None) => return Err(SecurityRejected::UnknownUser(user.name.clone())),
                    (true, None) if self.users.len() >= MAX_USERS => {
                        return Err(SecurityRejected::Full { what: "users", max: MAX_USERS });
                    }
                    _ => {}
                }
                // Every change moves the generation on, ending sessions.
                let generation = self.last_generation.max(known.map_or(0, |u| u.generation)) + 1;
                self.last_generation = generation;
                self.users.insert(user.name.clone(), UserRecord { generation, ..user.clone() });
            }
            SecurityCommand::DeleteUser { name } => {
                self.users.remove(name).ok_or_else(|| SecurityRejected::UnknownUser(name.clone()))?;
                self.tokens.retain(|_, t| t.user != *name);
            }
            SecurityCommand::CreateToken(token) => {
                if !self.users.contains_key(&token.user) {
                    return Err(SecurityRejected::UnknownUser(token.user.clone()));
                }
                if self.tokens.contains_key(&token.id) {
                    return Err(SecurityRejected::TokenExists(token.id.clone()));
                }
                if self.tokens.len() >= MAX_TOKENS {
                    return Err(SecurityRejected::Full { what: "tokens", max: MAX_TOKENS });
                }
                self.tokens.insert(token.id.clone(), token.clone());
            }
            SecurityCommand::RevokeToken { id } => {
                self.tokens.remove(id).ok_or_else(|| SecurityRejected::UnknownToken(id.clone()))?;
            }
            SecurityCommand::CreateAcls { acls } => {
                let new = acls.iter().filter(|a| !self.acls.contains(*a)).count();
                if self.acls.len() + new > MAX_ACLS {
                    return Err(SecurityRejected::Full { what: "ACL bindings", max: MAX_ACLS });
                }
                self.acls.extend(acls.iter().cloned());
            }
            SecurityCommand::DeleteAcls { acls } => {
                for acl in acls {
                    self.acls.remove(acl);
                }
            }
            SecurityCommand::SetSessionKey { key } => {
                if self.session_key.is_some() {
                    return Err(SecurityRejected::SessionKeySet);
                }
                self.session_key = Some(key.clone());
            }
        }
        Ok(())
    }

    /// Whether state received from a peer (a controller snapshot) holds only
    /// what applying commands could have produced.
    pub fn check(&self) -> Result<(), InvalidSecurity> {
        for (name, user) in &self.users {
            check_user(user)?;
            if user.name != *name {
                return Err(InvalidSecurity::UserName(name.clone()));
            }
        }
        for (id, token) in &self.tokens {
            check_token(token)?;
            if token.id != *id || !self.users.contains_key(&token.user) {
                return Err(InvalidSecurity::Token(id.clone()));
            }
        }
        self.acls.iter().try_for_each(check_acl)?;
        if let Some(key) = &self.session_key
            && !is_hex(key, 64)
        {
            return Err(InvalidSecurity::SessionKey);
        }
        let over = self.users.len() > MAX_USERS || self.tokens.len() > MAX_TOKENS || self.acls.len() > MAX_ACLS;
        if over {
            return Err(InvalidSecurity::TooMany);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            salt: "ab".repeat(16),
            iterations: 10_000,
            hash: "cd".repeat(32),
            generation: 0,
        }
    }

    fn acl(principal: &str, topic: &str, op: Operation) -> AclBinding {
        AclBinding {
            principal: principal.into(),
            host: "*".into(),
            resource_type: ResourceType::Topic,
            resource_name: topic.into(),
            pattern_type: PatternType::Literal,
            operation: op,
            permission: Permission::Allow,
        }
    }

    #[test]
    fn users_tokens_and_acls_change_only_as_their_commands_allow() {
        let mut s = SecurityState::default();
        s.apply(&SecurityCommand::PutUser { user: user("alice"), create: true }).expect("create");
        assert_eq!(s.users["alice"].generation, 1);
        assert_eq!(
            s.apply(&SecurityCommand::PutUser { user: user("alice"), create: true }),
            Err(SecurityRejected::UserExists("alice".into()))
        );
        s.apply(&SecurityCommand::PutUser { user: user("alice"), create: false }).expect("new password");
        assert_eq!(s.users["alice"].generation, 2, "a password change ends sessions");
        s.apply(&SecurityCommand::PutUser { user: user("bob"), create: true }).expect("bob");
        assert_eq!(s.users["bob"].generation, 3, "generations only go up, across users");
        let token = TokenRecord {
            id: "0123456789abcdef".into(),
            user: "alice".into(),
            hash: "ee".repeat(32),
            created_ms: 1,
            expires_ms: 0,
            description: String::new(),
        };
        s.apply(&SecurityCommand::CreateToken(token.clone())).expect("token");
        assert!(matches!(s.apply(&SecurityCommand::CreateToken(token.clone())), Err(SecurityRejected::TokenExists(_))));
        s.apply(&SecurityCommand::DeleteUser { name: "alice".into() }).expect("delete");
        assert!(s.tokens.is_empty(), "a deleted user's tokens go with it");
        s.apply(&SecurityCommand::PutUser { user: user("alice"), create: true }).expect("again");
        assert_eq!(s.users["alice"].generation, 4, "a user made again does not revive old sessions");
        s.apply(&SecurityCommand::DeleteUser { name: "alice".into() }).expect("delete");
        assert!(matches!(s.apply(&SecurityCommand::CreateToken(token)), Err(SecurityRejected::UnknownUser(_))));

        let a = acl("User:bob", "orders", Operation::Read);
        s.apply(&SecurityCommand::CreateAcls { acls: vec![a.clone(), a.clone()] }).expect("acls");
        assert_eq!(s.acls.len(), 1, "a binding is held once");
        s.apply(&SecurityCommand::DeleteAcls { acls: vec![a] }).expect("delete acls");
        assert!(s.acls.is_empty());
        s.apply(&SecurityCommand::SetSessionKey { key: "11".repeat(32) }).expect("key");
        assert_eq!(
            s.apply(&SecurityCommand::SetSessionKey { key: "22".repeat(32) }),
            Err(SecurityRejected::SessionKeySet)
        );
        s.check().expect("what commands produce passes the snapshot check");
    }

    #[test]
    fn malformed_commands_are_refused_before_they_change_anything() {
        let mut s = SecurityState::default();
        let bad = |u: UserRecord| SecurityCommand::PutUser { user: u, create: true };
        assert!(bad(UserRecord { name: "a b".into(), ..user("x") }).check().is_err());
        assert!(bad(UserRecord { name: "-x".into(), ..user("x") }).check().is_err());
        assert!(bad(UserRecord { iterations: 1, ..user("x") }).check().is_err());
        assert!(bad(UserRecord { hash: "zz".into(), ..user("x") }).check().is_err());
        assert!(s.apply(&bad(UserRecord { salt: "ab".into(), ..user("x") })).is_err());
        assert!(s.users.is_empty());
        for wrong in [
            acl("alice", "t", Operation::Read),
            acl("User:a\nb", "t", Operation::Read),
            acl("User:alice", "", Operation::Read),
            acl("User:alice", "t", Operation::ClusterAction),
            AclBinding { host: "not-an-ip".into(), ..acl("User:a", "t", Operation::Read) },
            AclBinding { host: "::ffff:10.0.0.1".into(), ..acl("User:a", "t", Operation::Read) },
            AclBinding {
                resource_type: ResourceType::Cluster,
                resource_name: "x".into(),
                ..acl("User:a", "t", Operation::Alter)
            },
        ] {
            assert!(check_acl(&wrong).is_err(), "{wrong:?}");
        }
        let many = vec![acl("User:a", "t", Operation::Read); MAX_ACLS_PER_COMMAND + 1];
        assert!(matches!(SecurityCommand::CreateAcls { acls: many }.check(), Err(InvalidSecurity::TooManyAcls(_))));
    }
}
