#!/usr/bin/env bash
# HTTP import benchmark: a 1 GiB raw image (random data) served by busybox httpd on 127.0.0.1,
# fetched by `curl -o` and imported by virt-storage (download + convert into a raw volume, fsync'd),
# alternately, several runs. Prints medians and the ratio (target: ours >= 0.9x curl's speed).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
bash scripts/install-deps.sh
cargo build --release -q -p virt-storage --example import_url
bin=${CARGO_TARGET_DIR:-target}/release/examples/import_url
work=$(mktemp -d "${TMPDIR:-/tmp}/virt-http-bench.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/www"
head -c 1G /dev/urandom > "$work/www/disk.img"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
busybox httpd -f -p "127.0.0.1:$port" -h "$work/www" & pid=$!
sleep 0.3
url="http://127.0.0.1:$port/disk.img"
python3 - "$bin" "$url" "$work" "$RUNS" <<'PY'
import statistics, subprocess, sys, time, os, shutil
bin, url, work, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
curl, ours = [], []
for i in range(runs):
    out = os.path.join(work, f"curl-{i}.img")
    t = time.monotonic(); subprocess.run(["curl", "-s", "-o", out, url], check=True); subprocess.run(["sync", out]); curl.append(time.monotonic() - t)
    os.remove(out)
    pool = os.path.join(work, f"pool-{i}")
    t = time.monotonic(); subprocess.run([bin, url, pool, f"d{i}"], check=True, stdout=subprocess.DEVNULL); ours.append(time.monotonic() - t)
    shutil.rmtree(pool)
c, o = statistics.median(curl), statistics.median(ours)
gib = 1.0
print(f"http import 1 GiB: virt-storage {o:.2f} s ({gib/o:.2f} GiB/s), curl -o {c:.2f} s ({gib/c:.2f} GiB/s); speed ratio ours/curl {c/o:.2f} (target >= 0.9); runs {runs}")
PY
