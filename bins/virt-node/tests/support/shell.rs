//! The shell guest for node tests: the project's Debian kernel and initramfs (a busybox shell on
//! the serial console) as a kernel-boot container image, and an attached `virtctl console`
//! session to type into. Included by the tests that need it (`#[path]`), beside `node.rs`,
//! `guest.rs` and `registry.rs`.

#![allow(dead_code)]

use std::process::Command;

use super::guest::assets;
use super::node::{bin, NodeProc};
use super::registry::{self, Comp, Entry, OciLayout, Registry};

/// The shell prompt's banner: the guest is ready for input.
pub const READY: &str = "Type 'poweroff -f' to exit.";

/// Pushes the kernel and initramfs as `kubevirt/shell-kernel:v1` (`/boot/vmlinuz`,
/// `/boot/initrd.img`); returns the reference.
pub fn push_kernel_image(reg: &Registry) -> String {
    let a = assets();
    let mut layout = OciLayout::new();
    let layer = registry::tar_of(&[
        Entry::Dir("boot/"),
        Entry::File("boot/vmlinuz", std::fs::read(&a["KERNEL"]).unwrap()),
        Entry::File("boot/initrd.img", std::fs::read(&a["INITRAMFS"]).unwrap()),
    ]);
    let desc = layout.image(&[(layer, Comp::Gzip)], "amd64");
    layout.tag("v1", &desc);
    layout.write_index();
    reg.push(&layout, "v1", "kubevirt/shell-kernel", &[]);
    format!("{}/kubevirt/shell-kernel:v1", reg.host)
}

#[path = "console_session.rs"]
mod console_session;
pub use console_session::ConsoleSession;

impl ConsoleSession {
    /// Attaches to `name`'s console on `node`.
    pub fn attach(node: &NodeProc, name: &str) -> Self {
        let mut cmd = Command::new(bin("virtctl"));
        cmd.arg("--server").arg(format!("unix://{}", node.socket.display())).args(["console", name]);
        Self::spawn(cmd)
    }
}
