#!/usr/bin/env bash
# Makes sure a docker-registry (Debian's `docker-registry`) serves 127.0.0.1:${VIRT_REGISTRY_PORT:-5000}
# with its storage in the project's cache, and that the demo kernel-boot image is in it:
#   127.0.0.1:5000/virt-rs/demo-kernel:latest   (the Debian kernel + the project's initramfs)
# Prints the registry's host:port.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${VIRT_REGISTRY_PORT:-5000}
host=127.0.0.1:$port
cache=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}/registry
mkdir -p "$cache/storage"
if ! curl -sf "http://$host/v2/" >/dev/null 2>&1; then
  cat > "$cache/config.yml" <<CFG
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $cache/storage
  delete:
    enabled: true
http:
  addr: $host
CFG
  setsid docker-registry serve "$cache/config.yml" >"$cache/registry.log" 2>&1 < /dev/null &
  for _ in $(seq 100); do curl -sf "http://$host/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://$host/v2/" >/dev/null || { echo "local-registry: docker-registry did not start:" >&2; cat "$cache/registry.log" >&2; exit 1; }
fi
eval "$(bash scripts/guest-assets.sh --print-env)"
# Push the demo image when the assets changed (or the registry lost it).
stamp="$cache/demo-kernel.sha256"
want=$(cat "$KERNEL" "$INITRAMFS" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! curl -sf "http://$host/v2/virt-rs/demo-kernel/manifests/latest" \
     -H 'Accept: application/vnd.oci.image.manifest.v1+json' >/dev/null; then
  layout=$(mktemp -d)
  trap 'rm -rf "$layout"' EXIT
  python3 scripts/demo-image.py "$layout" latest "$KERNEL" "$INITRAMFS"
  skopeo copy -q --dest-tls-verify=false "oci:$layout:latest" "docker://$host/virt-rs/demo-kernel:latest" >&2
  echo "$want" > "$stamp"
fi
echo "$host"
