//! A machine's NICs: model, MAC and the host side they are linked to.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::net::{MacAddr, NetBackend, NetError, VhostMode};

/// The NIC a guest sees (KubeVirt's `interfaces[].model`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NicModel {
    /// virtio-net (the default; the only model of the native VMM).
    #[default]
    #[serde(rename = "virtio")]
    Virtio,
    /// Intel 82540EM.
    #[serde(rename = "e1000")]
    E1000,
    /// Intel 82574L.
    #[serde(rename = "e1000e")]
    E1000e,
    /// Intel 82576.
    #[serde(rename = "igb")]
    Igb,
    /// Realtek RTL8139.
    #[serde(rename = "rtl8139")]
    Rtl8139,
    /// NE2000 on PCI.
    #[serde(rename = "ne2k_pci")]
    Ne2kPci,
    /// AMD PCnet.
    #[serde(rename = "pcnet")]
    Pcnet,
}

impl NicModel {
    /// Every model, in KubeVirt's order.
    pub const ALL: [NicModel; 7] =
        [Self::Virtio, Self::E1000, Self::E1000e, Self::Igb, Self::Rtl8139, Self::Ne2kPci, Self::Pcnet];

    /// KubeVirt's name (`virtio`, `e1000e`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Virtio => "virtio",
            Self::E1000 => "e1000",
            Self::E1000e => "e1000e",
            Self::Igb => "igb",
            Self::Rtl8139 => "rtl8139",
            Self::Ne2kPci => "ne2k_pci",
            Self::Pcnet => "pcnet",
        }
    }

    /// The model named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The host side of a NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum InterfaceBackend {
    /// Not linked yet (the node has not wired this interface): the guest sees a NIC with no carrier
    /// partner; frames it sends are dropped.
    #[default]
    None,
    /// A tap device by name, opened (and created if missing) by the backend.
    #[serde(rename_all = "camelCase")]
    Tap {
        /// Interface name (at most 15 bytes).
        name: String,
    },
    /// An open tap descriptor this process inherited (set up with `IFF_VNET_HDR`, not close-on-exec).
    #[serde(rename_all = "camelCase")]
    TapFd {
        /// The descriptor number.
        fd: i32,
    },
}

/// One NIC of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterfaceSpec {
    /// KubeVirt's interface name (also the network's).
    pub name: String,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// The device model.
    #[serde(default)]
    pub model: NicModel,
    /// Where its frames go.
    #[serde(default)]
    pub backend: InterfaceBackend,
    /// MTU the guest is told (virtio-net's config space); `None` for 1500.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// Boot order (> 0), for network boot.
    #[serde(default)]
    pub boot_order: Option<u32>,
    /// Whether the kernel moves a virtio NIC's frames (`auto`, `on`, `off`; default `auto`).
    #[serde(default)]
    pub vhost: VhostMode,
}

/// Opens the host side of a NIC for a backend that serves NICs itself (the native VMM); the network
/// layer provides it (taps), so `virt-core` does not depend on `virt-net`.
pub type NetOpener = Arc<dyn Fn(&InterfaceSpec) -> Result<Arc<dyn NetBackend>, NetError> + Send + Sync>;
