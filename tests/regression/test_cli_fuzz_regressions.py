"""Bugs the command-line fuzzing (``tests/integration/test_cli_fuzz.py``,
``tools/fuzz.py --cli``) found outside ``pyvhdx/cli/``, one test per bug fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvhdx.errors import InvalidArgumentError
from pyvhdx.measure import measure_image
from tests.fuzzlib import run_cli

SAMPLE = Path(__file__).resolve().parents[2] / "sample_images" / "dynamic.vhdx"


@pytest.mark.parametrize(
    ("fmt", "block_size"),
    [
        ("vhdx", 1 << 40),  # was a ZeroDivisionError (no sector bitmap ratio)
        ("vhdx", 3 << 20),  # not a power of two: convert refuses it
        ("vhdx", 512 << 20),
        ("vhdx", 4096),
        ("vhd", 1 << 40),
        ("vhd", 512),
    ],
)
def test_measure_refuses_a_block_size_convert_refuses(fmt: str, block_size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="block size must be a power of two"):
        measure_image(SAMPLE, format=fmt, block_size=block_size)


def test_measure_takes_the_block_sizes_convert_takes() -> None:
    default = measure_image(SAMPLE)
    assert measure_image(SAMPLE, block_size=0) == default  # 0: the default, as before
    assert measure_image(SAMPLE, block_size=32 << 20) == default
    assert measure_image(SAMPLE, block_size=1 << 20).required < default.required
    assert measure_image(SAMPLE, format="vhd", block_size=4096).block_size == 4096


@pytest.mark.parametrize("value", ["1T", "3M", "0.5M"])
def test_measure_command_with_a_bad_block_size(value: str) -> None:
    r = run_cli(["measure", str(SAMPLE), "--block-size", value, "--json"])
    assert r.problems == []
    assert r.status in (1, 2)
    assert "block size" in r.stderr
    assert r.stdout == ""
