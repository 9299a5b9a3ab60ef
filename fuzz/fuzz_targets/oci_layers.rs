//! Fuzzes image layer tarballs (plain, gzip, zstd) extracted as a containerDisk or kernel image.
//! The body is `virt_storage::fuzzing::oci_layers`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_storage::fuzzing::oci_layers(data));
