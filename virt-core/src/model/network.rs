//! Network interfaces (`spec.domain.devices.interfaces`) and the networks they connect to
//! (`spec.networks`).

use serde::{Deserialize, Serialize};

use super::domain::Empty;

/// `Interface`: a guest NIC. Exactly one binding (`masquerade`, `bridge`, `sriov`, ... or a
/// `binding` plugin) may be set; none means the node's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Name, also the name of the network it connects to.
    pub name: String,
    /// NIC model: `virtio` (default), `e1000`, `e1000e`, `igb`, `ne2k_pci`, `pcnet`, `rtl8139`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Layer-2 bridge to the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Empty>,
    /// QEMU user networking (removed in KubeVirt 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slirp: Option<Empty>,
    /// NAT behind the pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Empty>,
    /// SR-IOV virtual function passed through (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<Empty>,
    /// macvtap (removed in KubeVirt 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvtap: Option<Empty>,
    /// passt (removed in KubeVirt 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passt: Option<Empty>,
    /// passt user-mode networking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passt_binding: Option<Empty>,
    /// A network binding plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<PluginBinding>,
    /// Ports forwarded to the guest (masquerade).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// MAC address (`de:ad:00:00:be:af` or `DE-AD-00-00-BE-AF`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Boot order (> 0, unique across disks and interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Guest PCI address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// Extra DHCP options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
    /// Tag for config-drive device metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// ACPI index for stable NIC naming (1..16383).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi_index: Option<u32>,
    /// `up`, `down` or `absent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InterfaceState>,
}

/// The binding method of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `bridge`.
    Bridge,
    /// `slirp`.
    Slirp,
    /// `masquerade`.
    Masquerade,
    /// `sriov`.
    Sriov,
    /// `macvtap`.
    Macvtap,
    /// `passt`.
    Passt,
    /// `passtBinding`.
    PasstBinding,
    /// `binding` (a plugin).
    Plugin,
}

impl Binding {
    /// The field name in YAML.
    pub fn field(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Slirp => "slirp",
            Self::Masquerade => "masquerade",
            Self::Sriov => "sriov",
            Self::Macvtap => "macvtap",
            Self::Passt => "passt",
            Self::PasstBinding => "passtBinding",
            Self::Plugin => "binding",
        }
    }
}

impl Interface {
    /// Every binding method set, in field order.
    pub fn bindings(&self) -> Vec<Binding> {
        [
            (self.bridge.is_some(), Binding::Bridge),
            (self.slirp.is_some(), Binding::Slirp),
            (self.masquerade.is_some(), Binding::Masquerade),
            (self.sriov.is_some(), Binding::Sriov),
            (self.macvtap.is_some(), Binding::Macvtap),
            (self.passt.is_some(), Binding::Passt),
            (self.passt_binding.is_some(), Binding::PasstBinding),
            (self.binding.is_some(), Binding::Plugin),
        ]
        .into_iter()
        .filter_map(|(set, b)| set.then_some(b))
        .collect()
    }
}

/// `PluginBinding`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginBinding {
    /// Plugin name as registered in the KubeVirt CR.
    pub name: String,
}

/// `Port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port number, 1..65535.
    pub port: i32,
}

/// `DHCPOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DhcpOptions {
    /// Option 67.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_file_name: Option<String>,
    /// Option 66.
    #[serde(rename = "tftpServerName", default, skip_serializing_if = "Option::is_none")]
    pub tftp_server_name: Option<String>,
    /// Option 42.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<String>,
    /// Private options 224-254.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_options: Vec<DhcpPrivateOption>,
}

/// `DHCPPrivateOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DhcpPrivateOption {
    /// Option number, 224-254.
    pub option: i32,
    /// Value.
    pub value: String,
}

/// `InterfaceState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceState {
    /// Link up.
    Up,
    /// Link down.
    Down,
    /// Remove the interface.
    Absent,
}

/// `Network`: exactly one of `pod` and `multus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Name, matched by an interface.
    pub name: String,
    /// The pod (node) network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    /// A Multus secondary network (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,
}

/// `PodNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    /// Guest IPv4 CIDR behind masquerade (default 10.0.2.0/24).
    #[serde(rename = "vmNetworkCIDR", default, skip_serializing_if = "Option::is_none")]
    pub vm_network_cidr: Option<String>,
    /// Guest IPv6 CIDR behind masquerade (default fd10:0:2::/120).
    #[serde(rename = "vmIPv6NetworkCIDR", default, skip_serializing_if = "Option::is_none")]
    pub vm_ipv6_network_cidr: Option<String>,
}

/// `MultusNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultusNetwork {
    /// `name` or `namespace/name` of a NetworkAttachmentDefinition.
    pub network_name: String,
    /// Use as the default network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}
