# Sourced on the HOST by scripts/nested/e2e-cloud.sh and bench/cloud-boot-nested.sh: what L1 needs
# to boot the Debian cloud image (scripts/cloud-image.sh) with lib/l2-cloud.sh.
#
# cloud_assets WORK MAC: makes in WORK
#   key, key.pub      an ed25519 key pair for the guest's `debian` user
#   seed.img          the NoCloud seed, a 2 MiB FAT labelled cidata: meta-data, user-data (the key),
#                     network-config (v1: the NIC with MAC, static 10.0.2.2/24, gateway 10.0.2.1; L1
#                     runs no DHCP server)
#   overlay.qcow2     an empty qcow2 overlay of the image as L1 sees it (/l2/cloud/debian-12.qcow2);
#                     each boot in L1 starts from a copy of it (a first boot every time)
# and sets CLOUD_FILES (run.sh --file arguments: those, the image, its vmlinuz and initrd.img, the
# two L1 libraries, socat and ssh) and CLOUD_KERNEL (the image's vmlinuz on the host).

cloud_assets() {
  local work=$1 mac=$2 here t
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  # socat talks to the launcher's control socket and QEMU's agent socket in L1 (scripts/install-deps.sh
  # installs it).
  for t in qemu-img mkfs.vfat mcopy ssh ssh-keygen socat; do
    command -v "$t" >/dev/null 2>&1 || {
      echo "cloud-assets: $t missing (scripts/install-deps.sh --cloud-image)" >&2
      return 2
    }
  done
  eval "$("$here/../../cloud-image.sh" --print-env)"
  [ -s "${IMAGE:-}" ] && [ -s "${KERNEL:-}" ] && [ -s "${INITRD:-}" ] || {
    echo "cloud-assets: scripts/cloud-image.sh --print-env gave no image, kernel or initrd" >&2
    return 2
  }
  CLOUD_KERNEL=$KERNEL
  ssh-keygen -q -t ed25519 -N "" -C virt-rs-nested -f "$work/key"
  printf 'instance-id: nested-cloud\nlocal-hostname: debian\n' > "$work/meta-data"
  printf '#cloud-config\nssh_authorized_keys:\n  - %s\n' "$(cat "$work/key.pub")" > "$work/user-data"
  cat > "$work/network-config" <<NET
version: 1
config:
  - type: physical
    name: eth0
    mac_address: "$mac"
    subnets:
      - type: static
        address: 10.0.2.2/24
        gateway: 10.0.2.1
NET
  mkfs.vfat -C -n cidata "$work/seed.img" 2048 >/dev/null
  mcopy -i "$work/seed.img" "$work/meta-data" "$work/user-data" "$work/network-config" ::
  local vsize
  # The image's own virtual size (the overlay must match it: the partition table covers all of it).
  vsize=$(qemu-img info --output=json "$IMAGE" | python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
  qemu-img create -q -f qcow2 -F qcow2 -b /l2/cloud/debian-12.qcow2 -u "$work/overlay.qcow2" "$vsize"
  CLOUD_FILES=(--file "$here/l2-vmm.sh:/lib/l2-vmm.sh" --file "$here/l2-cloud.sh:/lib/l2-cloud.sh"
    --file "$(command -v socat):/payload/socat" --file "$(command -v ssh):/payload/ssh"
    --file "$IMAGE:/l2/cloud/debian-12.qcow2" --file "$KERNEL:/l2/cloud/vmlinuz"
    --file "$INITRD:/l2/cloud/initrd.img" --file "$work/seed.img:/l2/cloud/seed.img"
    --file "$work/overlay.qcow2:/l2/cloud/overlay.qcow2" --file "$work/key:/l2/cloud/key")
}
