//! ACL evaluation with Kafka's semantics.
//!
//! A request by `principal` from `host` to do `operation` on a resource is
//! allowed when a binding allows it and none denies it:
//!
//! - a binding applies when its principal is the caller's or `User:*`, its
//!   host the caller's address or `*`, its resource type the resource's,
//!   and its pattern selects the resource's name (literal: the same name,
//!   or `*`; prefixed: a prefix of the name);
//! - a DENY for the operation (or `ALL`) wins over any ALLOW;
//! - an ALLOW for the operation, for `ALL`, or implying it: READ, WRITE,
//!   DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies
//!   DESCRIBE_CONFIGS;
//! - nothing else is allowed.
//!
//! Superusers (and the cluster's own nodes) are not checked. The bindings
//! are indexed per resource type and literal name when the metadata
//! changes, so a check costs the bindings of one resource, not all.

use std::collections::HashMap;
use std::net::IpAddr;

use strata_raft::security::{AclBinding, Operation, PatternType, Permission, ResourceType};

/// A resource a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    Cluster,
}

impl Resource<'_> {
    fn kind(self) -> ResourceType {
        match self {
            Resource::Topic(_) => ResourceType::Topic,
            Resource::Group(_) => ResourceType::Group,
            Resource::Cluster => ResourceType::Cluster,
        }
    }

    /// The resource's name (the cluster's is `kafka-cluster`).
    pub fn resource_name(&self) -> &str {
        match self {
            Resource::Topic(n) | Resource::Group(n) => n,
            Resource::Cluster => strata_raft::security::CLUSTER_RESOURCE,
        }
    }
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Topic(n) => write!(f, "topic '{n}'"),
            Resource::Group(n) => write!(f, "group '{n}'"),
            Resource::Cluster => write!(f, "the cluster"),
        }
    }
}

/// The bindings, indexed.
#[derive(Debug, Default)]
pub struct AclIndex {
    /// Literal bindings by type, then name (`*` included as a name).
    literal: HashMap<ResourceType, HashMap<String, Vec<AclBinding>>>,
    /// Prefixed bindings per type.
    prefixed: HashMap<ResourceType, Vec<AclBinding>>,
}

impl AclIndex {
    pub fn new<'a>(acls: impl IntoIterator<Item = &'a AclBinding>) -> Self {
        let mut index = Self::default();
        for acl in acls {
            match acl.pattern_type {
                PatternType::Literal => index
                    .literal
                    .entry(acl.resource_type)
                    .or_default()
                    .entry(acl.resource_name.clone())
                    .or_default()
                    .push(acl.clone()),
                PatternType::Prefixed => index.prefixed.entry(acl.resource_type).or_default().push(acl.clone()),
            }
        }
        index
    }

    /// The bindings that select `resource`.
    /// (No allocation: a check runs per request.)
    fn selecting<'s, 'r>(&'s self, resource: Resource<'r>) -> impl Iterator<Item = &'s AclBinding> + use<'s, 'r> {
        let kind = resource.kind();
        let literal = self.literal.get(&kind);
        let name = match resource {
            Resource::Topic(n) | Resource::Group(n) => n,
            Resource::Cluster => strata_raft::security::CLUSTER_RESOURCE,
        };
        let exact = literal.and_then(|m| m.get(name)).into_iter().flatten();
        let any = literal.and_then(|m| m.get("*")).into_iter().flatten();
        let prefixed =
            self.prefixed.get(&kind).into_iter().flatten().filter(move |a| name.starts_with(a.resource_name.as_str()));
        exact.chain(any).chain(prefixed)
    }

    pub fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.prefixed.is_empty()
    }

    /// Whether `principal` (e.g. `User:alice`) from `host` may do
    /// `operation` on `resource`.
    pub fn allows(&self, principal: &str, host: Option<IpAddr>, operation: Operation, resource: Resource<'_>) -> bool {
        let host = host.map(|h| h.to_canonical());
        let applies = |a: &&AclBinding| {
            (a.principal == principal || a.principal == "User:*")
                && (a.host == "*" || host.is_some_and(|h| a.host.parse::<IpAddr>().is_ok_and(|b| b == h)))
        };
        let mut allowed = false;
        for acl in self.selecting(resource).filter(applies) {
            match acl.permission {
                Permission::Deny if acl.operation == operation || acl.operation == Operation::All => return false,
                Permission::Deny => {}
                Permission::Allow => allowed |= grants(acl.operation, operation),
            }
        }
        allowed
    }
}

/// Whether an ALLOW of `granted` allows `wanted`.
fn grants(granted: Operation, wanted: Operation) -> bool {
    use Operation::*;
    granted == wanted
        || granted == All
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        principal: &str,
        kind: ResourceType,
        name: &str,
        pattern: PatternType,
        op: Operation,
        p: Permission,
    ) -> AclBinding {
        AclBinding {
            principal: principal.into(),
            host: "*".into(),
            resource_type: kind,
            resource_name: name.into(),
            pattern_type: pattern,
            operation: op,
            permission: p,
        }
    }

    #[test]
    fn deny_wins_allow_implies_describe_and_everything_else_is_denied() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let acls = [
            binding("User:alice", Topic, "orders", Literal, Write, Allow),
            binding("User:bob", Topic, "orders", Literal, Read, Allow),
            binding("User:bob", Group, "billing", Literal, Read, Allow),
            binding("User:*", Topic, "public.", Prefixed, Read, Allow),
            binding("User:mallory", Topic, "public.secret", Literal, Read, Deny),
            binding("User:ops", Topic, "*", Literal, All, Allow),
            binding("User:ops", Topic, "payroll", Literal, All, Deny),
            binding("User:carol", Topic, "logs", Literal, AlterConfigs, Allow),
        ];
        let index = AclIndex::new(&acls);
        let ok = |p: &str, op, r| index.allows(p, None, op, r);
        assert!(ok("User:alice", Write, Resource::Topic("orders")));
        assert!(!ok("User:alice", Read, Resource::Topic("orders")), "write does not give read");
        assert!(ok("User:alice", Describe, Resource::Topic("orders")), "write implies describe");
        assert!(ok("User:bob", Read, Resource::Group("billing")));
        assert!(!ok("User:bob", Read, Resource::Group("other")));
        assert!(ok("User:mallory", Read, Resource::Topic("public.news")), "prefixed, any user");
        assert!(!ok("User:mallory", Read, Resource::Topic("public.secret")), "a deny wins over the prefixed allow");
        assert!(!ok("User:mallory", Read, Resource::Topic("publicity")), "prefix 'public.' only");
        assert!(ok("User:ops", Delete, Resource::Topic("anything")), "ALL on '*'");
        assert!(!ok("User:ops", Describe, Resource::Topic("payroll")), "a deny of ALL denies everything");
        assert!(ok("User:carol", DescribeConfigs, Resource::Topic("logs")), "alter_configs implies describe_configs");
        assert!(!ok("User:carol", Describe, Resource::Topic("logs")));
        assert!(!ok("User:nobody", Describe, Resource::Cluster), "nothing is allowed by default");

        let from = AclIndex::new(&[AclBinding { host: "10.0.0.1".into(), ..acls[0].clone() }]);
        let host = |h: &str| Some(h.parse::<IpAddr>().expect("ip"));
        assert!(from.allows("User:alice", host("10.0.0.1"), Write, Resource::Topic("orders")));
        assert!(!from.allows("User:alice", host("10.0.0.2"), Write, Resource::Topic("orders")));
        assert!(
            from.allows("User:alice", host("::ffff:10.0.0.1"), Write, Resource::Topic("orders")),
            "an IPv4 client on an IPv6 listener is its IPv4 address"
        );
    }
}
