#!/usr/bin/env bash
# Kubernetes adapter figures beside KubeVirt's published ones (not a test): on the real single-node
# cluster of scripts/k8s (built once, cached), with the API server's audit log on, runs
# bins/virt-controller/tests/cluster_bench.rs, which prints:
#   VMI create -> Running p50/p95 over 20 VMIs created at once (the guest's boot excluded; KubeVirt
#     publishes 15-25 s p50), virt-controller's RSS with 1,000 VMs defined (KubeVirt's
#     virt-controller requests ~250 MB), API requests per VM start (virt-controller + virt-handler,
#     counted by User-Agent in the audit log; KubeVirt publishes none).
# Needs root and what the cluster test needs (scripts/install-deps.sh). Takes ~5-10 minutes and
# runs 20 emulated guests at once: not for a shared CI machine. One cluster per machine.
#
# usage: [RELEASE=1] bench/k8s-scale.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
profile=()
[ "${RELEASE:-0}" = 1 ] && profile=(--release)
if pgrep -x kube-apiserver >/dev/null; then
  echo "bench/k8s-scale.sh: a kube-apiserver runs on this machine already (one cluster at a time)" >&2
  exit 1
fi
cargo build "${profile[@]}" -p virt-launcher -p virtctl
log=$(mktemp /tmp/k8s-scale.XXXXXX.log)
if ! VIRT_TESTS_REQUIRE_TOOLS=1 cargo test "${profile[@]}" -p virt-controller --test cluster_bench -- \
  --ignored --nocapture >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "bench/k8s-scale.sh: the benchmark failed; its output is in $log" >&2
  exit 1
fi
sed -n '/^=== virt-rs on Kubernetes/,/^burst:/p' "$log"
rm -f "$log"
