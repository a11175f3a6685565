"""Large sparse VHDX made by qemu-img and written by qemu-io: the BAT interleaves
sector bitmap entries for every disk type, fixed included (SPEC-NOTES pitfall 5)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import pyvhdx
from tests.conftest import find_qemu_img

GiB = 1 << 30
WRITES = [
    (0, 4096, 0xCD),
    (4 * GiB - 65536, 131072, 0x11),
    (4 * GiB + GiB // 2, 65536, 0xAB),
    (5 * GiB - 512, 512, 0x5A),
]


def qemu_io(path: Path, fmt: str, writes: list[tuple[int, int, int]]) -> None:
    qemu_img = find_qemu_img()
    qemu_io_bin = str(Path(qemu_img).with_name("qemu-io"))
    cmds: list[str] = []
    for off, ln, pat in writes:
        cmds += ["-c", f"write -P {pat:#x} {off} {ln}"]
    subprocess.run([qemu_io_bin, "-f", fmt, *cmds, str(path)], check=True, capture_output=True)


@pytest.mark.parametrize(
    "options",
    [
        "subformat=fixed,block_size=256M,block_state_zero=off",
        "subformat=fixed,block_size=256M,block_state_zero=on",
        "subformat=dynamic,block_size=256M",
    ],
)
def test_more_than_one_chunk(tmp_path: Path, options: str) -> None:
    """256 MiB blocks and 512-byte sectors: chunk ratio 16, so 5 GiB spans two chunks."""
    path = tmp_path / "big.vhdx"
    subprocess.run(
        [find_qemu_img(), "create", "-q", "-f", "vhdx", "-o", options, str(path), "5G"], check=True
    )
    qemu_io(path, "vhdx", WRITES)
    with pyvhdx.open(path) as img:
        assert img.virtual_size == 5 * GiB
        assert img.handler.chunk_ratio == 16  # type: ignore[attr-defined]
        for off, ln, pat in WRITES:
            assert img.read_at(off, ln) == bytes([pat]) * ln, hex(off)
        assert img.read_at(4 * GiB - 65536 - 512, 512) == bytes(512)
        assert img.read_at(4 * GiB + GiB // 2 + 65536, 4096) == bytes(4096)
        data_runs = [e for e in img.extents() if e.kind == pyvhdx.RunKind.DATA]
        if "block_state_zero=off" in options:
            assert sum(e.length for e in data_runs) == 5 * GiB
        else:  # only the written 256 MiB blocks: 0, 15 and 16 (one write spans both), 18, 19
            assert [e.start // (256 << 20) for e in data_runs] == [0, 15, 18]
            assert sum(e.length for e in data_runs) == 5 * 256 * (1 << 20)


def test_empty_64_tib_dynamic_opens_fast_and_reads_zeros(tmp_path: Path) -> None:
    path = tmp_path / "huge.vhdx"
    subprocess.run([find_qemu_img(), "create", "-q", "-f", "vhdx", str(path), "64T"], check=True)
    qemu_io(path, "vhdx", [(64 * 1024 * GiB - 4096, 4096, 0x77)])
    with pyvhdx.open(path) as img:
        assert img.virtual_size == 64 * 1024 * GiB
        assert img.read_at(0, 4096) == bytes(4096)
        assert img.read_at(img.virtual_size - 4096, 4096) == b"\x77" * 4096
        assert img.read_at(img.virtual_size - 8192, 8192) == bytes(4096) + b"\x77" * 4096
        extents = list(img.extents(img.virtual_size - 2 * GiB))
        assert extents[-1].kind == pyvhdx.RunKind.DATA
