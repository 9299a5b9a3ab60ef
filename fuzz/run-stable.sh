#!/usr/bin/env bash
# Coverage-guided fuzzing on the STABLE toolchain (no nightly, no AddressSanitizer): the same
# SanitizerCoverage flags cargo-fuzz passes, minus -Zsanitizer. Safe Rust needs no ASan to find
# panics, overflows (debug assertions are on), hangs and runaway allocations (-rss_limit_mb).
# `--target` keeps the flags off build scripts and proc macros. See docs/fuzzing.md.
#
#   fuzz/run-stable.sh TARGET [SECONDS]   one target, e.g. fuzz/run-stable.sh qcow2_open 600
#   fuzz/run-stable.sh all [SECONDS]      every target in fuzz_targets/ (built once), SECONDS each;
#                                         exits non-zero if any target crashed, printing the input
#
# The corpus of each target grows in fuzz/corpus/TARGET (not committed); the seeds committed in
# fuzz/seeds/TARGET start it. Crashing inputs land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:-qcow2_open}
secs=${2:-300}
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# Instrumented builds take long on 2 cores: keep them in a persistent directory (cargo rebuilds what
# changed), so later runs and CI on the same machine only rebuild what a change touched.
export CARGO_TARGET_DIR=${VIRT_FUZZ_TARGET_DIR:-/var/tmp/virt-rs-fuzz-target}
bin_dir="$CARGO_TARGET_DIR/$triple/release"
# -timeout: one input taking longer is a hang (a crash); -rss_limit_mb: so is a runaway allocation.
fuzz_args=(-max_len=65536 -rss_limit_mb=1024 -timeout=10 -print_final_stats=1)

prepare_corpus() {
  mkdir -p "corpus/$1" artifacts
  cp -n "seeds/$1"/* "corpus/$1/" 2>/dev/null || true
}

if [ "$target" != all ]; then
  cargo build --release --target "$triple" --bin "$target"
  prepare_corpus "$target"
  exec "$bin_dir/$target" "corpus/$target" -artifact_prefix=artifacts/ -max_total_time="$secs" "${fuzz_args[@]}"
fi

start=$(date +%s)
cargo build --release --target "$triple" --bins
built=$(date +%s)
echo "fuzz: built every target in $((built - start)) s"
failed=()
for src in fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  prepare_corpus "$t"
  log="artifacts/$t.log"
  rm -rf "artifacts/$t"; mkdir -p "artifacts/$t"
  set +e
  "$bin_dir/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" "${fuzz_args[@]}" \
    >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -1)
  edges=$(sed -n 's/^#[0-9]*.*cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc); the end of its log:"
    tail -n 40 "$log"
    for a in "artifacts/$t"/*; do
      [ -f "$a" ] || continue
      echo "fuzz: $t: input $a ($(stat -c %s "$a") bytes), base64:"
      head -c 4096 "$a" | base64 -w 100
    done
  else
    echo "fuzz: $t ok: ${runs:-?} runs in ${secs} s, ${edges:-?} coverage edges"
  fi
done
echo "fuzz: all targets took $(($(date +%s) - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (reproduce: $bin_dir/TARGET INPUT)"
  exit 1
fi
