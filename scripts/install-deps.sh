#!/usr/bin/env bash
# Installs the Debian packages the project's tests and harnesses need.
# Idempotent: packages already present are skipped. Needs root (CI and dev machines run as root).
#
# qemu-system-x86 must match the machine's qemu-utils, which comes from bookworm-backports, so the
# backports suite is added next to the machine's configured Debian archive (its address is read from
# the existing apt sources, never written here).
#
#   --cloud-image   also the tools scripts/cloud-image.sh builds the Debian cloud image with (mmdebstrap,
#                   GRUB's BIOS and EFI images, sfdisk); none of them touches the host's boot loader
set -euo pipefail

need=()
extra=()
for a in "$@"; do
  case "$a" in
    --cloud-image) extra+=(mmdebstrap grub-pc-bin grub-efi-amd64-bin grub-common fdisk) ;;
    *) echo "install-deps: unknown option $a (known: --cloud-image)" >&2; exit 2 ;;
  esac
done
want_pkgs=(qemu-system-x86 busybox-static cpio e2fsprogs xz-utils zstd docker-registry skopeo \
           xfsprogs btrfs-progs dosfstools mtools xorriso curl openssl \
           ovmf seabios swtpm swtpm-tools syslinux syslinux-common openscap-scanner ssg-debian \
           chromium chromium-driver \
           containerd runc containernetworking-plugins iproute2 nftables util-linux gcc libc6-dev python3 \
           qemu-guest-agent openssh-client openssh-server isc-dhcp-client iperf3 socat ${extra[@]+"${extra[@]}"})
for p in "${want_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
# The web console's build fetches xterm.js and noVNC with npm (scripts/console-assets.sh), and its
# browser test runs playwright-core under node: Debian's node and npm unless the machine has its own.
if ! command -v npm >/dev/null 2>&1; then
  need+=(nodejs npm)
fi
# Debian's kubectl 1.20 for the node's kubectl test, unpacked into the project cache (not installed:
# the package conflicts with other kubectl installs).
kubectl_into_cache() { "$(dirname "$0")/kubectl.sh" >/dev/null; }
if [ ${#need[@]} -eq 0 ]; then
  kubectl_into_cache
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo

# Find the Debian archive URI the machine already uses for bookworm.
archive_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources)
        awk '/^URIs:/{u=$2} /^Suites:/{ for(i=2;i<=NF;i++) if($i=="bookworm") print u }' "$f" ;;
      *)
        awk '$1=="deb" && $0 ~ / bookworm / { for(i=2;i<=NF;i++) if ($i ~ /^https?:/) { print $i; break } }' "$f" ;;
    esac
  done | grep -v security | head -n1
}

bp=/etc/apt/sources.list.d/virt-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(archive_uri)
  if [ -z "$uri" ]; then
    echo "install-deps: cannot find the Debian archive in /etc/apt sources" >&2
    exit 1
  fi
  echo "deb $uri bookworm-backports main" | $SUDO tee "$bp" >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# QEMU from backports so that it matches qemu-utils from the same suite.
qemu_from_bp=()
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
  qemu_from_bp=(-t bookworm-backports)
fi
for p in "${need[@]}"; do
  if [ "$p" = qemu-system-x86 ]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${qemu_from_bp[@]}" qemu-system-x86 >/dev/null
  fi
done
rest=()
for p in "${need[@]}"; do [ "$p" = qemu-system-x86 ] || rest+=("$p"); done
[ ${#rest[@]} -gt 0 ] && $SUDO apt-get install -y -qq --no-install-recommends "${rest[@]}" >/dev/null
echo "install-deps: installed ${need[*]}"
kubectl_into_cache
