//! The guest agent's report in a VMI's status, as KubeVirt shows it: the `AgentConnected`
//! condition, `status.guestOSInfo`, and the guest's view of each interface (`interfaceName`, its
//! addresses, `infoSource: domain, guest-agent` for an interface of the spec, `guest-agent` for
//! one only the guest knows). Matched by MAC address.

use crate::agent::AgentReport;
use crate::model::{NetworkInterfaceStatus, VirtualMachineInstance};

use super::{condition, remove_condition, set_condition};

/// The condition KubeVirt sets while the agent answers.
pub const AGENT_CONNECTED: &str = "AgentConnected";
/// The condition saying whether the `qemuGuestAgent` access credentials are in the guest.
pub const ACCESS_CREDENTIALS_SYNCHRONIZED: &str = "AccessCredentialsSynchronized";
const DOMAIN: &str = "domain";
const DOMAIN_AND_AGENT: &str = "domain, guest-agent";
const AGENT: &str = "guest-agent";

/// Puts `report` (None: the machine has no agent) into `vmi`'s status; true when that changed it.
pub(super) fn apply(vmi: &mut VirtualMachineInstance, report: Option<&AgentReport>) -> bool {
    let spec_macs: Vec<(String, String)> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .filter_map(|i| i.mac_address.as_ref().map(|m| (i.name.clone(), m.to_ascii_lowercase())))
        .collect();
    // Masquerade interfaces keep the pod's addresses the node reported (as KubeVirt's handler: the
    // guest's own 10.0.2.2 is not reachable from outside its pod).
    let masquerade: Vec<String> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .filter(|i| i.masquerade.is_some())
        .map(|i| i.name.clone())
        .collect();
    let s = vmi.status.get_or_insert_with(Default::default);
    let before = (s.conditions.clone(), s.guest_os_info.clone(), s.interfaces.clone());
    match report {
        Some(r) if r.connected => {
            set_condition(&mut s.conditions, condition(AGENT_CONNECTED, true, None, None));
            if r.os.is_some() {
                s.guest_os_info = r.os.clone();
            }
            merge_interfaces(&mut s.interfaces, &spec_macs, &masquerade, r);
            if let Some(c) = &r.access_credentials {
                let reason = if c.synchronized {
                    "AccessCredentialsSyncSuccess"
                } else {
                    "AccessCredentialsSyncFailed"
                };
                set_condition(
                    &mut s.conditions,
                    condition(
                        ACCESS_CREDENTIALS_SYNCHRONIZED,
                        c.synchronized,
                        Some(reason),
                        Some(c.message.clone()),
                    ),
                );
            }
        }
        _ => {
            // The agent went away: what only it said goes; the spec's interfaces stay.
            remove_condition(&mut s.conditions, AGENT_CONNECTED);
            s.interfaces.retain(|i| i.info_source.as_deref() != Some(AGENT));
            for i in &mut s.interfaces {
                if i.info_source.as_deref() == Some(DOMAIN_AND_AGENT) {
                    i.info_source = Some(DOMAIN.into());
                }
            }
        }
    }
    before != (s.conditions.clone(), s.guest_os_info.clone(), s.interfaces.clone())
}

fn merge_interfaces(
    list: &mut Vec<NetworkInterfaceStatus>,
    spec_macs: &[(String, String)],
    masquerade: &[String],
    r: &AgentReport,
) {
    // Entries that only the agent gave last time are rebuilt from this report.
    list.retain(|i| i.info_source.as_deref() != Some(AGENT));
    for g in &r.interfaces {
        let mac = g.mac.as_deref().map(str::to_ascii_lowercase);
        let same_mac = |i: &NetworkInterfaceStatus| {
            mac.is_some() && i.mac.as_deref().map(str::to_ascii_lowercase) == mac
        };
        let idx = match list.iter().position(same_mac) {
            Some(i) => Some(i),
            None => spec_macs.iter().find(|(_, m)| Some(m) == mac.as_ref()).map(|(name, m)| {
                list.push(NetworkInterfaceStatus {
                    name: Some(name.clone()),
                    mac: Some(m.clone()),
                    ..Default::default()
                });
                list.len() - 1
            }),
        };
        let (entry, source) = match idx {
            Some(i) => (&mut list[i], DOMAIN_AND_AGENT),
            None => {
                list.push(NetworkInterfaceStatus { mac: mac.clone(), ..Default::default() });
                let n = list.len() - 1;
                (&mut list[n], AGENT)
            }
        };
        entry.interface_name = Some(g.interface_name.clone());
        let pod_addresses =
            entry.name.as_ref().is_some_and(|n| masquerade.contains(n)) && entry.ip_address.is_some();
        if !pod_addresses {
            entry.ip_address = g.ip_addresses.first().cloned();
            entry.ip_addresses = g.ip_addresses.clone();
        }
        entry.info_source = Some(source.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::InterfaceInfo;
    use crate::api::ConditionStatus;

    fn vmi() -> VirtualMachineInstance {
        let y = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: a, namespace: default}
spec:
  domain:
    devices:
      interfaces: [{name: default, masquerade: {}, macAddress: "52:54:00:AA:BB:CC"}]
  networks: [{name: default, pod: {}}]
"#;
        let docs = crate::model::load_yaml(y).unwrap();
        match docs.into_iter().next().unwrap().object {
            crate::model::KubeVirtObject::VirtualMachineInstance(v) => *v,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn the_report_becomes_the_condition_os_info_and_interfaces() {
        let mut v = vmi();
        let os = crate::model::GuestOsInfo { id: Some("debian".into()), ..Default::default() };
        let r = AgentReport {
            connected: true,
            os: Some(os.clone()),
            interfaces: vec![
                InterfaceInfo {
                    interface_name: "enp1s0".into(),
                    mac: Some("52:54:00:aa:bb:cc".into()),
                    ip_addresses: vec!["10.0.2.2".into(), "fe80::1".into()],
                },
                InterfaceInfo {
                    interface_name: "docker0".into(),
                    mac: Some("02:42:00:00:00:01".into()),
                    ip_addresses: vec![],
                },
            ],
            ..Default::default()
        };
        assert!(apply(&mut v, Some(&r)));
        let s = v.status.as_ref().unwrap();
        let c = s.conditions.iter().find(|c| c.type_ == AGENT_CONNECTED).unwrap();
        assert_eq!(c.status, ConditionStatus::True);
        assert_eq!(s.guest_os_info.as_ref(), Some(&os));
        assert_eq!(s.interfaces.len(), 2, "{:?}", s.interfaces);
        let d = &s.interfaces[0];
        assert_eq!(d.name.as_deref(), Some("default"));
        assert_eq!(d.interface_name.as_deref(), Some("enp1s0"));
        assert_eq!(d.ip_address.as_deref(), Some("10.0.2.2"));
        assert_eq!(d.info_source.as_deref(), Some("domain, guest-agent"));
        assert_eq!(s.interfaces[1].info_source.as_deref(), Some("guest-agent"));
        assert_eq!(s.interfaces[1].name, None);
        // The same report again changes nothing (no write).
        assert!(!apply(&mut v, Some(&r)));
        // The agent goes: no condition, no agent-only interface, the spec's stays as the domain's.
        assert!(apply(&mut v, Some(&AgentReport::default())));
        let s = v.status.as_ref().unwrap();
        assert!(s.conditions.iter().all(|c| c.type_ != AGENT_CONNECTED));
        assert_eq!(s.interfaces.len(), 1);
        assert_eq!(s.interfaces[0].info_source.as_deref(), Some("domain"));
        assert_eq!(s.guest_os_info.as_ref(), Some(&os), "the last OS info stays");
        assert!(!apply(&mut v, None));
    }

    #[test]
    fn a_masquerade_interface_keeps_the_pods_addresses_the_node_reported() {
        let mut v = vmi();
        v.status.get_or_insert_with(Default::default).interfaces = vec![NetworkInterfaceStatus {
            name: Some("default".into()),
            mac: Some("52:54:00:aa:bb:cc".into()),
            ip_address: Some("10.244.0.7".into()),
            ip_addresses: vec!["10.244.0.7".into()],
            info_source: Some(DOMAIN.into()),
            ..Default::default()
        }];
        let r = AgentReport {
            connected: true,
            interfaces: vec![InterfaceInfo {
                interface_name: "enp1s0".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
                ip_addresses: vec!["10.0.2.2".into()],
            }],
            ..Default::default()
        };
        assert!(apply(&mut v, Some(&r)));
        let d = &v.status.as_ref().unwrap().interfaces[0];
        assert_eq!(
            (d.ip_address.as_deref(), &d.ip_addresses[..]),
            (Some("10.244.0.7"), &["10.244.0.7".to_string()][..])
        );
        assert_eq!(
            d.interface_name.as_deref(),
            Some("enp1s0"),
            "the guest's name for it still comes from the agent"
        );
        assert_eq!(d.info_source.as_deref(), Some("domain, guest-agent"));
    }

    #[test]
    fn the_agents_key_writes_become_access_credentials_synchronized() {
        let mut v = vmi();
        let sync = |ok: bool, message: &str| AgentReport {
            connected: true,
            access_credentials: Some(crate::agent::CredentialsSync {
                synchronized: ok,
                message: message.into(),
            }),
            ..Default::default()
        };
        let cond = |v: &VirtualMachineInstance| {
            v.status
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .find(|c| c.type_ == ACCESS_CREDENTIALS_SYNCHRONIZED)
                .cloned()
        };
        assert!(apply(&mut v, Some(&sync(false, "user debian: guest-ssh-add-authorized-keys refused"))));
        let c = cond(&v).unwrap();
        assert_eq!(
            (c.status, c.reason.as_deref()),
            (ConditionStatus::False, Some("AccessCredentialsSyncFailed"))
        );
        assert!(apply(&mut v, Some(&sync(true, "SSH keys of debian written by the guest agent"))));
        let c = cond(&v).unwrap();
        assert_eq!(
            (c.status, c.reason.as_deref()),
            (ConditionStatus::True, Some("AccessCredentialsSyncSuccess"))
        );
        assert!(c.message.as_deref().unwrap_or("").contains("debian"));
        // A VMI without such credentials never gets the condition.
        let mut w = vmi();
        apply(&mut w, Some(&AgentReport { connected: true, ..Default::default() }));
        assert!(cond(&w).is_none());
    }
}
