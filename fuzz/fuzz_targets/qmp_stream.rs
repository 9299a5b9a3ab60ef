//! Fuzzes what QEMU sends on the QMP socket, read by the QMP client.
//! The body is `virt_core::fuzzing::qmp_stream`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_core::fuzzing::qmp_stream(data));
