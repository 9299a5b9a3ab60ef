#!/usr/bin/env bash
# The README's main job: a real Debian cloud VM from a golden image, logged into.
#
#  1. builds the project's Debian cloud image (scripts/cloud-image.sh; cached) and publishes it to
#     the local registry;
#  2. starts virt-node (unless one runs) and applies examples/debian-image-cron.yaml: the
#     DataImportCron imports the image into os-images and its DataSource `debian` points at it;
#  3. puts your SSH public key (~/.ssh/id_ed25519.pub or id_rsa.pub; else a key generated into
#     $state/id_ed25519) into the Secret `my-ssh-key`;
#  4. applies examples/vm-debian.yaml (a clone of the golden image through dataVolumeTemplates, the
#     key by accessCredentials, the pod network with masquerade), starts it, and once sshd answers
#     runs `virtctl ssh virt@vm/debian -- cat /etc/os-release` through the node's port-forward
#     (after cloud-init's end); on a terminal it then logs you in.
# Where hardware KVM is missing the VM runs under QEMU's emulation: the first boot then takes
# minutes (progress is printed). The node runs with `--pod-network` in this machine's network
# namespace (bridge virt-pods, 10.244.0.0/16, masqueraded on the way out: the guest reaches the
# Internet). Afterwards: `virtctl ssh virt@vm/debian`, `virtctl console debian`, `virtctl stop debian`.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "run-cloud-vm: $*" >&2; }

bash scripts/install-deps.sh --cloud-image
cargo build --release -q -p virt-node -p virt-launcher -p virtctl
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
say "building (or taking from the cache) the Debian cloud image"
eval "$(bash scripts/cloud-image.sh --publish --print-env)"
state=${VIRT_NODE_STATE:-${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/node}
mkdir -p "$state"
export VIRT_NODE="unix://$state/node.sock"
virtctl() { "$bin/virtctl" "$@"; }
jget() { python3 -c 'import json,sys
try:
    v=json.load(sys.stdin)
except ValueError:  # nothing (the object does not exist yet) or not JSON: no value
    v=None
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else (v or {}).get(k)
print("" if v is None else v)' "$1"; }

if ! virtctl version >/dev/null 2>&1; then
  say "starting virt-node (state in $state)"
  setsid "$bin/virt-node" --state-dir "$state" --socket "$state/node.sock" --launcher "$bin/virt-launcher" \
    --allow-emulation --insecure-registry "$REGISTRY" --pod-network >>"$state/node.log" 2>&1 </dev/null &
  for _ in $(seq 100); do virtctl version >/dev/null 2>&1 && break; sleep 0.1; done
  virtctl version >/dev/null || { say "virt-node did not start:"; tail -20 "$state/node.log" >&2; exit 1; }
fi

# A DataImportCron is created once (the node does not replace crons).
virtctl create -f examples/debian-image-cron.yaml 2>/dev/null || true
t0=$(date +%s)
ds() { curl -s --unix-socket "$state/node.sock" http://node/apis/cdi.kubevirt.io/v1beta1/namespaces/os-images/datasources/debian; }
until [ -n "$(ds 2>/dev/null | jget spec.source.pvc.name 2>/dev/null)" ]; do
  sleep 5; say "importing the golden image into os-images ($(( $(date +%s) - t0 )) s)"
done
say "DataSource os-images/debian -> $(ds | jget spec.source.pvc.name)"

key=""
for k in "$HOME/.ssh/id_ed25519.pub" "$HOME/.ssh/id_rsa.pub"; do [ -f "$k" ] && [ -f "${k%.pub}" ] && { key=$k; break; }; done
if [ -z "$key" ]; then
  [ -f "$state/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C "virt-rs demo" -f "$state/id_ed25519"
  key=$state/id_ed25519.pub
  say "generated an SSH key: $state/id_ed25519"
fi
python3 - "$key" > "$state/my-ssh-key.json" <<'PY'
import json, sys
print(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "my-ssh-key"},
                  "stringData": {"key1": open(sys.argv[1]).read().strip()}}))
PY
virtctl apply -f "$state/my-ssh-key.json"
virtctl apply -f examples/vm-debian.yaml
[ "$(virtctl get vmi debian -o json 2>/dev/null | jget status.phase)" = Running ] || virtctl start debian
t0=$(date +%s)
until [ "$(virtctl get vmi debian -o json 2>/dev/null | jget status.phase)" = Running ]; do
  sleep 5; say "cloning the golden image and starting ($(( $(date +%s) - t0 )) s)"
done
virtctl get vmi debian
# The guest's host key is new (each clone makes its own): accepted on first use, kept in the
# state directory's known_hosts.
ssh_opts=(-i "${key%.pub}" --known-hosts "$state/known_hosts" -t "-o StrictHostKeyChecking=accept-new"
  -t "-o ConnectTimeout=30" -t "-o LogLevel=ERROR")
t0=$(date +%s)
until virtctl ssh virt@vm/debian "${ssh_opts[@]}" -t "-o BatchMode=yes" -c "cloud-init status --wait >/dev/null" 2>/dev/null; do
  sleep 5; say "booting: waiting for sshd and cloud-init ($(( $(date +%s) - t0 )) s)"
done
say "logged in with ${key%.pub} after $(( $(date +%s) - t0 )) s"
echo "\$ virtctl ssh virt@vm/debian -- cat /etc/os-release"
virtctl ssh virt@vm/debian "${ssh_opts[@]}" -- cat /etc/os-release
virtctl get vmi debian -o json | python3 -c 'import json,sys
s=json.load(sys.stdin).get("status",{})
print("guest agent:", s.get("guestOSInfo",{}).get("prettyName","(not yet)"), "| interfaces:",
      ", ".join("%s %s (%s)" % (i.get("interfaceName"), i.get("ipAddress"), i.get("infoSource")) for i in s.get("interfaces",[])))'
if [ -t 0 ] && [ -t 1 ]; then
  say "logging you in (leave with exit)"
  exec "$bin/virtctl" ssh virt@vm/debian "${ssh_opts[@]}"
fi
say "the VM runs on: VIRT_NODE=$VIRT_NODE $bin/virtctl ssh virt@vm/debian -i ${key%.pub}"
