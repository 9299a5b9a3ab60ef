#!/usr/bin/env python3
"""Writes a newc cpio archive (the initramfs format Linux unpacks) from a directory tree.

Why not GNU cpio: an initramfs needs /dev/console as a character device so that the kernel can give
/init its console before devtmpfs is mounted, and creating device nodes needs root. This writer adds
such nodes from the command line, stores every entry as root:root with mtime 0 (so the same inputs
give the same bytes), and pads the end to 512 bytes so archives can be concatenated (the kernel
unpacks one initrd made of several archives in a row, later files overriding earlier ones).

--pad-to N pads the finished file (after gzip) with zero bytes to a multiple of N; Linux skips zeros
between and after the archives of an initrd.

usage: mkcpio.py [--gzip] [--pad-to N] [--node PATH:c|b:MAJOR:MINOR[:MODE]]... OUT DIR
"""
import argparse
import gzip
import os
import stat
import sys


def header(ino, mode, nlink, size, devmajor, devminor, name):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, devmajor, devminor, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


class Writer:
    def __init__(self, out):
        self.out = out
        self.ino = 1
        self.pos = 0

    def write(self, data):
        self.out.write(data)
        self.pos += len(data)

    def entry(self, name, mode, data=b"", rdev=(0, 0)):
        name = name.encode()
        h = header(self.ino, mode, 2 if stat.S_ISDIR(mode) else 1, len(data), rdev[0], rdev[1], name)
        self.ino += 1
        self.write(h)
        self.write(pad4(len(h)))
        if data:
            self.write(data)
            self.write(pad4(len(data)))

    def trailer(self):
        self.entry("TRAILER!!!", 0)
        self.write(b"\0" * ((512 - self.pos % 512) % 512))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gzip", action="store_true", help="gzip the archive (level 6)")
    ap.add_argument("--pad-to", type=int, default=0, help="pad the output file with zeros to a multiple of N bytes")
    ap.add_argument("--node", action="append", default=[], help="PATH:c|b:MAJOR:MINOR[:MODE] device node to add")
    ap.add_argument("out")
    ap.add_argument("dir")
    a = ap.parse_args()
    if not os.path.isdir(a.dir):
        sys.exit(f"mkcpio: {a.dir} is not a directory")

    tmp = a.out + ".tmp"
    raw = open(tmp, "wb")
    sink = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if a.gzip else raw
    w = Writer(sink)
    seen = set()
    for root, dirs, files in os.walk(a.dir):
        dirs.sort()
        rel = os.path.relpath(root, a.dir)
        if rel != ".":
            w.entry(rel, os.lstat(root).st_mode)
            seen.add(rel)
        for f in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            p = os.path.join(root, f)
            name = f if rel == "." else f"{rel}/{f}"
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                w.entry(name, st.st_mode, os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    w.entry(name, st.st_mode, fh.read())
            else:
                sys.exit(f"mkcpio: {p}: only files, directories and symlinks are copied")
        # os.walk lists symlinks to directories in dirs; they were written above, do not descend.
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    for spec in a.node:
        parts = spec.split(":")
        if len(parts) not in (4, 5) or parts[1] not in ("c", "b"):
            sys.exit(f"mkcpio: bad --node {spec!r}")
        path, kind, major, minor = parts[0].lstrip("/"), parts[1], int(parts[2]), int(parts[3])
        perm = int(parts[4], 8) if len(parts) == 5 else 0o600
        parent = os.path.dirname(path)
        if parent and parent not in seen:
            w.entry(parent, stat.S_IFDIR | 0o755)
            seen.add(parent)
        w.entry(path, (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | perm, rdev=(major, minor))
    w.trailer()
    if a.gzip:
        sink.close()
    if a.pad_to > 0:
        raw.write(b"\0" * ((a.pad_to - raw.tell() % a.pad_to) % a.pad_to))
    raw.close()
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
