//! NICs on QEMU's command line: a tap netdev (with vhost-net where the host offers it) and the
//! device model KubeVirt names, with the spec's MAC.

use super::cmdline::{check_id, escape, unsupported, ConfigError};
use crate::machine::accel::Accelerator;
use crate::machine::{InterfaceBackend, MachineSpec, NicModel};

/// QEMU's device for `model`.
pub fn qemu_device(model: NicModel) -> &'static str {
    match model {
        NicModel::Virtio => "virtio-net-pci",
        NicModel::E1000 => "e1000",
        NicModel::E1000e => "e1000e",
        NicModel::Igb => "igb",
        NicModel::Rtl8139 => "rtl8139",
        NicModel::Ne2kPci => "ne2k_pci",
        NicModel::Pcnet => "pcnet",
    }
}

/// `-netdev`/`-device` pairs for every interface. vhost-net is asked for on virtio NICs when
/// `vhost_net` (the host's `/dev/vhost-net` opens) and the guest runs on KVM.
pub fn args(spec: &MachineSpec, accel: Accelerator, vhost_net: bool) -> Result<Vec<String>, ConfigError> {
    let mut a = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, nic) in spec.interfaces.iter().enumerate() {
        check_id("interface name", &nic.name)?;
        if !names.insert(nic.name.as_str()) {
            return Err(unsupported("interface name", &nic.name, "used twice"));
        }
        let vhost = vhost_net
            && accel == Accelerator::Kvm
            && nic.model == NicModel::Virtio
            && nic.vhost != crate::net::VhostMode::Off;
        let netdev = match &nic.backend {
            InterfaceBackend::None => None,
            InterfaceBackend::Tap { name } => {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ',', ' ', ':']) {
                    return Err(unsupported(
                        format!("interface {} tap", nic.name),
                        name,
                        "a Linux interface name of 1-15 bytes",
                    ));
                }
                Some(format!("tap,id=hostnet{i},ifname={},script=no,downscript=no", escape(name)))
            }
            InterfaceBackend::TapFd { fd } => {
                if *fd < 3 {
                    return Err(unsupported(
                        format!("interface {} tap fd", nic.name),
                        fd,
                        "not a tap descriptor",
                    ));
                }
                Some(format!("tap,id=hostnet{i},fd={fd}"))
            }
        };
        let mut dev =
            vec![qemu_device(nic.model).to_string(), format!("id=net{i}"), format!("mac={}", nic.mac)];
        if let Some(mut n) = netdev {
            if vhost {
                n.push_str(",vhost=on");
            }
            a.extend(["-netdev".to_string(), n]);
            dev.push(format!("netdev=hostnet{i}"));
        }
        if let Some(mtu) = nic.mtu {
            if nic.model != NicModel::Virtio {
                return Err(unsupported(
                    format!("interface {} mtu", nic.name),
                    mtu,
                    "only virtio NICs take an MTU",
                ));
            }
            dev.push(format!("host_mtu={mtu}"));
        }
        match nic.boot_order {
            Some(b) if b > 0 => dev.push(format!("bootindex={b}")),
            Some(b) => {
                return Err(unsupported(format!("interface {} bootOrder", nic.name), b, "must be at least 1"))
            }
            // No network boot: no option ROM (as KubeVirt does), which also spares its load time.
            None => dev.push("romfile=".into()),
        }
        a.extend(["-device".to_string(), dev.join(",")]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::qemu::cmdline::tests::spec;
    use crate::machine::InterfaceSpec;
    use crate::net::MacAddr;

    fn nic(name: &str, model: NicModel, backend: InterfaceBackend) -> InterfaceSpec {
        InterfaceSpec {
            name: name.into(),
            mac: MacAddr::derived(name),
            model,
            backend,
            mtu: None,
            boot_order: None,
            vhost: Default::default(),
        }
    }

    #[test]
    fn taps_models_macs_and_vhost() {
        let mut s = spec();
        s.interfaces = vec![
            nic("default", NicModel::Virtio, InterfaceBackend::Tap { name: "tap0".into() }),
            nic("second", NicModel::E1000e, InterfaceBackend::TapFd { fd: 9 }),
            nic("third", NicModel::Rtl8139, InterfaceBackend::None),
        ];
        s.interfaces[0].mtu = Some(9000);
        s.interfaces[1].boot_order = Some(2);
        let m0 = MacAddr::derived("default");
        let args = args(&s, Accelerator::Kvm, true).unwrap();
        assert_eq!(
            args,
            [
                "-netdev",
                "tap,id=hostnet0,ifname=tap0,script=no,downscript=no,vhost=on",
                "-device",
                &format!("virtio-net-pci,id=net0,mac={m0},netdev=hostnet0,host_mtu=9000,romfile="),
                "-netdev",
                "tap,id=hostnet1,fd=9",
                "-device",
                &format!("e1000e,id=net1,mac={},netdev=hostnet1,bootindex=2", MacAddr::derived("second")),
                "-device",
                &format!("rtl8139,id=net2,mac={},romfile=", MacAddr::derived("third")),
            ]
        );
        // No vhost under emulation or without /dev/vhost-net.
        assert!(!super::args(&s, Accelerator::Emulation, true).unwrap().iter().any(|a| a.contains("vhost")));
        assert!(!super::args(&s, Accelerator::Kvm, false).unwrap().iter().any(|a| a.contains("vhost")));
    }

    #[test]
    fn bad_interfaces_name_the_field() {
        let mut s = spec();
        s.interfaces = vec![nic("a", NicModel::Virtio, InterfaceBackend::Tap { name: "x".repeat(16) })];
        assert!(args(&s, Accelerator::Kvm, false).unwrap_err().to_string().starts_with("interface a tap"));
        s.interfaces = vec![nic("a", NicModel::Virtio, InterfaceBackend::None); 2];
        assert!(args(&s, Accelerator::Kvm, false).unwrap_err().to_string().contains("used twice"));
        s.interfaces = vec![nic("a", NicModel::E1000, InterfaceBackend::None)];
        s.interfaces[0].mtu = Some(1400);
        assert!(args(&s, Accelerator::Kvm, false).unwrap_err().to_string().contains("only virtio"));
    }
}
