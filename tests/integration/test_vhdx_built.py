"""VHDX images built from pyvhdx's structures (tests/vhdxbuild.py), read back.

These cover what qemu-img cannot make: 4096-byte logical sectors, every payload
state, unknown metadata items. libvhdi (pyvhdi) is the outside oracle where it
reads the image.
"""

from __future__ import annotations

import hashlib
import io
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyvhdx
from pyvhdx.constants import PayloadState
from pyvhdx.errors import UnsupportedFeatureError
from tests.conftest import import_pyvhdi
from tests.vhdxbuild import build_vhdx

MiB = 1 << 20


def content(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    # zero regions: whole blocks and part of a block
    data[2 * MiB : 5 * MiB] = bytes(3 * MiB)
    data[6 * MiB + 4096 : 6 * MiB + 3 * 4096] = bytes(8192)
    return bytes(data)


def pyvhdi_read_all(path: Path) -> bytes:
    pyvhdi = import_pyvhdi()
    f = pyvhdi.file()
    f.open(str(path))
    try:
        return bytes(f.read_buffer_at_offset(f.get_media_size(), 0))
    finally:
        f.close()


@pytest.mark.parametrize("sector", [512, 4096])
@pytest.mark.parametrize("disk_type", ["dynamic", "fixed"])
@pytest.mark.parametrize("block_size", [MiB, 2 * MiB])
def test_sector_sizes_against_libvhdi(
    tmp_path: Path, sector: int, disk_type: str, block_size: int
) -> None:
    data = content(9 * MiB + 3 * 4096, seed=sector + block_size)
    path = tmp_path / "x.vhdx"
    build_vhdx(path, data, logical_sector_size=sector, disk_type=disk_type, block_size=block_size)
    with pyvhdx.open(path) as img:
        assert img.logical_sector_size == sector
        assert img.disk_type.value == disk_type
        assert img.virtual_size == len(data)
        ours = img.read_at(0, img.virtual_size)
    assert ours == data
    assert pyvhdi_read_all(path) == data


def test_payload_states(tmp_path: Path) -> None:
    """ZERO, UNMAPPED (3 and v0.95's 5), UNDEFINED read as zeros in a dynamic disk."""
    data = content(8 * MiB, seed=7)
    states = {
        0: PayloadState.ZERO,
        1: PayloadState.UNMAPPED,
        3: PayloadState.UNMAPPED_V095,
        4: PayloadState.UNDEFINED,
        6: PayloadState.PARTIALLY_PRESENT,
    }
    path = tmp_path / "s.vhdx"
    build_vhdx(path, data, states=states)
    expected = bytearray(data)
    for b in (0, 1, 3, 4):
        expected[b * MiB : (b + 1) * MiB] = bytes(MiB)
    with pyvhdx.open(path) as img:
        assert img.read_at(0, img.virtual_size) == bytes(expected)
        kinds = {e.start // MiB: e.kind.name for e in img.extents() if e.length == MiB}
        assert kinds.get(0) == "ZERO"
        summary = img.info().allocation
        assert summary is not None and summary.zero_blocks == 1


def test_reserved_state_is_an_error_with_offset(tmp_path: Path) -> None:
    path = tmp_path / "r.vhdx"
    layout = build_vhdx(path, content(4 * MiB, 1), states={2: 4})
    with pytest.raises(pyvhdx.InvalidImageError) as err:
        pyvhdx.open(path)
    assert err.value.offset == layout.bat_offset + 16
    assert err.value.field == "State"


def test_unknown_metadata_items(tmp_path: Path) -> None:
    data = content(4 * MiB, 2)
    optional = uuid.uuid4()
    path = tmp_path / "m.vhdx"
    build_vhdx(path, data, extra_metadata=[(optional, b"hello", 0), (uuid.uuid4(), b"u", 1 | 4)])
    with pyvhdx.open(path) as img:
        items = img.info().format_specific["metadata-items"]
        assert str(optional) in {i["item-id"] for i in items}
        assert img.read_at(0, len(data)) == data
    required = tmp_path / "req.vhdx"
    build_vhdx(required, data, extra_metadata=[(uuid.uuid4(), b"x", 4)])
    with pytest.raises(UnsupportedFeatureError) as err:
        pyvhdx.open(required)
    assert err.value.field == "IsRequired"


def test_differencing_without_parent(tmp_path: Path) -> None:
    """Without its parent a child opens for info only; it never reads zeros silently."""
    path = tmp_path / "child.avhdx"
    linkage = "{" + str(uuid.uuid4()) + "}"
    build_vhdx(
        path,
        bytes(4 * MiB),
        disk_type="differencing",
        parent_locator={"parent_linkage": linkage, "relative_path": r".\base.vhdx"},
    )
    with pytest.raises(pyvhdx.ParentError) as err:
        pyvhdx.open(path)
    assert err.value.tried == [str(tmp_path.resolve() / "base.vhdx")]
    with pyvhdx.open(path, resolve_parent=False) as img:
        assert img.disk_type.value == "differencing"
        parent = img.info().parent
        assert parent is not None and parent["locator"]["parent_linkage"] == linkage
        assert parent["locator"]["relative_path"] == r".\base.vhdx"
        with pytest.raises(UnsupportedFeatureError):
            img.read_at(0, 512)
        with pytest.raises(UnsupportedFeatureError):
            img.stream().read(512)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = content(11 * MiB + 512 * 5, seed=11)
    path = tmp_path_factory.mktemp("built") / "h.vhdx"
    build_vhdx(path, data, block_size=MiB)
    return path, data


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_reads_equal_source(built: tuple[Path, bytes], data: st.DataObject) -> None:
    path, source = built
    size = len(source)
    with pyvhdx.open(path) as img:
        for _ in range(5):
            off = data.draw(st.integers(0, size + 10))
            ln = data.draw(st.integers(0, 3 * MiB))
            assert img.read_at(off, ln) == source[off : off + ln]
            buf = bytearray(ln)
            n = img.readinto_at(off, memoryview(buf))
            assert bytes(buf[:n]) == source[off : off + ln]
        stream = img.stream()
        off = data.draw(st.integers(0, size))
        whence = data.draw(st.sampled_from([io.SEEK_SET, io.SEEK_END]))
        pos = stream.seek(off - size if whence == io.SEEK_END else off, whence)
        assert pos == off
        ln = data.draw(st.integers(0, 2 * MiB))
        assert stream.read(ln) == source[off : off + ln]
        assert stream.tell() == min(size, off + ln) if off <= size else off


def test_stream_works_with_hashlib_and_bufferedreader(built: tuple[Path, bytes]) -> None:
    path, source = built
    with pyvhdx.open(path) as img:
        if sys.version_info >= (3, 11):  # hashlib.file_digest is new in 3.11
            digest = hashlib.file_digest(img.stream(), "sha256").hexdigest()
            assert digest == hashlib.sha256(source).hexdigest()
        reader = io.BufferedReader(img.stream(), buffer_size=3000)
        reader.seek(1000)
        assert reader.read(5000) == source[1000:6000]


def test_open_file_object(built: tuple[Path, bytes]) -> None:
    path, source = built
    with path.open("rb") as f, pyvhdx.open(f) as img:
        assert img.read_at(MiB - 100, 300) == source[MiB - 100 : MiB + 200]
    # a file object without a descriptor
    with pyvhdx.open(io.BytesIO(path.read_bytes())) as img:
        assert img.read_at(0, len(source)) == source
