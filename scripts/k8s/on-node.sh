#!/usr/bin/env bash
# Runs CMD "on" a node of the cluster up.sh started in STATE_DIR: for node2 (VIRT_K8S_NODES=2), in
# node2's mount namespace (where /var/log/pods, /var/lib/kubelet, /var/lib/cni, /run/containerd and
# the VIRT_K8S_NODE2_BINDS paths are node2's own directories) and the host's network namespace,
# the way a node agent runs on a second machine; for node1, on the host as is. The working directory
# stays.
#
# Usage: scripts/k8s/on-node.sh STATE_DIR node1|node2 CMD [ARG...]
set -euo pipefail

die() { echo "k8s/on-node.sh: $*" >&2; exit 1; }
[ $# -ge 3 ] || die "usage: on-node.sh STATE_DIR node1|node2 CMD [ARG...]"
DIR=$1 NODE=$2
shift 2
case $NODE in
  node1) exec "$@" ;;
  node2)
    f=$DIR/node2/mnt-pid
    [ -f "$f" ] || die "$f is missing: was the cluster started with VIRT_K8S_NODES=2?"
    pid=$(cat "$f")
    # The holder is `sleep infinity` in a mount namespace other than ours.
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sleep ] || die "node2's mount namespace holder (pid $pid from $f) is gone"
    [ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] \
      || die "pid $pid from $f is in this mount namespace, not node2's"
    exec nsenter --mount="/proc/$pid/ns/mnt" --wd="$PWD" -- "$@"
    ;;
  *) die "node '$NODE' is not node1 or node2" ;;
esac
