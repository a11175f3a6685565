"""What the command line prints (issue 19): JSON that is whole or absent, the errors
(one line, naming their file, escaped), exit codes, closed pipes, and start-up.

In process (``main`` with capsys) except where the process matters: the terminal's
encoding, a real closed pipe, the time and imports of start-up.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.cli import main
from tests.conftest import SAMPLE_IMAGES

MiB = 1 << 20


def run(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    status = main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def truncated_vhd(tmp_path: Path) -> Path:
    """``head -c 6000000 sample_images/dynamic.vhd``: it opens, its last block is cut."""
    path = tmp_path / "t.vhd"
    path.write_bytes((SAMPLE_IMAGES / "dynamic.vhd").read_bytes()[:6_000_000])
    return path


# -- JSON: valid or nothing --------------------------------------------------------------


def test_map_json_prints_nothing_when_the_image_fails_half_way(
    capsys: pytest.CaptureFixture[str], truncated_vhd: Path
) -> None:
    """It printed ``[`` and then the error."""
    status, out, err = run(capsys, "map", "--json", truncated_vhd)
    assert (status, out) == (1, "")
    assert err.splitlines()[-1].startswith(f"pyvhdx: error: {truncated_vhd}: the file ends at")


def test_map_json_is_one_document(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    image = tmp_path / "d.vhd"
    shutil.copy(SAMPLE_IMAGES / "dynamic.vhd", image)
    status, out, _ = run(capsys, "map", "--json", image)
    assert status == 0
    entries = json.loads(out)
    with pyvhdx.open(image) as img:
        assert sum(e["length"] for e in entries) == img.virtual_size


# -- images -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """base.vhdx <- mid.vhdx <- top.vhdx (8 MiB; some data in each), made once."""
    folder = tmp_path_factory.mktemp("chain")
    base, mid, top = (folder / f"{n}.vhdx" for n in ("base", "mid", "top"))
    for i, path in enumerate((base, mid, top)):
        pyvhdx.create(path, 8 * MiB, parent=(None, base, mid)[i])
        with pyvhdx.open(path, "r+") as img:  # before a child is made over it
            img.write_at(i * MiB, bytes([i + 1]) * 4096)
    return base, mid, top


@pytest.fixture
def chain(built_chain: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of :func:`built_chain` of the test's own (the children find their parents
    beside them, as the locators hold relative paths)."""
    for path in built_chain:
        shutil.copy(path, tmp_path / path.name)
    base, mid, top = (tmp_path / p.name for p in built_chain)
    return base, mid, top


#: A parent name that drives a terminal: ESC [31m (red) and BEL.
HOSTILE = "p\x1b[31m\x07.vhdx"


@pytest.fixture
def orphan(tmp_path: Path) -> Path:
    """A differencing VHDX whose parent (named :data:`HOSTILE`) is gone."""
    parent, child = tmp_path / HOSTILE, tmp_path / "orphan.vhdx"
    pyvhdx.create(parent, 8 * MiB)
    pyvhdx.create(child, parent=parent)
    parent.unlink()
    return child


# -- inspect of an image that does not open ---------------------------------------------


def test_inspect_reports_the_open_error_and_exits_1(
    capsys: pytest.CaptureFixture[str], orphan: Path
) -> None:
    """It printed ``opens: no`` beside ``errors: none`` and exited 0."""
    status, out, err = run(capsys, "inspect", orphan)
    assert status == 1
    assert "errors:    none" not in out
    fields = dict(line.split(":", 1) for line in out.splitlines()[:6] if not line[0].isspace())
    assert fields["opens"].strip() == "no (see errors)"
    assert out.splitlines()[5].startswith("    open: ") and "not found" in out.splitlines()[5]
    assert err.startswith(f"pyvhdx: error: {orphan}: does not open: ")
    status, out, _ = run(capsys, "inspect", "--json", orphan)
    assert status == 1
    assert json.loads(out)["open"]["opens"] is False


# -- JSON shapes ------------------------------------------------------------------------


def test_info_json_nests_the_backing_images_as_qemu_img(
    capsys: pytest.CaptureFixture[str], chain: tuple[Path, Path, Path]
) -> None:
    """backing-image held the child's parent locator; qemu's is the parent's info."""
    base, mid, top = chain
    status, out, _ = run(capsys, "info", "--json", top)
    assert status == 0
    data = json.loads(out)
    assert data["filename"] == str(top)
    assert data["backing-filename"] == data["full-backing-filename"] == str(mid)
    assert data["backing-filename-format"] == "vhdx"
    assert data["parent"]["locator"]["relative_path"] == ".\\mid.vhdx"  # as the image holds it
    middle = data["backing-image"]
    assert (middle["filename"], middle["backing-filename"]) == (str(mid), str(base))
    assert middle["disk-type"] == "differencing"
    bottom = middle["backing-image"]
    assert (bottom["filename"], bottom["disk-type"]) == (str(base), "dynamic")
    assert not {"backing-image", "backing-filename", "parent"} & bottom.keys()
    assert list(data)[-1] == "format-specific"


def test_info_backing_chain(
    capsys: pytest.CaptureFixture[str], chain: tuple[Path, Path, Path]
) -> None:
    base, mid, top = chain
    status, out, _ = run(capsys, "info", "--backing-chain", "--json", top)
    assert status == 0
    data = json.loads(out)
    assert [d["filename"] for d in data] == [str(top), str(mid), str(base)]
    assert [d.get("backing-filename") for d in data] == [str(mid), str(base), None]
    assert not any("backing-image" in d for d in data)
    status, out, _ = run(capsys, "info", "--backing-chain", top)
    assert status == 0
    images = [
        line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("image:")
    ]
    assert images == [str(top), str(mid), str(base)]
    assert f"backing file:         {mid}\n" in out
    assert out.count("\n\nimage:") == 2


def test_info_json_of_a_chain_given_as_a_url(
    capsys: pytest.CaptureFixture[str], chain: tuple[Path, Path, Path]
) -> None:
    """A parent found beside a URL is named by its URL (full-backing-filename was
    the URL joined to the working folder as a path: ``/cwd/file:/...``)."""
    pytest.importorskip("fsspec")
    _base, mid, top = chain
    status, out, _ = run(capsys, "info", "--json", top.as_uri())
    assert status == 0
    data = json.loads(out)
    assert data["backing-filename"] == data["full-backing-filename"] == mid.as_uri()


def test_info_of_an_orphan_names_the_recorded_parent(
    capsys: pytest.CaptureFixture[str], orphan: Path
) -> None:
    status, out, _ = run(capsys, "info", "--json", orphan)
    assert status == 0
    data = json.loads(out)
    assert data["backing-filename"] == ".\\" + HOSTILE  # the path the child records
    assert "full-backing-filename" not in data and "backing-image" not in data


def test_compare_json(capsys: pytest.CaptureFixture[str], chain: tuple[Path, Path, Path]) -> None:
    _base, mid, top = chain
    status, out, _ = run(capsys, "compare", "--json", mid, top)
    assert status == 1
    assert json.loads(out) == {
        "image1": {"filename": str(mid), "virtual-size": 8 * MiB},
        "image2": {"filename": str(top), "virtual-size": 8 * MiB},
        "identical": False,
        "size-mismatch": False,
        "difference": {"offset": 2 * MiB, "reason": "content"},
    }
    status, out, _ = run(capsys, "compare", "--json", top, top)
    assert (status, json.loads(out)["identical"]) == (0, True)
    status, out, _err = run(capsys, "compare", "--json", top, top.with_name("none.vhdx"))
    assert (status, out) == (2, "")


def _keys(value: object, path: str = "") -> list[str]:
    """Every key of a JSON document, as a path."""
    if isinstance(value, dict):
        return [
            k for key, v in value.items() for k in (f"{path}/{key}", *_keys(v, f"{path}/{key}"))
        ]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v, f"{path}[]")]
    return []


#: Keys that are data, not names of ours: a VHDX parent locator's entries (MS-VHDX
#: 2.6.2.6 names them parent_linkage, relative_path...) and hashlib's algorithm names.
_DATA_KEYS = re.compile(r".*/(locator|parent-locator|values)/[^/]+$|.*/digests/[^/]+$")


def test_every_json_key_is_kebab_case(
    capsys: pytest.CaptureFixture[str], chain: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, mid, top = chain
    other = tmp_path / "other.vhdx"
    pyvhdx.create(other, 8 * MiB)
    commands: list[list[str | Path]] = [
        ["info", top],
        ["info", "--backing-chain", top],
        ["create", tmp_path / "new.vhdx", "8M"],
        ["create", "--parent", base, tmp_path / "child.vhdx"],
        ["check", top],
        ["map", top],
        ["inspect", top],
        ["hash", "-a", "sha3_256", top],
        ["compare", mid, top],
        ["measure", top],
        ["diff", base, top],
        ["convert", top, tmp_path / "flat.vhd"],
        ["resize", other, "16M"],
        ["compact", other],
        ["merge", "--keep-child", top],
    ]
    for argv in commands:
        status, out, err = run(capsys, *argv, "--json")
        assert status in (0, 1), (argv, err)
        keys = _keys(json.loads(out))
        bad = [
            k
            for k in keys
            if re.search(r"[_A-Z]", k.rsplit("/", 1)[-1]) and not _DATA_KEYS.match(k)
        ]
        assert not bad, (argv, bad)


# -- exit codes: a missing file is 2, a closed pipe 0 -----------------------------------

#: Every command, its files named ``{img}`` (an image) or ``{new}`` (a file it makes).
COMMANDS = {
    "info": ["info", "{img}"],
    "convert": ["convert", "{img}", "{new}.vhd"],
    "create": ["create", "--parent", "{img}", "{new}.vhdx"],
    "merge": ["merge", "{img}"],
    "check": ["check", "{img}"],
    "map": ["map", "{img}"],
    "compare": ["compare", "{img}", "{img}"],
    "inspect": ["inspect", "{img}"],
    "hash": ["hash", "{img}"],
    "resize": ["resize", "{img}", "16M"],
    "compact": ["compact", "{img}"],
    "set-parent": ["set-parent", "{img}", "{img}"],
    "set": ["set", "--reset-identifier", "{img}"],
    "measure": ["measure", "{img}"],
    "diff": ["diff", "{img}", "{img}"],
    "apply": ["apply", "{img}", "{img}"],
    "serve": ["serve", "--socket", "{new}.sock", "{img}"],
    "mount": ["mount", "{img}", "{new}"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "missing.vhdx"
    argv = [a.format(img=missing, new=tmp_path / "new") for a in COMMANDS[command]]
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err == f"pyvhdx: error: {missing}: No such file or directory\n"


class ClosedPipe:
    """A stdout whose reader is gone: every write raises EPIPE."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{top}"],
        ["info", "--json", "{top}"],
        ["map", "{top}"],
        ["map", "--json", "{top}"],
        ["inspect", "{top}"],
        ["check", "{top}"],
        ["hash", "{top}"],
        ["compare", "{top}", "{top}"],
        ["diff", "{base}", "{top}"],
        ["measure", "{top}"],
    ],
    ids=" ".join,
)
def test_a_closed_pipe_exits_0(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    chain: tuple[Path, Path, Path],
    argv: list[str],
) -> None:
    """``pyvhdx map big.vhdx | head -1`` exited 1 (inspect 0)."""
    base, _, top = chain
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    status = main([a.format(base=base, top=top) for a in argv])
    assert status == 0
    assert capsys.readouterr().err == ""


def test_a_closed_pipe_exits_0_in_a_process(chain: tuple[Path, Path, Path]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyvhdx", "map", os.fspath(chain[2])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the first line is written
    assert (proc.wait(timeout=60), proc.stderr.read()) == (0, b"")
    proc.stderr.close()


# -- errors: one line, escaped, naming their file ---------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["hash", "{c}"],
        ["map", "{c}"],
        ["compare", "{c}", "{c}"],
        ["merge", "{c}"],
        ["diff", "{c}", "{c}"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_hostile_parent_name_reaches_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], orphan: Path, argv: list[str]
) -> None:
    """The parent locator's ESC and BEL were printed raw in these commands' errors."""
    status, _out, err = run(capsys, *(a.format(c=orphan) for a in argv))
    assert status in (1, 2)
    assert "\x1b" not in err and "\x07" not in err
    assert "p\\x1b[31m\\x07.vhdx" in err
    assert err.startswith(f"pyvhdx: error: {orphan}: ") and err.count("\n") == 1


def test_text_reports_escape_what_the_image_holds(
    capsys: pytest.CaptureFixture[str], orphan: Path
) -> None:
    for argv in (["info"], ["info", "--backing-chain"], ["inspect"]):
        _, out, err = run(capsys, *argv, orphan)
        assert "p\\x1b[31m\\x07.vhdx" in out
        assert not {"\x1b", "\x07"} & set(out + err)


def test_a_hostile_file_name_is_escaped_in_text_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """print_lines escapes what a report did not (check's first line is the file name)."""
    image = tmp_path / HOSTILE
    pyvhdx.create(image, 8 * MiB)
    for argv in (["check"], ["info"], ["hash"]):
        status, out, _ = run(capsys, *argv, image)
        assert status == 0, argv
        assert "p\\x1b[31m\\x07.vhdx" in out and not {"\x1b", "\x07"} & set(out), argv


def test_errors_name_their_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    vhd = tmp_path / "a.vhd"
    pyvhdx.create(vhd, 8 * MiB)
    status, _, err = run(capsys, "resize", vhd, "3000G")  # said "resize: size must be..."
    assert (status, err.split(": ")[:3]) == (2, ["pyvhdx", "error", str(vhd)])
    status, _, err = run(capsys, "create", tmp_path / "b.vhd", "2041G")
    assert (status, err.split(": ")[:3]) == (1, ["pyvhdx", "error", str(tmp_path / "b.vhd")])


def test_an_error_about_the_file_being_built_names_the_destination(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """convert builds ``.d.vhdx.<random>.pyvhdx-tmp``: a failure that names the file it
    writes names that, which the user never asked for."""
    from pyvhdx.errors import InvalidImageError

    convert_module = importlib.import_module("pyvhdx.convert")  # pyvhdx.convert: the function

    def failing(img: object, tmp: Path, *args: object) -> None:
        raise InvalidImageError(f"{tmp}: no room for the BAT")

    monkeypatch.setattr(convert_module, "_to_image", failing)
    destination = tmp_path / "d.vhdx"
    status, _, err = run(capsys, "convert", SAMPLE_IMAGES / "dynamic.vhd", destination)
    assert status == 1
    assert err == f"pyvhdx: error: {destination}: no room for the BAT\n"


def test_a_loop_of_symbolic_links_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Path.resolve raised RuntimeError ("Symlink loop") through convert, merge, apply
    and create: a traceback."""
    monkeypatch.chdir(tmp_path)
    os.symlink("l1", "l2")
    os.symlink("l2", "l1")
    pyvhdx.create("p.vhdx", 8 * MiB)
    for argv in (
        ["convert", "l1", "x.raw"],
        ["merge", "l1"],
        ["apply", "p.vhdx", "l1"],
        ["create", "-f", "vhdx", "--parent", "p.vhdx", "l1"],
    ):
        status, out, err = run(capsys, *argv)
        assert (status, out) == (1, ""), argv
        assert err.endswith(": Too many levels of symbolic links\n") and err.count("\n") == 1


def test_a_name_the_terminal_cannot_encode(tmp_path: Path) -> None:
    """``PYTHONIOENCODING=ascii pyvhdx info ünï.vhdx``: UnicodeEncodeError, a traceback."""
    image = tmp_path / "ünï.vhdx"
    pyvhdx.create(image, 8 * MiB)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for path, status in ((image, 0), (tmp_path / "nö.vhdx", 2)):
        proc = subprocess.run(
            [sys.executable, "-m", "pyvhdx", "info", os.fspath(path)], capture_output=True, env=env
        )
        assert proc.returncode == status, proc.stderr
        assert b"Traceback" not in proc.stderr
    assert b"n\\xf6.vhdx: No such file" in proc.stderr


# -- start-up ---------------------------------------------------------------------------


def test_the_command_line_starts_without_the_heavy_modules() -> None:
    """``pyvhdx --help`` took 0.23 s, 155 ms of it importing numpy, convert and tqdm
    (every reader and writer): a command imports what it needs when it runs."""
    code = """if True:
        import contextlib, io, sys
        import pyvhdx.cli
        with contextlib.redirect_stdout(io.StringIO()):
            assert pyvhdx.cli.main(["--help"]) == 0
        heavy = {"numpy", "tqdm", "construct", "crc32c", "pyvhdx.image", "pyvhdx.convert",
                 "pyvhdx.cli.reports", "pyvhdx.info", "dataclasses", "json", "traceback",
                 "fractions"}
        print(sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy))
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "[]\n"


def test_a_chosen_subcommand_parses_as_with_every_parser_built() -> None:
    """``main`` builds the chosen subcommand only (all took a fifth of the start-up):
    each subcommand's help reads as with all built, and a command line that runs
    none (``--help``, a typo) lists them all."""
    import argparse

    from pyvhdx.cli import build_parser
    from pyvhdx.cli.commands import COMMAND_NAMES

    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    full = subparsers(build_parser())
    assert list(full) == list(COMMAND_NAMES)
    for name in COMMAND_NAMES:
        lazy = subparsers(build_parser(["--debug", name, "x"]))
        assert list(lazy) == [name]  # the others are not built
        assert lazy[name].format_help() == full[name].format_help(), name
    for argv in (["--help"], ["--help", "info"], ["--he", "info"], ["infox", "x"], []):
        parser = build_parser(argv)
        assert parser.format_help() == build_parser().format_help(), argv
        assert list(subparsers(parser)) == list(COMMAND_NAMES)


def test_lazy_package_attributes_stay_the_functions() -> None:
    """``pyvhdx.open``, ``create``, ``convert`` and ``merge`` are the functions, before and
    after their modules are imported (the import system sets the attribute to the module)."""
    code = (
        "import importlib, pyvhdx\n"
        "for name in ('create', 'convert', 'merge'):\n"
        "    importlib.import_module('pyvhdx.' + name)\n"
        "print([callable(getattr(pyvhdx, n)) and not hasattr(getattr(pyvhdx, n), '__path__')"
        " and getattr(pyvhdx, n).__name__ for n in ('open', 'create', 'convert', 'merge')])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "['open_image', 'create', 'convert_image', 'merge_image']\n"
