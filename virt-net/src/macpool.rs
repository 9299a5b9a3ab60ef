//! The node's MAC pool (as KubeVirt's kubemacpool): a VM interface's MAC is allocated once from a
//! configurable range (default `02:00:00:00:00:00-02:00:00:ff:ff:ff`, locally administered), kept
//! in a file so it survives node restarts, and written into the VM's spec by the node; a MAC
//! already held by another interface is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use virt_core::net::MacAddr;

/// The pool's errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacPoolError {
    /// The MAC belongs to another interface.
    #[error("MAC address {mac} is already in use by {holder}")]
    Duplicate {
        /// The MAC.
        mac: MacAddr,
        /// Who holds it (`namespace/name/interface`).
        holder: String,
    },
    /// Every address of the range is taken.
    #[error("the MAC pool {start}-{end} is exhausted")]
    Exhausted {
        /// First address.
        start: MacAddr,
        /// Last address.
        end: MacAddr,
    },
    /// The range is reversed or not unicast.
    #[error("MAC range {start}-{end}: {why}")]
    BadRange {
        /// First address.
        start: MacAddr,
        /// Last address.
        end: MacAddr,
        /// What is wrong.
        why: &'static str,
    },
    /// The pool's file could not be read or written.
    #[error("MAC pool file {path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        why: String,
    },
}

fn to_u64(m: MacAddr) -> u64 {
    m.0.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

fn from_u64(v: u64) -> MacAddr {
    let b = v.to_be_bytes();
    MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The default range.
pub const DEFAULT_RANGE: (MacAddr, MacAddr) =
    (MacAddr([2, 0, 0, 0, 0, 0]), MacAddr([2, 0, 0, 0xff, 0xff, 0xff]));

/// Allocated MACs by owner (`namespace/name/interface`), persisted in a JSON file.
pub struct MacPool {
    start: u64,
    end: u64,
    file: Option<PathBuf>,
    owners: Mutex<BTreeMap<String, MacAddr>>,
}

impl MacPool {
    /// A pool over `start..=end`, kept in `file` (none: in memory).
    pub fn open(start: MacAddr, end: MacAddr, file: Option<&Path>) -> Result<Self, MacPoolError> {
        let (s, e) = (to_u64(start), to_u64(end));
        if s > e {
            return Err(MacPoolError::BadRange { start, end, why: "the first address is after the last" });
        }
        if start.0[0] & 1 == 1 || end.0[0] & 1 == 1 {
            return Err(MacPoolError::BadRange { start, end, why: "multicast addresses (first octet odd)" });
        }
        let owners = match file {
            Some(p) if p.exists() => {
                let text = std::fs::read(p)
                    .map_err(|e| MacPoolError::File { path: p.display().to_string(), why: e.to_string() })?;
                serde_json::from_slice(&text)
                    .map_err(|e| MacPoolError::File { path: p.display().to_string(), why: e.to_string() })?
            }
            _ => BTreeMap::new(),
        };
        Ok(Self { start: s, end: e, file: file.map(Path::to_path_buf), owners: Mutex::new(owners) })
    }

    fn save(&self, owners: &BTreeMap<String, MacAddr>) -> Result<(), MacPoolError> {
        let Some(p) = &self.file else { return Ok(()) };
        let err = |e: String| MacPoolError::File { path: p.display().to_string(), why: e };
        let text = serde_json::to_vec_pretty(owners).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, p).map_err(|e| err(e.to_string()))
    }

    /// The MAC of `owner`: the one it holds, or the next free one of the range.
    pub fn allocate(&self, owner: &str) -> Result<MacAddr, MacPoolError> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = owners.get(owner) {
            return Ok(*m);
        }
        let used: std::collections::BTreeSet<u64> = owners.values().map(|m| to_u64(*m)).collect();
        // Start after the highest address handed out, so a released MAC is not reused at once.
        let after = used.range(self.start..=self.end).next_back().map_or(self.start, |h| h + 1);
        let found = (after..=self.end).chain(self.start..after).find(|v| !used.contains(v));
        let Some(v) = found else {
            return Err(MacPoolError::Exhausted { start: from_u64(self.start), end: from_u64(self.end) });
        };
        let mac = from_u64(v);
        owners.insert(owner.to_string(), mac);
        self.save(&owners)?;
        Ok(mac)
    }

    /// Records that `owner` uses `mac` (given in its spec); refused when another owner holds it.
    pub fn claim(&self, owner: &str, mac: MacAddr) -> Result<(), MacPoolError> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((holder, _)) = owners.iter().find(|(o, m)| **m == mac && o.as_str() != owner) {
            return Err(MacPoolError::Duplicate { mac, holder: holder.clone() });
        }
        if owners.get(owner) == Some(&mac) {
            return Ok(());
        }
        owners.insert(owner.to_string(), mac);
        self.save(&owners)
    }

    /// Frees every MAC whose owner starts with `prefix` (`namespace/name/`).
    pub fn release(&self, prefix: &str) -> Result<(), MacPoolError> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let before = owners.len();
        owners.retain(|o, _| !o.starts_with(prefix));
        if owners.len() != before {
            self.save(&owners)?;
        }
        Ok(())
    }

    /// Who holds `mac`.
    pub fn holder(&self, mac: MacAddr) -> Option<String> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.iter().find(|(_, m)| **m == mac).map(|(o, _)| o.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_once_refuses_duplicates_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("macpool-{}", std::process::id()));
        let file = dir.join("macs.json");
        let _ = std::fs::remove_dir_all(&dir);
        let (s, e) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 3]));
        let pool = MacPool::open(s, e, Some(&file)).unwrap();
        let a = pool.allocate("ns/a/default").unwrap();
        assert_eq!(a, s);
        assert_eq!(pool.allocate("ns/a/default").unwrap(), a, "allocated once");
        let b = pool.allocate("ns/b/default").unwrap();
        assert_ne!(a, b);
        let err = pool.claim("ns/c/default", a).unwrap_err();
        assert_eq!(err, MacPoolError::Duplicate { mac: a, holder: "ns/a/default".into() });
        assert!(err.to_string().contains("02:00:00:00:00:01"));
        pool.claim("ns/c/default", MacAddr([2, 0, 0, 0, 0, 3])).unwrap();
        assert!(matches!(pool.allocate("ns/d/default"), Err(MacPoolError::Exhausted { .. })));
        drop(pool);
        let pool = MacPool::open(s, e, Some(&file)).unwrap();
        assert_eq!(pool.allocate("ns/b/default").unwrap(), b, "kept across a restart");
        pool.release("ns/b/").unwrap();
        assert_eq!(pool.allocate("ns/d/default").unwrap(), b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_ranges() {
        assert!(MacPool::open(MacAddr([2, 0, 0, 0, 0, 9]), MacAddr([2, 0, 0, 0, 0, 1]), None).is_err());
        assert!(MacPool::open(MacAddr([1, 0, 0, 0, 0, 0]), MacAddr([1, 0, 0, 0, 0, 1]), None).is_err());
    }
}
