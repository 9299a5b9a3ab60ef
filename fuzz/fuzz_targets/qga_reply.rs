//! Fuzzes what a guest agent sends on its channel, read by the launcher's agent client.
//! The body is `virt_core::fuzzing::qga_reply`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_core::fuzzing::qga_reply(data));
