#!/usr/bin/env bash
# Clone-time benchmark of what the cluster's clone pods run (virt-storage's
# format::sparse::clone_file) beside `cp --sparse=always` and a stream of every byte (CDI's
# host-assisted clone), for a 1 GiB image mostly empty and one half full: on the file system of
# $DIR (default /var/tmp: ext4 here, no reflinks), then on an XFS (reflink=1) loop file system
# between two bind mounts of it (a clone pod's two volumes are two mounts of the node's storage
# directory). Needs root (loop and bind mounts). Prints one line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p virt-storage --example bench_clone_file
bin="${CARGO_TARGET_DIR:-target}/debug/examples/bench_clone_file"
work=$(mktemp -d "${DIR:-/var/tmp}/virt-clone-file.XXXXXX")
cleanup() {
  umount "$work/a" "$work/b" 2>/dev/null || true
  umount "$work/xfs" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/plain/src" "$work/plain/dst"
echo "== $(findmnt -no FSTYPE -T "$work") ($work)"
"$bin" "$work/plain/src" "$work/plain/dst"
mkdir "$work/xfs" "$work/a" "$work/b"
truncate -s 4G "$work/xfs.img"
mkfs.xfs -q -m reflink=1 "$work/xfs.img"
mount -o loop "$work/xfs.img" "$work/xfs"
mkdir "$work/xfs/pvc-src" "$work/xfs/pvc-dst"
mount --bind "$work/xfs/pvc-src" "$work/a"
mount --bind "$work/xfs/pvc-dst" "$work/b"
echo "== xfs reflink=1, two bind mounts (as a clone pod's volumes)"
"$bin" "$work/a" "$work/b"
