//! Repairs of the FAT image fatfs 0.3.6 writes (see [`fix_dot_entries`]).

use std::io;

pub(super) const DIR_ENTRY: usize = 32;
pub(super) const ATTR_LFN: u8 = 0x0f;
pub(super) const ATTR_DIRECTORY: u8 = 0x10;
pub(super) const DELETED: u8 = 0xe5;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The geometry of a FAT12/16 image, from its boot sector.
pub(super) struct Geometry {
    pub(super) fat: usize,
    fat12: bool,
    pub(super) root: usize,
    pub(super) root_len: usize,
    pub(super) data: usize,
    pub(super) cluster: usize,
    pub(super) clusters: usize,
}

impl Geometry {
    pub(super) fn read(img: &[u8]) -> io::Result<Self> {
        let u16_at = |o: usize| img.get(o..o + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
        let u32_at =
            |o: usize| img.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let short = || invalid("the image is shorter than its boot sector".into());
        let bps = u16_at(0x0b).ok_or_else(short)?;
        let spc = usize::from(*img.get(0x0d).ok_or_else(short)?);
        let reserved = u16_at(0x0e).ok_or_else(short)?;
        let fats = usize::from(*img.get(0x10).ok_or_else(short)?);
        let root_entries = u16_at(0x11).ok_or_else(short)?;
        let total = match u16_at(0x13).ok_or_else(short)? {
            0 => u32_at(0x20).ok_or_else(short)?,
            n => n,
        };
        let spf = u16_at(0x16).ok_or_else(short)?;
        // Sectors of 512 to 4096 bytes make every cluster hold at least the 4 slots fixed below.
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() || !spc.is_power_of_two() || spf == 0 {
            return Err(invalid(format!(
                "not a FAT12/16 boot sector (sector {bps}, cluster {spc}, FAT {spf})"
            )));
        }
        let root_sectors = (root_entries * DIR_ENTRY).div_ceil(bps);
        let data_sector = reserved + fats * spf + root_sectors;
        let clusters = total.saturating_sub(data_sector) / spc;
        let g = Self {
            fat: reserved * bps,
            fat12: clusters < 4085,
            root: (reserved + fats * spf) * bps,
            root_len: root_entries * DIR_ENTRY,
            data: data_sector * bps,
            cluster: spc * bps,
            clusters,
        };
        if g.data + clusters * g.cluster > img.len() {
            return Err(invalid(format!(
                "the boot sector describes more than the {} bytes of the image",
                img.len()
            )));
        }
        Ok(g)
    }

    /// The byte ranges of the directory starting at `cluster` (its cluster chain).
    fn chain(&self, img: &[u8], mut cluster: usize) -> io::Result<Vec<std::ops::Range<usize>>> {
        let mut v = Vec::new();
        while (2..self.clusters + 2).contains(&cluster) {
            if v.len() > self.clusters {
                return Err(invalid(format!("cluster chain loop at cluster {cluster}")));
            }
            let start = self.data + (cluster - 2) * self.cluster;
            v.push(start..start + self.cluster);
            let next = if self.fat12 {
                let o = self.fat + cluster + cluster / 2;
                let b =
                    img.get(o..o + 2).ok_or_else(|| invalid(format!("FAT entry {cluster} out of range")))?;
                let pair = usize::from(u16::from_le_bytes([b[0], b[1]]));
                if cluster.is_multiple_of(2) {
                    pair & 0xfff
                } else {
                    pair >> 4
                }
            } else {
                let o = self.fat + 2 * cluster;
                let b =
                    img.get(o..o + 2).ok_or_else(|| invalid(format!("FAT entry {cluster} out of range")))?;
                usize::from(u16::from_le_bytes([b[0], b[1]]))
            };
            cluster = next;
        }
        Ok(v)
    }
}

/// Works around fatfs 0.3.6 writing a long-name entry before the `.` and `..` entries of every
/// directory it creates (rust-fatfs issue 117; fixed upstream after 0.3.6): FAT requires `.` and
/// `..` in the first two slots, and fsck.fat reports (and would "repair" by deleting) the
/// directory otherwise. Each directory's first four slots `LFN(.) . LFN(..) ..` become
/// `. .. <deleted> <deleted>`, recursively from the root.
pub(super) fn fix_dot_entries(img: &mut [u8]) -> io::Result<()> {
    let g = Geometry::read(img)?;
    // Directories to visit by first cluster; None is the root directory's fixed region.
    let mut dirs: Vec<Option<usize>> = vec![None];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        seen += 1;
        if seen > g.clusters + 1 {
            return Err(invalid("more directories than clusters".into()));
        }
        let mut ranges = Vec::new();
        match dir {
            None => ranges.push(g.root..g.root + g.root_len),
            Some(cluster) => {
                ranges = g.chain(img, cluster)?;
                if let Some(start) = ranges.first().map(|r| r.start) {
                    let slot = |i: usize| start + i * DIR_ENTRY;
                    let name = |img: &[u8], i: usize| img[slot(i)..slot(i) + 11].to_vec();
                    if img[slot(0) + 11] == ATTR_LFN
                        && name(img, 1) == b".          "
                        && img[slot(2) + 11] == ATTR_LFN
                        && name(img, 3) == b"..         "
                    {
                        img.copy_within(slot(1)..slot(2), slot(0));
                        img.copy_within(slot(3)..slot(4), slot(1));
                        for i in [2, 3] {
                            img[slot(i)..slot(i + 1)].fill(0);
                            img[slot(i)] = DELETED;
                        }
                    }
                }
            }
        }
        // Its subdirectories, up to the end-of-directory mark.
        for e in ranges.into_iter().flat_map(|r| r.step_by(DIR_ENTRY)) {
            let (first_byte, attr) = (img[e], img[e + 11]);
            if first_byte == 0 {
                break;
            }
            if first_byte == DELETED || first_byte == b'.' || attr == ATTR_LFN || attr & ATTR_DIRECTORY == 0 {
                continue;
            }
            let cluster = usize::from(u16::from_le_bytes([img[e + 26], img[e + 27]]));
            if !(2..g.clusters + 2).contains(&cluster) {
                return Err(invalid(format!("directory entry at byte {e} points to cluster {cluster}")));
            }
            dirs.push(Some(cluster));
        }
    }
    Ok(())
}
