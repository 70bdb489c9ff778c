//! Client certificate subjects to principal names, with ordered rules as
//! Kafka's `ssl.principal.mapping.rules` and Redpanda's
//! `kafka_mtls_principal_mapping_rules`:
//!
//! - `RULE:pattern/replacement/` (optionally `/L` or `/U` to lower- or
//!   upper-case the result): if the regular expression matches the whole
//!   subject (e.g. `CN=alice,O=acme`), the name is the replacement, with
//!   `$1`... standing for the pattern's groups;
//! - `DEFAULT`: the subject itself.
//!
//! The first rule that matches wins; a subject no rule matches has no
//! principal (the client is not authenticated by its certificate). Rules
//! are separated by commas; a comma inside a pattern belongs to it (a new
//! rule starts only at `RULE:` or `DEFAULT`).

use regex::Regex;

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Replace { pattern: Regex, replacement: String, case: Case },
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Keep,
    Lower,
    Upper,
}

/// The parsed rules.
#[derive(Debug, Clone)]
pub struct PrincipalRules {
    rules: Vec<Rule>,
}

impl Default for PrincipalRules {
    fn default() -> Self {
        Self { rules: vec![Rule::Default] }
    }
}

impl PrincipalRules {
    /// Parses `RULE:...` and `DEFAULT` entries separated by commas.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::default());
        }
        let mut rules = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            rest = rest.trim_start_matches([',', ' ']);
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix("DEFAULT") {
                rules.push(Rule::Default);
                rest = after;
                continue;
            }
            let Some(body) = rest.strip_prefix("RULE:") else {
                return Err(format!("a principal mapping rule starts with RULE: or is DEFAULT, not {rest:?}"));
            };
            // The rule ends where the next one starts.
            let end = [",RULE:", ",DEFAULT", ", RULE:", ", DEFAULT"]
                .iter()
                .filter_map(|m| body.find(m))
                .min()
                .unwrap_or(body.len());
            rules.push(parse_rule(body[..end].trim())?);
            rest = &body[end..];
        }
        Ok(Self { rules })
    }

    /// The principal name for a certificate subject, if a rule gives one.
    pub fn map(&self, subject: &str) -> Option<String> {
        for rule in &self.rules {
            match rule {
                Rule::Default => return Some(subject.to_owned()),
                Rule::Replace { pattern, replacement, case } => {
                    let Some(captures) = pattern.captures(subject) else { continue };
                    let mut out = String::new();
                    captures.expand(replacement, &mut out);
                    let out = match case {
                        Case::Keep => out,
                        Case::Lower => out.to_lowercase(),
                        Case::Upper => out.to_uppercase(),
                    };
                    if !out.is_empty() {
                        return Some(out);
                    }
                }
            }
        }
        None
    }
}

/// `pattern/replacement/[L|U]`.
fn parse_rule(body: &str) -> Result<Rule, String> {
    let bad = || format!("a principal mapping rule is RULE:pattern/replacement/[L|U], not RULE:{body}");
    let parts: Vec<&str> = body.split('/').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let case = match parts[2] {
        "" => Case::Keep,
        "L" => Case::Lower,
        "U" => Case::Upper,
        _ => return Err(bad()),
    };
    // The whole subject must match, as in Kafka.
    let anchored = format!("^(?:{})$", parts[0]);
    let pattern =
        Regex::new(&anchored).map_err(|e| format!("RULE:{body}: the pattern is not a regular expression: {e}"))?;
    Ok(Rule::Replace { pattern, replacement: parts[1].to_owned(), case })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_map_subjects_in_order_as_kafka_does() {
        let rules = PrincipalRules::parse("RULE:^CN=([^,]+),O=Strata$/$1/L,RULE:^CN=(.*?),OU=(.*)$/$1@$2/,DEFAULT")
            .expect("parses");
        assert_eq!(rules.map("CN=Alice,O=Strata").as_deref(), Some("alice"));
        assert_eq!(rules.map("CN=bob,OU=eng").as_deref(), Some("bob@eng"));
        assert_eq!(rules.map("CN=carol,O=acme").as_deref(), Some("CN=carol,O=acme"), "DEFAULT: the subject");
        let strict = PrincipalRules::parse("RULE:CN=([a-z]+)/$1/U").expect("parses");
        assert_eq!(strict.map("CN=dave").as_deref(), Some("DAVE"));
        assert_eq!(strict.map("CN=dave,O=x"), None, "the whole subject must match; no DEFAULT");
        assert_eq!(PrincipalRules::parse("").expect("empty").map("CN=x").as_deref(), Some("CN=x"));
        for bad in ["RULE:a/b", "RULE:(/x/", "NOPE", "RULE:a/b/X"] {
            assert!(PrincipalRules::parse(bad).is_err(), "{bad}");
        }
    }
}
