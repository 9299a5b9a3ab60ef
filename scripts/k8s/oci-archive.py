#!/usr/bin/env python3
"""Writes a one-layer docker-archive tar (what `ctr images import` reads) from local files, so images
reach containerd without a registry.

Usage: oci-archive.py --tag localhost/NAME:TAG --entrypoint /path [--file SRC:DST ...] --out OUT.tar
A DST ending in '/' keeps SRC's basename. Files are stored with their mode; parent dirs are created.
"""
import argparse
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for src, dst in files:
            if dst.endswith("/"):
                dst += os.path.basename(src)
            rel = dst.lstrip("/")
            parts = rel.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            info = tar.gettarinfo(src, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(src, "rb") as f:
                tar.addfile(info, f)
        for d in ("tmp", "dev", "proc", "sys", "etc", "run", "var"):
            if d not in dirs:
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if d == "tmp" else 0o755
                tar.addfile(info)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--entrypoint", required=True, nargs="+")
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    files = []
    for spec in a.file:
        src, sep, dst = spec.partition(":")
        if not sep:
            sys.exit(f"oci-archive.py: --file {spec!r} is not SRC:DST")
        files.append((src, dst))
    layer = layer_bytes(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": a.entrypoint, "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "virt-rs scripts/k8s/oci-archive.py"}],
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [a.tag], "Layers": ["layer.tar"]}]
    with tarfile.open(a.out, mode="w") as tar:
        for name, data in (
            (cfg_name, cfg),
            ("layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
