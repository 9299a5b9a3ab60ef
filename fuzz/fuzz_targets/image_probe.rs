//! Fuzzes image files: format detection, raw and qcow2 opening, compressed streams.
//! The body is `virt_storage::fuzzing::image_probe`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_storage::fuzzing::image_probe(data));
