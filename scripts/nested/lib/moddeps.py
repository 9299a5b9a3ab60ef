#!/usr/bin/env python3
"""Prints kernel modules in load order: the wanted ones and everything they depend on.

Reads the `depends=` field of each module's .modinfo ELF section, so it needs no kmod (depmod,
modinfo) on the host: Debian's kernel package ships no modules.dep (its postinst runs depmod).
Compressed modules (.ko.xz, .ko.zst, .ko.gz) are read through the matching decompressor.

usage: moddeps.py MODULES_DIR NAME...   (prints one `name<TAB>path` line per module, dependencies first;
       a wanted module that does not exist is reported on stderr and skipped)
"""
import gzip
import lzma
import os
import struct
import subprocess
import sys


def read_module(path):
    if path.endswith(".xz"):
        return lzma.open(path).read()
    if path.endswith(".gz"):
        return gzip.open(path).read()
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
    return open(path, "rb").read()


def modinfo(path):
    d = read_module(path)
    if d[:4] != b"\x7fELF" or d[4] != 2:
        raise SystemExit(f"moddeps: {path} is not a 64-bit ELF module")
    shoff, = struct.unpack_from("<Q", d, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
    stro = secs[shstrndx][4]
    info = {}
    for s in secs:
        name = d[stro + s[0]:d.index(b"\0", stro + s[0])]
        if name == b".modinfo":
            for item in d[s[4]:s[4] + s[5]].split(b"\0"):
                if b"=" in item:
                    k, v = item.decode(errors="replace").split("=", 1)
                    info.setdefault(k, v)
    return info


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    root, wanted = sys.argv[1], sys.argv[2:]
    index = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
                if f.endswith(suffix):
                    # module names treat '-' and '_' alike
                    index[f[: -len(suffix)].replace("-", "_")] = os.path.join(dirpath, f)
    order, done = [], set()

    def visit(name, chain):
        key = name.replace("-", "_")
        if key in done:
            return
        if key in chain:
            raise SystemExit(f"moddeps: dependency cycle through {key}")
        path = index.get(key)
        if path is None:
            print(f"moddeps: module {name} not found under {root}", file=sys.stderr)
            return
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            visit(dep, chain | {key})
        done.add(key)
        order.append((key, path))

    for w in wanted:
        visit(w, set())
    for key, path in order:
        print(f"{key}\t{path}")


if __name__ == "__main__":
    main()
