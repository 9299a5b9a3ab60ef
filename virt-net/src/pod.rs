//! The node's network manager: each running VMI gets its own network namespace (as a pod has)
//! joined to the node by a veth pair on the node bridge (`virt-pods`, the pod network), and per
//! interface a bridge `k6t-<net>` with a tap the launcher opens; masquerade interfaces get
//! KubeVirt's nftables rules and a DHCP server handing out 10.0.2.2, bridge interfaces a DHCP server
//! handing out the pod's (or the secondary network's) address.
//!
//! What a VMI got is recorded in `<state>/<uid>.json` *before* it is created, so teardown (when the
//! VMI ends) and [`NetworkManager::sweep`] (after a node SIGKILL) remove exactly that: the
//! namespace (its taps, bridges and rules go with it, and the veths' node ends with their peers),
//! the DHCP servers, the addresses.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Mutex;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::dhcp::ra::RaConfig;
use crate::dhcp::server::{DhcpServer, ServerError};
use crate::dhcp::v6::{duid_ll, Dhcp6Config};
use crate::dhcp::DhcpConfig;
use crate::endpoint::{EndpointLookup, VmiEndpoint};
use crate::netns::{self, NetnsError};
use crate::nft::{self, Masquerade};
use crate::spec::{masquerade_addrs4, masquerade_addrs6, IfaceKind, IfaceRequest};

/// The address the DHCP server answers from on bridges without an address of their own (KubeVirt
/// uses the same link-local address).
pub const DHCP_LINK_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// The node's pod network.
#[derive(Debug, Clone)]
pub struct NodeNetConfig {
    /// The namespace playing the node's (tests); `None`: the node process's own.
    pub node_netns: Option<String>,
    /// The pod network's bridge on the node.
    pub bridge: String,
    /// The pod network (the node bridge has its first address, pods the next ones).
    pub pod_cidr4: Ipv4Net,
    /// The pod network's IPv6 prefix.
    pub pod_cidr6: Option<Ipv6Net>,
    /// Where each VMI's record goes.
    pub state_dir: PathBuf,
    /// Name servers and search domains handed to guests (KubeVirt: the pod's resolv.conf).
    pub dns: Vec<Ipv4Addr>,
    /// Search domains.
    pub search: Vec<String>,
    /// The pod interface's MTU (told to guests).
    pub mtu: u16,
    /// Prefix of namespace names (`virt-` by default; tests use their own so runs do not collide).
    pub prefix: String,
}

impl NodeNetConfig {
    /// The defaults under `state_dir`: bridge `virt-pods`, 10.244.0.0/16 and fd10:244::/64, the
    /// name servers of /etc/resolv.conf.
    pub fn new(state_dir: PathBuf) -> Self {
        let (dns, search) = resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        Self {
            node_netns: None,
            bridge: "virt-pods".into(),
            pod_cidr4: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            pod_cidr6: Ipv6Net::new(Ipv6Addr::new(0xfd10, 0x244, 0, 0, 0, 0, 0, 0), 64).ok(),
            state_dir,
            dns,
            search,
            mtu: 1500,
            prefix: "virt-".into(),
        }
    }
}

/// Name servers (IPv4, not loopback: a guest cannot reach the node's resolver on 127.0.0.1) and
/// search domains of a resolv.conf.
pub fn resolv_conf(text: &str) -> (Vec<Ipv4Addr>, Vec<String>) {
    let (mut dns, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(Ok(ip)) = w.next().map(str::parse::<Ipv4Addr>) {
                    if !ip.is_loopback() {
                        dns.push(ip);
                    }
                }
            }
            Some("search") | Some("domain") => search.extend(w.map(str::to_string)),
            _ => {}
        }
    }
    (dns, search)
}

/// Errors of the network manager.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// A tool or namespace step failed.
    #[error("VMI {vmi}: {source}")]
    Netns {
        /// `namespace/name`.
        vmi: String,
        /// The failure.
        source: NetnsError,
    },
    /// A DHCP server could not start.
    #[error("VMI {vmi}: {source}")]
    Dhcp {
        /// `namespace/name`.
        vmi: String,
        /// The failure.
        source: ServerError,
    },
    /// No address is left.
    #[error("VMI {vmi}: no free address left in {range}")]
    Exhausted {
        /// `namespace/name`.
        vmi: String,
        /// The range.
        range: String,
    },
    /// An interface kind a pod made by someone else (a Kubernetes pod) cannot carry.
    #[error("VMI {vmi}: {why}")]
    Unsupported {
        /// `namespace/name`.
        vmi: String,
        /// What and why.
        why: String,
    },
    /// The record could not be written.
    #[error("network record {path}: {why}")]
    Record {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
}

/// What one interface got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceState {
    /// The request it was made from.
    pub request: IfaceRequest,
    /// Its tap in the VMI's namespace (what the launcher opens).
    pub tap: String,
    /// Its bridge in the VMI's namespace.
    pub bridge: String,
    /// The guest's IPv4 address and prefix length, when the node hands one out.
    pub guest4: Option<(Ipv4Addr, u8)>,
    /// The guest's IPv6 address.
    pub guest6: Option<Ipv6Addr>,
    /// The node end of a secondary network's veth.
    pub node_veth: Option<String>,
}

/// What one VMI got (its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmiNet {
    /// The VMI's uid.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// The node end of the pod veth.
    pub node_veth: String,
    /// The pod's addresses.
    pub pod4: Ipv4Addr,
    /// The pod's IPv6 address.
    pub pod6: Option<Ipv6Addr>,
    /// Per interface, in spec order.
    pub interfaces: Vec<IfaceState>,
}

impl VmiNet {
    /// The namespace file (for the launcher's setns).
    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.netns)
    }

    /// Where a stream reaches the guest (port-forward, ssh): the first interface's address in the
    /// VMI's namespace.
    pub fn endpoint(&self) -> VmiEndpoint {
        let first = self.interfaces.first();
        VmiEndpoint {
            netns: Some(self.netns_path()),
            guest_ipv4: first.and_then(|i| i.guest4.map(|(ip, _)| ip)),
            guest_ipv6: first.and_then(|i| i.guest6),
        }
    }

    /// KubeVirt's `status.interfaces` as the node knows them (`infoSource: domain`). A masquerade
    /// interface shows the pod's addresses, as KubeVirt's: the guest's 10.0.2.2 is reached from
    /// nowhere else.
    pub fn status(&self) -> Vec<virt_core::model::NetworkInterfaceStatus> {
        self.interfaces
            .iter()
            .map(|i| {
                let mut ips: Vec<String> = Vec::new();
                if matches!(i.request.kind, IfaceKind::Masquerade { .. }) {
                    ips.push(self.pod4.to_string());
                    ips.extend(self.pod6.map(|a| a.to_string()));
                } else {
                    ips.extend(i.guest4.map(|(ip, _)| ip.to_string()));
                    ips.extend(i.guest6.map(|ip| ip.to_string()));
                }
                virt_core::model::NetworkInterfaceStatus {
                    ip_address: ips.first().cloned(),
                    mac: Some(i.request.mac.to_string()),
                    name: Some(i.request.name.clone()),
                    ip_addresses: ips,
                    pod_interface_name: Some(i.tap.clone()),
                    info_source: Some("domain".into()),
                    ..Default::default()
                }
            })
            .collect()
    }
}

/// A short stable hash of a uid, for interface and namespace names (15-byte limit).
fn short(uid: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// `k6t-<net>` when it fits an interface name, else `k6t-net<i>`.
pub fn bridge_name(net: &str, index: usize) -> String {
    let n = format!("k6t-{net}");
    if n.len() <= 15 && net.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        n
    } else {
        format!("k6t-net{index}")
    }
}

/// The node's network manager; implements [`EndpointLookup`] for port-forward and ssh.
pub struct NetworkManager {
    cfg: NodeNetConfig,
    /// Running VMIs by uid, with their DHCP servers.
    running: Mutex<HashMap<String, (VmiNet, Vec<DhcpServer>)>>,
    /// One setup at a time (addresses are chosen from the records).
    setup_lock: Mutex<()>,
}

mod setup;

impl NetworkManager {
    /// A manager; creates the node bridge (and its outbound masquerade) when missing.
    pub fn new(cfg: NodeNetConfig) -> Result<Self, PodNetError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| PodNetError::Record {
            path: cfg.state_dir.display().to_string(),
            why: e.to_string(),
        })?;
        let m = Self { cfg, running: Mutex::new(HashMap::new()), setup_lock: Mutex::new(()) };
        m.node_bridge()?;
        Ok(m)
    }

    /// A manager of VMIs in pods someone else networks (a Kubernetes node: the CNI plugin made
    /// each launcher pod's namespace and `eth0`): no node bridge, no namespaces of its own; see
    /// [`NetworkManager::adopt`].
    pub fn for_pods(cfg: NodeNetConfig) -> Result<Self, PodNetError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|e| PodNetError::Record {
            path: cfg.state_dir.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(Self { cfg, running: Mutex::new(HashMap::new()), setup_lock: Mutex::new(()) })
    }

    /// The configuration.
    pub fn config(&self) -> &NodeNetConfig {
        &self.cfg
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.cfg.state_dir.join(format!("{}.json", short(uid)))
    }

    fn records(&self) -> Vec<VmiNet> {
        let Ok(dir) = std::fs::read_dir(&self.cfg.state_dir) else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    fn write_record(&self, net: &VmiNet) -> Result<(), PodNetError> {
        let path = self.record_path(&net.uid);
        let err = |why: String| PodNetError::Record { path: path.display().to_string(), why };
        let text = serde_json::to_vec_pretty(net).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }

    /// The record of `uid`, while its network exists.
    pub fn get(&self, uid: &str) -> Option<VmiNet> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(uid).map(|(n, _)| n.clone())
    }

    /// Sets up VMI `uid` (`namespace/name`, its guest's host name `name`) with `interfaces`; all of
    /// it or nothing (a failure removes what was made). An existing network of the same uid (a
    /// guest reboot, a node restart) is kept and its DHCP servers started.
    pub fn setup(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        interfaces: &[IfaceRequest],
    ) -> Result<VmiNet, PodNetError> {
        let _one = self.setup_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = self.get(uid) {
            return Ok(n);
        }
        let existing = self.records().into_iter().find(|r| r.uid == uid);
        if let Some(net) = existing
            .filter(|r| netns::exists(&r.netns) && r.interfaces.iter().map(|i| &i.request).eq(interfaces))
        {
            let servers = self.start_dhcp(&net);
            return self.keep_or_undo(net, servers, || {});
        }
        self.remove_record_and_netns(uid);
        let net = self.plan(uid, namespace, name, interfaces)?;
        self.write_record(&net)?;
        let made = self.create(&net).and_then(|()| self.start_dhcp(&net));
        self.keep_or_undo(net, made, || self.remove_record_and_netns(uid))
    }

    /// Sets up VMI `uid`'s interfaces inside `netns`, a named namespace that already exists with
    /// the pod's `eth0` (a Kubernetes launcher pod's, attached by name): per interface the bridge,
    /// the tap, the masquerade rules and the DHCP servers, as [`NetworkManager::setup`] makes them
    /// in a namespace of its own. Only masquerade interfaces: a bridge binding would take the
    /// pod's address off `eth0`, and secondary networks need a node bridge. Idempotent; removing
    /// it ([`NetworkManager::teardown`]) drops the name and stops the DHCP servers (the namespace
    /// goes with its pod).
    pub fn adopt(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        netns: &str,
        interfaces: &[IfaceRequest],
    ) -> Result<VmiNet, PodNetError> {
        let vmi = format!("{namespace}/{name}");
        if let Some(i) = interfaces.iter().find(|i| !matches!(i.kind, IfaceKind::Masquerade { .. })) {
            return Err(PodNetError::Unsupported {
                vmi,
                why: format!(
                    "interface {}: only masquerade interfaces on the pod network are supported in a \
                     Kubernetes launcher pod",
                    i.name
                ),
            });
        }
        let _one = self.setup_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = self.get(uid) {
            return Ok(n);
        }
        let existing = self.records().into_iter().find(|r| r.uid == uid);
        if let Some(net) = existing.filter(|r| r.netns == netns && netns::exists(netns)) {
            // A restarted agent: the pod's interfaces are there; its DHCP servers are not.
            let servers = self.start_dhcp(&net);
            return self.keep_or_undo(net, servers, || {});
        }
        let err = |source| PodNetError::Netns { vmi: vmi.clone(), source };
        let pod4 = netns::ip(Some(netns), &["-4", "-o", "addr", "show", "dev", "eth0"])
            .map_err(err)?
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| PodNetError::Unsupported {
                vmi: vmi.clone(),
                why: format!("the pod's eth0 in namespace {netns} has no IPv4 address"),
            })?;
        let mut net = self.plan(uid, namespace, name, interfaces)?;
        net.netns = netns.to_string();
        net.node_veth = String::new();
        net.pod4 = pod4;
        net.pod6 = None;
        self.write_record(&net)?;
        let made = self.create_in_pod(&net).and_then(|()| self.start_dhcp(&net));
        self.keep_or_undo(net, made, || {
            let _ = std::fs::remove_file(self.record_path(uid));
        })
    }

    /// Records `net` as running with its DHCP servers when `made`, else runs `undo`.
    fn keep_or_undo(
        &self,
        net: VmiNet,
        made: Result<Vec<DhcpServer>, PodNetError>,
        undo: impl FnOnce(),
    ) -> Result<VmiNet, PodNetError> {
        match made {
            Ok(servers) => {
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(net.uid.clone(), (net.clone(), servers));
                Ok(net)
            }
            Err(e) => {
                undo();
                Err(e)
            }
        }
    }

    fn remove_record_and_netns(&self, uid: &str) {
        let path = self.record_path(uid);
        let rec: Option<VmiNet> = std::fs::read(&path).ok().and_then(|t| serde_json::from_slice(&t).ok());
        let ns =
            rec.as_ref().map_or_else(|| format!("{}{}", self.cfg.prefix, short(uid)), |r| r.netns.clone());
        self.destroy(&ns, rec.as_ref());
        let _ = std::fs::remove_file(&path);
    }

    fn destroy(&self, ns: &str, rec: Option<&VmiNet>) {
        if let Err(e) = netns::delete(ns) {
            log::warn!("removing network namespace {ns}: {e}");
        }
        // A veth goes with its peer's namespace; a node end left by a crash between the two steps
        // of `create` is removed here.
        if let Some(r) = rec {
            let node = self.cfg.node_netns.as_deref();
            let ends = std::iter::once(r.node_veth.clone())
                .chain(r.interfaces.iter().filter_map(|i| i.node_veth.clone()));
            for v in ends.filter(|v| !v.is_empty()) {
                if netns::ip(node, &["link", "show", "dev", &v]).is_ok() {
                    let _ = netns::ip(node, &["link", "del", "dev", &v]);
                }
            }
        }
    }

    /// Removes VMI `uid`'s network: DHCP servers, namespace (taps, bridges, rules), veths, record.
    pub fn teardown(&self, uid: &str) {
        let _one = self.setup_lock.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
        drop(entry); // stops the DHCP servers
        self.remove_record_and_netns(uid);
    }

    /// After a node restart: the networks of VMIs `alive` says still run are taken back (DHCP
    /// servers restarted), the others removed; namespaces with the manager's prefix that no record
    /// names are removed too. Returns the uids removed.
    pub fn sweep(&self, alive: &dyn Fn(&VmiNet) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        let records = self.records();
        let known: BTreeSet<String> = records.iter().map(|r| r.netns.clone()).collect();
        for r in records {
            if self.get(&r.uid).is_some() {
                continue;
            }
            if alive(&r) && netns::exists(&r.netns) {
                match self.start_dhcp(&r) {
                    Ok(servers) => {
                        self.running
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(r.uid.clone(), (r, servers));
                    }
                    Err(e) => log::warn!("taking back the network of VMI {}/{}: {e}", r.namespace, r.name),
                }
                continue;
            }
            let _one = self.setup_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.remove_record_and_netns(&r.uid);
            removed.push(r.uid);
        }
        if let Ok(dir) = std::fs::read_dir(netns::NETNS_DIR) {
            for e in dir.filter_map(Result::ok) {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&self.cfg.prefix)
                    && n.len() == self.cfg.prefix.len() + 10
                    && !known.contains(&n)
                {
                    let _ = netns::delete(&n);
                }
            }
        }
        removed
    }

    /// The running VMIs' networks.
    pub fn list(&self) -> Vec<VmiNet> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.values().map(|(n, _)| n.clone()).collect()
    }

    fn start_dhcp(&self, net: &VmiNet) -> Result<Vec<DhcpServer>, PodNetError> {
        let vmi = format!("{}/{}", net.namespace, net.name);
        let mut servers = Vec::new();
        for i in &net.interfaces {
            let Some((ip, prefix)) = i.guest4 else { continue };
            let (server_ip, router) = match &i.request.kind {
                IfaceKind::Masquerade { cidr4, .. } => {
                    let gw = masquerade_addrs4(*cidr4).0;
                    (gw, Some(gw))
                }
                IfaceKind::PodBridge => (DHCP_LINK_LOCAL, Some(self.pod_gateway4())),
                IfaceKind::Secondary(s) => (DHCP_LINK_LOCAL, s.range.as_ref().and_then(|r| r.gateway)),
            };
            let secondary = matches!(i.request.kind, IfaceKind::Secondary(_));
            let cfg = DhcpConfig {
                server_ip,
                client_mac: i.request.mac,
                client_ip: ip,
                prefix_len: prefix,
                router,
                dns: if secondary { Vec::new() } else { self.cfg.dns.clone() },
                search: if secondary { Vec::new() } else { self.cfg.search.clone() },
                mtu: Some(self.cfg.mtu),
                hostname: Some(net.name.clone()),
                lease_secs: 86400,
            };
            let s = DhcpServer::start(&net.netns_path(), &i.bridge, cfg)
                .map_err(|source| PodNetError::Dhcp { vmi: vmi.clone(), source })?;
            servers.push(s);
            // Masquerade's IPv6 side, as KubeVirt's: router advertisements name the gateway and
            // send the guest to DHCPv6 for fd10:0:2::2.
            if let (IfaceKind::Masquerade { cidr6, .. }, Some(ip6)) = (&i.request.kind, i.guest6) {
                // The server's DUID: stable per interface, never the guest's own.
                let mut gw = i.request.mac;
                gw.0[5] ^= 0xff;
                let dhcp = Dhcp6Config {
                    server_duid: duid_ll(gw),
                    client_mac: i.request.mac,
                    client_ip: ip6,
                    dns: Vec::new(),
                    search: self.cfg.search.clone(),
                    lease_secs: 86400,
                };
                let ra = RaConfig {
                    prefix: cidr6.network(),
                    prefix_len: cidr6.prefix_len(),
                    mtu: Some(self.cfg.mtu),
                    router_lifetime: 1800,
                };
                let s = DhcpServer::start_v6(&net.netns_path(), &i.bridge, dhcp, ra)
                    .map_err(|source| PodNetError::Dhcp { vmi: vmi.clone(), source })?;
                servers.push(s);
            }
        }
        Ok(servers)
    }

    fn pod_gateway4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.pod_cidr4.network()) + 1)
    }

    fn pod_gateway6(&self) -> Option<Ipv6Addr> {
        self.cfg.pod_cidr6.map(|c| Ipv6Addr::from(u128::from(c.network()) + 1))
    }

    /// The rules of `net`'s masquerade interfaces (what `create` applies).
    pub fn ruleset(&self, net: &VmiNet) -> Option<String> {
        let m: Vec<Masquerade> = net
            .interfaces
            .iter()
            .filter_map(|i| match &i.request.kind {
                IfaceKind::Masquerade { cidr4, cidr6, .. } => Some(Masquerade {
                    pod_iface: "eth0".into(),
                    bridge: i.bridge.clone(),
                    gateway4: masquerade_addrs4(*cidr4).0,
                    guest4: masquerade_addrs4(*cidr4).1,
                    gateway6: Some(masquerade_addrs6(*cidr6).0),
                    guest6: Some(masquerade_addrs6(*cidr6).1),
                    ports: i.request.kind.forwarded(),
                }),
                _ => None,
            })
            .collect();
        (!m.is_empty()).then(|| nft::render(&m))
    }
}

impl EndpointLookup for NetworkManager {
    fn endpoint(&self, namespace: &str, name: &str) -> Option<VmiEndpoint> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.values().find(|(n, _)| n.namespace == namespace && n.name == name).map(|(n, _)| n.endpoint())
    }
}

fn host(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_resolv_conf_is_read() {
        assert_eq!(bridge_name("default", 0), "k6t-default");
        assert_eq!(bridge_name("a-very-long-network", 3), "k6t-net3");
        assert_eq!(short("uid-1").len(), 10);
        let (dns, search) = resolv_conf("nameserver 127.0.0.53\nnameserver 10.96.0.10\nsearch a.b c\n");
        assert_eq!(dns, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(search, vec!["a.b".to_string(), "c".to_string()]);
    }
}
