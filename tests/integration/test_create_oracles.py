"""Every image pyvhdx creates, once pyvhdx has written into it, reads the same
through qemu-img, libvhdi (pyvhdi) and pyvhdx (issue 4, "Must show").

Each case creates an image, writes a seeded pattern (writes into new blocks,
across block boundaries, into the partial last block, and in place after a
reopen), and computes the expected content from a model. Then:

* ``qemu-img check`` passes (VHDX). qemu 7.2 has no check for VHD ("This image
  format does not support checks", exit 63); the test asserts exactly that, and
  uses what qemu does check on open instead: ``qemu-img info -f vpc`` refuses a
  bad footer checksum and a BAT entry whose block reaches past the end of file.
* ``qemu-img info --output=json`` gives our virtual size. For VHD this holds
  because pyvhdx's creator code is one for which qemu reads Current Size, not
  the (smaller) CHS capacity (``pyvhdx.create.VHD_CREATOR_APPLICATION``).
* ``qemu-img convert -O raw``, pyvhdi and pyvhdx give the model's bytes.

qemu is always told the format (``-f vhdx``/``-f vpc``). Probing alone, qemu
7.2 takes a fixed VHD for a raw image, because its footer is only at the end:
it then reports CurrentSize + 512 bytes and shows the footer as the last
sector. ``test_fixed_vhd_probed_as_raw`` pins that down, comparing the first
virtual-size bytes only.

4096-byte-sector VHDX: qemu 7.2 cannot open them ("Operation not supported"), so
they are checked through pyvhdi and pyvhdx only.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyvhdx
from tests.conftest import find_qemu_img, import_pyvhdi

pytestmark = pytest.mark.oracle

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 8 * MiB
QEMU_FORMAT = {"vhdx": "vhdx", "vhd": "vpc"}


@dataclass(frozen=True)
class Case:
    format: str
    disk_type: str
    block_size: int | None  # None: fixed VHD, or the format's default
    sector: int = 512

    @property
    def id(self) -> str:
        block = "" if self.block_size is None else f"-{self.block_size // KiB}K"
        return f"{self.format}-{self.disk_type}{block}-{self.sector}"

    @property
    def size(self) -> int:
        """Two blocks or more, not a whole number of blocks (a partial last block)."""
        block = self.block_size or 2 * MiB
        body = 2 * block if block <= 32 * MiB else block + 4 * MiB
        return max(body, 4 * MiB) + 3 * self.sector


CASES_512 = [
    *(Case("vhdx", t, b) for t in ("dynamic", "fixed") for b in (MiB, 32 * MiB, 256 * MiB)),
    Case("vhd", "dynamic", 512 * KiB),
    Case("vhd", "dynamic", 2 * MiB),
    Case("vhd", "fixed", None),
]
CASES_4K = [Case("vhdx", t, b, 4096) for t in ("dynamic", "fixed") for b in (MiB, 32 * MiB)]


def writes(case: Case) -> list[tuple[int, bytes]]:
    """The seeded write pattern: new blocks, block boundaries, the disk's end, in place."""
    size = case.size
    block = case.block_size or 2 * MiB
    rng = np.random.default_rng(list(hashlib.sha256(case.id.encode()).digest()))
    spots = [
        (0, 4096),
        (block - 1000, 5000),  # across the first block boundary
        (block // 2 + 3, 70000),  # in place once block 0 exists
        (size - 700, 700),  # the partial last block, up to the end of the disk
        (size // 2 - 33, 2 * MiB + 77),
        (100, 3000),  # overwrites the first write
    ]
    out = []
    for off, n in spots:
        n = min(n, size - off)
        out.append((off, rng.integers(1, 256, n, dtype=np.uint8).tobytes()))
    return out


def model_chunks(size: int, pattern: list[tuple[int, bytes]]) -> Iterator[bytes]:
    """The expected content, in CHUNK pieces (sizes go up to 516 MiB)."""
    for start in range(0, size, CHUNK):
        buf = bytearray(min(CHUNK, size - start))
        for off, data in pattern:
            lo, hi = max(off, start), min(off + len(data), start + len(buf))
            if lo < hi:
                buf[lo - start : hi - start] = data[lo - off : hi - off]
        yield bytes(buf)


def sha256_chunks(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def read_chunks(read: Any, size: int) -> Iterator[bytes]:
    for start in range(0, size, CHUNK):
        data = read(start, min(CHUNK, size - start))
        assert len(data) == min(CHUNK, size - start), f"short read at {start:#x}"
        yield bytes(data)


@dataclass(frozen=True)
class Made:
    case: Case
    path: Path
    expected_sha256: str


def make(case: Case, directory: Path) -> Made:
    path = directory / f"{case.id}.{case.format}"
    pyvhdx.create(
        path,
        case.size,
        format=case.format,
        disk_type=case.disk_type,
        block_size=case.block_size,
        logical_sector_size=case.sector,
        physical_sector_size=case.sector,
    )
    pattern = writes(case)
    half = len(pattern) // 2
    with pyvhdx.open(path, "r+") as img:
        for off, data in pattern[:half]:
            assert img.write_at(off, data) == len(data)
    with pyvhdx.open(path, "r+") as img:  # after a reopen: in place and new blocks
        for off, data in pattern[half:]:
            img.write_at(off, data)
    return Made(case, path, sha256_chunks(model_chunks(case.size, pattern)))


@pytest.fixture(scope="module", params=CASES_512, ids=[c.id for c in CASES_512])
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(request.param, tmp_path_factory.mktemp("created"))


@pytest.fixture(scope="module", params=CASES_4K, ids=[c.id for c in CASES_4K])
def made_4k(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(request.param, tmp_path_factory.mktemp("created4k"))


def qemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_qemu_img(), *args], capture_output=True, text=True)


# -- pyvhdx ---------------------------------------------------------------------------


def pyvhdx_sha256(path: Path) -> tuple[int, str]:
    with pyvhdx.open(path, strict=True) as img:
        assert not img.info().problems
        return img.virtual_size, sha256_chunks(read_chunks(img.read_at, img.virtual_size))


def test_pyvhdx_reads_the_model(made: Made) -> None:
    size, digest = pyvhdx_sha256(made.path)
    assert size == made.case.size
    assert digest == made.expected_sha256


def test_pyvhdx_reads_the_model_4k(made_4k: Made) -> None:
    with pyvhdx.open(made_4k.path) as img:
        assert img.logical_sector_size == 4096
    size, digest = pyvhdx_sha256(made_4k.path)
    assert size == made_4k.case.size
    assert digest == made_4k.expected_sha256


# -- libvhdi --------------------------------------------------------------------------


def pyvhdi_sha256(path: Path) -> tuple[int, str]:
    pyvhdi = import_pyvhdi()
    f = pyvhdi.file()
    f.open(str(path))
    try:
        size = int(f.get_media_size())
        return size, sha256_chunks(read_chunks(lambda o, n: f.read_buffer_at_offset(n, o), size))
    finally:
        f.close()


def test_pyvhdi_reads_the_model(made: Made) -> None:
    size, digest = pyvhdi_sha256(made.path)
    assert size == made.case.size
    assert digest == made.expected_sha256


def test_pyvhdi_reads_the_model_4k(made_4k: Made) -> None:
    size, digest = pyvhdi_sha256(made_4k.path)
    assert size == made_4k.case.size
    assert digest == made_4k.expected_sha256


# -- qemu-img -------------------------------------------------------------------------


def test_qemu_check(made: Made) -> None:
    fmt = QEMU_FORMAT[made.case.format]
    r = qemu("check", "-f", fmt, str(made.path))
    if fmt == "vpc":
        assert r.returncode == 63, r.stdout + r.stderr
        assert "does not support checks" in r.stderr
    else:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "No errors were found" in r.stdout


def test_qemu_info_size(made: Made) -> None:
    r = qemu("info", "--output=json", "-f", QEMU_FORMAT[made.case.format], str(made.path))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["virtual-size"] == made.case.size
    if made.case.format == "vhdx" or made.case.disk_type == "dynamic":
        assert info["cluster-size"] == (made.case.block_size or 32 * MiB)


def test_qemu_reads_the_model(made: Made, tmp_path: Path) -> None:
    raw = tmp_path / "qemu.raw"
    fmt = QEMU_FORMAT[made.case.format]
    r = qemu("convert", "-f", fmt, "-O", "raw", str(made.path), str(raw))
    assert r.returncode == 0, r.stderr
    assert raw.stat().st_size == made.case.size
    with open(raw, "rb") as f:
        digest = sha256_chunks(iter(lambda: f.read(CHUNK), b""))
    assert digest == made.expected_sha256


def test_fixed_vhd_probed_as_raw(tmp_path: Path) -> None:
    """Without ``-f vpc`` qemu 7.2 reads a fixed VHD as raw: the footer is data."""
    case = Case("vhd", "fixed", None)
    m = make(case, tmp_path)
    info = json.loads(qemu("info", "--output=json", str(m.path)).stdout)
    assert info["format"] == "raw"
    assert info["virtual-size"] == case.size + 512
    raw = tmp_path / "probed.raw"
    assert qemu("convert", "-O", "raw", str(m.path), str(raw)).returncode == 0
    with open(raw, "rb") as f:
        head = f.read(case.size)
        tail = f.read()
    assert hashlib.sha256(head).hexdigest() == m.expected_sha256
    assert tail == m.path.read_bytes()[-512:] and tail[:8] == b"conectix"


# -- the VHD layout against qemu-img's and the spec -----------------------------------

# Footer fields that may differ from qemu's (VHD spec "Hard Disk Footer Format"):
# Time Stamp, Creator Application, Creator Version, Disk Geometry, Checksum, Unique Id.
FOOTER_FREE_FIELDS = [(24, 28), (28, 32), (32, 36), (56, 60), (64, 68), (68, 84)]


def masked_footer(footer: bytes) -> bytes:
    out = bytearray(footer)
    for lo, hi in FOOTER_FREE_FIELDS:
        out[lo:hi] = bytes(hi - lo)
    return bytes(out)


def vhd_sum(data: bytes, field: int) -> int:
    return ~(sum(data[:field]) + sum(data[field + 4 :])) & 0xFFFFFFFF


@pytest.mark.parametrize(
    ("disk_type", "size"),
    [
        ("dynamic", 10 * MiB),
        ("dynamic", 5 * MiB + 1536),
        ("dynamic", 1000 * MiB + 512),  # a BAT of 501 entries: three sectors and padding
        ("fixed", 10 * MiB),
        ("fixed", 5 * MiB + 1536),
    ],
)
def test_vhd_layout_matches_qemu(tmp_path: Path, disk_type: str, size: int) -> None:
    """Byte for byte qemu-img's ``force_size`` layout, apart from the free fields."""
    ours = tmp_path / "ours.vhd"
    theirs = tmp_path / "qemu.vhd"
    pyvhdx.create(ours, size, disk_type=disk_type)
    r = qemu(
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        f"subformat={disk_type},force_size=on",
        str(theirs),
        str(size),
    )
    assert r.returncode == 0, r.stderr
    a, b = ours.read_bytes(), theirs.read_bytes()
    assert len(a) == len(b)
    assert masked_footer(a[-512:]) == masked_footer(b[-512:])
    if disk_type == "dynamic":
        assert a[:512] == a[-512:]  # the footer copy
        assert a[512:-512] == b[512:-512]  # dynamic header (checksum too) and BAT
        assert a[512 + 8 : 512 + 16] == b"\xff" * 8  # Data Offset all ones (pitfall 20)
    else:
        assert a[:-512] == bytes(size)
    footer = a[-512:]
    assert footer[28:32] == b"win "  # qemu then reads Current Size (module docstring)
    assert footer[36:40] == b"Wi2k"
    assert int.from_bytes(footer[64:68], "big") == vhd_sum(footer, 64)
    if disk_type == "dynamic":
        assert int.from_bytes(a[512 + 36 : 512 + 40], "big") == vhd_sum(a[512:1536], 36)


@pytest.mark.realworld
def test_chs_matches_windows_made_images(tmp_path: Path) -> None:
    """The geometry of a created VHD equals the one Windows wrote for the same
    size (expected.json ``chs`` of the ``win `` images)."""
    from tests.conftest import load_expected, require_realworld

    require_realworld()
    made = 0
    for entry in load_expected():
        if entry.get("format") != "vhd" or entry.get("creator_app") != "win ":
            continue
        if not entry.get("chs") or not entry.get("virtual_size"):
            continue
        path = tmp_path / f"{made}.vhd"
        pyvhdx.create(path, entry["virtual_size"], disk_type="dynamic")
        footer = path.read_bytes()[-512:]
        chs = [int.from_bytes(footer[56:58], "big"), footer[58], footer[59]]
        assert chs == entry["chs"], entry["file"]
        made += 1
    assert made >= 2


def test_vhd_limits(tmp_path: Path) -> None:
    from pyvhdx.create import create_azure_vhd, create_vhd

    GiB = 1 << 30
    path = tmp_path / "x.vhd"
    refused = [
        dict(size=0),
        dict(size=1000),
        dict(size=2040 * GiB + 512),
        dict(size=2040 * GiB + 512, disk_type="fixed"),
        dict(size=MiB, block_size=3 * MiB),
        dict(size=MiB, block_size=2 * KiB),
        dict(size=MiB, block_size=512 * MiB),
        dict(size=2040 * GiB, block_size=4 * KiB),  # would outgrow the BAT's 2 TiB
        dict(size=MiB, disk_type="differencing"),
        dict(size=MiB, disk_type="sparse"),
        dict(size=30 * MiB, disk_type="dynamic", azure=True),
        dict(size=20 * MiB - MiB, disk_type="fixed", azure=True),
        dict(size=32 * (1 << 40) + 1, disk_type="fixed", azure=True),
    ]
    for kwargs in refused:
        with pytest.raises(pyvhdx.InvalidArgumentError):
            create_vhd(path, **kwargs)  # type: ignore[arg-type]
        assert not path.exists(), kwargs
    # the largest dynamic disk: qemu opens it with that size
    big = tmp_path / "big.vhd"
    assert create_vhd(big, 2040 * GiB) == big
    r = qemu("info", "--output=json", "-f", "vpc", str(big))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["virtual-size"] == 2040 * GiB
    # Azure: rounded up to whole MiB, reported
    az = tmp_path / "az.vhd"
    assert create_azure_vhd(az, 20 * MiB - 1) == az  # the size: read back below
    assert az.stat().st_size == 20 * MiB + 512
    r = qemu("info", "--output=json", "-f", "vpc", str(az))
    assert json.loads(r.stdout)["virtual-size"] == 20 * MiB


def test_vhd_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "x.vhd"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        pyvhdx.create(path, MiB)
    with pytest.raises(pyvhdx.InvalidArgumentError):
        pyvhdx.create(path, MiB + 1, overwrite=True)
    assert path.read_bytes() == b"keep me"
    pyvhdx.create(path, MiB, overwrite=True, disk_type="fixed")
    with pyvhdx.open(path) as img:
        assert (img.disk_type.value, img.virtual_size) == ("fixed", MiB)


def test_vhd_identity_is_fresh(tmp_path: Path) -> None:
    import time

    ids = set()
    for i in range(3):
        path = tmp_path / f"{i}.vhd"
        pyvhdx.create(path, MiB)
        with pyvhdx.open(path) as img:
            ids.add(img.handler.identifier)
            stamp = img.info().format_specific["timestamp"]
        assert stamp[:4] == time.strftime("%Y", time.gmtime())
    assert len(ids) == 3
