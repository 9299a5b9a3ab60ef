//! Planning (addresses, names) and creating one VMI's network; the node bridge.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{bridge_name, host, short, IfaceState, NetworkManager, PodNetError, VmiNet, DHCP_LINK_LOCAL};
use crate::netns;
use crate::spec::{masquerade_addrs4, masquerade_addrs6, IfaceKind, IfaceRequest};

impl NetworkManager {
    fn netns_err(&self, vmi: &str) -> impl Fn(netns::NetnsError) -> PodNetError + '_ {
        let vmi = vmi.to_string();
        move |source| PodNetError::Netns { vmi: vmi.clone(), source }
    }

    /// Creates the node bridge with the pod network's first addresses, forwarding, and the
    /// masquerade of pod traffic leaving the node, when the bridge is missing.
    pub(super) fn node_bridge(&self) -> Result<(), PodNetError> {
        let node = self.cfg.node_netns.as_deref();
        let err = self.netns_err("(node)");
        let br = &self.cfg.bridge;
        if netns::ip(node, &["link", "show", "dev", br]).is_err() {
            let mut cmds = vec![
                format!("link add {br} type bridge"),
                format!("addr add {}/{} dev {br}", self.pod_gateway4(), self.cfg.pod_cidr4.prefix_len()),
            ];
            if let (Some(g), Some(c)) = (self.pod_gateway6(), self.cfg.pod_cidr6) {
                cmds.push(format!("addr add {g}/{} dev {br} nodad", c.prefix_len()));
            }
            cmds.push(format!("link set {br} up"));
            netns::ip_batch(node, &cmds).map_err(&err)?;
        }
        let forwarding = [("ipv4/ip_forward", "1"), ("ipv6/conf/all/forwarding", "1")];
        match node {
            Some(ns) => netns::sysctl(&netns::path(ns), &forwarding).map_err(&err)?,
            None => {
                for (k, v) in forwarding {
                    let p = std::path::Path::new("/proc/sys/net").join(k);
                    std::fs::write(&p, v).map_err(|e| {
                        err(netns::NetnsError::Enter { path: p.display().to_string(), source: e })
                    })?;
                }
            }
        }
        let script = format!(
            "add table ip virt_rs_pods\ndelete table ip virt_rs_pods\n\
             table ip virt_rs_pods {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {} oifname != \"{br}\" counter masquerade\n\t}}\n}}\n",
            self.cfg.pod_cidr4
        );
        netns::nft(node, &script).map_err(&err)
    }

    /// Names and addresses for a new VMI network (nothing is created).
    pub(super) fn plan(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        interfaces: &[IfaceRequest],
    ) -> Result<VmiNet, PodNetError> {
        let vmi = format!("{namespace}/{name}");
        let records = self.records();
        let id = short(uid);
        let used: BTreeSet<Ipv4Addr> = records.iter().map(|r| r.pod4).collect();
        let net = self.cfg.pod_cidr4;
        let first = u32::from(net.network()) + 2;
        let last = u32::from(net.broadcast()).saturating_sub(1);
        let pod4 = (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(a))
            .ok_or_else(|| PodNetError::Exhausted { vmi: vmi.clone(), range: net.to_string() })?;
        let pod6 = self.cfg.pod_cidr6.map(|c| {
            Ipv6Addr::from(u128::from(c.network()) + u128::from(u32::from(pod4) - u32::from(net.network())))
        });
        let mut out = Vec::new();
        for (i, req) in interfaces.iter().enumerate() {
            let bridge = bridge_name(&req.name, i);
            let (guest4, guest6, node_veth) = match &req.kind {
                IfaceKind::Masquerade { cidr4, cidr6, .. } => (
                    Some((masquerade_addrs4(*cidr4).1, cidr4.prefix_len())),
                    Some(masquerade_addrs6(*cidr6).1),
                    None,
                ),
                IfaceKind::PodBridge => (Some((pod4, net.prefix_len())), pod6, None),
                IfaceKind::Secondary(s) => {
                    let addr = match &s.range {
                        None => None,
                        Some(r) => {
                            let taken: BTreeSet<Ipv4Addr> = records
                                .iter()
                                .flat_map(|rec| rec.interfaces.iter())
                                .filter(
                                    |i| matches!(&i.request.kind, IfaceKind::Secondary(o) if o.nad == s.nad),
                                )
                                .filter_map(|i| i.guest4.map(|(ip, _)| ip))
                                .chain(out.iter().filter_map(|i: &IfaceState| i.guest4.map(|(ip, _)| ip)))
                                .collect();
                            let ip = (u32::from(r.start)..=u32::from(r.end))
                                .map(Ipv4Addr::from)
                                .find(|a| !taken.contains(a) && Some(*a) != r.gateway)
                                .ok_or_else(|| PodNetError::Exhausted {
                                    vmi: vmi.clone(),
                                    range: format!("{}-{} of {}", r.start, r.end, s.nad),
                                })?;
                            Some((ip, r.subnet.prefix_len()))
                        }
                    };
                    (addr, None, Some(format!("vs{id}{}", i % 10)))
                }
            };
            out.push(IfaceState {
                request: req.clone(),
                tap: format!("tap{i}"),
                bridge,
                guest4,
                guest6,
                node_veth,
            });
        }
        Ok(VmiNet {
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            netns: format!("{}{id}", self.cfg.prefix),
            node_veth: format!("vh{id}"),
            pod4,
            pod6,
            interfaces: out,
        })
    }

    /// Creates `net`: the namespace, the veths (node side: one `ip -batch`), the bridges and taps
    /// (VMI side: one `ip -batch`), forwarding, and the masquerade rules (one `nft -f -`).
    pub(super) fn create(&self, net: &VmiNet) -> Result<(), PodNetError> {
        let err = self.netns_err(&format!("{}/{}", net.namespace, net.name));
        let ns = &net.netns;
        netns::add(ns).map_err(&err)?;
        let node = self.cfg.node_netns.as_deref();
        let mut node_cmds = vec![
            format!("link add {} type veth peer name eth0 netns {ns}", net.node_veth),
            format!("link set dev {} master {} up", net.node_veth, self.cfg.bridge),
        ];
        for (i, s) in net.interfaces.iter().enumerate() {
            if let (IfaceKind::Secondary(sec), Some(v)) = (&s.request.kind, &s.node_veth) {
                node_cmds.push(format!("link add {v} type veth peer name net{i} netns {ns}"));
                node_cmds.push(format!("link set dev {v} master {} up", sec.bridge));
            }
        }
        netns::ip_batch(node, &node_cmds).map_err(&err)?;
        let bridged_pod = net.interfaces.iter().any(|i| i.request.kind == IfaceKind::PodBridge);
        let mut cmds = vec!["link set lo up".to_string(), format!("link set eth0 mtu {}", self.cfg.mtu)];
        if !bridged_pod {
            cmds.push(format!("addr add {}/{} dev eth0", net.pod4, self.cfg.pod_cidr4.prefix_len()));
            if let (Some(a), Some(c)) = (net.pod6, self.cfg.pod_cidr6) {
                cmds.push(format!("addr add {a}/{} dev eth0 nodad", c.prefix_len()));
            }
            cmds.push("link set eth0 up".into());
            cmds.push(format!("route add default via {}", host(self.pod_gateway4().into())));
            if let Some(g) = self.pod_gateway6() {
                cmds.push(format!("route add default via {g}"));
            }
        }
        let (more, route_localnet, no_dad) = self.iface_cmds(net);
        cmds.extend(more);
        netns::ip_batch(Some(ns), &cmds).map_err(&err)?;
        let mut sys: Vec<(&str, &str)> = vec![("ipv4/ip_forward", "1"), ("ipv6/conf/all/forwarding", "1")];
        sys.extend(route_localnet.iter().map(|k| (k.as_str(), "1")));
        sys.extend(no_dad.iter().map(|k| (k.as_str(), "0")));
        netns::sysctl(&net.netns_path(), &sys).map_err(&err)?;
        if let Some(script) = self.ruleset(net) {
            netns::nft(Some(ns), &script).map_err(&err)?;
        }
        Ok(())
    }

    /// Creates `net`'s interfaces in an existing pod namespace (its `eth0` configured by the pod's
    /// network plugin): bridges, taps, forwarding and the masquerade rules.
    pub(super) fn create_in_pod(&self, net: &VmiNet) -> Result<(), PodNetError> {
        let err = self.netns_err(&format!("{}/{}", net.namespace, net.name));
        let (cmds, route_localnet, no_dad) = self.iface_cmds(net);
        netns::ip_batch(Some(&net.netns), &cmds).map_err(&err)?;
        let mut sys: Vec<(&str, &str)> = vec![("ipv4/ip_forward", "1"), ("ipv6/conf/all/forwarding", "1")];
        sys.extend(route_localnet.iter().map(|k| (k.as_str(), "1")));
        sys.extend(no_dad.iter().map(|k| (k.as_str(), "0")));
        netns::sysctl(&net.netns_path(), &sys).map_err(&err)?;
        if let Some(script) = self.ruleset(net) {
            netns::nft(Some(&net.netns), &script).map_err(&err)?;
        }
        Ok(())
    }

    /// The `ip` commands of `net`'s bridges and taps inside its namespace, and the sysctls to set
    /// to 1 (`route_localnet`) and 0 (`accept_dad`) on its bridges.
    fn iface_cmds(&self, net: &VmiNet) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut cmds = Vec::new();
        let (mut route_localnet, mut no_dad) = (Vec::new(), Vec::new());
        for (i, s) in net.interfaces.iter().enumerate() {
            let (br, tap) = (&s.bridge, &s.tap);
            cmds.push(format!("link add {br} type bridge"));
            cmds.push(format!("link set {br} mtu {}", self.cfg.mtu));
            cmds.push(format!("tuntap add dev {tap} mode tap vnet_hdr"));
            cmds.push(format!("link set dev {tap} mtu {} master {br} up", self.cfg.mtu));
            match &s.request.kind {
                IfaceKind::Masquerade { cidr4, cidr6, .. } => {
                    cmds.push(format!(
                        "addr add {}/{} dev {br}",
                        masquerade_addrs4(*cidr4).0,
                        cidr4.prefix_len()
                    ));
                    cmds.push(format!(
                        "addr add {}/{} dev {br} nodad",
                        masquerade_addrs6(*cidr6).0,
                        cidr6.prefix_len()
                    ));
                    route_localnet.push(format!("ipv4/conf/{br}/route_localnet"));
                    // The bridge's link-local address is the router advertisements' source: usable
                    // as soon as the guest's NIC brings the carrier up, not after a second of DAD.
                    no_dad.push(format!("ipv6/conf/{br}/accept_dad"));
                }
                IfaceKind::PodBridge => {
                    cmds.push(format!("link set dev eth0 master {br} up"));
                    cmds.push(format!("addr add {DHCP_LINK_LOCAL}/32 dev {br}"));
                }
                IfaceKind::Secondary(sec) => {
                    cmds.push(format!("link set dev net{i} mtu {} master {br} up", self.cfg.mtu));
                    if sec.range.is_some() {
                        cmds.push(format!("addr add {DHCP_LINK_LOCAL}/32 dev {br}"));
                    }
                }
            }
            cmds.push(format!("link set {br} up"));
        }
        (cmds, route_localnet, no_dad)
    }
}
