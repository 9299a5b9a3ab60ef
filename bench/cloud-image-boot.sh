#!/usr/bin/env bash
# The peer figure for the Debian cloud image's boot (docs/cloud-image.md, "Measured"): plain
# qemu-system-x86_64 booting the same cached qcow2 (a qcow2 overlay on it) with the same NoCloud
# seed as the end-to-end test (user `virt`, a password, an SSH key in meta-data's public-keys),
# the same machine (q35, SeaBIOS, 1 vCPU, 1 GiB, virtio-blk, virtio-net, the agent's virtio-serial
# port) and the same accelerator (TCG unless --kvm), QEMU's user-mode network with a forwarded
# SSH port instead of the pod network. Prints QEMU start -> the guest agent answering guest-ping,
# -> the first SSH login, -> `cloud-init status --wait` done. Ours: the e2e test's MEASURED line
# (`cargo test -p virt-node --test cloud_image -- --nocapture`: VM start -> agent, -> ssh, -> done).
set -euo pipefail
cd "$(dirname "$0")/.."
accel=tcg
[ "${1:-}" = --kvm ] && accel=kvm
for t in qemu-system-x86_64 qemu-img mkfs.vfat mcopy ssh ssh-keygen python3; do
  command -v "$t" >/dev/null || { echo "$t missing: run scripts/install-deps.sh --cloud-image" >&2; exit 1; }
done
image=$(scripts/cloud-image.sh --print-env | sed -n 's/^IMAGE=//p')
work=$(mktemp -d)
qpid=
trap '[ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$work"' EXIT

qemu-img create -q -f qcow2 -F qcow2 -b "$image" "$work/root.qcow2" 3G
ssh-keygen -q -t ed25519 -N "" -f "$work/key"
printf 'instance-id: "peer.default"\nlocal-hostname: "debian"\npublic-keys:\n  - "%s"\n' "$(cat "$work/key.pub")" >"$work/meta-data"
printf '#cloud-config\nuser: virt\npassword: virt-rs-e2e\nchpasswd: {expire: false}\n' >"$work/user-data"
mkfs.vfat -C -n cidata "$work/seed.img" 2048 >/dev/null
mcopy -i "$work/seed.img" "$work/meta-data" "$work/user-data" ::
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

t0=$(date +%s%N)
qemu-system-x86_64 -no-user-config -nodefaults -machine q35,smm=off -accel "$accel" -cpu max -smp 1 -m 1024M \
  -bios /usr/share/seabios/bios-256k.bin -rtc base=utc \
  -drive if=none,id=root,file="$work/root.qcow2",format=qcow2 -device virtio-blk-pci,drive=root \
  -drive if=none,id=seed,file="$work/seed.img",format=raw -device virtio-blk-pci,drive=seed \
  -netdev user,id=n0,hostfwd=tcp:127.0.0.1:"$port"-:22 -device virtio-net-pci,netdev=n0,romfile= \
  -chardev socket,id=qga0,path="$work/qga.sock",server=on,wait=off \
  -device virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  -serial file:"$work/console.log" -display none &
qpid=$!

secs() { echo "scale=1; ($(date +%s%N) - $t0) / 1000000000" | bc; }
python3 - "$work/qga.sock" <<'PY'
import json, socket, sys, time
path = sys.argv[1]
while True:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError:
        time.sleep(0.2)
s.settimeout(2)
buf = b""
while True:
    try:
        # Until qemu-ga opens its port QEMU does not read the socket: a send may time out too.
        s.sendall(b'{"execute":"guest-ping"}\n')
        buf += s.recv(4096)
    except socket.timeout:
        continue
    if b'"return"' in buf:
        break
PY
agent=$(secs)
echo "peer: QEMU start -> guest agent answering guest-ping: ${agent} s"
sshopts=(-i "$work/key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
  -o ConnectTimeout=30 -o LogLevel=ERROR)
until ssh "${sshopts[@]}" virt@127.0.0.1 true 2>/dev/null; do sleep 1; done
login=$(secs)
echo "peer: QEMU start -> ssh login: ${login} s"
out=$(ssh "${sshopts[@]}" virt@127.0.0.1 cloud-init status --wait)
done_s=$(secs)
echo "peer: QEMU start -> cloud-init ${out//$'\n'/ }: ${done_s} s"
echo "MEASURED peer (plain QEMU, $accel): start -> agent ${agent} s, -> ssh ${login} s, -> cloud-init done ${done_s} s"
