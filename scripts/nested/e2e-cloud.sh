#!/usr/bin/env bash
# End-to-end test of the project's Debian 12 cloud image (scripts/cloud-image.sh) on our native VMM,
# inside the nested-KVM L1 machine (scripts/nested/run.sh). Our launcher, supervised and jailed as
# the node runs it, boots the image by kernel boot: the image's own vmlinuz + initrd.img, root=
# LABEL=debian-root (its root partition, on a virtio-blk qcow2 overlay of the image), a NoCloud seed
# (cidata: an SSH key for `debian`, a static 10.0.2.2/24 on the NIC), one virtio-net NIC on a tap in
# L1 (tap0, 10.0.2.1/24), the guest agent's virtio-console port (org.qemu.guest_agent.0); 1 vCPU,
# 1024 MiB (lib/l2-cloud.sh). Then, from L1: the launcher's agent client reports the agent
# connected and its guest-get-osinfo names Debian 12 (control.sock `guestAgent`); ssh logs in with
# the key over the tap and runs a command; SIGTERM to the launcher shuts the guest down gracefully
# (through the agent) and the launcher exits 0 with exit.json "PowerOff".
# Checks are printed as numbered `ok N - ...` / `FAIL N - ...` lines, then `N passed, M failed`; the
# exit code is non-zero on any failure.
#
# usage: VIRT_LAUNCHER=path/to/release/virt-launcher scripts/nested/e2e-cloud.sh
#   CLOUD_WAIT    seconds of L1 time to wait for the agent, then for ssh (default 400)
#   CLOUD_CMDLINE the guest command line (default lib/l2-cloud.sh's)
#   L1_MEM        L1 memory in MiB (default 3584: the image, its overlay and a 1 GiB guest in RAM)
#   L1_SMP, E2E_TIMEOUT (default 1500): see scripts/nested/run.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
MAC=52:54:00:12:34:56
CLOUD_WAIT=${CLOUD_WAIT:-400}

[ -n "${VIRT_LAUNCHER:-}" ] || { echo "e2e-cloud: needs VIRT_LAUNCHER=<path to virt-launcher>" >&2; exit 2; }
[ -x "$VIRT_LAUNCHER" ] || { echo "e2e-cloud: VIRT_LAUNCHER=$VIRT_LAUNCHER is not an executable file" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-e2e-cloud.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Image, seed, key and the L1 file list (sets CLOUD_FILES).
. "$here/lib/cloud-assets.sh"
cloud_assets "$work" "$MAC"
files=("${CLOUD_FILES[@]}" --file "$VIRT_LAUNCHER:/payload/virt-launcher")
# Decompress the bzImage on the host when the launcher can (PVH boot); Debian's cloud kernel is
# LZ4-compressed, which it cannot: the guest then decompresses its kernel (the 64-bit boot protocol).
if vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$CLOUD_KERNEL" --kernel-cache "$CACHE/kernels" 2>/dev/null) \
   && [ -n "$vml" ]; then
  files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
fi

cat > "$work/run-in-l1.sh" <<'L1'
. /lib/l2-vmm.sh
. /lib/l2-cloud.sh
cloud_l1_setup
l1_tap_up || exit 1
echo "L1: booting the cloud image on virt: $CLOUD_CMDLINE"
fail=0
cloud_start virt || exit 1
cloud_wait_agent virt "$CLOUD_WAIT" || fail=1
if cloud_wait_ssh virt "$CLOUD_WAIT"; then
  # Where the guest's boot spent its time (for the record; not a check).
  cloud_ssh 'sudo journalctl -b -o short-monotonic --no-pager | grep -E "Linux version|Switching root|Reached target|Timed out|start job|Startup finished|Started (ssh|qemu-guest-agent|cloud-init)" | head -n 40' \
    2>&1 | sed 's/^/L1: guest journal: /'
else
  fail=1
fi
cloud_stop virt 180
rc=$?
cloud_dump virt
[ "$fail" = 0 ] || exit 1
exit $rc
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/e2e-cloud-$(date +%Y%m%d-%H%M%S).log
set +e
"$here/run.sh" "${files[@]}" --env "L2_MAC=$MAC" --env "CLOUD_WAIT=$CLOUD_WAIT" \
  ${CLOUD_CMDLINE:+--env "CLOUD_CMDLINE=$CLOUD_CMDLINE"} --mem "${L1_MEM:-3584}" \
  --timeout "${E2E_TIMEOUT:-1500}" --log "$logf" --script "$work/run-in-l1.sh"
run_rc=$?
set -e

n=0 passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  n=$((n + 1))
  if "$@"; then echo "ok $n - $what"; passed=$((passed + 1)); else echo "FAIL $n - $what"; failed=$((failed + 1)); fi
}
has() { grep -qF -- "$1" "$logf"; }
hasre() { grep -qE -- "$1" "$logf"; }
echo
echo "e2e-cloud (virt): checks on $logf"
check "L1 made tap0 (L1: tap0 up)" has "L1: tap0 up 10.0.2.1/24"
check "the launcher ran the machine on the native VMM with KVM" has "machine cloud runs on native (Kvm"
check "the guest agent answered: the launcher's client reports it connected" \
  hasre '^L1: cloud virt agent answered after [0-9.]+ s: .*"connected":true'
check "guest-get-osinfo names Debian 12 (\"prettyName\":\"Debian GNU/Linux 12 (bookworm)\")" \
  hasre '^L1: cloud virt agent answered .*Debian GNU/Linux 12'
check "ssh logged in as debian with the seed's key over the tap and ran a command on Debian 12" \
  hasre '^L1: cloud virt ssh login after [0-9.]+ s: ssh-ok user=debian Debian GNU/Linux 12'
check "the guest shut down gracefully (reboot: Power down on its console)" has "L1: cloud virt guest console: reboot: Power down"
check "exit.json says the guest powered off (L1: exit.json \"PowerOff\")" has 'L1: exit.json "PowerOff"'
check "the launcher exited 0 (L1: cloud virt exit=0)" has "L1: cloud virt exit=0 "
check "the L1 run ended with exit 0 (run.sh exit $run_rc)" test "$run_rc" -eq 0
grep -E "^L1: cloud virt (agent answered|ssh login|exit=)" "$logf" | sed -e 's/^L1: /e2e-cloud: /' -e 's/: {.*//' || true
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
