#!/usr/bin/env bash
# The project's test command (see README): formatting, lints, unit and integration tests (tiny guests
# on /dev/kvm, real qemu-img), then the nested end-to-end test that boots the stock Debian kernel with
# our virt-launcher inside an emulated L1 machine that has real KVM.
# Installs what it needs (Debian packages, guest assets) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, printed when it ends and summed up at the end (CI has a time budget).
steps=()
step() {
  local t0=$SECONDS
  echo "== $*" >&2
  "$@"
  steps+=("$((SECONDS - t0)) s  $*")
  echo "== $((SECONDS - t0)) s: $*" >&2
}
trap 'printf "step times:\n"; printf "  %s\n" "${steps[@]}"' EXIT

step bash scripts/install-deps.sh --cloud-image
# Every tool the tests use is installed now (and this machine has /dev/kvm): a test that would skip
# for a missing tool or /dev/kvm fails instead (docs/testing.md).
export VIRT_TESTS_REQUIRE_TOOLS=1
step cargo fmt --all --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo test --workspace
# Every fuzz target for 15 s on the stable toolchain (docs/fuzzing.md); a crash fails the run.
step bash fuzz/run-stable.sh all 15

step bash scripts/guest-assets.sh >/dev/null
# The release binaries the nested tests ship into L1 (e2e-node-net.sh runs the node and virtctl too).
step cargo build --release -p virt-launcher -p virt-node -p virtctl
step env L2_VMM=virt VIRT_LAUNCHER="${CARGO_TARGET_DIR:-$PWD/target}/release/virt-launcher" bash scripts/nested/e2e.sh
# Our virtio-net against Linux's virtio_net driver on a tap in L1: MAC, ping both ways, TCP both ways.
step env L2_VMM=virt VIRT_LAUNCHER="${CARGO_TARGET_DIR:-$PWD/target}/release/virt-launcher" bash scripts/nested/e2e-net.sh
# The same with the kernel's vhost-net moving the frames (the spec's "vhost": "on").
step env L2_VMM=virt-vhost VIRT_LAUNCHER="${CARGO_TARGET_DIR:-$PWD/target}/release/virt-launcher" bash scripts/nested/e2e-net.sh
# The node itself in L1: virt-node --pod-network on the native VMM, a VM created with virtctl gets its
# address from the node's DHCP server, its TCP service answers through virtctl port-forward, and
# virtctl stop leaves no namespace, veth or tap behind.
step env VIRT_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/release" bash scripts/nested/e2e-node-net.sh
# The Debian cloud image by kernel boot on our launcher in L1: agent, ssh over a tap, graceful stop.
step env VIRT_LAUNCHER="${CARGO_TARGET_DIR:-$PWD/target}/release/virt-launcher" bash scripts/nested/e2e-cloud.sh
