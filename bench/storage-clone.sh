#!/usr/bin/env bash
# Clone benchmark: makes an XFS (reflink=1) loop file system, runs virt-storage's bench_clone example
# on it (reflink and overlay clones of 1-10 GiB volumes beside `cp --reflink=always` and
# `qemu-img create -b`; a host-assisted copy of a sparse 10 GiB volume beside `cp --sparse=always`),
# and removes it. Needs root (loop mount). Prints one line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release -q -p virt-storage --example bench_clone
work=$(mktemp -d "${TMPDIR:-/tmp}/virt-clone-bench.XXXXXX")
cleanup() { umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/mnt"
truncate -s 6G "$work/xfs.img"
mkfs.xfs -q -m reflink=1 "$work/xfs.img"
mount -o loop "$work/xfs.img" "$work/mnt"
"${CARGO_TARGET_DIR:-target}/release/examples/bench_clone" "$work/mnt"
