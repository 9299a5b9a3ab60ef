//! Fuzzes OCI / Docker manifests and indexes, auth challenges and image references.
//! The body is `virt_storage::fuzzing::oci_manifest`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_storage::fuzzing::oci_manifest(data));
