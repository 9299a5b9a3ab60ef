//! The fuzz target's body (`virt_k8s::fuzzing::rest_body`) on every committed seed
//! (`fuzz/seeds/rest_body`), on mutations of the seeds and on random bytes, so the stable test suite
//! runs exactly what the fuzzer runs. Crashes the fuzzer found stay here as regression seeds.

use proptest::prelude::*;
use virt_k8s::fuzzing;

#[path = "../../fuzz/support/seeds.rs"]
mod seedlib;
use seedlib::{mutated, seeds};

#[test]
fn every_seed_runs() {
    for (name, d) in seeds("rest_body") {
        eprintln!("rest_body {name}");
        fuzzing::rest_body(&d);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn rest_body_never_panics(d in prop_oneof![mutated("rest_body"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::rest_body(&d);
    }
}
