#!/usr/bin/env bash
# Live-migration benchmark in the nested harness (not a test): bench/migration.sh's side-by-side run
# (virt-core/examples/migration_bench.rs: the same Linux guest, Debian kernel + the project's
# initramfs shell, migrated by our native VMM and by QEMU through the same seam over a unix socket
# pair, interleaved) inside ONE boot of the nested-KVM L1 machine (scripts/nested/run.sh), where
# both VMMs get a real KVM that runs Linux guests. This machine's own /dev/kvm does not (see
# docs/migration.md), which is why bench/migration.sh produces no figures here.
#
# Both VMMs run the same kernel and initramfs with the same memory; QEMU runs its default q35
# machine (SeaBIOS, kernel boot) with `-cpu host` unless BENCH_QEMU_CPU says otherwise, ours its
# virtio-mmio microVM. Downtime is what each reports: ours from the source's pause to the
# destination told to run, QEMU's `query-migrate` `downtime` (whole milliseconds, from its final
# stop to the end of the transfer). Timings inside L1 are emulated (TCG): only the ratio means
# anything.
#
# usage: [RUNS=3] [MEMORY_MIB=512] [WORKLOAD=idle|dirty] [VMMS="native qemu"] [BENCH_QEMU_CPU=host]
#        [L1_MEM=3072] bench/migration-nested.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
RUNS=${RUNS:-3}
MEMORY_MIB=${MEMORY_MIB:-512}
WORKLOAD=${WORKLOAD:-idle}
VMMS=${VMMS:-native qemu}
L1_MEM=${L1_MEM:-$((MEMORY_MIB * 2 + 1536))}

export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
echo "bench: building the release example migration_bench" >&2
cargo build --release -q -p virt-core --example migration_bench
bench_bin=${CARGO_TARGET_DIR:-$root/target}/release/examples/migration_bench
eval "$(bash scripts/guest-assets.sh --print-env)"

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-bench-mig.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/bench-in-l1.sh" <<'L1'
[ -c /dev/kvm ] || { echo "L1: no /dev/kvm"; exit 1; }
export VIRT_GUEST_KERNEL=/l2/vmlinuz VIRT_GUEST_INITRAMFS=/l2/initramfs.cpio.gz
echo "L1: migration_bench $RUNS runs, $MEMORY_MIB MiB, $WORKLOAD, VMMs: $VMMS"
# L1's /bin/sh is busybox (no PIPESTATUS): the exit code goes through a file.
{ /payload/migration_bench "$RUNS" "$MEMORY_MIB" "$WORKLOAD"; echo $? > /tmp/bench.rc; } 2>&1 | sed 's/^/BENCH: /'
exit "$(cat /tmp/bench.rc)"
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/bench-migration-$(date +%Y%m%d-%H%M%S).log
timeout=$(( RUNS * 2 * (300 + MEMORY_MIB / 2) + 300 ))
echo "bench: host load average: $(cut -d' ' -f1-3 /proc/loadavg); L1 ${L1_MEM} MiB; log $logf" >&2
set +e
scripts/nested/run.sh --file "$bench_bin:/payload/migration_bench" \
  --env "RUNS=$RUNS" --env "MEMORY_MIB=$MEMORY_MIB" --env "WORKLOAD=$WORKLOAD" --env "VMMS=$VMMS" \
  --env "BENCH_QEMU_CPU=${BENCH_QEMU_CPU:-host}" \
  --mem "$L1_MEM" --timeout "$timeout" --log "$logf" --script "$work/bench-in-l1.sh" >&2
rc=$?
set -e
# The table and the ratio, as the example printed them in L1.
sed -n 's/\r$//; s/^BENCH: //p' "$logf" | grep -E '^(\||[0-9]+ MiB guest|native / QEMU|run [0-9])' || true
echo "bench: log $logf" >&2
exit "$rc"
