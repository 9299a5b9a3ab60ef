#!/usr/bin/env bash
# Boots a Linux VM with virt-launcher alone (no node, no API) and shows its console.
#
# On a machine with hardware virtualisation (vmx/svm and a usable /dev/kvm) the VM runs right here and
# its console is your terminal: log in is automatic, type `poweroff -f` to leave.
# Without it (like the machines this project is built on, whose /dev/kvm is software-nested), the VM
# runs inside the project's nested harness: an L1 Linux under QEMU's emulator that has real KVM. The
# console is shown as the guest boots, a few commands are typed into it, and it powers off (~40 s).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
eval "$(bash scripts/guest-assets.sh --print-env)"
cargo build --release -q -p virt-launcher
launcher=${CARGO_TARGET_DIR:-$PWD/target}/release/virt-launcher
cmdline="console=ttyS0 quiet panic=-1"

if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -r /dev/kvm ] && [ -w /dev/kvm ] && [ -z "${VIRT_FORCE_NESTED:-}" ]; then
  echo "run-launcher: booting on this machine's KVM; type 'poweroff -f' in the guest to exit"
  exec "$launcher" --kernel "$KERNEL" --initramfs "$INITRAMFS" --cmdline "$cmdline" \
    --memory 256 --cpus 2 --disk "$ROOTFS"
fi

echo "run-launcher: no hardware virtualisation here; booting inside the nested KVM harness (L1 under TCG)"
cache=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/kernels
vmlinux=$("$launcher" --kernel "$KERNEL" --prepare-kernel --kernel-cache "$cache")
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat > "$script" <<RUN
mkdir -p /l2/kernels && cp /payload/$(basename "$vmlinux") /l2/kernels/
# Type a few commands on the guest's console once its shell is up.
( sleep 15
  printf 'echo; uname -sr; echo "vCPUs: \$(grep -c ^processor /proc/cpuinfo)"; df -h /mnt | tail -1\n'
  sleep 3
  printf 'poweroff -f\n' ) | virt-launcher --kernel /l2/vmlinuz --initramfs /l2/initramfs.cpio.gz \
  --cmdline "$cmdline" --memory 256 --cpus 2 --disk /payload/rootfs.ext4 --kernel-cache /l2/kernels
RUN
exec bash scripts/nested/run.sh --file "$launcher" --file "$vmlinux" --file "$ROOTFS" --script "$script" --timeout 300
