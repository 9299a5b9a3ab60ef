# Sourced INSIDE L1 (busybox sh, after lib/l2-vmm.sh) by the run scripts of
# scripts/nested/e2e-cloud.sh and bench/cloud-boot-nested.sh: one L2 machine booting the project's
# Debian 12 cloud image (scripts/cloud-image.sh) by kernel boot, the same for either VMM:
#   kernel /l2/cloud/vmlinuz, initrd /l2/cloud/initrd.img (the image's own), command line $CLOUD_CMDLINE
#   vda  a fresh qcow2 overlay (a copy of /l2/cloud/overlay.qcow2, backed by /l2/cloud/debian-12.qcow2)
#   vdb  /l2/cloud/seed.img, read-only: the NoCloud seed (label cidata: an SSH key for `debian`,
#        a static 10.0.2.2/24 on the NIC with MAC $L2_MAC)
#   one virtio-net NIC on $L2_TAP, the guest agent's port org.qemu.guest_agent.0, ttyS0 to a file
#   $CLOUD_CPUS vCPUs (1), $CLOUD_MEM MiB (1024), all devices virtio-mmio.
# VMMs: virt = our launcher supervised and jailed (as lib/l2-vmm.sh's l2_net_start); qemu = QEMU's
# microvm with KVM (-M microvm, virtio-*-device, virtserialport on a unix socket).
# Needs socat and ssh on PATH (/payload), the key /l2/cloud/key.

CLOUD_CPUS=${CLOUD_CPUS:-1}
CLOUD_MEM=${CLOUD_MEM:-1024}
CLOUD_CMDLINE=${CLOUD_CMDLINE:-root=LABEL=debian-root ro console=ttyS0 quiet panic=-1}

# ssh needs a passwd entry for its user and a private key only it can read.
cloud_l1_setup() {
  mkdir -p /root /etc /l2/kernels
  [ -f /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
  [ -f /etc/group ] || echo 'root:x:0:' > /etc/group
  export HOME=/root
  chmod 600 /l2/cloud/key
}

# cloud_start VMM: starts the machine in the background. Sets CLOUD_DIR (run directory), L2_PID,
# L2_CONSOLE and CLOUD_T0 (L1 uptime at launch).
cloud_start() {
  vmm=$1
  CLOUD_DIR=/l2/run-cloud-$vmm
  rm -rf "$CLOUD_DIR"
  mkdir -p "$CLOUD_DIR"
  cp /l2/cloud/overlay.qcow2 "$CLOUD_DIR/root.qcow2"
  case "$vmm" in
    virt)
      cat > "$CLOUD_DIR/spec.json" <<SPEC
{"name": "cloud", "cpu": {"sockets": 1, "cores": $CLOUD_CPUS, "threads": 1}, "memoryMib": $CLOUD_MEM,
 "boot": {"Kernel": {"kernel": "/l2/cloud/vmlinuz", "initramfs": "/l2/cloud/initrd.img", "cmdline": "$CLOUD_CMDLINE"}},
 "disks": [{"name": "root", "path": "$CLOUD_DIR/root.qcow2", "format": "Qcow2", "bus": "Virtio"},
           {"name": "seed", "path": "/l2/cloud/seed.img", "format": "Raw", "bus": "Virtio", "readOnly": true}],
 "interfaces": [{"name": "net0", "mac": "$L2_MAC", "model": "virtio", "backend": {"tap": {"name": "$L2_TAP"}}}]}
SPEC
      L2_CONSOLE=$CLOUD_DIR/console.log
      CLOUD_T0=$(l1_uptime)
      "${VIRT_LAUNCHER_BIN:-virt-launcher}" --spec "$CLOUD_DIR/spec.json" --run-dir "$CLOUD_DIR" --backend native \
        --kernel-cache /l2/kernels --grace-period "${L2_GRACE:-120}" < /dev/null > "$CLOUD_DIR/launcher.log" 2>&1 &
      L2_PID=$!
      ;;
    qemu)
      L2_CONSOLE=$CLOUD_DIR/console.log
      CLOUD_T0=$(l1_uptime)
      qemu-system-x86_64 -M "microvm${QEMU_MICROVM_OPTS:+,$QEMU_MICROVM_OPTS}" -enable-kvm -cpu host \
        -smp "$CLOUD_CPUS" -m "$CLOUD_MEM" -nographic -no-reboot \
        -kernel /l2/cloud/vmlinuz -initrd /l2/cloud/initrd.img -append "$CLOUD_CMDLINE" \
        -drive "if=none,id=root,file=$CLOUD_DIR/root.qcow2,format=qcow2" -device virtio-blk-device,drive=root \
        -drive if=none,id=seed,file=/l2/cloud/seed.img,format=raw,readonly=on -device virtio-blk-device,drive=seed \
        -netdev "tap,id=n0,ifname=$L2_TAP,script=no,downscript=no,vhost=off" \
        -device "virtio-net-device,netdev=n0,mac=$L2_MAC" \
        -chardev "socket,id=qga0,path=$CLOUD_DIR/qga.sock,server=on,wait=off" \
        -device virtio-serial-device -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
        < /dev/null > "$L2_CONSOLE" 2>&1 &
      L2_PID=$!
      ;;
    *)
      echo "cloud_start: unknown VMM '$vmm' (virt or qemu)"
      return 2
      ;;
  esac
}

# cloud_failed: whether the guest's console shows a failed boot (sets CLOUD_WHY to the line).
cloud_failed() {
  CLOUD_WHY=$(grep -m1 -oE 'Kernel panic.*|Failed to mount.*|reboot: Restarting system' "$L2_CONSOLE" 2>/dev/null)
  [ -n "$CLOUD_WHY" ]
}

cloud_since() { awk -v a="$CLOUD_T0" -v b="$(l1_uptime)" 'BEGIN { printf "%.2f", b - a }'; }
cloud_over() { awk -v a="$CLOUD_T0" -v b="$(l1_uptime)" -v t="$1" 'BEGIN { exit !(b - a > t) }'; }

# cloud_agent VMM: one question to the guest agent, its answer on stdout.
#   virt: the launcher's control socket, {"op":"guestAgent"} (its agent client's latest report)
#   qemu: guest-ping then guest-get-osinfo on the agent's socket
cloud_agent() {
  case "$1" in
    virt) printf '{"op":"guestAgent"}\n' | timeout 5 socat -t 3 - "UNIX-CONNECT:$CLOUD_DIR/control.sock" 2>/dev/null ;;
    qemu) printf '{"execute":"guest-ping"}\n{"execute":"guest-get-osinfo"}\n' \
            | timeout 5 socat -t 2 - "UNIX-CONNECT:$CLOUD_DIR/qga.sock" 2>/dev/null ;;
  esac
}

# cloud_wait_agent VMM SECS: waits until the agent answers; prints
#   L1: cloud VMM agent answered after S s: <answer>     (or `... agent never answered ...`)
# virt counts when the launcher reports `"connected":true` with the OS (its client polls every 5 s).
cloud_wait_agent() {
  while :; do
    a=$(cloud_agent "$1")
    case "$1" in
      virt) case "$a" in *'"connected":true'*'"os"'*) break ;; esac ;;
      qemu) case "$a" in *'"return"'*'"return"'*) break ;; esac ;;
    esac
    l1_ended "$L2_PID" && { echo "L1: cloud $1 agent never answered: the VMM ended after $(cloud_since) s"; return 1; }
    cloud_failed && { echo "L1: cloud $1 agent never answered: the guest failed to boot ($CLOUD_WHY) after $(cloud_since) s"; return 1; }
    cloud_over "$2" && { echo "L1: cloud $1 agent never answered in $2 s"; return 1; }
    sleep 0.2
  done
  echo "L1: cloud $1 agent answered after $(cloud_since) s: $(echo "$a" | tr '\n' ' ')"
}

cloud_ssh() {
  ssh -i /l2/cloud/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    -o ConnectTimeout=5 -o LogLevel=ERROR "debian@${L2_ADDR:-10.0.2.2}" "$@"
}

# cloud_wait_ssh VMM SECS: waits until ssh logs in with the key and runs a command; prints
#   L1: cloud VMM ssh login after S s: <the command's output>
cloud_wait_ssh() {
  while ! out=$(cloud_ssh 'echo "ssh-ok user=$(id -un) $(. /etc/os-release; echo "$PRETTY_NAME") kernel=$(uname -r)"' 2>/tmp/ssh.err); do
    l1_ended "$L2_PID" && { echo "L1: cloud $1 ssh never logged in: the VMM ended after $(cloud_since) s"; return 1; }
    cloud_failed && { echo "L1: cloud $1 ssh never logged in: the guest failed to boot ($CLOUD_WHY)"; return 1; }
    cloud_over "$2" && { echo "L1: cloud $1 ssh never logged in in $2 s: $(tail -n1 /tmp/ssh.err)"; return 1; }
    sleep 0.5
  done
  echo "L1: cloud $1 ssh login after $(cloud_since) s: $out"
}

# cloud_stop VMM SECS: the graceful stop, then waits up to SECS for the VMM to end (killed after).
#   virt: SIGTERM to the launcher (its agent's guest-shutdown, the ACPI button as fall-back)
#   qemu: guest-shutdown on the agent's socket
# Prints `L1: cloud VMM exit=RC stop-to-exit=S s` and returns RC.
cloud_stop() {
  ts=$(l1_uptime)
  case "$1" in
    virt) kill -TERM "$L2_PID" ;;
    # The connection stays open a while: QEMU reads the socket only as the guest's port takes bytes,
    # and what it has not read when the client goes is lost (a one-second client's shutdown was).
    qemu) { printf '{"execute":"guest-shutdown"}\n'; sleep 15; } \
            | timeout 20 socat - "UNIX-CONNECT:$CLOUD_DIR/qga.sock" >/dev/null 2>&1 & ;;
  esac
  while ! l1_ended "$L2_PID"; do
    if awk -v a="$ts" -v b="$(l1_uptime)" -v t="$2" 'BEGIN { exit !(b - a > t) }'; then
      echo "L1: cloud $1 still running $2 s after the stop: killed"
      kill -KILL "$L2_PID"
    fi
    sleep 0.1
  done
  wait "$L2_PID"
  rc=$?
  grep -qs "reboot: Power down" "$L2_CONSOLE" && echo "L1: cloud $1 guest console: reboot: Power down"
  echo "L1: cloud $1 exit=$rc stop-to-exit=$(awk -v a="$ts" -v b="$(l1_uptime)" 'BEGIN { printf "%.2f", b - a }') s"
  return $rc
}

# cloud_dump VMM: the run's logs between marker lines.
cloud_dump() {
  if [ "$1" = virt ]; then
    echo "L1: exit.json $(cat "$CLOUD_DIR/exit.json" 2>/dev/null || echo '<missing>')"
    echo "L1: --- launcher log ---"
    cat "$CLOUD_DIR/launcher.log" 2>/dev/null
  fi
  echo "L1: --- L2 console ($1) ---"
  cat "$L2_CONSOLE" 2>/dev/null
  echo
  echo "L1: --- end of the L2 console ---"
}
