#!/usr/bin/env bash
# Boot-time benchmark (not a test): in ONE nested-KVM L1 boot (scripts/nested/run.sh), boots the same
# L2 guest several times with each L2 VMM and reports medians. The guest is the Debian kernel + test
# initramfs with `virt.bench=1`: its /init prints `VIRT-E2E: userspace up <uptime>` and powers off.
#
# VMMs (each: 2 vCPUs, 256 MiB, same initramfs, same cmdline, two virtio-blk disks; see
# scripts/nested/lib/l2-vmm.sh for the exact command lines):
#   qemu-bzImage  QEMU microvm given the bzImage (firmware + the kernel's own decompressor)
#   qemu-vmlinux  QEMU microvm given the uncompressed vmlinux (entered by PVH; extracted on the host)
#   virt          our virt-launcher given the bzImage (when VIRT_LAUNCHER=<host path> is set)
# Figures per run, measured in L1: launch-to-exit (L1 uptime around the VMM process) and
# userspace-at (L2's own uptime at its first user-space line). Under TCG timings are emulated:
# only ratios measured side by side in the same L1 mean anything.
#
# usage: [RUNS=5] [WARMUP=1] [VMMS="qemu-bzImage qemu-vmlinux virt"] [VIRT_LAUNCHER=path]
#        [L1_SMP=1] [QEMU_MICROVM_OPTS=...] bench/boot.sh
#   WARMUP runs per VMM are made first and not counted (the host's TCG translates L1's KVM and VMM
#   code paths on first use). Runs are interleaved (round-robin over the VMMs) so drift in the
#   host's load touches every VMM alike.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nested=$root/scripts/nested
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
RUNS=${RUNS:-5}
WARMUP=${WARMUP:-1}
CMDLINE="console=ttyS0 quiet panic=-1 virt.bench=1"
export L1_SMP=${L1_SMP:-1}

if [ -z "${VMMS:-}" ]; then
  VMMS="qemu-bzImage qemu-vmlinux"
  [ -n "${VIRT_LAUNCHER:-}" ] && VMMS="$VMMS virt"
fi
# The guest assets first (cached): KERNEL=... INITRAMFS=... for what follows.
eval "$("$root/scripts/guest-assets.sh" --print-env)"
files=(--file "$nested/lib/l2-vmm.sh:/lib/l2-vmm.sh")
for v in $VMMS; do
  case "$v" in
    qemu-bzImage|qemu-vmlinux) ;;
    virt)
      [ -n "${VIRT_LAUNCHER:-}" ] && [ -x "$VIRT_LAUNCHER" ] \
        || { echo "bench: VMM virt needs VIRT_LAUNCHER=<executable virt-launcher>" >&2; exit 2; }
      files+=(--file "$VIRT_LAUNCHER:/payload/virt-launcher")
    # Decompress the bzImage once on the host, as a node would before its first boot.
    vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$CACHE/guest/vmlinuz" --kernel-cache "$CACHE/kernels")
    files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
      ;;
    *) echo "bench: unknown VMM $v (qemu-bzImage, qemu-vmlinux, virt)" >&2; exit 2 ;;
  esac
done

case " $VMMS " in
  *" qemu-vmlinux "*)
    vmlinux=$CACHE/guest/vmlinux
    if [ ! -s "$vmlinux" ] || [ "$KERNEL" -nt "$vmlinux" ]; then
      python3 "$nested/lib/extract-vmlinux.py" "$KERNEL" "$vmlinux"
    fi
    files+=(--file "$vmlinux:/l2/vmlinux")
    ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/bench-in-l1.sh" <<'L1'
. /lib/l2-vmm.sh
l2_make_disks
fails=0
i=1
total=$((WARMUP + RUNS))
while [ $i -le $total ]; do
  for v in $VMMS; do
    case "$v" in
      qemu-bzImage) vmm=qemu kernel=/l2/vmlinuz ;;
      qemu-vmlinux) vmm=qemu kernel=/l2/vmlinux ;;
      virt) vmm=virt kernel=/l2/vmlinuz ;;
    esac
    t0=$(l1_uptime)
    l2_run "$vmm" "$kernel" "$CMDLINE" > /tmp/l2.log 2>&1
    rc=$?
    t1=$(l1_uptime)
    ua=$(sed -n 's/.*VIRT-E2E: userspace up \([0-9.]*\).*/\1/p' /tmp/l2.log | head -n1)
    if [ $i -le "$WARMUP" ]; then kind=warmup; run=$i; else kind=run; run=$((i - WARMUP)); fi
    echo "BENCH: vmm=$v $kind=$run rc=$rc launch_to_exit=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') userspace_at=${ua:-none}"
    if [ "$rc" -ne 0 ] || [ -z "$ua" ]; then
      fails=$((fails + 1))
      echo "BENCH: $v run failed; last lines of its console:"
      tail -n 15 /tmp/l2.log | sed 's/^/  | /'
    fi
  done
  i=$((i + 1))
done
exit $fails
L1

nvmm=$(echo $VMMS | wc -w)
timeout=$(( (RUNS + WARMUP) * nvmm * 120 + 180 ))
mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/bench-boot-$(date +%Y%m%d-%H%M%S).log
echo "bench: VMMs: $VMMS; $RUNS runs (+$WARMUP warm-up) each; L1 ${L1_SMP} vCPU; cmdline: $CMDLINE" >&2
echo "bench: host load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
set +e
"$nested/run.sh" "${files[@]}" --env "VMMS=$VMMS" --env "RUNS=$RUNS" --env "WARMUP=$WARMUP" \
  --env "CMDLINE=$CMDLINE" ${QEMU_MICROVM_OPTS:+--env "QEMU_MICROVM_OPTS=$QEMU_MICROVM_OPTS"} \
  --timeout "$timeout" --log "$logf" --script "$work/bench-in-l1.sh" >&2
rc=$?
python3 - "$logf" $VMMS <<'PY'
import re, statistics, sys
logf, vmms = sys.argv[1], sys.argv[2:]
runs = {v: [] for v in vmms}
failed = {v: 0 for v in vmms}
pat = re.compile(r"^BENCH: vmm=(\S+) run=\d+ rc=(\d+) launch_to_exit=([\d.]+) userspace_at=(\S+)")
for line in open(logf, errors="replace"):
    m = pat.match(line)
    if not m or m.group(1) not in runs:
        continue
    if m.group(2) != "0" or m.group(4) == "none":
        failed[m.group(1)] += 1
        continue
    runs[m.group(1)].append((float(m.group(3)), float(m.group(4))))
med = {}
for v in vmms:
    if not runs[v]:
        print(f"boot {v}: no successful run ({failed[v]} failed)")
        continue
    le = [r[0] for r in runs[v]]
    ua = [r[1] for r in runs[v]]
    med[v] = statistics.median(le)
    extra = f", {failed[v]} failed" if failed[v] else ""
    print(f"boot {v}: launch-to-exit median {med[v]:.2f} s (runs: {', '.join(f'{x:.2f}' for x in le)}), "
          f"userspace-at median {statistics.median(ua):.2f} s (runs: {', '.join(f'{x:.2f}' for x in ua)}){extra}")
for a, b in (("qemu-vmlinux", "qemu-bzImage"), ("virt", "qemu-bzImage"), ("virt", "qemu-vmlinux")):
    if a in med and b in med:
        print(f"ratio {a}/{b} launch-to-exit: {med[a] / med[b]:.2f}")
sys.exit(1 if any(failed.values()) or len(med) < len(vmms) else 0)
PY
prc=$?
set -e
echo "bench: log $logf" >&2
[ "$rc" -eq 0 ] && exit "$prc"
echo "bench: the L1 run ended with exit $rc" >&2
exit 1
