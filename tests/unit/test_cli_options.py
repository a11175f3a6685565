"""The options an operator reaches for (issue 19): how images are opened (--salvage,
--allow-missing-parent, --parent, -U, --storage-option) on every reading command,
qemu-img's habits (vpc, -p), one name for overwriting, help for every option, and a
file with no VHD or VHDX signature."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.cli import build_parser, main

KiB = 1 << 10
MiB = 1 << 20

READING_COMMANDS = ["info", "map", "hash", "inspect", "convert", "compare"]
READING_OPTIONS = {
    "--salvage",
    "--allow-missing-parent",
    "--parent",
    "-U",
    "--force-share",
    "--storage-option",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# -- how images are opened --------------------------------------------------------------


def test_every_reading_command_takes_the_reading_options() -> None:
    parsers = subparsers()
    for name in READING_COMMANDS:
        flags = {s for a in parsers[name]._actions for s in a.option_strings}
        assert flags >= READING_OPTIONS, (name, READING_OPTIONS - flags)
    compare = {s for a in parsers["compare"]._actions for s in a.option_strings}
    assert "--parent2" in compare


@pytest.fixture(scope="module")
def truncated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A VHDX of 8 blocks of 1 MiB, all written, cut 3 blocks short; and what
    ``--salvage`` reads (the lost blocks as zeros)."""
    path = tmp_path_factory.mktemp("salvage") / "cut.vhdx"
    pyvhdx.create(path, 8 * MiB, block_size=MiB)
    data = bytes(range(256)) * (8 * MiB // 256)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(0, data)
    os.truncate(path, path.stat().st_size - 3 * MiB)
    return path, data[: 5 * MiB] + bytes(3 * MiB)


@pytest.mark.parametrize("command", ["info", "map", "hash", "compare", "convert", "inspect"])
def test_truncated_image_says_salvage_and_salvage_reads_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, truncated: tuple[Path, bytes], command: str
) -> None:
    """Issue 19: ``info trunc.vhdx`` said "open with salvage=True", which a command
    line user cannot do; every reading command names --salvage and takes it."""
    path, _ = truncated
    argv = {"compare": [str(path), str(path)], "convert": [str(path), str(tmp_path / "o.raw")]}
    args = argv.get(command, [str(path)])
    status, _, err = run(capsys, command, *args)
    assert status != 0 and err.count("\n") == 1
    assert "use --salvage" in err and "salvage=True" not in err
    status, _, err = run(capsys, command, "--salvage", *args)
    assert status == 0, err


def test_salvage_reads_the_lost_blocks_as_zeros(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, truncated: tuple[Path, bytes]
) -> None:
    path, expected = truncated
    status, out, _ = run(capsys, "hash", "--salvage", str(path))
    assert status == 0 and out.split()[0] == sha256(expected)
    status, out, _ = run(capsys, "inspect", "--salvage", "--json", "--no-scan", str(path))
    assert status == 0 and json.loads(out)
    raw = tmp_path / "saved.raw"
    status, _, err = run(capsys, "convert", "--salvage", str(path), str(raw))
    assert status == 0, err
    assert raw.read_bytes() == expected
    # (an Azure destination's source takes them too: test_azure.py, against Azurite)


def test_allow_missing_parent_and_parent2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base, child = tmp_path / "a" / "base.vhdx", tmp_path / "b" / "child.avhdx"
    pyvhdx.create(base, 4 * MiB, block_size=MiB)
    with pyvhdx.open(base, "r+") as img:
        img.write_at(0, b"B" * (4 * MiB))
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+", parent=base) as img:
        img.write_at(MiB, b"C" * MiB)
    status, _, err = run(capsys, "hash", str(child))
    assert status == 1 and "--parent PATH" in err
    # the parent's data as zeros: the child's own block only (its 2 MiB, the parent's
    # first megabyte copied into it when the second was written)
    status, out, err = run(capsys, "hash", "--allow-missing-parent", str(child))
    expected = b"B" * MiB + b"C" * MiB + bytes(2 * MiB)
    assert status == 0 and out.split()[0] == sha256(expected)
    # compare: --parent is IMAGE1's parent, --parent2 IMAGE2's
    status, out, _ = run(capsys, "compare", "--parent2", str(base), str(base), str(child))
    assert (status, out) == (1, f"Content mismatch at offset {MiB}!\n")
    status, _, err = run(capsys, "compare", "--parent", str(base), str(child), str(child))
    assert status == 2 and "--parent2 PATH" in err  # IMAGE2's parent is not --parent
    argv = ["compare", "--parent", str(base), "--parent2", str(base), str(child), str(child)]
    assert run(capsys, *argv)[:2] == (0, "Images are identical.\n")


def test_force_share_reads_a_locked_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "busy.vhdx"
    pyvhdx.create(path, MiB)
    with pyvhdx.open(path, "r+") as writer:  # a writer excludes every other user...
        writer.write_at(0, b"W" * KiB)
        writer.flush()
        status, _, err = run(capsys, "hash", str(path))
        assert status == 1 and "lock" in err
        status, out, err = run(capsys, "hash", "-U", str(path))  # ...but -U takes no lock
        assert status == 0 and out.split()[0] == sha256(b"W" * KiB + bytes(MiB - KiB))
        status, out, err = run(capsys, "compare", "--force-share", str(path), str(path))
        assert status == 0


class _HeaderGate(http.server.SimpleHTTPRequestHandler):
    """Serves one file, with Range, only to requests carrying the header ``X-Key: open``."""

    body = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, send_body: bool) -> None:
        if self.headers.get("X-Key") != "open":
            self.send_error(403)
            return
        start, end = 0, len(self.body)
        spec = self.headers.get("Range")
        if spec:
            first, _, last = spec.removeprefix("bytes=").partition("-")
            start, end = int(first), min(len(self.body), int(last) + 1 if last else end)
        self.send_response(206 if spec else 200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if spec:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(self.body)}")
        self.end_headers()
        if send_body:
            self.wfile.write(self.body[start:end])

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A VHDX served over HTTP to requests with ``X-Key: open``; its URL and content."""
    pytest.importorskip("aiohttp")  # fsspec's HTTP file system (the 'remote' extra)
    path = tmp_path / "d.vhdx"
    pyvhdx.create(path, 2 * MiB, block_size=MiB)
    content = b"remote!!" * (MiB // 8)
    with pyvhdx.open(path, "r+") as img:
        img.write_at(MiB, content)
    handler = type("Gate", (_HeaderGate,), {"body": path.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/d.vhdx", bytes(MiB) + content
    finally:
        server.shutdown()
        server.server_close()


def test_storage_options_reach_fsspec(
    capsys: pytest.CaptureFixture[str], served: tuple[str, bytes]
) -> None:
    url, content = served
    status, _, err = run(capsys, "hash", url)
    assert status != 0 and url in err, err  # the server wants its header...
    header = '--storage-option=headers={"X-Key": "open"}'  # VALUE as JSON
    status, out, err = run(capsys, "hash", header, url)  # ...which the option gives
    assert (status, err) == (0, "") and out.split()[0] == sha256(content)
    status, out, _ = run(capsys, "info", "--json", header, url)
    assert status == 0 and json.loads(out)["virtual-size"] == 2 * MiB
    status, _, err = run(capsys, "hash", "--storage-option", "no-equals-sign", url)
    assert status == 2 and "KEY=VALUE" in err


# -- qemu-img's habits -----------------------------------------------------------------


def qemu_format(path: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    return str(json.loads(out)["format"])


def test_vpc_is_vhd_everywhere(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    made = tmp_path / "made.img"
    assert run(capsys, "create", "-f", "vpc", str(made), "1M")[0] == 0
    assert qemu_format(made) == "vpc"
    status, out, _ = run(capsys, "info", "--json", "-f", "vpc", str(made))
    assert status == 0 and json.loads(out)["format"] == "vhd"
    converted = tmp_path / "converted.img"
    status, _, err = run(capsys, "convert", "-O", "vpc", "-f", "VPC", str(made), str(converted))
    assert status == 0, err
    assert qemu_format(converted) == "vpc"
    assert run(capsys, "compare", "-f", "vpc", "-F", "vpc", str(made), str(converted))[0] == 0
    assert run(capsys, "measure", "-O", "vpc", str(made))[0] == 0
    assert run(capsys, "check", "-f", "vpc", str(made))[0] == 0
    status, _, err = run(capsys, "info", "-f", "qcow2", str(made))
    assert status == 2 and "invalid choice: 'qcow2'" in err


def test_convert_p_shows_progress(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "s.raw"
    source.write_bytes(b"p" * MiB)
    status, _, err = run(capsys, "convert", "-p", str(source), str(tmp_path / "d.vhdx"))
    assert status == 0 and "100%" in err
    status, _, err = run(capsys, "convert", str(source), str(tmp_path / "e.vhdx"))
    assert (status, err) == (0, "")  # stderr is no terminal here: no bar unless asked


# -- overwriting ------------------------------------------------------------------------


def _create(tmp: Path, out: Path) -> list[str]:
    return ["create", str(out), "1M"]


def _convert(tmp: Path, out: Path) -> list[str]:
    source = tmp / "src.raw"
    source.write_bytes(b"c" * MiB)
    return ["convert", str(source), str(out)]


def _diff(tmp: Path, out: Path, *more: str) -> list[str]:
    base, new = tmp / "base.vhdx", tmp / "new.vhdx"
    pyvhdx.create(base, MiB)
    pyvhdx.create(new, MiB)
    with pyvhdx.open(new, "r+") as img:
        img.write_at(0, b"n" * 512)
    return ["diff", "-o", str(out), *more, str(base), str(new)]


def _raw_diff(tmp: Path, out: Path) -> list[str]:
    return _diff(tmp, out, "--raw-delta")


@pytest.mark.parametrize("spelling", ["--force", "--overwrite"])
@pytest.mark.parametrize("argv", [_create, _convert, _diff, _raw_diff])
def test_force_and_overwrite_both_replace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: object, spelling: str
) -> None:
    """One name for overwriting: create took only --overwrite, convert and diff -o only
    --force; diff --raw-delta replaced an existing file without being asked."""
    out = tmp_path / "out.vhdx"
    out.write_bytes(b"precious")
    args = argv(tmp_path, out)  # type: ignore[operator]
    status, _, err = run(capsys, *args)
    assert status == 1 and "use --force to replace it" in err and err.count("\n") == 1
    assert out.read_bytes() == b"precious"
    status, _, err = run(capsys, *args[:1], spelling, *args[1:])
    assert status in (0, 1) and "exists" not in err  # diff exits 1: the disks differ
    assert out.read_bytes() != b"precious"


def test_every_option_has_help() -> None:
    missing = [
        f"{name} {'/'.join(a.option_strings) or a.dest}"
        for name, parser in subparsers().items()
        for a in parser._actions
        if not (a.help or "").strip()
    ]
    assert missing == []


def test_preallocate_on_a_dynamic_disk_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "d.vhdx"
    status, out, err = run(capsys, "create", "--preallocate", str(path), "1M")
    assert (status, out) == (2, "") and "--type fixed" in err
    assert not path.exists()
    status, _, _ = run(capsys, "create", "--preallocate", "--type", "fixed", str(path), "1M")
    assert status == 0 and path.stat().st_blocks * 512 >= MiB  # written out, not sparse


# -- no signature ---------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", os.urandom(64 * KiB)], ids=["empty", "random"])
def test_no_signature_is_a_problem_unless_raw_is_asked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    """Issue 19: random bytes or an empty file opened as raw silently and check exited 0."""
    path = tmp_path / "mystery.vhdx"
    path.write_bytes(content)
    status, out, _ = run(capsys, "check", str(path))
    assert status == 1 and "no VHD or VHDX signature" in out
    status, out, _ = run(capsys, "info", str(path))
    assert status == 0 and "no VHD or VHDX signature" in out
    status, out, _ = run(capsys, "check", "-f", "raw", str(path))
    assert status == 0 and "no VHD or VHDX signature" not in out
    status, out, _ = run(capsys, "info", "-f", "raw", str(path))
    assert status == 0 and "no VHD or VHDX signature" not in out
