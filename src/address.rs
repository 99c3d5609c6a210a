//! Agent addresses: parsing and normalisation of `agent://<org>/<segment>[/<segment>...]`.
//!
//! Owns the syntax only. Which node serves an address is the registry's business (`crate::registry`).

use std::fmt;

use serde::{Deserialize, Serialize};

const SCHEME: &str = "agent://";
/// The longest address the AXP create request accepts.
pub const MAX_ADDRESS_LEN: usize = 383;

/// A syntactically valid agent address, normalised (lowercase scheme and org).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentAddress(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_LEN} characters")]
    TooLong,
    #[error("address must start with agent://")]
    MissingScheme,
    #[error("address needs an org and at least one more path segment (agent://<org>/<name>)")]
    TooFewSegments,
    #[error("org {0:?} must be lowercase letters, digits and '-', starting with a letter or digit")]
    BadOrg(String),
    #[error("path segment {0:?} may contain only letters, digits, '.', '_', '~' and '-'")]
    BadSegment(String),
}

impl AgentAddress {
    /// Parses `agent://org/...`, or the bare form `org/...` that the SDK puts in URL paths.
    pub fn parse_lenient(raw: &str) -> Result<Self, AddressError> {
        if raw.len() >= SCHEME.len() && raw[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
            Self::parse(raw)
        } else {
            Self::parse(&format!("{SCHEME}{raw}"))
        }
    }

    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        if raw.is_empty() {
            return Err(AddressError::Empty);
        }
        if raw.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        if raw.len() < SCHEME.len() || !raw[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
            return Err(AddressError::MissingScheme);
        }
        let mut segments = raw[SCHEME.len()..].split('/');
        let org = segments.next().unwrap_or_default().to_ascii_lowercase();
        if !is_valid_org(&org) {
            return Err(AddressError::BadOrg(org));
        }
        let rest: Vec<&str> = segments.collect();
        if rest.is_empty() {
            return Err(AddressError::TooFewSegments);
        }
        for segment in &rest {
            if segment.is_empty() || !segment.chars().all(is_segment_char) {
                return Err(AddressError::BadSegment((*segment).to_owned()));
            }
        }
        Ok(Self(format!("{SCHEME}{org}/{}", rest.join("/"))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn org(&self) -> &str {
        let without_scheme = &self.0[SCHEME.len()..];
        without_scheme.split('/').next().unwrap_or_default()
    }

    /// Whether `self` lies under `prefix` on a path-segment boundary: `agent://o/sales` covers
    /// itself and `agent://o/sales/bot`, but not `agent://o/salesforce`.
    pub fn is_under(&self, prefix: &AgentAddress) -> bool {
        self.0.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The address without `agent://`, as it appears in `/v1/agents/{address}` paths.
    pub fn path_form(&self) -> &str {
        &self.0[SCHEME.len()..]
    }
}

/// Whether `org` is a valid org name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_org(org: &str) -> bool {
    let mut chars = org.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && org.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')
}

impl AddressError {
    /// Stable machine code, shared by every variant: callers answer all of them the same way.
    pub fn code(&self) -> &'static str {
        "invalid_agent_address"
    }
}

impl std::str::FromStr for AgentAddress {
    type Err = AddressError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AgentAddress {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AgentAddress> for String {
    fn from(value: AgentAddress) -> Self {
        value.0
    }
}

/// A grant of authority over addresses: one exact address, everything under a prefix
/// (`agent://acme/billing/*`), or every address (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressPattern(String);

impl AddressPattern {
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        if raw == "*" {
            return Ok(Self(raw.to_owned()));
        }
        match raw.strip_suffix("/*") {
            Some(prefix) => {
                let normalised = match AgentAddress::parse(prefix) {
                    Ok(address) => address.0,
                    // `agent://acme/*` grants a whole org: the prefix alone has no second segment.
                    Err(AddressError::TooFewSegments) => {
                        let org = AgentAddress::parse(&format!("{prefix}/x"))?;
                        format!("{SCHEME}{}", org.org())
                    }
                    Err(other) => return Err(other),
                };
                Ok(Self(format!("{normalised}/*")))
            }
            None => Ok(Self(AgentAddress::parse(raw)?.0)),
        }
    }

    pub fn matches(&self, address: &AgentAddress) -> bool {
        match self.0.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => address.0.starts_with(prefix),
            None => self.0 == address.0,
        }
    }

    /// The single address this pattern names, when it names exactly one.
    pub fn exact(&self) -> Option<AgentAddress> {
        (!self.0.ends_with('*')).then(|| AgentAddress(self.0.clone()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AddressPattern {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AddressPattern> for String {
    fn from(value: AddressPattern) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_scheme_and_org_but_keeps_path_case() {
        let address = AgentAddress::parse("AGENT://Acme/Billing/bot").unwrap();
        assert_eq!(address.as_str(), "agent://acme/Billing/bot");
        assert_eq!(address.org(), "acme");
        assert_eq!(address.path_form(), "acme/Billing/bot");
    }

    #[test]
    fn accepts_the_bare_form_of_url_paths() {
        let address = AgentAddress::parse_lenient("examples/approver").unwrap();
        assert_eq!(address.as_str(), "agent://examples/approver");
    }

    #[test]
    fn refuses_malformed_addresses() {
        assert_eq!(AgentAddress::parse(""), Err(AddressError::Empty));
        assert_eq!(AgentAddress::parse("http://a/b"), Err(AddressError::MissingScheme));
        assert_eq!(AgentAddress::parse("agent://target"), Err(AddressError::TooFewSegments));
        assert_eq!(AgentAddress::parse("agent://acme//bot"), Err(AddressError::BadSegment(String::new())));
        assert_eq!(AgentAddress::parse("agent://-x/bot"), Err(AddressError::BadOrg("-x".into())));
        assert_eq!(AgentAddress::parse("agent://acme/b ot"), Err(AddressError::BadSegment("b ot".into())));
        let long = format!("agent://acme/{}", "a".repeat(MAX_ADDRESS_LEN));
        assert_eq!(AgentAddress::parse(&long), Err(AddressError::TooLong));
    }

    #[test]
    fn is_under_respects_segment_boundaries() {
        let prefix = AgentAddress::parse("agent://o/sales").unwrap();
        for (address, under) in
            [("agent://o/sales", true), ("agent://o/sales/bot", true), ("agent://o/salesforce", false)]
        {
            assert_eq!(AgentAddress::parse(address).unwrap().is_under(&prefix), under, "{address}");
        }
    }

    #[test]
    fn patterns_match_exact_prefix_and_everything() {
        let bot = AgentAddress::parse("agent://acme/billing/bot").unwrap();
        let other = AgentAddress::parse("agent://acme/billingx/bot").unwrap();
        let exact = AddressPattern::parse("agent://acme/billing/bot").unwrap();
        let prefix = AddressPattern::parse("agent://acme/billing/*").unwrap();
        let org = AddressPattern::parse("agent://ACME/*").unwrap();
        let all = AddressPattern::parse("*").unwrap();
        assert!(exact.matches(&bot) && !exact.matches(&other));
        assert!(prefix.matches(&bot) && !prefix.matches(&other));
        assert_eq!(org.as_str(), "agent://acme/*");
        assert!(org.matches(&bot) && org.matches(&other));
        assert!(all.matches(&other));
        assert_eq!(exact.exact(), Some(bot));
        assert_eq!(prefix.exact(), None);
    }
}
