"""Merges that are interrupted, resumed, or merge a middle link (issue 13, items 2 and 3).

The campaign with 30 kill points per signal and a child holding 512 MiB is
``tools/merge_kill.py``; here a few points on a small child keep the suite short.
"""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.journal import parse_record, read_record, record_path
from tests.conftest import import_pyvhdi
from tests.killlib import PYVHDX, campaign, cli, cli_hash, kill_once, make_chain

MiB = 1 << 20
EXTS = [".vhdx", ".vhd"]


def digest(path: Path) -> str:
    with pyvhdx.open(path) as img:
        h = hashlib.sha256()
        for off in range(0, img.virtual_size, 4 * MiB):
            h.update(img.read_at(off, 4 * MiB))
        return h.hexdigest()


def three_level(folder: Path, ext: str) -> tuple[Path, Path, Path]:
    """base <- c1 <- c2, each level writing over the one below, across block edges."""
    size = 48 * MiB
    base, c1, c2 = (folder / f"{n}{ext}" for n in ("base", "c1", "c2"))
    pyvhdx.create(base, size)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(0, b"A" * (9 * MiB + 3))
    pyvhdx.create(c1, size, parent=base)
    with pyvhdx.open(c1, "r+") as img:
        img.write_at(3 * MiB - 512, b"B" * (12 * MiB))
        img.write_at(33 * MiB, b"b" * MiB)
    pyvhdx.create(c2, size, parent=c1)
    with pyvhdx.open(c2, "r+") as img:
        img.write_at(5 * MiB + 1024, b"C" * (2 * MiB))
        img.write_at(40 * MiB, b"c" * 4096)
    return base, c1, c2


class Interrupt(Exception):
    pass


def interrupt_after(nbytes: int) -> Any:
    done = 0

    def progress(n: int) -> None:  # called with the bytes merged since the last call
        nonlocal done
        done += n
        if done >= nbytes:
            raise Interrupt

    return progress


# -- kill points ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_merge_survives_kills(tmp_path: Path, ext: str) -> None:
    """SIGKILL and SIGINT at random points: the child reads as the chain did, and
    running merge again finishes with the same parent content."""
    outcomes = campaign(tmp_path, ext, child_mib=64, points=3, seed=13)
    bad = [o for o in outcomes if not o.ok]
    assert not bad, bad
    assert any(o.state == "interrupted" for o in outcomes), outcomes


@pytest.mark.parametrize("ext", EXTS)
def test_merge_survives_sigterm(tmp_path: Path, ext: str) -> None:
    template = tmp_path / "t"
    base, child = make_chain(template, ext, 64)
    expected = cli_hash(child, template)
    o = kill_once(
        template, tmp_path / "w", base, child, expected, signal.SIGTERM, 0.02, after_record=True
    )
    assert o.ok, o
    assert o.state == "interrupted", o


# -- an interrupted merge, step by step -----------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_interrupted_merge_reads_reports_and_resumes(tmp_path: Path, ext: str) -> None:
    base, c1, _c2 = three_level(tmp_path, ext)
    (tmp_path / f"c2{ext}").unlink()
    chain = digest(c1)
    with pytest.raises(Interrupt):
        pyvhdx.merge(c1, progress=interrupt_after(4 * MiB))
    rec = read_record(c1)
    assert rec is not None and rec.child == c1.name and rec.parent == base.name
    # the parent is half merged: it reads neither as before nor as after
    assert digest(c1) == chain
    # the CLI says what is going on, and how to go on
    info = cli("info", c1.name, cwd=tmp_path)
    assert info.returncode == 0 and "merge" in info.stdout and "pyvhdx merge" in info.stdout
    for target in (c1.name, base.name):
        r = cli("check", target, cwd=tmp_path)
        assert "warning: merge" in r.stdout, r.stdout
        assert r.returncode == 0, r.stdout
    info_json = json.loads(cli("info", "--json", base.name, cwd=tmp_path).stdout)
    assert any("merge" in p["structure"] for p in info_json["problems"]), info_json
    r = cli("merge", "--json", c1.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"] is True and out["child-deleted"] is True
    assert digest(base) == chain
    assert sorted(p.name for p in tmp_path.iterdir()) == [base.name]


def test_interrupted_vhdx_merge_fails_without_the_record(tmp_path: Path) -> None:
    """The record is what keeps the chain open: without it the linkage check refuses
    (so the acceptance is not a blanket one)."""
    _base, c1, _c2 = three_level(tmp_path, ".vhdx")
    with pytest.raises(Interrupt):
        pyvhdx.merge(c1, progress=interrupt_after(4 * MiB))
    saved = record_path(c1).read_bytes()
    record_path(c1).unlink()
    with pytest.raises(pyvhdx.ParentError, match="identity mismatch"):
        pyvhdx.open(c1)
    # a record naming another parent identity does not help either
    doc = json.loads(saved)
    doc["parent_after"] = "{00000000-0000-0000-0000-000000000001}"
    record_path(c1).write_text(json.dumps(doc))
    with pytest.raises(pyvhdx.ParentError, match="identity mismatch"):
        pyvhdx.open(c1)
    record_path(c1).write_bytes(saved)
    with pyvhdx.open(c1) as img:
        assert any(p.structure == "merge" for p in img.info().problems)


def test_garbage_record_is_ignored_and_reported(tmp_path: Path) -> None:
    _base, c1, _c2 = three_level(tmp_path, ".vhdx")
    record_path(c1).write_bytes(b"\x00not json" * 100)
    assert read_record(c1) is None
    r = cli("check", c1.name, cwd=tmp_path)
    assert "not a merge record" in r.stdout
    assert digest(c1)  # opens normally: the parent was never written


# -- middle links ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_merge_middle_link_reparents_grandchild(tmp_path: Path, ext: str) -> None:
    base, c1, c2 = three_level(tmp_path, ext)
    before_c2, before_c1 = digest(c2), digest(c1)
    r = cli("merge", "--json", c1.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reparented"] == [str(c2.resolve())]
    assert not c1.exists() and not record_path(c1).exists()
    assert digest(base) == before_c1
    assert digest(c2) == before_c2
    with pyvhdx.open(c2) as img:
        assert img.parent is not None and Path(img.parent.name).resolve() == base.resolve()
    chk = cli("check", c2.name, cwd=tmp_path)
    assert chk.returncode == 0 and "error:" not in chk.stdout, chk.stdout


def test_middle_link_vhdx_agrees_with_libvhdi(tmp_path: Path) -> None:
    pyvhdi = import_pyvhdi()
    base, c1, c2 = three_level(tmp_path, ".vhdx")
    before = digest(c2)
    pyvhdx.merge(c1)
    child, parent = pyvhdi.file(), pyvhdi.file()
    child.open(str(c2))
    parent.open(str(base))
    child.set_parent(parent)
    data = child.read_buffer_at_offset(child.get_media_size(), 0)
    assert hashlib.sha256(data).hexdigest() == before


@pytest.mark.parametrize("ext", EXTS)
def test_interrupted_middle_link_merge(tmp_path: Path, ext: str) -> None:
    base, c1, c2 = three_level(tmp_path, ext)
    before_c2, before_c1 = digest(c2), digest(c1)
    with pytest.raises(Interrupt):
        pyvhdx.merge(c1, progress=interrupt_after(4 * MiB))
    assert digest(c2) == before_c2  # c2 -> c1 -> half-merged base, accepted by c1's record
    result = pyvhdx.merge(c1)
    assert result.resumed and result.reparented == (c2.resolve(),)
    assert digest(c2) == before_c2 and digest(base) == before_c1


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_around_reparenting(
    tmp_path: Path, ext: str, when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge stopped just before or just after re-parenting the grandchild (the
    copy done, the child not yet deleted): the grandchild reads right, and the
    resumed merge finishes with every disk right."""
    import pyvhdx.setparent as sp

    base, c1, c2 = three_level(tmp_path, ext)
    before_c2, before_c1 = digest(c2), digest(c1)
    real = sp.set_parent

    def stop(*args: Any, **kw: Any) -> None:
        if when == "after":
            real(*args, **kw)
        raise Interrupt

    monkeypatch.setattr(sp, "set_parent", stop)
    with pytest.raises(Interrupt):
        pyvhdx.merge(c1)
    monkeypatch.setattr(sp, "set_parent", real)
    assert c1.exists() and record_path(c1).exists()
    with pyvhdx.open(c2) as img:
        assert img.parent is not None
        want = base if when == "after" else c1
        assert Path(img.parent.name).resolve() == want.resolve()
    assert digest(c2) == before_c2 and digest(c1) == before_c1
    result = pyvhdx.merge(c1)
    assert result.resumed and result.reparented == (c2.resolve(),)
    assert digest(c2) == before_c2 and digest(base) == before_c1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.name, c2.name])


# -- full disk ----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_merge_on_a_full_disk_is_resumable(tmp_path: Path, ext: str) -> None:
    base, c1, _c2 = three_level(tmp_path, ext)
    (tmp_path / f"c2{ext}").unlink()
    chain = digest(c1)
    limit = base.stat().st_size + 2 * MiB  # room for a block or so, not for the merge

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(
        [*PYVHDX, "merge", c1.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and base.name in lines[0] and "pyvhdx merge" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert record_path(c1).exists()
    assert digest(c1) == chain
    r = cli("merge", c1.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert digest(base) == chain
    assert sorted(p.name for p in tmp_path.iterdir()) == [base.name]


# -- the record itself ---------------------------------------------------------------------


def test_record_parser_never_raises() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
    def run(raw: bytes) -> None:
        rec = parse_record(raw)
        assert rec is None or isinstance(rec.child, str)

    run()
    good = (
        b'{"version": 1, "child": "c.vhdx", "parent": "b.vhdx", "format": "vhdx", '
        b'"parent_before": "a", "parent_after": "b", "children": ["g.vhdx"]}'
    )
    rec = parse_record(good)
    assert rec is not None and rec.children == ("g.vhdx",)
    assert parse_record(good.replace(b'"g.vhdx"', b'"../g.vhdx"')) is None
    assert parse_record(good.replace(b'"version": 1', b'"version": 2')) is None
    assert parse_record(rec.to_json().encode()) == rec


# -- another user of the chain ---------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("holder", ["parent", "grandchild"])
def test_merge_refused_while_a_writer_holds_the_chain(
    tmp_path: Path, ext: str, holder: str
) -> None:
    """A writer on the parent, or on a child to re-parent, stops the merge before it
    writes anything: no record, every disk as it was."""
    base, c1, c2 = three_level(tmp_path, ext)
    files = {p: p.read_bytes() for p in (base, c1, c2)}
    held = base if holder == "parent" else c2
    with pyvhdx.open(held, "r+"):
        with pytest.raises(pyvhdx.ImageLockedError, match=held.name):
            pyvhdx.merge(c1)
        r = cli("merge", c1.name, cwd=tmp_path)
        assert r.returncode == 1 and held.name in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not record_path(c1).exists()
    assert {p: p.read_bytes() for p in (base, c1, c2)} == files


@pytest.mark.parametrize("ext", EXTS)
def test_record_left_by_a_finished_merge(tmp_path: Path, ext: str) -> None:
    """Killed between deleting the child and its record: the parent is merged, readers
    ignore the record, and the next merge of that name removes it."""
    base, c1, _c2 = three_level(tmp_path, ext)
    (tmp_path / f"c2{ext}").unlink()
    chain = digest(c1)
    pyvhdx.merge(c1, keep_child=True)
    rec = read_record(c1)
    assert rec is None
    saved = json.dumps(
        {
            "version": 1,
            "child": c1.name,
            "parent": base.name,
            "format": ext[1:],
            "parent_before": "x",
            "parent_after": "y",
            "children": [],
        }
    )
    c1.unlink()
    record_path(c1).write_text(saved)
    with pyvhdx.open(base) as img:
        assert not any(p.structure == "merge" for p in img.info().problems)
    assert digest(base) == chain
    r = cli("merge", "--json", c1.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [base.name]


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_merge_refuses_special_files_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO or a device node given as CHILD: refused at once (no hang), left as it was."""
    import os
    import stat

    node = tmp_path / "child.vhdx"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    r = subprocess.run(
        [*PYVHDX, "merge", node.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode in (1, 2), (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    mode = node.lstat().st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [node.name]


def test_merge_refused_when_a_grandchild_has_no_room_for_the_new_path(tmp_path: Path) -> None:
    """A VHD grandchild whose locator space cannot hold the new parent's path: the
    merge refuses before it writes anything (it would otherwise orphan the grandchild)."""
    base = tmp_path / ("b" * 240 + ".vhd")
    c1, c2 = tmp_path / "c1.vhd", tmp_path / "c2.vhd"
    pyvhdx.create(base, 8 * MiB)
    pyvhdx.create(c1, 8 * MiB, parent=base)
    with pyvhdx.open(c1, "r+") as img:
        img.write_at(0, b"1" * 4096)
    pyvhdx.create(c2, 8 * MiB, parent=c1)  # its locators reserve room for "c1.vhd" paths
    files = {p: p.read_bytes() for p in (base, c1, c2)}
    with pytest.raises(pyvhdx.InvalidArgumentError, match="does not fit"):
        pyvhdx.merge(c1)
    assert not record_path(c1).exists()
    assert {p: p.read_bytes() for p in (base, c1, c2)} == files
