#!/usr/bin/env bash
# Live-migration benchmark (not a test): the same Linux guest (Debian kernel + the project's
# initramfs, a shell on ttyS0) migrated by our native VMM and by QEMU through the same seam
# (Machine::migrate_out / MachineBackend::start_incoming over a unix socket pair), interleaved in
# one run; prints medians of total time and downtime side by side and the ratio
# (virt-core/examples/migration_bench.rs). Needs root for /dev/kvm, qemu-system-x86_64, and the
# guest assets (scripts/guest-assets.sh, cached).
#
# usage: [RUNS=3] [MEMORY_MIB=512] [WORKLOAD=idle|dirty] [VMMS="native qemu"]
#        [BENCH_QEMU_CPU=qemu64] [BENCH_QEMU_ACCEL=kvm|tcg] bench/migration.sh
#   WORKLOAD=dirty starts `dd` over a tmpfs file of a quarter of the guest's memory in a loop
#   before each migration. A VMM whose guest does not come up is reported and not counted.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo build --release -q -p virt-core --example migration_bench
target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/examples/migration_bench" "${RUNS:-3}" "${MEMORY_MIB:-512}" "${WORKLOAD:-idle}"
