#!/usr/bin/env python3
"""Writes a one-layer OCI image layout holding the given files, for
`skopeo copy oci:OUT_DIR:TAG docker://...`. The layer is a plain (uncompressed) tar: the payloads
(a compressed qcow2, a kernel, an initramfs) do not shrink any further. Files and directories are
owned by root unless a uid is given (KubeVirt's containerDisks own /disk/* by 107, qemu).

usage: oci-layout.py OUT_DIR TAG [--label KEY=VALUE]... PATH_IN_IMAGE=SOURCE_FILE[:UID]...
"""
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile


def add_blob(out, path_or_bytes, media_type):
    blobs = os.path.join(out, "blobs", "sha256")
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        size = len(data)
    else:
        h = hashlib.sha256()
        with open(path_or_bytes, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        size = os.path.getsize(path_or_bytes)
        shutil.move(path_or_bytes, os.path.join(blobs, digest))
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": size}


def main():
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    out, tag, rest = args[0], args[1], args[2:]
    labels, files = {}, []
    while rest:
        a = rest.pop(0)
        if a == "--label":
            k, _, v = rest.pop(0).partition("=")
            labels[k] = v
        else:
            dest, _, src = a.partition("=")
            uid = 0
            if ":" in src:
                src, _, u = src.rpartition(":")
                uid = int(u)
            files.append((dest.strip("/"), src, uid))
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    fd, layer_path = tempfile.mkstemp(dir=out)
    os.close(fd)
    with tarfile.open(layer_path, mode="w", format=tarfile.GNU_FORMAT) as t:
        dirs = set()
        for dest, src, uid in files:
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime, info.uid, info.gid = tarfile.DIRTYPE, 0o755, 0, uid, uid
                    t.addfile(info)
            info = tarfile.TarInfo(dest)
            info.size, info.mode, info.mtime = os.path.getsize(src), 0o644, 0
            info.uid = info.gid = uid
            with open(src, "rb") as f:
                t.addfile(info, f)
    layer = add_blob(out, layer_path, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        "config": {"Labels": labels} if labels else {},
    }
    cfg = add_blob(out, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg, "layers": [layer]}
    m = add_blob(out, json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    m["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [m]}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
