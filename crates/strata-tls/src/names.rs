//! The names that tie a certificate to a node.
//!
//! A node's certificate carries the DNS subject alternative name
//! `node-<ID>.strata.internal` (`.internal` is reserved for private use, so
//! the name never collides with a real host). The node connecting to peer
//! N verifies the peer's certificate for that name, exactly as a browser
//! verifies a host name; the cluster listener checks the connecting node's
//! certificate against the name of every member. A certificate may carry
//! other names too (the host's own), which Strata ignores.

use rustls_pki_types::{CertificateDer, ServerName};

/// The domain under which node names live.
pub const NODE_DOMAIN: &str = "strata.internal";

/// The name a certificate of node `id` carries: `node-<ID>.strata.internal`.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.{NODE_DOMAIN}")
}

/// Whether `cert` (DER) names node `id`. A certificate that cannot be
/// parsed names nothing.
pub fn names_node(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(node_name(id)) else { return false };
    parsed.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The member `cert` names, if it names exactly one (a certificate that
/// names several, e.g. with a wildcard, names none: it could pass for
/// another node).
pub fn node_named_by(cert: &CertificateDer<'_>, members: &[u64]) -> Option<u64> {
    let mut named = members.iter().copied().filter(|id| names_node(cert, *id));
    match (named.next(), named.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    }
}

/// Whether a host name may go into a certificate beside a node's name:
/// not a name under [`NODE_DOMAIN`] (it would name another node) and no
/// wildcard.
pub fn extra_host_allowed(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    !host.contains('*') && lower != NODE_DOMAIN && !lower.ends_with(&format!(".{NODE_DOMAIN}"))
}

/// The subject of `cert` as Kafka prints it (RFC 2253/4514: the most
/// specific attribute first, `CN=alice,OU=eng,O=acme`), what principal
/// mapping rules match against. `None` for a certificate that does not
/// parse.
pub fn certificate_subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut parts = Vec::new();
    let rdns: Vec<_> = parsed.subject().iter().collect();
    for rdn in rdns.into_iter().rev() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|a| {
                let oid = a.attr_type().to_id_string();
                let name = match oid.as_str() {
                    "2.5.4.3" => "CN",
                    "2.5.4.11" => "OU",
                    "2.5.4.10" => "O",
                    "2.5.4.7" => "L",
                    "2.5.4.8" => "ST",
                    "2.5.4.6" => "C",
                    "2.5.4.9" => "STREET",
                    "0.9.2342.19200300.100.1.25" => "DC",
                    "0.9.2342.19200300.100.1.1" => "UID",
                    "1.2.840.113549.1.9.1" => "EMAILADDRESS",
                    _ => oid.as_str(),
                }
                .to_owned();
                let value = a.as_str().map(escape_dn_value).unwrap_or_else(|_| "#".to_owned());
                format!("{name}={value}")
            })
            .collect();
        parts.push(attributes.join("+"));
    }
    Some(parts.join(","))
}

/// RFC 4514 escaping of an attribute value.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::Authority;

    #[test]
    fn a_node_certificate_names_its_node_and_no_other() {
        let ca = Authority::create(30).expect("ca");
        let node = ca.node(3, &["db3.example.com".into(), "10.0.0.3".into()], 30).expect("node cert");
        let der = node.cert_der().expect("der");
        assert!(names_node(&der, 3));
        assert!(!names_node(&der, 30), "node-30 is another name");
        assert_eq!(node_named_by(&der, &[1, 2, 3]), Some(3));
        assert_eq!(node_named_by(&der, &[1, 2]), None, "not a member");

        let client = ca.client("alice", 30).expect("client cert");
        assert_eq!(node_named_by(&client.cert_der().expect("der"), &[1, 2, 3]), None, "a client names no node");
        assert!(!names_node(&CertificateDer::from(vec![1, 2, 3]), 1), "garbage names nothing");

        assert!(ca.node(3, &["node-4.strata.internal".into()], 30).is_err(), "another node's name");
        assert!(ca.node(3, &["*.strata.internal".into()], 30).is_err(), "a wildcard");
        assert!(extra_host_allowed("db3.example.com") && !extra_host_allowed("NODE-1.Strata.Internal"));
    }

    #[test]
    fn a_client_certificate_subject_reads_as_kafka_prints_it() {
        let ca = Authority::create(30).expect("ca");
        let alice = ca.client("alice", 30).expect("client cert").cert_der().expect("der");
        assert_eq!(certificate_subject(&alice).as_deref(), Some("CN=alice,O=Strata"));
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(certificate_subject(&CertificateDer::from(vec![1, 2, 3])), None);
    }
}
