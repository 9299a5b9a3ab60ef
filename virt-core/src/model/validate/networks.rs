//! Validation of a VMI's networks and interfaces (models, MAC and PCI addresses, bindings).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{child, ProblemKind, Validation};

use crate::model::network::Binding;
use crate::model::vmi::VirtualMachineInstanceSpec;

use super::{err, invalid, is_mac, is_pci_address, INTERFACE_MODELS};

pub(super) fn validate_networks(v: &mut Validation, spec: &VirtualMachineInstanceSpec, path: &str) {
    let np = child(path, "networks");
    let mut networks: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    let mut pod_networks = 0;
    for (i, n) in spec.networks.iter().enumerate() {
        let p = format!("{np}[{i}]");
        if n.name.is_empty() {
            err(v, child(&p, "name"), ProblemKind::Required, "a name is required");
        } else if networks.insert(n.name.as_str(), (i, n.multus.is_none())).is_some() {
            invalid(v, child(&p, "name"), format!("{:?} is used twice", n.name));
        }
        match (&n.pod, &n.multus) {
            (Some(_), Some(_)) => invalid(v, p.clone(), "set one of pod and multus, not both"),
            (_, Some(m)) if m.network_name.is_empty() => err(
                v,
                child(&child(&p, "multus"), "networkName"),
                ProblemKind::Required,
                "a network name is required",
            ),
            (_, Some(_)) => {}
            _ => pod_networks += 1,
        }
    }
    if pod_networks > 1 {
        invalid(v, np.clone(), "more than one pod network: there is one pod network");
    }
    let ifp = child(&child(&child(path, "domain"), "devices"), "interfaces");
    let mut seen = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let p = format!("{ifp}[{i}]");
        if iface.name.is_empty() {
            err(v, child(&p, "name"), ProblemKind::Required, "a name is required");
            continue;
        }
        if !seen.insert(iface.name.as_str()) {
            invalid(v, child(&p, "name"), format!("{:?} is used twice", iface.name));
        }
        let on_pod = match networks.get(iface.name.as_str()) {
            Some((_, pod)) => {
                used.insert(iface.name.as_str());
                Some(*pod)
            }
            None => {
                invalid(
                    v,
                    child(&p, "name"),
                    format!(
                        "no network named {:?}: every interface needs a network of the same name",
                        iface.name
                    ),
                );
                None
            }
        };
        let bindings = iface.bindings();
        if bindings.len() > 1 {
            let list: Vec<&str> = bindings.iter().map(|b| b.field()).collect();
            invalid(v, p.clone(), format!("set at most one binding, found {}", list.join(", ")));
        }
        if bindings.contains(&Binding::Masquerade) && on_pod == Some(false) {
            invalid(v, child(&p, "masquerade"), "masquerade works only on the pod network");
        }
        if bindings.contains(&Binding::Sriov) && on_pod == Some(true) {
            invalid(v, child(&p, "sriov"), "SR-IOV needs a Multus network, not the pod network");
        }
        if let Some(m) = iface.model.as_deref() {
            if !INTERFACE_MODELS.contains(&m) {
                invalid(
                    v,
                    child(&p, "model"),
                    format!("{m:?}: expected one of {}", INTERFACE_MODELS.join(", ")),
                );
            }
        }
        if let Some(mac) = iface.mac_address.as_deref() {
            if !is_mac(mac) {
                invalid(
                    v,
                    child(&p, "macAddress"),
                    format!("{mac:?} is not a MAC address like de:ad:00:00:be:af"),
                );
            }
        }
        if let Some(addr) = iface.pci_address.as_deref() {
            if !is_pci_address(addr) {
                invalid(
                    v,
                    child(&p, "pciAddress"),
                    format!("{addr:?} is not a PCI address like 0000:81:01.1"),
                );
            }
        }
        if let Some(n) = iface.acpi_index {
            if !(1..=16383).contains(&n) {
                invalid(v, child(&p, "acpiIndex"), format!("{n}: must be 1 to 16383"));
            }
        }
        if !iface.ports.is_empty()
            && !bindings.iter().any(|b| {
                matches!(b, Binding::Masquerade | Binding::Slirp | Binding::Passt | Binding::PasstBinding)
            })
        {
            invalid(v, child(&p, "ports"), "port forwarding needs the masquerade binding");
        }
        for (j, port) in iface.ports.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if !(1..=65535).contains(&port.port) {
                invalid(v, child(&pp, "port"), format!("{}: must be 1 to 65535", port.port));
            }
            if let Some(proto) = port.protocol.as_deref() {
                if !matches!(proto, "TCP" | "UDP") {
                    invalid(v, child(&pp, "protocol"), format!("{proto:?}: expected TCP or UDP"));
                }
            }
        }
    }
    for (name, (i, _)) in &networks {
        if !used.contains(name) {
            invalid(
                v,
                format!("{np}[{i}].name"),
                format!(
                    "no interface uses network {name:?}: every network needs an interface of the same name"
                ),
            );
        }
    }
}
