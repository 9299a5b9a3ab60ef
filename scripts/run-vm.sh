#!/usr/bin/env bash
# The README's main job: the local node runs a KubeVirt VirtualMachine and shows its console.
#
# It installs what is missing, builds the guest assets (Debian kernel + the project's initramfs) and
# the binaries, makes sure a local registry holds the demo kernel-boot image, starts `virt-node`
# (unless one runs), applies examples/vm-demo.yaml, starts the VM and attaches its serial console.
# On a terminal the console is yours (leave with Ctrl-]); otherwise it is shown until the guest's user
# space says hello. Where hardware KVM is missing (like the machines this project is built on) the node
# runs the VM under QEMU's software emulation (KubeVirt's useEmulation) and says so in the VMI's status.
#
# Afterwards: `virtctl get vmi demo -o yaml`, `virtctl console demo`, `virtctl stop demo`; the node
# keeps running (its log: $state/node.log).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release -q -p virt-node -p virt-launcher -p virtctl
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
registry=$(bash scripts/local-registry.sh)
state=${VIRT_NODE_STATE:-${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/node}
mkdir -p "$state"
export VIRT_NODE="unix://$state/node.sock"
virtctl() { "$bin/virtctl" "$@"; }

if ! virtctl version >/dev/null 2>&1; then
  echo "run-vm: starting virt-node (state in $state)"
  setsid "$bin/virt-node" --state-dir "$state" --socket "$state/node.sock" --launcher "$bin/virt-launcher" \
    --allow-emulation --insecure-registry "$registry" >>"$state/node.log" 2>&1 </dev/null &
  for _ in $(seq 100); do virtctl version >/dev/null 2>&1 && break; sleep 0.1; done
  virtctl version >/dev/null || { echo "run-vm: virt-node did not start:" >&2; tail -20 "$state/node.log" >&2; exit 1; }
fi
virtctl apply -f examples/vm-demo.yaml
phase=$(virtctl get vmi demo -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["phase"])' 2>/dev/null || true)
[ "$phase" = Running ] || virtctl start demo
for _ in $(seq 300); do
  phase=$(virtctl get vmi demo -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",{}).get("phase",""))' 2>/dev/null || true)
  [ "$phase" = Running ] && break
  [ "$phase" = Failed ] && { virtctl get vmi demo -o yaml; exit 1; }
  sleep 0.2
done
virtctl get vmi demo
if [ -t 0 ] && [ -t 1 ]; then
  exec "$bin/virtctl" console demo
fi
# Not on a terminal: show the console until the guest's user space says hello, then detach.
python3 - "$bin/virtctl" <<'PY'
import subprocess, sys, time
p = subprocess.Popen([sys.argv[1], "console", "demo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
seen, deadline = b"", time.time() + 600
while b"hello from cloud-init" not in seen and time.time() < deadline:
    chunk = p.stdout.read1(4096)
    if not chunk:
        break
    sys.stdout.buffer.write(chunk); sys.stdout.flush()
    seen += chunk
p.stdin.write(b"\x1d"); p.stdin.flush()
p.wait(timeout=30)
sys.exit(0 if b"hello from cloud-init" in seen else 1)
PY
echo
echo "run-vm: the VM runs on; try: VIRT_NODE=$VIRT_NODE $bin/virtctl console demo   (leave with Ctrl-])"
