//! The repository's copy of KubeVirt's examples (conformance/, SOURCES.md names their commits;
//! `VIRT_CONFORMANCE_DIR` overrides): its files, and the catalog of its instancetypes and
//! preferences. Included with `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use virt_core::api::LoadOptions;
use virt_core::model::{self, Catalog};

pub fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRT_CONFORMANCE_DIR") {
        return PathBuf::from(dir).join("kubevirt");
    }
    // The repository's copy of KubeVirt's examples (conformance/SOURCES.md names their commits).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/kubevirt")
}

pub fn files() -> Vec<PathBuf> {
    let dir = conformance_dir();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance corpus {} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no files in {}", dir.display());
    out
}

pub fn read(name: &str) -> String {
    std::fs::read_to_string(conformance_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every instancetype and preference of the folder.
pub fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for path in files() {
        for d in model::load_file(&path, &LoadOptions::default()).unwrap() {
            c.add(&d.object);
        }
    }
    c
}
