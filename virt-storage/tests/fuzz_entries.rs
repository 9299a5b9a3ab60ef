//! The fuzz targets' bodies (`virt_storage::fuzzing`) on every committed seed
//! (`fuzz/seeds/TARGET`), on mutations of the seeds and on random bytes, so the stable test suite
//! runs exactly what the fuzzer runs. Crashes the fuzzer found stay here as regression seeds.

use proptest::prelude::*;
use virt_storage::fuzzing;

#[path = "../../fuzz/support/seeds.rs"]
mod seedlib;
use seedlib::{mutated, seeds};

/// A fuzz entry point.
type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 6] = [
    ("cdi_manifest", fuzzing::cdi_manifest),
    ("cloudinit_seed", fuzzing::cloudinit_seed),
    ("oci_manifest", fuzzing::oci_manifest),
    ("oci_layers", fuzzing::oci_layers),
    ("image_probe", fuzzing::image_probe),
    ("qcow2_open", fuzzing::qcow2_open),
];

#[test]
fn every_seed_runs() {
    for (target, run) in TARGETS {
        for (name, d) in seeds(target) {
            eprintln!("{target} {name}");
            run(&d);
        }
    }
}

/// The manifest seeds are objects the loader accepts, so the fuzzer starts past the parser.
#[test]
fn manifest_seeds_load() {
    for (name, d) in seeds("cdi_manifest") {
        let text = String::from_utf8(d).unwrap();
        if name.ends_with(".json") {
            virt_storage::cdi::load_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            virt_storage::cdi::load_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn cdi_manifest_never_panics(d in prop_oneof![mutated("cdi_manifest"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::cdi_manifest(&d);
    }

    #[test]
    fn cloudinit_seed_never_panics(d in prop_oneof![mutated("cloudinit_seed"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::cloudinit_seed(&d);
    }

    #[test]
    fn oci_manifest_never_panics(d in prop_oneof![mutated("oci_manifest"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::oci_manifest(&d);
    }

    #[test]
    fn oci_layers_never_panic(d in prop_oneof![mutated("oci_layers"), proptest::collection::vec(any::<u8>(), 0..2048)]) {
        fuzzing::oci_layers(&d);
    }

    #[test]
    fn image_probe_never_panics(d in prop_oneof![mutated("image_probe"), proptest::collection::vec(any::<u8>(), 0..2048)]) {
        fuzzing::image_probe(&d);
    }
}
