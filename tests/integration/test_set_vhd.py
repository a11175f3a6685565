"""Set-VHD's edits (issue 15): a moved parent repaired with set-parent, a new disk
identifier, a new physical sector size.

Oracles: libvhdi reads the repaired chain (parent attached with its own
``set_parent``) the same as pyvhdx and as before the move; qemu-img checks the
edited VHDX; the content hash never changes.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.errors import ParentError
from pyvhdx.setparent import set_disk_properties, set_parent
from tests.conftest import import_pyvhdi, sha256_of_image

MiB = 1 << 20


def _chain(folder: Path, ext: str) -> tuple[Path, Path, bytes]:
    folder.mkdir()
    base, child = folder / f"base{ext}", folder / f"child{ext}"
    rng = random.Random(4)
    pyvhdx.create(base, 16 * MiB)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(0, rng.randbytes(8 * MiB))
    pyvhdx.create(child, 16 * MiB, parent=base)
    with pyvhdx.open(child, "r+") as img:  # whole blocks (libvhdi's VHD bitmaps, pitfall 22)
        img.write_at(4 * MiB, rng.randbytes(4 * MiB))
    with pyvhdx.open(child) as img:
        return base, child, img.read_at(0, 16 * MiB)


@pytest.mark.oracle
@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_moved_parent_is_repaired_with_set_parent(tmp_path: Path, ext: str) -> None:
    base, child, content = _chain(tmp_path / "a", ext)
    moved = base.with_name(f"renamed{ext}")  # pyvhdx looks for parents beside the child
    base.rename(moved)
    with pytest.raises(ParentError):
        pyvhdx.open(child)
    set_parent(child, moved)
    with pyvhdx.open(child) as img:
        assert img.read_at(0, 16 * MiB) == content
        assert Path(img.parent.name).resolve() == moved.resolve()  # type: ignore[union-attr]
    pyvhdi = import_pyvhdi()
    parent, kid = pyvhdi.file(), pyvhdi.file()
    parent.open(str(moved))
    kid.open(str(child))
    try:
        assert kid.get_parent_identifier() == parent.get_identifier()
        kid.set_parent(parent)
        assert kid.read_buffer_at_offset(16 * MiB, 0) == content
    finally:
        kid.close()
        parent.close()


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_set_parent_checks_the_identity(tmp_path: Path, ext: str) -> None:
    _base, child, content = _chain(tmp_path / "a", ext)
    stranger = tmp_path / f"stranger{ext}"
    pyvhdx.create(stranger, 16 * MiB)
    with pytest.raises(ParentError, match="not the parent"):
        set_parent(child, stranger)
    with pyvhdx.open(child) as img:  # refused before any write
        assert img.read_at(0, 16 * MiB) == content
    set_parent(child, stranger, ignore_id_mismatch=True)  # as Set-VHD -IgnoreIdMismatch
    with pyvhdx.open(child, parent=stranger) as img:
        assert img.read_at(4 * MiB, 4 * MiB) == content[4 * MiB : 8 * MiB]


@pytest.mark.oracle
def test_reset_identifier_and_physical_sector_size(tmp_path: Path) -> None:
    base, child, content = _chain(tmp_path / "a", ".vhdx")
    with pyvhdx.open(base) as img:
        old_id = img.handler.identifier
        guid = img.info().format_specific["data-write-guid"]
        digest = sha256_of_image(img)
    new_id = set_disk_properties(base, reset_identifier=True, physical_sector_size=512)
    assert new_id is not None and new_id != old_id
    with pyvhdx.open(base) as img:
        assert img.handler.identifier == new_id
        assert img.physical_sector_size == 512
        assert img.info().format_specific["data-write-guid"] == guid  # the data is the same
        assert sha256_of_image(img) == digest
    with pyvhdx.open(child) as img:  # so the child stays linked
        assert img.read_at(0, 16 * MiB) == content
    r = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(base)], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    h = import_pyvhdi().file()
    h.open(str(base))
    try:
        assert h.get_bytes_per_sector() == 512  # the logical size: unchanged
    finally:
        h.close()
