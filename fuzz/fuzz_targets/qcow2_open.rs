//! Fuzzes the qcow2 reader: the input is an image file held in memory, opened read-only and
//! read-write, walked, read, checked and written to. The body lives in virt-storage
//! (`format::fuzzing::qcow2_open`) so the stable property tests run exactly the same code.
//!
//! Run with `cargo +nightly fuzz run qcow2_open` from `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virt_storage::format::fuzzing::qcow2_open(data);
});
