#!/usr/bin/env bash
# End-to-end test of an L2 VMM's virtio-net against Linux's real virtio_net driver, inside the
# nested-KVM L1 machine (scripts/nested/run.sh). L1 makes a tap (tap0, 10.0.2.1/24, tun module);
# the L2 VMM boots the Debian kernel + the test initramfs with iperf3 appended
# (scripts/guest-assets.sh --net) with `virt.net=iperf virt.net.iperf=2`, 2 vCPUs, 256 MiB, no disk
# and one NIC on tap0 with MAC 52:54:00:12:34:56. The guest brings its NIC up with the STATIC address
# 10.0.2.2/24 (no DHCP), pings L1, and serves two iperf3 tests; L1 pings the guest, then runs
# `iperf3 -c 10.0.2.2 -t 2` (host to guest) and `-R` (guest to host), and the guest powers off.
# Checks are printed as `ok - ...` / `FAIL - ...`, then `N passed, M failed`; the exit code is
# non-zero on any failure (a missing tool, module or binary is a failure, not a skip).
#
# usage: [L2_VMM=virt|virt-vhost|qemu|qemu-vhost] [VIRT_LAUNCHER=path/to/virt-launcher] scripts/nested/e2e-net.sh
#   L2_VMM        default: virt when VIRT_LAUNCHER is set, else qemu
#   L2_VMM=virt   our launcher (VIRT_LAUNCHER, shipped into L1 with its libraries) run supervised and
#                 jailed as the node runs it, the NIC from the spec's `interfaces` (lib/l2-vmm.sh,
#                 l2_net_start) with the VMM's userspace data path ("vhost": "off");
#   L2_VMM=virt-vhost  the same with "vhost": "on": the kernel's vhost-net moves the frames (L1 has
#                 /dev/vhost-net) and the launcher's log must say so;
#                 `qemu` / `qemu-vhost`: QEMU's microvm with virtio-net-device on
#                 -netdev tap, vhost off / on (proves the harness)
#   NET_SECS      seconds per iperf3 test (default 2)
#   L1_SMP, E2E_TIMEOUT: see scripts/nested/run.sh and e2e.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
if [ -n "${VIRT_LAUNCHER:-}" ]; then L2_VMM=${L2_VMM:-virt}; else L2_VMM=${L2_VMM:-qemu}; fi
NET_SECS=${NET_SECS:-2}
MAC=52:54:00:12:34:56
CMDLINE="console=ttyS0 quiet panic=-1 virt.net=iperf virt.net.iperf=2"

# iperf3 on the host: shipped into L1 (the client) and, in the appended archive, into L2 (the server).
if ! command -v iperf3 >/dev/null 2>&1; then
  echo "e2e-net: iperf3 missing: running scripts/install-deps.sh" >&2
  "$here/../install-deps.sh" >&2
fi
command -v iperf3 >/dev/null 2>&1 || { echo "e2e-net: iperf3 not installed (scripts/install-deps.sh)" >&2; exit 2; }
eval "$("$here/../guest-assets.sh" --net --print-env)"
[ -s "${INITRAMFS_NET:-}" ] || { echo "e2e-net: guest-assets.sh --net made no initramfs-net.cpio.gz" >&2; exit 2; }

files=(--file "$here/lib/l2-vmm.sh:/lib/l2-vmm.sh" --file "$(command -v iperf3):/payload/iperf3"
       --file "$INITRAMFS_NET:/l2/initramfs-net.cpio.gz")
case "$L2_VMM" in
  qemu|qemu-vhost) ;;
  virt|virt-vhost)
    [ -n "${VIRT_LAUNCHER:-}" ] || { echo "e2e-net: L2_VMM=$L2_VMM needs VIRT_LAUNCHER=<path to virt-launcher>" >&2; exit 2; }
    [ -x "$VIRT_LAUNCHER" ] || { echo "e2e-net: VIRT_LAUNCHER=$VIRT_LAUNCHER is not an executable file" >&2; exit 2; }
    files+=(--file "$VIRT_LAUNCHER:/payload/virt-launcher")
    vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$KERNEL" --kernel-cache "$CACHE/kernels")
    files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
    ;;
  *) echo "e2e-net: L2_VMM must be virt, virt-vhost, qemu or qemu-vhost, not '$L2_VMM'" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-e2e-net.XXXXXX")
trap 'rm -rf "$work"' EXIT

cat > "$work/run-in-l1.sh" <<'L1'
L2_INITRAMFS=/l2/initramfs-net.cpio.gz
. /lib/l2-vmm.sh
l1_tap_up || exit 1
echo "L1: running L2 with $L2_VMM: $CMDLINE"
l2_net_start "$L2_VMM" /l2/vmlinuz "$CMDLINE" || exit 1
if l1_wait_console "VIRT-E2E: iperf3 server 1 start" 120; then
  if ping -c 2 -W 3 10.0.2.2 > /tmp/ping 2>&1; then echo "L1: ping 10.0.2.2 ok"; else echo "L1: ping 10.0.2.2 FAILED"; cat /tmp/ping; fi
  l1_iperf3 "$L2_VMM" "$NET_SECS"
  l1_wait_console "VIRT-E2E: iperf3 server 2 start" 30
  l1_iperf3 "$L2_VMM" "$NET_SECS" -R
else
  echo "L1: the guest never started its iperf3 server"
fi
l2_net_stop 60
rc=$?
case "$L2_VMM" in virt*) echo "L1: launcher log:"; sed 's/^/L1: launcher: /' /l2/run-net/launcher.log; echo "L1: exit.json $(cat /l2/run-net/exit.json 2>/dev/null)";; esac
exit $rc
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/e2e-net-$L2_VMM-$(date +%Y%m%d-%H%M%S).log
set +e
"$here/run.sh" "${files[@]}" --env "L2_VMM=$L2_VMM" --env "CMDLINE=$CMDLINE" --env "NET_SECS=$NET_SECS" \
  --env "L2_MAC=$MAC" --timeout "${E2E_TIMEOUT:-600}" --log "$logf" --script "$work/run-in-l1.sh"
run_rc=$?
set -e

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then echo "ok - $what"; passed=$((passed + 1)); else echo "FAIL - $what"; failed=$((failed + 1)); fi
}
has() { grep -qF -- "$1" "$logf"; }
hasre() { grep -qE -- "$1" "$logf"; }
echo
echo "e2e-net ($L2_VMM): checks on $logf"
check "L1 made tap0 (L1: tap0 up)" has "L1: tap0 up 10.0.2.1/24"
check "L2 reached user space" has "VIRT-E2E: userspace up"
check "L2's virtio_net driver bound a NIC with the spec's MAC (net dev eth0 mac=$MAC driver=virtio_net)" \
  has "VIRT-E2E: net dev eth0 mac=$MAC driver=virtio_net"
check "L2 brought eth0 up (VIRT-E2E: net up eth0 10.0.2.2/24)" has "VIRT-E2E: net up eth0 10.0.2.2/24"
check "L2 pinged L1 through the NIC (VIRT-E2E: ping 10.0.2.1 ok)" has "VIRT-E2E: ping 10.0.2.1 ok"
check "L1 pinged L2 (L1: ping 10.0.2.2 ok)" has "L1: ping 10.0.2.2 ok"
check "a TCP transfer host to guest completed (L1: iperf3 ... dir=host-to-guest mbps=N)" \
  hasre "^L1: iperf3 $L2_VMM dir=host-to-guest mbps=[0-9.]+ "
check "a TCP transfer guest to host completed (L1: iperf3 ... dir=guest-to-host mbps=N)" \
  hasre "^L1: iperf3 $L2_VMM dir=guest-to-host mbps=[0-9.]+ "
check "L2's iperf3 servers both ended 0" sh -c 'grep -qF "VIRT-E2E: iperf3 server 1 exit 0" "$1" && grep -qF "VIRT-E2E: iperf3 server 2 exit 0" "$1"' _ "$logf"
check "L2 powered off (VIRT-E2E: poweroff)" has "VIRT-E2E: poweroff "
case "$L2_VMM" in
  virt*) check "exit.json says the guest powered off" has 'L1: exit.json "PowerOff"' ;;
esac
case "$L2_VMM" in
  virt-vhost)
    check "vhost-net moved the frames (launcher: virtio-net ...: vhost-net moves the frames)" \
      hasre "^L1: launcher: .*virtio-net .*: vhost-net moves the frames"
    check "the launcher never fell back to the userspace path" \
      sh -c '! grep -qE "^L1: launcher: .*(userspace path|vhost-net cannot)" "$1"' _ "$logf"
    ;;
  virt)
    check "the userspace path moved the frames (no vhost-net in the launcher's log)" \
      sh -c '! grep -qE "^L1: launcher: .*vhost-net moves the frames" "$1"' _ "$logf"
    ;;
esac
check "the L2 VMM exited 0 (L1: l2 exit=0)" has "L1: l2 exit=0"
check "the L1 run ended with exit 0 (run.sh exit $run_rc)" test "$run_rc" -eq 0
grep -E "^L1: iperf3 " "$logf" | sed 's/^L1: /e2e-net: /' || true
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
