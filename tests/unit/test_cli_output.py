"""What the command line prints (issue 19): JSON that is whole or absent, the errors
(one line, naming their file, escaped), exit codes, closed pipes, and start-up.

In process (``main`` with capsys) except where the process matters: the terminal's
encoding, a real closed pipe, the time and imports of start-up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.cli import main
from tests.conftest import SAMPLE_IMAGES

MiB = 1 << 20


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    status = main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def truncated_vhd(tmp_path: Path) -> Path:
    """``head -c 6000000 sample_images/dynamic.vhd``: it opens, its last block is cut."""
    path = tmp_path / "t.vhd"
    path.write_bytes((SAMPLE_IMAGES / "dynamic.vhd").read_bytes()[:6_000_000])
    return path


# -- JSON: valid or nothing --------------------------------------------------------------


def test_map_json_prints_nothing_when_the_image_fails_half_way(
    capsys: pytest.CaptureFixture[str], truncated_vhd: Path
) -> None:
    """It printed ``[`` and then the error."""
    status, out, err = run(capsys, "map", "--json", truncated_vhd)
    assert (status, out) == (1, "")
    assert err.splitlines()[-1].startswith(f"pyvhdx: error: {truncated_vhd}: the file ends at")


def test_map_json_is_one_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    image = tmp_path / "d.vhd"
    shutil.copy(SAMPLE_IMAGES / "dynamic.vhd", image)
    status, out, _ = run(capsys, "map", "--json", image)
    assert status == 0
    entries = json.loads(out)
    with pyvhdx.open(image) as img:
        assert sum(e["length"] for e in entries) == img.virtual_size
