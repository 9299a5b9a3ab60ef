#!/usr/bin/env bash
# Writes a docker-archive tar of the launcher image, localhost/virt-launcher:dev by default: the
# project's virt-launcher, QEMU (qemu-system-x86_64 with its ROMs and BIOS) and every shared
# library both link against (from this machine: Debian's packages), and a static busybox for the
# entry script. The entry script waits for the node agent (virt-handler) to write spec.json into
# the VMI's run directory ($VIRT_RUN_DIR, a hostPath mounted at the same path), copies the
# guest's serial console to stdout (`kubectl logs`), and execs virt-launcher on it. A migration's
# target pod ($VIRT_INCOMING=1, its own run directory) starts it with --incoming (and --post-copy
# when the agent left incoming-post-copy beside the spec): it waits for the source's stream.
# Import it with up.sh (VIRT_K8S_IMAGES=OUT.tar) or `ctr -n k8s.io images import`.
#
# Usage: scripts/k8s/launcher-image.sh OUT.tar VIRT_LAUNCHER [TAG]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: launcher-image.sh OUT.tar VIRT_LAUNCHER [TAG]}
launcher=${2:?usage: launcher-image.sh OUT.tar VIRT_LAUNCHER [TAG]}
tag=${3:-localhost/virt-launcher:dev}
for t in /bin/busybox /usr/bin/qemu-system-x86_64 "$launcher"; do
  [ -x "$t" ] || { echo "launcher-image.sh: $t missing (scripts/install-deps.sh installs busybox-static, qemu-system-x86)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/launcher.sh" <<'SH'
trap 'exit 0' TERM INT
run=${VIRT_RUN_DIR:?VIRT_RUN_DIR is not set}
# The pod's network namespace, for the node agent to make the guest's interfaces in.
/bin/busybox readlink /proc/self/ns/net > "$run/netns.tmp" && /bin/busybox mv "$run/netns.tmp" "$run/netns"
echo "virt-launcher pod of $VIRT_VMI_NAMESPACE/$VIRT_VMI_NAME: waiting for $run/spec.json"
while [ ! -f "$run/spec.json" ]; do /bin/busybox sleep 0.2; done
/bin/busybox touch "$run/console.log"
/bin/busybox tail -n +1 -F "$run/console.log" 2>/dev/null &
set --
if [ "${VIRT_INCOMING:-}" = 1 ]; then
  set -- --incoming
  [ -f "$run/incoming-post-copy" ] && set -- --incoming --post-copy
fi
exec /usr/bin/virt-launcher --spec "$run/spec.json" --run-dir "$run" --allow-emulation \
  --no-kernel-cache --grace-period "${VIRT_GRACE_PERIOD:-30}" "$@"
SH
args=(--file /bin/busybox:/bin/busybox --file "$tmp/launcher.sh:/launcher.sh"
      --file "$launcher:/usr/bin/virt-launcher" --file /usr/bin/qemu-system-x86_64:/usr/bin/qemu-system-x86_64)
# Shared libraries at their own paths (resolved: the archive holds files, not links).
declare -A seen=()
for bin in "$launcher" /usr/bin/qemu-system-x86_64; do
  while read -r lib; do
    [ -n "$lib" ] && [ -z "${seen[$lib]:-}" ] || continue
    seen[$lib]=1
    args+=(--file "$(readlink -f "$lib"):$lib")
  done < <(ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}')
done
# QEMU's ROMs, BIOS and keymaps (links into seabios/ipxe resolved).
while read -r f; do
  args+=(--file "$(readlink -f "$f"):$f")
done < <(find -L /usr/share/qemu /usr/share/seabios -type f 2>/dev/null | grep -v -e openbios -e slof -e skiboot -e s390 -e hppa -e u-boot -e npcm)
python3 "$here/oci-archive.py" --tag "$tag" --entrypoint /bin/busybox sh /launcher.sh "${args[@]}" --out "$out"
