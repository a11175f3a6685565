"""``pyvhdx inspect``: every structure as found, on real, generated and damaged images.

The acceptance facts of issue 7: the log entries and active sequence of
DiscUtils/vhdx-log-replay.vhdx (cross-checked with :class:`pyvhdx.log.LogState`),
the parent locator of dissect.hypervisor/differencing.avhdx (values from its
expected.json facts), the bad footer checksum of dfvfs/image.vhd, and data planted
in unreferenced gaps and after the last block, reported with the right offsets.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pytest

import pyvhdx
from pyvhdx.cli import inspect_lines, main
from pyvhdx.constants import VHD_FOOTER_SIZE
from pyvhdx.errors import PyvhdxError
from pyvhdx.inspect import inspect_image as inspect_image_fn
from pyvhdx.inspect import merge_intervals, scan_nonzero
from pyvhdx.source import FileSource
from pyvhdx.vhdx import VHDXFile
from tests.conftest import (
    MiB,
    load_expected,
    make_raw,
    qemu_convert,
    qemu_to_raw,
    sha256_of_file,
)

ENTRIES = load_expected()
BY_FILE = {e["file"]: e for e in ENTRIES}
LOG_REPLAY = "DiscUtils/vhdx-log-replay.vhdx.gz"
DIFFERENCING = "dissect.hypervisor/differencing.avhdx.gz"
BAD_FOOTER = "dfvfs/image.vhd"


def inspect_image(path: str | os.PathLike[str] | BinaryIO, **kw: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pyvhdx.errors.PyvhdxWarning)
        return inspect_image_fn(path, **kw)


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str, status: int = 0) -> dict[str, Any]:
    """The report of ``pyvhdx inspect --json``; ``status`` 1: the image does not open."""
    assert main(["inspect", "--json", *argv]) == status
    out = capsys.readouterr().out
    result: dict[str, Any] = json.loads(out)
    return result


def entry(name: str) -> dict[str, Any]:
    if name not in BY_FILE:
        pytest.skip(f"{name} is not in ../shared/realworld/expected.json")
    return BY_FILE[name]


# -- acceptance: real images ------------------------------------------------------------


@pytest.mark.realworld
def test_log_replay_image_lists_entries_and_active_sequence(
    realworld_image: Any, expected_images: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = realworld_image(entry(LOG_REPLAY))
    report = cli_json(capsys, str(path))
    with pyvhdx.open(path) as img:
        state = cast(VHDXFile, img.handler).log_state
        header_copy = img.handler.header_copy
    assert state is not None and state.active

    log = report["log"]
    assert log["pending"] is True
    assert log["log-guid"] == str(state.log_guid)
    assert [e["log-offset"] for e in log["entries"]] == [e.log_offset for e in state.entries]
    assert [e["sequence-number"] for e in log["entries"]] == [
        e.sequence_number for e in state.entries
    ]
    for got, want in zip(log["entries"], state.entries, strict=True):
        assert got["tail"] == want.tail
        assert got["entry-length"] == want.entry_length
        assert got["descriptor-count"] == want.descriptor_count
        assert got["flushed-file-offset"] == want.flushed_file_offset
        assert got["last-file-offset"] == want.last_file_offset
        assert got["active"] is (want in state.active)
    assert log["active-sequence"] == [e.sequence_number for e in state.active]
    assert log["head"]["sequence-number"] == state.active[-1].sequence_number
    writes = [(w["file-offset"], w["length"], w["kind"]) for w in log["replay"]["writes"]]
    assert writes == state.writes()
    assert all(w["target"] == "BAT region" for w in log["replay"]["writes"])
    assert report["current-header"] == header_copy
    # What the replay changes in the BAT: block 0 becomes present at 4 MiB.
    changes = report["bat"]["changed-by-log-replay"]
    first = changes["entries"][0]
    assert first["block"] == 0
    assert first["old"] == {"state": "not-present", "file-offset": 0}
    assert first["new"]["state"] == "fully-present"
    assert report["open"]["opens"] is True and report["open"]["log-replayed"] is True
    assert report["errors"] == []

    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "active sequence:" in text
    for seq in log["active-sequence"]:
        assert str(seq) in text


@pytest.mark.realworld
def test_differencing_parent_locator_values(
    realworld_image: Any, expected_images: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    e = entry(DIFFERENCING)
    path = realworld_image(e)
    report = cli_json(capsys, str(path), status=1)  # its parent is not there
    facts = e["facts"]
    locator = report["parent-locator"]
    linkage = re.search(r"parent_linkage (\{[0-9a-f-]+\})", facts)
    linkage2 = re.search(r"parent_linkage2 (\{[0-9a-f-]+\})", facts)
    relative = re.search(r'relative_path "(.+?)"', facts)
    assert linkage and linkage2 and relative
    assert locator["parent_linkage"] == linkage.group(1)
    assert locator["parent_linkage2"] == linkage2.group(1)
    # expected.json escapes the backslash for JSON and once more in the facts text.
    assert locator["relative_path"] == relative.group(1).replace("\\\\", "\\")
    assert {"volume_path", "absolute_win32_path"} <= set(locator)
    item = next(i for i in report["metadata"]["items"] if i["name"] == "parent_locator")
    assert item["value"]["locator-type-known"] is True
    assert item["value"]["values"] == locator
    assert report["bat"]["disk-type"] == "differencing"
    page83 = next(i for i in report["metadata"]["items"] if i["name"] == "page83_data")
    assert page83["value"] in facts
    # The parent is absent: inspect still reports everything, and says it cannot open.
    assert report["open"]["opens"] is False
    assert report["errors"] == []


@pytest.mark.realworld
def test_bad_vhd_footer_checksum(
    realworld_image: Any, expected_images: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = realworld_image(entry(BAD_FOOTER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = cli_json(capsys, str(path))
    footers = {f["where"]: f for f in report["footers"]}
    assert set(footers) == {"end", "start"}
    for f in footers.values():
        assert f["checksum-valid"] is False
        assert f["checksum"] != f["computed-checksum"]
        assert f["checksum"] == 0xFFFFF683
    assert report["footer-in-use"] == "end"
    assert footers["end"]["in-use"] is True
    assert footers["end"]["time-stamp-utc"].endswith("Z")
    assert report["geometry"]["cylinders"] == 3
    assert report["geometry"]["capacity"] == 3 * 4 * 17 * 512
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"checksum valid:\s+no\s+no", text)


@pytest.mark.realworld
@pytest.mark.parametrize("e", [pytest.param(e, id=e["file"]) for e in ENTRIES] or [None])
def test_every_realworld_image(
    e: dict[str, Any] | None, realworld_image: Any, expected_images: Any
) -> None:
    assert e is not None
    path = realworld_image(e)
    report = inspect_image(path)
    assert report["errors"] == []
    assert report["format"] == e["format"]
    json.dumps(report)  # JSON-ready as it is
    lines = inspect_lines(report)
    assert lines[0].startswith("image:")
    if e["format"] == "vhdx":
        assert report["file-identifier"]["creator"] == e["creator"]
        assert report["log"]["pending"] is bool(e["log_pending"])
        assert report["bat"]["block-size"] == e["block_size"]
        assert report["bat"]["disk-type"] == e["disk_type"]
    else:
        used = next(f for f in report["footers"] if f.get("in-use"))
        assert used["current-size"] == e["virtual_size"]
        assert used["disk-type"] == e["disk_type"]
        assert [used["disk-geometry"][k] for k in ("cylinders", "heads", "sectors-per-track")] == (
            e["chs"]
        )
    assert "ranges" in report["unreferenced"]
    assert report["open"]["opens"] is (e["expect"] == "ok")


# -- planted data ---------------------------------------------------------------------


def _unreferenced(report: dict[str, Any]) -> list[dict[str, Any]]:
    ranges: list[dict[str, Any]] = report["unreferenced"]["ranges"]
    return ranges


def test_planted_data_in_vhdx_gap_and_after_last_block(tmp_path: Path) -> None:
    """A dynamic VHDX made by pyvhdx, with bytes planted outside every structure."""
    path = tmp_path / "planted.vhdx"
    pyvhdx.create(path, 64 * MiB, block_size=1 * MiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, b"A" * 4096)
    gap_start = os.path.getsize(path)
    assert gap_start % MiB == 0
    secret_at = gap_start + MiB + 100
    with open(path, "r+b") as f:  # 3 MiB the image does not reference
        f.truncate(gap_start + 3 * MiB)
        f.seek(secret_at)
        f.write(b"SECRET")
    with pyvhdx.open(path, "r+") as img:  # the next block goes after the planted space
        img.write_at(5 * MiB, b"B" * 4096)
    last_block_end = os.path.getsize(path)
    assert last_block_end == gap_start + 4 * MiB
    hidden_at = last_block_end + 1000
    with open(path, "ab") as f:
        f.write(bytes(1000) + b"HIDDEN" + bytes(2000))

    report = inspect_image(path)
    assert report["errors"] == []
    nonzero = [r for r in _unreferenced(report) if r["nonzero"]]
    assert len(nonzero) == 2, _unreferenced(report)
    gap, tail = nonzero
    assert gap["offset"] == gap_start
    assert gap["length"] == 3 * MiB
    assert gap["where"] == "between structures"
    assert gap["first-nonzero-offset"] == secret_at
    assert gap["nonzero-bytes"] == len(b"SECRET".replace(b"\0", b""))
    assert gap["content"] == "data"
    assert tail["offset"] == last_block_end
    assert tail["length"] == 3006
    assert tail["where"] == "after the last structure"
    assert tail["first-nonzero-offset"] == hidden_at
    assert tail["nonzero-bytes"] == 6
    assert report["unreferenced"]["nonzero-bytes"] == 12
    # The planted bytes are not part of the disk.
    with pyvhdx.open(path) as img:
        assert img.read_at(0, 4096) == b"A" * 4096
        assert img.read_at(5 * MiB, 4096) == b"B" * 4096

    # --no-scan lists the same ranges without reading them.
    quick = inspect_image(path, scan_unreferenced=False)
    assert [(r["offset"], r["length"]) for r in _unreferenced(quick)] == [
        (r["offset"], r["length"]) for r in _unreferenced(report)
    ]
    assert "nonzero" not in _unreferenced(quick)[0]


def _plant(path: Path, spots: dict[int, bytes]) -> None:
    with open(path, "r+b") as f:
        for at, data in spots.items():
            f.seek(at)
            f.write(data)


def _found(report: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """The non-zero unreferenced ranges: first non-zero offset -> (where, non-zero bytes)."""
    return {
        r["first-nonzero-offset"]: (r["where"], r["nonzero-bytes"])
        for r in _unreferenced(report)
        if r["nonzero"]
    }


_SECRET = bytes(range(1, 256)) * 2 + bytes(range(1, 91))  # 600 non-zero bytes


def test_data_hidden_in_vhdx_reserved_space(tmp_path: Path) -> None:
    """Issue 19: 600 bytes at 0x60000 of a fresh VHDX (reserved space in the header
    section) were not found (``unreferenced bytes: 0``); nor was anything else planted
    in the unused room of the live structures."""
    path = tmp_path / "fresh.vhdx"
    pyvhdx.create(path, 64 * MiB, block_size=MiB)
    clean = inspect_image(path)
    assert clean["errors"] == [] and _found(clean) == {}
    meta = clean["metadata"]
    last_item = max(i["file-offset"] + i["length"] for i in meta["items"])
    bat = clean["bat"]
    spots = {
        0x60000: _SECRET,  # the repro: reserved space of the header section
        0x400: b"ID",  # after the file identifier's creator
        0x10000 + 4096 + 7: b"H1",  # after header 1 (a 4 KiB structure in 64 KiB)
        0x30000 + 16 + 32 * 2 + 3: b"RT",  # region table 1 after its two entries
        meta["offset"] + 32 + 32 * meta["entry-count"]: b"ME",  # unused metadata entries
        last_item + 5: b"MI",  # the metadata region after the items
        bat["offset"] + 8 * bat["entry-count"] + 1: b"BT",  # the BAT region after the entries
    }
    _plant(path, spots)
    report = inspect_image(path)
    found = _found(report)
    assert set(found) == set(spots), report["unreferenced"]["ranges"]
    assert found[0x60000] == ("header section (reserved)", 600)
    assert [found[at][0] for at in sorted(spots)[:4]] == [
        "file identifier (reserved)",
        "header 1 (reserved)",
        "region table 1 (unused)",
        "header section (reserved)",
    ]
    assert found[last_item + 5][0] == "Metadata region (unused)"
    assert found[bat["offset"] + 8 * bat["entry-count"] + 1][0] == "BAT region (unused)"
    assert report["unreferenced"]["nonzero-bytes"] == 600 + 2 * (len(spots) - 1)
    assert report["open"]["opens"] is True  # none of it is in a live structure


def test_clean_qemu_vhdx_has_no_hidden_data(qemu_vhdx: tuple[Path, Path]) -> None:
    report = inspect_image(qemu_vhdx[1])
    assert _found(report) == {}
    unreferenced = _unreferenced(report)
    assert unreferenced and all(r["content"] == "zeros" for r in unreferenced)
    assert [r["where"] for r in unreferenced][:4] == [
        "file identifier (reserved)",
        "header 1 (reserved)",
        "header 2 (reserved)",
        "region table 1 (unused)",
    ]


def test_data_hidden_in_vhd_padding(tmp_path: Path) -> None:
    """A VHD's BAT padding (expected 0xFF) and a parent locator's unused data space."""
    parent = tmp_path / "p.vhd"
    pyvhdx.create(parent, 8 * MiB)
    child = tmp_path / "c.vhd"
    pyvhdx.create(child, parent=parent)
    clean = inspect_image(child)
    assert clean["errors"] == [] and _found(clean) == {}
    pad = next(r for r in _unreferenced(clean) if r["where"] == "BAT (padding)")
    assert pad["fill"] == 0xFF and pad["content"] == "every byte 0xff"
    bat_end = clean["bat"]["offset"] + 4 * clean["bat"]["entry-count"]
    locator = next(x for x in clean["parent-locators"] if x["platform-code"] == "W2ku")
    in_space = locator["platform-data-offset"] + locator["platform-data-length"] + 10
    _plant(child, {bat_end + 100: b"\0\0\0", in_space: b"LOC"})
    report = inspect_image(child)
    assert _found(report) == {
        bat_end + 100: ("BAT (padding)", 3),  # three zero bytes where 0xFF should be
        in_space: (f"parent locator {locator['index']} (unused data space)", 3),
    }


def test_open_refusal_is_in_the_report(qemu_vhdx: tuple[Path, Path]) -> None:
    """What pyvhdx.open says of an image it refuses: the error and where it is."""
    _, path = qemu_vhdx
    with open(path, "r+b") as f:  # both region tables damaged
        for off in (192 * 1024, 256 * 1024):
            f.seek(off + 20)
            f.write(b"\x55" * 4)
    with pytest.raises(PyvhdxError) as refused:
        pyvhdx.open(path)
    probe = inspect_image(path)["open"]
    assert probe["opens"] is False
    assert probe["error"] == str(refused.value)
    assert probe["error-type"] == type(refused.value).__name__
    assert probe["error-structure"] == refused.value.structure == "region table"


def _move_vhd_block(path: Path, block: int) -> tuple[int, int, int]:
    """Move a VHD block to the end (old copy left behind); return (old, new, footer) offsets."""
    data = bytearray(path.read_bytes())
    footer = bytes(data[-VHD_FOOTER_SIZE:])
    table = int.from_bytes(data[512 + 16 : 512 + 24], "big")
    block_size = int.from_bytes(data[512 + 32 : 512 + 36], "big")
    extent = 512 + block_size  # bitmap + data
    sector = int.from_bytes(data[table + 4 * block : table + 4 * block + 4], "big")
    old = sector * 512
    end = len(data) - VHD_FOOTER_SIZE
    moved = bytes(data[old : old + extent])
    del data[end:]
    new = end
    data += moved
    data[table + 4 * block : table + 4 * block + 4] = (new // 512).to_bytes(4, "big")
    planted_tail = len(data)
    data += bytes(512) + b"TAILDATA" + bytes(504)  # after the last block, before the footer
    data += footer
    path.write_bytes(bytes(data))
    return old, new, planted_tail


def test_left_over_vhd_block_and_data_before_footer(qemu_img: str, tmp_path: Path) -> None:
    """qemu-made dynamic VHD whose block moved away: the old copy is unreferenced data."""
    raw = make_raw(tmp_path / "d.raw", 8 * MiB, seed=11, pattern="random")
    path = qemu_convert(raw, tmp_path / "d.vhd", "vpc", {"subformat": "dynamic"})
    before = inspect_image(path)
    assert [r for r in _unreferenced(before) if r["nonzero"]] == []
    qemu_before = sha256_of_file(qemu_to_raw(path, tmp_path / "before.raw", "vpc"))
    old, new, tail_at = _move_vhd_block(path, 1)

    report = inspect_image(path)
    assert report["errors"] == []
    nonzero = [r for r in _unreferenced(report) if r["nonzero"]]
    assert [r["offset"] for r in nonzero] == [old, tail_at]
    left_over, tail = nonzero
    assert left_over["length"] == 512 + 2 * MiB
    assert left_over["where"] == "between structures"
    assert tail["first-nonzero-offset"] == tail_at + 512
    assert tail["nonzero-bytes"] == len(b"TAILDATA")
    assert tail["where"] == "after the last block, before the footer"
    blocks = report["bat"]
    assert blocks["last-allocated-block"]["block"] == 3
    last = blocks["file-ranges"][-1]
    assert last["offset"] < new and last["offset"] + last["length"] == tail_at
    # The content is unchanged by the move (as qemu reads the file).
    assert sha256_of_file(qemu_to_raw(path, tmp_path / "after.raw", "vpc")) == qemu_before
    with pyvhdx.open(path) as img:
        assert img.read_at(2 * MiB, 64) == raw.read_bytes()[2 * MiB : 2 * MiB + 64]


# -- damaged and truncated images -------------------------------------------------------


@pytest.fixture
def qemu_vhdx(qemu_img: str, tmp_path: Path) -> tuple[Path, Path]:
    raw = make_raw(tmp_path / "q.raw", 12 * MiB, seed=5, pattern="half", run_size=MiB)
    path = qemu_convert(
        raw, tmp_path / "q.vhdx", "vhdx", {"subformat": "dynamic", "block_size": "1M"}
    )
    return raw, path


def test_damaged_header_copy(qemu_vhdx: tuple[Path, Path]) -> None:
    _, path = qemu_vhdx
    with open(path, "r+b") as f:
        f.seek(64 * 1024 + 100)
        f.write(b"\xff" * 8)
    report = inspect_image(path)
    h1, h2 = report["headers"]
    assert h1["valid"] is False and h1["checksum-valid"] is False
    assert "checksum" in h1["error"]
    assert h2["valid"] is True and h2["current"] is True
    assert report["current-header"] == 2
    assert report["open"]["opens"] is True
    assert "header 1" in report["open"]["failed-copies"]


def test_both_region_tables_damaged_still_reports_headers(qemu_vhdx: tuple[Path, Path]) -> None:
    _, path = qemu_vhdx
    with open(path, "r+b") as f:
        for off in (192 * 1024, 256 * 1024):
            f.seek(off + 20)
            f.write(b"\x55" * 4)
    report = inspect_image(path)
    assert report["open"]["opens"] is False
    assert [t["valid"] for t in report["region-tables"]] == [False, False]
    assert report["headers"][0]["valid"] and report["headers"][1]["valid"]
    sections = {e["section"] for e in report["errors"]}
    assert "region tables" in sections
    assert "error" in report["unreferenced"]


def test_truncated_vhdx_lists_blocks_past_the_end(qemu_vhdx: tuple[Path, Path]) -> None:
    _, path = qemu_vhdx
    full = inspect_image(path)
    ranges = full["bat"]["file-ranges"]
    end = ranges[-1]["offset"] + ranges[-1]["length"]
    cut = end - 2 * MiB
    os.truncate(path, cut)
    report = inspect_image(path)
    lost = report["bat"]["beyond-end-of-file"]
    assert lost["count"] == 2
    assert lost["missing-bytes"] == 2 * MiB
    assert {x["file-offset"] for x in lost["examples"]} == {cut, cut + MiB}
    assert report["open"]["opens"] is False


def test_raw_image(tmp_path: Path) -> None:
    path = make_raw(tmp_path / "r.img", MiB, seed=1)
    report = inspect_image(path)
    assert report["format"] == "raw"
    assert "note" in report


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "missing.vhdx")]) == 2
    assert "missing.vhdx" in capsys.readouterr().err
    assert main(["inspect"]) == 2


# -- robustness: damaged input gives a report or a PyvhdxError, nothing else -------------


def _mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    hot = [0, 64 * 1024, 128 * 1024, 192 * 1024, 256 * 1024, 1 * MiB, 2 * MiB, 3 * MiB]
    for i in range(count):
        b = bytearray(data)
        if i % 5 == 0:
            out.append(bytes(b[: int(rng.integers(0, len(b)))]))
            continue
        for _ in range(int(rng.integers(1, 16))):
            base = hot[int(rng.integers(0, len(hot)))] if rng.random() < 0.7 else 0
            pos = min(len(b) - 1, base + int(rng.integers(0, 64 * 1024)))
            b[pos] = int(rng.integers(0, 256))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("fmt", ["vhdx", "vpc"])
def test_mutated_images_never_crash(qemu_img: str, tmp_path: Path, fmt: str) -> None:
    raw = make_raw(tmp_path / "m.raw", 4 * MiB, seed=2, pattern="half", run_size=MiB)
    options = {"subformat": "dynamic", "block_size": "1M"} if fmt == "vhdx" else {}
    image = qemu_convert(raw, tmp_path / f"m.{fmt}", fmt, options)
    data = image.read_bytes()
    for i, mutant in enumerate(_mutants(data, 60, seed=len(fmt))):
        p = tmp_path / f"mutant{i}"
        p.write_bytes(mutant)
        try:
            report = inspect_image(p)
        except PyvhdxError:
            continue
        json.dumps(report)
        inspect_lines(report)


# -- helpers ----------------------------------------------------------------------------------


def test_merge_intervals() -> None:
    s = np.array([10, 0, 5, 30, 20], dtype=np.int64)
    e = np.array([15, 5, 8, 40, 30], dtype=np.int64)
    ms, me = merge_intervals(s, e)
    assert ms.tolist() == [0, 10, 20]
    assert me.tolist() == [8, 15, 40]


def test_scan_nonzero_skips_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(40 * MiB + 7)
        f.write(b"\x01\x02")
    src = FileSource(path)
    try:
        assert scan_nonzero(src, 0, 64 * MiB) == (2, 40 * MiB + 7, None)
        assert scan_nonzero(src, 0, 40 * MiB) == (0, None, 0)
        assert scan_nonzero(src, 40 * MiB + 7, 40 * MiB + 8) == (1, 40 * MiB + 7, 1)
    finally:
        src.close()


def test_file_object_input(qemu_vhdx: tuple[Path, Path]) -> None:
    _, path = qemu_vhdx
    by_path = inspect_image(path)
    by_object = inspect_image(io.BytesIO(path.read_bytes()))
    assert by_object["filename"] == "<file object>"
    assert by_object["open"]["opens"] is True
    for key in ("headers", "region-tables", "metadata", "bat", "unreferenced"):
        assert by_object[key] == by_path[key]


def test_long_tables_are_cut_in_human_output() -> None:
    from pyvhdx.cli import table_lines, transposed_lines

    rows = [{"offset": i * 4096, "length": 4096, "nonzero": False} for i in range(100)]
    lines = table_lines(rows)
    assert lines[0].split() == ["offset", "length", "nonzero"]
    assert lines[1].split() == ["0x0", "4", "KiB", "no"]
    assert lines[-1] == "... 68 more (see --json)"
    side = transposed_lines([{"copy": 1, "valid": True}, {"copy": 2, "valid": False}])
    assert side[0].split() == ["copy", "1", "copy", "2"]
    assert side[1].split() == ["valid:", "yes", "no"]
