//! Fuzzes the native VMM's live-migration stream as a destination parses it (hello, config, memory batches, state). The body lives in
//! virt-core (`virt_core::fuzzing::migration_stream`) so stable tests run the same code.
//!
//! Run with `fuzz/run-stable.sh migration_stream SECONDS`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virt_core::fuzzing::migration_stream(data);
});
