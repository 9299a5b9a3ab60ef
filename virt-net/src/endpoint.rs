//! Where a running VMI's guest can be reached from the node: the contract between the node's pod
//! network (which creates each VMI's network namespace and hands the guest its address) and the
//! streams that reach into it (`portforward`, `virtctl ssh`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// How to reach one running VMI's guest from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmiEndpoint {
    /// The VMI's network namespace (a file under `/run/netns` or `/proc/<pid>/ns/net`);
    /// `None` when the guest is reachable from the node's own namespace.
    pub netns: Option<PathBuf>,
    /// The guest's IPv4 address inside that namespace (KubeVirt's masquerade: 10.0.2.2).
    pub guest_ipv4: Option<Ipv4Addr>,
    /// The guest's IPv6 address inside that namespace (masquerade: fd10:0:2::2).
    pub guest_ipv6: Option<Ipv6Addr>,
}

/// Finds the endpoint of a running VMI by namespace and name; implemented by the node's network
/// manager, and by a fixed table in tests.
pub trait EndpointLookup: Send + Sync {
    /// The endpoint of `namespace/name`, or `None` when the VMI is not running or has no network.
    fn endpoint(&self, namespace: &str, name: &str) -> Option<VmiEndpoint>;
}
