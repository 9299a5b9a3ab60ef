//! Fuzzes virtio-net's queue processing: the input is guest memory (descriptor tables, rings and
//! buffers) plus a few control bytes choosing features and backend frames. The body lives in
//! virt-core (`vmm::devices::virtio::fuzzing::virtio_net`) so the stable property tests run exactly
//! the same code.
//!
//! Run with `cargo +nightly fuzz run virtio_net` from `fuzz/`, or `fuzz/run-stable.sh virtio_net`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virt_core::vmm::devices::virtio::fuzzing::virtio_net(data);
});
