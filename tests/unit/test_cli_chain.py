"""``pyvhdx create --parent``, ``pyvhdx merge`` and ``pyvhdx map`` of a chain: exit
codes (0 success, 1 image problem, 2 usage), one-line errors, human and JSON
output (DESIGN.md "Command line")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.cli import main

KiB = 1 << 10
MiB = 1 << 20


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=["vhdx", "vhd"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A 6 MiB base with data in its first 3 MiB."""
    path = tmp_path / f"base.{request.param}"
    pyvhdx.create(path, 6 * MiB, block_size=MiB if request.param == "vhdx" else 512 * KiB)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, b"B" * (3 * MiB))
    return path


def child_name(base: Path) -> Path:
    return base.with_name("child.a" + base.suffix[1:])


# -- create --parent --------------------------------------------------------------------


def test_create_child(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    child = child_name(base)
    before = sha(base)
    status, out, err = run(capsys, "create", "--parent", str(base), str(child))
    assert (status, err) == (0, "")
    rows = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith(" "))
    assert rows["disk type"].strip() == "differencing"
    assert rows["parent"].strip() == str(base)
    assert rows["virtual size"].strip() == "6 MiB (6291456 bytes)"
    assert rows["block size"].strip() == "2 MiB (2097152 bytes)"
    assert sha(base) == before
    with pyvhdx.open(child) as img:
        assert img.parent is not None and img.read_at(0, 6 * MiB) == b"B" * (3 * MiB) + bytes(
            3 * MiB
        )


def test_create_child_json_and_explicit_size(
    capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    child = child_name(base)
    status, out, _ = run(capsys, "create", "--json", "--parent", str(base), str(child), "6M")
    assert status == 0
    data = json.loads(out)
    assert data["disk-type"] == "differencing"
    assert data["virtual-size"] == 6 * MiB
    assert data["backing-filename"] == str(base)
    assert "backing-image" in data


def test_create_child_format_from_the_parent(
    capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    child = base.with_name("checkpoint.img")  # the name does not say: the parent's format
    assert run(capsys, "create", "--parent", str(base), str(child))[0] == 0
    with pyvhdx.open(child) as img:
        assert img.format.value == base.suffix[1:]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "fixed"], "--type cannot be used with --parent"),
        (["--azure"], "--azure cannot be used with --parent"),
        (["--preallocate"], "--preallocate cannot be used with --parent"),
    ],
)
def test_create_child_usage_errors(
    capsys: pytest.CaptureFixture[str], base: Path, extra: list[str], message: str
) -> None:
    child = child_name(base)
    status, out, err = run(capsys, "create", *extra, "--parent", str(base), str(child))
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and message in err
    assert not child.exists()


def test_create_without_size_or_parent_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = run(capsys, "create", str(tmp_path / "x.vhdx"))
    assert (status, out) == (2, "")
    assert "SIZE is needed" in err
    assert not (tmp_path / "x.vhdx").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{child}", "5M"], "parent's size"),
        (["-f", "{other}", "{child}"], "child cannot have a"),
        (["{child}", "--block-size", "3000K"], "block size"),
    ],
)
def test_create_child_refused_by_the_library(
    capsys: pytest.CaptureFixture[str], base: Path, args: list[str], message: str
) -> None:
    child = child_name(base)
    other = "vhd" if base.suffix == ".vhdx" else "vhdx"
    argv = [a.format(child=child, other=other) for a in args]
    status, out, err = run(capsys, "create", "--parent", str(base), *argv)
    assert (status, out) == (1, "")
    assert err.startswith("pyvhdx: error: ") and err.count("\n") == 1 and message in err
    assert not child.exists()


def test_create_child_of_a_missing_parent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = run(
        capsys, "create", "--parent", str(tmp_path / "nope.vhdx"), str(tmp_path / "c.avhdx")
    )
    assert (status, out) == (2, "")  # a missing file
    assert "nope.vhdx" in err and err.count("\n") == 1
    assert not (tmp_path / "c.avhdx").exists()


def test_create_child_elsewhere_notes_how_to_open_it(
    capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    sub = base.parent / "sub"
    sub.mkdir()
    child = sub / child_name(base).name
    status, out, err = run(capsys, "create", "--parent", str(base), str(child))
    assert status == 0 and "differencing" in out
    assert err.startswith("pyvhdx: note: the parent is not in the child's directory")


# -- merge ------------------------------------------------------------------------------


def test_merge(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    child = child_name(base)
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(MiB + 100, b"C" * 5000)
        img.write_at(4 * MiB, bytes(512) + b"Z")
        expected = img.read_at(0, 6 * MiB)
    status, out, err = run(capsys, "merge", str(child))
    assert (status, err) == (0, "")
    rows = dict(line.split(":", 1) for line in out.splitlines())
    assert rows["merged"].strip() == str(child)
    assert Path(rows["into"].strip()) == base.resolve()
    assert rows["child"].strip() == "deleted"
    assert not child.exists()
    with pyvhdx.open(base) as img:
        assert img.read_at(0, 6 * MiB) == expected


def test_merge_keep_child_json(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    child = child_name(base)
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(0, b"C" * 512)
    status, out, _ = run(capsys, "merge", "--keep-child", "--json", str(child))
    assert status == 0
    data = json.loads(out)
    assert data["child"] == str(child) and Path(data["parent"]) == base.resolve()
    assert data["bytes-merged"] > 0 and data["child-deleted"] is False
    assert child.exists()


def test_merge_with_explicit_parent(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    sub = base.parent / "sub"
    sub.mkdir()
    child = sub / child_name(base).name
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+", parent=base) as img:
        img.write_at(0, b"C" * 512)
    status, _, err = run(capsys, "merge", str(child))  # the parent is not beside it
    assert status == 1
    assert err.startswith("pyvhdx: error: ") and "tried" in err and err.count("\n") == 1
    assert child.exists()
    assert run(capsys, "merge", "--parent", str(base), str(child))[0] == 0
    with pyvhdx.open(base) as img:
        assert img.read_at(0, 512) == b"C" * 512


def test_merge_refuses_a_non_differencing_image(
    capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    before = sha(base)
    status, out, err = run(capsys, "merge", str(base))
    assert (status, out) == (1, "")
    assert err == f"pyvhdx: error: {base} is not a differencing disk\n"
    assert sha(base) == before


def test_merge_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "merge")[0] == 2
    assert run(capsys, "merge", "--bogus", str(tmp_path / "x"))[0] == 2
    status, _, err = run(capsys, "merge", str(tmp_path / "missing.avhdx"))
    assert status == 2 and "missing.avhdx" in err


# -- map of a chain ---------------------------------------------------------------------


def test_map_json_depth_per_run(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    child = child_name(base)
    pyvhdx.create(child, parent=base, block_size=MiB if base.suffix == ".vhdx" else None)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(MiB, b"C" * MiB)  # a whole block of a VHDX child; sectors of a VHD one
        img.write_at(5 * MiB, bytes(4096))  # zeros over nothing: stored all the same
    status, out, _ = run(capsys, "map", "--json", str(child))
    assert status == 0
    entries = json.loads(out)
    assert sum(e["length"] for e in entries) == 6 * MiB
    assert [e["start"] for e in entries] == sorted(e["start"] for e in entries)
    mine = [(e["start"], e["length"]) for e in entries if e["depth"] == 0]
    assert mine == [(MiB, MiB), (5 * MiB, MiB if base.suffix == ".vhdx" else 4096)]
    for e in entries:
        assert e["depth"] in (0, 1) and e["present"]
        if e["depth"] == 0:
            assert e["data"] and "offset" in e
    # the base's data (first 3 MiB, less the child's block) is at depth 1
    assert any(e["depth"] == 1 and e["data"] and e["start"] == 0 for e in entries)
    assert any(e["depth"] == 1 and e["zero"] for e in entries)


def test_map_human_names_the_holder(capsys: pytest.CaptureFixture[str], base: Path) -> None:
    child = child_name(base)
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+") as img:
        img.write_at(2 * MiB, b"C" * 4096)
    status, out, _ = run(capsys, "map", str(child))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["Offset", "Length", "Mapped", "to", "Kind", "Depth", "File"]
    depths = []
    for line in lines[1:]:
        cols = line.split()
        depth, name = int(cols[-2]), cols[-1]
        assert Path(name).resolve() == (child if depth == 0 else base).resolve()
        depths.append((int(cols[0], 16), depth, cols[3]))
    # the base's data, the child's 4 KiB (in its own block), the base again
    assert (0, 1, "data") in depths and (2 * MiB, 0, "data") in depths
    assert [d for _, d, _ in depths].count(0) == 1


# -- a parent in another folder ---------------------------------------------------------


def test_parent_elsewhere_error_names_the_recorded_paths_and_parent_option(
    capsys: pytest.CaptureFixture[str], base: Path
) -> None:
    """Issue 19: a child whose parent is in another folder fails to open with an error
    naming neither the path it records nor --parent; it names both now."""
    sub = base.parent / "sub"
    sub.mkdir()
    child = sub / child_name(base).name
    pyvhdx.create(child, parent=base)
    relative, absolute = f"..\\{base.name}", str(base).replace("/", "\\")
    status, out, err = run(capsys, "hash", str(child))
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert relative in err and absolute in err and "--parent PATH" in err
    with pytest.raises(pyvhdx.ParentError, match="parent=") as caught:
        pyvhdx.open(child)
    assert relative in str(caught.value) and absolute in str(caught.value)
    # info describes the child anyway, its problem naming the recorded paths
    status, out, _ = run(capsys, "info", str(child))
    assert status == 0 and relative in out and "--parent PATH" in out
    # and the way the message gives works, as the library's parent= does
    status, out, err = run(capsys, "hash", "--parent", str(base), str(child))
    with pyvhdx.open(child, parent=base) as img:
        expected = hashlib.sha256(img.read_at(0, img.virtual_size)).hexdigest()
    assert (status, err) == (0, "") and out.split()[0] == expected
