"""Image locks compatible with qemu's (issue 13, "No locking"; SPEC-NOTES pitfall 24),
and special files refused at open.

Real processes only: a pyvhdx holder in a subprocess that waits on its stdin, a
``qemu-io`` holder fed commands through a pipe, ``qemu-img``/``qemu-io`` as the
other side. The lock bytes are checked against ``/proc/locks`` beside qemu's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.errors import ImageLockedError, InvalidArgumentError, PyvhdxError
from tests.conftest import MiB, find_qemu_img

QEMU_FORMATS = {"vhdx": "vhdx", "vhd": "vpc"}
HOLD_TIMEOUT = 30


def _make(tmp_path: Path, fmt: str, name: str = "disk") -> Path:
    path = tmp_path / f"{name}.{fmt}"
    pyvhdx.create(path, 8 * MiB, format=fmt)
    return path


@pytest.fixture(params=["vhdx", "vhd"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return _make(tmp_path, request.param)


def _qemu_io() -> str:
    return str(Path(find_qemu_img()).with_name("qemu-io"))


def _qfmt(path: Path) -> str:
    return QEMU_FORMATS[path.suffix.lstrip(".")]


def _lock_lines(path: Path) -> list[tuple[int, int]]:
    """OFD lock ranges on ``path`` in /proc/locks, as (start, end) pairs, sorted."""
    ino = os.stat(path).st_ino
    out = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "OFDLCK" not in fields:
                continue
            dev_ino = fields[-3]
            if int(dev_ino.rsplit(":", 1)[1]) == ino:
                out.append((int(fields[-2]), int(fields[-1])))
    return sorted(out)


def _lock_bytes(path: Path) -> list[int]:
    return sorted({b for s, e in _lock_lines(path) for b in range(s, e + 1)})


# -- holders in other processes ---------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys
    import pyvhdx
    path, mode, share = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    try:
        img = pyvhdx.open(path, mode, force_share=share)
    except pyvhdx.PyvhdxError as exc:
        print("ERROR", type(exc).__name__, exc, flush=True)
        sys.exit(3)
    print("OPEN", flush=True)
    sys.stdin.read()
    if mode == "r+":
        img.write_at(0, b"x" * 512)
    img.close()
    print("CLOSED", flush=True)
    """
)


class Holder:
    """A subprocess that opens an image and keeps it open until its stdin closes."""

    def __init__(self, path: Path, mode: str = "r+", force_share: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), mode, "1" if force_share else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline().strip()

    @property
    def opened(self) -> bool:
        return self.first == "OPEN"

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=HOLD_TIMEOUT)
        assert self.proc.returncode == 0, (self.first, out, err)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=HOLD_TIMEOUT)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.kill()


class QemuHolder:
    """``qemu-io`` keeping an image open (commands come from a pipe it waits on)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        cmd = [_qemu_io(), "-f", _qfmt(path)]
        if read_only:
            cmd.append("-r")
        self.path = path
        self.proc = subprocess.Popen(
            [*cmd, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Wait until qemu holds its locks (its open takes a moment).
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not _lock_lines(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _, err = self.proc.communicate(timeout=HOLD_TIMEOUT)
                pytest.fail(f"qemu-io did not open {path}: {err}")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("quit\n", timeout=HOLD_TIMEOUT)


@pytest.fixture
def qemu_holders() -> Iterator[list[QemuHolder]]:
    made: list[QemuHolder] = []
    yield made
    for q in made:
        if q.proc.poll() is None:
            q.proc.kill()
            q.proc.communicate(timeout=HOLD_TIMEOUT)


def _qemu_write(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_qemu_io(), "-f", _qfmt(path), "-c", "write 0 1M", str(path)],
        capture_output=True,
        text=True,
        timeout=HOLD_TIMEOUT,
    )


def _qemu_info(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_qemu_img(), "info", "-f", _qfmt(path), str(path)],
        capture_output=True,
        text=True,
        timeout=HOLD_TIMEOUT,
    )


def _cli(*args: str, timeout: float = HOLD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyvhdx", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- pyvhdx against pyvhdx ------------------------------------------------------------


def test_two_processes_rw_second_is_refused(image: Path, holders: list[Holder]) -> None:
    first = Holder(image, "r+")
    holders.append(first)
    assert first.opened, first.first
    with pytest.raises(ImageLockedError) as info:
        pyvhdx.open(image, "r+")
    msg = str(info.value)
    assert str(image) in msg and "another process" in msg and "-U" in msg
    assert info.value.filename == str(image)
    # and a second process is refused as this one is
    second = Holder(image, "r+")
    holders.append(second)
    assert second.first.startswith("ERROR ImageLockedError"), second.first
    first.finish()
    # released on close: now this process gets it
    with pyvhdx.open(image, "r+") as img:
        assert img.read_at(0, 512) == b"x" * 512


def test_two_opens_in_one_process(image: Path) -> None:
    with pyvhdx.open(image, "r+") as img:
        with pytest.raises(ImageLockedError):
            pyvhdx.open(image, "r+")
        with pytest.raises(ImageLockedError):
            pyvhdx.open(image)  # a reader is refused while a writer holds it
        with pyvhdx.open(image, force_share=True) as peek:
            assert peek.virtual_size == img.virtual_size
    with pyvhdx.open(image, "r+"):  # released on close
        pass


def test_refused_open_leaves_no_lock_behind(image: Path) -> None:
    with pyvhdx.open(image) as reader:
        before = _lock_lines(image)
        with pytest.raises(ImageLockedError):
            pyvhdx.open(image, "r+")
        assert _lock_lines(image) == before  # the refused writer released its bytes
        assert reader.read_at(0, 512) == bytes(512)
    assert _lock_lines(image) == []


def test_readers_coexist_and_block_writers(image: Path, holders: list[Holder]) -> None:
    with pyvhdx.open(image) as a, pyvhdx.open(image) as b:
        assert a.read_at(0, 512) == b.read_at(0, 512)
        other = Holder(image, "r")
        holders.append(other)
        assert other.opened, other.first
        with pytest.raises(ImageLockedError):
            pyvhdx.open(image, "r+")
        writer = Holder(image, "r+")
        holders.append(writer)
        assert writer.first.startswith("ERROR ImageLockedError"), writer.first
        other.finish()
    with pyvhdx.open(image, "r+"):
        pass


def test_writer_in_other_process_blocks_reader(image: Path, holders: list[Holder]) -> None:
    h = Holder(image, "r+")
    holders.append(h)
    assert h.opened
    with pytest.raises(ImageLockedError):
        pyvhdx.open(image)
    with pyvhdx.open(image, force_share=True) as img:
        assert img.read_at(0, 512) == bytes(512)
    h.finish()


def test_lock_released_when_holder_is_killed(image: Path, holders: list[Holder]) -> None:
    h = Holder(image, "r+")
    holders.append(h)
    assert h.opened
    with pytest.raises(ImageLockedError):
        pyvhdx.open(image, "r+")
    os.kill(h.proc.pid, signal.SIGKILL)
    h.proc.wait(timeout=HOLD_TIMEOUT)
    with pyvhdx.open(image, "r+") as img:
        img.write_at(0, b"y" * 512)


def test_force_share_is_read_only(image: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="force"):
        pyvhdx.open(image, "r+", force_share=True)
    with pyvhdx.open(image, force_share=True):
        assert _lock_lines(image) == []  # takes no lock


def test_file_object_is_not_locked(image: Path) -> None:
    with open(image, "rb") as f, pyvhdx.open(f) as img:
        assert _lock_lines(image) == []
        with pyvhdx.open(image, "r+"):  # the caller's file object is the caller's to lock
            assert img.read_at(0, 512) == bytes(512)


def test_lock_bytes_are_qemus(image: Path) -> None:
    """pyvhdx's bytes are exactly qemu 7.2's (file-posix.c, 100+perm / 200+perm)."""
    with pyvhdx.open(image, "r+"):
        assert _lock_bytes(image) == [100, 101, 103, 201, 203]
    with pyvhdx.open(image):
        assert _lock_bytes(image) == [100, 201, 203]
    assert _lock_bytes(image) == []


# -- pyvhdx against qemu --------------------------------------------------------------


@pytest.mark.oracle
def test_qemu_matches_pyvhdx_lock_bytes(image: Path, qemu_holders: list[QemuHolder]) -> None:
    q = QemuHolder(image)
    qemu_holders.append(q)
    qemu_rw = _lock_bytes(image)
    q.close()
    q = QemuHolder(image, read_only=True)
    qemu_holders.append(q)
    qemu_ro = _lock_bytes(image)
    q.close()
    with pyvhdx.open(image, "r+"):
        ours_rw = _lock_bytes(image)
    with pyvhdx.open(image):
        ours_ro = _lock_bytes(image)
    assert (ours_rw, ours_ro) == (qemu_rw, qemu_ro) == ([100, 101, 103, 201, 203], [100, 201, 203])


@pytest.mark.oracle
def test_pyvhdx_writer_refuses_qemu(image: Path) -> None:
    with pyvhdx.open(image, "r+"):
        w = _qemu_write(image)
        assert w.returncode != 0
        assert 'Failed to get "write" lock' in w.stderr
        i = _qemu_info(image)
        assert i.returncode != 0
        assert "lock" in i.stderr
    assert _qemu_write(image).returncode == 0
    assert _qemu_info(image).returncode == 0
    with pyvhdx.open(image) as img:
        assert img.read_at(0, 4096) == b"\xcd" * 4096  # qemu-io's default pattern


@pytest.mark.oracle
def test_pyvhdx_reader_refuses_qemu_writer_not_reader(image: Path) -> None:
    with pyvhdx.open(image):
        w = _qemu_write(image)
        assert w.returncode != 0 and "lock" in w.stderr
        assert _qemu_info(image).returncode == 0  # qemu-img info only reads
        r = subprocess.run(
            [_qemu_io(), "-r", "-f", _qfmt(image), "-c", "read 0 1M", str(image)],
            capture_output=True,
            text=True,
            timeout=HOLD_TIMEOUT,
        )
        assert r.returncode == 0, r.stderr


@pytest.mark.oracle
def test_qemu_writer_refuses_pyvhdx(image: Path, qemu_holders: list[QemuHolder]) -> None:
    q = QemuHolder(image)
    qemu_holders.append(q)
    with pytest.raises(ImageLockedError):
        pyvhdx.open(image, "r+")
    with pytest.raises(ImageLockedError):
        pyvhdx.open(image)
    with pyvhdx.open(image, force_share=True) as img:
        assert img.virtual_size == 8 * MiB
    ok = _cli("info", "-U", str(image))
    assert ok.returncode == 0, ok.stderr
    assert "virtual size" in ok.stdout
    refused = _cli("info", str(image))
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvhdx: error:"), refused.stderr
    assert "another process" in lines[0] and "-U" in lines[0]
    assert _cli("inspect", "-U", str(image)).returncode == 0
    assert _cli("hash", "-U", str(image)).returncode == 0
    q.close()
    with pyvhdx.open(image, "r+"):
        pass


@pytest.mark.oracle
def test_qemu_reader_blocks_pyvhdx_writer_only(image: Path, qemu_holders: list[QemuHolder]) -> None:
    q = QemuHolder(image, read_only=True)
    qemu_holders.append(q)
    with pytest.raises(ImageLockedError):
        pyvhdx.open(image, "r+")
    with pyvhdx.open(image) as img:
        assert img.read_at(0, 512) == bytes(512)
    q.close()
    with pyvhdx.open(image, "r+"):
        pass


@pytest.mark.oracle
def test_chain_parent_lock_and_force_share(tmp_path: Path, qemu_holders: list[QemuHolder]) -> None:
    """A parent opened for a chain is locked too, and inherits the child's force_share."""
    base = _make(tmp_path, "vhdx", "base")
    child = tmp_path / "child.avhdx"
    pyvhdx.create(child, parent=base)
    with pyvhdx.open(child, "r+"):
        assert _lock_bytes(base) == [100, 201, 203]  # the parent: a reader's lock
        with pytest.raises(ImageLockedError):
            pyvhdx.open(base, "r+")
    q = QemuHolder(base)  # qemu writes the parent: the chain must not be read unlocked
    qemu_holders.append(q)
    with pytest.raises(ImageLockedError, match=r"base\.vhdx"):
        pyvhdx.open(child)
    with pyvhdx.open(child, force_share=True) as img:
        assert img.parent is not None
        assert _lock_lines(child) == []
        assert img.read_at(0, 512) == bytes(512)
    q.close()


# -- special files ----------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "image.fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "argv",
    [["info"], ["check"], ["inspect"], ["hash"], ["map"], ["convert", "{out}"]],
    ids=["info", "check", "inspect", "hash", "map", "convert"],
)
def test_cli_refuses_fifo_at_once(fifo: Path, tmp_path: Path, argv: list[str]) -> None:
    out = tmp_path / "out.vhdx"
    cmd = [argv[0], str(fifo), *(a.format(out=out) for a in argv[1:])]
    start = time.monotonic()
    r = _cli(*cmd, timeout=20)  # a hang on the FIFO would raise TimeoutExpired
    assert time.monotonic() - start < 20
    assert r.returncode in (1, 2), r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvhdx: error:"), r.stderr
    assert "FIFO" in lines[0] and str(fifo) in lines[0]
    assert not out.exists()


def test_open_refuses_fifo(fifo: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pyvhdx\n"
            "try:\n    pyvhdx.open(sys.argv[1])\n"
            "except pyvhdx.InvalidArgumentError as e:\n    print(e); sys.exit(0)\n"
            "sys.exit(5)",
            str(fifo),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 0, r
    assert "FIFO" in r.stdout
    for mode in ("r", "r+"):  # and in this process too (it returned above, so no hang)
        with pytest.raises(PyvhdxError, match="FIFO"):
            pyvhdx.open(fifo, mode)


@pytest.mark.parametrize("what", ["directory", "chardev"])
def test_open_refuses_other_special_files(tmp_path: Path, what: str) -> None:
    path = tmp_path if what == "directory" else Path(os.devnull)
    if what == "chardev" and not Path(os.devnull).is_char_device():
        pytest.skip("no character device to try")
    with pytest.raises(InvalidArgumentError, match=what.replace("chardev", "character device")):
        pyvhdx.open(path)


def test_socket_refused(tmp_path: Path) -> None:
    import socket

    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets")
    path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
        with pytest.raises(InvalidArgumentError, match="socket"):
            pyvhdx.open(path)
    finally:
        s.close()


# -- the commands that change an image in place, against a second opener --------------


def _in_place_commands(image: Path, tmp_path: Path) -> list[list[str]]:
    """Every command that rewrites an image where it is, each on a file that it would
    change: ``image`` itself, and for set-parent a child in a folder of its own."""
    fmt = image.suffix[1:]
    folder = tmp_path / "chain"
    folder.mkdir()
    pyvhdx.create(folder / f"old.{fmt}", 8 * MiB, format=fmt)
    pyvhdx.create(folder / f"new.{fmt}", 8 * MiB, format=fmt)
    child = folder / f"child.{fmt}"
    pyvhdx.create(child, parent=folder / f"old.{fmt}")
    commands = [
        ["resize", str(image), "16M"],
        ["compact", str(image), "--mode", "quick"],
        ["set-parent", str(child), str(folder / f"new.{fmt}"), "--ignore-id-mismatch"],
    ]
    if fmt == "vhdx":
        commands.append(["set", str(image), "--reset-identifier"])
    return commands


@pytest.mark.parametrize("holder", ["pyvhdx reader", "qemu-io writer"])
def test_in_place_commands_refuse_a_second_opener(
    image: Path, tmp_path: Path, holders: list[Holder], qemu_holders: list[QemuHolder], holder: str
) -> None:
    """resize, compact, set-parent and set while another process holds the image (a
    pyvhdx reader, or qemu-io writing): each refuses with one line naming the lock
    and exit status 1, the file keeps every byte, and once the holder is gone the
    same command runs (the way forward)."""
    import hashlib

    vhdx = image.suffix == ".vhdx"
    for argv in _in_place_commands(image, tmp_path):
        target = Path(argv[1])
        before = hashlib.sha256(target.read_bytes()).hexdigest()
        # qemu opens no VHDX differencing disk: a pyvhdx writer holds that child instead
        by_qemu = holder == "qemu-io writer" and not (argv[0] == "set-parent" and vhdx)
        if by_qemu:
            q = QemuHolder(target)
            qemu_holders.append(q)
        else:
            h = Holder(target, "r" if holder == "pyvhdx reader" else "r+")
            holders.append(h)
            assert h.opened, h.first
        r = _cli(*argv)
        assert r.returncode == 1, (argv, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "lock" in r.stderr.lower(), (argv, r.stderr)
        assert hashlib.sha256(target.read_bytes()).hexdigest() == before, argv
        if by_qemu:
            q.close()
        else:
            h.finish()
        r = _cli(*argv)
        assert r.returncode == 0, (argv, r.stderr)
