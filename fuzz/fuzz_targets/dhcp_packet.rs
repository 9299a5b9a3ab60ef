//! Fuzzes the per-VMI DHCP server's packet handling (what any guest may send to port 67): the
//! body lives in virt-net (`virt_net::fuzzing::dhcp_packet`) so the stable property tests run
//! exactly the same code.
//!
//! Run with `cargo +nightly fuzz run dhcp_packet` from `fuzz/`, or `fuzz/run-stable.sh dhcp_packet`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    virt_net::fuzzing::dhcp_packet(data);
});
