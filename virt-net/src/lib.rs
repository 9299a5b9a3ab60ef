//! Networking layer: the host side of guest NICs.
//!
//! - [`tap`]: Linux tap devices (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) implementing
//!   [`virt_core::net::NetBackend`], with the guest's accepted offloads applied by `TUNSETOFFLOAD`;
//!   [`tap::opener`] gives the native VMM its NICs from a `MachineSpec`'s interfaces.
//!
//! - [`endpoint`]: where a running VMI's guest is reached from the node (netns + address);
//!   [`lookup`]: an empty lookup and a hand-filled table.
//! - [`dial`]: streams to a guest's port from inside its VMI's network namespace (`portforward`).
//!
//! The node's pod network (bridges, masquerade, DHCP) builds on these (not built yet).

pub mod dial;
pub mod endpoint;
pub mod lookup;
pub mod tap;
