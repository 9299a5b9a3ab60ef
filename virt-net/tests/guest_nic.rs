//! A real guest with a NIC on a real tap: the Debian kernel and the project's initramfs
//! (scripts/guest-assets.sh) boot with a virtio-net NIC whose tap lives in a network namespace the
//! test creates, under the QEMU backend (virtio-net-pci; software emulation where KVM is unusable).
//! (The native VMM's virtio-net is driven by test drivers over guest memory in virt-core and reached
//! by a tiny guest; a real kernel on this machine's software-nested /dev/kvm prints nothing within
//! 4 minutes, so the nested harness is where it boots Linux.) A NoCloud seed's user data
//! prints the NIC's MAC as the guest sees it, configures the address and pings the host side of the
//! tap; the host side answers from its namespace.
//!
//! Boots run one at a time: the machine has two cores.

#[macro_use]
#[path = "../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/netns.rs"]
mod netns;

use guest::Console;
use std::time::{Duration, Instant};

use guest::{asset, boot_lock};
use netns::Netns;
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::qemu::{QemuBackend, QemuOptions};
use virt_core::machine::{
    BootSpec, ClockSpec, CpuSpec, DiskBus, DiskFormat, DiskSpec, InterfaceBackend, InterfaceSpec,
    MachineBackend, MachineExit, MachineSpec, NicModel,
};
use virt_core::model::CloudInitSource;
use virt_core::net::MacAddr;
use virt_net::tap::Tap;
use virt_storage::cloudinit::{write_nocloud, SeedInfo};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const SCRIPT: &str = "#!/bin/sh
echo \"VIRT-NET: mac $(cat /sys/class/net/eth0/address)\"
ip addr add 10.9.0.2/24 dev eth0
ip link set eth0 up
if ping -c 3 -W 10 10.9.0.1 >/dev/null; then echo 'VIRT-NET: ping ok'; else echo 'VIRT-NET: ping failed'; fi
";

/// A tap in a fresh namespace with the host side 10.9.0.1/24, and an inheritable copy of its fd.
fn tap_in_netns() -> (Netns, Tap, i32) {
    let ns = Netns::new();
    let tap_name = ns.tap_name();
    let n2 = tap_name.clone();
    let tap = ns.run(move || Tap::open(&n2).expect("create tap"));
    ns.ip(&["addr", "add", "10.9.0.1/24", "dev", &tap_name]);
    ns.ip(&["link", "set", &tap_name, "up"]);
    // The machine gets its own copy of the tap's descriptor (QEMU runs in the host's namespace; the
    // tap stays in the test's).
    // SAFETY: dup of a descriptor `tap` keeps open; F_SETFD 0 only clears close-on-exec on the copy.
    let fd = unsafe { libc::dup(virt_core::net::NetBackend::fd(&tap)) };
    assert!(fd >= 0);
    // SAFETY: as above, on the descriptor just created.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    (ns, tap, fd)
}

/// The e2e guest with a NoCloud seed running SCRIPT and `interfaces`.
fn spec(name: &str, seed: &std::path::Path, interfaces: Vec<InterfaceSpec>) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Kernel {
            kernel: asset("KERNEL"),
            initramfs: Some(asset("INITRAMFS")),
            cmdline: "console=ttyS0 quiet panic=-1 virt.e2e=1".into(),
        },
        disks: vec![DiskSpec {
            name: "cloudinitdisk".into(),
            path: seed.to_path_buf(),
            format: DiskFormat::Raw,
            bus: DiskBus::Virtio,
            cdrom: false,
            read_only: true,
            boot_order: None,
            serial: None,
        }],
        acpi: true,
        smm: false,
        hyperv: vec![],
        clock: ClockSpec::default(),
        tpm: None,
        graphics: false,
        machine_type: None,
        accel: AccelPolicy::Auto,
        interfaces,
        agent_credentials: Default::default(),
    }
}

fn nic(fd: i32) -> InterfaceSpec {
    InterfaceSpec {
        name: "default".into(),
        mac: "02:7e:57:00:00:01".parse().unwrap(),
        model: NicModel::Virtio,
        backend: InterfaceBackend::TapFd { fd },
        mtu: None,
        boot_order: None,
        vhost: Default::default(),
    }
}

/// Boots `spec` on `backend` to the guest's power-off (closing `fd` once started); checks the MAC and
/// the ping.
fn boot_and_check(backend: &dyn MachineBackend, spec: &MachineSpec, fd: i32) {
    let t0 = Instant::now();
    let console = Console::default();
    let m = backend.start(spec, Box::new(console.clone())).unwrap_or_else(|e| panic!("start: {e}"));
    // SAFETY: the machine has its own copy now; ours is closed exactly once.
    unsafe { libc::close(fd) };
    let exit = m.wait(Some(BOOT_TIMEOUT));
    let text = console.text();
    if exit.is_none() {
        let _ = m.stop();
    }
    assert_eq!(exit, Some(MachineExit::PowerOff), "console:\n{text}");
    eprintln!(
        "{} on {}: powered off {:.1} s after start",
        spec.name,
        backend.name(),
        t0.elapsed().as_secs_f64()
    );
    for l in text.lines().filter(|l| l.contains("VIRT-NET")) {
        eprintln!("  {}", l.trim_end());
    }
    assert!(text.contains("VIRT-NET: mac 02:7e:57:00:00:01"), "the guest's MAC, console:\n{text}");
    assert!(text.contains("VIRT-NET: ping ok"), "ping to the host side, console:\n{text}");
}

fn seed(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let seed = dir.join("nocloud.img");
    let src = CloudInitSource { user_data: Some(SCRIPT.into()), ..Default::default() };
    write_nocloud("cloudinitdisk", &src, &SeedInfo::new("netvm.default", "netvm"), &seed).unwrap();
    seed
}

#[test]
fn qemu_guest_sees_its_mac_and_pings_the_host_side_of_its_tap() {
    need_qemu!();
    let (_ns, tap, fd) = tap_in_netns();
    let _g = boot_lock();
    let dir = std::env::temp_dir().join(format!("vnet-qemu-nic-{}", std::process::id()));
    let seed = seed(&dir);
    // The other models KubeVirt accepts, unlinked: QEMU must take them (the initramfs has no drivers
    // for them, so the virtio NIC stays eth0).
    let mut nics = vec![nic(fd)];
    nics.extend([NicModel::E1000e, NicModel::E1000, NicModel::Rtl8139].into_iter().map(|model| {
        InterfaceSpec {
            name: model.name().into(),
            mac: MacAddr::derived(model.name()),
            model,
            backend: InterfaceBackend::None,
            mtu: None,
            boot_order: None,
            vhost: Default::default(),
        }
    }));
    let backend = QemuBackend::new(QemuOptions {
        allow_emulation: true,
        stop_grace: Duration::from_secs(5),
        ..Default::default()
    });
    boot_and_check(&backend, &spec("qemu-nic", &seed, nics), fd);
    let _ = std::fs::remove_dir_all(&dir);
    drop(tap);
}
