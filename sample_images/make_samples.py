#!/usr/bin/env python3
"""Make the small sample images in this directory: VHDX with pyvhdx itself, VHD
with qemu-img (until pyvhdx creates VHD).

Usage: python sample_images/make_samples.py [OUTPUT_DIR]   (default: this directory)

The raw source is generated here, deterministically (SHA-256 in counter mode, no
random module), so the virtual content of every image is the same on every run.
The container bytes are not: qemu-img writes fresh GUIDs into each VHDX/VHD.

Prints the SHA-256 of each image's virtual content as qemu-img sees it
(``qemu-img convert -O raw``), which sample_images/README.md records.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB


def pseudo_random(length: int, label: bytes) -> bytes:
    """Deterministic incompressible bytes: SHA-256(label || counter) concatenated."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(label + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:length])


def make_source(size: int) -> bytes:
    """A small fake disk: an MBR, some patterned and random data, and zeros.

    Layout (offsets in bytes):
        0            MBR: disk signature "PYVX" at 440, one Linux (0x83) partition
                     from LBA 2048 to the end, boot signature 55 AA
        1 MiB        4 KiB text "superblock" (the partition's first bytes)
        1 MiB+64 KiB 64 KiB of pseudo-random data
        2 MiB        256 KiB of text sectors "pyvhdx sample sector N"
        3 MiB        4 KiB of 0xFF
        size-512     a text marker in the last sector
    Everything else is zero (so dynamic images leave those blocks unallocated).
    """
    assert size >= 4 * MiB and size % 512 == 0
    disk = bytearray(size)
    sectors = size // 512
    # MBR partition entry: status, CHS first (unused), type, CHS last, LBA, count.
    entry = struct.pack(
        "<B3sB3sII", 0x00, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", 2048, sectors - 2048
    )
    disk[440:444] = b"PYVX"
    disk[446 : 446 + 16] = entry
    disk[510:512] = b"\x55\xaa"
    text = b"pyvhdx sample partition\n" * 170
    disk[1 * MiB : 1 * MiB + len(text)] = text
    disk[1 * MiB + 64 * KiB : 1 * MiB + 128 * KiB] = pseudo_random(64 * KiB, b"pyvhdx-sample")
    for i in range(256 * KiB // 512):
        line = f"pyvhdx sample sector {i:08d}\n".encode()
        sector = (line * (512 // len(line) + 1))[:512]
        disk[2 * MiB + i * 512 : 2 * MiB + (i + 1) * 512] = sector
    disk[3 * MiB : 3 * MiB + 4 * KiB] = b"\xff" * (4 * KiB)
    marker = b"pyvhdx sample: last sector\n"
    disk[size - 512 : size - 512 + len(marker)] = marker
    return bytes(disk)


# (output name, format, virtual size of the source, disk type, qemu -o options)
SAMPLES = [
    ("dynamic.vhdx", "vhdx", 8 * MiB, "dynamic", ""),
    ("fixed.vhdx", "vhdx", 4 * MiB, "fixed", ""),
    ("dynamic.vhd", "vpc", 8 * MiB, "dynamic", "subformat=dynamic"),
]


def make_with_pyvhdx(out: Path, source: bytes, disk_type: str) -> None:
    """Create a VHDX with 1 MiB blocks and write every non-zero MiB of ``source``."""
    import pyvhdx

    pyvhdx.create(out, len(source), disk_type=disk_type, block_size=MiB, overwrite=True)
    with pyvhdx.open(out, "r+") as img:
        for off in range(0, len(source), MiB):
            chunk = source[off : off + MiB]
            if any(chunk):
                img.write_at(off, chunk)


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    qemu = shutil.which("qemu-img")
    if qemu is None:
        print("qemu-img not found (install qemu-utils)", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt, size, disk_type, options in SAMPLES:
            raw = Path(tmp) / f"source-{size}.raw"
            raw.write_bytes(make_source(size))
            out = out_dir / name
            out.unlink(missing_ok=True)
            if fmt == "vhdx":
                make_with_pyvhdx(out, raw.read_bytes(), disk_type)
            else:
                subprocess.run(
                    [
                        qemu,
                        "convert",
                        "-q",
                        "-f",
                        "raw",
                        "-O",
                        fmt,
                        "-o",
                        options,
                        str(raw),
                        str(out),
                    ],
                    check=True,
                )
            view = Path(tmp) / f"{name}.raw"
            subprocess.run([qemu, "convert", "-q", "-O", "raw", str(out), str(view)], check=True)
            content = view.read_bytes()
            info = subprocess.run(
                [qemu, "info", "--output=json", str(out)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            virtual_size = int(json.loads(info)["virtual-size"])
            print(
                f"{name}: file {out.stat().st_size} bytes, virtual size {virtual_size}, "
                f"source {size} bytes sha256 {hashlib.sha256(raw.read_bytes()).hexdigest()}, "
                f"content sha256 {hashlib.sha256(content).hexdigest()}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
