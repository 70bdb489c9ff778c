//! `strata user`, `strata token`, `strata acl`, `strata whoami`: users with
//! passwords, API tokens and ACLs (as rpk's `security` commands).

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use strata_client::proto as pb;

use crate::ClientOpts;
use crate::cli::OutputFormat;

/// The client options of `strata user` and `strata token`: as every
/// command's, but `--user` and `--password` name the user the command is
/// about there, so the caller logs in with `--login-user` and
/// `--login-password` (or `STRATA_USER` and `STRATA_PASSWORD`).
#[derive(Args, Debug, Clone)]
pub struct UserClientOpts {
    /// Server address, HOST:PORT.
    #[arg(long, global = true, env = "STRATA_SERVER", default_value = strata_client::DEFAULT_SERVER)]
    pub server: String,
    /// Deadline of each request, e.g. 10s or 500ms.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: crate::TlsOpts,
    /// Log in as this user (with --login-password).
    #[arg(long, global = true, env = "STRATA_USER", requires = "login_password")]
    pub login_user: Option<String>,
    /// Your own password, to log in (STRATA_PASSWORD).
    #[arg(long, global = true, env = "STRATA_PASSWORD", hide_env_values = true)]
    pub login_password: Option<String>,
    /// An API token, sent as a bearer token.
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl UserClientOpts {
    fn client_opts(&self) -> ClientOpts {
        ClientOpts {
            server: self.server.clone(),
            timeout: self.timeout,
            tls: self.tls.clone(),
            user: self.login_user.clone(),
            password: self.login_password.clone(),
            token: self.token.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user with a password.
    Create {
        name: String,
        /// The new user's password (STRATA_NEW_PASSWORD keeps it out of `ps`).
        #[arg(long, env = "STRATA_NEW_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Give a user a new password (its sessions end).
    SetPassword {
        name: String,
        #[arg(long, env = "STRATA_NEW_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Delete a user and its API tokens (its access ends within seconds).
    Delete { name: String },
    /// List the users.
    List {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token for a user; prints the token alone on stdout
    /// (shown once: only its hash is kept).
    Create {
        #[arg(long)]
        user: String,
        /// How long it works, e.g. 30d or 12h (default: until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token (by its id, or the whole token).
    Revoke { id: String },
    /// List tokens, without their secrets.
    List {
        /// Only this user's.
        #[arg(long = "for-user")]
        for_user: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// Which bindings an ACL command is about (as rpk's flags).
#[derive(Args, Debug, Clone, Default)]
pub struct AclArgs {
    /// Principals to allow, e.g. User:alice (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub allow_principal: Vec<String>,
    /// Principals to deny.
    #[arg(long, value_delimiter = ',')]
    pub deny_principal: Vec<String>,
    /// Operations: all, read, write, create, delete, alter, describe,
    /// describe_configs, alter_configs, cluster_action.
    #[arg(long, value_delimiter = ',')]
    pub operation: Vec<String>,
    /// Topics (repeat or comma-separate; * for every topic).
    #[arg(long, value_delimiter = ',')]
    pub topic: Vec<String>,
    /// Consumer or share groups.
    #[arg(long, value_delimiter = ',')]
    pub group: Vec<String>,
    /// The cluster itself (users, tokens, ACLs, creating topics).
    #[arg(long)]
    pub cluster: bool,
    /// literal (the default; * is every resource) or prefixed.
    #[arg(long, default_value = "literal")]
    pub resource_pattern_type: String,
    /// Client IP addresses the binding is for (default: any, *).
    #[arg(long, value_delimiter = ',')]
    pub host: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum AclCommand {
    /// Create ACL bindings: every principal x operation x resource given.
    Create(AclArgs),
    /// List ACL bindings (the flags given filter them).
    List {
        #[command(flatten)]
        filter: AclArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Delete the ACL bindings the flags select, printing them.
    Delete {
        #[command(flatten)]
        filter: AclArgs,
        /// Delete even with no flag narrowing the selection (every binding).
        #[arg(long)]
        all: bool,
    },
}

async fn connect(opts: &ClientOpts) -> anyhow::Result<strata_client::Client> {
    crate::cli::connect(opts).await
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(strata_client::ClientError::from(e))
}

pub async fn user(opts: &UserClientOpts, command: UserCommand) -> anyhow::Result<()> {
    let client = connect(&opts.client_opts()).await?;
    let mut rpc = client.security_rpc();
    match command {
        UserCommand::Create { name, password } => {
            rpc.create_user(pb::CreateUserRequest { name: name.clone(), password }).await.map_err(status)?;
            println!("created user '{name}'");
        }
        UserCommand::SetPassword { name, password } => {
            rpc.set_password(pb::SetPasswordRequest { name: name.clone(), password }).await.map_err(status)?;
            println!("set the password of '{name}'");
        }
        UserCommand::Delete { name } => {
            let r = rpc.delete_user(pb::DeleteUserRequest { name: name.clone() }).await.map_err(status)?.into_inner();
            println!("deleted user '{name}' ({} API token(s) revoked with it)", r.tokens_revoked);
        }
        UserCommand::List { format } => {
            let users = rpc.list_users(pb::ListUsersRequest {}).await.map_err(status)?.into_inner().users;
            match format {
                OutputFormat::Json => println!("{}", serde_json::json!({ "users": users })),
                OutputFormat::Text => users.iter().for_each(|u| println!("{u}")),
            }
        }
    }
    Ok(())
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub async fn token(opts: &UserClientOpts, command: TokenCommand) -> anyhow::Result<()> {
    let client = connect(&opts.client_opts()).await?;
    let mut rpc = client.security_rpc();
    match command {
        TokenCommand::Create { user, expires, description } => {
            let expires_in_ms = expires.map_or(0, |d| d.as_millis().max(1) as u64);
            let r = rpc
                .create_token(pb::CreateTokenRequest { user, expires_in_ms, description })
                .await
                .map_err(status)?
                .into_inner();
            if let Some(info) = &r.info {
                eprintln!("token {} for user '{}', expires {} (shown once)", info.id, info.user, time(info.expires_ms));
            }
            println!("{}", r.token);
        }
        TokenCommand::Revoke { id } => {
            rpc.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await.map_err(status)?;
            println!("revoked token {}", id.split('_').nth(1).unwrap_or(&id));
        }
        TokenCommand::List { for_user, format } => {
            let tokens = rpc
                .list_tokens(pb::ListTokensRequest { user: for_user.unwrap_or_default() })
                .await
                .map_err(status)?
                .into_inner()
                .tokens;
            match format {
                OutputFormat::Json => {
                    let list: Vec<_> = tokens
                        .iter()
                        .map(|t| {
                            serde_json::json!({"id": t.id, "user": t.user, "created_ms": t.created_ms,
                                "expires_ms": t.expires_ms, "description": t.description})
                        })
                        .collect();
                    println!("{}", serde_json::json!({ "tokens": list }));
                }
                OutputFormat::Text => {
                    println!("{:<18} {:<20} {:<22} {:<22} DESCRIPTION", "ID", "USER", "CREATED", "EXPIRES");
                    for t in tokens {
                        println!(
                            "{:<18} {:<20} {:<22} {:<22} {}",
                            t.id,
                            t.user,
                            time(t.created_ms),
                            time(t.expires_ms),
                            t.description
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn operation(name: &str) -> anyhow::Result<pb::AclOperation> {
    Ok(match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "all" => pb::AclOperation::All,
        "read" => pb::AclOperation::Read,
        "write" => pb::AclOperation::Write,
        "create" => pb::AclOperation::Create,
        "delete" => pb::AclOperation::Delete,
        "alter" => pb::AclOperation::Alter,
        "describe" => pb::AclOperation::Describe,
        "describe_configs" => pb::AclOperation::DescribeConfigs,
        "alter_configs" => pb::AclOperation::AlterConfigs,
        "cluster_action" => pb::AclOperation::ClusterAction,
        other => bail!(
            "unknown operation '{other}': all, read, write, create, delete, alter, describe, describe_configs, \
             alter_configs, cluster_action"
        ),
    })
}

fn pattern(name: &str) -> anyhow::Result<pb::AclPatternType> {
    match name {
        "literal" => Ok(pb::AclPatternType::AclPatternLiteral),
        "prefixed" => Ok(pb::AclPatternType::AclPatternPrefixed),
        other => bail!("--resource-pattern-type is literal or prefixed, not '{other}'"),
    }
}

fn principal(p: &str) -> String {
    if p.contains(':') { p.to_owned() } else { format!("User:{p}") }
}

/// The resources the flags name.
fn resources(args: &AclArgs) -> Vec<(pb::AclResourceType, String)> {
    let mut out: Vec<_> = args.topic.iter().map(|t| (pb::AclResourceType::AclResourceTopic, t.clone())).collect();
    out.extend(args.group.iter().map(|g| (pb::AclResourceType::AclResourceGroup, g.clone())));
    if args.cluster {
        out.push((pb::AclResourceType::AclResourceCluster, "kafka-cluster".to_owned()));
    }
    out
}

fn bindings(args: &AclArgs) -> anyhow::Result<Vec<pb::AclBinding>> {
    let principals: Vec<(String, pb::AclPermission)> = args
        .allow_principal
        .iter()
        .map(|p| (principal(p), pb::AclPermission::Allow))
        .chain(args.deny_principal.iter().map(|p| (principal(p), pb::AclPermission::Deny)))
        .collect();
    if principals.is_empty() {
        bail!("give --allow-principal or --deny-principal");
    }
    if args.operation.is_empty() {
        bail!("give --operation (e.g. read,describe)");
    }
    let resources = resources(args);
    if resources.is_empty() {
        bail!("give --topic, --group or --cluster");
    }
    let hosts = if args.host.is_empty() { vec!["*".to_owned()] } else { args.host.clone() };
    let pattern = pattern(&args.resource_pattern_type)?;
    let mut out = Vec::new();
    for (p, permission) in &principals {
        for op in &args.operation {
            let op = operation(op)?;
            for (kind, name) in &resources {
                for host in &hosts {
                    out.push(pb::AclBinding {
                        principal: p.clone(),
                        host: host.clone(),
                        resource_type: *kind as i32,
                        resource_name: name.clone(),
                        pattern_type: pattern as i32,
                        operation: op as i32,
                        permission: *permission as i32,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Filters for listing or deleting: one per combination of the flags given
/// (an empty flag matches anything).
fn filters(args: &AclArgs) -> anyhow::Result<Vec<pb::AclFilter>> {
    let principals: Vec<(Option<String>, pb::AclPermission)> =
        if args.allow_principal.is_empty() && args.deny_principal.is_empty() {
            vec![(None, pb::AclPermission::Unspecified)]
        } else {
            args.allow_principal
                .iter()
                .map(|p| (Some(principal(p)), pb::AclPermission::Allow))
                .chain(args.deny_principal.iter().map(|p| (Some(principal(p)), pb::AclPermission::Deny)))
                .collect()
        };
    let ops: Vec<pb::AclOperation> = if args.operation.is_empty() {
        vec![pb::AclOperation::Unspecified]
    } else {
        args.operation.iter().map(|o| operation(o)).collect::<anyhow::Result<_>>()?
    };
    let resources: Vec<(pb::AclResourceType, Option<String>)> = {
        let named = resources(args);
        if named.is_empty() {
            vec![(pb::AclResourceType::Unspecified, None)]
        } else {
            named.into_iter().map(|(k, n)| (k, Some(n))).collect()
        }
    };
    let hosts: Vec<Option<String>> =
        if args.host.is_empty() { vec![None] } else { args.host.iter().cloned().map(Some).collect() };
    // A pattern type narrows only when resources are named.
    let pattern = if resources.iter().any(|(_, n)| n.is_some()) {
        pattern(&args.resource_pattern_type)?
    } else {
        pb::AclPatternType::Unspecified
    };
    let mut out = Vec::new();
    for (p, permission) in &principals {
        for op in &ops {
            for (kind, name) in &resources {
                for host in &hosts {
                    out.push(pb::AclFilter {
                        principal: p.clone(),
                        host: host.clone(),
                        resource_type: *kind as i32,
                        resource_name: name.clone(),
                        pattern_type: pattern as i32,
                        operation: *op as i32,
                        permission: *permission as i32,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn acl_line(a: &pb::AclBinding) -> String {
    let kind = match pb::AclResourceType::try_from(a.resource_type) {
        Ok(pb::AclResourceType::AclResourceTopic) => "topic",
        Ok(pb::AclResourceType::AclResourceGroup) => "group",
        Ok(pb::AclResourceType::AclResourceCluster) => "cluster",
        _ => "?",
    };
    let pattern = if a.pattern_type == pb::AclPatternType::AclPatternPrefixed as i32 { "prefixed" } else { "literal" };
    let op = pb::AclOperation::try_from(a.operation)
        .map_or("?".to_owned(), |o| o.as_str_name().trim_start_matches("ACL_OPERATION_").to_ascii_lowercase());
    let permission = if a.permission == pb::AclPermission::Deny as i32 { "DENY" } else { "ALLOW" };
    format!(
        "{:<20} {:<16} {:<8} {:<24} {:<9} {:<17} {permission}",
        a.principal, a.host, kind, a.resource_name, pattern, op
    )
}

fn acl_json(a: &pb::AclBinding) -> serde_json::Value {
    let name = |s: &str, prefix: &str| s.trim_start_matches(prefix).to_ascii_lowercase();
    serde_json::json!({
        "principal": a.principal,
        "host": a.host,
        "resource_type": pb::AclResourceType::try_from(a.resource_type).map_or("?".into(), |t| name(t.as_str_name(), "ACL_RESOURCE_")),
        "resource_name": a.resource_name,
        "pattern_type": pb::AclPatternType::try_from(a.pattern_type).map_or("?".into(), |t| name(t.as_str_name(), "ACL_PATTERN_")),
        "operation": pb::AclOperation::try_from(a.operation).map_or("?".into(), |t| name(t.as_str_name(), "ACL_OPERATION_")),
        "permission": pb::AclPermission::try_from(a.permission).map_or("?".into(), |t| name(t.as_str_name(), "ACL_PERMISSION_")),
    })
}

const ACL_HEADER: &str =
    "PRINCIPAL            HOST             TYPE     NAME                     PATTERN   OPERATION         PERMISSION";

pub async fn acl(opts: &ClientOpts, command: AclCommand) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let mut rpc = client.security_rpc();
    match command {
        AclCommand::Create(args) => {
            let acls = bindings(&args)?;
            let n = acls.len();
            let r = rpc.create_acls(pb::CreateAclsRequest { acls: acls.clone() }).await.map_err(status)?.into_inner();
            println!("{ACL_HEADER}");
            acls.iter().for_each(|a| println!("{}", acl_line(a)));
            println!("created {} binding(s) ({} already there)", r.created, n as u32 - r.created.min(n as u32));
        }
        AclCommand::List { filter, format } => {
            let mut all = Vec::new();
            for f in filters(&filter)? {
                let acls =
                    rpc.list_acls(pb::ListAclsRequest { filter: Some(f) }).await.map_err(status)?.into_inner().acls;
                for a in acls {
                    if !all.contains(&a) {
                        all.push(a);
                    }
                }
            }
            match format {
                OutputFormat::Json => {
                    println!("{}", serde_json::json!({ "acls": all.iter().map(acl_json).collect::<Vec<_>>() }))
                }
                OutputFormat::Text => {
                    println!("{ACL_HEADER}");
                    all.iter().for_each(|a| println!("{}", acl_line(a)));
                }
            }
        }
        AclCommand::Delete { filter, all } => {
            let narrowed = !(filter.allow_principal.is_empty()
                && filter.deny_principal.is_empty()
                && filter.operation.is_empty()
                && resources(&filter).is_empty()
                && filter.host.is_empty());
            if !narrowed && !all {
                bail!("no flag narrows the selection: this would delete every ACL binding; add --all to mean it");
            }
            let selection = if narrowed {
                filters(&filter)?
            } else {
                // Everything: one filter per resource type (the node refuses
                // a filter that sets nothing).
                [
                    pb::AclResourceType::AclResourceTopic,
                    pb::AclResourceType::AclResourceGroup,
                    pb::AclResourceType::AclResourceCluster,
                ]
                .map(|t| pb::AclFilter { resource_type: t as i32, ..Default::default() })
                .to_vec()
            };
            let mut deleted = Vec::new();
            for f in selection {
                let r = rpc.delete_acls(pb::DeleteAclsRequest { filter: Some(f) }).await.map_err(status)?.into_inner();
                deleted.extend(r.deleted);
            }
            println!("{ACL_HEADER}");
            deleted.iter().for_each(|a| println!("{}", acl_line(a)));
            println!("deleted {} binding(s)", deleted.len());
        }
    }
    Ok(())
}

pub async fn whoami(opts: &ClientOpts) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let r = client.security_rpc().who_am_i(pb::WhoAmIRequest {}).await.map_err(status)?.into_inner();
    println!(
        "{}{}{}",
        r.principal,
        if r.superuser { " (superuser)" } else { "" },
        if r.authorization_enabled { "" } else { " (authentication is off on this node)" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_flags_make_every_principal_operation_resource_binding() {
        let args = AclArgs {
            allow_principal: vec!["alice".into()],
            deny_principal: vec!["User:mallory".into()],
            operation: vec!["read".into(), "describe".into()],
            topic: vec!["orders".into()],
            group: vec!["billing".into()],
            resource_pattern_type: "prefixed".into(),
            ..AclArgs::default()
        };
        let b = bindings(&args).expect("bindings");
        assert_eq!(b.len(), 2 * 2 * 2);
        assert!(b.iter().all(|a| a.pattern_type == pb::AclPatternType::AclPatternPrefixed as i32));
        assert_eq!(b[0].principal, "User:alice");
        assert!(bindings(&AclArgs { operation: vec!["fly".into()], ..args.clone() }).is_err());
        assert!(bindings(&AclArgs { topic: vec![], group: vec![], ..args }).is_err(), "no resource");
    }
}
