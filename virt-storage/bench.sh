#!/usr/bin/env bash
# Benchmarks qcow2 -> raw conversion (ours vs qemu-img) on a 1 GiB image of random data.
# Usage: virt-storage/bench.sh [--size-mib N] [--runs N] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p virt-storage --example bench_convert
exec target/release/examples/bench_convert "$@"
