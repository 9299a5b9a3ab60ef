//! Fuzzes CDI YAML/JSON documents: load, validate, round trip.
//! The body is `virt_storage::fuzzing::cdi_manifest`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_storage::fuzzing::cdi_manifest(data));
