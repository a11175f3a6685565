"""VHD images made by ``qemu-img convert -O vpc``, read back by pyvhdx.

What qemu-img 7.2 (Debian 12 qemu-utils) does, measured when this file was written:

* Without ``force_size=on`` qemu rounds the size UP to a CHS geometry and stores that
  rounded size as CurrentSize (creator app ``qemu``): a 5 MiB + 1536 B source gives
  CHS 151/4/17 and CurrentSize 5257216. The bytes past the source are zeros.
* With ``force_size=on`` CurrentSize is the exact source size, the geometry is the
  maximum 65535/16/255 and the creator app is ``qem2``.
* Dynamic: ``qemu-img info`` virtual-size equals CurrentSize, and
  ``qemu-img convert -O raw`` gives exactly that many bytes.
* Fixed: qemu reads the file as raw data, so its virtual-size is CurrentSize + 512 and
  its raw output ends with the 512-byte footer itself.
* libvhdi (pyvhdi) reports CurrentSize for all four.

pyvhdx follows the policy of DESIGN.md (virtual size = footer CurrentSize, as Hyper-V,
Azure and libvhdi read it). So the tests take the expected size from the footer, check
that qemu's size is that (dynamic) or that plus the footer (fixed), and compare
pyvhdx's content with qemu's raw output over the common length; any bytes qemu
reports beyond CurrentSize must be the footer copy (or zeros).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from tests.conftest import (
    MiB,
    make_raw,
    qemu_convert,
    qemu_info,
    qemu_to_raw,
    random_reads,
    sha256_of_image,
)

pytestmark = pytest.mark.oracle

VHD_FOOTER_SIZE = 512


@dataclass(frozen=True)
class Case:
    id: str
    size: int
    subformat: str
    force_size: bool
    seed: int


CASES = [
    Case("dynamic", 5 * MiB + 1536, "dynamic", False, 11),
    Case("dynamic-force", 5 * MiB + 1536, "dynamic", True, 12),
    Case("fixed", 5 * MiB + 1536, "fixed", False, 13),
    Case("fixed-force", 5 * MiB + 1536, "fixed", True, 14),
    Case("dynamic-11M", 11 * MiB + 7 * 512, "dynamic", False, 15),
    Case("dynamic-force-11M", 11 * MiB + 7 * 512, "dynamic", True, 16),
    Case("fixed-3M", 3 * MiB + 512, "fixed", False, 17),
]


@dataclass(frozen=True)
class Made:
    case: Case
    raw: Path
    image: Path
    qemu_raw: Path  # qemu's view of the image: qemu-img convert -O raw
    footer: bytes
    current_size: int  # footer CurrentSize: the size pyvhdx must report


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Made:
    case: Case = request.param
    tmp = tmp_path_factory.mktemp(f"qemu-vhd-{case.id}")
    raw = make_raw(tmp / "source.raw", case.size, seed=case.seed)
    options = {"subformat": case.subformat, "force_size": case.force_size}
    image = qemu_convert(raw, tmp / "image.vhd", "vpc", options)
    qemu_raw = qemu_to_raw(image, tmp / "qemu-view.raw", fmt="vpc")
    with open(image, "rb") as f:
        f.seek(-VHD_FOOTER_SIZE, os.SEEK_END)
        footer = f.read(VHD_FOOTER_SIZE)
    assert footer[:8] == b"conectix"
    (current_size,) = struct.unpack_from(">Q", footer, 48)
    return Made(case, raw, image, qemu_raw, footer, current_size)


def test_geometry(made: Made) -> None:
    case = made.case
    if case.force_size:
        assert made.current_size == case.size
    else:
        assert made.current_size >= case.size  # rounded up to a CHS geometry
    qemu_size = qemu_info(made.image)["virtual-size"]
    if case.subformat == "fixed":
        assert qemu_size in (made.current_size, made.current_size + VHD_FOOTER_SIZE)
    else:
        assert qemu_size == made.current_size
    with pyvhdx.open(made.image) as img:
        assert img.virtual_size == made.current_size
        assert img.format.value == "vhd"
        assert img.disk_type.value == case.subformat
        if case.subformat == "dynamic":
            assert img.block_size == 2 * MiB


def test_full_read_matches_qemu(made: Made) -> None:
    size = made.current_size
    qemu_len = os.path.getsize(made.qemu_raw)
    with open(made.qemu_raw, "rb") as f:
        expected = hashlib.sha256(f.read(min(size, qemu_len)))
        tail = f.read()
    # Beyond CurrentSize, qemu shows the footer (fixed) or nothing (dynamic).
    assert tail in (b"", made.footer, bytes(len(tail)))
    if size > qemu_len:
        expected.update(bytes(size - qemu_len))
    with pyvhdx.open(made.image) as img:
        assert sha256_of_image(img) == expected.hexdigest()


def test_full_read_matches_source(made: Made) -> None:
    with pyvhdx.open(made.image) as img:
        source = made.raw.read_bytes()
        assert img.read_at(0, len(source)) == source
        padding = made.current_size - len(source)
        if padding:
            assert img.read_at(len(source), padding) == bytes(padding)


def test_random_reads(made: Made) -> None:
    size = made.current_size
    reads = random_reads(size, 200, seed=made.case.seed, boundaries=2 * MiB)
    fd = os.open(made.qemu_raw, os.O_RDONLY)
    try:
        with pyvhdx.open(made.image) as img:
            for i, (offset, length) in enumerate(reads):
                expected = os.pread(fd, length, offset)
                if i % 2:
                    buf = bytearray(length)
                    assert img.readinto_at(offset, buf) == length
                    got = bytes(buf)
                else:
                    got = img.read_at(offset, length)
                assert got == expected, f"read_at({offset:#x}, {length}) differs"
    finally:
        os.close(fd)


def test_pyvhdi_agrees(made: Made, pyvhdi: Any) -> None:
    f = pyvhdi.file()
    f.open(str(made.image))
    try:
        with pyvhdx.open(made.image) as img:
            assert f.get_media_size() == img.virtual_size
            digest = hashlib.sha256()
            offset = 0
            while offset < img.virtual_size:
                n = min(4 * MiB, img.virtual_size - offset)
                digest.update(f.read_buffer_at_offset(n, offset))
                offset += n
            assert sha256_of_image(img) == digest.hexdigest()
    finally:
        f.close()


def test_source_sanity(made: Made) -> None:
    """qemu's own view agrees with the source (guards the oracle, not pyvhdx)."""
    with open(made.qemu_raw, "rb") as f:
        assert f.read(made.case.size) == made.raw.read_bytes()
