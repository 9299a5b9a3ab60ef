#!/usr/bin/env bash
# Builds the guest assets the end-to-end tests, the nested harness and the demo boot:
#   vmlinuz               Debian's stock bzImage (linux-image-amd64 -> linux-image-6.1.*-amd64)
#   modules/              that kernel's lib/modules/<version> tree
#   kernel-version        <version>
#   busybox               busybox-static
#   initramfs.cpio.gz     L2 guest initramfs: busybox, virtio + ext4 modules, a test /init (below)
#   initramfs-net.cpio.gz (--net only) initramfs.cpio.gz with a second archive appended holding
#                         Debian's iperf3 and the libraries it links (for virt.net=iperf)
#   rootfs.ext4           64 MiB ext4 disk with a busybox tree and /etc/motd, for the demo
#   boot.img              64 MiB firmware-boot disk: MBR, one FAT16 partition (type 0xEF, active)
#                         holding the kernel and the initramfs, booted by SYSLINUX under BIOS
#                         (SeaBIOS) and by shim -> GRUB (Debian's signed builds) under UEFI (OVMF,
#                         with or without Secure Boot); its command line is the virt.bench=1 one
#   efi/                  shimx64.efi and grubx64.efi from shim-signed and grub-efi-amd64-signed
# into ${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/guest. Everything comes from Debian's archive through
# apt-get download + dpkg -x (nothing is installed into /boot). Cached: the downloads happen once;
# the initramfs and the disk image are rebuilt only when missing or when this script changed.
#
# usage: scripts/guest-assets.sh [--print-env] [--force] [--net]
#   --print-env   print KERNEL=... INITRAMFS=... ROOTFS=... BOOTDISK=... MODULES=... lines (after building if needed)
#                 for `eval "$(scripts/guest-assets.sh --print-env)"`; progress goes to stderr
#                 (with --net also INITRAMFS_NET=...)
#   --force       forget the cache and build everything again
#   --net         also build initramfs-net.cpio.gz (needs the host's iperf3: scripts/install-deps.sh)
#
# The guest /init (busybox sh) reacts to kernel command-line words:
#   virt.bench=1  print the user-space line and power off at once (boot-time benchmark)
#   virt.e2e=1    disk checks for the end-to-end test (see docs/testing.md), then power off
#   (neither)     interactive demo: mounts /dev/vda at /mnt if it holds ext4, shell on the console
#   virt.idle=1   like the demo but without a shell: print the checks, then wait (for tests that
#                 pause, resume, look at the display or press the power button)
#   virt.net=iperf  network test (scripts/nested/e2e-net.sh, bench/net-throughput.sh): the first NIC
#                 gets a STATIC address (virt.net.ip=, default 10.0.2.2/24; no DHCP), is brought up
#                 (`VIRT-E2E: net dev <name> mac=<mac> driver=<driver> mtu=<mtu>`, `VIRT-E2E: net up
#                 <name> <address>`), pings virt.net.peer= (default 10.0.2.1) three times
#                 (`VIRT-E2E: ping <peer> ok <summary>` or `... FAILED`), then serves
#                 virt.net.iperf=N (default 1) iperf3 tests one after the other (`iperf3 -s -1`,
#                 `VIRT-E2E: iperf3 server <k> start`, `VIRT-E2E: iperf3 server <k> exit <rc>`; without
#                 an iperf3 in the initramfs, `VIRT-E2E: iperf3 missing`), and powers off. iperf3 comes
#                 with initramfs-net.cpio.gz (--net).
#   virt.net=dhcp network test of the node's pod network (scripts/nested/e2e-node-net.sh): the first
#                 NIC (`VIRT-E2E: net dev ...` as above) asks for its address with busybox `udhcpc`
#                 (`VIRT-E2E: dhcp lease <name> ip=<a> mask=<bits> router=<r> routes=<option 121>
#                 dns=<..> mtu=<..> lease=<s> serverid=<a> hostname=<..> secs=<s>` or `VIRT-E2E: dhcp
#                 FAILED`), applies it, pings the lease's router (`VIRT-E2E: ping <router> ok ...`),
#                 serves busybox `httpd` on TCP virt.net.port= (default 8080) with
#                 `VIRT-E2E-HELLO from <address>` as its index page (`VIRT-E2E: tcp service <port>
#                 up`), then waits for the ACPI power button as virt.idle=1 does.
#   virt.exit=reboot  end with `reboot -f` instead of `poweroff -f` (for a VMM without ACPI power-off)
#   virt.exit=button  end virt.e2e=1 by waiting for the ACPI power button (`VIRT-E2E: waiting for the
#                 power button`) instead of powering off at once (`VIRT-E2E: no power button to wait
#                 for`, then power-off, when the guest found no power button)
# Outside virt.bench=1 it also reports `tpm0 present` when the kernel found a TPM, and powers off when
# the ACPI power button is pressed (`VIRT-E2E: power button (<how it was seen>)`): QEMU's system_powerdown on q35 (the
# fixed-hardware button) or microvm, and the native microVM's power button (a control-method button
# notified by an ACPI Generic Event Device) alike.
# cloud-init seed disks (outside virt.bench=1, which powers off before any driver loads): a FAT disk
# labelled `cidata` (NoCloud) or `config-2` (ConfigDrive) is mounted read-only on /seed, the hostname
# set from its metadata, and user data starting with `#!` run with its output on the console:
#   VIRT-E2E: cloud-init seed <label> <device>
#   VIRT-E2E: cloud-init hostname <name>
#   VIRT-E2E: cloud-init user-data exit <code>
# Without such a disk nothing about it is printed.
# Every line it prints for tests starts with `VIRT-E2E: `.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
G=$CACHE/guest

print_env=0
force=0
net=0
for a in "$@"; do
  case "$a" in
    --print-env) print_env=1 ;;
    --net) net=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "guest-assets: unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "guest-assets: $*" >&2; }
die() { echo "guest-assets: error: $*" >&2; exit 1; }

# Tools: apt-get/apt-cache/dpkg come with Debian; the others with scripts/install-deps.sh.
need_tools() {
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -x "$here/install-deps.sh" ]; then
    log "missing ${missing[*]}: running scripts/install-deps.sh"
    "$here/install-deps.sh" >&2
  fi
  for t in "${missing[@]}"; do
    command -v "$t" >/dev/null 2>&1 || die "'$t' is not installed (scripts/install-deps.sh should provide it)"
  done
}
need_tools apt-get apt-cache dpkg dpkg-deb python3 gzip sha256sum mkfs.ext4 mkfs.vfat mcopy mmd syslinux

# A package list that is missing or stale (a kernel security update removes the old .deb from the
# archive) is refreshed once, as root, and the look-up or download tried again.
apt_updated=0
apt_refresh() {
  [ "$apt_updated" -eq 0 ] && [ "$(id -u)" -eq 0 ] || return 1
  log "refreshing the package lists (apt-get update)"
  apt-get update -qq >&2 || return 1
  apt_updated=1
}

apt_download() {
  # Runs in the current directory. As root, apt's download sandbox user cannot write into $HOME.
  local opts=()
  [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
  apt-get download -q "${opts[@]}" "$@" >&2 && return 0
  apt_refresh && apt-get download -q "${opts[@]}" "$@" >&2 && return 0
  die "apt-get download $* failed (is the package list current? run: apt-get update)"
}

kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9].*-amd64$/ {print $2; exit}'
}

if [ "$force" -eq 1 ]; then
  log "--force: removing $G"
  rm -rf "$G"
fi
mkdir -p "$G"

# --- kernel -------------------------------------------------------------------------------------
if [ ! -s "$G/vmlinuz" ] || [ ! -d "$G/modules" ] || [ ! -s "$G/kernel-version" ]; then
  pkg=$(kernel_package)
  [ -n "$pkg" ] || { apt_refresh && pkg=$(kernel_package); } || true
  [ -n "$pkg" ] || die "apt-cache finds no linux-image-amd64 dependency (run: apt-get update)"
  case "$pkg" in linux-image-6.1.*) ;; *) log "warning: $pkg is not the 6.1 kernel this was tested with" ;; esac
  log "downloading linux-image-amd64 -> $pkg"
  work=$(mktemp -d "$G/.kernel.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt_download linux-image-amd64 "$pkg")
  deb=$(ls "$work"/"$pkg"_*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die "apt-get download left no $pkg .deb"
  dpkg -x "$deb" "$work/root"
  ver=$(ls "$work/root/lib/modules" | head -n1)
  [ -n "$ver" ] && [ -f "$work/root/boot/vmlinuz-$ver" ] || die "$pkg holds no boot/vmlinuz-<version>"
  rm -rf "$G/modules" "$G/vmlinuz" "$G/config"
  mv "$work/root/lib/modules/$ver" "$G/modules"
  mv "$work/root/boot/vmlinuz-$ver" "$G/vmlinuz"
  mv "$work/root/boot/config-$ver" "$G/config" 2>/dev/null || true
  echo "$ver" > "$G/kernel-version"
  rm -rf "$work"
  trap - EXIT
fi
KVER=$(cat "$G/kernel-version")

# --- busybox ------------------------------------------------------------------------------------
if [ ! -x "$G/busybox" ]; then
  log "downloading busybox-static"
  work=$(mktemp -d "$G/.busybox.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt_download busybox-static)
  dpkg -x "$work"/busybox-static_*.deb "$work/root"
  [ -x "$work/root/bin/busybox" ] || die "busybox-static holds no bin/busybox"
  mv "$work/root/bin/busybox" "$G/busybox"
  rm -rf "$work"
  trap - EXIT
fi

# A stamp of everything the initramfs and the disk image are made from: rebuild when it changes.
stamp=$( { cat "$0" "$here/nested/lib/mkcpio.py" "$here/nested/lib/moddeps.py"; echo "$KVER";
           sha256sum < "$G/busybox"; } | sha256sum | cut -c1-16)

# busybox tree: the static binary and a symlink for each applet (what `busybox --install -s` makes),
# made on the host so the guest spends no time on it.
busybox_tree() {
  local dst=$1 app
  mkdir -p "$dst/bin" "$dst/sbin" "$dst/usr/bin" "$dst/usr/sbin"
  cp "$G/busybox" "$dst/bin/busybox"
  "$G/busybox" --list-full | while read -r app; do
    [ "$app" = bin/busybox ] && continue
    [ -e "$dst/$app" ] || ln -s /bin/busybox "$dst/$app"
  done
}

# --- L2 initramfs -------------------------------------------------------------------------------
# Modules in load order; dependencies are resolved from the modules' own metadata.
WANT_MODULES=(virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
              virtio_blk failover net_failover virtio_net crc32c_generic crc32c-intel crc16 mbcache
              jbd2 ext4 button evdev fat vfat nls_cp437 nls_ascii)

write_init() {
cat > "$1" <<'INIT'
#!/bin/sh
# L2 guest /init, generated by scripts/guest-assets.sh. Lines for tests start with "VIRT-E2E: ".
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
read up _ < /proc/uptime
echo "VIRT-E2E: userspace up $up"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

cmdline=$(cat /proc/cmdline)
mode=demo
net_ip=10.0.2.2/24 net_peer=10.0.2.1 net_iperf=1 net_port=8080
exit_cmd=poweroff
wait_button=0
for w in $cmdline; do
  case "$w" in
    virt.bench=1) mode=bench ;;
    virt.e2e=1) mode=e2e ;;
    virt.idle=1) mode=idle ;;
    virt.net=iperf) mode=net ;;
    virt.net=dhcp) mode=dhcp ;;
    virt.net.port=*) net_port=${w#virt.net.port=} ;;
    virt.net.ip=*) net_ip=${w#virt.net.ip=} ;;
    virt.net.peer=*) net_peer=${w#virt.net.peer=} ;;
    virt.net.iperf=*) net_iperf=${w#virt.net.iperf=} ;;
    virt.exit=reboot) exit_cmd=reboot ;;
    virt.exit=button) wait_button=1 ;;
  esac
done

# cloud-init seed disks: a FAT file system labelled cidata (NoCloud) or config-2 (ConfigDrive),
# as virt-storage's cloudinit module writes them (upper-case labels too, as mkfs.vfat makes them).
cloud_init_seed() {
  local label dev= meta host ud rc
  for label in cidata CIDATA config-2 CONFIG-2; do
    dev=$(findfs "LABEL=$label" 2>/dev/null) && break
  done
  [ -n "$dev" ] || return 0
  echo "VIRT-E2E: cloud-init seed $label $dev"
  mkdir -p /seed
  if ! mount -t vfat -o ro "$dev" /seed; then
    echo "VIRT-E2E: cloud-init seed $dev: mount failed"
    return 0
  fi
  case "$label" in
    cidata|CIDATA)
      meta=/seed/meta-data ud=/seed/user-data
      host=$(sed -n 's/^local-hostname:[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$meta" 2>/dev/null) ;;
    *)
      meta=/seed/openstack/latest/meta_data.json ud=/seed/openstack/latest/user_data
      host=$(sed -n 's/.*"hostname"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$meta" 2>/dev/null) ;;
  esac
  host=$(echo "$host" | head -n1)
  if [ -n "$host" ] && hostname "$host"; then
    echo "VIRT-E2E: cloud-init hostname $host"
  fi
  # A script (#!) runs from a private copy (FAT has no exec bit to rely on); cloud-config and
  # other formats need cloud-init itself, which this guest does not have.
  if [ "$(head -c 2 "$ud" 2>/dev/null)" = '#!' ]; then
    cp "$ud" /tmp/user-data && chmod 700 /tmp/user-data
    /tmp/user-data </dev/null >/dev/console 2>&1
    rc=$?
    echo "VIRT-E2E: cloud-init user-data exit $rc"
  fi
}

finish() {
  read up _ < /proc/uptime
  echo "VIRT-E2E: $exit_cmd $up"
  sync
  $exit_cmd -f
  sleep 5
  echo "VIRT-E2E: $exit_cmd -f returned"
  exit 1
}

[ "$mode" = bench ] && finish

while read -r m; do
  [ -f "/lib/modules/$m.ko" ] || continue
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "VIRT-E2E: insmod $m failed"
done < /etc/modules

echo "VIRT-E2E: cpus=$(grep -c '^processor' /proc/cpuinfo)"
# Debian's kernel has the CRB and TIS TPM drivers built in: a TPM the VMM offers is /dev/tpm0 by now.
[ -c /dev/tpm0 ] && echo "VIRT-E2E: tpm0 present"

# ACPI power button. Debian's `button` module (loaded above) turns a press into a KEY_POWER event on
# its "Power Button" input device, for the fixed-hardware button (LNXPWRBN: QEMU's q35) and for the
# control-method one (PNP0C0C, notified by an ACPI Generic Event Device: the native microVM, QEMU's
# microvm) alike; evdev makes it /dev/input/eventN. One background reader per such device holds it
# open (opened before anything is announced, so no press is missed) and blocks in read(): no
# polling. The first event powers the guest off, as acpid or logind would. Without an evdev node the
# kernel's fixed-event counter is polled instead (that counts the fixed-hardware button only).
power_off_on_press() { # power_off_on_press HOW
  echo "VIRT-E2E: power button ($1)"
  exit_cmd=poweroff
  finish
}
buttons=0
for n in /sys/class/input/input*/name; do
  [ -r "$n" ] || continue
  case "$(cat "$n")" in *"Power Button"*) ;; *) continue ;; esac
  for e in "${n%/name}"/event*; do
    ev=/dev/input/${e##*/}
    [ -c "$ev" ] || continue
    buttons=$((buttons + 1))
    (
      exec 3< "$ev" || exit 0
      : > "/tmp/button.$buttons"
      dd of=/dev/null bs=24 count=1 <&3 2>/dev/null && power_off_on_press "$ev"
    ) &
  done
done
pwr=/sys/firmware/acpi/interrupts/ff_pwr_btn
if [ $buttons -eq 0 ] && [ -r "$pwr" ]; then
  buttons=1
  (
    read n0 _ < "$pwr"
    : > /tmp/button.1
    while sleep 0.2; do
      read n _ < "$pwr"
      [ "$n" != "$n0" ] && break
    done
    power_off_on_press "$pwr"
  ) &
fi
# Every reader has its device open (at most 1 s).
i=0
while [ $i -lt 20 ] && [ "$(ls /tmp/button.* 2>/dev/null | wc -l)" -lt $buttons ]; do
  sleep 0.05
  i=$((i + 1))
done

# The end of the e2e mode: power off, or with virt.exit=button wait for the power button.
end() {
  if [ $wait_button -eq 1 ]; then
    if [ $buttons -gt 0 ]; then
      echo "VIRT-E2E: waiting for the power button"
      while :; do sleep 3600; done
    fi
    echo "VIRT-E2E: no power button to wait for"
  fi
  finish
}
# virtio-blk probes while its module loads; give late devices a moment all the same.
if [ "$mode" = e2e ]; then
  i=0
  while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
fi
# In every mode: wait (at most 2 s) until each virtio block device (virtio device id 2) has its
# /sys/block entry, so the cloud-init seed search below sees them all. No such device, no wait.
i=0
while [ $i -lt 20 ]; do
  want=0
  for f in /sys/bus/virtio/devices/*/device; do
    [ -r "$f" ] && [ "$(cat "$f")" = 0x0002 ] && want=$((want + 1))
  done
  have=0
  for d in /sys/block/vd*; do [ -e "$d" ] && have=$((have + 1)); done
  [ $have -ge $want ] && break
  sleep 0.1
  i=$((i + 1))
done
for d in /sys/block/vd?; do
  [ -e "$d" ] || continue
  n=${d##*/}
  echo "VIRT-E2E: disk $n size=$(( $(cat "$d/size") * 512 )) ro=$(cat "$d/ro")"
done

cloud_init_seed

# The first NIC (a device behind it: not lo), announced; sets dev. Fails when none appears in 2 s.
net_dev() {
  local n i
  dev=
  i=0
  while [ $i -lt 40 ]; do
    for n in /sys/class/net/*; do
      [ -e "$n/device" ] && { dev=${n##*/}; break; }
    done
    [ -n "$dev" ] && break
    sleep 0.05
    i=$((i + 1))
  done
  if [ -z "$dev" ]; then
    echo "VIRT-E2E: net no device"
    return 1
  fi
  n=/sys/class/net/$dev
  echo "VIRT-E2E: net dev $dev mac=$(cat "$n/address") driver=$(basename "$(readlink "$n/device/driver")") mtu=$(cat "$n/mtu")"
  ip link set lo up
}

# virt.net=iperf: the first NIC, a static address, a ping, iperf3 servers (see the header).
net_test() {
  local dev n k rc
  net_dev || return 0
  n=/sys/class/net/$dev
  if ! ip addr add "$net_ip" dev "$dev" || ! ip link set "$dev" up; then
    echo "VIRT-E2E: net setup FAILED"
    return 0
  fi
  echo "VIRT-E2E: net up $dev $net_ip"
  if ping -c 3 -W 3 "$net_peer" > /tmp/ping 2>&1; then
    echo "VIRT-E2E: ping $net_peer ok $(grep -E 'transmitted|round-trip' /tmp/ping | tr '\n' ' ')"
  else
    echo "VIRT-E2E: ping $net_peer FAILED"
    cat /tmp/ping
  fi
  if ! command -v iperf3 >/dev/null 2>&1; then
    echo "VIRT-E2E: iperf3 missing"
    return 0
  fi
  k=1
  while [ $k -le "$net_iperf" ]; do
    echo "VIRT-E2E: iperf3 server $k start"
    iperf3 -s -1 > "/tmp/iperf3.$k" 2>&1
    rc=$?
    echo "VIRT-E2E: iperf3 server $k exit $rc"
    [ $rc -eq 0 ] || cat "/tmp/iperf3.$k"
    k=$((k + 1))
  done
  for k in rx_bytes tx_bytes rx_packets tx_packets rx_dropped rx_errors tx_dropped tx_errors; do
    printf ' %s=%s' "$k" "$(cat "$n/statistics/$k")"
  done > /tmp/netstats
  echo "VIRT-E2E: net stats$(cat /tmp/netstats)"
  # TCP's counters (RetransSegs, InErrs, ...): header line, then values.
  grep '^Tcp:' /proc/net/snmp | sed 's/^/VIRT-E2E: net snmp /'
}
if [ "$mode" = net ]; then
  net_test
  finish
fi

# virt.net=dhcp: the first NIC configured over DHCP, a ping to the router, a TCP service (header).
# udhcpc runs the script below for each event with the lease in its environment (busybox's names:
# ip, mask (prefix bits), router, staticroutes (option 121 as "net/bits gateway ..."), dns, mtu,
# lease, serverid, hostname); it applies the lease as Debian's default.script would and records it.
dhcp_test() {
  local dev t0 t1 router
  net_dev || return 0
  cat > /tmp/udhcpc.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do
        if [ "$1" = 0.0.0.0/0 ]; then ip route replace default via "$2" dev "$interface"; else ip route replace "$1" via "$2" dev "$interface"; fi
        shift 2
      done
    else
      for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    fi
    echo "ip=$ip mask=$mask router=$router routes=$(echo $staticroutes | tr ' ' ,) dns=$(echo $dns | tr ' ' ,) mtu=$mtu lease=$lease serverid=$serverid hostname=$hostname" > /tmp/lease
    ;;
esac
SCRIPT
  chmod 755 /tmp/udhcpc.sh
  read t0 _ < /proc/uptime
  # -n: fail (not background) without a lease; -q: quit once bound; -t/-T: 5 tries 2 s apart.
  if udhcpc -i "$dev" -s /tmp/udhcpc.sh -n -q -t 5 -T 2 > /tmp/udhcpc.log 2>&1 && [ -s /tmp/lease ]; then
    read t1 _ < /proc/uptime
    echo "VIRT-E2E: dhcp lease $dev $(cat /tmp/lease) secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
  else
    echo "VIRT-E2E: dhcp FAILED"
    cat /tmp/udhcpc.log
    return 0
  fi
  router=$(sed -n 's/.* router=\([^ ]*\).*/\1/p' /tmp/lease)
  router=${router%%,*}
  [ -n "$router" ] || router=$net_peer
  if ping -c 3 -W 3 "$router" > /tmp/ping 2>&1; then
    echo "VIRT-E2E: ping $router ok $(grep -E 'transmitted|round-trip' /tmp/ping | tr '\n' ' ')"
  else
    echo "VIRT-E2E: ping $router FAILED"
    cat /tmp/ping
  fi
  mkdir -p /www
  echo "VIRT-E2E-HELLO from $(sed -n 's/^ip=\([^ ]*\).*/\1/p' /tmp/lease)" > /www/index.html
  if httpd -p "$net_port" -h /www; then
    echo "VIRT-E2E: tcp service $net_port up"
  else
    echo "VIRT-E2E: tcp service $net_port FAILED"
  fi
}
if [ "$mode" = dhcp ]; then
  dhcp_test
  wait_button=1
  end
fi

if [ "$mode" = e2e ]; then
  echo "VIRT-E2E: sig=$(head -c 16 /dev/vda 2>/dev/null | tr -d '\000')"
  read up _ < /proc/uptime
  line="VIRT-WRITTEN-$RANDOM-$up"
  if echo "$line" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null && sync; then
    echo "VIRT-E2E: wrote vdb $line"
  else
    echo "VIRT-E2E: write to vdb FAILED"
  fi
  if echo "VIRT-CLOBBER" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; then
    echo "VIRT-E2E: vda write ALLOWED"
  else
    echo "VIRT-E2E: vda write refused"
  fi
  end
fi

if [ "$mode" = idle ]; then
  echo "VIRT-E2E: idle"
  while :; do sleep 3600; done
fi

# Interactive demo.
if [ -b /dev/vda ] && [ "$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 53ef ]; then
  mkdir -p /mnt
  if mount -t ext4 /dev/vda /mnt 2>/dev/null || mount -t ext4 -o ro /dev/vda /mnt 2>/dev/null; then
    echo "VIRT-E2E: mounted /dev/vda on /mnt"
    [ -f /mnt/etc/motd ] && cat /mnt/etc/motd
  fi
fi
echo "Hello from the guest! Type 'poweroff -f' to exit."
setsid cttyhack sh
umount /mnt 2>/dev/null
finish
INIT
chmod 755 "$1"
}

if [ ! -s "$G/initramfs.cpio.gz" ] || [ "$(cat "$G/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building initramfs.cpio.gz (kernel $KVER)"
  work=$(mktemp -d "$G/.initramfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  t=$work/tree
  busybox_tree "$t"
  mkdir -p "$t/proc" "$t/sys" "$t/dev" "$t/tmp" "$t/mnt" "$t/etc" "$t/lib/modules" "$t/root"
  write_init "$t/init"
  python3 "$here/nested/lib/moddeps.py" "$G/modules" "${WANT_MODULES[@]}" > "$work/order"
  : > "$t/etc/modules"
  while IFS=$'\t' read -r name path; do
    case "$path" in
      *.ko.xz) xz -dc "$path" > "$t/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$path" > "$t/lib/modules/$name.ko" ;;
      *.ko.gz) gzip -dc "$path" > "$t/lib/modules/$name.ko" ;;
      *) cp "$path" "$t/lib/modules/$name.ko" ;;
    esac
    echo "$name" >> "$t/etc/modules"
  done < "$work/order"
  # Padded to whole 4 KiB pages: QEMU's microvm puts the initrd of a PVH (vmlinux) boot at the very
  # top of RAM without room for the ACPI tables SeaBIOS keeps in the top page, so an initrd whose
  # size is not a page multiple can overwrite them and the guest hangs in ACPI setup. A page-multiple
  # size ends the initrd one page below the top. Linux ignores the zeros after the gzip stream.
  python3 "$here/nested/lib/mkcpio.py" --gzip --pad-to 4096 --node dev/console:c:5:1 --node dev/null:c:1:3:666 \
    "$work/initramfs.cpio.gz" "$t"
  mv "$work/initramfs.cpio.gz" "$G/initramfs.cpio.gz"
  echo "$stamp" > "$G/initramfs.stamp"
  rm -rf "$work"
  trap - EXIT
fi

# --- L2 initramfs with iperf3 (--net) -----------------------------------------------------------
# The plain initramfs, then a second gzip'd cpio (Linux unpacks concatenated archives, skipping the
# zero padding between them) holding the host's iperf3 and every library ldd lists, at the paths
# ldd gives; the whole padded to 4 KiB pages as above.
if [ "$net" -eq 1 ]; then
  need_tools iperf3 ldd
  iperf3_bin=$(command -v iperf3)
  net_stamp=$( { echo "$stamp"; sha256sum < "$G/initramfs.cpio.gz"; sha256sum < "$iperf3_bin";
                 ldd "$iperf3_bin" | sed "s/ (0x[0-9a-f]*)//"; } | sha256sum | cut -c1-16)
  if [ ! -s "$G/initramfs-net.cpio.gz" ] || [ "$(cat "$G/initramfs-net.stamp" 2>/dev/null)" != "$net_stamp" ]; then
    log "building initramfs-net.cpio.gz (with $iperf3_bin)"
    work=$(mktemp -d "$G/.initramfs-net.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    t=$work/tree
    mkdir -p "$t/usr/bin"
    cp -L "$iperf3_bin" "$t/usr/bin/iperf3"
    ldd "$iperf3_bin" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' | while read -r lib; do
      mkdir -p "$t$(dirname "$lib")"
      cp -L "$lib" "$t$lib"
    done
    ! ldd "$iperf3_bin" | grep -q 'not found' || die "ldd cannot resolve all of $iperf3_bin's libraries"
    python3 "$here/nested/lib/mkcpio.py" --gzip "$work/iperf3.cpio.gz" "$t"
    cat "$G/initramfs.cpio.gz" "$work/iperf3.cpio.gz" > "$work/initramfs-net.cpio.gz"
    size=$(stat -c %s "$work/initramfs-net.cpio.gz")
    truncate -s $(( (size + 4095) / 4096 * 4096 )) "$work/initramfs-net.cpio.gz"
    mv "$work/initramfs-net.cpio.gz" "$G/initramfs-net.cpio.gz"
    echo "$net_stamp" > "$G/initramfs-net.stamp"
    rm -rf "$work"
    trap - EXIT
  fi
fi

# --- demo root disk -----------------------------------------------------------------------------
if [ ! -s "$G/rootfs.ext4" ] || [ "$(cat "$G/rootfs.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building rootfs.ext4"
  work=$(mktemp -d "$G/.rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  t=$work/tree
  busybox_tree "$t"
  mkdir -p "$t/proc" "$t/sys" "$t/dev" "$t/tmp" "$t/etc" "$t/root"
  cat > "$t/etc/motd" <<'MOTD'
Welcome to the virt-rs demo disk: an ext4 file system on a virtio-blk device, mounted on /mnt.
MOTD
  echo "virt-demo" > "$t/etc/hostname"
  truncate -s 64M "$work/rootfs.ext4"
  mkfs.ext4 -q -F -L virt-root -E root_owner=0:0 -d "$t" "$work/rootfs.ext4" >&2
  mv "$work/rootfs.ext4" "$G/rootfs.ext4"
  echo "$stamp" > "$G/rootfs.stamp"
  rm -rf "$work"
  trap - EXIT
fi

# --- firmware-boot disk image -------------------------------------------------------------------
# One image that both firmware kinds boot, built without loop mounts (mkfs.vfat -C, mtools, and
# SYSLINUX's mtools installer work on image files):
#   LBA 0        SYSLINUX's mbr.bin (boots the active partition) and an MBR partition table
#   LBA 2048-    partition 1: active, type 0xEF (EFI system), FAT16:
#                  ldlinux.sys ldlinux.c32 syslinux.cfg   BIOS: mbr.bin -> SYSLINUX
#                  EFI/BOOT/BOOTX64.EFI (shim) grubx64.efi UEFI: shim -> GRUB, both signed, so Secure
#                  EFI/BOOT/grub.cfg EFI/debian/grub.cfg       Boot with Microsoft's keys boots too
#                  vmlinuz initrd.gz                      Debian's signed kernel, the initramfs above
# OVMF finds \EFI\BOOT\BOOTX64.EFI on a FAT partition of an MBR disk as on a GPT one.
if [ ! -s "$G/efi/shimx64.efi" ] || [ ! -s "$G/efi/grubx64.efi" ]; then
  log "downloading shim-signed and grub-efi-amd64-signed"
  work=$(mktemp -d "$G/.efi.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt_download shim-signed grub-efi-amd64-signed)
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/root"; done
  [ -s "$work/root/usr/lib/shim/shimx64.efi.signed" ] || die "shim-signed holds no usr/lib/shim/shimx64.efi.signed"
  [ -s "$work/root/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" ] \
    || die "grub-efi-amd64-signed holds no usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
  mkdir -p "$G/efi"
  mv "$work/root/usr/lib/shim/shimx64.efi.signed" "$G/efi/shimx64.efi"
  mv "$work/root/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$G/efi/grubx64.efi"
  rm -rf "$work"
  trap - EXIT
fi

SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
BOOT_CMDLINE="console=ttyS0 quiet panic=-1 virt.bench=1"
[ -f "$SYSLINUX_MBR" ] || die "$SYSLINUX_MBR missing (scripts/install-deps.sh installs syslinux-common)"
boot_stamp=$( { echo "$stamp"; sha256sum < "$G/initramfs.cpio.gz"; sha256sum < "$G/efi/shimx64.efi";
                sha256sum < "$G/efi/grubx64.efi"; sha256sum < "$SYSLINUX_MBR"; } | sha256sum | cut -c1-16)
if [ ! -s "$G/boot.img" ] || [ "$(cat "$G/boot.stamp" 2>/dev/null)" != "$boot_stamp" ]; then
  log "building boot.img (BIOS: SYSLINUX, UEFI: shim + GRUB)"
  work=$(mktemp -d "$G/.boot.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  printf '%s\n' "SERIAL 0 115200" "PROMPT 0" "TIMEOUT 0" "DEFAULT virt" "LABEL virt" "  LINUX /vmlinuz" \
    "  INITRD /initrd.gz" "  APPEND $BOOT_CMDLINE" > "$work/syslinux.cfg"
  # Debian's signed GRUB has /EFI/debian as its prefix and reads grub.cfg there (else next to itself).
  # Its shim_lock verifier is on (and sets $shim_lock) only when the firmware enforces Secure Boot:
  # the marker line lets a test tell an enforced chain from an unchecked one.
  printf '%s\n' "set timeout=0" "set default=0" \
    'if [ "$shim_lock" = y ]; then echo "VIRT-E2E: grub secure boot shim_lock=$shim_lock lockdown=$lockdown"; fi' \
    'menuentry "virt-rs test guest" {' "  linux /vmlinuz $BOOT_CMDLINE" "  initrd /initrd.gz" "}" > "$work/grub.cfg"
  # 63 MiB of FAT16 after the 1 MiB gap. -h 2048: the boot sector's hidden-sectors field is the
  # partition's start, which SYSLINUX's boot sector reads.
  mkfs.vfat -C -F 16 -n VIRTBOOT -h 2048 "$work/part.img" $((63 * 1024)) >/dev/null
  # SYSLINUX 6's installer writes ldlinux.sys and ldlinux.c32 (the one from syslinux-common).
  syslinux --install "$work/part.img"
  export MTOOLS_SKIP_CHECK=1
  mcopy -i "$work/part.img" "$work/syslinux.cfg" ::/
  mcopy -i "$work/part.img" "$G/vmlinuz" ::/vmlinuz
  mcopy -i "$work/part.img" "$G/initramfs.cpio.gz" ::/initrd.gz
  mmd -i "$work/part.img" ::/EFI ::/EFI/BOOT ::/EFI/debian
  mcopy -i "$work/part.img" "$G/efi/shimx64.efi" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$work/part.img" "$G/efi/grubx64.efi" ::/EFI/BOOT/grubx64.efi
  mcopy -i "$work/part.img" "$work/grub.cfg" ::/EFI/BOOT/grub.cfg
  mcopy -i "$work/part.img" "$work/grub.cfg" ::/EFI/debian/grub.cfg
  # The MBR: SYSLINUX's boot code, a disk signature, one active partition from LBA 2048.
  python3 - "$SYSLINUX_MBR" "$work/part.img" "$work/boot.img" <<'PY'
import sys
mbr_code, part_path, out_path = sys.argv[1:]
start = 2048
part = open(part_path, "rb").read()
assert len(part) % 512 == 0
count = len(part) // 512

def chs(lba):
    # 255 heads x 63 sectors; past cylinder 1023 the conventional "use LBA" value.
    c, rem = divmod(lba, 255 * 63)
    h, s = divmod(rem, 63)
    if c > 1023:
        return bytes([0xFE, 0xFF, 0xFF])
    return bytes([h, (s + 1) | ((c >> 2) & 0xC0), c & 0xFF])

head = bytearray(start * 512)
code = open(mbr_code, "rb").read()[:440]
head[: len(code)] = code
head[440:444] = (0x56495254).to_bytes(4, "little")
entry = bytes([0x80]) + chs(start) + bytes([0xEF]) + chs(start + count - 1)
entry += start.to_bytes(4, "little") + count.to_bytes(4, "little")
head[446:462] = entry
head[510:512] = b"\x55\xaa"
with open(out_path, "wb") as f:
    f.write(head)
    f.write(part)
PY
  mv "$work/boot.img" "$G/boot.img"
  echo "$boot_stamp" > "$G/boot.stamp"
  rm -rf "$work"
  trap - EXIT
fi

if [ "$print_env" -eq 1 ]; then
  echo "KERNEL=$G/vmlinuz"
  echo "INITRAMFS=$G/initramfs.cpio.gz"
  echo "ROOTFS=$G/rootfs.ext4"
  echo "BOOTDISK=$G/boot.img"
  echo "MODULES=$G/modules"
  echo "KERNEL_VERSION=$KVER"
  if [ "$net" -eq 1 ]; then echo "INITRAMFS_NET=$G/initramfs-net.cpio.gz"; fi
else
  echo "kernel:     $G/vmlinuz ($KVER)"
  echo "initramfs:  $G/initramfs.cpio.gz"
  echo "rootfs:     $G/rootfs.ext4"
  echo "boot disk:  $G/boot.img"
  echo "modules:    $G/modules"
  if [ "$net" -eq 1 ]; then echo "net initramfs: $G/initramfs-net.cpio.gz"; fi
fi
