#!/usr/bin/env python3
"""Extracts the uncompressed vmlinux (ELF) from an XZ-compressed x86 bzImage.

The compressed payload's place is in the boot protocol header (payload_offset and payload_length at
0x248/0x24c, counted from the protected-mode code at (setup_sects + 1) * 512); if that does not hold
an XZ stream, the first `\\xfd7zXZ\\x00` magic is used. Bytes after the XZ stream (the kernel appends
the uncompressed size) are ignored. Debian's 6.1 vmlinux carries the PVH entry note (type 0x12), so
QEMU can start it directly by PVH.

usage: extract-vmlinux.py BZIMAGE OUT
"""
import lzma
import os
import struct
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1:]
    data = open(src, "rb").read()
    if data[0x202:0x206] != b"HdrS":
        raise SystemExit(f"extract-vmlinux: {src} is not an x86 bzImage (no HdrS header)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    if data[start:start + 6] != XZ_MAGIC:
        start = data.find(XZ_MAGIC)
        if start < 0:
            raise SystemExit(f"extract-vmlinux: {src} holds no XZ payload (other compressions are not handled)")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    # XZ's BCJ filter for x86 is handled by liblzma; the kernel's payload may use it.
    elf = dec.decompress(data[start:])
    if not dec.eof:
        raise SystemExit(f"extract-vmlinux: the XZ stream in {src} is truncated")
    if elf[:4] != b"\x7fELF":
        raise SystemExit("extract-vmlinux: the payload is not an ELF file")
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(elf)
    os.replace(tmp, out)
    print(f"extract-vmlinux: {len(elf)} bytes -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
