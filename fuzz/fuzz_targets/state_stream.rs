//! Fuzzes the native VMM's snapshot state file parser (versioned, checksummed sections). The body lives in
//! virt-core (`virt_core::fuzzing::state_stream`) so stable tests run the same code.
//!
//! Run with `fuzz/run-stable.sh state_stream SECONDS`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virt_core::fuzzing::state_stream(data);
});
