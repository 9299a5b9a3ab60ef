#!/usr/bin/env bash
# Network setup time per VMI: ours (virt-net's NetworkManager: namespace, veth onto the node
# bridge, k6t bridge + tap, addresses, sysctls, KubeVirt's masquerade rules in one nft -f, DHCP
# server) beside the peer a KubeVirt pod gets before virt-launcher starts: the CNI reference
# `bridge` plugin (containernetworking-plugins, host-local IPAM, ipMasq) doing ADD into a fresh
# namespace, and DEL. KubeVirt then adds its own masquerade setup inside the pod on top, so the
# peer figure is a lower bound for KubeVirt. Needs root; everything happens in namespaces made
# here and removed. N VMIs one after another (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
cni=/usr/lib/cni
[ -x "$cni/bridge" ] || { echo "containernetworking-plugins missing: run scripts/install-deps.sh" >&2; exit 1; }

echo "== ours (virt-net, cargo test setup_time_per_vmi) =="
cargo test -q -p virt-net --test pod_network setup_time_per_vmi -- --nocapture 2>&1 | grep "per VMI" || { echo "the virt-net test failed" >&2; exit 1; }

echo "== peer (CNI bridge plugin, ADD + DEL, $n namespaces) =="
node="bpeer-node-$$"
ip netns add "$node"
work=$(mktemp -d)
trap 'for i in $(seq 1 "$n"); do ip netns del "bpeer-$$-$i" 2>/dev/null || true; done; ip netns del "$node"; rm -rf "$work"' EXIT
conf='{"cniVersion":"0.4.0","name":"bench","type":"bridge","bridge":"cni-bench","isGateway":true,"ipMasq":true,
"ipam":{"type":"host-local","subnet":"10.245.0.0/16","dataDir":"'"$work"'/ipam"}}'
add_total=0; del_total=0
for i in $(seq 1 "$n"); do
  ns="bpeer-$$-$i"
  t0=$(date +%s%N)
  ip netns add "$ns"
  # The plugin runs in the node's namespace: here the one made for the bench.
  echo "$conf" | ip netns exec "$node" env CNI_COMMAND=ADD CNI_CONTAINERID="c$i" CNI_NETNS="/run/netns/$ns" \
    CNI_IFNAME=eth0 CNI_PATH="$cni" "$cni/bridge" >/dev/null
  t1=$(date +%s%N)
  echo "$conf" | ip netns exec "$node" env CNI_COMMAND=DEL CNI_CONTAINERID="c$i" CNI_NETNS="/run/netns/$ns" \
    CNI_IFNAME=eth0 CNI_PATH="$cni" "$cni/bridge" >/dev/null
  ip netns del "$ns"
  t2=$(date +%s%N)
  add_total=$((add_total + t1 - t0)); del_total=$((del_total + t2 - t1))
done
echo "CNI bridge, $n pods one after another: setup $((add_total / n / 1000000)) ms per pod, teardown $((del_total / n / 1000000)) ms per pod"
