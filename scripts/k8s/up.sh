#!/usr/bin/env bash
# Starts a Kubernetes 1.20 cluster built by build.sh: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd + runc, kubelet and the CNI bridge, all inside a network namespace this
# script creates (the kubelet refuses a loopback node IP), with the pause image imported into
# containerd without a registry. One cluster per machine (the kubelet and containerd hard-code
# paths under /var/lib/kubelet, /var/log/pods and /run/containerd; the tests take the lock
# /run/lock/virt-rs-k8s-cluster.lock).
# VIRT_K8S_NODES=2 adds a second node, virtrs-node2, a simulated second machine (node2.sh): its own
# network namespace and its own mount namespace, in which those hard-coded paths and the hostPath
# directories of VIRT_K8S_NODE2_BINDS are node2's own directories under STATE_DIR/node2.
#
# Usage: scripts/k8s/up.sh [STATE_DIR]      (default /var/tmp/virt-rs-k8s-run)
# Env:   VIRT_K8S_NODE_NET  the /24 prefix of the node's veth (default 172.31.254): the node is .1,
#                           the host side .254; the API server is https://<prefix>.1:6443
#        VIRT_K8S_IMAGES    extra docker-archive tars to import (space-separated)
#        VIRT_K8S_AUDIT=1   the API server's audit log (metadata of every request) in logs/audit.log
#        VIRT_K8S_NODES     1 (default) or 2: node virtrs-node2 too, tainted
#                           virt-rs.io/second-node=true:NoSchedule, pods on 10.244.1.0/24
#        VIRT_K8S_NODE2_NET the /24 prefix of node2's veth (default 172.31.253)
#        VIRT_K8S_NODE2_BINDS  HOSTPATH:NODE2PATH pairs (space-separated): in node2's mount
#                           namespace HOSTPATH is NODE2PATH (both created), e.g. a hostPath
#                           volume's directory; scripts/k8s/on-node.sh DIR node2 CMD runs CMD there
# Writes STATE_DIR/admin.kubeconfig (prints its path on success); scripts/k8s/down.sh STATE_DIR stops
# everything and removes what this script made. With two nodes, STATE_DIR/node2/mnt-pid is the pid
# of the process holding node2's mount namespace (nsenter --mount=/proc/PID/ns/mnt).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-/var/tmp/virt-rs-k8s-run}
NET=${VIRT_K8S_NODE_NET:-172.31.254}
NODE_IP=$NET.1
HOST_IP=$NET.254
NS=virtrs-k8s
NODE=virtrs-node
NODES=${VIRT_K8S_NODES:-1}
die() { echo "k8s/up.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespace, containerd, kubelet)"
for t in ip nsenter openssl curl containerd ctr runc; do
  command -v "$t" >/dev/null || die "$t is missing: run scripts/install-deps.sh"
done
[ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge is missing: run scripts/install-deps.sh"
case $NODES in
  1 | 2) ;;
  *) die "VIRT_K8S_NODES: '$NODES' is not 1 or 2" ;;
esac
for b in ${VIRT_K8S_NODE2_BINDS:-}; do
  case $b in
    /*:/*) ;;
    *) die "VIRT_K8S_NODE2_BINDS: '$b' is not HOSTPATH:NODE2PATH (both absolute)" ;;
  esac
done

# build.sh prints the cache directory as its last line (a first build also prints make's output).
K8S=$("$here/build.sh" | tail -n 1) || die "build.sh failed"
[ -x "$K8S/bin/kube-apiserver" ] || die "build.sh gave no cache directory (got '$K8S')"
KUBECTL=$("$here/../kubectl.sh") || die "kubectl.sh failed"
BIN=$K8S/bin

if [ -e /run/netns/$NS ] || [ -e /run/netns/virtrs-k8s2 ] || [ -f "$DIR/pids/kube-apiserver" ]; then
  "$here/down.sh" "$DIR" >/dev/null 2>&1 || true
fi
rm -rf "$DIR"
mkdir -p "$DIR"/{pki,pids,logs,etcd,kubelet,containerd/root,containerd/state,cni/net.d,cni/ipam}
DIR=$(cd "$DIR" && pwd)
echo "$DIR" >"$DIR/.virt-rs-k8s"
# On any failure: keep the logs beside the state dir (down.sh removes the state dir), tear down.
up_ok=0
on_exit() {
  [ "$up_ok" = 1 ] && return 0
  rm -rf "$DIR.failed-logs"
  cp -r "$DIR/logs" "$DIR.failed-logs" 2>/dev/null || true
  echo "k8s/up.sh: failed; logs in $DIR.failed-logs" >&2
  for f in "$DIR"/logs/*.log; do
    [ -s "$f" ] && { echo "--- $(basename "$f") (last lines)" >&2; tail -n 5 "$f" >&2; }
  done
  "$here/down.sh" "$DIR" >/dev/null 2>&1 || true
}
trap on_exit EXIT

# --- network namespace: lo up, a veth pair, the node at .1, the host at .254 ---------------------
ip netns add $NS
ip link add virtrs-k8s-h type veth peer name virtrs-k8s-n
ip link set virtrs-k8s-n netns $NS
ip addr add "$HOST_IP/24" dev virtrs-k8s-h
ip link set virtrs-k8s-h up
IN=(nsenter --net=/run/netns/$NS)
"${IN[@]}" ip link set lo up
"${IN[@]}" ip addr add "$NODE_IP/24" dev virtrs-k8s-n
"${IN[@]}" ip link set virtrs-k8s-n up
"${IN[@]}" ip route add default via "$HOST_IP"

# --- PKI: a CA, the API server's serving cert, the API server's kubelet-client cert, SA keys -------
P=$DIR/pki
(
  cd "$P"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=virt-rs-k8s-ca
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' \
    "$NODE_IP" >apiserver.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
    -days 30 -extfile apiserver.ext
  openssl req -newkey rsa:2048 -nodes -keyout kubelet-client.key -out kubelet-client.csr \
    -subj "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out kubelet-client.crt -days 30
  # The aggregation layer (front proxy): a CA of its own and the client certificate the API server
  # presents to aggregated APIs (virt-handler's subresources.kubevirt.io), which trust that CA only.
  openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 30 \
    -subj /CN=virt-rs-front-proxy-ca
  openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr \
    -subj /CN=front-proxy-client
  echo 'extendedKeyUsage=clientAuth' >front-proxy-client.ext
  openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
    -CAcreateserial -out front-proxy-client.crt -days 30 -extfile front-proxy-client.ext
  openssl genrsa -out sa.key 2048
  openssl rsa -in sa.key -pubout -out sa.pub
) >"$DIR/logs/pki.log" 2>&1

tok() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
ADMIN_TOKEN=$(tok); CM_TOKEN=$(tok); SCHED_TOKEN=$(tok); NODE_TOKEN=$(tok); NODE2_TOKEN=$(tok)
cat >"$P/tokens.csv" <<CSV
$ADMIN_TOKEN,admin,admin-uid,system:masters
$CM_TOKEN,system:kube-controller-manager,kcm-uid
$SCHED_TOKEN,system:kube-scheduler,sched-uid
$NODE_TOKEN,system:node:$NODE,node-uid,system:nodes
$NODE2_TOKEN,system:node:virtrs-node2,node2-uid,system:nodes
CSV
kubeconfig() { # FILE SERVER TOKEN USER
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: virt-rs-k8s
  cluster:
    server: $2
    certificate-authority: $P/ca.crt
users:
- name: $4
  user:
    token: $3
contexts:
- name: virt-rs-k8s
  context:
    cluster: virt-rs-k8s
    user: $4
current-context: virt-rs-k8s
KC
}
kubeconfig "$DIR/admin.kubeconfig" "https://$NODE_IP:6443" "$ADMIN_TOKEN" admin
kubeconfig "$DIR/controller-manager.kubeconfig" https://127.0.0.1:6443 "$CM_TOKEN" kcm
kubeconfig "$DIR/scheduler.kubeconfig" https://127.0.0.1:6443 "$SCHED_TOKEN" scheduler
kubeconfig "$DIR/kubelet.kubeconfig" https://127.0.0.1:6443 "$NODE_TOKEN" "system:node:$NODE"

# start_in NAME NSENTER... -- CMD...: a daemon in its own session, logging to logs/NAME.log
start_in() {
  local name=$1; shift
  local pre=()
  while [ "$1" != -- ]; do pre+=("$1"); shift; done
  shift
  setsid "${pre[@]}" "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
}
# start NAME CMD...: a daemon in node 1's network namespace
start() {
  local name=$1; shift
  start_in "$name" "${IN[@]}" -- "$@"
}
# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "$what not ready after ${secs}s (logs in $DIR/logs)"
    sleep 0.5
  done
}

# --- node2: its network and mount namespaces (node2.sh) -----------------------------------------
if [ "$NODES" = 2 ]; then
  . "$here/node2.sh"
  node2_net
  # Before node 1's daemons mount anything (the new namespace copies the mounts there are).
  node2_mnt
fi

# --- etcd, API server ----------------------------------------------------------------------------
start etcd "$BIN/etcd" --name virtrs --data-dir "$DIR/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster virtrs=http://127.0.0.1:23800
wait_for etcd 60 "${IN[@]}" curl -sf http://127.0.0.1:23790/health

# VIRT_K8S_AUDIT=1: every request's metadata in logs/audit.log (JSON lines; bench/k8s-scale.sh
# counts the components' requests by user agent).
audit=()
if [ "${VIRT_K8S_AUDIT:-0}" = 1 ]; then
  cat >"$DIR/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
YAML
  audit=(--audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$DIR/logs/audit.log" --audit-log-format=json)
fi
start kube-apiserver "$BIN/kube-apiserver" "${audit[@]}" --etcd-servers=http://127.0.0.1:23790 \
  --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port=6443 --insecure-port=0 \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
  --kubelet-client-certificate="$P/kubelet-client.crt" --kubelet-client-key="$P/kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname --allow-privileged=true \
  --requestheader-client-ca-file="$P/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key" \
  --enable-aggregator-routing=true
wait_for kube-apiserver 180 curl -sf --cacert "$P/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
  "https://$NODE_IP:6443/readyz"

start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$DIR/controller-manager.kubeconfig" --leader-elect=false --port=0 \
  --use-service-account-credentials --service-account-private-key-file="$P/sa.key" \
  --root-ca-file="$P/ca.crt" --cluster-signing-cert-file="$P/ca.crt" \
  --cluster-signing-key-file="$P/ca.key" \
  --controllers='*,-nodeipam,-cloud-node-lifecycle,-route,-service'
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$DIR/scheduler.kubeconfig" \
  --leader-elect=false --port=0

# --- containerd, CNI, images ---------------------------------------------------------------------
SOCK=$DIR/containerd/containerd.sock
containerd_config() { # DIR CNI_CONF_DIR: config.toml of a containerd whose files are in DIR
  cat <<TOML
version = 2
root = "$1/root"
state = "$1/state"
[grpc]
  address = "$1/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$2"
TOML
}
# SUBNET IPAM_DIR: the bridge network's conflist; the pods' route to 10.244.0.0/16 (every node's
# pod subnet; the host routes between the nodes) is via the bridge, no default route.
cni_config() {
  cat <<JSON
{
  "cniVersion": "0.4.0",
  "name": "virtrs",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "ranges": [[{ "subnet": "$1" }]],
                "routes": [{ "dst": "10.244.0.0/16" }], "dataDir": "$2" }
    }
  ]
}
JSON
}
containerd_config "$DIR/containerd" "$DIR/cni/net.d" >"$DIR/containerd/config.toml"
cni_config 10.244.0.0/24 "$DIR/cni/ipam" >"$DIR/cni/net.d/10-virtrs.conflist"
start containerd containerd -c "$DIR/containerd/config.toml"
wait_for containerd 60 ctr -a "$SOCK" version
for img in "$K8S/images/pause.tar" ${VIRT_K8S_IMAGES:-}; do
  ctr -a "$SOCK" -n k8s.io images import "$img" >>"$DIR/logs/images.log" 2>&1 || die "importing $img failed"
done

# --- kubelet (it changes three kernel sysctls: saved for down.sh) ------------------------------
sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops >"$DIR/sysctl.saved"
kubelet_config() {
  cat <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
protectKernelDefaults: false
readOnlyPort: 0
clusterDomain: cluster.local
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: "$P/ca.crt" }
authorization: { mode: Webhook }
evictionHard:
  nodefs.available: "2%"
  nodefs.inodesFree: "2%"
  imagefs.available: "2%"
  memory.available: "100Mi"
YAML
}
kubelet_config >"$DIR/kubelet/config.yaml"
start kubelet "$BIN/kubelet" --kubeconfig="$DIR/kubelet.kubeconfig" --config="$DIR/kubelet/config.yaml" \
  --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
  --root-dir="$DIR/kubelet/root" --cert-dir="$DIR/kubelet/pki" --hostname-override=$NODE \
  --node-ip="$NODE_IP" --pod-infra-container-image=localhost/pause:1
K=("$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig")
wait_for "node $NODE" 180 "${K[@]}" get node $NODE
"${K[@]}" wait --for=condition=Ready node/$NODE --timeout=180s >/dev/null \
  || die "node $NODE not Ready (logs in $DIR/logs)"
if [ "$NODES" = 2 ]; then
  node2_daemons
  node2_ready
fi
wait_for "default service account" 120 "${K[@]}" get serviceaccount default -n default
up_ok=1
echo "$DIR/admin.kubeconfig"
