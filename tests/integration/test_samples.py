"""The committed sample images (sample_images/README.md) and the README's first command."""

from __future__ import annotations

import json
from typing import Any

import pytest

import pyvhdx
from tests.conftest import SAMPLE_IMAGES, sha256_of_image

# (file, format, disk type, virtual size, SHA-256 of the virtual content): the
# table in sample_images/README.md, computed with qemu-img convert -O raw.
SAMPLES = [
    (
        "dynamic.vhdx",
        "vhdx",
        "dynamic",
        8388608,
        "dad2b9175b40ad072090b0add7cd756c5651d1073aaa798e3e6e2970fae209c7",
    ),
    (
        "fixed.vhdx",
        "vhdx",
        "fixed",
        4194304,
        "26adfcd3f1217ba12089d829ea68addce49ca5c0e8d53b0b376b29ff72e0a8df",
    ),
    (
        "dynamic.vhd",
        "vhd",
        "dynamic",
        8390656,
        "54a7f581dc496e571b6267718e27308cac035fbd5b291f3275a09f0359dec5b7",
    ),
]


@pytest.mark.parametrize(
    ("name", "fmt", "disk_type", "size", "sha256"), SAMPLES, ids=[s[0] for s in SAMPLES]
)
def test_sample_content(name: str, fmt: str, disk_type: str, size: int, sha256: str) -> None:
    with pyvhdx.open(SAMPLE_IMAGES / name) as img:
        assert img.format.value == fmt
        assert img.disk_type.value == disk_type
        assert img.virtual_size == size
        assert img.read_at(440, 4) == b"PYVX"
        assert img.read_at(510, 2) == b"\x55\xaa"
        assert sha256_of_image(img) == sha256


def test_cli_info(capsys: pytest.CaptureFixture[str]) -> None:
    """``pyvhdx info sample_images/dynamic.vhdx`` (the README's first command)."""
    from pyvhdx.cli import main

    path = str(SAMPLE_IMAGES / "dynamic.vhdx")
    assert main(["info", path]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["info", "--json", path]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert data["virtual-size"] == 8388608
    assert data["format"] == "vhdx"
