#!/usr/bin/env bash
# HTTP import benchmark: a 1 GiB raw image (random data) served by busybox httpd on 127.0.0.1,
# fetched by `curl -o` and imported by virt-storage, interleaved (the order rotates every round),
# RUNS rounds (default 11). Prints medians, min-max and the ratio of medians for:
#   durable:   `curl -s -o F URL && sync F`   vs  import_url (download + convert into a raw volume,
#              fdatasync'd, renamed into place: what an import that reports success must do)
#   download:  `curl -s -o /dev/null URL`     vs  import_url --download-only (the same HTTP client
#              as the import, bytes thrown away)
#   page cache: `curl -s -o F URL` (no sync)  vs  import_url --no-sync (not durable; informational)
# With QCOW2=1 also a qcow2 of the same data (imported to raw: spooled, then converted) against
# `curl -o` + sync of that qcow2 file.
# Every timed run starts after `sync` with the outputs of the previous run deleted; the 1-minute
# load average is printed for each round (other work on the machine makes runs slower).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-11}
SIZE_MIB=${SIZE_MIB:-1024}
bash scripts/install-deps.sh
cargo build --release -q -p virt-storage --example import_url
bin=${CARGO_TARGET_DIR:-target}/release/examples/import_url
work=$(mktemp -d "${TMPDIR:-/var/tmp}/virt-http-bench.XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/www"
head -c "${SIZE_MIB}M" /dev/urandom > "$work/www/disk.img"
if [ "${QCOW2:-0}" = 1 ]; then
  qemu-img convert -f raw -O qcow2 "$work/www/disk.img" "$work/www/disk.qcow2"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
busybox httpd -f -p "127.0.0.1:$port" -h "$work/www" & pid=$!
sleep 0.3
python3 - "$bin" "http://127.0.0.1:$port" "$work" "$RUNS" "$SIZE_MIB" "${QCOW2:-0}" <<'PY'
import os, shutil, statistics, subprocess, sys, time
bin, base, work, runs, size_mib, qcow2 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
raw, q = base + "/disk.img", base + "/disk.qcow2"
out = os.path.join(work, "curl.out")
pool = os.path.join(work, "pool")
def run(cmd): subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
def curl_sync(url):
    run(["curl", "-s", "-o", out, url]); run(["sync", out])
variants = {
    "curl -o + sync": lambda: curl_sync(raw),
    "ours (durable)": lambda: run([bin, raw, pool, "d"]),
    "curl -o /dev/null": lambda: run(["curl", "-s", "-o", "/dev/null", raw]),
    "ours --download-only": lambda: run([bin, "--download-only", raw]),
    "curl -o (no sync)": lambda: run(["curl", "-s", "-o", out, raw]),
    "ours --no-sync": lambda: run([bin, "--no-sync", raw, pool, "d"]),
}
if qcow2:
    variants["curl -o qcow2 + sync"] = lambda: curl_sync(q)
    variants["ours qcow2->raw (durable)"] = lambda: run([bin, q, pool, "d"])
def clean():
    for p in (out,):
        if os.path.exists(p): os.remove(p)
    shutil.rmtree(pool, ignore_errors=True)
    subprocess.run(["sync"])
times = {k: [] for k in variants}
names = list(variants)
for i in range(runs):
    load = open("/proc/loadavg").read().split()[0]
    order = names[i % len(names):] + names[:i % len(names)]
    line = []
    for k in order:
        clean()
        t = time.monotonic(); variants[k](); d = time.monotonic() - t
        times[k].append(d); line.append(f"{k}={d:.2f}")
    print(f"round {i+1}/{runs} load {load}: " + ", ".join(line), flush=True)
clean()
gib = size_mib / 1024
def stat(k):
    v = sorted(times[k]); return statistics.median(v), v[0], v[-1]
print(f"\n{size_mib} MiB over HTTP, {runs} runs each, interleaved; seconds: median (min-max)")
pairs = [("curl -o + sync", "ours (durable)"), ("curl -o /dev/null", "ours --download-only"), ("curl -o (no sync)", "ours --no-sync")]
if qcow2: pairs.append(("curl -o qcow2 + sync", "ours qcow2->raw (durable)"))
for peer, ours in pairs:
    (pm, plo, phi), (om, olo, ohi) = stat(peer), stat(ours)
    paired = statistics.median([p / o for p, o in zip(times[peer], times[ours])])
    print(f"  {ours:26} {om:.2f} ({olo:.2f}-{ohi:.2f})  vs  {peer:22} {pm:.2f} ({plo:.2f}-{phi:.2f}):"
          f" speed ratio ours/peer {pm/om:.2f} (median of per-round ratios {paired:.2f})")
PY
