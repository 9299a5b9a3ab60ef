//! Simple [`EndpointLookup`]s: [`NoEndpoints`] (no VMI has a network: the node's default until its
//! pod network answers) and [`EndpointTable`] (a table filled by hand: tests and embedders).

use std::collections::HashMap;
use std::sync::RwLock;

use crate::endpoint::{EndpointLookup, VmiEndpoint};

/// No VMI has a reachable network.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEndpoints;

impl EndpointLookup for NoEndpoints {
    fn endpoint(&self, _namespace: &str, _name: &str) -> Option<VmiEndpoint> {
        None
    }
}

/// A table of endpoints by `(namespace, name)`.
#[derive(Debug, Default)]
pub struct EndpointTable {
    table: RwLock<HashMap<(String, String), VmiEndpoint>>,
}

impl EndpointTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the endpoint of `namespace/name`.
    pub fn insert(&self, namespace: &str, name: &str, endpoint: VmiEndpoint) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.insert((namespace.to_string(), name.to_string()), endpoint);
    }

    /// Forgets the endpoint of `namespace/name`.
    pub fn remove(&self, namespace: &str, name: &str) -> Option<VmiEndpoint> {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.remove(&(namespace.to_string(), name.to_string()))
    }
}

impl EndpointLookup for EndpointTable {
    fn endpoint(&self, namespace: &str, name: &str) -> Option<VmiEndpoint> {
        let t = self.table.read().unwrap_or_else(|e| e.into_inner());
        t.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_insert_lookup_remove() {
        let t = EndpointTable::new();
        let ep = VmiEndpoint { netns: None, guest_ipv4: Some([10, 0, 2, 2].into()), guest_ipv6: None };
        assert_eq!(t.endpoint("default", "a"), None);
        t.insert("default", "a", ep.clone());
        assert_eq!(t.endpoint("default", "a"), Some(ep.clone()));
        assert_eq!(t.endpoint("other", "a"), None);
        assert_eq!(t.remove("default", "a"), Some(ep));
        assert_eq!(NoEndpoints.endpoint("default", "a"), None);
    }
}
