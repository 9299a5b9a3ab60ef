//! Bad input to virt-launcher: each case exits 1 with a message naming the problem, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("launcher-bad-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the launcher; returns (exit code, stderr).
fn launch(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_virt-launcher")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "the launcher panicked: {err}");
    (out.status.code().unwrap_or(-1), err)
}

fn kvm_usable() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
    assert!(
        std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
        "skipping the cases that reach KVM: /dev/kvm does not exist on this machine"
    );
    eprintln!("skipping the cases that reach KVM: /dev/kvm does not exist on this machine");
    false
}

/// A minimal x86_64 ELF kernel with a PVH note whose code halts.
fn tiny_elf() -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&1u16.to_le_bytes());
    f[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f[72..80].copy_from_slice(&0x1000u64.to_le_bytes());
    f[88..96].copy_from_slice(&0x100_0000u64.to_le_bytes());
    f[96..104].copy_from_slice(&16u64.to_le_bytes());
    f[104..112].copy_from_slice(&16u64.to_le_bytes());
    f.extend_from_slice(&[0xf4; 16]);
    f
}

#[test]
fn missing_and_malformed_files_are_named() {
    let d = dir("files");
    let (code, err) = launch(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/vmlinuz: no such file"), "{err}");

    let k = d.join("k.elf");
    std::fs::write(&k, tiny_elf()).unwrap();
    let (code, err) = launch(&["--kernel", k.to_str().unwrap(), "--disk", "/nonexistent/disk.img"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot open disk /nonexistent/disk.img"), "{err}");
    let (code, err) = launch(&["--kernel", k.to_str().unwrap(), "--disk", "/dev/null,fast"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown option \"fast\""), "{err}");
    let (code, err) = launch(&["--kernel", k.to_str().unwrap(), "--kvm-device", "/nonexistent/kvm"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot open /nonexistent/kvm"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn bad_kernels_memory_and_initramfs_are_refused() {
    if !kvm_usable() {
        return;
    }
    let d = dir("kernels");
    let text = d.join("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
    let (code, err) = launch(&["--kernel", text.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a Linux kernel"), "{err}");

    // A bzImage header that claims far more kernel than the file holds.
    let mut bz = vec![0u8; 0x1000];
    bz[0x1f1] = 4;
    bz[0x1f4..0x1f8].copy_from_slice(&0x10_0000u32.to_le_bytes());
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    let trunc = d.join("truncated-bzImage");
    std::fs::write(&trunc, &bz).unwrap();
    let (code, err) = launch(&["--kernel", trunc.to_str().unwrap(), "--no-kernel-cache"]);
    assert_eq!(code, 1);
    assert!(err.contains("truncated bzImage"), "{err}");

    let k = d.join("k.elf");
    std::fs::write(&k, tiny_elf()).unwrap();
    let (code, err) = launch(&["--kernel", k.to_str().unwrap(), "--memory", "8"]);
    assert_eq!(code, 1);
    assert!(err.contains("below the minimum"), "{err}");

    let big = d.join("big.cpio");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(40 << 20).unwrap();
    let (code, err) =
        launch(&["--kernel", k.to_str().unwrap(), "--initramfs", big.to_str().unwrap(), "--memory", "32"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not fit in guest memory"), "{err}");

    let (code, err) = launch(&["--kernel", k.to_str().unwrap(), "--cpus", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("at least one vCPU"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}
