#!/usr/bin/env bash
# Stops the cluster up.sh started in STATE_DIR and removes what it made: the daemons (by their
# recorded process ids, then the pod processes containerd's shims left), the network namespace and
# veth, kubelet mounts, the paths the kubelet and containerd hard-code, the kubepods cgroups, and the
# kernel sysctls the kubelet changed. Idempotent.
#
# Usage: scripts/k8s/down.sh [STATE_DIR]    (default /var/tmp/virt-rs-k8s-run)
set -uo pipefail

DIR=${1:-/var/tmp/virt-rs-k8s-run}
NS=virtrs-k8s

stop() { # NAME: TERM, then KILL after 10 s, the process group started by up.sh
  local f=$DIR/pids/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
}
stop kubelet
# Pod processes: containerd's shims run the containers; kill the shims of this containerd
# (their command line names its socket's directory) and what runs under them.
if [ -d "$DIR/containerd" ]; then
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $DIR/containerd/containerd.sock" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
fi
for d in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$d"; done

# Mounts left under the state dir (kubelet volumes, containerd's overlays and netns files).
if [ -d "$DIR" ]; then
  awk -v d="$DIR" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
fi
ip netns del $NS 2>/dev/null || true
ip link del virtrs-k8s-h 2>/dev/null || true

# Paths the kubelet and containerd hard-code whatever their flags say.
rm -rf /var/lib/kubelet/device-plugins /var/log/pods /var/log/containers /var/lib/cni/results \
  /run/containerd/s /run/containerd/runc 2>/dev/null || true
for c in /sys/fs/cgroup/*/kubepods; do
  [ -d "$c" ] || continue
  find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done
if [ -f "$DIR/sysctl.saved" ]; then
  mapfile -t v <"$DIR/sysctl.saved"
  sysctl -q -w vm.overcommit_memory="${v[0]}" kernel.panic="${v[1]}" kernel.panic_on_oops="${v[2]}" || true
fi
if [ -f "$DIR/.virt-rs-k8s" ]; then rm -rf "$DIR"; fi
exit 0
