//! The fuzz targets' bodies (`virt_core::fuzzing`) on every committed seed (`fuzz/seeds/TARGET`),
//! on mutations of the seeds and on random bytes, so the stable test suite runs exactly what the
//! fuzzer runs. Crashes the fuzzer found stay here as regression seeds.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use virt_core::fuzzing;

#[path = "../../fuzz/support/seeds.rs"]
mod seedlib;
use seedlib::{mutated, seeds};

#[test]
fn every_seed_runs() {
    for (name, d) in seeds("virtio_blk") {
        eprintln!("virtio_blk {name}");
        fuzzing::virtio_blk(&d);
    }
    for (name, d) in seeds("kubevirt_manifest") {
        eprintln!("kubevirt_manifest {name}");
        fuzzing::kubevirt_manifest(&d);
    }
    for (name, d) in seeds("qmp_stream") {
        eprintln!("qmp_stream {name}");
        fuzzing::qmp_stream(&d);
    }
    for (name, d) in seeds("qga_reply") {
        eprintln!("qga_reply {name}");
        fuzzing::qga_reply(&d);
    }
    for (name, d) in seeds("launcher_control") {
        eprintln!("launcher_control {name}");
        fuzzing::launcher_control(&d);
    }
    for (name, d) in seeds("state_stream") {
        eprintln!("state_stream {name}");
        fuzzing::state_stream(&d);
    }
    for (name, d) in seeds("migration_stream") {
        eprintln!("migration_stream {name}");
        fuzzing::migration_stream(&d);
    }
}

/// The manifest seeds are objects the loader accepts, so the fuzzer starts past the parser.
#[test]
fn manifest_seeds_load() {
    for (name, d) in seeds("kubevirt_manifest") {
        let text = String::from_utf8(d).unwrap();
        let docs = if name.ends_with(".json") {
            vec![virt_core::model::load_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"))]
        } else {
            virt_core::model::load_yaml(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        assert!(!docs.is_empty(), "{name}");
    }
}

/// A guest agent's stream ends: every seed's poll and commands finish at once, none waits for
/// the 30 s command timeout the harness gives.
#[test]
fn qga_seeds_finish_without_waiting_for_timeouts() {
    for (name, d) in seeds("qga_reply") {
        let t = Instant::now();
        fuzzing::qga_reply(&d);
        assert!(t.elapsed() < Duration::from_secs(5), "{name} took {:?}", t.elapsed());
    }
}

/// Regression (found by `qmp_stream`): once QEMU had closed its end, every further command waited
/// for the whole command timeout (5 s here) instead of failing at once.
#[test]
fn qmp_commands_after_the_close_fail_at_once() {
    let d = seeds("qmp_stream").into_iter().find(|(n, _)| n == "greeting-only").unwrap().1;
    let t = Instant::now();
    fuzzing::qmp_stream(&d);
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
}

/// Regression (found by `virtio_blk`): with `VIRTIO_RING_F_EVENT_IDX`, a driver publishing an
/// available index more than the queue's size ahead made the worker spin forever (it could pop
/// nothing, yet "more requests" stayed true), so the device could not even be reset.
#[test]
fn virtio_blk_avail_index_far_ahead_does_not_spin() {
    let d = seeds("virtio_blk").into_iter().find(|(n, _)| n == "regression-avail-index-ahead").unwrap().1;
    let t = Instant::now();
    fuzzing::virtio_blk(&d);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn virtio_blk_never_panics(d in prop_oneof![mutated("virtio_blk"), proptest::collection::vec(any::<u8>(), 0..4096)]) {
        fuzzing::virtio_blk(&d);
    }

    #[test]
    fn kubevirt_manifest_never_panics(d in prop_oneof![mutated("kubevirt_manifest"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::kubevirt_manifest(&d);
    }

    #[test]
    fn qga_reply_never_panics(d in prop_oneof![mutated("qga_reply"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::qga_reply(&d);
    }

    #[test]
    fn qmp_stream_never_panics(d in prop_oneof![mutated("qmp_stream"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::qmp_stream(&d);
    }

    #[test]
    fn launcher_control_never_panics(d in prop_oneof![mutated("launcher_control"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::launcher_control(&d);
    }

    #[test]
    fn state_stream_never_panics(d in prop_oneof![mutated("state_stream"), proptest::collection::vec(any::<u8>(), 0..512)]) {
        fuzzing::state_stream(&d);
    }

    #[test]
    fn migration_stream_never_panics(d in prop_oneof![mutated("migration_stream"), proptest::collection::vec(any::<u8>(), 0..1024)]) {
        fuzzing::migration_stream(&d);
    }
}
