#!/usr/bin/env bash
# Prints the path of Debian's kubectl 1.20 (package kubernetes-client), unpacked into the project's
# cache (${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/kubectl-<version>/usr/bin/kubectl) instead of being
# installed: the machine's /usr/bin/kubectl may be another kubectl (Google's 1.32 on dev machines) and
# the package would conflict with it. The node's kubectl test (bins/virt-node/tests/kubectl.rs) runs it.
#
# Usage: scripts/kubectl.sh            prints the binary's path, fetching the package when needed
set -euo pipefail

CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
die() { echo "kubectl.sh: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "apt-get is missing (a Debian machine is needed)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing"

version=$(apt-cache policy kubernetes-client 2>/dev/null | awk '/Candidate:/{print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  version=$(apt-cache policy kubernetes-client 2>/dev/null | awk '/Candidate:/{print $2}')
fi
[ -n "$version" ] && [ "$version" != "(none)" ] || die "apt knows no package kubernetes-client (Debian bookworm has 1.20)"
case "$version" in 1.20.*) ;; *) die "kubernetes-client $version is not the 1.20 this project tests against" ;; esac

dir="$CACHE/kubectl-${version//[^A-Za-z0-9.+-]/_}"
bin="$dir/usr/bin/kubectl"
if [ ! -x "$bin" ]; then
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/kubectl-tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "kubernetes-client=$version" >/dev/null 2>&1) \
    || die "apt-get download kubernetes-client=$version failed"
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/root"
  [ -x "$tmp/root/usr/bin/kubectl" ] || die "the package has no usr/bin/kubectl"
  # Another run may have unpacked it meanwhile: its copy stays (it may be running).
  mv -T "$tmp/root" "$dir" 2>/dev/null || true
  [ -x "$bin" ] || die "could not unpack kubectl into $dir"
fi
echo "$bin"
