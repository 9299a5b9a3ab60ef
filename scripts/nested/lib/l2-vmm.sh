# Sourced INSIDE L1 (busybox sh) by the run scripts of scripts/nested/e2e.sh and
# bench/boot.sh, so that the test and the benchmark start every L2 VMM with the same machine:
# 2 vCPUs, 256 MiB, the initramfs /l2/initramfs.cpio.gz, two virtio-blk disks in this order:
#   /l2/sig.img  1 MiB, read-only, "VIRT-SIGNATURE-1" in its first 16 bytes  (guest: /dev/vda)
#   /l2/rw.img   2 MiB, read-write, zeros                                     (guest: /dev/vdb)
# Settings (environment): L2_CPUS (2), L2_MEM (256), L2_TIMEOUT (300 s),
#   QEMU_MICROVM_OPTS: extra `-M microvm,...` properties (default none: QEMU's defaults),
#   VIRT_LAUNCHER_BIN: the launcher inside L1 (default: virt-launcher on PATH, i.e. /payload).

L2_CPUS=${L2_CPUS:-2}
L2_MEM=${L2_MEM:-256}
L2_TIMEOUT=${L2_TIMEOUT:-300}
L2_INITRAMFS=/l2/initramfs.cpio.gz

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
