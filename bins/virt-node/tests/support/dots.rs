//! The tests' dot guest: a tiny hand-written PVH kernel that prints a dot on COM1 every 2^20
//! steps, served as a kernel-boot image (`/boot/vmlinuz`) by a real registry. Needs the test
//! crate's `pvh` and `registry` modules.

use std::path::Path;

use crate::registry::{self, Comp, Entry, OciLayout, Registry};

/// `back: inc %ecx; test $0xfffff,%ecx; jnz back; mov $0x3f8,%dx; mov $0x2e,%al; out %al,(%dx);
/// jmp back`: a dot on COM1 every 2^20 steps.
pub const DOTS: &[u8] = &[
    0x41, 0xf7, 0xc1, 0xff, 0xff, 0x0f, 0x00, 0x75, 0xf7, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x2e, 0xee, 0xeb,
    0xee,
];

/// Pushes the kernel-boot image holding the dot guest; returns its reference.
pub fn push_guest(reg: &Registry) -> String {
    let mut layout = OciLayout::new();
    let layer =
        registry::tar_of(&[Entry::Dir("boot/"), Entry::File("boot/vmlinuz", crate::pvh::pvh_elf(DOTS))]);
    let desc = layout.image(&[(layer, Comp::Gzip)], "amd64");
    layout.tag("v1", &desc);
    layout.write_index();
    reg.push(&layout, "v1", "kubevirt/dots", &[]);
    format!("{}/kubevirt/dots:v1", reg.host)
}

/// The dots in `run_dir`'s console log.
pub fn dots(run_dir: &Path) -> usize {
    std::fs::read(run_dir.join("console.log")).unwrap_or_default().iter().filter(|&&b| b == b'.').count()
}
