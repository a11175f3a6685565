"""Inputs the fuzzing campaign (``tools/fuzz.py``) found, one test per bug fixed.

Each input is built from a seed of ``tests/fuzzlib.py`` and a mutation given
by field names (the checksums of the structures changed are recomputed, as
the fuzzer does), so no binary blob is stored. Each test checks the operation
that failed and then runs the whole fuzz harness on the input: nothing but a
:class:`pyvhdx.errors.PyvhdxError` may escape any operation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.check import check_image
from pyvhdx.inspect import inspect_image
from tests.fuzzlib import MiB, Seed, field_ops, mutated_case, run_case, span_ops


def harness_is_clean(seed: Seed, target: Path, tmp_path: Path) -> None:
    """Every operation of the fuzz harness ends in a result or a pyvhdx error."""
    result = run_case(target.parent, seed, pristine=tmp_path / "pristine" / seed.target)
    assert result.status == "ok", [e["traceback"] for e in result.escapes]


def case(tmp_path: Path, seed: str, changes: dict[str, Any], **kw: Any) -> tuple[Seed, Path]:
    return mutated_case(tmp_path, seed, lambda sf: field_ops(sf, changes), **kw)


def test_check_logical_sector_size_zero(tmp_path: Path) -> None:
    """check.py: a logical sector size of 0 divided the virtual size (ZeroDivisionError)."""
    seed, target = case(tmp_path, "vhdx-dynamic-512", {"logical_sector_size": 0})
    report = check_image(target)
    assert not report.ok
    assert any("sector size 0" in f.message for f in report.errors)
    json.dumps(report.to_dict())
    harness_is_clean(seed, target, tmp_path)


@pytest.mark.parametrize(
    ("seed_name", "field"),
    [
        ("vhdx-dynamic-512", "virtual_disk_size"),  # inspect BAT allocation arithmetic
        ("vhd-fixed", "footer.current_size"),  # inspect structure extents
    ],
)
def test_inspect_virtual_size_beyond_int64(tmp_path: Path, seed_name: str, field: str) -> None:
    """inspect.py: a u64 size above 2**63 overflowed int64 arrays (OverflowError)."""
    seed, target = case(tmp_path, seed_name, {field: 0xFFFFFFFFFFFFFFFE})
    report = inspect_image(target)
    json.dumps(report)
    assert report["open"]["opens"] is False
    harness_is_clean(seed, target, tmp_path)


@pytest.mark.parametrize(
    ("seed_name", "field"),
    [
        ("vhd-dynamic", "dynamic_header.table_offset"),
        ("vhdx-dynamic-512", "region_table1.entry0.file_offset"),
    ],
)
def test_inspect_structure_offset_beyond_int64(tmp_path: Path, seed_name: str, field: str) -> None:
    """inspect.py: a u64 structure offset above 2**63 overflowed the int64 array of
    referenced extents (OverflowError in _all_refs).
    """
    seed, target = case(tmp_path, seed_name, {field: 0xFFFFFFFFFFFFFE00})
    report = inspect_image(target)
    json.dumps(report)
    assert report["unreferenced"]["file-size"] == target.stat().st_size
    harness_is_clean(seed, target, tmp_path)


def test_inspect_parent_locator_odd_value_length(tmp_path: Path) -> None:
    """inspect.py: a locator value of odd length failed to decode (UnicodeDecodeError)."""
    seed, target = case(
        tmp_path, "vhdx-diff-partial-512", {"parent_locator.entry1(relative_path).value_length": 5}
    )
    report = inspect_image(target)
    assert "key or value lies outside the item or has an odd length" in json.dumps(report)
    assert report["open"]["error-type"] == "InvalidImageError"
    harness_is_clean(seed, target, tmp_path)


def test_locator_path_with_lone_surrogate(tmp_path: Path) -> None:
    """chain.py: a locator path holding an unpaired UTF-16 surrogate could not be
    encoded for the file system (UnicodeEncodeError from Path.resolve); the
    candidate is now skipped and the next locator finds the parent.
    """
    text = "\ud800\\child-parent.vhdx"  # as long as the seed's ".\\child-parent.vhdx"
    raw = text.encode("utf-16-le", "surrogatepass")
    seed, target = mutated_case(
        tmp_path,
        "vhdx-diff-partial-512",
        lambda sf: span_ops(sf, "locator value relative_path", raw),
    )
    with pyvhdx.open(target) as img, pyvhdx.open(tmp_path / "pristine" / seed.target) as ref:
        assert img.parent is not None
        assert img.read_at(0, img.virtual_size) == ref.read_at(0, ref.virtual_size)
    harness_is_clean(seed, target, tmp_path)


def test_vhd_parent_name_longer_than_a_file_name(tmp_path: Path) -> None:
    """image.py: a parent name of 256 characters (longer than NAME_MAX) made
    ``Path.is_file`` raise OSError (ENAMETOOLONG) out of the parent lookup; it is
    now a reason in the ParentError, and ``allow_missing_parent`` opens.
    """
    name = ("a" * 256).encode("utf-16-be")

    def ops(sf: Any) -> list[dict[str, Any]]:
        codes = {f"dynamic_header.locator{k}.platform_code": bytes(4) for k in range(8)}
        return span_ops(sf, "parent unicode name", name, fix=False) + field_ops(sf, codes)

    seed, target = mutated_case(tmp_path, "vhd-diff", ops)
    with pytest.raises(pyvhdx.ParentError, match="too long"):
        pyvhdx.open(target)
    with pyvhdx.open(target, allow_missing_parent=True) as img:
        assert img.missing_parent
    harness_is_clean(seed, target, tmp_path)


def test_check_region_offset_beyond_off_t(tmp_path: Path) -> None:
    """source.py: check read the metadata table at a region offset of 2**63, which
    no pread accepts (OverflowError); reads there now find the end of the file.
    """
    seed, target = case(tmp_path, "vhdx-dynamic-512", {"region_table1.entry1.file_offset": 1 << 63})
    report = check_image(target)
    assert not report.ok and not report.opened
    json.dumps(report.to_dict())
    harness_is_clean(seed, target, tmp_path)


def test_check_vhd_current_size_beyond_int64(tmp_path: Path) -> None:
    """check.py: a dynamic VHD's CurrentSize above 2**63 overflowed the int64 block
    extents of the BAT check (OverflowError in _VHDBat.check_chunk).
    """
    seed, target = case(
        tmp_path,
        "vhd-dynamic",
        {"footer.current_size": 0x8000000000305800, "footer_copy.current_size": 0x8000000000305800},
    )
    report = check_image(target)
    assert not report.ok
    json.dumps(report.to_dict())
    harness_is_clean(seed, target, tmp_path)


@pytest.mark.parametrize("state", [6, 7])
def test_vhdx_block_just_below_off_t_limit(tmp_path: Path, state: int) -> None:
    """bat.py: a payload block at 2**63 - 1 MiB made ``offset + length`` overflow
    int64, so it passed as inside the file; the image opened and reads failed with
    OSError (EINVAL from pread). Such a block is now outside any file.
    """
    seed, target = case(tmp_path, "vhdx-dynamic-512", {"bat[0](payload0)": (1 << 63) - MiB | state})
    variants: tuple[dict[str, Any], ...] = ({}, {"salvage": True})
    for kw in variants:
        with pytest.raises(pyvhdx.InvalidImageError, match="outside the data area"):
            pyvhdx.open(target, **kw)
    # check.py had the same overflow: the block passed its end-of-file test
    report = check_image(target)
    assert any("ends beyond the end of the" in f.message for f in report.errors)
    harness_is_clean(seed, target, tmp_path)


def test_log_extending_the_file_far_does_not_size_the_work(tmp_path: Path) -> None:
    """vhdx.py, inspect.py, check.py: a log whose LastFileOffset is 2**62 extends the
    replayed file with zeros that far; a BAT region of 4 GiB placed out there and a
    64 TiB disk then passed every check, and info, salvage, extents and inspect
    walked 64 Mi zero entries of a 6 MiB file (28 s: a hang under the campaign's
    10 s bound). Regions must now lie within the bytes the file and its log hold.
    """

    def ops(sf: Any) -> list[dict[str, Any]]:
        changes: dict[str, int | bytes] = {
            f.name: 1 << 62 for f in sf.fields if f.name.endswith(".last_file_offset")
        }
        changes["region_table1.entry0.length"] = 0xFFF00000  # the BAT region: 4 GiB - 1 MiB
        changes["region_table1.entry0.file_offset"] = 1 << 61
        changes["virtual_disk_size"] = 64 << 40
        return field_ops(sf, changes)

    seed, target = mutated_case(tmp_path, "vhdx-log-synthetic", ops)
    with pytest.raises(pyvhdx.InvalidImageError, match="bytes of the file"):
        pyvhdx.open(target)
    report = check_image(target)
    assert any("ends beyond the end of the" in f.message for f in report.errors)
    inspect_image(target)
    result = run_case(target.parent, seed, time_limit=10.0)
    assert result.status == "ok" and result.seconds < 5


def _bat(sf: Any, i: int) -> int:
    f = next(f for f in sf.fields if f.name == f"bat[{i}]")
    return int.from_bytes(sf.data[f.offset : f.offset + f.width], "big")


@pytest.mark.parametrize(
    ("seed_name", "block", "mate", "what"),
    [
        ("vhd-dynamic", 0, 2, "block 0"),  # two blocks at one offset
        ("vhd-diff", 2, 1, "block 1"),  # an unallocated entry pointed at another block
        ("vhd-dynamic", 0, None, "dynamic header"),  # a block over the dynamic header
    ],
)
def test_vhd_write_into_shared_file_space_is_refused(
    tmp_path: Path, seed_name: str, block: int, mate: int | None, what: str
) -> None:
    """vhd.py (found by ``tools/fuzz.py --write``): a write into a block that shares
    file space with another block (or the metadata) changed both: the bytes written
    did not read back. Now the first write refuses, naming the BAT entry, and the
    file stays as it was."""

    def ops(sf: Any) -> list[dict[str, Any]]:
        value = _bat(sf, mate) if mate is not None else 1  # sector 1: the dynamic header
        return field_ops(sf, {f"bat[{block}]": value})

    seed, target = mutated_case(tmp_path, seed_name, ops)
    before = target.read_bytes()
    with pyvhdx.open(target, "r+") as img:
        bs = img.block_size
        assert bs is not None
        with pytest.raises(pyvhdx.InvalidImageError, match=what) as err:
            img.write_at(block * bs + 4096, b"\x5a" * 4096)
        assert err.value.structure == "VHD BAT"
        assert err.value.field is not None and err.value.field.startswith("BAT[")
    assert target.read_bytes() == before
    with pyvhdx.open(target) as img:  # reading stays possible
        img.read_at(block * bs, 4096)
    assert not check_image(target).ok
    result = run_case(target.parent, seed, pristine=tmp_path / "pristine" / seed.target, write=True)
    assert result.status == "ok", [e["traceback"] for e in result.escapes]


def test_vhdx_write_into_space_shared_across_bat_chunks_is_refused(tmp_path: Path) -> None:
    """vhdx.py: reads check block overlaps within each decoded BAT chunk (4096
    blocks), so two blocks in different chunks at one file offset read fine; a
    write into either would change both. The first write now checks the whole
    table and refuses, naming the BAT entry; the file stays as it was."""
    path = tmp_path / "shared.vhdx"
    far = 5000  # in the second chunk of 4096 blocks
    pyvhdx.create(path, (far + 8) * MiB, block_size=MiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, b"\x11" * 4096)
        img.write_at(far * MiB, b"\x22" * 4096)
        h: Any = img.handler
        bat, ratio = h.bat_offset, h.chunk_ratio
    with path.open("r+b") as f:
        f.seek(bat)
        entry0 = f.read(8)
        f.seek(bat + 8 * (far + far // ratio))
        f.write(entry0)  # block `far` now points at block 0's data
    before = path.read_bytes()
    with pyvhdx.open(path) as img:  # each chunk alone is consistent: reads work
        assert img.read_at(far * MiB, 4096) == b"\x11" * 4096
    with pyvhdx.open(path, "r+") as img:
        with pytest.raises(pyvhdx.InvalidImageError, match="shares file space") as err:
            img.write_at(far * MiB, b"\x33" * 4096)
        assert err.value.structure == "BAT"
        assert err.value.offset == bat + 8 * (far + far // ratio)
    assert path.read_bytes() == before
    assert not check_image(path).ok


def _r_plus_refused(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    """An r+ open of the mutated vhdx-dynamic-512 seed raises an error naming
    ``field`` and leaves the file as it was; a read-only open still reads."""
    seed, target = case(tmp_path, "vhdx-dynamic-512", changes)
    before = target.read_bytes()
    with pyvhdx.open(target) as img:
        img.read_at(0, 4096)
    with pytest.raises(pyvhdx.InvalidImageError, match=field) as err:
        pyvhdx.open(target, "r+")
    assert err.value.field == field
    assert target.read_bytes() == before
    result = run_case(target.parent, seed, pristine=tmp_path / "pristine" / seed.target, write=True)
    assert result.status == "ok", [e["traceback"] for e in result.escapes]


@pytest.mark.parametrize("sequence", [(1 << 64) - 2, (1 << 64) - (1 << 32) + 1])
def test_vhdx_header_sequence_number_near_u64_max(tmp_path: Path, sequence: int) -> None:
    """vhdx.py (found by ``tools/fuzz.py --write``): a header SequenceNumber near
    2**64 overflowed the u64 when a write updated the headers (construct's
    FormatFieldError). An r+ open now refuses it, naming the field, before
    writing anything; reading is unaffected."""
    _r_plus_refused(tmp_path, {"header2.sequence_number": sequence}, "SequenceNumber")


@pytest.mark.parametrize(
    ("seed_name", "changes", "what"),
    [
        # a partially present block over the BAT region, its sector bitmap present
        (
            "mixed-vhdx-on-vhd",
            {"bat[1](payload1)": 0x300007, "bat[4096](sb0)": 0x200006},
            "the BAT",
        ),
        # a partially present block over the log
        ("vhdx-chain3", {"bat[0](payload0)": 0x100007, "bat[4096](sb0)": 0x200006}, "the log"),
    ],
)
def test_vhdx_partial_block_over_metadata_write_refused(
    tmp_path: Path, seed_name: str, changes: dict[str, int], what: str
) -> None:
    """vhdx.py (found by ``tools/fuzz.py --write``): a write into a partially
    present block of a differencing VHDX that lies over the BAT or the log
    (the read-time overlap check covers fully present blocks only) overwrote
    that metadata, and the written bytes did not read back. The first write now
    refuses, naming the BAT entry, and the file stays as it was."""
    seed, target = case(tmp_path, seed_name, changes)
    before = target.read_bytes()
    with pyvhdx.open(target, "r+") as img:
        bs = img.block_size
        assert bs is not None
        block = 1 if "payload1" in next(iter(changes)) else 0
        with pytest.raises(pyvhdx.InvalidImageError, match=what) as err:
            img.write_at(block * bs, b"\x5a" * 512)
        assert err.value.structure == "BAT"
    assert target.read_bytes() == before
    result = run_case(target.parent, seed, pristine=tmp_path / "pristine" / seed.target, write=True)
    assert result.status == "ok", [e["traceback"] for e in result.escapes]


def test_vhdx_log_length_zero_refuses_writes(tmp_path: Path) -> None:
    """vhdx.py (found by ``tools/fuzz.py --write``): with header LogLength 0 a
    write's BAT change went into an empty log entry and never reached the BAT:
    the data was lost on reopening. An r+ open now refuses, naming the field,
    before writing anything; reading is unaffected."""
    _r_plus_refused(tmp_path, {"header2.log_length": 0}, "LogLength")


@pytest.mark.parametrize(
    ("seed_name", "changes"),
    [
        # a fully present block at 2**63 - 2 MiB: pwrite EFBIG, ftruncate OverflowError
        ("vhdx-diff-partial-4096", {"bat[0](payload0)": 0x7FFFFFFFFFE00006}),
        ("vhdx-dynamic-512", {"bat[0](payload0)": 0x0000010000000006}),  # 1 TiB, past EOF
        ("vhd-dynamic", {"bat[0]": 0x00FFFFFF}),  # sector 2**24 - 1, past EOF
    ],
)
def test_write_into_block_past_end_of_file_refused(
    tmp_path: Path, seed_name: str, changes: dict[str, int]
) -> None:
    """vhdx.py, vhd.py (found by ``tools/fuzz.py --write``): a present block whose
    data lies past the end of the file reads as zeros, but a write into it grew
    the file to that offset or failed with OSError/OverflowError. The first
    write now refuses, naming the BAT entry; the file stays as it was."""
    seed, target = case(tmp_path, seed_name, changes)
    before = target.read_bytes()
    # refused at the first write, or already at the open (a non-differencing VHDX
    # counts such a block as truncated data: TruncatedImageError)
    with (
        pytest.raises(pyvhdx.InvalidImageError, match=r"past the end|file ends at") as err,
        pyvhdx.open(target, "r+") as img,
    ):
        img.write_at(0, b"\x5a" * 512)
    assert err.value.structure in ("BAT", "VHD BAT")
    assert target.read_bytes() == before
    result = run_case(target.parent, seed, pristine=tmp_path / "pristine" / seed.target, write=True)
    assert result.status == "ok", [e["traceback"] for e in result.escapes]


def test_inspect_vhd_block_size_zero_behind_a_bad_cookie(tmp_path: Path) -> None:
    """inspect.py: a dynamic header whose cookie is damaged is not checked further by
    the layout model, and a block size of 0 then divided the disk size
    (ZeroDivisionError; found by test_fuzz_vhd)."""
    changes = {"dynamic_header.cookie": b"notcxspr", "dynamic_header.block_size": 0}
    seed, target = case(tmp_path, "vhd-dynamic", changes)
    report = inspect_image(target)
    assert "block size 0" in json.dumps(report)
    harness_is_clean(seed, target, tmp_path)
