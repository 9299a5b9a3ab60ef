# Sourced INSIDE L1 (busybox sh) by the run scripts of scripts/nested/e2e.sh and
# bench/boot.sh, so that the test and the benchmark start every L2 VMM with the same machine:
# 2 vCPUs, 256 MiB, the initramfs /l2/initramfs.cpio.gz, two virtio-blk disks in this order:
#   /l2/sig.img  1 MiB, read-only, "VIRT-SIGNATURE-1" in its first 16 bytes  (guest: /dev/vda)
#   /l2/rw.img   2 MiB, read-write, zeros                                     (guest: /dev/vdb)
# Settings (environment): L2_CPUS (2), L2_MEM (256), L2_TIMEOUT (300 s), L2_GRACE (60 s, l2_run_button),
#   QEMU_MICROVM_OPTS: extra `-M microvm,...` properties (default none: QEMU's defaults),
#   VIRT_LAUNCHER_BIN: the launcher inside L1 (default: virt-launcher on PATH, i.e. /payload),
#   L2_INITRAMFS (/l2/initramfs.cpio.gz); for the NIC functions at the end: L2_TAP (tap0),
#   L2_MAC (52:54:00:12:34:56), L1_ADDR (10.0.2.1/24).

L2_CPUS=${L2_CPUS:-2}
L2_MEM=${L2_MEM:-256}
L2_TIMEOUT=${L2_TIMEOUT:-300}
L2_INITRAMFS=${L2_INITRAMFS:-/l2/initramfs.cpio.gz}

# Uptime of L1 in seconds (10 ms resolution; busybox date has no %N).
l1_uptime() { read -r u _ < /proc/uptime; echo "$u"; }

# Fresh disks for one run.
l2_make_disks() {
  dd if=/dev/zero of=/l2/sig.img bs=1024 count=1024 2>/dev/null
  printf 'VIRT-SIGNATURE-1' | dd of=/l2/sig.img conv=notrunc 2>/dev/null
  dd if=/dev/zero of=/l2/rw.img bs=1024 count=2048 2>/dev/null
}

# l2_run VMM KERNEL CMDLINE: runs one L2 guest to its end; the console goes to stdout.
#   VMM: qemu (QEMU's microvm machine with KVM) or virt (our virt-launcher).
# Returns the VMM's exit code (143 or 137 when L2_TIMEOUT killed it).
l2_run() {
  vmm=$1 kernel=$2 cmdline=$3
  case "$vmm" in
    qemu)
      timeout -s KILL "$L2_TIMEOUT" qemu-system-x86_64 \
        -M "microvm${QEMU_MICROVM_OPTS:+,$QEMU_MICROVM_OPTS}" -enable-kvm -cpu host \
        -smp "$L2_CPUS" -m "$L2_MEM" -nographic -nic none -no-reboot \
        -kernel "$kernel" -initrd "$L2_INITRAMFS" -append "$cmdline" \
        -drive if=none,id=sig,file=/l2/sig.img,format=raw,readonly=on -device virtio-blk-device,drive=sig \
        -drive if=none,id=rw,file=/l2/rw.img,format=raw -device virtio-blk-device,drive=rw \
        < /dev/null
      ;;
    virt)
      # A kernel cache shipped into /l2/kernels (virt-launcher --prepare-kernel on the host) spares
      # the launcher decompressing the bzImage inside L1; without one it decompresses it itself.
      timeout -s KILL "$L2_TIMEOUT" "${VIRT_LAUNCHER_BIN:-virt-launcher}" \
        --kernel "$kernel" --initramfs "$L2_INITRAMFS" --cmdline "$cmdline" \
        --kernel-cache /l2/kernels \
        --memory "$L2_MEM" --cpus "$L2_CPUS" \
        --disk /l2/sig.img,readonly --disk /l2/rw.img \
        < /dev/null
      ;;
    *)
      echo "l2_run: unknown VMM '$vmm' (qemu or virt)"
      return 2
      ;;
  esac
}

# Whether process $1 has ended (gone, or a zombie not yet waited for: `kill -0` succeeds on those).
l1_ended() {
  st=
  [ -r "/proc/$1/stat" ] || return 0
  read -r _ _ st _ 2>/dev/null < "/proc/$1/stat"
  [ -z "$st" ] || [ "$st" = Z ]
}

# l1_jail_report KEEPER_PID: one line per child of the launcher's keeper (the jailed launcher):
#   L1: jailed launcher pid=N uid=U mnt=own|host pidns=own|host root: <what / holds in its view>
l1_jail_report() {
  for st in /proc/[0-9]*/stat; do
    read -r c _ _ pp _ 2>/dev/null < "$st" || continue
    [ "$pp" = "$1" ] || continue
    uid=$(awk '/^Uid:/ { print $2 }' "/proc/$c/status" 2>/dev/null)
    mnt=host pidns=host
    [ "$(readlink "/proc/$c/ns/mnt")" = "$(readlink /proc/self/ns/mnt)" ] || mnt=own
    [ "$(readlink "/proc/$c/ns/pid")" = "$(readlink /proc/self/ns/pid)" ] || pidns=own
    echo "L1: jailed launcher pid=$c uid=$uid mnt=$mnt pidns=$pidns root: $(ls "/proc/$c/root" | tr '\n' ' ')"
  done
}

# l2_run_button KERNEL CMDLINE: our launcher supervised, as the node runs it
#   virt-launcher --spec /l2/run/spec.json --run-dir /l2/run --backend native --grace-period $L2_GRACE
# on the machine `l2_run virt` boots (2 vCPUs, 256 MiB, sig.img read-only then rw.img). CMDLINE
# carries virt.exit=button: when the guest prints `VIRT-E2E: waiting for the power button`, the
# launcher gets SIGTERM, which it turns into the ACPI power button (and a forced stop if the guest
# has not powered off after L2_GRACE s, default 60). Prints `L1: power button pressed at <L1 uptime>`,
# `L1: press-to-exit <s> (exit.json after <s>)` (from the SIGTERM to the launcher's exit and to its
# exit.json, polled every 50 ms), `L1: exit.json <contents>`, then the guest console
# (/l2/run/console.log) between marker lines, so that it does not interleave with L1's lines.
# Returns the launcher's exit code (137 if L2_TIMEOUT killed it).
l2_run_button() {
  kernel=$1 cmdline=$2 dir=/l2/run
  rm -rf "$dir"
  mkdir -p "$dir"
  cat > "$dir/spec.json" <<SPEC
{"name": "e2e", "cpu": {"sockets": 1, "cores": $L2_CPUS, "threads": 1}, "memoryMib": $L2_MEM,
 "boot": {"Kernel": {"kernel": "$kernel", "initramfs": "$L2_INITRAMFS", "cmdline": "$cmdline"}},
 "disks": [{"name": "sig", "path": "/l2/sig.img", "format": "Raw", "bus": "Virtio", "readOnly": true},
           {"name": "rw", "path": "/l2/rw.img", "format": "Raw", "bus": "Virtio"}]}
SPEC
  # Fully confined, as the node runs it. L1's root file system is its initramfs (rootfs), which
  # pivot_root(2) cannot leave (EINVAL): the jail moves its root onto / and chroots instead
  # (docs/confinement.md).
  "${VIRT_LAUNCHER_BIN:-virt-launcher}" --spec "$dir/spec.json" --run-dir "$dir" --backend native \
    --kernel-cache /l2/kernels --grace-period "${L2_GRACE:-60}" < /dev/null &
  pid=$!
  t0=$(l1_uptime)
  pressed= recorded=
  while ! l1_ended "$pid"; do
    if [ -n "$pressed" ] && [ -z "$recorded" ] && [ -e "$dir/exit.json" ]; then recorded=$(l1_uptime); fi
    if [ -z "$pressed" ] && grep -qs "VIRT-E2E: waiting for the power button" "$dir/console.log"; then
      pressed=$(l1_uptime)
      l1_jail_report "$pid"
      echo "L1: power button pressed at $pressed (SIGTERM to the launcher)"
      kill -TERM "$pid"
    fi
    if awk -v a="$t0" -v b="$(l1_uptime)" -v t="$L2_TIMEOUT" 'BEGIN { exit !(b - a > t) }'; then
      echo "L1: L2 timed out after $L2_TIMEOUT s"
      kill -KILL "$pid"
    fi
    sleep 0.05
  done
  t1=$(l1_uptime)
  wait "$pid"
  rc=$?
  if [ -n "$pressed" ]; then
    echo "L1: press-to-exit $(awk -v a="$pressed" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" \
      "(exit.json after $(awk -v a="$pressed" -v b="${recorded:-$t1}" 'BEGIN { printf "%.2f", b - a }'))"
  fi
  echo "L1: exit.json $(cat "$dir/exit.json" 2>/dev/null || echo '<missing>')"
  echo "L1: --- L2 console ($dir/console.log) ---"
  cat "$dir/console.log" 2>/dev/null
  echo
  echo "L1: --- end of the L2 console ---"
  return $rc
}

# --- one NIC on a tap in L1 (scripts/nested/e2e-net.sh, bench/net-throughput.sh) ----------------
L2_TAP=${L2_TAP:-tap0}
L2_MAC=${L2_MAC:-52:54:00:12:34:56}
L1_ADDR=${L1_ADDR:-10.0.2.1/24}

# l1_tap_up: a persistent tap $L2_TAP in L1 (busybox tunctl: IFF_TAP|IFF_NO_PI; a VMM attaching
# adds IFF_VNET_HDR) with the address $L1_ADDR, up. The L2 NIC's carrier follows the VMM's attach.
l1_tap_up() {
  [ -c /dev/net/tun ] || { echo "L1: /dev/net/tun missing (tun module not loaded?)"; return 1; }
  ip link set lo up
  tunctl -t "$L2_TAP" >/dev/null || { echo "L1: tunctl -t $L2_TAP failed"; return 1; }
  ip addr add "$L1_ADDR" dev "$L2_TAP" && ip link set "$L2_TAP" up || { echo "L1: $L2_TAP setup failed"; return 1; }
  echo "L1: $L2_TAP up $L1_ADDR"
}

# l2_net_start VMM KERNEL CMDLINE: starts an L2 machine in the background with no disk and one
# virtio-net NIC (MAC $L2_MAC) on $L2_TAP. Sets L2_PID and L2_CONSOLE (the file the guest console
# goes to). VMM:
#   virt        our launcher, supervised and jailed as l2_run_button runs it, the NIC from the
#               spec's `interfaces` (model virtio, backend tap $L2_TAP, "vhost": "off": the
#               VMM's userspace data path); run dir /l2/run-net
#   virt-vhost  the same with "vhost": "on" (the kernel's vhost-net moves the frames; the launcher
#               logs at info level, so launcher.log says which path serves the NIC)
#   qemu        QEMU's microvm, -netdev tap (vhost off) + virtio-net-device (virtio-mmio, as ours)
#   qemu-vhost  the same with vhost=on (needs /dev/vhost-net: the vhost_net module)
l2_net_start() {
  vmm=$1 kernel=$2 cmdline=$3
  case "$vmm" in
    virt|virt-vhost)
      vhost=off
      [ "$vmm" = virt-vhost ] && vhost=on
      dir=/l2/run-net
      rm -rf "$dir"
      mkdir -p "$dir"
      cat > "$dir/spec.json" <<SPEC
{"name": "net", "cpu": {"sockets": 1, "cores": $L2_CPUS, "threads": 1}, "memoryMib": $L2_MEM,
 "boot": {"Kernel": {"kernel": "$kernel", "initramfs": "$L2_INITRAMFS", "cmdline": "$cmdline"}},
 "interfaces": [{"name": "net0", "mac": "$L2_MAC", "model": "virtio", "backend": {"tap": {"name": "$L2_TAP"}}, "vhost": "$vhost"}]}
SPEC
      L2_CONSOLE=$dir/console.log
      VIRT_LAUNCHER_LOG=${VIRT_LAUNCHER_LOG:-info} "${VIRT_LAUNCHER_BIN:-virt-launcher}" --spec "$dir/spec.json" --run-dir "$dir" --backend native \
        --kernel-cache /l2/kernels --grace-period 10 < /dev/null > "$dir/launcher.log" 2>&1 &
      L2_PID=$!
      ;;
    qemu|qemu-vhost)
      vhost=off
      [ "$vmm" = qemu-vhost ] && vhost=on
      L2_CONSOLE=/l2/qemu-net.log
      qemu-system-x86_64 -M "microvm${QEMU_MICROVM_OPTS:+,$QEMU_MICROVM_OPTS}" -enable-kvm -cpu host \
        -smp "$L2_CPUS" -m "$L2_MEM" -nographic -no-reboot \
        -kernel "$kernel" -initrd "$L2_INITRAMFS" -append "$cmdline" \
        -netdev "tap,id=n0,ifname=$L2_TAP,script=no,downscript=no,vhost=$vhost" \
        -device "virtio-net-device,netdev=n0,mac=$L2_MAC" \
        < /dev/null > "$L2_CONSOLE" 2>&1 &
      L2_PID=$!
      ;;
    *)
      echo "l2_net_start: unknown VMM '$vmm' (virt, virt-vhost, qemu or qemu-vhost)"
      return 2
      ;;
  esac
}

# l1_wait_console TEXT SECS: waits until the L2 console holds TEXT; fails after SECS seconds of L1
# time or when the VMM ($L2_PID) ended first.
l1_wait_console() {
  t0=$(l1_uptime)
  while ! grep -qsF -- "$1" "$L2_CONSOLE"; do
    l1_ended "$L2_PID" && return 1
    awk -v a="$t0" -v b="$(l1_uptime)" -v t="$2" 'BEGIN { exit !(b - a > t) }' && return 1
    sleep 0.05
  done
}

# l1_iperf3 LABEL SECS [-R]: one iperf3 test against the guest's server at ${L2_ADDR:-10.0.2.2}
# (retried while the server is not listening yet), printing
#   L1: iperf3 LABEL dir=host-to-guest|guest-to-host mbps=<receiver's Mbit/s> retr=<sender's retransmits>
# (or `L1: iperf3 LABEL ... FAILED`) and iperf3's output to /tmp/iperf3.last.
l1_iperf3() {
  label=$1 secs=$2 rev=${3:-}
  dir=host-to-guest
  [ "$rev" = -R ] && dir=guest-to-host
  n=0
  while :; do
    iperf3 -c "${L2_ADDR:-10.0.2.2}" -t "$secs" -f m $rev > /tmp/iperf3.last 2>&1 && break
    n=$((n + 1))
    if [ $n -ge 50 ] || ! grep -qE 'Connection refused|unable to connect' /tmp/iperf3.last; then
      echo "L1: iperf3 $label dir=$dir FAILED"
      cat /tmp/iperf3.last
      return 1
    fi
    sleep 0.2
  done
  mbps=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }' /tmp/iperf3.last | tail -n1)
  retr=$(awk '/sender/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i + 1) }' /tmp/iperf3.last | tail -n1)
  echo "L1: iperf3 $label dir=$dir mbps=${mbps:-?} retr=${retr:-?}"
}

# l2_net_stop SECS: waits up to SECS seconds of L1 time for the L2 VMM to end (the guest powers
# off after its iperf3 servers), then kills it; prints `L1: l2 <pid> exit=<rc>` and the console
# between marker lines. Returns the VMM's exit code.
l2_net_stop() {
  t0=$(l1_uptime)
  while ! l1_ended "$L2_PID"; do
    if awk -v a="$t0" -v b="$(l1_uptime)" -v t="$1" 'BEGIN { exit !(b - a > t) }'; then
      echo "L1: L2 still running after $1 s: killed"
      kill -KILL "$L2_PID"
    fi
    sleep 0.05
  done
  wait "$L2_PID"
  rc=$?
  echo "L1: l2 exit=$rc"
  echo "L1: --- L2 console ($L2_CONSOLE) ---"
  cat "$L2_CONSOLE" 2>/dev/null
  echo
  echo "L1: --- end of the L2 console ---"
  return $rc
}
