//! Resolution: which node serves an agent address, as a pure function of the accepted set.
//!
//! Owns the routing rules: this node's own org is local; otherwise the org's record decides by
//! the longest route prefix that covers the address on a path-segment boundary (an exact route
//! is simply the longest possible prefix), then the org's default node; an org without an
//! accepted record, or an address its record does not route, is unroutable. Verification has
//! already refused duplicate prefixes, so the longest match is unique and every node agrees.

use std::fmt;

use super::record::NodeRecord;
use super::set::AcceptedSet;
use crate::address::AgentAddress;

/// Where an address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// An address of this node's own org.
    Local,
    /// An address served by `node` of `org`.
    Remote { org: String, node: NodeRecord, matched: RouteMatch },
    /// No node can be named for the address: refuse it (HTTP 422), never drop it.
    Unroutable { org: String, reason: UnroutableReason },
}

/// Which rule of the org's record chose the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// The longest route prefix covering the address (equal to it for an exact route).
    Prefix(String),
    /// No route covers the address; the org's default node.
    DefaultNode,
}

/// Why an address is unroutable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnroutableReason {
    /// The org has no accepted registry record.
    NoAcceptedRecord,
    /// The org's record has no route covering the address and no default node.
    NoRoute,
}

impl UnroutableReason {
    /// Stable machine code.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoAcceptedRecord => "no_accepted_record",
            Self::NoRoute => "no_route",
        }
    }
}

impl fmt::Display for UnroutableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoAcceptedRecord => "the org has no accepted registry record",
            Self::NoRoute => "no route of the org covers the address and it has no default node",
        })
    }
}

impl AcceptedSet {
    /// Resolves `address`. `local_org` is this node's own org, if it belongs to one.
    pub fn resolve(&self, address: &AgentAddress, local_org: Option<&str>) -> Resolution {
        let org = address.org();
        if local_org == Some(org) {
            return Resolution::Local;
        }
        let unroutable = |reason| Resolution::Unroutable { org: org.to_owned(), reason };
        let Some(verified) = self.verified(org) else {
            return unroutable(UnroutableReason::NoAcceptedRecord);
        };
        let routing = &verified.routing;
        let longest_route = routing
            .routes
            .iter()
            .filter(|route| address.is_under(&route.prefix))
            .max_by_key(|route| route.prefix.as_str().len());
        let (node, matched) = match (longest_route, &routing.default_node) {
            (Some(route), _) => (&route.node, RouteMatch::Prefix(route.prefix.to_string())),
            (None, Some(node)) => (node, RouteMatch::DefaultNode),
            (None, None) => return unroutable(UnroutableReason::NoRoute),
        };
        Resolution::Remote { org: org.to_owned(), node: node.clone(), matched }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::load::load;
    use crate::registry::testing::Fixture;
    use crate::registry::verify::InMemorySerials;
    use serde_json::json;

    fn address(text: &str) -> AgentAddress {
        AgentAddress::parse(text).unwrap()
    }

    fn globex_set(fixture: &Fixture) -> AcceptedSet {
        let mut globex = fixture.draft("globex");
        globex
            .edit(|v| {
                v["routes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"prefix": "agent://globex/sales/emea/bot", "node": "globex-node-1"}));
            })
            .unwrap();
        fixture.sign_unchecked(&mut globex);
        let sources = fixture.sources(&[&globex]);
        let (set, report) = load(sources, &AcceptedSet::new(), &InMemorySerials::new(), fixture.now);
        assert!(report.is_clean(), "{report:?}");
        set
    }

    fn remote(set: &AcceptedSet, text: &str) -> (String, RouteMatch) {
        match set.resolve(&address(text), Some("acme")) {
            Resolution::Remote { node, matched, .. } => (node.id, matched),
            other => panic!("{text} resolved to {other:?}"),
        }
    }

    fn prefix(text: &str) -> RouteMatch {
        RouteMatch::Prefix(text.to_owned())
    }

    #[test]
    fn exact_route_wins() {
        let set = globex_set(&Fixture::new());
        assert_eq!(
            remote(&set, "agent://globex/sales/emea/bot"),
            ("globex-node-1".into(), prefix("agent://globex/sales/emea/bot"))
        );
        assert_eq!(remote(&set, "agent://globex/sales"), ("globex-node-1".into(), prefix("agent://globex/sales")));
    }

    #[test]
    fn longest_prefix_wins() {
        let set = globex_set(&Fixture::new());
        assert_eq!(
            remote(&set, "agent://globex/sales/emea/desk"),
            ("globex-node-2".into(), prefix("agent://globex/sales/emea"))
        );
        assert_eq!(
            remote(&set, "agent://globex/sales/emea/bot/v2"),
            ("globex-node-1".into(), prefix("agent://globex/sales/emea/bot"))
        );
        assert_eq!(remote(&set, "agent://globex/sales/us"), ("globex-node-1".into(), prefix("agent://globex/sales")));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_only() {
        let set = globex_set(&Fixture::new());
        assert_eq!(remote(&set, "agent://globex/salesforce"), ("globex-node-1".into(), RouteMatch::DefaultNode));
        assert_eq!(
            remote(&set, "agent://globex/sales/emeax"),
            ("globex-node-1".into(), prefix("agent://globex/sales"))
        );
    }

    #[test]
    fn default_node_takes_unrouted_addresses() {
        let set = globex_set(&Fixture::new());
        assert_eq!(remote(&set, "agent://globex/ops/bot"), ("globex-node-1".into(), RouteMatch::DefaultNode));
    }

    #[test]
    fn no_route_and_no_default_is_unroutable() {
        let fixture = Fixture::new();
        let mut globex = fixture.draft("globex");
        globex
            .edit(|v| {
                v.as_object_mut().unwrap().remove("default_node");
            })
            .unwrap();
        fixture.sign_unchecked(&mut globex);
        let (set, _) = load(fixture.sources(&[&globex]), &AcceptedSet::new(), &InMemorySerials::new(), fixture.now);
        assert_eq!(
            set.resolve(&address("agent://globex/ops"), None),
            Resolution::Unroutable { org: "globex".into(), reason: UnroutableReason::NoRoute }
        );
        assert_eq!(UnroutableReason::NoRoute.code(), "no_route");
    }

    #[test]
    fn own_org_is_local_even_with_a_record() {
        let set = globex_set(&Fixture::new());
        let sales = address("agent://globex/sales");
        assert_eq!(set.resolve(&sales, Some("globex")), Resolution::Local);
        assert!(matches!(set.resolve(&sales, None), Resolution::Remote { .. }));
        assert_eq!(AcceptedSet::new().resolve(&address("agent://acme/x"), Some("acme")), Resolution::Local);
    }

    #[test]
    fn org_without_accepted_record_is_unroutable() {
        let set = globex_set(&Fixture::new());
        let resolution = set.resolve(&address("agent://initech/x"), Some("acme"));
        assert_eq!(
            resolution,
            Resolution::Unroutable { org: "initech".into(), reason: UnroutableReason::NoAcceptedRecord }
        );
        assert_eq!(UnroutableReason::NoAcceptedRecord.code(), "no_accepted_record");
    }

    #[test]
    fn remote_resolution_carries_the_pinned_node() {
        let fixture = Fixture::new();
        let set = globex_set(&fixture);
        let Resolution::Remote { org, node, .. } = set.resolve(&address("agent://globex/x"), None) else {
            panic!("expected a remote resolution");
        };
        assert_eq!(org, "globex");
        assert_eq!(&node, &set.get("globex").unwrap().nodes[0]);
    }
}
