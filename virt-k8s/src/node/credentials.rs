//! Keeps the `qemuGuestAgent` access credentials of running VMIs in step with their Secrets, as
//! KubeVirt's handler does: a thread follows the store's change log, and when a Secret changes, each
//! running VMI of its namespace whose credentials name it gets the keys read again
//! (`VmiVolumes::agent_credentials`) and handed to its launcher's agent (`Vmis::set_guest_credentials`),
//! which writes the difference at its next poll. A change log that no longer holds the changes
//! since the last look (410) makes every such VMI get its keys again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use virt_core::lifecycle::{Lifecycle, WatchEvent};
use virt_core::model::credentials::{access_credentials, AccessCredential, Propagation};
use virt_core::model::{VirtualMachineInstance, VmiPhase};

use super::runtime::LauncherRuntime;

const SECRET: &str = "Secret";

/// The Secrets `vmi` takes keys from through its guest agent.
fn agent_secrets(vmi: &VirtualMachineInstance) -> Vec<String> {
    access_credentials(&vmi.spec)
        .into_iter()
        .filter_map(|c| match c {
            AccessCredential::SshPublicKey(k)
                if matches!(k.propagation, Propagation::QemuGuestAgent { .. }) =>
            {
                Some(k.secret_name)
            }
            AccessCredential::UserPassword { secret_name } => Some(secret_name),
            _ => None,
        })
        .collect()
}

fn running(vmi: &VirtualMachineInstance) -> bool {
    matches!(vmi.status.as_ref().and_then(|s| s.phase.as_ref()), Some(VmiPhase::Running))
}

/// Hands the keys of the running VMIs in `namespace` (all namespaces: `None`) that use `secret`
/// (any Secret: `None`) to their agents; returns how many VMIs were updated.
pub fn push(
    lc: &Lifecycle,
    runtime: &LauncherRuntime,
    namespace: Option<&str>,
    secret: Option<&str>,
) -> usize {
    let mut n = 0;
    for vmi in lc.vmis().list(namespace).into_iter().filter(running) {
        let uses = agent_secrets(&vmi);
        if uses.is_empty() || secret.is_some_and(|s| !uses.iter().any(|u| u == s)) {
            continue;
        }
        let (Some(ns), Some(name)) = (vmi.metadata.namespace.as_deref(), vmi.metadata.name.as_deref()) else {
            continue;
        };
        match runtime.volumes().agent_credentials(&vmi) {
            Ok(credentials) => match lc.vmis().set_guest_credentials(ns, name, credentials) {
                Ok(()) => {
                    log::info!("VMI {ns}/{name}: access credentials changed; its guest agent gets them");
                    n += 1;
                }
                Err(e) => log::warn!("VMI {ns}/{name}: {e}"),
            },
            Err(e) => log::warn!("VMI {ns}/{name}: access credentials not updated: {e}"),
        }
    }
    n
}

/// Follows Secret changes until `stop` (the node's credentials thread).
pub fn run(lc: &Lifecycle, runtime: &LauncherRuntime, stop: &AtomicBool) {
    let log = lc.changes().clone();
    let mut from = log.last();
    while !stop.load(Ordering::Relaxed) {
        let mut w = match log.watch(from) {
            Ok(w) => w,
            Err(e) => {
                log::info!("access credentials: {e}; updating every VMI's keys");
                from = log.last();
                push(lc, runtime, None, None);
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            match w.next(Duration::from_millis(500)) {
                Ok(WatchEvent::Change(c)) => {
                    from = c.resource_version;
                    if c.kind == SECRET {
                        push(lc, runtime, Some(&c.key.namespace), Some(&c.key.name));
                    }
                }
                Ok(WatchEvent::Bookmark(rv)) => from = from.max(rv),
                Err(_) => break,
            }
        }
    }
}
