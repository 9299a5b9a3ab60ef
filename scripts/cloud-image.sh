#!/usr/bin/env bash
# Builds the project's Debian cloud image from Debian packages only, and publishes it to the local
# registry (scripts/local-registry.sh):
#   debian-12.qcow2   bookworm: systemd, cloud-init (NoCloud/ConfigDrive), openssh-server,
#                     qemu-guest-agent, Debian's cloud kernel, ifupdown + DHCP, growpart/resizefs on
#                     first boot; an MBR disk with an EFI system partition (GRUB for OVMF) and an ext4
#                     root (GRUB for SeaBIOS in the MBR gap); compressed qcow2, 2 GiB virtual
#   vmlinuz, initrd.img   the image's kernel and initramfs (kernel boot: root=LABEL=debian-root)
# into ${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/cloud-image/<key>/, where <key> is a hash of this
# script, the package list and the Debian archive's address: the image is rebuilt only when one of
# them changes (or with --force). Needs root (mmdebstrap --mode=root); installs its tools through
# scripts/install-deps.sh --cloud-image. Building takes ~2 minutes, most of it downloading.
#
# usage: scripts/cloud-image.sh [--print-env] [--force] [--publish] [--build-id ID]
#   --print-env   print IMAGE=... KERNEL=... INITRD=... lines for eval; progress goes to stderr
#   --force       build again even when the cache holds the image
#   --publish     push to the local registry (idempotent; only when the image changed):
#                   <registry>/virt-rs/debian:12           containerDisk, the disk at /disk/debian-12.qcow2
#                   <registry>/virt-rs/debian-kernel:12    kernel boot, /boot/vmlinuz and /boot/initrd.img
#                 and print REGISTRY=host:port
#   --build-id ID label the published images with ID (org.opencontainers.image.version): the same
#                 disk under another ID is another digest, as a rebuilt image would be (tests of
#                 golden-image updates use it)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}

print_env=0 force=0 publish=0 build_id=""
while [ $# -gt 0 ]; do
  case "$1" in
    --print-env) print_env=1 ;;
    --force) force=1 ;;
    --publish) publish=1 ;;
    --build-id) shift; build_id=${1:?--build-id needs a value} ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cloud-image: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "cloud-image: $*" >&2; }

SUITE=bookworm
LABEL=debian-root
PACKAGES=(systemd systemd-sysv udev dbus linux-image-cloud-amd64 initramfs-tools
  cloud-init cloud-guest-utils fdisk e2fsprogs openssh-server qemu-guest-agent sudo
  ifupdown isc-dhcp-client iproute2 netbase ca-certificates less procps)
VIRTUAL_SIZE_MIB=2048
ESP_MIB=32

# The Debian archive the machine is configured with (never written here).
archive_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources) awk '/^URIs:/{u=$2} /^Suites:/{ for(i=2;i<=NF;i++) if($i=="bookworm") print u }' "$f" ;;
      *) awk '$1=="deb" && $0 ~ / bookworm / { for(i=2;i<=NF;i++) if ($i ~ /^https?:/) { print $i; break } }' "$f" ;;
    esac
  done | grep -v security | head -n1
}
security_uri() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]*debian-security[^ ]*' | head -n1
}
MIRROR=$(archive_uri)
[ -n "$MIRROR" ] || { log "cannot find the Debian archive in /etc/apt sources"; exit 1; }
SECURITY=$(security_uri || true)

key=$( { cat "$0"; echo "$MIRROR $SECURITY ${PACKAGES[*]}"; } | sha256sum | cut -c1-16)
OUT=$CACHE/cloud-image/$key
IMAGE=$OUT/debian-12.qcow2

build() {
  bash "$here/install-deps.sh" --cloud-image >&2
  local t0 tree
  t0=$(date +%s)
  mkdir -p "$CACHE/cloud-image"
  work=$(mktemp -d "$CACHE/cloud-image/build.XXXXXX")
  trap 'rm -rf "${work:-}"' EXIT
  tree=$work/root
  local sources=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main")
  [ -n "$SECURITY" ] && sources+=("deb $SECURITY $SUITE-security main")
  log "mmdebstrap $SUITE from $MIRROR (${#PACKAGES[@]} packages and their dependencies)"
  # Documentation, man pages and translations are left out: they are most of a minimal system's size.
  mmdebstrap --mode=root --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="bash $here/cloud-image-customize.sh \"\$1\" $LABEL" \
    "$SUITE" "$tree" "${sources[@]}" >&2
  log "root tree $(du -sm "$tree" | cut -f1) MiB after $(( $(date +%s) - t0 )) s"

  # The disk: MBR, partition 1 = EFI system partition (FAT, GRUB for OVMF), partition 2 = ext4 root.
  # GRUB for SeaBIOS: boot.img in the MBR, core.img in the gap before partition 1. No loop devices
  # and no mounts (no partition nodes without udev): file systems are built from directories.
  local root_mib=$(( VIRTUAL_SIZE_MIB - 1 - ESP_MIB ))
  local grub_modules="biosdisk part_msdos ext2 fat normal linux search search_label serial terminal configfile echo test"
  local efi_modules="part_msdos ext2 fat normal linux search search_label serial terminal configfile echo test efi_gop efi_uga all_video"
  mkdir -p "$tree/boot/grub"
  cp -r /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi "$tree/boot/grub/"
  rm -f "$tree"/boot/grub/*/*.image "$tree"/boot/grub/*/*.module 2>/dev/null || true
  cat > "$tree/boot/grub/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
search --no-floppy --label $LABEL --set=root
menuentry 'Debian GNU/Linux 12 (virt-rs cloud image)' {
  linux /vmlinuz root=LABEL=$LABEL ro console=tty0 console=ttyS0,115200n8
  initrd /initrd.img
}
CFG
  grub-mkimage -O i386-pc -o "$work/core.img" -p "(hd0,msdos2)/boot/grub" $grub_modules
  local core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
  [ "$core_sectors" -lt 2000 ] || { log "GRUB's core.img ($core_sectors sectors) does not fit before 1 MiB"; exit 1; }
  mkdir -p "$work/esp/EFI/BOOT"
  grub-mkimage -O x86_64-efi -o "$work/esp/EFI/BOOT/BOOTX64.EFI" -p "(hd0,msdos2)/boot/grub" $efi_modules
  mkfs.vfat -C -n ESP "$work/esp.img" $(( ESP_MIB * 1024 )) >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$work/esp.img" "$work/esp/EFI" ::/
  log "ext4 root file system ($root_mib MiB) from the tree"
  mkfs.ext4 -q -L "$LABEL" -d "$tree" -E root_owner=0:0 "$work/root.img" "${root_mib}M"
  truncate -s "${VIRTUAL_SIZE_MIB}M" "$work/disk.img"
  sfdisk -q "$work/disk.img" <<PT
label: dos
start=2048, size=$(( ESP_MIB * 2048 )), type=ef
start=$(( 2048 + ESP_MIB * 2048 )), type=83, bootable
PT
  dd if="$work/esp.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$work/root.img" of="$work/disk.img" bs=1M seek=$(( 1 + ESP_MIB )) conv=notrunc,sparse status=none
  # boot.img's first 440 bytes (the partition table stays), core.img from sector 1.
  dd if=/usr/lib/grub/i386-pc/boot.img of="$work/disk.img" bs=440 count=1 conv=notrunc status=none
  dd if="$work/core.img" of="$work/disk.img" bs=512 seek=1 conv=notrunc status=none
  mkdir -p "$OUT.tmp"
  cp -L "$tree/vmlinuz" "$OUT.tmp/vmlinuz"
  cp -L "$tree/initrd.img" "$OUT.tmp/initrd.img"
  log "qemu-img convert -c -O qcow2"
  qemu-img convert -c -O qcow2 "$work/disk.img" "$OUT.tmp/debian-12.qcow2"
  rm -rf "$OUT"
  mv "$OUT.tmp" "$OUT"
  local secs=$(( $(date +%s) - t0 ))
  echo "$secs" > "$OUT/build-seconds"
  log "built $IMAGE: $(du -m "$IMAGE" | cut -f1) MiB on disk, $VIRTUAL_SIZE_MIB MiB virtual, in $secs s"
  rm -rf "$work"
  trap - EXIT
}

if [ "$force" = 1 ] || [ ! -f "$IMAGE" ]; then
  [ "$(id -u)" -eq 0 ] || { log "needs root (mmdebstrap --mode=root)"; exit 1; }
  build
else
  log "cached: $IMAGE"
fi

if [ "$publish" = 1 ]; then
  registry=$(bash "$here/local-registry.sh")
  stamp=$CACHE/registry/cloud-image.stamp
  want="$key ${build_id}"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ "$force" = 1 ] \
     || ! curl -sf -o /dev/null "http://$registry/v2/virt-rs/debian/manifests/12" -H 'Accept: application/vnd.oci.image.manifest.v1+json'; then
    layout=$(mktemp -d)
    trap 'rm -rf "$layout"' EXIT
    label=()
    [ -n "$build_id" ] && label=(--label "org.opencontainers.image.version=$build_id")
    log "publishing $registry/virt-rs/debian:12 (containerDisk) and $registry/virt-rs/debian-kernel:12 (kernel boot)"
    python3 "$here/oci-layout.py" "$layout/disk" 12 "${label[@]}" "disk/debian-12.qcow2=$IMAGE:107"
    skopeo copy -q --dest-tls-verify=false "oci:$layout/disk:12" "docker://$registry/virt-rs/debian:12" >&2
    python3 "$here/oci-layout.py" "$layout/kernel" 12 "${label[@]}" "boot/vmlinuz=$OUT/vmlinuz" "boot/initrd.img=$OUT/initrd.img"
    skopeo copy -q --dest-tls-verify=false "oci:$layout/kernel:12" "docker://$registry/virt-rs/debian-kernel:12" >&2
    echo "$want" > "$stamp"
  fi
  echo "REGISTRY=$registry"
fi
if [ "$print_env" = 1 ]; then
  echo "IMAGE=$IMAGE"
  echo "KERNEL=$OUT/vmlinuz"
  echo "INITRD=$OUT/initrd.img"
  echo "BUILD_SECONDS=$(cat "$OUT/build-seconds" 2>/dev/null || echo 0)"
fi
