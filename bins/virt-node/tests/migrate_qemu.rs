//! Live migration of a QEMU-backed VM through the node (docs/migration.md), with real parts: a
//! `virt-node` daemon with the QEMU backend under software emulation, the project's Debian kernel
//! and initramfs (a shell on the serial console) served as a kernel-boot image by a real
//! `docker-registry`, confined launchers (QEMU in the launcher's jail, as an unprivileged user),
//! and `virtctl console` / `migrate` / `create`.
//!
//! 1. A shell variable is set through an attached `virtctl console`; `virtctl migrate --wait` moves
//!    the VM into a fresh launcher; the same console session, never detached, reaches the shell in
//!    the new QEMU, which still has the variable.
//! 2. A MigrationPolicy with `allowPostCopy` and a pace far too slow for its completion timeout:
//!    the migration switches to post-copy (the target launcher's jailed QEMU gets
//!    `/dev/userfaultfd`), `migrationState.mode` says `PostCopy`, the shell answers again.
//!
//! Needs root, qemu-system-x86_64, docker-registry and skopeo (scripts/install-deps.sh).

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;
#[path = "support/shell.rs"]
mod shell;

use std::time::{Duration, Instant};

use guest::{boot_lock, have};
use node::NodeProc;
use registry::{Registry, RegistryOpts};
use shell::{push_kernel_image, ConsoleSession};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);

const VMI: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: shell
  labels:
    migration: slow
spec:
  terminationGracePeriodSeconds: 0
  domain:
    firmware:
      kernelBoot:
        container:
          image: IMAGE
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
        kernelArgs: console=ttyS0 quiet panic=-1
    memory:
      guest: 256Mi
    devices:
      autoattachGraphicsDevice: false
";

/// 256 KiB/s cannot send the guest's kernel and initramfs within 4 s per GiB (1 s for 256 MiB):
/// with allowPostCopy the migration switches to post-copy there.
const POST_COPY_POLICY: &str = "apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: post-copy
spec:
  bandwidthPerMigration: 256Ki
  completionTimeoutPerGiB: 4
  allowPostCopy: true
  selectors:
    virtualMachineInstanceSelector:
      migration: slow
";

#[test]
fn a_qemu_vm_migrates_with_its_console_attached_then_by_post_copy() {
    let missing = ["qemu-system-x86_64", "docker-registry", "skopeo"].into_iter().find(|t| !have(t));
    if let Some(t) = missing {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "{t} not installed");
        eprintln!("{t} not installed: skipping (scripts/install-deps.sh installs it)");
        return;
    }
    let _g = boot_lock();
    let reg = Registry::start(RegistryOpts::default());
    let image = push_kernel_image(&reg);
    // Short path: unix socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new().prefix("vmq").tempdir_in("/tmp").unwrap();
    let node = NodeProc::start_with(dir.path(), Some(&reg.host), &["--backend", "qemu"]);
    let f = dir.path().join("vmi.yaml");
    std::fs::write(&f, VMI.replace("IMAGE", &image)).unwrap();
    node.ok(&["create", "-f", f.to_str().unwrap()]);

    node.wait_vmi_phase("shell", "Running", BOOT_TIMEOUT);

    // 1. Pre-copy with the console attached throughout (its ring buffer holds the boot so far).
    let mut console = ConsoleSession::attach(&node, "shell");
    console.wait_for(shell::READY, BOOT_TIMEOUT);
    console.type_line("X=7731; echo VIRT-SET-$X");
    console.wait_for("VIRT-SET-7731", Duration::from_secs(60));
    let t = Instant::now();
    let out = node.ok(&["migrate", "shell", "--wait", "--timeout", &MIGRATE_TIMEOUT.as_secs().to_string()]);
    eprintln!("pre-copy migration of a QEMU guest through the node: {:?}\n{out}", t.elapsed());
    assert!(out.contains("Succeeded"), "{out}");
    let v = node.vmi("shell");
    assert_eq!(v["status"]["phase"], "Running", "{v}");
    let ms = &v["status"]["migrationState"];
    assert_eq!(ms["mode"], "PreCopy", "{v}");
    assert_ne!(ms["targetPod"], ms["sourcePod"], "a new launcher runs it: {v}");
    // QEMU's stop at the end of the copy is the migration's, not the user's.
    let conditions = v["status"]["conditions"].as_array().unwrap();
    assert!(!conditions.iter().any(|c| c["type"] == "Paused"), "{v}");
    assert!(conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"), "{v}");
    console.type_line("echo VIRT-AFTER-$X-$((6*7))");
    console.wait_for("VIRT-AFTER-7731-42", Duration::from_secs(60));

    // 2. Post-copy, through a MigrationPolicy, into a jailed QEMU given /dev/userfaultfd.
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, POST_COPY_POLICY).unwrap();
    node.ok(&["create", "-f", p.to_str().unwrap()]);
    let out = node.ok(&["migrate", "shell", "--wait", "--timeout", &MIGRATE_TIMEOUT.as_secs().to_string()]);
    eprintln!("{out}");
    assert!(out.contains("Succeeded"), "{out}\nnode log:\n{}", node.log());
    assert!(out.contains("switched to post-copy at the completion timeout"), "{out}");
    let v = node.vmi("shell");
    let ms = &v["status"]["migrationState"];
    assert_eq!(ms["migrationPolicyName"], "post-copy", "{ms}");
    assert_eq!(ms["mode"], "PostCopy", "switched to post-copy at the timeout: {ms}");
    assert_eq!(ms["migrationConfiguration"]["allowPostCopy"], true, "{ms}");
    assert_eq!(ms["migrationConfiguration"]["allowWorkloadDisruption"], true, "follows allowPostCopy: {ms}");
    console.type_line("echo VIRT-POSTCOPY-$X");
    console.wait_for("VIRT-POSTCOPY-7731", Duration::from_secs(60));
    console.detach();
    node.ok(&["delete", "vmi", "shell"]);
}
