#!/usr/bin/env bash
# Writes a docker-archive tar of the DataVolume importer image, localhost/virt-importer:dev by
# default: the project's virt-importer (CDI's importer: fills a claim's disk.img from a
# DataVolume's source, bins/virt-controller/src/bin/virt-importer.rs) and every shared library it
# links against (from this machine: Debian's packages). virt-controller runs it as the importer
# pod of each DataVolume (--importer-image). Import it with up.sh (VIRT_K8S_IMAGES=OUT.tar) or
# `ctr -n k8s.io images import`.
#
# Usage: scripts/k8s/importer-image.sh OUT.tar VIRT_IMPORTER [TAG]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: importer-image.sh OUT.tar VIRT_IMPORTER [TAG]}
importer=${2:?usage: importer-image.sh OUT.tar VIRT_IMPORTER [TAG]}
tag=${3:-localhost/virt-importer:dev}
[ -x "$importer" ] || { echo "importer-image.sh: $importer missing (cargo build -p virt-controller --bins)" >&2; exit 1; }
args=(--file "$importer:/usr/bin/virt-importer")
# Shared libraries at their own paths (resolved: the archive holds files, not links).
while read -r lib; do
  [ -n "$lib" ] && args+=(--file "$(readlink -f "$lib"):$lib")
done < <(ldd "$importer" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u)
# CA certificates for https sources.
[ -f /etc/ssl/certs/ca-certificates.crt ] && args+=(--file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt)
python3 "$here/oci-archive.py" --tag "$tag" --entrypoint /usr/bin/virt-importer "${args[@]}" --out "$out"
