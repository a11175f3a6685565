"""Forensic proof: reading an image never changes it (DESIGN.md "Read-only means read-only").

Every read operation -- open and a full read, info, inspect, check, map, hash,
compare and convert-from, through the API and through ``pyvhdx.cli.main`` -- is run
on real and generated images, including one with a pending log, one with a damaged
header copy, bad VHD checksums and differencing children with and without their
parent. After each operation the image (and a parent) must have the same SHA-256,
size, mtime and ctime. While the operations run, any attempt to open an image for
writing, truncate it or change its times fails the test at once.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyvhdx
from pyvhdx.cli import build_parser, main
from pyvhdx.errors import PyvhdxError
from pyvhdx.hashing import hash_image
from pyvhdx.inspect import inspect_image
from tests.conftest import (
    MiB,
    load_expected,
    make_raw,
    qemu_convert,
    sha256_of_file,
    sha256_of_image,
)

ENTRIES = {e["file"]: e for e in load_expected()}
REALWORLD = [
    "DiscUtils/vhdx-log-replay.vhdx.gz",  # pending log: replayed in memory only
    "dissect.hypervisor/differencing.avhdx.gz",  # parent missing, stale parent paths
    "dissect.hypervisor/dynamic.vhdx.gz",
    "dissect.hypervisor/fixed.vhd.gz",
    "dfvfs/image.vhd",  # bad footer checksums
    "dfvfs/image-differential.vhd",  # differencing child with its parent beside it
    "velociraptor/test.vhdx.zip",
]

State = tuple[str, int, int, int]


def file_state(path: Path) -> State:
    st = os.stat(path)
    return sha256_of_file(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            return set(choices)
    return set()


# -- the write guard --------------------------------------------------------------------


@contextlib.contextmanager
def no_writes_to(paths: list[Path]) -> Iterator[None]:
    """Fail on any attempt to open ``paths`` for writing, truncate them or touch them."""
    guarded = {os.path.realpath(p) for p in paths}

    def is_guarded(file: Any) -> bool:
        if isinstance(file, int):
            return False
        try:
            return os.path.realpath(os.fspath(file)) in guarded
        except TypeError:
            return False

    real_os_open, real_open, real_io_open = os.open, builtins.open, io.open
    real_truncate, real_utime = os.truncate, os.utime
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def guarded_os_open(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if is_guarded(path) and flags & write_flags:
            raise AssertionError(f"{path} opened for writing (flags {flags:#x})")
        return real_os_open(path, flags, *args, **kw)

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if is_guarded(file) and any(c in mode for c in "wax+"):
            raise AssertionError(f"{file} opened with mode {mode!r}")
        return real_open(file, mode, *args, **kw)

    def guarded_truncate(path: Any, length: int) -> None:
        if is_guarded(path):
            raise AssertionError(f"{path} truncated")
        real_truncate(path, length)

    def guarded_utime(path: Any, *args: Any, **kw: Any) -> None:
        if is_guarded(path):
            raise AssertionError(f"{path} times changed")
        real_utime(path, *args, **kw)

    patches = [
        (os, "open", guarded_os_open),
        (builtins, "open", guarded_open),
        (io, "open", guarded_open),
        (os, "truncate", guarded_truncate),
        (os, "utime", guarded_utime),
    ]
    try:
        for module, name, fn in patches:
            setattr(module, name, fn)
        yield
    finally:
        os.open, builtins.open, io.open = real_os_open, real_open, real_io_open
        os.truncate, os.utime = real_truncate, real_utime


# -- the operations ---------------------------------------------------------------------


def _read_all(path: Path, out: Path) -> Any:
    with pyvhdx.open(path) as img:
        return sha256_of_image(img)


def _info(path: Path, out: Path) -> Any:
    with pyvhdx.open(path, allow_missing_parent=True) as img:
        return img.info().to_dict()


def _stream(path: Path, out: Path) -> Any:
    with pyvhdx.open(path) as img, img.stream() as s:
        return s.read(MiB)


def _check(path: Path, out: Path) -> Any:
    # check.py arrived with the check/map issue; skip, do not fail, where it is absent.
    check = pytest.importorskip("pyvhdx.check")
    return check.check_image(path)


def _convert(fmt: str) -> Callable[[Path, Path], Any]:
    def run(path: Path, out: Path) -> Any:
        return pyvhdx.convert(path, out / f"converted.{fmt}", format=fmt, force=True)

    return run


API_OPERATIONS: dict[str, Callable[[Path, Path], Any]] = {
    "open-and-read-all": _read_all,
    "info": _info,
    "stream": _stream,
    "inspect": lambda p, out: inspect_image(p),
    "hash": lambda p, out: hash_image(p, ["md5", "sha1", "sha256"], progress=False),
    "check": _check,
    "convert-to-raw": _convert("raw"),
    "convert-to-vhdx": _convert("vhdx"),
    "convert-to-vhd": _convert("vhd"),
}


def _cli_commands(path: Path, out: Path) -> list[list[str]]:
    p = str(path)
    commands = [
        ["info", p],
        ["info", "--json", p],
        ["inspect", p],
        ["inspect", "--json", p],
        ["hash", "-a", "md5", "-a", "sha256", p],
        ["hash", "--json", p],
        ["map", p],
        ["map", "--json", p],
        ["check", p],
        ["check", "--json", p],
        ["compare", p, p],
    ]
    if "convert" in _subcommands():
        commands.append(["convert", p, str(out / "cli-converted.vhdx")])
    available = _subcommands()
    return [c for c in commands if c[0] in available]


def _run_all(image: Path, others: list[Path], tmp_path: Path) -> None:
    """Run every operation; after each one, every file must be unchanged."""
    watched = [image, *others]
    before = {p: file_state(p) for p in watched}
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)

    def verify(what: str) -> None:
        for p in watched:
            assert file_state(p) == before[p], f"{what} changed {p}"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pyvhdx.open(image).close()
            opens = True
        except PyvhdxError:
            opens = False  # a missing parent: operations may refuse, never write
        for name, op in API_OPERATIONS.items():
            with no_writes_to(watched):
                try:
                    op(image, out)
                except PyvhdxError:
                    if opens:
                        raise
            verify(name)
        for argv in _cli_commands(image, out):
            with no_writes_to(watched):
                main(argv)
            verify("pyvhdx " + " ".join(argv[:-1]))


# -- the images ---------------------------------------------------------------------------


@pytest.mark.realworld
@pytest.mark.parametrize("name", REALWORLD)
def test_realworld_images_unchanged(
    name: str,
    expected_images: Any,
    realworld_image: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if name not in ENTRIES:
        pytest.skip(f"{name} is not in expected.json")
    entry = ENTRIES[name]
    path = realworld_image(entry)
    others = []
    if entry.get("parent_file"):
        others.append(realworld_image(ENTRIES[entry["parent_file"]]))
    _run_all(path, others, tmp_path)
    capsys.readouterr()


@pytest.mark.realworld
def test_pending_log_stays_pending(
    expected_images: Any, realworld_image: Any, tmp_path: Path
) -> None:
    """The log is replayed in memory for every read, and is still pending afterwards."""
    path = realworld_image(ENTRIES["DiscUtils/vhdx-log-replay.vhdx.gz"])
    for _ in range(2):
        report = inspect_image(path)
        assert report["log"]["pending"] is True
        assert report["log"]["active-sequence"]
        assert report["open"]["log-replayed"] is True


@pytest.fixture
def generated(qemu_img: str, tmp_path: Path) -> dict[str, Path]:
    raw = make_raw(tmp_path / "g.raw", 9 * MiB, seed=8, pattern="mixed")
    images = {
        "vhdx-dynamic": qemu_convert(raw, tmp_path / "d.vhdx", "vhdx", {"block_size": "1M"}),
        "vhdx-fixed": qemu_convert(raw, tmp_path / "f.vhdx", "vhdx", {"subformat": "fixed"}),
        "vhd-dynamic": qemu_convert(raw, tmp_path / "d.vhd", "vpc", {"subformat": "dynamic"}),
        "vhd-fixed": qemu_convert(raw, tmp_path / "f.vhd", "vpc", {"subformat": "fixed"}),
    }
    damaged = tmp_path / "damaged.vhdx"
    damaged.write_bytes(images["vhdx-dynamic"].read_bytes())
    with open(damaged, "r+b") as f:  # header 1 damaged: a writer would repair it
        f.seek(64 * 1024 + 200)
        f.write(b"\xaa" * 16)
    images["vhdx-damaged-header"] = damaged
    vhd_end = tmp_path / "damaged-end.vhd"
    data = bytearray(images["vhd-dynamic"].read_bytes())
    data[-512 + 100] ^= 0xFF  # footer at EOF damaged: the copy at 0 is used
    vhd_end.write_bytes(bytes(data))
    images["vhd-damaged-footer"] = vhd_end
    return images


@pytest.mark.parametrize(
    "kind",
    [
        "vhdx-dynamic",
        "vhdx-fixed",
        "vhd-dynamic",
        "vhd-fixed",
        "vhdx-damaged-header",
        "vhd-damaged-footer",
    ],
)
def test_generated_images_unchanged(
    kind: str, generated: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_all(generated[kind], [], tmp_path)
    capsys.readouterr()


def test_guard_catches_writes(tmp_path: Path) -> None:
    """The guard itself works: a read-write open of a guarded image fails."""
    path = tmp_path / "w.vhdx"
    pyvhdx.create(path, 8 * MiB)
    with no_writes_to([path]), pytest.raises(AssertionError, match="for writing"):
        pyvhdx.open(path, "r+")
    with no_writes_to([path]), pytest.raises(AssertionError, match="mode"):
        open(path, "r+b")  # noqa: SIM115
