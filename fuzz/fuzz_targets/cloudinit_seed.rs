//! Fuzzes cloud-init user data, network data and metadata into NoCloud and ConfigDrive images.
//! The body is `virt_storage::fuzzing::cloudinit_seed`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_storage::fuzzing::cloudinit_seed(data));
