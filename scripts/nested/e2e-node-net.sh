#!/usr/bin/env bash
# End-to-end test of the node's pod network on the native VMM, inside the nested-KVM L1 machine
# (scripts/nested/run.sh): our release `virt-node` runs in L1 with `--pod-network --backend native`,
# starting its confined `virt-launcher`s as it always does, with the tools virt-net drives (iproute2's
# `ip` and `nft`, shipped with their libraries) and the kernel modules they need (bridge, veth,
# nf_tables and its NAT expressions; scripts/nested/lib/moddeps.py). `virtctl create` makes a VM
# from a KubeVirt manifest: the Debian kernel + the test initramfs by kernel boot (a
# `kernelBoot.container` image pinned by digest with `imagePullPolicy: Never`, side-loaded into the
# node's image cache `<state>/images/<digest>/`, as `kind load` side-loads images: L1 has no
# registry), `virt.net=dhcp` (scripts/guest-assets.sh), 1 vCPU, 256 MiB, and one interface
# `default` on the pod network with the masquerade binding. The guest asks for its address with
# busybox `udhcpc` (the node's embedded DHCP server answers), pings the gateway 10.0.2.1, and serves
# busybox httpd on TCP 8080. L1 then reads the VMI's `status.interfaces`, reaches the service
# through `virtctl port-forward vm/netvm 18080:8080` with busybox wget, and stops the VM with
# `virtctl stop` (the ACPI power button; the guest powers off), after which no network namespace,
# veth, bridge or tap of the VMI may be left.
# Checks are printed as `ok - ...` / `FAIL - ...`, then `N passed, M failed`, then the figures
# (`e2e-node-net: ...`: the lease time on the guest's clock, L1's times from `virtctl create` to
# Running and to the lease, the node's pod network setup time per VMI). The exit code is non-zero
# on any failure (a missing tool, module or binary is a failure, not a skip).
#
# usage: [VIRT_BIN_DIR=DIR] scripts/nested/e2e-node-net.sh
#   VIRT_BIN_DIR  where the release virt-node, virt-launcher and virtctl are (default
#                 ${CARGO_TARGET_DIR:-target}/release; build them with
#                 `cargo build --release -p virt-launcher -p virt-node -p virtctl`)
#   L1_SMP, E2E_TIMEOUT (default 600): see scripts/nested/run.sh and e2e.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
BIN_DIR=${VIRT_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
die() { echo "e2e-node-net: $*" >&2; exit 2; }

for b in virt-node virt-launcher virtctl; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing: cargo build --release -p virt-launcher -p virt-node -p virtctl (or set VIRT_BIN_DIR)"
done
# iproute2's ip and nftables' nft: what virt-net runs (virt-net/src/netns.rs); busybox's ip has no netns.
if ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "e2e-node-net: ip or nft missing: running scripts/install-deps.sh" >&2
  "$here/../install-deps.sh" >&2
fi
ip_bin=$(command -v ip) || die "ip (iproute2) not installed"
nft_bin=$(command -v nft) || die "nft (nftables) not installed"
eval "$("$here/../guest-assets.sh" --print-env)"
[ -s "${KERNEL:-}" ] && [ -d "${MODULES:-}" ] || die "guest-assets.sh gave no kernel or modules"

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-e2e-node-net.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The native VMM boots a vmlinux decompressed on the host (as e2e-net.sh ships it); the launchers
# the node starts find it in $VIRT_CACHE_DIR/kernels in L1.
vml=$("$BIN_DIR/virt-launcher" --prepare-kernel --kernel "$KERNEL" --kernel-cache "$CACHE/kernels")
# Stripped copies: the release profile keeps line tables (virt-node ~200 MB), and L1 unpacks its
# whole initrd into RAM under emulation.
mkdir -p "$work/bin"
for b in virt-node virt-launcher virtctl; do
  if command -v strip >/dev/null 2>&1; then strip -o "$work/bin/$b" "$BIN_DIR/$b"; else cp "$BIN_DIR/$b" "$work/bin/$b"; fi
done
files=(--file "$here/lib/l2-vmm.sh:/lib/l2-vmm.sh"
       --file "$work/bin/virt-node:/payload/virt-node" --file "$work/bin/virt-launcher:/payload/virt-launcher"
       --file "$work/bin/virtctl:/payload/virtctl"
       --file "$ip_bin:/payload/ip" --file "$nft_bin:/payload/nft"
       --file "$vml:/var/cache/virt-rs/kernels/$(basename "$vml")")

# Kernel modules of the pod network, decompressed here, loaded in this order in L1. crc32c_generic
# first: libcrc32c (nf_tables, nf_conntrack) asks the crypto API for "crc32c" when it loads (a soft
# dependency, which moddeps.py does not follow) and fails with ENOENT without it.
NET_MODULES=(crc32c_generic bridge veth nf_tables nft_chain_nat nft_nat nft_masq)
python3 "$here/lib/moddeps.py" "$MODULES" "${NET_MODULES[@]}" > "$work/order"
mkdir -p "$work/mod"
: > "$work/mod/order"
while IFS=$'\t' read -r name path; do
  case "$path" in
    *.ko.xz) xz -dc "$path" > "$work/mod/$name.ko" ;;
    *.ko.zst) zstd -qdc "$path" > "$work/mod/$name.ko" ;;
    *.ko.gz) gzip -dc "$path" > "$work/mod/$name.ko" ;;
    *) cp "$path" "$work/mod/$name.ko" ;;
  esac
  echo "$name" >> "$work/mod/order"
  files+=(--file "$work/mod/$name.ko:/lib/modules/net/$name.ko")
done < "$work/order"
for m in "${NET_MODULES[@]}"; do
  grep -qx "$m" "$work/mod/order" || die "module $m not found in $MODULES"
done
files+=(--file "$work/mod/order:/lib/modules/net/order")

cat > "$work/vm.yaml" <<'VM'
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: netvm
  namespace: default
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 30
      domain:
        cpu:
          cores: 1
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            container:
              image: localhost/virt-rs/net-guest@sha256:@HEX@
              imagePullPolicy: Never
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
            kernelArgs: console=ttyS0 quiet panic=-1 virt.net=dhcp virt.net.port=8080
        devices:
          autoattachGraphicsDevice: false
          interfaces:
          - name: default
            masquerade: {}
      networks:
      - name: default
        pod: {}
VM
files+=(--file "$work/vm.yaml:/etc/e2e/vm.yaml")

cat > "$work/run-in-l1.sh" <<'L1'
. /lib/l2-vmm.sh
# L1's busybox sh runs its own applets before PATH: iproute2's ip and nft by their paths (the node
# finds them first on PATH, /payload).
ip() { /payload/ip "$@"; }
nft() { /payload/nft "$@"; }
STATE=/var/lib/virt-node
SOCK=/run/virt-node/node.sock
export VIRT_NODE=unix://$SOCK
# waitfor SECS COMMAND...: polls COMMAND every 0.2 s of L1 time until it succeeds; fails after SECS.
waitfor() {
  secs=$1; shift
  w0=$(l1_uptime)
  until "$@"; do
    awk -v a="$w0" -v b="$(l1_uptime)" -v t="$secs" 'BEGIN { exit !(b - a > t) }' && return 1
    sleep 0.2
  done
}
since() { awk -v a="$1" -v b="$(l1_uptime)" 'BEGIN { printf "%.2f", b - a }'; }
phase() { virtctl get vmi netvm 2>/dev/null | awk 'NR == 2 { print $3 }'; }
running() { [ "$(phase)" = Running ]; }
console_has() { grep -qsE -- "$1" /tmp/console.log; }
vmi_gone() { ! virtctl get vmi netvm >/dev/null 2>&1; }
no_vmi_netns() { [ -z "$(ip netns list 2>/dev/null | grep '^virt-')" ]; }
no_launcher() { [ -z "$(pgrep -f virt-launcher)" ]; }

n=0
while read -r m; do
  insmod "/lib/modules/net/$m.ko" || { echo "L1: insmod $m failed"; n=$((n + 1)); }
done < /lib/modules/net/order
echo "L1: net modules loaded ($(tr '\n' ' ' < /lib/modules/net/order)), $n failed"
ip link set lo up
mkdir -p /run/virt-node /run/netns "$STATE"
# The node hands the guest the name servers and search domain of its resolv.conf (as KubeVirt's pod).
printf 'search e2e.test\nnameserver 192.0.2.53\n' > /etc/resolv.conf

# Side-load the kernel-boot image into the node's image cache, named by the digest the manifest pins.
hex=$(cat /l2/vmlinuz /l2/initramfs.cpio.gz | sha256sum | cut -d' ' -f1)
mkdir -p "$STATE/images/$hex/boot"
cp /l2/vmlinuz "$STATE/images/$hex/boot/vmlinuz"
cp /l2/initramfs.cpio.gz "$STATE/images/$hex/boot/initrd.img"
sed "s/@HEX@/$hex/" /etc/e2e/vm.yaml > /tmp/vm.yaml

export VIRT_CACHE_DIR=/var/cache/virt-rs VIRT_LAUNCHER_LOG=info
virt-node --state-dir "$STATE" --socket "$SOCK" --backend native --pod-network > /tmp/node.log 2>&1 &
NODE=$!
if ! waitfor 60 test -S "$SOCK"; then
  echo "L1: the node never served $SOCK"
  sed 's/^/L1: node: /' /tmp/node.log
  exit 1
fi
echo "L1: node serving on $SOCK"
echo "L1: node side: $(ip -o addr show virt-pods 2>/dev/null | awk '{print $2, $4}' | tr '\n' ' ')"

t0=$(l1_uptime)
virtctl create -f /tmp/vm.yaml 2>&1 | sed 's/^/L1: virtctl: /'
if waitfor 180 running; then
  echo "L1: vmi Running $(since "$t0") s after create"
else
  echo "L1: vmi not Running after 180 s (phase $(phase))"
fi
# The VMI's run directory goes when it is deleted: follow its logs (tail keeps the files open).
have_console() { [ -n "$(find "$STATE" -name console.log 2>/dev/null)" ]; }
waitfor 10 have_console
run_dir=$(dirname "$(find "$STATE" -name console.log 2>/dev/null | head -n1)")
tail -n +1 -f "$run_dir/console.log" > /tmp/console.log 2>/dev/null &
TAILS=$!
tail -n +1 -f "$run_dir/launcher.log" > /tmp/launcher.log 2>/dev/null &
TAILS="$TAILS $!"
if waitfor 180 console_has "VIRT-E2E: (tcp service [0-9]+ (up|FAILED)|dhcp FAILED|net no device)"; then
  echo "L1: guest ready $(since "$t0") s after create"
else
  echo "L1: the guest never got to its TCP service"
fi
echo "L1: vmi json $(virtctl get vmi netvm -o json 2>&1 | tr -d '\n')"
echo "L1: netns $(ip netns list | tr '\n' ' ')"
for ns in $(ip netns list | awk '/^virt-/ {print $1}'); do
  echo "L1: in $ns: $(ip -n "$ns" -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')"
  echo "L1: in $ns: $(ip -n "$ns" -o -4 addr | awk '{print $2, $4}' | tr '\n' ' ')"
done

# The guest's service through the node's portforward subresource.
virtctl port-forward vm/netvm 18080:8080 > /tmp/pf.log 2>&1 &
PF=$!
if waitfor 20 grep -q "Forwarding from" /tmp/pf.log; then
  k=0
  while [ $k -lt 5 ]; do
    rm -f /tmp/reply
    # (busybox 1.35's wget crashes with -T and -O FILE together: timeout(1) bounds it instead.)
    timeout 20 wget -q -O - http://127.0.0.1:18080/ > /tmp/reply 2> /tmp/wget.err && break
    k=$((k + 1))
    sleep 1
  done
  echo "L1: port-forward reply: $(cat /tmp/reply 2>/dev/null) (tries $((k + 1)))"
  [ -s /tmp/reply ] || echo "L1: wget: $(cat /tmp/wget.err)"
else
  echo "L1: virtctl port-forward never listened"
fi
kill "$PF" 2>/dev/null
wait "$PF" 2>/dev/null
sed 's/^/L1: port-forward: /' /tmp/pf.log

echo "L1: qemu processes: $(pgrep -f qemu-system | wc -l)"
t1=$(l1_uptime)
virtctl stop netvm 2>&1 | sed 's/^/L1: virtctl: /'
if waitfor 90 vmi_gone; then echo "L1: vmi gone $(since "$t1") s after stop"; else echo "L1: vmi still there 90 s after stop (phase $(phase))"; fi
if waitfor 30 no_vmi_netns; then echo "L1: vmi netns gone"; else echo "L1: vmi netns left: $(ip netns list | tr '\n' ' ')"; fi
if waitfor 30 no_launcher; then echo "L1: launcher gone"; else echo "L1: launcher left: $(pgrep -f virt-launcher | tr '\n' ' ')"; fi
echo "L1: links after stop: $(ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' ')"
echo "L1: nft tables after stop: $(nft list tables 2>&1 | tr '\n' ' ')"

kill -TERM "$NODE"
waitfor 20 l1_ended "$NODE" || kill -KILL "$NODE"
wait "$NODE"
echo "L1: node exit=$?"
sleep 0.5
kill $TAILS 2>/dev/null
sed 's/^/L1: node: /' /tmp/node.log
sed 's/^/L1: launcher: /' /tmp/launcher.log
echo "L1: --- L2 console ($run_dir/console.log) ---"
cat /tmp/console.log
echo
echo "L1: --- end of the L2 console ---"
L1

mkdir -p "$CACHE/nested/logs"
logf=$CACHE/nested/logs/e2e-node-net-$(date +%Y%m%d-%H%M%S).log
set +e
"$here/run.sh" "${files[@]}" --timeout "${E2E_TIMEOUT:-600}" --log "$logf" --script "$work/run-in-l1.sh"
run_rc=$?
set -e

passed=0 failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then echo "ok - $what"; passed=$((passed + 1)); else echo "FAIL - $what"; failed=$((failed + 1)); fi
}
has() { grep -qF -- "$1" "$logf"; }
hasre() { grep -qE -- "$1" "$logf"; }
# vmi_json PYTHON_EXPR: the expression on the VMI L1 printed (as `v`) is true.
vmi_json() {
  sed -n 's/^L1: vmi json //p' "$logf" | tail -n1 | python3 -c '
import json, sys
try:
    v = json.loads(sys.stdin.read())
except ValueError:
    sys.exit(1)
sys.exit(0 if eval(sys.argv[1]) else 1)' "$1"
}
echo
echo "e2e-node-net: checks on $logf"
check "L1 loaded the pod network's modules (net modules loaded ..., 0 failed)" hasre "^L1: net modules loaded .*, 0 failed$"
check "the node served its API in L1 (L1: node serving)" has "L1: node serving on "
check "the node made its pod bridge (virt-pods 10.244.0.1/16)" hasre "^L1: node side: virt-pods 10\.244\.0\.1/16"
check "virtctl created the VM" has "L1: virtctl: virtualmachine.kubevirt.io/netvm created"
check "the VMI reached Running" has "L1: vmi Running "
check "the launcher ran the machine on the native VMM with KVM (machine ... runs on native (Kvm)" \
  hasre "^L1: launcher: .*machine [^ ]+ runs on native \(Kvm"
check "no QEMU ran (L1: qemu processes: 0)" has "L1: qemu processes: 0"
check "the guest's virtio_net driver bound the NIC (net dev eth0 ... driver=virtio_net)" \
  hasre "VIRT-E2E: net dev eth0 mac=02:[0-9a-f:]+ driver=virtio_net"
check "the guest's DHCP lease is 10.0.2.2/24 via 10.0.2.1 from our server (udhcpc: dhcp lease eth0 ip=10.0.2.2 mask=24 router=10.0.2.1 ... serverid=10.0.2.1)" \
  hasre "VIRT-E2E: dhcp lease eth0 ip=10\.0\.2\.2 mask=24 router=10\.0\.2\.1 .*serverid=10\.0\.2\.1 "
check "the lease carries the node's DNS and the VMI's name (dns=192.0.2.53 ... hostname=netvm)" \
  hasre "VIRT-E2E: dhcp lease eth0 .*dns=192\.0\.2\.53 .*hostname=netvm "
check "the guest pinged the gateway (VIRT-E2E: ping 10.0.2.1 ok)" has "VIRT-E2E: ping 10.0.2.1 ok"
check "the guest serves TCP 8080 (VIRT-E2E: tcp service 8080 up)" has "VIRT-E2E: tcp service 8080 up"
# KubeVirt's status.interfaces for a masquerade interface (without a guest agent): the pod's address
# (eth0 of the VMI's namespace), the MAC the guest sees.
guest_mac=$(sed -n 's/.*VIRT-E2E: net dev eth0 mac=\([0-9a-f:]*\) .*/\1/p' "$logf" | head -n1)
pod_ip=$(sed -n 's/^L1: in virt-[^:]*: .* eth0 \([0-9.]*\)\/[0-9]* .*/\1/p' "$logf" | head -n1)
check "status.interfaces has default with the pod's address ($pod_ip on the VMI namespace's eth0) and the guest's MAC ($guest_mac)" \
  vmi_json "v['status']['phase'] == 'Running' and any(i.get('name') == 'default' and i.get('ipAddress') == '$pod_ip' != '' and i.get('mac') == '$guest_mac' != '' for i in v['status']['interfaces'])"
check "the node wired the masquerade binding in the VMI's namespace (k6t-default 10.0.2.1/24, tap0)" \
  sh -c 'grep -qE "^L1: in virt-[^:]*: .*k6t-default 10\.0\.2\.1/24" "$1" && grep -qE "^L1: in virt-[^:]*: .* tap0( |$)" "$1"' _ "$logf"
check "virtctl port-forward vm/netvm 18080:8080 reached the guest's service (VIRT-E2E-HELLO from 10.0.2.2)" \
  has "L1: port-forward reply: VIRT-E2E-HELLO from 10.0.2.2 "
check "virtctl stop removed the VMI" has "L1: vmi gone "
check "the guest powered off at the ACPI power button (graceful stop)" hasre "VIRT-E2E: power button \("
check "no VMI network namespace is left" has "L1: vmi netns gone"
check "no launcher is left" has "L1: launcher gone"
check "no veth or tap of the VMI is left in the node's namespace" \
  sh -c 'l=$(sed -n "s/^L1: links after stop: //p" "$1"); [ -n "$l" ] && ! echo "$l" | grep -qE "(^| )(vh|tap|k6t)"' _ "$logf"
check "the node exited 0 on SIGTERM" has "L1: node exit=0"
check "the L1 run ended with exit 0 (run.sh exit $run_rc)" test "$run_rc" -eq 0
sed -n 's/.*VIRT-E2E: dhcp lease eth0 .* secs=\([0-9.]*\).*/e2e-node-net: lease (udhcpc start to bound, guest clock): \1 s/p' "$logf" | head -n1
sed -n 's/^L1: vmi Running \(.*\)/e2e-node-net: VMI Running \1/p; s/^L1: guest ready \(.*\)/e2e-node-net: guest lease + ping + service up \1/p; s/^L1: vmi gone \(.*\)/e2e-node-net: VMI gone \1/p' "$logf"
sed -n 's/^L1: node: .*VMI .*: \(pod network set up in [0-9]* ms\)/e2e-node-net: node: \1/p; s/^L1: node: .*VMI .*: launcher [0-9]* \(runs its machine .*\)/e2e-node-net: node: launcher \1/p' "$logf"
sed -n 's/^L1: launcher: .*virtio-net \([^:]*\): vhost-net moves the frames.*/e2e-node-net: data path: vhost-net (\1)/p; s/^L1: launcher: .*\(the machine runs as root: .*\)/e2e-node-net: launcher: \1/p' "$logf"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
