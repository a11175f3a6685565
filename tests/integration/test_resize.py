"""Resize (issue 15, Resize-VHD): grow VHDX and VHD, shrink VHDX, minimum size.

Oracles: qemu-img reads the result (``info`` virtual size, ``check`` for VHDX,
the content through ``convert -O raw``: the old prefix then zeros after a grow,
the kept prefix after a shrink), libvhdi reads it too, and sfdisk/sgdisk make the
partition tables whose end the minimum size must respect. Crash safety: the
resize runs on a :class:`~tests.crashfile.CrashFile` that fails at every write,
truncate and flush in turn, and the file left behind must open, pass ``check``
and hold the disk of before or after.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO, cast

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.errors import InvalidArgumentError, UnsupportedFeatureError
from pyvhdx.resize import minimum_size, resize_image
from tests import resizekill
from tests.conftest import import_pyvhdi, qemu_info, qemu_to_raw, require
from tests.crashfile import CrashFile, SimulatedCrash

MiB = 1 << 20
pytestmark = pytest.mark.oracle


def _fill(path: Path, end: int, seed: int = 1) -> bytes:
    """Write scattered random data up to ``end`` (its last sector too); the content."""
    rng = random.Random(seed)
    with pyvhdx.open(path, "r+") as img:
        for off in range(0, end, 5 * MiB):
            img.write_at(off, rng.randbytes(min(256 * 1024, end - off)))
        img.write_at(end - 512, b"\xa5" * 512)
        return img.read_at(0, img.get_size())


def _make(
    tmp_path: Path, ext: str, kind: str, size: int, data_end: int | None = None, **kw: int
) -> tuple[Path, bytes]:
    path = tmp_path / f"disk-{kind}{ext}"
    pyvhdx.create(path, size, disk_type=kind, **kw)  # type: ignore[arg-type]
    return path, _fill(path, data_end or size)


def _qemu_fmt(path: Path) -> str:
    return "vhdx" if path.suffix == ".vhdx" else "vpc"


def _assert_content(path: Path, expected: bytes, tmp_path: Path) -> None:
    """pyvhdx, qemu-img and libvhdi all read ``expected``."""
    with pyvhdx.open(path) as img:
        assert img.get_size() == len(expected)
        assert img.read_at(0, len(expected)) == expected
    info = qemu_info(path) if path.suffix == ".vhdx" else None
    if info is not None:
        assert info["virtual-size"] == len(expected)
    raw = qemu_to_raw(path, tmp_path / "qemu.raw", _qemu_fmt(path))
    assert raw.read_bytes() == expected
    h = import_pyvhdi().file()
    h.open(str(path))
    try:
        assert h.get_media_size() == len(expected)
        assert h.read_buffer_at_offset(len(expected), 0) == expected
    finally:
        h.close()
    if path.suffix == ".vhdx":
        r = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(path)], capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
    report = check_image(path)
    assert report.ok, [str(f) for f in report.errors]


GROWS = [
    # (suffix, kind, old size, new size, create options)
    (".vhdx", "dynamic", 64 * MiB, 200 * MiB, {}),
    (".vhdx", "dynamic", 64 * MiB + 512, 96 * MiB, {}),  # stale tail of the last block zeroed
    (".vhdx", "fixed", 40 * MiB + 4096, 130 * MiB, {"block_size": MiB}),
    (".vhdx", "dynamic", 8 * MiB, 300 * MiB, {"block_size": MiB}),  # still fits the BAT region
    (".vhd", "dynamic", 64 * MiB, 200 * MiB, {}),  # BAT moves past the footer
    (".vhd", "dynamic", 63 * MiB + 512, 64 * MiB, {}),  # room in the BAT's last sector
    (".vhd", "fixed", 30 * MiB + 512, 70 * MiB, {}),
]


@pytest.mark.parametrize(("ext", "kind", "old", "new", "opts"), GROWS)
def test_grow_reads_old_prefix_then_zeros(
    tmp_path: Path, ext: str, kind: str, old: int, new: int, opts: dict[str, int]
) -> None:
    path, before = _make(tmp_path, ext, kind, old, **opts)
    result = resize_image(path, new)
    assert (result.old_size, result.new_size) == (old, new)
    _assert_content(path, before + bytes(new - old), tmp_path)
    with pyvhdx.open(path, "r+") as img:  # and the grown disk takes writes at its end
        img.write_at(new - MiB, b"\x5a" * MiB)
    with pyvhdx.open(path) as img:
        assert img.read_at(new - MiB, MiB) == b"\x5a" * MiB


def test_vhdx_grow_moves_a_full_bat(tmp_path: Path) -> None:
    """1 MiB blocks: 8 TiB needs a BAT of 64 MiB; it moves to the end of the file."""
    path, before = _make(tmp_path, ".vhdx", "dynamic", 16 * MiB, block_size=MiB)
    with pyvhdx.open(path) as img:
        old_bat = img.handler.bat_offset  # type: ignore[attr-defined]
    new = 8 << 40
    resize_image(path, new)
    with pyvhdx.open(path) as img:
        assert img.get_size() == new
        assert img.handler.bat_offset != old_bat  # type: ignore[attr-defined]
        assert img.read_at(0, len(before)) == before
        assert img.read_at(new - MiB, MiB) == bytes(MiB)
    assert qemu_info(path)["virtual-size"] == new
    r = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(path)], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert check_image(path).ok


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_vhdx_shrink_keeps_the_prefix_and_cuts_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.vhdx"
    pyvhdx.create(path, 100 * MiB, disk_type=kind, block_size=MiB)
    data = random.Random(3).randbytes(40 * MiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, data)
        img.write_at(70 * MiB, b"\x01" * MiB)
        img.write_at(70 * MiB, bytes(MiB))  # an allocated block that holds no data now
    size_before = path.stat().st_size
    with pytest.raises(InvalidArgumentError, match="shrink"):
        resize_image(path, 50 * MiB)
    result = resize_image(path, 40 * MiB + 512, shrink=True)
    assert result.minimum_size == 40 * MiB  # no partition table: the last non-zero byte
    _assert_content(path, data + bytes(512), tmp_path)
    freed = MiB if kind == "dynamic" else 59 * MiB  # the blocks after the new end
    assert path.stat().st_size <= size_before - freed
    resize_image(path, 100 * MiB)  # grown back: what was cut off reads as zeros
    _assert_content(path, data + bytes(60 * MiB), tmp_path)


def test_shrink_below_the_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    pyvhdx.create(path, 100 * MiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(70 * MiB, b"x" * 1000)
    with pyvhdx.open(path) as img:
        assert minimum_size(img) == 70 * MiB + 1024  # the sector after the last data byte
    with pytest.raises(InvalidArgumentError, match="minimum size"):
        resize_image(path, 50 * MiB, shrink=True)
    assert resize_image(path, to_minimum=True).new_size == 70 * MiB + 1024
    with pyvhdx.open(path) as img:
        assert img.read_at(70 * MiB, 1024) == b"x" * 1000 + bytes(24)


def _partitioned_raw(tmp_path: Path, label: str, size: int) -> tuple[Path, int]:
    """A raw disk partitioned by sfdisk (one partition 1 MiB..41 MiB); its end in bytes."""
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        require("sfdisk", "sfdisk (util-linux fdisk) makes the partition tables")
    raw = tmp_path / f"{label}.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
    script = f"label: {label}\nstart=2048, size=81920\n"
    subprocess.run([sfdisk, "-q", str(raw)], input=script, text=True, check=True)
    return raw, (2048 + 81920) * 512


def test_minimum_size_respects_an_mbr_partition(tmp_path: Path) -> None:
    raw, end = _partitioned_raw(tmp_path, "dos", 128 * MiB)
    path = tmp_path / "mbr.vhdx"
    pyvhdx.convert(raw, path)
    with pyvhdx.open(path) as img:
        assert minimum_size(img) == end
    resize_image(path, to_minimum=True)
    expected = raw.read_bytes()[:end]
    _assert_content(path, expected, tmp_path)
    out = tmp_path / "after.raw"
    out.write_bytes(expected)
    dump = subprocess.run(["sfdisk", "-d", str(out)], capture_output=True, text=True, check=True)
    assert "start=        2048, size=       81920" in dump.stdout


def test_minimum_size_keeps_the_gpt_backup_header(tmp_path: Path) -> None:
    raw, end = _partitioned_raw(tmp_path, "gpt", 128 * MiB)
    path = tmp_path / "gpt.vhdx"
    pyvhdx.convert(raw, path)
    with pyvhdx.open(path) as img:
        assert minimum_size(img) == 128 * MiB  # the backup GPT header is the last sector
        assert minimum_size(img) > end
    with pytest.raises(InvalidArgumentError, match="minimum size"):
        resize_image(path, 100 * MiB, shrink=True)
    resize_image(path, 256 * MiB)  # grown: partitions untouched, the backup GPT stays put
    grown = tmp_path / "grown.raw"
    qemu_to_raw(path, grown, "vhdx")
    assert grown.read_bytes()[: 128 * MiB] == raw.read_bytes()
    sgdisk = shutil.which("sgdisk")
    if sgdisk is None:
        require("sgdisk", "sgdisk (gdisk) checks the grown GPT")
    found = subprocess.run([sgdisk, "-v", str(grown)], capture_output=True, text=True).stdout
    assert "doesn't reside\nat the end of the disk" in found  # what a guest's tools fix
    subprocess.run([sgdisk, "-e", str(grown)], capture_output=True, check=True)  # as they do
    fixed = subprocess.run([sgdisk, "-v", str(grown)], capture_output=True, text=True).stdout
    assert "No problems found" in fixed
    part = subprocess.run([sgdisk, "-i", "1", str(grown)], capture_output=True, text=True).stdout
    assert "First sector: 2048" in part and "Last sector: 83967" in part


def test_vhd_shrink_is_refused(tmp_path: Path) -> None:
    path, before = _make(tmp_path, ".vhd", "dynamic", 64 * MiB)
    with pytest.raises(InvalidArgumentError, match="cannot be shrunk"):
        resize_image(path, 32 * MiB, shrink=True)
    with pyvhdx.open(path) as img:
        assert img.read_at(0, len(before)) == before


@pytest.mark.parametrize("ext", [".vhdx", ".vhd"])
def test_parent_with_children_is_refused_unless_forced(tmp_path: Path, ext: str) -> None:
    base = tmp_path / f"base{ext}"
    pyvhdx.create(base, 64 * MiB)
    child = tmp_path / f"child{ext}"
    pyvhdx.create(child, 64 * MiB, parent=base)
    with pytest.raises(InvalidArgumentError, match=child.name):
        resize_image(base, 128 * MiB)
    with pyvhdx.open(base) as img:
        assert img.get_size() == 64 * MiB
    with pytest.raises(UnsupportedFeatureError, match="differencing"):
        resize_image(child, 128 * MiB)
    assert resize_image(base, 128 * MiB, force=True).new_size == 128 * MiB


# --- crash injection at every step -------------------------------------------------

CRASHES = [
    (".vhdx", "dynamic", 20 * MiB + 512, 3 << 40, {"block_size": MiB}),  # BAT moves
    (".vhdx", "fixed", 6 * MiB + 512, 9 * MiB, {"block_size": MiB}),
    (".vhdx", "dynamic", 20 * MiB, 5 * MiB + 4096, {"block_size": MiB}),  # shrink
    (".vhd", "dynamic", 4 * MiB + 512, 300 * MiB, {}),  # BAT moves past the footer
    (".vhd", "fixed", 4 * MiB + 512, 6 * MiB, {}),
]


@pytest.mark.filterwarnings("ignore::pyvhdx.errors.PyvhdxWarning")  # the VHD window warns
@pytest.mark.parametrize(("ext", "kind", "old", "new", "opts"), CRASHES)
def test_crash_at_every_step_leaves_old_or_new(
    tmp_path: Path, ext: str, kind: str, old: int, new: int, opts: dict[str, int]
) -> None:
    pristine, before = _make(tmp_path, ext, kind, old, min(old, new), **opts)
    keep = min(old, new)
    grown_tail = bytes(min(new - old, MiB)) if new > old else b""
    step = windows = 0
    finished = False
    while not finished:
        path = tmp_path / f"crash{ext}"
        shutil.copyfile(pristine, path)
        f = CrashFile(path, step, lose_unflushed=step % 2 == 1)
        try:
            resize_image(cast(BinaryIO, f), new, shrink=True)
            finished = True
        except SimulatedCrash:
            pass
        finally:
            f.close()
        with pyvhdx.open(path) as img:
            size = img.get_size()
            assert size in (old, new), (step, size)
            assert img.read_at(0, keep) == before[:keep], step
            if size == new and new > old:
                assert img.read_at(old, len(grown_tail)) == grown_tail, step
                assert img.read_at(new - len(grown_tail), len(grown_tail)) == grown_tail
        errors = [str(e) for e in check_image(path).errors]
        if errors:  # a VHD's two footer copies cannot change at once: the one window
            assert ext == ".vhd" and size == new, (step, errors)
            assert all("differs from the footer at the end" in e for e in errors), errors
            windows += 1
            resize_image(path, new)  # the way forward: the same resize again
            assert check_image(path).ok
        step += 1
    assert step > 4  # the resize took several steps, each crashed in turn
    assert size == new
    assert windows <= 2  # the write of the copy at 0, lost or not yet made


def test_interrupted_vhd_resize_is_recorded_and_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between the footer at the end and its copy at offset 0 (the one pair of
    writes a VHD cannot make at once): the record beside the image makes check warn
    instead of fail, and the same resize again rewrites the copy and drops the record."""
    from pyvhdx.source import FileSource

    path, before = _make(tmp_path, ".vhd", "dynamic", 8 * MiB)
    real = FileSource.pwrite

    def stop_at_the_copy(self: FileSource, data: bytes, offset: int) -> None:
        if offset == 0 and len(data) == 512:
            raise KeyboardInterrupt
        real(self, data, offset)

    monkeypatch.setattr(FileSource, "pwrite", stop_at_the_copy)
    with pytest.raises(KeyboardInterrupt):
        resize_image(path, 16 * MiB)
    monkeypatch.setattr(FileSource, "pwrite", real)
    record = path.with_name(path.name + ".pyvhdx-resize")
    assert record.exists()
    report = check_image(path)
    assert report.ok, [str(e) for e in report.errors]
    assert any("resize" in str(w) and "finishes it" in str(w) for w in report.warnings)
    with pytest.warns(pyvhdx.PyvhdxWarning, match="differs"):
        img = pyvhdx.open(path)
    with img:
        assert img.get_size() == 16 * MiB
    resize_image(path, 16 * MiB)  # the way forward
    assert not record.exists()
    report = check_image(path)
    assert report.ok and not report.warnings
    _assert_content(path, before + bytes(8 * MiB), tmp_path)


@pytest.mark.parametrize("case", resizekill.CASES, ids=lambda c: c.name)
def test_sigkill_through_the_cli_leaves_old_or_new(tmp_path: Path, case: resizekill.Case) -> None:
    """A bounded run of tools/resize_kill.py: one SIGKILL a case at a random point of
    ``pyvhdx resize``; the image is old or new, checks clean, and resizing again
    finishes it (the campaign runs 30 points a case)."""
    outcomes = resizekill.campaign(case, tmp_path, points=1, seed=len(case.name))
    assert all(o.ok for o in outcomes), [(o.delay, o.state, o.detail) for o in outcomes]


def test_cli_resize_reports_and_refuses(tmp_path: Path) -> None:
    path = tmp_path / "d.vhdx"
    pyvhdx.create(path, 64 * MiB)
    r = resizekill.cli("resize", path.name, "128M", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "old-size": 64 * MiB,
        "new-size": 128 * MiB,
        "minimum-size": None,
    }
    r = resizekill.cli("resize", path.name, "32M", cwd=tmp_path)
    assert r.returncode == 2 and "--shrink" in r.stderr
    r = resizekill.cli("resize", path.name, "--to-minimum", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with pyvhdx.open(path) as img:
        assert img.get_size() == 512  # nothing written: one sector is the minimum


def test_interrupted_log_apply_stays_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or an I/O error) between the in-place writes of a logged change, here the
    second region table of a grow that moves the BAT: closing the image must leave the
    log named in the headers, so that the next open replays the whole change, instead
    of clearing it over half-applied tables (MS-VHDX 2.3.3)."""
    from pyvhdx.source import FileSource

    path, before = _make(tmp_path, ".vhdx", "dynamic", 8 * MiB, block_size=MiB)
    real = FileSource.pwrite
    table_2 = 256 * 1024

    def stop_at_table_2(self: FileSource, data: bytes, offset: int) -> None:
        if offset == table_2 and len(data) == 4096:
            raise KeyboardInterrupt
        real(self, data, offset)

    monkeypatch.setattr(FileSource, "pwrite", stop_at_table_2)
    with pytest.raises(KeyboardInterrupt):
        resize_image(path, 3 << 40)
    monkeypatch.setattr(FileSource, "pwrite", real)
    report = check_image(path)
    assert report.ok, [str(e) for e in report.errors]
    assert any("log replay pending" in str(w) for w in report.warnings)
    with pyvhdx.open(path) as img:  # the replay finishes the change
        assert img.get_size() == 3 << 40
        assert img.read_at(0, len(before)) == before
    copy = tmp_path / "copy.vhdx"
    shutil.copyfile(path, copy)
    r = subprocess.run(["qemu-img", "check", "-r", "all", str(copy)], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr  # qemu replays the log too
    assert qemu_info(copy)["virtual-size"] == 3 << 40
    with pyvhdx.open(path, "r+"):  # a pyvhdx writer replays it onto the file
        pass
    assert not check_image(path).warnings
