//! Fuzzes request bodies of the node's REST API, decoded and applied to a lifecycle.
//! The body is `virt_k8s::fuzzing::rest_body`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_k8s::fuzzing::rest_body(data));
