"""``pyvhdx check`` and :func:`pyvhdx.check.check_image`.

Clean images made by qemu-img and by ``pyvhdx.create`` pass (exit 0), and
``qemu-img check`` agrees they are clean. Each damaged variant is made by
patching one structure of a clean image at its spec offset (checksums recomputed
in the test with the ``crc32c`` package or an independent byte sum where the
damage is not about checksums) and must give exit 1 with an error naming that
structure and its file offset in ``--json``. Where qemu-img notices the damage
too (it refuses the image, or its own check fails), it is asked, so the damage
is known to be real. A file that cannot be read gives exit 2. Real-world images
have no errors except the checksums ``expected.json`` says were hand-edited.

Policy checked here (documented in :mod:`pyvhdx.check`): warnings alone exit 0;
a pending log is a warning, "log replay pending" with the entry count.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import pytest

import pyvhdx
from pyvhdx.check import MAX_FINDINGS_PER_KIND, check_image
from pyvhdx.cli import main
from tests.conftest import (
    MiB,
    TiB,
    find_qemu_img,
    load_expected,
    make_raw,
    qemu_convert,
    require_realworld,
)

pytestmark = pytest.mark.oracle

KiB = 1024
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
RAW_SIZE = 8 * MiB


# -- helpers --------------------------------------------------------------------------


def run_check(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> tuple[int, Any]:
    """``pyvhdx check --json ARGS``: (exit status, parsed JSON or None)."""
    status = main(["check", "--json", *[os.fspath(a) for a in args]])
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip() else None


def errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def find(report: dict[str, Any], severity: str, structure: str, **match: Any) -> dict[str, Any]:
    """The finding with this severity and structure whose fields equal ``match``."""
    for f in report["findings"]:
        if (
            f["severity"] == severity
            and f["structure"] == structure
            and all(f.get(k) == v for k, v in match.items())
        ):
            found: dict[str, Any] = f
            return found
    raise AssertionError(
        f"no {severity} on {structure} {match} in " + json.dumps(report["findings"], indent=1)
    )


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_check_fails(path: Path, fmt: str) -> bool:
    """qemu-img refuses the image or its own check finds errors."""
    result = subprocess.run(
        [find_qemu_img(), "check", "-f", fmt, str(path)], capture_output=True, text=True
    )
    return result.returncode != 0


def vhdx_regions(path: Path, table: int = 0) -> dict[bytes, tuple[int, int, int]]:
    """Region GUID (bytes_le) -> (file offset, length, entry offset), parsed here."""
    base = REGION_TABLE_OFFSETS[table]
    head = read(path, base, 16)
    count = struct.unpack_from("<I", head, 8)[0]
    out = {}
    for i in range(count):
        at = base + 16 + 32 * i
        e = read(path, at, 32)
        guid = e[:16]
        offset, length = struct.unpack_from("<QI", e, 16)
        out[guid] = (offset, length, at)
    return out


def fix_crc(path: Path, offset: int, size: int) -> None:
    """Recompute a VHDX CRC-32C (field at +4, zeroed while computed)."""
    data = bytearray(read(path, offset, size))
    data[4:8] = bytes(4)
    patch(path, offset + 4, struct.pack("<I", crc32c.crc32c(bytes(data))))


def bat_entry(path: Path, index: int) -> int:
    bat = vhdx_regions(path)[BAT_GUID][0]
    return int(struct.unpack("<Q", read(path, bat + 8 * index, 8))[0])


def set_bat_entry(path: Path, index: int, value: int) -> int:
    """Write BAT entry ``index`` (payload block == index below the chunk ratio)."""
    bat = vhdx_regions(path)[BAT_GUID][0]
    patch(path, bat + 8 * index, struct.pack("<Q", value))
    return bat + 8 * index


def vhd_sum(data: bytes, field: int) -> int:
    return ~(sum(data[:field]) + sum(data[field + 4 :])) & 0xFFFFFFFF


# -- images ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clean images of one raw disk: qemu-img VHDX (dynamic, fixed) and VHD (dynamic,
    fixed), each block of 1 MiB (VHDX) or 2 MiB (VHD); data in some blocks only.
    """
    d = tmp_path_factory.mktemp("check")
    raw = make_raw(d / "src.img", RAW_SIZE, seed=3, pattern="half", run_size=MiB)
    return {
        "raw": raw,
        "vhdx-dynamic": qemu_convert(
            raw, d / "dyn.vhdx", "vhdx", {"subformat": "dynamic", "block_size": "1M"}
        ),
        "vhdx-fixed": qemu_convert(
            raw, d / "fixed.vhdx", "vhdx", {"subformat": "fixed", "block_size": "1M"}
        ),
        "vhd-dynamic": qemu_convert(raw, d / "dyn.vhd", "vpc", {"subformat": "dynamic"}),
        "vhd-fixed": qemu_convert(
            raw, d / "fixed.vhd", "vpc", {"subformat": "fixed", "force_size": True}
        ),
    }


@pytest.fixture
def vhdx(made: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the qemu-made dynamic VHDX (blocks 1 MiB, some allocated)."""
    return Path(shutil.copy(made["vhdx-dynamic"], tmp_path / "d.vhdx"))


@pytest.fixture
def vhd(made: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copy(made["vhd-dynamic"], tmp_path / "d.vhd"))


def first_blocks(path: Path, want: int) -> list[tuple[int, int]]:
    """(index, entry) of the first ``want`` FULLY_PRESENT payload entries."""
    found = []
    for i in range(RAW_SIZE // MiB):
        e = bat_entry(path, i)
        if e & 7 == 6:
            found.append((i, e))
    assert len(found) >= want, "the test image needs more allocated blocks"
    return found[:want]


def first_absent(path: Path) -> int:
    for i in range(RAW_SIZE // MiB):
        if bat_entry(path, i) & 7 != 6:
            return i
    raise AssertionError("the test image needs an unallocated block")


# -- clean images ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vhdx-dynamic", "vhdx-fixed", "vhd-dynamic", "vhd-fixed"])
def test_qemu_made_images_are_clean(
    made: dict[str, Path], kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt = "vhdx" if kind.startswith("vhdx") else "vpc"
    if fmt == "vhdx":
        assert not qemu_check_fails(made[kind], fmt)  # the oracle agrees it is clean
    before = digest(made[kind])
    status, report = run_check(capsys, made[kind])
    assert status == 0, report
    assert report["check-errors"] == 0 and errors(report) == []
    assert report["opened"] is True
    assert report["format"] == kind.split("-")[0]
    assert report["disk-type"] == kind.split("-")[1]
    assert digest(made[kind]) == before  # a check never writes


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("d.vhdx", {"disk_type": "dynamic"}),
        ("f.vhdx", {"disk_type": "fixed", "block_size": MiB}),
        ("s.vhdx", {"disk_type": "dynamic", "logical_sector_size": 4096}),
        ("d.vhd", {"disk_type": "dynamic"}),
        ("f.vhd", {"disk_type": "fixed"}),
    ],
)
def test_pyvhdx_made_images_are_clean(
    tmp_path: Path, name: str, options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    try:
        pyvhdx.create(path, 20 * MiB, **options)
    except pyvhdx.UnsupportedFeatureError as exc:
        pytest.skip(f"pyvhdx.create cannot make {name} yet: {exc}")
    if name.endswith(".vhdx"):
        with pyvhdx.open(path, "r+") as img:  # allocate a block through the write path
            img.write_at(3 * MiB + 5, b"x" * 5000)
        if options.get("logical_sector_size", 512) == 512:  # qemu has no 4K-sector VHDX
            assert not qemu_check_fails(path, "vhdx")
    status, report = run_check(capsys, path)
    assert status == 0, report
    assert errors(report) == []


def test_raw_image_has_nothing_to_check(
    made: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = run_check(capsys, "-f", "raw", made["raw"])
    assert status == 0
    assert report["format"] == "raw"
    assert [f["severity"] for f in report["findings"]] == ["info"]
    # Not said to be raw: no VHD or VHDX signature is an error (issue 19).
    status, report = run_check(capsys, made["raw"])
    assert status == 1
    assert [f.get("code") for f in errors(report)] == ["format.no-signature"]


# -- damaged VHDX ---------------------------------------------------------------------


def test_one_bad_header_checksum(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patch(vhdx, HEADER_OFFSETS[0] + 1000, b"\xa5")
    status, report = run_check(capsys, vhdx)
    assert status == 1
    f = find(report, "error", "header 1", offset=HEADER_OFFSETS[0] + 4, field="Checksum")
    assert "rewrite header 1" in f["repair"]
    assert report["opened"] is True  # readers use header 2
    assert [e["structure"] for e in errors(report)] == ["header 1"]
    find(report, "info", "header 2")  # header 2 is current


def test_both_headers_bad_still_checks_the_rest(
    vhdx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for off in HEADER_OFFSETS:
        patch(vhdx, off + 1000, b"\xa5")
    # A second defect further on must still be found.
    index = first_absent(vhdx)
    entry = set_bat_entry(vhdx, index, (5 * MiB) | 2)
    assert qemu_check_fails(vhdx, "vhdx")
    status, report = run_check(capsys, vhdx)
    assert status == 1
    for i, off in enumerate(HEADER_OFFSETS, 1):
        find(report, "error", f"header {i}", offset=off + 4, field="Checksum")
    assert any(f["message"].startswith("cannot open:") for f in errors(report))
    assert report["opened"] is False
    find(report, "error", "BAT", offset=entry, field="FileOffsetMB")


def test_bad_region_table_checksum(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patch(vhdx, REGION_TABLE_OFFSETS[0] + 5000, b"\xa5")
    assert qemu_check_fails(vhdx, "vhdx")  # qemu reads region table 1 only
    status, report = run_check(capsys, vhdx)
    assert status == 1
    find(report, "error", "region table 1", offset=REGION_TABLE_OFFSETS[0] + 4, field="Checksum")
    assert report["opened"] is True  # pyvhdx falls back to table 2


def test_region_tables_that_disagree(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, at = vhdx_regions(vhdx, 1)[BAT_GUID]
    flags = struct.unpack("<I", read(vhdx, at + 28, 4))[0]
    patch(vhdx, at + 28, struct.pack("<I", flags ^ 1))  # toggle Required in table 2
    fix_crc(vhdx, REGION_TABLE_OFFSETS[1], 64 * KiB)
    status, report = run_check(capsys, vhdx)
    assert status == 1
    find(report, "error", "region table 2", offset=REGION_TABLE_OFFSETS[1])


def test_region_overlapping_the_log(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = read(vhdx, HEADER_OFFSETS[1], 4096)
    log_length, log_offset = struct.unpack_from("<IQ", h, 68)
    assert log_length
    entry_offsets = []
    for t in (0, 1):
        _, _, at = vhdx_regions(vhdx, t)[METADATA_GUID]
        patch(vhdx, at + 16, struct.pack("<Q", log_offset))
        fix_crc(vhdx, REGION_TABLE_OFFSETS[t], 64 * KiB)
        entry_offsets.append(at)
    assert qemu_check_fails(vhdx, "vhdx")
    status, report = run_check(capsys, vhdx)
    assert status == 1
    f = next(
        e
        for e in errors(report)
        if e["structure"].startswith("region table 1 entry") and "overlaps the log" in e["message"]
    )
    assert f["offset"] == entry_offsets[0] + 16
    assert f["field"] == "FileOffset"
    assert report["opened"] is False


def test_bat_entry_beyond_the_end_of_the_file(
    vhdx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = vhdx.stat().st_size
    ((index, _),) = first_blocks(vhdx, 1)
    where = set_bat_entry(vhdx, index, (size + 64 * MiB) & ~(MiB - 1) | 6)
    assert qemu_check_fails(vhdx, "vhdx")
    status, report = run_check(capsys, vhdx)
    assert status == 1
    f = find(report, "error", "BAT", offset=where, field="FileOffsetMB")
    assert "beyond the end" in f["message"]
    assert report["opened"] is False  # pyvhdx.open refuses it: the check still ran
    assert any(e["message"].startswith("cannot open:") for e in errors(report))


def test_two_bat_entries_sharing_a_block(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (i, e), (j, _) = first_blocks(vhdx, 2)
    where = set_bat_entry(vhdx, j, e)
    # The reader refuses it too (both virtual blocks would read the same bytes).
    with pytest.raises(pyvhdx.InvalidImageError, match="overlap"):
        pyvhdx.open(vhdx)
    status, report = run_check(capsys, vhdx)
    assert status == 1
    f = find(report, "error", "BAT", offset=where, field="FileOffsetMB")
    assert f"payload block {i} " in f["message"] and "shares its offset" in f["message"]
    assert len(errors(report)) == 2  # the finding, and "cannot open" for readers


def test_bat_entry_overlapping_the_metadata_region(
    vhdx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta_offset, _, _ = vhdx_regions(vhdx)[METADATA_GUID]
    ((index, _),) = first_blocks(vhdx, 1)
    where = set_bat_entry(vhdx, index, meta_offset | 6)
    assert qemu_check_fails(vhdx, "vhdx")
    status, report = run_check(capsys, vhdx)
    assert status == 1
    f = find(report, "error", "BAT", offset=where, field="FileOffsetMB")
    assert "Metadata region" in f["message"]


def test_zero_state_with_a_file_offset(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = first_absent(vhdx)
    where = set_bat_entry(vhdx, index, (7 * MiB) | 2)  # PAYLOAD_BLOCK_ZERO, FileOffsetMB 7
    status, report = run_check(capsys, vhdx)
    assert status == 1
    f = find(report, "error", "BAT", offset=where, field="FileOffsetMB")
    assert "ZERO" in f["message"] and "FileOffsetMB 7" in f["message"]
    assert f["repair"].startswith("set FileOffsetMB to 0")


def test_sector_bitmap_entry_in_a_dynamic_file_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 5 GiB with 1 MiB blocks: 5120 blocks, so the BAT holds the SB entry of chunk 0
    # at index 4096 (chunk ratio 4096).
    path = tmp_path / "sb.vhdx"
    pyvhdx.create(path, 5 * 1024 * MiB, block_size=MiB)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size + MiB)
    where = set_bat_entry(path, 4096, size | 6)  # SB_BLOCK_PRESENT (pitfall 6: tolerated)
    status, report = run_check(capsys, path)
    assert status == 0, report
    find(report, "warning", "BAT", offset=where, field="State")


def test_findings_per_kind_are_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "many.vhdx"
    pyvhdx.create(path, 64 * MiB, block_size=MiB)
    bat = vhdx_regions(path)[BAT_GUID][0]
    patch(path, bat, struct.pack("<Q", (9 * MiB) | 2) * 64)  # 64 ZERO entries with offsets
    status, report = run_check(capsys, path)
    assert status == 1
    errs = errors(report)
    assert len(errs) == MAX_FINDINGS_PER_KIND + 1
    assert "48 more entries like this" in errs[-1]["message"]


def test_millions_of_entries_are_checked_quickly(tmp_path: Path) -> None:
    """A 4 TiB disk with 1 MiB blocks: 4 Mi payload entries, all allocated and distinct,
    then all pointing at one block (4 Mi - 1 overlaps, findings capped)."""
    path = tmp_path / "dense.vhdx"
    size = 4 * TiB
    pyvhdx.create(path, size, block_size=MiB)
    data0 = path.stat().st_size
    bat = vhdx_regions(path)[BAT_GUID][0]
    n = size // MiB + (size // MiB - 1) // 4096
    idx = np.arange(n, dtype=np.uint64)
    is_sb = idx % np.uint64(4097) == np.uint64(4096)
    block = idx - idx // np.uint64(4097)
    entries = np.where(
        is_sb, np.uint64(0), (np.uint64(data0) + block * np.uint64(MiB)) | np.uint64(6)
    )
    patch(path, bat, entries.astype("<u8").tobytes())
    with open(path, "r+b") as f:
        f.truncate(data0 + size)  # sparse
    t = time.perf_counter()
    report = check_image(path)
    elapsed = time.perf_counter() - t
    assert report.ok, [str(f) for f in report.errors]
    assert report.allocated_blocks == size // MiB
    assert elapsed < 10, f"check of 4 Mi entries took {elapsed:.1f} s"

    same = np.where(is_sb, np.uint64(0), np.uint64(data0 | 6))
    patch(path, bat, same.astype("<u8").tobytes())
    t = time.perf_counter()
    report = check_image(path)
    elapsed = time.perf_counter() - t
    assert len(report.errors) == MAX_FINDINGS_PER_KIND + 1
    assert f"{size // MiB - 1} in all" in report.errors[-1].message
    assert elapsed < 10, f"check of 4 Mi overlapping entries took {elapsed:.1f} s"


def test_empty_64_tib_vhdx_checks_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.vhdx"
    pyvhdx.create(path, 64 * TiB)
    t = time.perf_counter()
    status, report = run_check(capsys, path)
    assert time.perf_counter() - t < 5
    assert status == 0
    assert report["total-clusters"] == 64 * TiB // report["cluster-size"]
    assert report["allocated-clusters"] == 0


# -- damaged VHD ----------------------------------------------------------------------


def test_bad_vhd_footer_checksums_realworld(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """dfvfs/image.vhd: hand-edited, both footer copies have a wrong checksum."""
    src = require_realworld() / "dfvfs" / "image.vhd"
    path = Path(shutil.copy(src, tmp_path / "image.vhd"))
    size = path.stat().st_size
    assert qemu_check_fails(path, "vpc")  # qemu: "Incorrect header checksum"
    status, report = run_check(capsys, path)
    assert status == 1
    find(report, "error", "footer at end of file", offset=size - 512 + 64, field="Checksum")
    find(report, "error", "footer copy at offset 0", offset=64, field="Checksum")
    assert report["opened"] is True  # lenient readers still open it


def test_bad_vhd_footer_checksum_at_the_end(vhd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = vhd.stat().st_size
    patch(vhd, size - 512 + 100, b"\x01")  # a reserved byte; checksum now wrong
    status, report = run_check(capsys, vhd)
    assert status == 1
    find(report, "error", "footer at end of file", offset=size - 512 + 64, field="Checksum")
    find(report, "info", "footer copy at offset 0")  # readers use the good copy


def vhd_bat(path: Path) -> tuple[int, int, list[int]]:
    """(BAT offset, block size, entries) parsed here from the dynamic header."""
    footer = read(path, 0, 512)
    hdr_off = struct.unpack_from(">Q", footer, 16)[0]
    hdr = read(path, hdr_off, 1024)
    table, _, entries, block = struct.unpack_from(">QIII", hdr, 16)
    raw = read(path, table, 4 * entries)
    return table, block, list(struct.unpack(f">{entries}I", raw))


def test_vhd_bat_entry_beyond_the_end(vhd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, block, entries = vhd_bat(vhd)
    i = next(k for k, e in enumerate(entries) if e != 0xFFFFFFFF)
    patch(vhd, table + 4 * i, struct.pack(">I", vhd.stat().st_size // 512 + 8))
    status, report = run_check(capsys, vhd)
    assert status == 1
    f = find(report, "error", "VHD BAT", offset=table + 4 * i, field=f"BAT[{i}]")
    assert "beyond" in f["message"]
    # The damage is real: a reader fails on that block (pyvhdx loads the VHD BAT lazily).
    with pytest.raises(pyvhdx.PyvhdxError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pyvhdx.open(vhd) as img:
            img.read_at(i * block, 512)


def test_vhd_two_bat_entries_sharing_a_block(vhd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table, _, entries = vhd_bat(vhd)
    used = [k for k, e in enumerate(entries) if e != 0xFFFFFFFF]
    i, j = used[0], used[1]
    patch(vhd, table + 4 * j, struct.pack(">I", entries[i]))
    status, report = run_check(capsys, vhd)
    assert status == 1
    f = find(report, "error", "VHD BAT", offset=table + 4 * j, field=f"BAT[{j}]")
    assert f"block {i} " in f["message"] and "shares its offset" in f["message"]


def test_vhd_bat_entry_over_the_dynamic_header(
    vhd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, _, entries = vhd_bat(vhd)
    i = next(k for k, e in enumerate(entries) if e != 0xFFFFFFFF)
    patch(vhd, table + 4 * i, struct.pack(">I", 1))  # sector 1: the dynamic header
    status, report = run_check(capsys, vhd)
    assert status == 1
    f = find(report, "error", "VHD BAT", offset=table + 4 * i)
    assert "dynamic header" in f["message"]


def test_truncated_fixed_vhd(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data cut short, the footer kept: the file must be CurrentSize + 512 bytes."""
    data = made["vhd-fixed"].read_bytes()
    path = tmp_path / "cut.vhd"
    path.write_bytes(data[: len(data) - 512 - MiB] + data[-512:])
    footer_at = len(data) - 512 - MiB
    status, report = run_check(capsys, path)
    assert status == 1
    f = find(report, "error", "footer at end of file", offset=footer_at + 48, field="CurrentSize")
    assert f"{MiB} short of CurrentSize" in f["message"]
    assert report["opened"] is False


def test_fixed_vhd_cut_inside_its_footer(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = made["vhd-fixed"].read_bytes()
    path = tmp_path / "cut.vhd"
    path.write_bytes(data[:-100])
    status, report = run_check(capsys, "-f", "vhd", path)  # content no longer says VHD
    assert status == 1
    find(report, "error", "footer at end of file", offset=len(data) - 512)


# -- could not run, read-only, real-world ------------------------------------------------


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["check", str(tmp_path / "nope.vhdx")])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert "No such file" in captured.err


def test_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path)]) == 2


def test_human_output_names_repairs(vhdx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patch(vhdx, HEADER_OFFSETS[0] + 1000, b"\xa5")
    status = main(["check", str(vhdx)])
    out = capsys.readouterr().out
    assert status == 1
    assert f"error: header 1 at {HEADER_OFFSETS[0] + 4:#x} (Checksum)" in out
    assert "    repair: rewrite header 1" in out
    assert out.rstrip().splitlines()[-3] == "1 error"


def test_check_an_open_image(made: dict[str, Path]) -> None:
    with pyvhdx.open(made["vhdx-dynamic"]) as img:
        report = check_image(img)
        assert report.ok and report.opened
        assert img.read_at(0, 10) == made["raw"].read_bytes()[:10]  # still usable


REALWORLD_OK: list[dict[str, Any] | None] = [e for e in load_expected() if e["expect"] == "ok"] or [
    None
]
# Hand-edited files whose expected.json facts say the checksums are wrong.
KNOWN_DAMAGE = {
    "dfvfs/image.vhd": {"footer at end of file", "footer copy at offset 0"},
    "dfvfs/image-differential.vhd": {
        "footer at end of file",
        "footer copy at offset 0",
        "dynamic header",
    },
}


@pytest.mark.realworld
@pytest.mark.parametrize(
    "entry", REALWORLD_OK, ids=[e["file"] if e else "missing" for e in REALWORLD_OK]
)
def test_realworld_images(entry: Any, realworld_image: Any) -> None:
    if entry is None:
        require_realworld()
    path = realworld_image(entry)
    before = digest(path)
    report = check_image(path)
    known = KNOWN_DAMAGE.get(entry["file"], set())
    assert {f.structure for f in report.errors} == known, [str(f) for f in report.errors]
    assert all("checksum" in f.message for f in report.errors)
    if known:
        assert "wrong" in entry["facts"].lower()
    if entry.get("log_pending"):
        pending = [f for f in report.warnings if f.message.startswith("log replay pending")]
        assert len(pending) == 1
        assert "2 entries in the active sequence" in pending[0].message
    assert digest(path) == before  # the pending log was replayed in memory only
