#!/usr/bin/env bash
# Builds a Kubernetes 1.20 control plane and node (etcd comes prebuilt) from Debian bookworm's own
# archive, no other download: kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from
# the `kubernetes` source package (Debian only packages kubectl from it), etcd from etcd-server, and
# a pause image for the pod sandbox. See docs/kubernetes.md and the recipe it cites.
#
# The result is cached under ${VIRT_K8S_CACHE:-/var/tmp/virt-rs-k8s}/<key>, where the key hashes this
# script and the source version, so later runs (tests, CI on the same machine) reuse it. Prints the
# cache directory on stdout; progress and logs go to stderr and <cache>/build.log.
#
# Usage: scripts/k8s/build.sh        (about 15-30 minutes the first time on 2 loaded cores)
set -euo pipefail

K8S_VERSION=1.20.5+really1.20.2-1.1+deb12u1
ROOT=${VIRT_K8S_CACHE:-/var/tmp/virt-rs-k8s}
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$here/build.sh" "$here/pause.c" "$here/oci-archive.py" | sha256sum | cut -c1-16)
out="$ROOT/$key"
die() { echo "k8s/build.sh: $*" >&2; exit 1; }

bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd etcdctl)
complete=1
for b in "${bins[@]}"; do [ -x "$out/bin/$b" ] || complete=0; done
[ -f "$out/images/pause.tar" ] || complete=0
if [ "$complete" = 1 ]; then echo "$out"; exit 0; fi

mkdir -p "$ROOT"
# One build at a time on the machine: a second caller waits for the first.
exec 9>"$ROOT/.lock"
flock 9
complete=1
for b in "${bins[@]}"; do [ -x "$out/bin/$b" ] || complete=0; done
[ -f "$out/images/pause.tar" ] || complete=0
if [ "$complete" = 1 ]; then echo "$out"; exit 0; fi

work="$ROOT/work-$key"
mkdir -p "$work" "$out/bin" "$out/images"
log="$out/build.log"
echo "k8s/build.sh: building into $out (log: $log)" >&2
exec 3>&2 2>>"$log"
trap 'echo "k8s/build.sh: failed, see $log" >&3; tail -20 "$log" >&3' ERR
set -x

# 1. A private apt: sources with deb-src for the machine's bookworm archive, private state and cache.
archive_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources) awk '/^URIs:/{u=$2} /^Suites:/{ for(i=2;i<=NF;i++) if($i==S) print u }' S="$1" "$f" ;;
      *) awk '$1=="deb" { for(i=2;i<=NF;i++) if ($i ~ /^https?:/ && $(i+1)==S) { print $i; break } }' S="$1" "$f" ;;
    esac
  done | head -n1
}
main_uri=$(archive_uri bookworm)
sec_uri=$(archive_uri bookworm-security)
[ -n "$main_uri" ] || die "no bookworm archive in /etc/apt sources"
[ -n "$sec_uri" ] || sec_uri="${main_uri%/debian}/debian-security"
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
cat >"$apt_dir/sources.list" <<SRC
deb $main_uri bookworm main
deb-src $main_uri bookworm main
deb $sec_uri bookworm-security main
deb-src $sec_uri bookworm-security main
SRC
APT=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
     -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update -qq

# 2. The source tree.
src="$work/src"
if [ ! -d "$src/cmd/kube-apiserver" ]; then
  rm -rf "$work/dl" "$src"
  mkdir -p "$work/dl"
  (cd "$work/dl" && apt-get "${APT[@]}" source --download-only "kubernetes=$K8S_VERSION")
  dpkg-source -x "$work"/dl/kubernetes_*.dsc "$src"
fi

# 3. Tools, unpacked (not installed).
tools="$work/tools"
if [ ! -x "$tools/usr/lib/go-1.19/bin/go" ] || [ ! -x "$tools/usr/bin/etcd" ]; then
  rm -rf "$tools" "$work/debs"
  mkdir -p "$tools" "$work/debs"
  (cd "$work/debs" && apt-get "${APT[@]}" download golang-1.19-go golang-1.19-src etcd-server \
     etcd-client rsync libpopt0 golang-github-modern-go-reflect2-dev)
  for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$tools"; done
fi
GOROOT="$tools/usr/lib/go-1.19"
[ -x "$GOROOT/bin/go" ] || die "no go in $GOROOT"

# 4. reflect2 1.0.1 (vendored) crashes under Go >= 1.18 on the first custom-object create.
r2="$tools/usr/share/gocode/src/github.com/modern-go/reflect2"
[ -d "$r2" ] || die "golang-github-modern-go-reflect2-dev has no $r2"
rm -f "$src"/vendor/github.com/modern-go/reflect2/*.go "$src"/vendor/github.com/modern-go/reflect2/*.s
cp "$r2"/*.go "$src"/vendor/github.com/modern-go/reflect2/
cp "$r2"/*.s "$src"/vendor/github.com/modern-go/reflect2/ 2>/dev/null || true
rm -f "$src"/vendor/github.com/modern-go/reflect2/*_test.go

# 5. GOPATH-mode build through make (it runs the OpenAPI generators).
export GOROOT GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS= \
  KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
  PATH="$GOROOT/bin:$tools/usr/bin:$PATH" LD_LIBRARY_PATH="$tools/usr/lib/x86_64-linux-gnu" \
  GOCACHE="$work/gocache"
for w in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  if [ ! -x "$out/bin/$w" ]; then
    (cd "$src" && make WHAT="cmd/$w")
    cp "$src/_output/bin/$w" "$out/bin/$w.tmp"
    mv "$out/bin/$w.tmp" "$out/bin/$w"
  fi
done
cp "$tools/usr/bin/etcd" "$out/bin/etcd"
cp "$tools/usr/bin/etcdctl" "$out/bin/etcdctl"

# 6. The pause image, as a docker-archive tar containerd imports without a registry.
gcc -static -O2 -o "$work/pause" "$here/pause.c"
python3 "$here/oci-archive.py" --tag localhost/pause:1 --entrypoint /pause \
  --file "$work/pause:/pause" --out "$out/images/pause.tar.tmp"
mv "$out/images/pause.tar.tmp" "$out/images/pause.tar"

set +x
exec 2>&3
# The 3 GB build tree is not needed any more; the tools and downloads are kept for a rebuild.
rm -rf "$src/_output"
echo "$out"
