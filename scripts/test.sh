#!/usr/bin/env bash
# The project's test command (see README): formatting, lints, unit and integration tests (tiny guests
# on /dev/kvm, real qemu-img), then the nested end-to-end test that boots the stock Debian kernel with
# our virt-launcher inside an emulated L1 machine that has real KVM.
# Installs what it needs (Debian packages, guest assets) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --cloud-image
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Every fuzz target for 15 s on the stable toolchain (docs/fuzzing.md); a crash fails the run.
bash fuzz/run-stable.sh all 15

bash scripts/guest-assets.sh >/dev/null
cargo build --release -p virt-launcher
L2_VMM=virt VIRT_LAUNCHER="${CARGO_TARGET_DIR:-$PWD/target}/release/virt-launcher" bash scripts/nested/e2e.sh
