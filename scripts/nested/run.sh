#!/usr/bin/env bash
# Boots the nested-KVM "L1" machine under QEMU's emulator (TCG, -cpu max: emulated AMD SVM, so L1 has
# a real KVM) and runs RUN_SCRIPT in it as /run.sh. L1's console is streamed to stdout and to a log;
# the exit code is RUN_SCRIPT's, read from L1's `L1: done rc=N` marker (non-zero if that marker is
# missing, e.g. on a timeout or a crash). See docs/testing.md.
#
# usage: scripts/nested/run.sh [options] --script RUN_SCRIPT
#   --file HOST_PATH[:L1_PATH]  ship a file into L1 (default L1 path /payload/<name>; /payload is in
#                               L1's PATH). A dynamically linked ELF brings the libraries ldd lists.
#   --env NAME=VALUE            set in the environment of /run.sh
#   --timeout SECS              give up on L1 after SECS (default 900)
#   --mem MIB                   L1 memory (default 3072)
#   --smp N                     L1 vCPUs (default ${L1_SMP:-1}; see docs/testing.md for why)
#   --log FILE                  where to keep L1's console (default $CACHE/nested/logs/<time>.log)
# In L1: the L2 kernel is /l2/vmlinuz, the L2 initramfs /l2/initramfs.cpio.gz; /tmp is scratch
# space in RAM (as is all of L1's file system: no O_DIRECT there).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VIRT_CACHE_DIR:-$HOME/.cache/virt-rs}
QEMU=${QEMU:-qemu-system-x86_64}

die() { echo "run.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

files=() envs=() script="" timeout=900 mem=3072 smp=${L1_SMP:-1} logf=""
while [ $# -gt 0 ]; do
  case "$1" in
    --file) [ $# -ge 2 ] || die "--file needs HOST_PATH[:L1_PATH]"; files+=("$2"); shift 2 ;;
    --env) [ $# -ge 2 ] || die "--env needs NAME=VALUE"; envs+=("$2"); shift 2 ;;
    --script) [ $# -ge 2 ] || die "--script needs a file"; script=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs seconds"; timeout=$2; shift 2 ;;
    --mem) [ $# -ge 2 ] || die "--mem needs MiB"; mem=$2; shift 2 ;;
    --smp) [ $# -ge 2 ] || die "--smp needs a count"; smp=$2; shift 2 ;;
    --log) [ $# -ge 2 ] || die "--log needs a file"; logf=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
  esac
done
[ -n "$script" ] || { usage >&2; die "--script RUN_SCRIPT is required"; }
[ -f "$script" ] || die "run script $script not found"

base=$("$here/build-l1.sh")
manifest=$CACHE/nested/l1-base.manifest
kernel=$CACHE/guest/vmlinuz   # L1 runs the same Debian kernel as L2

work=$(mktemp -d "${TMPDIR:-/tmp}/virt-nested.XXXXXX")
trap 'rm -rf "$work"' EXIT
o=$work/overlay
mkdir -p "$o/etc" "$o/payload"
cp "$script" "$o/run.sh"
chmod 755 "$o/run.sh"

# Environment for /run.sh, shell-quoted.
: > "$o/etc/run.env"
for e in "${envs[@]+"${envs[@]}"}"; do
  case "$e" in *=*) ;; *) die "--env $e is not NAME=VALUE" ;; esac
  printf 'export %s=%q\n' "${e%%=*}" "${e#*=}" >> "$o/etc/run.env"
done

in_base() { grep -qxF "$1" "$manifest"; }
for spec in "${files[@]+"${files[@]}"}"; do
  src=${spec%%:*}
  if [ "$src" = "$spec" ]; then dst=/payload/$(basename "$src"); else dst=${spec#*:}; fi
  case "$dst" in /*) ;; *) dst=/$dst ;; esac
  [ -e "$src" ] || die "--file $src: no such file"
  mkdir -p "$o$(dirname "$dst")"
  cp -L "$src" "$o$dst"
  # A dynamically linked program brings its libraries (those not already in the base archive).
  if [ "$(head -c 4 "$src" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && ldd "$src" >/dev/null 2>&1; then
    ldd "$src" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' | while read -r lib; do
      in_base "$lib" && continue
      [ -e "$o$lib" ] && continue
      mkdir -p "$o$(dirname "$lib")"
      cp -L "$lib" "$o$lib"
    done
    if ldd "$src" | grep -q 'not found'; then
      die "--file $src: ldd cannot resolve: $(ldd "$src" | grep 'not found' | tr -s ' \t\n' ' ')"
    fi
  fi
done

python3 "$here/lib/mkcpio.py" "$work/overlay.cpio" "$o"
cat "$base" "$work/overlay.cpio" > "$work/initrd"

if [ -z "$logf" ]; then
  mkdir -p "$CACHE/nested/logs"
  logf=$CACHE/nested/logs/$(date +%Y%m%d-%H%M%S)-$$.log
fi
mkdir -p "$(dirname "$logf")"
echo "run.sh: L1 (TCG, ${smp} vCPU, ${mem} MiB), initrd $(du -h "$work/initrd" | cut -f1), log $logf" >&2

start=$(date +%s.%N)
set +e
# -nographic puts L1's serial console on stdio; stdin is closed so nothing waits for a terminal.
timeout --foreground -k 10 "$timeout" "$QEMU" -accel tcg -cpu max -m "$mem" -smp "$smp" -nographic -nic none \
  -kernel "$kernel" -initrd "$work/initrd" -append 'console=ttyS0 quiet panic=-1' -no-reboot \
  </dev/null 2>&1 | sed -u 's/\r$//' | tee "$logf"
qrc=${PIPESTATUS[0]}
set -e
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')

rc=$(sed -n 's/^L1: done rc=\([0-9][0-9]*\).*/\1/p' "$logf" | tail -n1)
if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
  echo "run.sh: L1 timed out after ${timeout} s (log $logf)" >&2
  exit 124
fi
if [ -z "$rc" ]; then
  echo "run.sh: L1 ended (qemu exit $qrc) without an 'L1: done rc=N' line after ${secs} s (log $logf)" >&2
  exit 125
fi
echo "run.sh: L1 done in ${secs} s wall, run script exit $rc" >&2
exit "$rc"
