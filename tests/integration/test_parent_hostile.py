"""Hostile parent chains: nothing outside the child's directory is ever opened.

A differencing disk names its parent in locators that come from the image,
so from a stranger (DESIGN.md "Parents"). Each test plants a chain (self-parent,
cycles, chains deeper than MAX_CHAIN_DEPTH, locators with ``..``, absolute,
device and UNC paths, 64-100 KB names, NUL bytes, unpaired UTF-16 surrogates)
next to a *decoy*: a valid parent with the right identity, outside the child's
directory, that a naive reader following the locator would open. A guard
wraps ``os.open`` and ``builtins.open`` and records every path opened: each
must lie inside the child's directory. Every open ends in a ``ParentError``
or opens cleanly with a parent from the child's directory.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.chain import MAX_CHAIN_DEPTH
from pyvhdx.constants import DiskType
from pyvhdx.create import vhd_dynamic_header, vhd_footer
from pyvhdx.errors import ParentError
from tests.vhdxbuild import build_vhdx

MiB = 1 << 20
SIZE = MiB


# -- the guard -------------------------------------------------------------------------


class OpenGuard:
    """Every path passed to ``os.open``/``open`` while active (resolved when possible)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def record(self, path: Any) -> None:
        if isinstance(path, int):
            return
        text = os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path)
        with contextlib.suppress(OSError, ValueError):
            text = os.path.realpath(text)
        self.paths.append(text)

    def outside(self, root: Path) -> list[str]:
        """Paths opened outside ``root`` (``root`` itself is inside: creating an
        image there fsyncs the folder)."""
        top = str(root.resolve())
        return [p for p in self.paths if p != top and not p.startswith(top + os.sep)]


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenGuard]:
    g = OpenGuard()
    real_os_open = os.open
    real_open = builtins.open

    def os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        g.record(path)
        return real_os_open(path, flags, *args, **kw)

    def py_open(file: Any, *args: Any, **kw: Any) -> Any:
        g.record(file)
        return real_open(file, *args, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no linecache reads of source files
        yield g


def attempt(path: Path, **kw: Any) -> pyvhdx.DiskImage | ParentError:
    """Open ``path`` (and read it all): the image, or the ParentError raised."""
    try:
        img = pyvhdx.open(path, **kw)
    except ParentError as exc:
        return exc
    img.read_at(0, img.virtual_size)
    return img


def parents(img: pyvhdx.DiskImage) -> list[str]:
    out = []
    p = img.parent
    while p is not None:
        out.append(p.name)
        p = p.parent
    return out


# -- builders ----------------------------------------------------------------------------


def vhdx_base(path: Path) -> str:
    """A dynamic VHDX holding data; returns its DataWriteGuid (what children link to)."""
    layout = build_vhdx(path, bytes(range(256)) * (SIZE // 256), block_size=MiB)
    return str(layout.data_write_guid)


def vhdx_child(path: Path, linkage: str, paths: dict[str, str]) -> str:
    """A differencing VHDX (every block in the parent) whose locator holds ``paths``."""
    kv = {"parent_linkage": "{" + linkage + "}", **paths}
    layout = build_vhdx(
        path, bytes(SIZE), block_size=MiB, disk_type="differencing", parent_locator=kv
    )
    return str(layout.data_write_guid)


def vhd_base(path: Path) -> str:
    pyvhdx.create(path, SIZE, format="vhd", block_size=512 * 1024)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, bytes(range(256)) * (SIZE // 256))
    with pyvhdx.open(path) as img:
        return str(img.handler.identifier)


def vhd_child(path: Path, parent_id: str, paths: dict[str, str], *, name: str | None = None) -> str:
    """A differencing VHD with W2ru/W2ku locators ``paths`` (data after the BAT) and
    Parent Unicode Name ``name``; returns its Unique Id.
    """
    unique = uuid.uuid4()
    block = 512 * 1024
    entries = SIZE // block
    pos = 1536 + 512
    locators, data = [], []
    for code, text in paths.items():
        raw = text.encode("utf-16-le", "surrogatepass")
        space = max(512, -(-len(raw) // 512) * 512)
        locators.append((code.encode(), space, len(raw), pos))
        data.append((pos, raw))
        pos += space
    footer = vhd_footer(SIZE, DiskType.DIFFERENCING, unique_id=unique)
    header = vhd_dynamic_header(
        entries,
        block,
        parent_unique_id=uuid.UUID(parent_id),
        parent_unicode_name=name if name is not None else "",
        parent_locators=locators,
    )
    buf = bytearray(pos + 512)
    buf[:512] = footer
    buf[512:1536] = header
    buf[1536 : 1536 + 4 * entries] = b"\xff" * (4 * entries)
    for off, raw in data:
        buf[off : off + len(raw)] = raw
    buf[pos:] = footer
    path.write_bytes(bytes(buf))
    return str(unique)


FORMATS: dict[str, dict[str, Callable[..., str]]] = {
    "vhdx": {"base": vhdx_base, "child": vhdx_child},
    "vhd": {"base": vhd_base, "child": vhd_child},
}


def locators(fmt: str, text: str) -> dict[str, str]:
    """Every locator of the format set to ``text``."""
    if fmt == "vhdx":
        return {"relative_path": text, "volume_path": text, "absolute_win32_path": text}
    return {"W2ru": text, "W2ku": text}


@pytest.fixture(params=["vhdx", "vhd"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- self, cycles, depth -------------------------------------------------------------------


def test_self_parent(tmp_path: Path, fmt: str, guard: OpenGuard) -> None:
    """A child whose locator and linkage name itself: a loop, not a recursion."""
    d = tmp_path / "d"
    d.mkdir()
    ext = "." + fmt
    child = d / f"self{ext}"
    # first pass learns the identity, second links the image to itself
    ident = FORMATS[fmt]["child"](child, str(uuid.uuid4()), locators(fmt, f"self{ext}"))
    if fmt == "vhdx":
        # build_vhdx draws a new DataWriteGuid each time: link to the one it gets
        layout = build_vhdx(
            child,
            bytes(SIZE),
            block_size=MiB,
            disk_type="differencing",
            parent_locator={"parent_linkage": "{" + ident + "}", **locators(fmt, f"self{ext}")},
        )
        raw = bytearray(child.read_bytes())
        for off in (64 * 1024, 128 * 1024):  # make the image's DataWriteGuid the linked one
            raw[off + 32 : off + 48] = uuid.UUID(ident).bytes_le
            raw[off + 4 : off + 8] = bytes(4)
            from pyvhdx.checksum import crc32c

            raw[off + 4 : off + 8] = crc32c(bytes(raw[off : off + 4096])).to_bytes(4, "little")
        child.write_bytes(bytes(raw))
        assert layout.path == child
    else:
        vhd_child(child, str(uuid.uuid4()), locators(fmt, f"self{ext}"), name=f"self{ext}")
        raw = bytearray(child.read_bytes())
        h = pyvhdx.open(child, resolve_parent=False)
        me = h.handler.identifier
        h.close()
        assert me is not None
        vhd_child(child, str(me), locators(fmt, f"self{ext}"), name=f"self{ext}")
        # the footer's Unique Id changed with the rebuild: set it back to ``me``
        raw = bytearray(child.read_bytes())
        for off in (0, len(raw) - 512):
            raw[off + 68 : off + 84] = me.bytes
            raw[off + 64 : off + 68] = bytes(4)
            total = sum(raw[off : off + 512])
            raw[off + 64 : off + 68] = (~total & 0xFFFFFFFF).to_bytes(4, "big")
        child.write_bytes(bytes(raw))
    for kw in ({}, {"allow_missing_parent": True}):
        out = attempt(child, **kw)
        assert isinstance(out, ParentError), out
        assert "loops back" in str(out)
    with pyvhdx.open(child, resolve_parent=False) as img:
        assert img.parent is None
    assert guard.outside(d) == []


def test_cycle(tmp_path: Path, fmt: str, guard: OpenGuard) -> None:
    """A -> B -> A (each locator names the other; identities of each other)."""
    d = tmp_path / "d"
    d.mkdir()
    ext = "." + fmt
    a, b = d / f"a{ext}", d / f"b{ext}"
    make = FORMATS[fmt]["child"]
    id_b = make(b, str(uuid.uuid4()), locators(fmt, f"a{ext}"))
    id_a = make(a, id_b, locators(fmt, f"b{ext}"))
    make(b, id_a, locators(fmt, f"a{ext}"))  # b's identity changes: a now mismatches b
    # Whatever the identities say, opening either side must end, without recursion.
    for start in (a, b):
        for kw in ({}, {"allow_missing_parent": True}, {"verify_parent": False}):
            out = attempt(start, **kw)
            if isinstance(out, pyvhdx.DiskImage):
                assert kw.get("allow_missing_parent") and out.missing_parent
                out.close()
    out = attempt(a, verify_parent=False)
    assert isinstance(out, ParentError) and "loops back" in str(out)
    assert guard.outside(d) == []


def test_deep_chain(tmp_path: Path, fmt: str, guard: OpenGuard) -> None:
    """70 children deep: refused past MAX_CHAIN_DEPTH; shallower members open."""
    d = tmp_path / "d"
    d.mkdir()
    ext = "." + fmt
    ident = FORMATS[fmt]["base"](d / f"c00{ext}")
    for i in range(1, 71):
        ident = FORMATS[fmt]["child"](
            d / f"c{i:02d}{ext}", ident, locators(fmt, f".\\c{i - 1:02d}{ext}")
        )
    expected = bytes(range(256)) * (SIZE // 256)
    with pyvhdx.open(d / f"c40{ext}") as img:
        assert len(parents(img)) == 40
        assert img.read_at(0, SIZE) == expected
    assert MAX_CHAIN_DEPTH < 70
    for kw in ({}, {"allow_missing_parent": True}):
        out = attempt(d / f"c70{ext}", **kw)
        assert isinstance(out, ParentError), out
        assert f"deeper than {MAX_CHAIN_DEPTH}" in str(out)
    assert guard.outside(d) == []


# -- hostile locator paths ------------------------------------------------------------------


def hostile_paths(decoy: Path, ext: str) -> list[str]:
    """Locator values that point at the decoy, at devices, or are malformed."""
    target = decoy / f"p{ext}"
    return [
        f"..\\decoy\\p{ext}",
        f"../decoy/p{ext}",
        f"..\\..\\{decoy.parent.name}\\decoy\\p{ext}",
        f".\\..\\decoy\\p{ext}",
        str(target),
        str(target).replace("/", "\\"),
        f"C:{str(target).replace('/', chr(92))}",
        f"\\\\?\\C:{str(target).replace('/', chr(92))}",
        f"\\\\?\\UNC\\localhost\\c$\\decoy\\p{ext}",
        "\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\decoy",
        "\\\\.\\PhysicalDrive0",
        "\\\\?\\GLOBALROOT\\Device\\Harddisk0\\DR0",
        "\\\\.\\C:",
        "/dev/sda",
        "/dev/zero",
        "/proc/self/mem",
        "/proc/self/fd/0",
        f"\\\\server\\share\\p{ext}",
        "..",
        ".",
        "",
        "/",
        "\\",
        f"C:p{ext}",
        f"p{ext}\0/../decoy/p{ext}",
        "\0" * 8,
        f"\ud800p{ext}",
        f"p\udfff{ext}",
        "\udc80/etc/passwd",
        "a" * 32000,  # the longest a VHDX locator value holds (u16 byte length)
        ("..\\" * 4000) + f"decoy\\p{ext}",
        "con",
        "NUL",
    ]


def _hostile_ids() -> list[str]:
    return [str(i) for i in range(33)]


@pytest.mark.parametrize("index", range(33), ids=_hostile_ids())
def test_hostile_locator_never_leaves_the_child_directory(
    tmp_path: Path, fmt: str, index: int, guard: OpenGuard
) -> None:
    """The decoy parent outside the child's directory is never opened; the open
    fails with a ParentError (nothing beside the child) or, once the parent is
    put beside the child under the locator's base name, opens with that one.
    """
    ext = "." + fmt
    decoy = tmp_path / "decoy"
    d = tmp_path / "d"
    decoy.mkdir()
    d.mkdir()
    ident = FORMATS[fmt]["base"](decoy / f"p{ext}")
    text = hostile_paths(decoy, ext)[index]
    child = d / f"child{ext}"
    if fmt == "vhd":
        vhd_child(child, ident, locators(fmt, text), name=text[:256])
    else:
        vhdx_child(child, ident, locators(fmt, text))
    guard.paths.clear()  # what the test itself wrote does not count
    for kw in ({}, {"allow_missing_parent": True}):
        out = attempt(child, **kw)
        if isinstance(out, pyvhdx.DiskImage):
            assert out.missing_parent and out.parent is None
            out.close()
        else:
            assert isinstance(out, ParentError)
    assert guard.outside(d) == [], "opened outside the child's directory"
    # The parent beside the child under the base name the locator gives is used.
    beside = (decoy / f"p{ext}").read_bytes()
    (d / f"p{ext}").write_bytes(beside)
    guard.paths.clear()
    out = attempt(child)
    if isinstance(out, pyvhdx.DiskImage):
        assert parents(out) == [str(d / f"p{ext}")]
        out.close()
    else:
        assert isinstance(out, ParentError)
    assert guard.outside(d) == [], "opened outside the child's directory"


def test_vhd_locator_of_100_kib(tmp_path: Path, guard: OpenGuard) -> None:
    """A VHD locator whose data is 100 KiB: reported, not read, and never opened."""
    d = tmp_path / "d"
    d.mkdir()
    ident = vhd_base(d / "p.vhd")
    name = "a" * (50 * 1024) + ".vhd"  # 100 KiB of UTF-16LE
    vhd_child(d / "child.vhd", ident, {"W2ru": name, "W2ku": name}, name="q.vhd")
    out = attempt(d / "child.vhd")
    assert isinstance(out, ParentError)
    with pyvhdx.open(d / "child.vhd", allow_missing_parent=True) as img:
        assert any("exceed 64 KiB" in p.message for p in img.info().problems)
    assert guard.outside(d) == []


def test_confined_relative_subdirectory_is_followed(tmp_path: Path, guard: OpenGuard) -> None:
    """A relative locator that stays inside the child's directory is honoured."""
    d = tmp_path / "d"
    (d / "base").mkdir(parents=True)
    ident = vhdx_base(d / "base" / "p.vhdx")
    vhdx_child(d / "child.vhdx", ident, {"relative_path": ".\\base\\p.vhdx"})
    with pyvhdx.open(d / "child.vhdx") as img:
        assert parents(img) == [str(d / "base" / "p.vhdx")]
    assert guard.outside(d) == []
