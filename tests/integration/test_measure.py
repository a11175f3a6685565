"""measure (issue 15, as ``qemu-img measure``): the sizes convert would produce.

The oracle is convert itself: the measured ``required`` size is the size of the
dynamic image convert writes from a source whose stored blocks all hold data,
``fully_allocated`` the size of the fixed one; and qemu-img agrees on the
virtual size of what was measured.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.measure import measure_image

MiB = 1 << 20


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A 300 MiB raw disk (plus an odd tail) with random data in four places."""
    path = tmp_path / "src.raw"
    rng = random.Random(1)
    with open(path, "wb") as f:
        f.truncate(300 * MiB + 1000)
        for off in (0, 37 * MiB, 100 * MiB + 12345, 299 * MiB):
            f.seek(off)
            f.write(rng.randbytes(MiB))
    return path


@pytest.mark.parametrize(
    ("ext", "block_size"),
    [(".vhdx", None), (".vhdx", MiB), (".vhd", None), (".vhd", 512 * 1024)],
)
def test_measure_is_what_convert_writes(
    source: Path, tmp_path: Path, ext: str, block_size: int | None
) -> None:
    kw = {} if block_size is None else {"block_size": block_size}
    m = measure_image(source, format=ext[1:], **kw)
    dynamic = pyvhdx.convert(source, tmp_path / f"d{ext}", **kw)  # type: ignore[arg-type]
    fixed = pyvhdx.convert(source, tmp_path / f"f{ext}", disk_type="fixed", **kw)  # type: ignore[arg-type]
    assert m.required == dynamic.destination.stat().st_size
    assert m.fully_allocated == fixed.destination.stat().st_size
    assert m.virtual_size == dynamic.virtual_size
    assert m.required < m.fully_allocated


def test_measure_of_an_image_source(source: Path, tmp_path: Path) -> None:
    """The source's allocation map counts, whatever its format."""
    vhd = pyvhdx.convert(source, tmp_path / "s.vhd").destination
    a = measure_image(source, format="vhdx", block_size=MiB)
    b = measure_image(vhd, format="vhdx", block_size=MiB)
    assert a.required <= b.required  # the VHD's 2 MiB blocks cover at least the raw data
    out = pyvhdx.convert(vhd, tmp_path / "o.vhdx", block_size=MiB).destination
    assert out.stat().st_size <= b.required
