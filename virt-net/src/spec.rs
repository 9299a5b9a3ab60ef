//! What one VMI asks of the node's network, resolved from its spec: each interface's binding,
//! addresses, ports and MAC. Every refusal names the field (`spec.domain.devices.interfaces[0].ports[1].port`,
//! `spec.networks[1].multus.networkName`).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use virt_core::model::{Binding, VirtualMachineInstanceSpec};
use virt_core::net::MacAddr;

use crate::nft::ForwardedPort;

/// A refused spec: the field and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {message}")]
pub struct SpecError {
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: String, message: impl Into<String>) -> SpecError {
    SpecError { path, message: message.into() }
}

/// The address range of a secondary network (a NetworkAttachmentDefinition's `ipam`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddressRange {
    /// The subnet (its prefix is the guests' prefix).
    pub subnet: Ipv4Net,
    /// First address handed out.
    pub start: Ipv4Addr,
    /// Last address handed out.
    pub end: Ipv4Addr,
    /// The gateway told to guests.
    pub gateway: Option<Ipv4Addr>,
}

/// A secondary network, from its NetworkAttachmentDefinition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecondaryNetwork {
    /// `namespace/name` of the NetworkAttachmentDefinition.
    pub nad: String,
    /// The node bridge the interfaces join.
    pub bridge: String,
    /// Addresses handed out by DHCP; none: the guests configure themselves.
    pub range: Option<AddressRange>,
}

/// Finds NetworkAttachmentDefinitions (the node's store).
pub trait NadLookup: Send + Sync {
    /// The network `namespace/name` describes, `Ok(None)` when there is no such object, `Err(why)`
    /// when its config is unusable.
    fn network(&self, namespace: &str, name: &str) -> Result<Option<SecondaryNetwork>, NadError>;
}

/// Why a NetworkAttachmentDefinition cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NadError {
    /// A field of its config is missing or wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field path, e.g. `spec.config.ipam.subnet`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// It could not be read.
    #[error("reading it: {0}")]
    Read(String),
}

impl NadError {
    /// Field `field` is wrong: `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// How one interface is connected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IfaceKind {
    /// Pod network behind NAT.
    Masquerade {
        /// `vmNetworkCIDR` (default 10.0.2.0/24): gateway .1, guest .2.
        cidr4: Ipv4Net,
        /// `vmIPv6NetworkCIDR` (default fd10:0:2::/120).
        cidr6: Ipv6Net,
        /// Forwarded inbound; empty: all.
        ports: Vec<(bool, u16)>,
    },
    /// Pod network bridged: the guest takes the pod's address over DHCP.
    PodBridge,
    /// A secondary network's bridge.
    Secondary(SecondaryNetwork),
}

/// One interface to set up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IfaceRequest {
    /// Interface (and network) name.
    pub name: String,
    /// The guest's MAC.
    pub mac: MacAddr,
    /// The connection.
    pub kind: IfaceKind,
}

impl IfaceKind {
    /// The forwarded ports of a masquerade interface.
    pub fn forwarded(&self) -> Vec<ForwardedPort> {
        match self {
            Self::Masquerade { ports, .. } => {
                ports.iter().map(|(udp, port)| ForwardedPort { udp: *udp, port: *port }).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// The default `vmNetworkCIDR`.
pub fn default_cidr4() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 0, 2, 0), 24).unwrap_or_default()
}

/// The default `vmIPv6NetworkCIDR`.
pub fn default_cidr6() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0), 120).unwrap_or_default()
}

/// The interfaces of `spec` (of VMI `namespace`), in spec order; `macs` gives the MAC of each
/// interface by name (the node's pool filled missing ones). Interfaces with `state: absent` are
/// left out.
pub fn interfaces(
    spec: &VirtualMachineInstanceSpec,
    namespace: &str,
    macs: &dyn Fn(&str) -> Option<MacAddr>,
    nads: &dyn NadLookup,
) -> Result<Vec<IfaceRequest>, SpecError> {
    let ifp = "spec.domain.devices.interfaces";
    let mut out = Vec::new();
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let p = format!("{ifp}[{i}]");
        if iface.state == Some(virt_core::model::InterfaceState::Absent) {
            continue;
        }
        let Some((ni, net)) = spec.networks.iter().enumerate().find(|(_, n)| n.name == iface.name) else {
            return Err(err(
                format!("{p}.name"),
                format!("no network named {:?} in spec.networks", iface.name),
            ));
        };
        let np = format!("spec.networks[{ni}]");
        let bindings = iface.bindings();
        let binding = match bindings.as_slice() {
            [] => None,
            [b] => Some(*b),
            _ => return Err(err(p, "set at most one binding")),
        };
        let kind = match (&net.multus, binding) {
            (None, None | Some(Binding::Masquerade)) => {
                let pod = net.pod.clone().unwrap_or_default();
                let cidr4 = match pod.vm_network_cidr.as_deref() {
                    None => default_cidr4(),
                    Some(c) => parse4(c, || format!("{np}.pod.vmNetworkCIDR"))?,
                };
                let cidr6 = match pod.vm_ipv6_network_cidr.as_deref() {
                    None => default_cidr6(),
                    Some(c) => parse6(c, || format!("{np}.pod.vmIPv6NetworkCIDR"))?,
                };
                let mut ports = Vec::new();
                for (j, port) in iface.ports.iter().enumerate() {
                    let pp = format!("{p}.ports[{j}]");
                    let n = u16::try_from(port.port).ok().filter(|n| *n > 0).ok_or_else(|| {
                        err(format!("{pp}.port"), format!("{}: must be 1 to 65535", port.port))
                    })?;
                    let udp = match port.protocol.as_deref() {
                        None | Some("TCP") => false,
                        Some("UDP") => true,
                        Some(o) => {
                            return Err(err(format!("{pp}.protocol"), format!("{o:?}: expected TCP or UDP")))
                        }
                    };
                    ports.push((udp, n));
                }
                IfaceKind::Masquerade { cidr4, cidr6, ports }
            }
            (None, Some(Binding::Bridge)) => IfaceKind::PodBridge,
            (Some(m), None | Some(Binding::Bridge)) => {
                let (ns, name) = match m.network_name.split_once('/') {
                    Some((ns, name)) => (ns, name),
                    None => (namespace, m.network_name.as_str()),
                };
                let path = format!("{np}.multus.networkName");
                match nads.network(ns, name) {
                    Ok(Some(n)) => IfaceKind::Secondary(n),
                    Ok(None) => {
                        return Err(err(
                            path,
                            format!("NetworkAttachmentDefinition {ns}/{name} does not exist"),
                        ))
                    }
                    Err(why) => {
                        return Err(err(path, format!("NetworkAttachmentDefinition {ns}/{name}: {why}")))
                    }
                }
            }
            (Some(_), Some(Binding::Masquerade)) => {
                return Err(err(format!("{p}.masquerade"), "masquerade works only on the pod network"))
            }
            (_, Some(b)) => {
                return Err(err(
                    format!("{p}.{}", b.field()),
                    format!(
                        "the {} binding is not supported on this node: use masquerade or bridge",
                        b.field()
                    ),
                ))
            }
        };
        let mac = macs(&iface.name).ok_or_else(|| {
            err(format!("{p}.macAddress"), "no MAC address was allocated for this interface")
        })?;
        out.push(IfaceRequest { name: iface.name.clone(), mac, kind });
    }
    Ok(out)
}

/// The masquerade CIDR `c` of the field `path`.
fn parse4(c: &str, path: impl Fn() -> String) -> Result<Ipv4Net, SpecError> {
    let n: Ipv4Net = c.parse().map_err(|e| err(path(), format!("{c:?} is not an IPv4 CIDR: {e}")))?;
    if n.prefix_len() > 30 {
        return Err(err(
            path(),
            format!("{c:?}: the prefix must leave room for a gateway and a guest (at most /30)"),
        ));
    }
    Ok(n.trunc())
}

/// The masquerade IPv6 CIDR `c` of the field `path`.
fn parse6(c: &str, path: impl Fn() -> String) -> Result<Ipv6Net, SpecError> {
    let n: Ipv6Net = c.parse().map_err(|e| err(path(), format!("{c:?} is not an IPv6 CIDR: {e}")))?;
    if n.prefix_len() > 126 {
        return Err(err(
            path(),
            format!("{c:?}: the prefix must leave room for a gateway and a guest (at most /126)"),
        ));
    }
    Ok(n.trunc())
}

/// The gateway (first host) and guest (second host) of a masquerade CIDR.
pub fn masquerade_addrs4(c: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(c.network());
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// The IPv6 gateway and guest of a masquerade CIDR.
pub fn masquerade_addrs6(c: Ipv6Net) -> (Ipv6Addr, Ipv6Addr) {
    let base = u128::from(c.network());
    (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::model::{Empty, Interface, MultusNetwork, Network, PodNetwork, Port};

    struct Nads;
    impl NadLookup for Nads {
        fn network(&self, ns: &str, name: &str) -> Result<Option<SecondaryNetwork>, NadError> {
            Ok((ns == "default" && name == "sec").then(|| SecondaryNetwork {
                nad: "default/sec".into(),
                bridge: "br1".into(),
                range: None,
            }))
        }
    }

    fn spec(ifaces: Vec<Interface>, nets: Vec<Network>) -> VirtualMachineInstanceSpec {
        let mut s = VirtualMachineInstanceSpec::default();
        s.domain.devices.interfaces = ifaces;
        s.networks = nets;
        s
    }

    fn pod(name: &str) -> Network {
        Network { name: name.into(), pod: Some(PodNetwork::default()), multus: None }
    }

    fn resolve(s: &VirtualMachineInstanceSpec) -> Result<Vec<IfaceRequest>, SpecError> {
        interfaces(s, "default", &|_| Some(MacAddr([2, 0, 0, 0, 0, 1])), &Nads)
    }

    #[test]
    fn masquerade_with_cidr_and_ports() {
        let mut p = pod("default");
        p.pod =
            Some(PodNetwork { vm_network_cidr: Some("10.11.12.0/28".into()), vm_ipv6_network_cidr: None });
        let i = Interface {
            name: "default".into(),
            masquerade: Some(Empty::default()),
            ports: vec![Port { name: None, protocol: Some("UDP".into()), port: 53 }],
            ..Default::default()
        };
        let r = resolve(&spec(vec![i], vec![p])).unwrap();
        let IfaceKind::Masquerade { cidr4, ports, .. } = &r[0].kind else { panic!("{r:?}") };
        assert_eq!(masquerade_addrs4(*cidr4), (Ipv4Addr::new(10, 11, 12, 1), Ipv4Addr::new(10, 11, 12, 2)));
        assert_eq!(ports, &vec![(true, 53)]);
    }

    #[test]
    fn bad_input_names_the_field() {
        let i = Interface { name: "default".into(), sriov: Some(Empty::default()), ..Default::default() };
        let e = resolve(&spec(vec![i], vec![pod("default")])).unwrap_err();
        assert_eq!(e.path, "spec.domain.devices.interfaces[0].sriov");

        let i = Interface {
            name: "default".into(),
            masquerade: Some(Empty::default()),
            ports: vec![
                Port { name: None, protocol: None, port: 22 },
                Port { name: None, protocol: None, port: 70000 },
            ],
            ..Default::default()
        };
        let e = resolve(&spec(vec![i], vec![pod("default")])).unwrap_err();
        assert_eq!(e.path, "spec.domain.devices.interfaces[0].ports[1].port");
        assert!(e.message.contains("70000"));

        let i = Interface { name: "sec".into(), bridge: Some(Empty::default()), ..Default::default() };
        let m = Network {
            name: "sec".into(),
            pod: None,
            multus: Some(MultusNetwork { network_name: "nope".into(), default: None }),
        };
        let e = resolve(&spec(vec![i.clone()], vec![m])).unwrap_err();
        assert_eq!(e.path, "spec.networks[0].multus.networkName");
        assert!(e.message.contains("default/nope does not exist"), "{e}");

        let m = Network {
            name: "sec".into(),
            pod: None,
            multus: Some(MultusNetwork { network_name: "sec".into(), default: None }),
        };
        assert!(matches!(resolve(&spec(vec![i], vec![m])).unwrap()[0].kind, IfaceKind::Secondary(_)));

        let mut p = pod("default");
        p.pod = Some(PodNetwork { vm_network_cidr: Some("10.0.0.0/31".into()), vm_ipv6_network_cidr: None });
        let i = Interface { name: "default".into(), ..Default::default() };
        let e = resolve(&spec(vec![i], vec![p])).unwrap_err();
        assert_eq!(e.path, "spec.networks[0].pod.vmNetworkCIDR");
    }
}
