//! A PVH ELF kernel around hand-written 32-bit guest code, for the launcher tests that run tiny
//! guests on /dev/kvm. Included with `#[path]`.

/// A PVH ELF kernel whose 32-bit code is `code`, loaded at 16 MiB.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    let ph = |f: &mut Vec<u8>, at: usize, kind: u32, off: u64, pa: u64, sz: u64| {
        f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        f[at + 24..at + 32].copy_from_slice(&pa.to_le_bytes());
        f[at + 32..at + 40].copy_from_slice(&sz.to_le_bytes());
        f[at + 40..at + 48].copy_from_slice(&sz.to_le_bytes());
    };
    ph(&mut f, 64, 1, 0x1000, 0x100_0000, code.len() as u64);
    let mut note = Vec::new();
    for v in [4u32, 4, 18] {
        note.extend_from_slice(&v.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&0x100_0000u32.to_le_bytes());
    f[0x800..0x800 + note.len()].copy_from_slice(&note);
    ph(&mut f, 120, 4, 0x800, 0, note.len() as u64);
    f.extend_from_slice(code);
    f
}
