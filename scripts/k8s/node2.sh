# Sourced by up.sh when VIRT_K8S_NODES=2: the second node, virtrs-node2, a simulated second machine
# on this one. Its own network namespace (virtrs-k8s2, veth virtrs-k8s2-h/-n, the node at
# <VIRT_K8S_NODE2_NET>.1, the host at .254; the host forwards between the nodes' /24s and their pod
# subnets) and its own mount namespace, held by a `sleep infinity` (pid in DIR/node2/mnt-pid), in
# which the paths the kubelet and containerd hard-code (/var/log/pods, /var/log/containers,
# /var/lib/kubelet with its device-plugins, /var/lib/cni, /run/containerd) and the hostPath
# directories of VIRT_K8S_NODE2_BINDS are bind mounts of node2's own directories under DIR/node2:
# two kubelets on one machine would otherwise delete each other's pod logs and read each other's
# hostPath volumes. containerd2 and kubelet2 run in both namespaces; kubelet2's pod cgroups live
# under /virtrs-node2 (cgroupRoot), away from kubelet1's /kubepods and its orphan cleanup.
# scripts/k8s/on-node.sh DIR node2 CMD runs CMD in node2's mount namespace (host network).
#
# Uses up.sh's variables and functions (DIR, NODE_IP, P, BIN, K8S, start, wait_for, die, ...).

NET2=${VIRT_K8S_NODE2_NET:-172.31.253}
NODE2_IP=$NET2.1
HOST2_IP=$NET2.254
NS2=virtrs-k8s2
NODE2=virtrs-node2
N2=$DIR/node2

# The network namespace, the veth, the host's routes to both nodes' pod subnets, forwarding on.
node2_net() {
  mkdir -p "$N2"
  ip netns add $NS2
  ip link add virtrs-k8s2-h type veth peer name virtrs-k8s2-n
  ip link set virtrs-k8s2-n netns $NS2
  ip addr add "$HOST2_IP/24" dev virtrs-k8s2-h
  ip link set virtrs-k8s2-h up
  local in2=(nsenter --net=/run/netns/$NS2)
  "${in2[@]}" ip link set lo up
  "${in2[@]}" ip addr add "$NODE2_IP/24" dev virtrs-k8s2-n
  "${in2[@]}" ip link set virtrs-k8s2-n up
  "${in2[@]}" ip route add default via "$HOST2_IP"
  ip route add 10.244.0.0/24 via "$NODE_IP"
  ip route add 10.244.1.0/24 via "$NODE2_IP"
  # down.sh restores it.
  sysctl -n net.ipv4.ip_forward >"$DIR/ip_forward.saved"
  sysctl -q -w net.ipv4.ip_forward=1
}

# The mount namespace: a holder process (its own session, so down.sh stops it like the daemons),
# then the bind mounts inside it. Mounts of other programs that the new namespace copied (network
# namespaces' nsfs files, loop-backed and overlay file systems) are detached there so that it does
# not keep them alive after their owners remove them.
node2_mnt() {
  setsid unshare --mount --propagation private sleep infinity </dev/null >/dev/null 2>&1 &
  local holder=$! self
  echo "$holder" >"$DIR/pids/node2-mnt"
  self=$(readlink /proc/self/ns/mnt)
  wait_for "node2's mount namespace" 10 \
    bash -c "m=\$(readlink /proc/$holder/ns/mnt) && [ \"\$m\" != '$self' ]"
  echo "$holder" >"$N2/mnt-pid"
  # down.sh ends every process left in it (a node agent run with on-node.sh, say).
  readlink /proc/$holder/ns/mnt >"$N2/mnt-ns"
  local IN_MNT=(nsenter --mount=/proc/$holder/ns/mnt)
  "${IN_MNT[@]}" awk '$2 != "/" && ($3 == "nsfs" || $3 == "overlay" || $1 ~ "^/dev/loop") { print $2 }' /proc/self/mounts \
    | sort -r | while read -r m; do
      "${IN_MNT[@]}" umount -l "$(printf '%b' "$m")" 2>/dev/null || true
    done
  local binds=(/var/log/pods:"$N2/var/log/pods" /var/log/containers:"$N2/var/log/containers"
    /var/lib/kubelet:"$N2/var/lib/kubelet" /var/lib/cni:"$N2/var/lib/cni"
    /run/containerd:"$N2/run/containerd")
  local b
  # (up.sh checked them: HOSTPATH:NODE2PATH, both absolute.)
  for b in ${VIRT_K8S_NODE2_BINDS:-}; do binds+=("$b"); done
  local host_path node_path
  for b in "${binds[@]}"; do
    host_path=${b%%:*}
    node_path=${b#*:}
    mkdir -p "$host_path" "$node_path"
    "${IN_MNT[@]}" mount --bind "$node_path" "$host_path" || die "binding $node_path on $host_path in node2 failed"
  done
  # kubelet2's cgroup root must exist in every hierarchy (cgroup v1); a new cpuset cgroup has no
  # CPUs and memory nodes until given its parent's.
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h" ] || continue
    mkdir -p "$h/virtrs-node2"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/virtrs-node2/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/virtrs-node2/cpuset.mems"
    fi
  done
}

# containerd2 with the same images as node 1, the CNI bridge on 10.244.1.0/24, kubelet2 (tainted
# so that pods without the toleration stay on virtrs-node).
node2_daemons() {
  local holder
  holder=$(cat "$N2/mnt-pid")
  local IN2=(nsenter --net=/run/netns/$NS2 --mount=/proc/$holder/ns/mnt)
  mkdir -p "$N2"/{containerd/root,containerd/state,cni/net.d,cni/ipam,kubelet}
  local sock=$N2/containerd/containerd.sock
  containerd_config "$N2/containerd" "$N2/cni/net.d" >"$N2/containerd/config.toml"
  cni_config 10.244.1.0/24 "$N2/cni/ipam" >"$N2/cni/net.d/10-virtrs.conflist"
  start_in containerd2 "${IN2[@]}" -- containerd -c "$N2/containerd/config.toml"
  wait_for containerd2 60 ctr -a "$sock" version
  local img
  for img in "$K8S/images/pause.tar" ${VIRT_K8S_IMAGES:-}; do
    ctr -a "$sock" -n k8s.io images import "$img" >>"$DIR/logs/images2.log" 2>&1 \
      || die "importing $img into node2 failed"
  done
  kubeconfig "$N2/kubelet.kubeconfig" "https://$NODE_IP:6443" "$NODE2_TOKEN" "system:node:$NODE2"
  { kubelet_config; echo "cgroupRoot: /virtrs-node2"; } >"$N2/kubelet/config.yaml"
  start_in kubelet2 "${IN2[@]}" -- "$BIN/kubelet" --kubeconfig="$N2/kubelet.kubeconfig" \
    --config="$N2/kubelet/config.yaml" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" \
    --root-dir="$N2/kubelet/root" --cert-dir="$N2/kubelet/pki" --hostname-override=$NODE2 \
    --node-ip="$NODE2_IP" --pod-infra-container-image=localhost/pause:1 \
    --register-with-taints=virt-rs.io/second-node=true:NoSchedule
}

node2_ready() {
  wait_for "node $NODE2" 180 "${K[@]}" get node $NODE2
  "${K[@]}" wait --for=condition=Ready node/$NODE2 --timeout=180s >/dev/null \
    || die "node $NODE2 not Ready (logs in $DIR/logs)"
}
