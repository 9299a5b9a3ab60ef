#!/usr/bin/env bash
# Network throughput benchmark (not a test): in ONE nested-KVM L1 boot (scripts/nested/run.sh),
# guest<->host TCP throughput (iperf3) through a virtio-net NIC on the same tap (tap0, 10.0.2.1/24 in
# L1, the guest static 10.0.2.2/24), our VMM against QEMU's, runs interleaved round-robin so drift in
# the host's load touches every VMM alike. Each run boots the guest (Debian kernel + test initramfs
# with iperf3, `virt.net=iperf virt.net.iperf=2`; 2 vCPUs, 256 MiB, no disk), then L1 runs
# `iperf3 -c 10.0.2.2 -t SECS` (host-to-guest: the guest receives) and `-R` (guest-to-host).
#
# VMMs (scripts/nested/lib/l2-vmm.sh, l2_net_start, for the exact command lines):
#   virt        our virt-launcher, supervised and jailed, the NIC from the spec's `interfaces`
#               with the VMM's userspace data path ("vhost": "off"; when VIRT_LAUNCHER is set)
#   virt-vhost  the same with "vhost": "on": the kernel's vhost-net moves the frames
#   qemu        QEMU microvm, -netdev tap,vhost=off + virtio-net-device (virtio-mmio, as ours)
#   qemu-vhost  the same with vhost=on (/dev/vhost-net in L1: the vhost_net module)
# Output: `BENCH: vmm=V run=N dir=D mbps=X retr=R tap_drops=K` lines in the log, then per VMM and
# direction the median Mbit/s (iperf3's receiver figure) and the ratios of ours to each QEMU.
# Under TCG the absolute figures are emulated and noisy: only ratios measured side by side in the
# same L1 mean anything.
#
# usage: [RUNS=3] [WARMUP=1] [SECS=5] [VMMS="virt virt-vhost qemu qemu-vhost"] [VIRT_LAUNCHER=path]
#        [L1_SMP=1] bench/net-throughput.sh
#   WARMUP runs per VMM are made first and not counted.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nested=$root/scripts/nested
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
SECS=${SECS:-5}
CMDLINE="console=ttyS0 quiet panic=-1 virt.net=iperf virt.net.iperf=2"
export L1_SMP=${L1_SMP:-1}

if [ -z "${VMMS:-}" ]; then
  VMMS="qemu qemu-vhost"
  [ -n "${VIRT_LAUNCHER:-}" ] && VMMS="virt virt-vhost $VMMS"
fi
if ! command -v iperf3 >/dev/null 2>&1; then
  echo "bench: iperf3 missing: running scripts/install-deps.sh" >&2
  "$root/scripts/install-deps.sh" >&2
fi
command -v iperf3 >/dev/null 2>&1 || { echo "bench: iperf3 not installed (scripts/install-deps.sh)" >&2; exit 2; }
eval "$("$root/scripts/guest-assets.sh" --net --print-env)"
files=(--file "$nested/lib/l2-vmm.sh:/lib/l2-vmm.sh" --file "$(command -v iperf3):/payload/iperf3"
       --file "$INITRAMFS_NET:/l2/initramfs-net.cpio.gz")
for v in $VMMS; do
  case "$v" in
    qemu|qemu-vhost) ;;
    virt|virt-vhost)
      # Shipped once for both.
      case " ${files[*]} " in *" $VIRT_LAUNCHER:/payload/virt-launcher "*) continue ;; esac
      [ -n "${VIRT_LAUNCHER:-}" ] && [ -x "$VIRT_LAUNCHER" ] \
        || { echo "bench: VMM $v needs VIRT_LAUNCHER=<executable virt-launcher>" >&2; exit 2; }
      files+=(--file "$VIRT_LAUNCHER:/payload/virt-launcher")
      vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$KERNEL" --kernel-cache "$CACHE/kernels")
      files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
      ;;
    *) echo "bench: unknown VMM $v (virt, virt-vhost, qemu, qemu-vhost)" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-bench-net.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/bench-in-l1.sh" <<'L1'
L2_INITRAMFS=/l2/initramfs-net.cpio.gz
. /lib/l2-vmm.sh
l1_tap_up || exit 1
echo "L1: /dev/vhost-net $([ -c /dev/vhost-net ] && echo present || echo missing)"
drops() { s=/sys/class/net/$L2_TAP/statistics; echo $(( $(cat $s/tx_dropped) + $(cat $s/rx_dropped) )); }
fails=0
i=1
total=$((WARMUP + RUNS))
while [ $i -le $total ]; do
  if [ $i -le "$WARMUP" ]; then kind=warmup; run=$i; else kind=run; run=$((i - WARMUP)); fi
  for v in $VMMS; do
    l2_net_start "$v" /l2/vmlinuz "$CMDLINE" || { fails=$((fails + 1)); continue; }
    for k in 1 2; do
      if ! l1_wait_console "VIRT-E2E: iperf3 server $k start" 120; then
        echo "BENCH: vmm=$v $kind=$run: the guest's iperf3 server $k did not start"
        fails=$((fails + 1))
        break
      fi
      rev=
      [ $k -eq 2 ] && rev=-R
      d0=$(drops)
      if out=$(l1_iperf3 "$v" "$SECS" $rev); then
        echo "BENCH: vmm=$v $kind=$run ${out#L1: iperf3 $v } tap_drops=$(( $(drops) - d0 ))"
      else
        echo "$out"
        fails=$((fails + 1))
      fi
    done
    l2_net_stop 60 > /tmp/l2.log 2>&1 || { fails=$((fails + 1)); echo "BENCH: vmm=$v $kind=$run: L2 exit failed"; tail -n 20 /tmp/l2.log; }
  done
  i=$((i + 1))
done
exit $fails
L1

nvmm=$(echo $VMMS | wc -w)
timeout=$(( (RUNS + WARMUP) * nvmm * (150 + 2 * SECS) + 180 ))
mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/bench-net-$(date +%Y%m%d-%H%M%S).log
echo "bench: VMMs: $VMMS; $RUNS runs (+$WARMUP warm-up) each, iperf3 -t $SECS each way; L1 ${L1_SMP} vCPU" >&2
echo "bench: host load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
set +e
"$nested/run.sh" "${files[@]}" --env "VMMS=$VMMS" --env "RUNS=$RUNS" --env "WARMUP=$WARMUP" \
  --env "SECS=$SECS" --env "CMDLINE=$CMDLINE" \
  --timeout "$timeout" --log "$logf" --script "$work/bench-in-l1.sh" >&2
rc=$?
python3 - "$logf" $VMMS <<'PY'
import re, statistics, sys
logf, vmms = sys.argv[1], sys.argv[2:]
dirs = ("host-to-guest", "guest-to-host")
runs = {(v, d): [] for v in vmms for d in dirs}
pat = re.compile(r"^BENCH: vmm=(\S+) run=\d+ dir=(\S+) mbps=([\d.]+) retr=(\S+) tap_drops=(\d+)")
for line in open(logf, errors="replace"):
    m = pat.match(line)
    if m and (m.group(1), m.group(2)) in runs:
        runs[(m.group(1), m.group(2))].append(float(m.group(3)))
med = {}
for d in dirs:
    for v in vmms:
        r = runs[(v, d)]
        if not r:
            print(f"net {d} {v}: no successful run")
            continue
        med[(v, d)] = statistics.median(r)
        print(f"net {d} {v}: median {med[(v, d)]:.1f} Mbit/s (runs: {', '.join(f'{x:.1f}' for x in r)})")
    for ours in ("virt", "virt-vhost"):
        for q in ("qemu", "qemu-vhost"):
            if (ours, d) in med and (q, d) in med and med[(q, d)] > 0:
                print(f"ratio {d} {ours}/{q}: {med[(ours, d)] / med[(q, d)]:.2f}")
sys.exit(0 if len(med) == len(runs) else 1)
PY
prc=$?
set -e
echo "bench: log $logf" >&2
[ "$rc" -eq 0 ] && exit "$prc"
echo "bench: the L1 run ended with exit $rc" >&2
exit 1
