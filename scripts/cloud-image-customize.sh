#!/usr/bin/env bash
# mmdebstrap's customize hook for scripts/cloud-image.sh: turns the bootstrapped tree ($1) into a
# cloud image whose root file system is labelled $2. Runs on the host; commands inside the tree go
# through chroot (mmdebstrap has mounted /proc, /sys and /dev there).
set -euo pipefail
root=$1 label=$2

echo debian > "$root/etc/hostname"
cat > "$root/etc/hosts" <<HOSTS
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
HOSTS
cat > "$root/etc/fstab" <<FSTAB
LABEL=$label / ext4 defaults,errors=remount-ro 0 1
FSTAB
# Every clone gets its own identity on first boot: an empty machine-id (systemd makes one) and no
# SSH host keys (cloud-init makes them and prints their fingerprints on the console).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
# ifupdown; cloud-init writes its stanza (DHCP on the first NIC unless network data says otherwise)
# into interfaces.d.
cat > "$root/etc/network/interfaces" <<NET
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
NET
mkdir -p "$root/etc/network/interfaces.d"
cat > "$root/etc/cloud/cloud.cfg.d/90-virt-rs.cfg" <<CFG
# virt-rs cloud image (scripts/cloud-image.sh)
# KubeVirt hands cloud-init a NoCloud (cidata) or ConfigDrive (config-2) disk; never probe metadata
# servers on the network.
datasource_list: [ NoCloud, ConfigDrive, None ]
# No locales are generated: C.UTF-8 needs none (otherwise the locale module fails and
# 'cloud-init status' says error).
locale: C.UTF-8
# sudo resolves the host name through /etc/hosts.
manage_etc_hosts: true
# The root partition grows to the disk (a clone's DataVolume may be larger than the image).
growpart:
  mode: auto
  devices: ['/']
resize_rootfs: true
CFG
# A kernel booted directly (kernel boot) finds the same root; the serial console gets a getty from
# console=ttyS0 (systemd's getty generator).
chroot "$root" systemctl enable ssh >/dev/null 2>&1 || true
chroot "$root" systemctl enable qemu-guest-agent >/dev/null 2>&1 || true
# Smaller image: package lists and caches are not needed in the guest.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/tmp/*
