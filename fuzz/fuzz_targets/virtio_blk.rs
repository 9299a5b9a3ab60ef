//! Fuzzes virtqueue descriptor chains and virtio-blk requests: the guest memory, rings and queue set-up come from the input.
//! The body is `virt_core::fuzzing::virtio_blk`, which the stable property tests run as well.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| virt_core::fuzzing::virtio_blk(data));
