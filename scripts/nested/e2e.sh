#!/usr/bin/env bash
# End-to-end test of an L2 VMM inside the nested-KVM L1 machine (scripts/nested/run.sh):
# the VMM boots the Debian kernel + test initramfs (scripts/guest-assets.sh) with `virt.e2e=1`,
# 2 vCPUs, 256 MiB, a read-only disk holding a signature (vda) and a read-write disk (vdb).
# The guest reads the signature, writes a line to vdb, fails to write vda and powers off; then L1
# reads vdb back. With our launcher the guest instead waits, after its checks, for the ACPI power
# button, which L1 presses through the supervised launcher; the guest must power off by itself.
# Checks are printed as `ok - ...` / `FAIL - ...`, then `N passed, M failed`; the exit code is
# non-zero on any failure.
#
# usage: [L2_VMM=qemu|virt] [VIRT_LAUNCHER=path/to/virt-launcher] scripts/nested/e2e.sh
#   L2_VMM        default: virt when VIRT_LAUNCHER is set, else qemu
#   L2_VMM=qemu   QEMU's microvm machine with KVM: proves the harness and the guest assets
#   L2_VMM=virt   our launcher, given by VIRT_LAUNCHER (a host path; shipped into L1 with its
#                 libraries), run supervised as the node runs it (lib/l2-vmm.sh, l2_run_button):
#                 virt-launcher --spec /l2/run/spec.json --run-dir /l2/run --backend native ...
#                 with `virt.exit=button` on the guest command line; when the guest says it waits
#                 for the power button, L1 sends the launcher SIGTERM (the node's graceful stop: the
#                 ACPI power button, then a forced stop after L2_GRACE s, default 60). Extra checks:
#                 the guest saw the button and powered off by itself, exit.json says "PowerOff",
#                 and the launcher ran fully jailed (own mount and pid namespaces, its own uid, a
#                 view without /etc: L1's root is its initramfs, so the jail's MS_MOVE + chroot
#                 fallback for pivot_root is what runs here).
#   VIRT_LAUNCHER_MODE=direct  our launcher's direct command line instead, no power button:
#                 virt-launcher --kernel /l2/vmlinuz --initramfs /l2/initramfs.cpio.gz \
#                   --cmdline "$CMDLINE" --memory 256 --cpus 2 --disk /l2/sig.img,readonly --disk /l2/rw.img
#   L2_CMDLINE_EXTRA  words appended to the guest command line (e.g. printk.time=1, or
#                 virt.exit=reboot for a VMM that has no ACPI power-off yet); the base is
#                 `console=ttyS0 quiet panic=-1 virt.e2e=1`
#   L1_SMP, L2_TIMEOUT, L2_GRACE, QEMU_MICROVM_OPTS: see scripts/nested/run.sh and lib/l2-vmm.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
if [ -n "${VIRT_LAUNCHER:-}" ]; then L2_VMM=${L2_VMM:-virt}; else L2_VMM=${L2_VMM:-qemu}; fi
VIRT_LAUNCHER_MODE=${VIRT_LAUNCHER_MODE:-supervised}
case "$VIRT_LAUNCHER_MODE" in
  supervised|direct) ;;
  *) echo "e2e: VIRT_LAUNCHER_MODE must be supervised or direct, not '$VIRT_LAUNCHER_MODE'" >&2; exit 2 ;;
esac
button=0
if [ "$L2_VMM" = virt ] && [ "$VIRT_LAUNCHER_MODE" = supervised ]; then button=1; fi
CMDLINE="console=ttyS0 quiet panic=-1 virt.e2e=1${L2_CMDLINE_EXTRA:+ $L2_CMDLINE_EXTRA}"
if [ "$button" -eq 1 ]; then CMDLINE="$CMDLINE virt.exit=button"; fi

# The guest assets first: the launcher's --prepare-kernel below reads the bzImage (cached, ~0 s).
"$here/../guest-assets.sh" >/dev/null

files=(--file "$here/lib/l2-vmm.sh:/lib/l2-vmm.sh")
case "$L2_VMM" in
  qemu) ;;
  virt)
    [ -n "${VIRT_LAUNCHER:-}" ] || { echo "e2e: L2_VMM=virt needs VIRT_LAUNCHER=<path to the virt-launcher binary>" >&2; exit 2; }
    [ -x "$VIRT_LAUNCHER" ] || { echo "e2e: VIRT_LAUNCHER=$VIRT_LAUNCHER is not an executable file" >&2; exit 2; }
    files+=(--file "$VIRT_LAUNCHER:/payload/virt-launcher")
    # Decompress the bzImage once on the host, as a node would before its first boot.
    vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$CACHE/guest/vmlinuz" --kernel-cache "$CACHE/kernels")
    files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
    ;;
  *) echo "e2e: L2_VMM must be qemu or virt, not '$L2_VMM'" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-e2e.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The script L1 runs as /run.sh (busybox sh). Its exit code is the VMM's.
cat > "$work/run-in-l1.sh" <<'L1'
. /lib/l2-vmm.sh
l2_make_disks
echo "L1: running L2 with $L2_VMM: $CMDLINE"
t0=$(l1_uptime)
if [ "$BUTTON" = 1 ]; then
  l2_run_button /l2/vmlinuz "$CMDLINE"
else
  l2_run "$L2_VMM" /l2/vmlinuz "$CMDLINE"
fi
rc=$?
t1=$(l1_uptime)
echo "L1: l2 vmm exit=$rc wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
echo "L1: vdb=$(head -c 32 /l2/rw.img | tr -d '\000\n')"
exit $rc
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/e2e-$L2_VMM-$(date +%Y%m%d-%H%M%S).log
set +e
"$here/run.sh" "${files[@]}" --env "L2_VMM=$L2_VMM" --env "CMDLINE=$CMDLINE" --env "BUTTON=$button" \
  ${L2_TIMEOUT:+--env "L2_TIMEOUT=$L2_TIMEOUT"} ${L2_GRACE:+--env "L2_GRACE=$L2_GRACE"} \
  ${QEMU_MICROVM_OPTS:+--env "QEMU_MICROVM_OPTS=$QEMU_MICROVM_OPTS"} \
  --timeout "${E2E_TIMEOUT:-600}" --log "$logf" --script "$work/run-in-l1.sh"
run_rc=$?
set -e

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then echo "ok - $what"; passed=$((passed + 1)); else echo "FAIL - $what"; failed=$((failed + 1)); fi
}
has() { grep -qF -- "$1" "$logf"; }
echo
echo "e2e ($L2_VMM): checks on $logf"
check "L2 reached user space (VIRT-E2E: userspace up)" has "VIRT-E2E: userspace up"
check "L2 sees 2 CPUs (cpus=2)" has "VIRT-E2E: cpus=2"
check "vda is the 1 MiB read-only disk (disk vda size=1048576 ro=1)" has "VIRT-E2E: disk vda size=1048576 ro=1"
check "vdb is the 2 MiB read-write disk (disk vdb size=2097152 ro=0)" has "VIRT-E2E: disk vdb size=2097152 ro=0"
check "L2 read the signature from vda (sig=VIRT-SIGNATURE-1)" has "VIRT-E2E: sig=VIRT-SIGNATURE-1"
check "L2 could not write the read-only vda (vda write refused)" has "VIRT-E2E: vda write refused"
written=$(sed -n 's/.*VIRT-E2E: wrote vdb \(VIRT-WRITTEN-[0-9.-]*\).*/\1/p' "$logf" | head -n1)
check "L2 wrote vdb (wrote vdb)" test -n "$written"
l1_view=$(sed -n 's/^L1: vdb=//p' "$logf" | tail -n1)
check "L1 reads back what L2 wrote to vdb (L1: vdb=${l1_view:-<nothing>})" test -n "$written" -a "$l1_view" = "$written"
check "L2 powered off (VIRT-E2E: poweroff)" grep -qE "VIRT-E2E: (poweroff|reboot) " "$logf"
if [ "$button" -eq 1 ]; then
  check "L2 waited for the power button (VIRT-E2E: waiting for the power button)" \
    has "VIRT-E2E: waiting for the power button"
  jail=$(grep -m1 '^L1: jailed launcher ' "$logf" || true)
  check "the launcher ran jailed: own mount and pid namespaces, not root, no /etc in view (${jail:-no jailed launcher})" \
    sh -c 'echo "$1" | grep -Eq "uid=[1-9][0-9]* mnt=own pidns=own root: " && ! echo "$1" | grep -q " etc "' _ "$jail"
  check "L1 pressed it (SIGTERM to the supervised launcher)" has "L1: power button pressed at "
  check "L2 saw the press and powered off by itself (VIRT-E2E: power button)" has "VIRT-E2E: power button"
  check "exit.json says the guest powered off (L1: exit.json \"PowerOff\")" has 'L1: exit.json "PowerOff"'
  p2e=$(sed -n 's/^L1: press-to-exit //p' "$logf" | tail -n1)
  if [ -n "$p2e" ]; then echo "power button: SIGTERM to launcher exit $p2e, seconds of L1 time"; fi
fi
check "the L2 VMM exited 0 (L1: l2 vmm exit=0)" has "L1: l2 vmm exit=0 "
check "the L1 run ended with exit 0 (run.sh exit $run_rc)" test "$run_rc" -eq 0
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
