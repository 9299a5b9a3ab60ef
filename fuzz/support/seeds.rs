//! Shared by the crates' `tests/fuzz_entries.rs`: the committed seeds of a fuzz target, and
//! mutations of them, so the stable test suite runs what the fuzzer runs.

use std::path::PathBuf;

use proptest::prelude::*;

/// The seeds committed for `target` under `fuzz/seeds/`, sorted by name.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A seed with some bytes flipped and maybe cut short.
pub fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let all = seeds(target);
    (
        0..all.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(move |(i, flips, cut)| {
            let mut d = all[i].1.clone();
            for (at, x) in flips {
                if !d.is_empty() {
                    let n = d.len();
                    d[at.index(n)] ^= x;
                }
            }
            if let Some(c) = cut {
                let n = d.len();
                d.truncate(c.index(n + 1));
            }
            d
        })
}
