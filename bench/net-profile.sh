#!/usr/bin/env bash
# Where the CPU goes during a guest-to-host iperf3 (not a test, not a benchmark of record): in ONE
# nested-KVM L1 boot (scripts/nested/run.sh), for each VMM of $VMMS (as bench/net-throughput.sh:
# virt, virt-vhost, qemu, qemu-vhost; scripts/nested/lib/l2-vmm.sh), boots the guest with one
# iperf3 server and runs `iperf3 -c 10.0.2.2 -t SECS -R` (the guest transmits) in L1, printing
#   PROFILE <vmm>: iperf3 ...           iperf3's per-second and summary lines
#   PROFILE <vmm>:   <ticks> <pid>/task/<tid> <comm> u=.. s=.. g=..
#                                       the L1 threads that ran during the test (1/100 s ticks:
#                                       user, system, and the guest time inside user)
#   PROFILE <vmm>: kvm: exits=.. mmio_exits=.. irq_injections=.. ...
#                                       L1 KVM's counters (debugfs, all VMs: one runs at a time)
#   PROFILE <vmm>: tap0 rx_packets=.. rx_bytes=..    the frames the guest sent (bytes/packets: GSO)
#   PROFILE <vmm>: guest: ...            the guest's interface and TCP counters
# L1 has one vCPU: the L2 vCPUs, vhost's worker and the VMM's threads share it, so the thread
# table says what a Mbit/s costs. Figures under TCG are emulation's: compare VMMs in one boot.
#
# usage: [VMMS="virt-vhost qemu-vhost"] [SECS=5] VIRT_LAUNCHER=path bench/net-profile.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nested=$root/scripts/nested
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
SECS=${SECS:-5}
VMMS=${VMMS:-virt-vhost qemu-vhost}
CMDLINE="console=ttyS0 quiet panic=-1 virt.net=iperf virt.net.iperf=1"
export L1_SMP=${L1_SMP:-1}
command -v iperf3 >/dev/null 2>&1 || { echo "profile: iperf3 not installed (scripts/install-deps.sh)" >&2; exit 2; }
eval "$("$root/scripts/guest-assets.sh" --net --print-env)"
files=(--file "$nested/lib/l2-vmm.sh:/lib/l2-vmm.sh" --file "$(command -v iperf3):/payload/iperf3"
       --file "$INITRAMFS_NET:/l2/initramfs-net.cpio.gz")
case " $VMMS " in
  *" virt "*|*" virt-vhost "*)
    [ -n "${VIRT_LAUNCHER:-}" ] && [ -x "$VIRT_LAUNCHER" ] \
      || { echo "profile: VMMs virt and virt-vhost need VIRT_LAUNCHER=<executable virt-launcher>" >&2; exit 2; }
    files+=(--file "$VIRT_LAUNCHER:/payload/virt-launcher")
    vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$KERNEL" --kernel-cache "$CACHE/kernels")
    files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
    ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-profile-net.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/profile-in-l1.sh" <<'L1'
L2_INITRAMFS=/l2/initramfs-net.cpio.gz
. /lib/l2-vmm.sh
l1_tap_up || exit 1
mount -t debugfs none /sys/kernel/debug 2>/dev/null
# One line per L1 thread: <pid>/task/<tid> <comm> <user+system> <user> <system> <guest> (ticks).
snap_tasks() {
  for t in /proc/[0-9]*/task/[0-9]*; do
    s=$(cat "$t/stat" 2>/dev/null) || continue
    c=${s#*(}; c=${c%%)*}
    set -- ${s##*) }
    eval "u=\${12} st=\${13} g=\${41}"
    echo "${t#/proc/} $c $((u + st)) $u $st $g"
  done
}
snap_kvm() {
  d=/sys/kernel/debug/kvm
  for f in exits mmio_exits io_exits halt_exits halt_successful_poll halt_wakeup irq_injections \
    irq_exits irq_window_exits req_event signal_exits; do
    [ -f "$d/$f" ] && echo "$f $(cat "$d/$f")"
  done
}
snap_tap() { for f in rx_packets rx_bytes tx_packets tx_bytes; do echo "$f $(cat "/sys/class/net/$L2_TAP/statistics/$f")"; done; }
diffkv() { awk 'NR == FNR { a[$1] = $2; next } { printf "%s=%d ", $1, $2 - a[$1] } END { print "" }' "$1" "$2"; }
for v in $VMMS; do
  l2_net_start "$v" /l2/vmlinuz "$CMDLINE" || continue
  if ! l1_wait_console "VIRT-E2E: iperf3 server 1 start" 120; then
    echo "PROFILE $v: the guest's iperf3 server did not start"
    l2_net_stop 10 | sed "s/^/PROFILE $v: /"
    continue
  fi
  sleep 1
  snap_tasks > /tmp/t0; snap_kvm > /tmp/k0; snap_tap > /tmp/n0
  iperf3 -c "${L2_ADDR:-10.0.2.2}" -t "$SECS" -f m -R > /tmp/iperf3.last 2>&1
  snap_tasks > /tmp/t1; snap_kvm > /tmp/k1; snap_tap > /tmp/n1
  grep -E 'sec|receiver|sender|error' /tmp/iperf3.last | sed "s/^/PROFILE $v: iperf3 /"
  awk 'NR == FNR { a[$1] = $3; u[$1] = $4; s[$1] = $5; g[$1] = $6; next }
       { d = $3 - a[$1]; if (d > 0) printf "%d %s %s u=%d s=%d g=%d\n", d, $1, $2, $4 - u[$1], $5 - s[$1], $6 - g[$1] }' \
    /tmp/t0 /tmp/t1 | sort -rn | head -12 | sed "s/^/PROFILE $v:   /"
  echo "PROFILE $v: kvm: $(diffkv /tmp/k0 /tmp/k1)"
  echo "PROFILE $v: $L2_TAP $(diffkv /tmp/n0 /tmp/n1)"
  case "$v" in virt*) grep -h "virtio-net" /l2/run-net/launcher.log | sed "s/^/PROFILE $v: launcher: /" ;; esac
  l2_net_stop 60 > /tmp/l2.log 2>&1
  grep -E "VIRT-E2E: net stats|VIRT-E2E: net snmp" /tmp/l2.log | sed "s/^/PROFILE $v: guest: /"
done
exit 0
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/profile-net-$(date +%Y%m%d-%H%M%S).log
echo "profile: VMMs: $VMMS; iperf3 -R -t $SECS; host load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
rc=0
"$nested/run.sh" "${files[@]}" --env "VMMS=$VMMS" --env "SECS=$SECS" --env "CMDLINE=$CMDLINE" \
  --timeout $(( $(echo $VMMS | wc -w) * (200 + SECS) + 180 )) --log "$logf" \
  --script "$work/profile-in-l1.sh" > /dev/null 2>&1 || rc=$?
grep -a '^PROFILE ' "$logf" || true
echo "profile: log $logf" >&2
exit "$rc"
