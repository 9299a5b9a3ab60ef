#!/usr/bin/env bash
# Builds the cached BASE initramfs of the nested-KVM "L1" machine (see docs/testing.md):
#   busybox, the KVM modules (irqbypass, kvm, ccp, kvm-amd) and the network ones an L2 NIC on a
#   tap needs (tun; vhost_net for QEMU's vhost=on), in the order their own metadata gives,
#   qemu-system-x86_64 with every shared library ldd lists and the firmware `-M microvm` loads,
#   the L2 kernel and initramfs (/l2/vmlinuz, /l2/initramfs.cpio.gz from scripts/guest-assets.sh),
#   and an /init that loads KVM, runs /run.sh and powers off, printing
#   `L1: start <uptime>` ... `L1: done rc=<rc> <uptime>`.
# The archive is an UNCOMPRESSED newc cpio: under TCG the L1 kernel unpacks it faster than gzip.
# A run appends a second, small cpio with its payload and /run.sh (scripts/nested/run.sh).
#
# Output (stdout, one line): the path of the base archive,
#   ${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/nested/l1-base.cpio
# next to it l1-base.manifest (paths in the archive, so run.sh does not ship a library twice).
# Rebuilt only when missing or when one of its inputs changed. --force rebuilds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
scripts=$(dirname "$here")
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
N=$CACHE/nested
QEMU=${QEMU:-qemu-system-x86_64}

force=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-l1: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "build-l1: $*" >&2; }
die() { echo "build-l1: error: $*" >&2; exit 1; }

if ! command -v "$QEMU" >/dev/null 2>&1 && [ -x "$scripts/install-deps.sh" ]; then
  log "$QEMU missing: running scripts/install-deps.sh"
  "$scripts/install-deps.sh" >&2
fi
command -v "$QEMU" >/dev/null 2>&1 || die "$QEMU not found (Debian package qemu-system-x86; scripts/install-deps.sh)"
command -v ldd >/dev/null 2>&1 || die "ldd not found (Debian package libc-bin)"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

# Guest assets first (kernel, modules, busybox, L2 initramfs); cached there.
"$scripts/guest-assets.sh" >/dev/null
G=$CACHE/guest
KVER=$(cat "$G/kernel-version")
qemu_bin=$(command -v "$QEMU")

# Firmware QEMU's microvm opens: bios-microvm.bin (SeaBIOS for microvm), linuxboot_dma.bin (bzImage
# via fw_cfg DMA), pvh.bin (ELF vmlinux by PVH). The rest are small and make `-M pc` work too.
FIRMWARE=(bios-microvm.bin linuxboot_dma.bin linuxboot.bin pvh.bin kvmvapic.bin qboot.rom
          multiboot_dma.bin bios-256k.bin vgabios-stdvga.bin)

mkdir -p "$N"
out=$N/l1-base.cpio
stamp=$( { cat "$0" "$here/lib/mkcpio.py" "$here/lib/moddeps.py"; echo "$KVER";
           sha256sum < "$G/initramfs.cpio.gz"; sha256sum < "$G/vmlinuz"; sha256sum < "$qemu_bin";
           ldd "$qemu_bin" | sed "s/ (0x[0-9a-f]*)//"; } | sha256sum | cut -c1-16)
if [ "$force" -eq 0 ] && [ -s "$out" ] && [ -s "$N/l1-base.manifest" ] \
   && [ "$(cat "$N/l1-base.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$out"
  exit 0
fi

log "building $out"
work=$(mktemp -d "$N/.base.XXXXXX")
trap 'rm -rf "$work"' EXIT
t=$work/tree
mkdir -p "$t"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,l2,payload,lib/modules/kvm,usr/share/qemu,usr/share/seabios}

# busybox and its applet links
cp "$G/busybox" "$t/bin/busybox"
"$G/busybox" --list-full | while read -r app; do
  [ "$app" = bin/busybox ] || [ -e "$t/$app" ] || ln -s /bin/busybox "$t/$app"
done

# KVM and tap modules, decompressed on the host (busybox insmod may not read .ko.xz): tun gives
# /dev/net/tun (L1's tap0 for an L2 NIC, scripts/nested/e2e-net.sh), vhost_net /dev/vhost-net.
python3 "$here/lib/moddeps.py" "$G/modules" kvm-amd tun vhost_net > "$work/kvm-order"
: > "$t/etc/l1-modules"
while IFS=$'\t' read -r name path; do
  case "$path" in
    *.ko.xz) xz -dc "$path" > "$t/lib/modules/kvm/$name.ko" ;;
    *.ko.zst) zstd -qdc "$path" > "$t/lib/modules/kvm/$name.ko" ;;
    *.ko.gz) gzip -dc "$path" > "$t/lib/modules/kvm/$name.ko" ;;
    *) cp "$path" "$t/lib/modules/kvm/$name.ko" ;;
  esac
  echo "$name" >> "$t/etc/l1-modules"
done < "$work/kvm-order"
grep -qx kvm_amd "$t/etc/l1-modules" || die "kvm-amd module not found in $G/modules"
grep -qx tun "$t/etc/l1-modules" || die "tun module not found in $G/modules"
log "KVM and tap modules: $(tr '\n' ' ' < "$t/etc/l1-modules")"

# copy_elf SRC DST: a program and the shared libraries ldd lists, at the paths ldd gives.
copy_elf() {
  local src=$1 dst=$2 lib
  mkdir -p "$t/$(dirname "$dst")"
  cp -L "$src" "$t/$dst"
  ldd "$src" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' | while read -r lib; do
    [ -e "$t/$lib" ] && continue
    mkdir -p "$t/$(dirname "$lib")"
    cp -L "$lib" "$t/$lib"
  done
}
copy_elf "$qemu_bin" /usr/bin/qemu-system-x86_64
# Debian's QEMU looks in /usr/share/qemu and /usr/share/seabios (bios-microvm.bin lives there); keep
# each file at the path it has on the host.
for f in "${FIRMWARE[@]}"; do
  found=""
  for d in /usr/share/qemu /usr/share/seabios; do
    if [ -e "$d/$f" ]; then
      cp -L "$d/$f" "$t/$d/$f"
      found=1
    fi
  done
  if [ -z "$found" ] && { [ "$f" = bios-microvm.bin ] || [ "$f" = linuxboot_dma.bin ] || [ "$f" = pvh.bin ]; }; then
    die "$f not in /usr/share/qemu or /usr/share/seabios: QEMU's microvm needs it (packages qemu-system-data, seabios)"
  fi
done

# L2 guest
cp "$G/vmlinuz" "$t/l2/vmlinuz"
cp "$G/initramfs.cpio.gz" "$t/l2/initramfs.cpio.gz"
echo "$KVER" > "$t/l2/kernel-version"

cat > "$t/init" <<'INIT'
#!/bin/sh
# L1 /init, generated by scripts/nested/build-l1.sh.
export PATH=/payload:/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# The launcher confines each machine in a cgroup (memory, pids), as on the build hosts (cgroup v1).
mount -t tmpfs cgroup /sys/fs/cgroup
for c in memory pids; do
  mkdir -p "/sys/fs/cgroup/$c"
  mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || echo "L1: cannot mount the $c cgroup"
done
up() { read u _ < /proc/uptime; echo "$u"; }
echo "L1: start $(up)"
while read -r m; do
  insmod "/lib/modules/kvm/$m.ko" || echo "L1: insmod $m failed"
done < /etc/l1-modules
if [ ! -c /dev/kvm ]; then
  echo "L1: /dev/kvm missing (kvm-amd did not load: does the emulated CPU offer SVM? L1 needs -cpu max)"
  rc=125
elif [ ! -f /run.sh ]; then
  echo "L1: no /run.sh in the initrd"
  rc=127
else
  [ -f /etc/run.env ] && . /etc/run.env
  echo "L1: kvm ready, cpus=$(grep -c '^processor' /proc/cpuinfo) $(up)"
  cd /
  sh /run.sh
  rc=$?
fi
echo "L1: done rc=$rc $(up)"
sync
poweroff -f
INIT
chmod 755 "$t/init"

(cd "$t" && find . -mindepth 1 | sed 's|^\.||' | sort) > "$work/manifest"
python3 "$here/lib/mkcpio.py" --node dev/console:c:5:1 --node dev/null:c:1:3:666 "$work/l1-base.cpio" "$t"
mv "$work/l1-base.cpio" "$out"
mv "$work/manifest" "$N/l1-base.manifest"
echo "$stamp" > "$N/l1-base.stamp"
log "$(du -h "$out" | cut -f1) in $out"
echo "$out"
