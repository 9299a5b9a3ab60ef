//! The pod network of VMIs on a Kubernetes node (KubeVirt's masquerade binding in the launcher
//! pod). The node's network plugin (CNI) made the launcher pod's network namespace and its `eth0`
//! with the pod's address; the node agent gives the guest its side of it, in that namespace, with
//! the local node's own code (`virt_net::pod::NetworkManager::adopt`): a bridge `k6t-<net>`, the
//! tap the launcher opens, KubeVirt's nftables rules (the guest's traffic leaves as the pod's
//! address; traffic to the pod reaches the guest) and the DHCP servers handing the guest
//! 10.0.2.2 (and fd10:0:2::2 with router advertisements).
//!
//! Finding the namespace: the launcher pod's entry script writes its namespace's identity
//! (`readlink /proc/self/ns/net`, e.g. `net:[4026532612]`) into the VMI's run directory (a
//! hostPath) before it waits for its spec; the agent finds a process of the node in that
//! namespace and names it (`ip netns attach`), so the name-based tools work on it. The MACs come
//! from the agent's pool (`<state>/net/macs.json`) unless the spec gives one.

use std::path::{Path, PathBuf};

use virt_core::model::VirtualMachineInstance;
use virt_net::macpool::MacPool;
use virt_net::netns;
use virt_net::pod::{NetworkManager, NodeNetConfig, VmiNet};
use virt_net::spec::{NadError, NadLookup, SecondaryNetwork};

use crate::node::network::{interface_requests, uid_of, NodeNetworkError, VmiNetworkError};

/// The file of the run directory naming the launcher pod's network namespace.
pub const NETNS_FILE: &str = "netns";

/// Why a VMI's pod network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// The launcher pod has not written its namespace yet (it is starting): try again.
    #[error("the launcher pod has not named its network namespace yet ({})", file.display())]
    NotReady {
        /// The file it writes.
        file: PathBuf,
    },
    /// No process of the VMI's launcher pod is in the namespace the run directory names (the pod
    /// is gone, or the file names a namespace that is not the pod's: the node's, another pod's).
    #[error(
        "no process of the VMI's launcher pod (VIRT_VMI_UID={uid}) is in network namespace {id} (named by {}), \
         or it is this agent's own",
        file.display()
    )]
    NoProcess {
        /// The VMI's uid, in its launcher's environment.
        uid: String,
        /// What the pod wrote.
        id: String,
        /// Where.
        file: PathBuf,
    },
    /// The namespace could not be named.
    #[error("naming the launcher pod's network namespace {name}: {source}")]
    Attach {
        /// The name.
        name: String,
        /// What `ip netns attach` said.
        source: netns::NetnsError,
    },
    /// The interfaces (a field of the spec, the MAC pool, the bridge, taps, rules, DHCP).
    #[error(transparent)]
    Vmi(#[from] VmiNetworkError),
}

/// Secondary networks on a Kubernetes node: not read (no Multus here).
struct NoSecondaryNetworks;

impl NadLookup for NoSecondaryNetworks {
    fn network(&self, namespace: &str, name: &str) -> Result<Option<SecondaryNetwork>, NadError> {
        Err(NadError::Read(format!(
            "{namespace}/{name}: secondary (multus) networks are not supported on a Kubernetes node yet"
        )))
    }
}

/// The VMIs' pod networks of one node agent.
pub struct PodNetworks {
    manager: NetworkManager,
    macs: MacPool,
}

impl PodNetworks {
    /// Opens the networks' records and the MAC pool under `<state_dir>/net/`.
    pub fn open(state_dir: &Path) -> Result<Self, NodeNetworkError> {
        let mac_file = state_dir.join("net").join("macs.json");
        let (start, end) = virt_net::macpool::DEFAULT_RANGE;
        let macs = MacPool::open(start, end, Some(&mac_file))
            .map_err(|source| NodeNetworkError::MacPool { file: mac_file.clone(), source })?;
        let dir = state_dir.join("net").join("pods");
        let mut cfg = NodeNetConfig::new(dir.clone());
        cfg.prefix = "virt-pod-".into();
        let manager = NetworkManager::for_pods(cfg)
            .map_err(|source| NodeNetworkError::Manager { dir, source: Box::new(source) })?;
        Ok(Self { manager, macs })
    }

    /// Sets up `vmi`'s interfaces in its launcher pod's namespace (the pod wrote it into
    /// `run_dir`); `Ok(None)` without interfaces. Idempotent: a network already made is returned
    /// (its DHCP servers started again after an agent restart).
    pub fn setup(
        &self,
        vmi: &VirtualMachineInstance,
        run_dir: &Path,
    ) -> Result<Option<VmiNet>, PodNetworkError> {
        let reqs = interface_requests(vmi, &self.macs, &NoSecondaryNetworks)?;
        if reqs.is_empty() {
            return Ok(None);
        }
        let uid = uid_of(vmi);
        if let Some(net) = self.manager.get(&uid) {
            return Ok(Some(net));
        }
        let name = format!(
            "virt-pod-{}",
            uid.chars().filter(char::is_ascii_alphanumeric).take(10).collect::<String>()
        );
        if !netns::exists(&name) {
            let file = run_dir.join(NETNS_FILE);
            let id = std::fs::read_to_string(&file)
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| s.starts_with("net:["))
                .ok_or_else(|| PodNetworkError::NotReady { file: file.clone() })?;
            let pid = pod_process_in(&id, &uid).ok_or_else(|| PodNetworkError::NoProcess {
                uid: uid.clone(),
                id: id.clone(),
                file,
            })?;
            netns::ip(None, &["netns", "attach", &name, &pid.to_string()])
                .map_err(|source| PodNetworkError::Attach { name: name.clone(), source })?;
        }
        let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
        let vmi_name = vmi.metadata.name.as_deref().unwrap_or_default();
        self.manager
            .adopt(&uid, ns, vmi_name, &name, &reqs)
            .map(Some)
            .map_err(|e| PodNetworkError::Vmi(VmiNetworkError::Setup(Box::new(e))))
    }

    /// What `vmi` got, while its network exists.
    pub fn get(&self, vmi: &VirtualMachineInstance) -> Option<VmiNet> {
        self.manager.get(&uid_of(vmi))
    }

    /// Stops `vmi`'s DHCP servers and drops the namespace's name and the record (the namespace
    /// goes with the pod); its MACs go back to the pool unless a VM owns it (the next VMI of the
    /// VM keeps them).
    pub fn teardown(&self, vmi: &VirtualMachineInstance) {
        self.manager.teardown(&uid_of(vmi));
        if !vmi.metadata.owner_references.iter().any(|o| o.kind == "VirtualMachine") {
            let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
            let name = vmi.metadata.name.as_deref().unwrap_or_default();
            if let Err(e) = self.macs.release(&format!("{ns}/{name}/")) {
                log::warn!("MAC pool: {e}");
            }
        }
    }
}

/// A process of VMI `uid`'s launcher pod (`VIRT_VMI_UID=uid` in its environment, as the pod spec
/// sets it) in network namespace `id` (`net:[inode]`). The run directory is the pod's to write, so
/// the namespace it names is trusted only with such a process in it, and never when it is this
/// agent's own (the node's): the guest's bridge, tap and rules go into the pod's namespace only.
fn pod_process_in(id: &str, uid: &str) -> Option<u32> {
    let own = std::fs::read_link("/proc/self/ns/net").ok()?;
    if own.to_str() == Some(id) {
        return None;
    }
    let wanted = format!("VIRT_VMI_UID={uid}");
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let ns = std::fs::read_link(e.path().join("ns/net")).ok()?;
        if ns.to_str()? != id {
            return None;
        }
        let env = std::fs::read(e.path().join("environ")).ok()?;
        env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (`unshare -n`, reading another process's environment).
    #[test]
    fn only_a_process_of_the_vmis_pod_in_another_namespace_is_taken() {
        // A "pod": a process in a namespace of its own with the VMI's uid in its environment.
        let mut pod = std::process::Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .env("VIRT_VMI_UID", "uid-1")
            .spawn()
            .unwrap();
        let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let mut id = None;
        for _ in 0..100 {
            id = ns(pod.id()).filter(|n| *n != own);
            if id.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let id = id.expect("unshare made a namespace").to_str().unwrap().to_string();
        assert_eq!(pod_process_in(&id, "uid-1"), Some(pod.id()));
        assert_eq!(pod_process_in(&id, "uid-2"), None, "another VMI's pod");
        // The node's own namespace is never taken, whatever the file says.
        let own = own.to_str().unwrap().to_string();
        assert_eq!(pod_process_in(&own, "uid-1"), None);
        assert_eq!(pod_process_in("net:[1]", "uid-1"), None);
        let _ = pod.kill();
        let _ = pod.wait();
    }
}
