//! Fuzzes KubeVirt YAML/JSON documents: load, validate, admit, resolve instancetypes, build the machine and QEMU command line.
//! The body is `virt_core::fuzzing::kubevirt_manifest`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_core::fuzzing::kubevirt_manifest(data));
