#!/usr/bin/env bash
# Coverage-guided fuzzing of a target on the STABLE toolchain (no nightly, no AddressSanitizer):
# the same SanitizerCoverage flags cargo-fuzz passes, minus -Zsanitizer. Safe Rust needs no ASan to
# find panics, overflows (debug assertions are on), hangs and runaway allocations (-rss_limit_mb).
# `--target` keeps the flags off build scripts and proc macros.
#
#   fuzz/run-stable.sh [TARGET] [SECONDS]      e.g. fuzz/run-stable.sh qcow2_open 600
set -euo pipefail
cd "$(dirname "$0")"
target=${1:-qcow2_open}
secs=${2:-300}
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
CARGO_TARGET_DIR=target/stable cargo build --release --target "$triple" --bin "$target"
mkdir -p "corpus/$target" artifacts
cp -n "seeds/$target"/* "corpus/$target/" 2>/dev/null || true
exec "target/stable/$triple/release/$target" "corpus/$target" -artifact_prefix=artifacts/ \
  -max_total_time="$secs" -max_len=65536 -rss_limit_mb=1024 -timeout=10
