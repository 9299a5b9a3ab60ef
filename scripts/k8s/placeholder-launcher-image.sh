#!/usr/bin/env bash
# Writes a docker-archive tar of localhost/virt-launcher-placeholder:1, an image that stands in for
# the launcher on a cluster until the real one is packaged: a static busybox that waits for SIGTERM.
# Import it with up.sh (VIRT_K8S_IMAGES=OUT.tar) or `ctr -n k8s.io images import`.
#
# Usage: scripts/k8s/placeholder-launcher-image.sh OUT.tar
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: placeholder-launcher-image.sh OUT.tar}
[ -x /bin/busybox ] || { echo "placeholder-launcher-image.sh: /bin/busybox missing (busybox-static)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/launcher.sh" <<'SH'
trap 'exit 0' TERM INT
echo "placeholder launcher for $VIRT_VMI_NAMESPACE/$VIRT_VMI_NAME"
while :; do /bin/busybox sleep 1; done
SH
python3 "$here/oci-archive.py" --tag localhost/virt-launcher-placeholder:1 \
  --entrypoint /bin/busybox sh /launcher.sh \
  --file /bin/busybox:/bin/busybox --file "$tmp/launcher.sh:/launcher.sh" --out "$out"
