//! Networking layer: the host side of guest NICs and the node's pod network.
//!
//! - [`tap`]: Linux tap devices (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) implementing
//!   [`virt_core::net::NetBackend`], with the guest's accepted offloads applied by `TUNSETOFFLOAD`;
//!   [`tap::opener`] gives the native VMM its NICs from a `MachineSpec`'s interfaces.
//! - [`endpoint`]: where a running VMI's guest is reached from the node (netns + address).
//! - [`pod`]: the node's [`pod::NetworkManager`]: a network namespace per VMI, the pod network with
//!   KubeVirt's `masquerade` and `bridge` bindings, secondary networks, cleanup after crashes.
//! - [`spec`]: a VMI's interfaces resolved (bindings, `vmNetworkCIDR`, `ports`, Multus networks).
//! - [`dhcp`]: the DHCPv4 server of each interface (dhcproto); [`nft`]: the masquerade ruleset;
//!   [`macpool`]: the MAC pool; [`netns`]: namespaces, `ip -batch`, `nft -f -`.
//! - [`lookup`]: an empty lookup and a hand-filled table; [`dial`]: streams to a guest's port from
//!   inside its VMI's network namespace (`portforward`).
//! - [`fuzzing`]: bodies of the cargo-fuzz targets (also run as proptests).

#![warn(missing_docs)]
// Library code returns errors; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
pub mod dhcp;
pub mod dial;
pub mod endpoint;
pub mod fuzzing;
pub mod lookup;
pub mod macpool;
pub mod netns;
pub mod nft;
pub mod pod;
pub mod spec;
pub mod tap;
