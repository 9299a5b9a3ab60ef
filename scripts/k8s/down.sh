#!/usr/bin/env bash
# Stops the cluster up.sh started in STATE_DIR and removes what it made: the daemons (by their
# recorded process ids, then the pod processes containerd's shims left), the network namespace and
# veth, kubelet mounts, the paths the kubelet and containerd hard-code, the kubepods cgroups, and the
# kernel sysctls the kubelet changed; with VIRT_K8S_NODES=2 also node2's (node2.sh): its daemons
# and pods, every process in its mount namespace and the holder (its bind mounts go with it), its
# network namespace, the host's routes, its cgroups, and net.ipv4.ip_forward. Idempotent; fine
# when node2 never started.
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
kill_shims() { # CONTAINERD_DIR
  [ -d "$1" ] || return 0
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $1/containerd.sock" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
}
stop kubelet2
stop kubelet
# Pod processes: containerd's shims run the containers; kill the shims of this containerd
# (their command line names its socket's directory) and what runs under them.
kill_shims "$DIR/node2/containerd"
kill_shims "$DIR/containerd"
# node2's mount namespace ends with its last process: containerd2, what else runs "on node2"
# (on-node.sh), the holder.
stop containerd2
if [ -f "$DIR/node2/mnt-ns" ]; then
  ns2=$(cat "$DIR/node2/mnt-ns")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns2" ] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
fi
for d in node2-mnt containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$d"; done

# Mounts left under the state dir (kubelet volumes, containerd's overlays and netns files).
if [ -d "$DIR" ]; then
  awk -v d="$DIR" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
fi
ip netns del $NS 2>/dev/null || true
ip link del virtrs-k8s-h 2>/dev/null || true
ip netns del virtrs-k8s2 2>/dev/null || true
ip link del virtrs-k8s2-h 2>/dev/null || true
# (The host's routes to the pod subnets went with the veths.)
if [ -f "$DIR/ip_forward.saved" ]; then
  sysctl -q -w net.ipv4.ip_forward="$(cat "$DIR/ip_forward.saved")" || true
fi

# Paths the kubelet and containerd hard-code whatever their flags say.
rm -rf /var/lib/kubelet/device-plugins /var/log/pods /var/log/containers /var/lib/cni/results \
  /run/containerd/s /run/containerd/runc 2>/dev/null || true
for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/virtrs-node2; do
  [ -d "$c" ] || continue
  find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done
if [ -f "$DIR/sysctl.saved" ]; then
  mapfile -t v <"$DIR/sysctl.saved"
  sysctl -q -w vm.overcommit_memory="${v[0]}" kernel.panic="${v[1]}" kernel.panic_on_oops="${v[2]}" || true
fi
if [ -f "$DIR/.virt-rs-k8s" ]; then rm -rf "$DIR"; fi
exit 0
