#!/usr/bin/env python3
"""The local node's overhead, measured on this machine.

1. `virtctl start` -> VMI Running: the node's overhead to get a VM's machine running (store write,
   controller, launcher process, volume preparation, machine start), the guest's boot excluded:
   Running means the machine runs guest code. Peer, measured in the same run: the same machine
   started by `virt-launcher --spec` directly (no node), until its control socket reports Running.
2. Daemon memory per defined VM: RSS of `virt-node` with 1,000 VMs defined (Halted) minus RSS with
   none, divided by 1,000; also how long the 1,000 creates took and how long a restarted daemon takes
   to load them, and the creates' rate through the API (requests per second, one client). The
   RSS difference also counts the daemon's code pages that the first creates fault in once; the
   figure per VM is the marginal private anonymous memory (RssAnon) from 100 to 1,000 VMs.
3. Watch event latency: a `?watch=true` stream on the VMs is open; a VM is created (or its labels
   replaced) and the time from the request's send until its event line arrives on the stream
   (the event follows the store's change log, woken by each durable write). Median and p99 of N.
   Peer, the same run: the create's own round trip (the event cannot come before the write is
   durable).

usage: bench/node.py [--runs N] [--vms N]   (builds release binaries; needs the local registry)
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
# BENCH_PROFILE=debug measures the debug binaries (a quick look; figures to publish are release).
PROFILE = os.environ.get("BENCH_PROFILE", "release")
BIN = os.path.join(TARGET, PROFILE)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def call(sock, method, path, body=None, ctype="application/json"):
    c = UnixHTTP(sock)
    c.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data else None)


def anon_kib(pid):
    """Private anonymous memory (heap, stacks): RSS without the binary's code pages, which the first
    requests of each kind fault in once whatever the number of VMs."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_node(state, registry):
    sock = os.path.join(state, "node.sock")
    log = open(os.path.join(state, "node.log"), "a")
    p = subprocess.Popen([os.path.join(BIN, "virt-node"), "--state-dir", state, "--socket", sock,
                          "--launcher", os.path.join(BIN, "virt-launcher"), "--allow-emulation",
                          "--insecure-registry", registry], stdout=log, stderr=log,
                         env=dict(os.environ, RUST_LOG="warn"))
    t = time.time()
    while True:
        try:
            if call(sock, "GET", "/version")[0] == 200:
                return p, sock, time.time() - t
        except OSError:
            pass
        time.sleep(0.005)


def kill_launchers(state):
    vmis = os.path.join(state, "vmis")
    for d in os.listdir(vmis) if os.path.isdir(vmis) else []:
        try:
            pid = int(open(os.path.join(vmis, d, "launcher.pid")).read())
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def vm(name, image):
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"kubevirt.io/vm": name}},
        "spec": {"runStrategy": "Halted", "template": {"metadata": {"labels": {"kubevirt.io/vm": name}}, "spec": {
            "domain": {"firmware": {"kernelBoot": {"container": {"image": image, "kernelPath": "/boot/vmlinuz",
                                                                 "initrdPath": "/boot/initrd.img"},
                                                   "kernelArgs": "console=ttyS0 quiet panic=-1 virt.idle=1"}},
                       "devices": {}, "memory": {"guest": "128Mi"}},
            "terminationGracePeriodSeconds": 0}}},
    }


def bench_start(runs, registry, image):
    state = tempfile.mkdtemp(prefix="vnb", dir="/tmp")
    node, sock, _ = start_node(state, registry)
    try:
        assert call(sock, "POST", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
                    json.dumps(vm("bench", image)))[0] == 201
        env = dict(os.environ, VIRT_NODE="unix://" + sock)
        node_times, cli_times = [], []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            subprocess.run([os.path.join(BIN, "virtctl"), "start", "bench"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            t_cli = time.perf_counter() - t0
            while True:
                st, v = call(sock, "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/bench")
                if st == 200 and v.get("status", {}).get("phase") == "Running":
                    break
                if st == 200 and v.get("status", {}).get("phase") == "Failed":
                    sys.exit("bench VMI failed: %s" % json.dumps(v["status"]))
                time.sleep(0.002)
            t_run = time.perf_counter() - t0
            if i > 0:  # the first run pulls the image into the cache
                node_times.append(t_run)
                cli_times.append(t_cli)
            subprocess.run([os.path.join(BIN, "virtctl"), "stop", "bench", "--force", "--grace-period", "0"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
            while call(sock, "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/bench")[0] != 404:
                time.sleep(0.01)
        return node_times, cli_times, state, node
    except BaseException:
        node.kill()
        kill_launchers(state)
        raise


def bench_launcher(runs, spec_src):
    times = []
    for _ in range(runs):
        d = tempfile.mkdtemp(prefix="vlb", dir="/tmp")
        spec = json.load(open(spec_src))
        json.dump(spec, open(os.path.join(d, "spec.json"), "w"))
        t0 = time.perf_counter()
        p = subprocess.Popen([os.path.join(BIN, "virt-launcher"), "--spec", os.path.join(d, "spec.json"),
                              "--run-dir", d, "--allow-emulation"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        ctl = os.path.join(d, "control.sock")
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(ctl)
                s.sendall(b'{"op":"status"}\n')
                line = s.makefile().readline()
                s.close()
                if '"Running"' in line:
                    break
            except OSError:
                pass
            time.sleep(0.002)
        times.append(time.perf_counter() - t0)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        shutil.rmtree(d, ignore_errors=True)
    return times


def bench_memory(n, registry, image):
    state = tempfile.mkdtemp(prefix="vnm", dir="/tmp")
    node, sock, _ = start_node(state, registry)
    try:
        time.sleep(0.5)
        base = rss_kib(node.pid)
        warm = n // 10
        t0 = time.perf_counter()
        for i in range(n):
            st, body = call(sock, "POST", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
                            json.dumps(vm(f"vm-{i:04d}", image)))
            assert st == 201, body
            if i + 1 == warm:
                time.sleep(1.0)
                anon_warm = anon_kib(node.pid)
        create_s = time.perf_counter() - t0
        time.sleep(1.0)
        full = rss_kib(node.pid)
        marginal = (anon_kib(node.pid) - anon_warm) / (n - warm)
        st, lst = call(sock, "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines")
        assert st == 200 and len(lst["items"]) == n
        node.send_signal(signal.SIGKILL)
        node.wait()
        node, sock, load_s = start_node(state, registry)
        time.sleep(0.5)
        reloaded = rss_kib(node.pid)
        st, lst = call(sock, "GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines")
        assert st == 200 and len(lst["items"]) == n, "VMs lost across a SIGKILL"
        db = os.path.getsize(os.path.join(state, "node.redb"))
        return base, full, reloaded, create_s, load_s, db, marginal
    finally:
        node.kill()
        shutil.rmtree(state, ignore_errors=True)


def bench_watch(n, registry, image):
    state = tempfile.mkdtemp(prefix="vnw", dir="/tmp")
    node, sock, _ = start_node(state, registry)
    try:
        w = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        w.connect(sock)
        w.sendall(b"GET /apis/kubevirt.io/v1/namespaces/default/virtualmachines?watch=true&resourceVersion=1 "
                  b"HTTP/1.1\r\nHost: localhost\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += w.recv(65536)
        buf = buf.split(b"\r\n\r\n", 1)[1]

        def next_event(name):
            nonlocal buf
            while True:
                # chunked encoding: events are JSON lines; find our VM's.
                for line in buf.split(b"\n"):
                    if f'"name":"{name}"'.encode() in line:
                        buf = b""
                        return time.perf_counter()
                buf += w.recv(65536)

        lat, rtt = [], []
        for i in range(n):
            name = f"w-{i:04d}"
            t0 = time.perf_counter()
            st, body = call(sock, "POST", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
                            json.dumps(vm(name, image)))
            t1 = time.perf_counter()
            assert st == 201, body
            t2 = next_event(name)
            lat.append(t2 - t0)
            rtt.append(t1 - t0)
        w.close()
        return lat, rtt
    finally:
        node.kill()
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--watch-events", type=int, default=100)
    ap.add_argument("--only", choices=["start", "memory", "watch"], help="run one part")
    a = ap.parse_args()
    if os.environ.get("BENCH_BUILD", "1") != "0":  # BENCH_BUILD=0: binaries already built
        subprocess.run(["cargo", "build", "-q", "-p", "virt-node", "-p", "virt-launcher", "-p", "virtctl"]
                       + (["--release"] if PROFILE == "release" else []), cwd=ROOT, check=True)
    registry = subprocess.run(["bash", os.path.join(ROOT, "scripts/local-registry.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
    image = f"{registry}/virt-rs/demo-kernel:latest"

    med = statistics.median
    if a.only in (None, "watch"):
        lat, rtt = bench_watch(a.watch_events, registry, image)
        lat.sort()
        print(f"watch event latency (create sent -> ADDED line read), median of {a.watch_events}: "
              f"{med(lat)*1000:.2f} ms, p99 {lat[int(len(lat)*0.99)-1]*1000:.2f} ms")
        print(f"  peer: the create's own round trip (fsynced): {med(rtt)*1000:.2f} ms")
    if a.only in (None, "memory"):
        bench_memory_report(a, registry, image)
    if a.only not in (None, "start"):
        return
    node_times, cli_times, state, node = bench_start(a.runs, registry, image)
    # The launcher alone, on the machine spec the node wrote for the last run (kept in the cache dir
    # of a fresh copy: the run directory itself is removed with the VMI).
    spec_copy = os.path.join(state, "bench-spec.json")
    try:
        st, v = call(os.path.join(state, "node.sock"), "PUT",
                     "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/bench/start", b"{}")
        while True:
            st, v = call(os.path.join(state, "node.sock"), "GET",
                         "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/bench")
            if st == 200 and v.get("status", {}).get("phase") == "Running":
                break
            time.sleep(0.01)
        run_dir = os.path.join(state, "vmis", v["metadata"]["uid"])
        shutil.copy(os.path.join(run_dir, "spec.json"), spec_copy)
        # The launcher-alone runs must not share the VMI's overlay/seed files: copy what the spec names.
        spec = json.load(open(spec_copy))
        keep = tempfile.mkdtemp(prefix="vlf", dir="/tmp")
        for disk in spec.get("disks", []):
            dst = os.path.join(keep, os.path.basename(disk["path"]))
            shutil.copy(disk["path"], dst)
            disk["path"] = dst
        json.dump(spec, open(spec_copy, "w"))
    finally:
        node.kill()
        kill_launchers(state)
    launcher_times = bench_launcher(a.runs, spec_copy)
    shutil.rmtree(state, ignore_errors=True)

    print(f"virtctl start -> VMI Running, median of {a.runs}: {med(node_times)*1000:.1f} ms "
          f"(virtctl itself returned after {med(cli_times)*1000:.1f} ms)")
    print(f"  peer: virt-launcher --spec alone -> Running: {med(launcher_times)*1000:.1f} ms")
    print(f"  node overhead: {(med(node_times)-med(launcher_times))*1000:.1f} ms")
    print(f"  all runs (node, ms): {[round(t*1000,1) for t in node_times]}")
    print(f"  all runs (launcher alone, ms): {[round(t*1000,1) for t in launcher_times]}")



def bench_memory_report(a, registry, image):
    base, full, reloaded, create_s, load_s, db, marginal = bench_memory(a.vms, registry, image)
    print(f"daemon RSS: {base} KiB with no VMs, {full} KiB with {a.vms} VMs defined -> "
          f"{(full-base)/a.vms:.1f} KiB per VM; after a SIGKILL and restart: {reloaded} KiB")
    print(f"  memory per defined VM (private anonymous memory, VMs {a.vms // 10} -> {a.vms}, code "
          f"pages excluded): {marginal:.1f} KiB")
    print(f"  {a.vms} creates took {create_s:.2f} s ({create_s/a.vms*1000:.2f} ms each, fsynced, "
          f"{a.vms/create_s:.0f} req/s); restart to serving: {load_s*1000:.0f} ms; "
          f"store file {db/1024/1024:.1f} MiB")


if __name__ == "__main__":
    main()
