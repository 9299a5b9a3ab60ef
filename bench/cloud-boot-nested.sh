#!/usr/bin/env bash
# Cloud-image boot benchmark (not a test): in ONE nested-KVM L1 boot (scripts/nested/run.sh), boots
# the project's Debian 12 cloud image (scripts/cloud-image.sh) by kernel boot RUNS times with each
# L2 VMM, interleaved (the order alternates run by run), and prints medians, ours beside QEMU's and
# the ratio. The machine is the same for both (scripts/nested/lib/l2-cloud.sh): the image's vmlinuz
# + initrd.img, root=LABEL=debian-root on a fresh qcow2 overlay of the image (a first boot each
# time: cloud-init makes host keys, writes the key and the network), the NoCloud seed, one
# virtio-net NIC on tap0 in L1, the agent's port, 1 vCPU, 1024 MiB, all virtio-mmio:
#   virt  our launcher (VIRT_LAUNCHER), supervised and jailed, --backend native
#   qemu  QEMU's microvm with KVM (-M microvm, virtio-blk/net-device, virtio-serial-device)
# Per run, in L1 time from the VMM's launch: -> the guest agent answering, -> first SSH login
# (key auth, a command run), then the graceful stop (ours: SIGTERM to the launcher, which asks the
# agent; QEMU: guest-shutdown on the agent's socket) -> the VMM's exit.
# "Agent answering" for ours is the launcher's own client reporting it connected with the guest's
# OS (control.sock `guestAgent`, asked every 0.2 s; the client itself polls every 5 s, so ours
# carries up to ~5 s of polling delay); for QEMU, guest-ping on its socket every 0.2 s.
# Under TCG timings are emulated: only ratios measured side by side in the same L1 mean anything.
#
# usage: VIRT_LAUNCHER=path/to/release/virt-launcher [RUNS=3] [WARMUP=0] bench/cloud-boot-nested.sh
#   WARMUP  uncounted runs of each VMM first (default 0: a cloud boot is long enough that TCG's
#           first-use translation is noise)
#   CLOUD_WAIT (400), CLOUD_CMDLINE, L1_MEM (3584), L1_SMP (1): see scripts/nested/e2e-cloud.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nested=$root/scripts/nested
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-0}
CLOUD_WAIT=${CLOUD_WAIT:-400}
MAC=52:54:00:12:34:56

[ -n "${VIRT_LAUNCHER:-}" ] && [ -x "$VIRT_LAUNCHER" ] \
  || { echo "cloud-boot-nested: needs VIRT_LAUNCHER=<executable virt-launcher>" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-bench-cloud.XXXXXX")
trap 'rm -rf "$work"' EXIT
. "$nested/lib/cloud-assets.sh"
cloud_assets "$work" "$MAC"
files=("${CLOUD_FILES[@]}" --file "$VIRT_LAUNCHER:/payload/virt-launcher")
if vml=$("$VIRT_LAUNCHER" --prepare-kernel --kernel "$CLOUD_KERNEL" --kernel-cache "$CACHE/kernels" 2>/dev/null) \
   && [ -n "$vml" ]; then
  files+=(--file "$vml:/l2/kernels/$(basename "$vml")")
fi

cat > "$work/run-in-l1.sh" <<'L1'
. /lib/l2-vmm.sh
. /lib/l2-cloud.sh
cloud_l1_setup
l1_tap_up || exit 1
# one_run VMM LABEL: one boot; prints
#   BENCH: vmm=VMM run=LABEL agent=S ssh=S stop=S exit=RC
one_run() {
  cloud_start "$1" || return 1
  agent=- ssh=- stop=-
  if cloud_wait_agent "$1" "$CLOUD_WAIT" > /tmp/agent.line; then
    agent=$(sed -n 's/.* agent answered after \([0-9.]*\) s.*/\1/p' /tmp/agent.line)
  fi
  sed 's/: {.*/: .../' /tmp/agent.line
  if cloud_wait_ssh "$1" "$CLOUD_WAIT" > /tmp/ssh.line; then
    ssh=$(sed -n 's/.* ssh login after \([0-9.]*\) s.*/\1/p' /tmp/ssh.line)
  fi
  cat /tmp/ssh.line
  cloud_stop "$1" 180 > /tmp/stop.line
  rc=$?
  cat /tmp/stop.line
  stop=$(sed -n 's/.* stop-to-exit=\([0-9.]*\) s.*/\1/p' /tmp/stop.line)
  echo "BENCH: vmm=$1 run=$2 agent=$agent ssh=$ssh stop=${stop:--} exit=$rc"
  [ "$rc" = 0 ] || cloud_dump "$1"
}
i=1
while [ "$i" -le "$WARMUP" ]; do
  one_run virt "warmup$i"; one_run qemu "warmup$i"
  i=$((i + 1))
done
i=1
while [ "$i" -le "$RUNS" ]; do
  if [ $((i % 2)) = 1 ]; then one_run virt "$i"; one_run qemu "$i"; else one_run qemu "$i"; one_run virt "$i"; fi
  i=$((i + 1))
done
exit 0
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/bench-cloud-$(date +%Y%m%d-%H%M%S).log
"$nested/run.sh" "${files[@]}" --env "L2_MAC=$MAC" --env "CLOUD_WAIT=$CLOUD_WAIT" \
  --env "RUNS=$RUNS" --env "WARMUP=$WARMUP" ${CLOUD_CMDLINE:+--env "CLOUD_CMDLINE=$CLOUD_CMDLINE"} \
  --mem "${L1_MEM:-3584}" --timeout "${BENCH_TIMEOUT:-$((600 + RUNS * 2 * 400))}" --log "$logf" \
  --script "$work/run-in-l1.sh" > /dev/null

echo "cloud-boot-nested: log $logf"
grep '^BENCH: ' "$logf" | grep -v 'run=warmup' || { echo "cloud-boot-nested: no BENCH lines" >&2; exit 1; }
python3 - "$logf" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"BENCH: vmm=(\w+) run=(\d+) agent=(\S+) ssh=(\S+) stop=(\S+) exit=(\d+)", line)
    if m:
        runs.setdefault(m[1], []).append(m.groups()[2:])
def med(vmm, i):
    xs = [float(r[i]) for r in runs.get(vmm, []) if r[i] != "-"]
    return (statistics.median(xs), len(xs)) if xs else (None, 0)
print(f"{'median, L1 seconds from launch':34} {'ours (virt)':>14} {'QEMU microvm':>14} {'ours/QEMU':>10}")
for i, what in ((0, "-> guest agent answering"), (1, "-> first SSH login"), (2, "graceful stop -> VMM exit")):
    (a, na), (b, nb) = med("virt", i), med("qemu", i)
    fa = f"{a:.1f} ({na})" if a is not None else "-"
    fb = f"{b:.1f} ({nb})" if b is not None else "-"
    r = f"{a / b:.2f}" if a is not None and b else "-"
    print(f"{what:34} {fa:>14} {fb:>14} {r:>10}")
bad = [(v, r) for v, rs in runs.items() for r in rs if r[3] != "0"]
if bad:
    print(f"cloud-boot-nested: runs with a non-zero VMM exit: {bad}")
PY
