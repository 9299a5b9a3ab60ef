//! Fuzzes requests on a launcher's control socket, and the answers the node reads back.
//! The body is `virt_core::fuzzing::launcher_control`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_core::fuzzing::launcher_control(data));
