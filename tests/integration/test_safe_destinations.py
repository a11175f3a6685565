"""``create`` and ``convert`` never destroy what they did not create, and leave nothing.

Issue 13: a new image is built as ``.NAME.RANDOM.pyvhdx-tmp`` beside the
destination and renamed into place (``pyvhdx.newfile``). Every test runs the real
CLI in a child process (real signals, real resource limits, real device nodes)
and then looks at the folder: which files exist, and the destination's type,
inode and bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyvhdx
from pyvhdx.newfile import (
    TEMP_SUFFIX,
    DestinationError,
    DestinationKind,
    check_destination,
    inspect_destination,
    temp_pattern,
)

MiB = 1 << 20
PYVHDX = [sys.executable, "-m", "pyvhdx"]
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def cli(
    *args: str, limit: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``pyvhdx ARGS``; ``limit``: RLIMIT_FSIZE for the child (EFBIG past it)."""

    def preexec() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*PYVHDX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        preexec_fn=preexec,
        check=False,
    )


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def content_sha(path: Path) -> str:
    """SHA-256 of an image's virtual disk."""
    with pyvhdx.open(path) as img:
        h = hashlib.sha256()
        for pos in range(0, img.virtual_size, 4 * MiB):
            h.update(img.read_at(pos, min(4 * MiB, img.virtual_size - pos)))
    return h.hexdigest()


def temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(TEMP_SUFFIX))


@dataclass(frozen=True)
class Snapshot:
    """The folder's names, and one file's type, inode and SHA-256 (None if absent)."""

    names: tuple[str, ...]
    mode: int | None
    inode: int | None
    digest: str | None


def snapshot(folder: Path, path: Path) -> Snapshot:
    names = tuple(sorted(os.listdir(folder)))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Snapshot(names, None, None, None)
    digest = sha(path) if stat.S_ISREG(st.st_mode) else None
    return Snapshot(names, st.st_mode, st.st_ino, digest)


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 1 with a single ``pyvhdx: error:`` line holding every needle."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("pyvhdx: error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 MiB raw disk: non-zero data with a hole and a zero stretch."""
    path = tmp_path_factory.mktemp("src") / "source.raw"
    pattern = bytes(range(1, 256)) * (MiB // 255 + 1)
    with path.open("wb") as f:
        for i in range(24):
            if i in (5, 6):
                f.seek(MiB, os.SEEK_CUR)  # a hole
            elif i == 9:
                f.write(bytes(MiB))  # written zeros
            else:
                f.write(pattern[i : i + MiB])
    return path


# -- what may be a destination ------------------------------------------------------------


def _char_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # as /dev/null
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD)")


def test_create_refuses_a_character_device(tmp_path: Path) -> None:
    node = tmp_path / "disk.vhdx"
    _char_device(node)
    before = snapshot(tmp_path, node)
    for args in (["--overwrite"], []):
        result = cli("create", *args, str(node), "1G")
        one_error_line(result, f"{node}: is a character device", "refused")
        after = snapshot(tmp_path, node)
        assert after == before
        assert after.mode is not None and stat.S_ISCHR(after.mode)
        assert os.lstat(node).st_rdev == os.makedev(1, 3)
    with pytest.raises(DestinationError, match="character device"):
        pyvhdx.create(node, MiB, format="vhd", overwrite=True)
    assert snapshot(tmp_path, node) == before


def test_convert_refuses_a_character_device(tmp_path: Path, source: Path) -> None:
    node = tmp_path / "out"
    _char_device(node)
    before = snapshot(tmp_path, node)
    for fmt in ("raw", "vhdx"):
        result = cli("convert", "--force", str(source), str(node), "-O", fmt)
        one_error_line(result, f"{node}: is a character device")
        assert str(source) not in result.stderr  # the destination is at fault
        assert snapshot(tmp_path, node) == before
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_fifo_destination_is_refused_at_once(tmp_path: Path, source: Path) -> None:
    fifo = tmp_path / "pipe.vhdx"
    os.mkfifo(fifo)
    before = snapshot(tmp_path, fifo)
    runs = [
        ("create", "--overwrite", str(fifo), "1M"),
        ("create", str(fifo), "1M"),
        ("convert", "--force", str(source), str(fifo), "-O", "raw"),
        ("convert", "--force", str(source), str(fifo)),
    ]
    for args in runs:
        # Opening a FIFO with no reader blocks forever: the timeout fails the test.
        result = cli(*args, timeout=30)
        one_error_line(result, f"{fifo}: is a FIFO")
        assert snapshot(tmp_path, fifo) == before
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_directory_and_socket_are_refused(tmp_path: Path, source: Path) -> None:
    folder = tmp_path / "d.vhdx"
    folder.mkdir()
    (folder / "inside").write_bytes(b"x")
    sock_path = tmp_path / "s.vhd"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        for path, kind in ((folder, "directory"), (sock_path, "socket")):
            before = snapshot(tmp_path, path)
            one_error_line(cli("create", "--overwrite", str(path), "1M"), f"is a {kind}")
            one_error_line(cli("convert", "--force", str(source), str(path)), f"is a {kind}")
            assert snapshot(tmp_path, path) == before
        assert os.listdir(folder) == ["inside"]
    finally:
        sock.close()


def test_existing_file_needs_overwrite_and_keeps_its_mode(tmp_path: Path, source: Path) -> None:
    dst = tmp_path / "d.vhd"
    dst.write_bytes(b"precious")
    os.chmod(dst, 0o600)
    before = snapshot(tmp_path, dst)
    one_error_line(cli("create", str(dst), "1M"), f"{dst}: exists", "--force")
    one_error_line(cli("convert", str(source), str(dst)), f"{dst}: exists", "--force")
    assert snapshot(tmp_path, dst) == before
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pyvhdx.create(dst, MiB)
    assert cli("create", "--overwrite", str(dst), "1M").returncode == 0
    after = snapshot(tmp_path, dst)
    assert after.names == before.names  # nothing left beside it
    assert after.inode != before.inode  # a new file renamed over the old one
    assert after.mode is not None and stat.S_IMODE(after.mode) == 0o600
    with pyvhdx.open(dst) as img:
        assert img.virtual_size == MiB


def test_symlink_is_followed_and_kept(tmp_path: Path, source: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "disk.vhdx"
    target.write_bytes(b"old")
    link = tmp_path / "link.vhdx"
    link.symlink_to(target)
    one_error_line(cli("create", str(link), "1M"), "exists")
    assert target.read_bytes() == b"old"
    assert cli("create", "--overwrite", str(link), "2M").returncode == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    with pyvhdx.open(target) as img:
        assert img.virtual_size == 2 * MiB
    assert sorted(os.listdir(real_dir)) == ["disk.vhdx"]  # built beside the target
    assert sorted(os.listdir(tmp_path)) == ["link.vhdx", "real"]
    # convert through the link; a dangling link makes the file where it points
    raw_target = real_dir / "flat.raw"
    raw_link = tmp_path / "flat.raw"
    raw_link.symlink_to(raw_target)
    one_error_line(cli("convert", str(source), str(raw_link)), "exists")
    assert not raw_target.exists()
    assert cli("convert", "--force", str(source), str(raw_link)).returncode == 0
    assert raw_link.is_symlink() and sha(raw_target) == sha(source)
    assert temps(real_dir) == [] and temps(tmp_path) == []


def _first_block_device() -> Path | None:
    with os.scandir("/dev") as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if stat.S_ISBLK(os.lstat(entry.path).st_mode):
                    return Path(entry.path)
    return None


def test_destination_decisions(tmp_path: Path) -> None:
    """check_destination's rules, without writing anything."""
    missing = tmp_path / "new.vhdx"
    assert check_destination(missing, overwrite=False).kind is DestinationKind.MISSING
    regular = tmp_path / "old.vhdx"
    regular.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="force=True"):
        check_destination(regular, overwrite=False, option="force")
    assert check_destination(regular, overwrite=True).kind is DestinationKind.REGULAR
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        check_destination(dangling, overwrite=False)
    dest = check_destination(dangling, overwrite=True)
    assert (dest.kind, dest.symlink, dest.target) == (
        DestinationKind.MISSING,
        True,
        tmp_path / "nowhere",
    )
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert inspect_destination(fifo).kind is DestinationKind.FIFO
    with pytest.raises(DestinationError, match="FIFO"):
        check_destination(fifo, overwrite=True, allow_block_device=True)
    dev = _first_block_device()
    if dev is not None:  # examined with lstat/stat only: nothing is opened
        assert inspect_destination(dev).kind is DestinationKind.BLOCK_DEVICE
        with pytest.raises(DestinationError, match="block device; refused: no devices"):
            check_destination(dev, overwrite=True, block_device_hint="no devices")
        with pytest.raises(FileExistsError):
            check_destination(dev, overwrite=False, allow_block_device=True)
        assert check_destination(dev, overwrite=True, allow_block_device=True).target == dev
    # the temporary names of one destination are not another's
    assert temp_pattern("a").fullmatch(".a.abcd1234.pyvhdx-tmp")
    assert not temp_pattern("a").fullmatch(".a.b.abcd1234.pyvhdx-tmp")
    assert not temp_pattern("a.b").fullmatch(".a.abcd1234.pyvhdx-tmp")
    assert not temp_pattern("a").fullmatch(".a.abcd1234.pyvhdx-tmp.x")


# -- a full disk (RLIMIT_FSIZE: EFBIG) -----------------------------------------------------

LIMIT = 8 * MiB

FULL_DISK_CASES = {
    "create-vhdx": ["create", "--preallocate", "--type", "fixed", "{dst}.vhdx", "64M"],
    "create-vhd": ["create", "--preallocate", "--type", "fixed", "{dst}.vhd", "64M"],
    "convert-vhdx": ["convert", "{src}", "{dst}.vhdx"],
    "convert-vhd-fixed": ["convert", "--type", "fixed", "{src}", "{dst}.vhd"],
    "convert-raw": ["convert", "{src}", "{dst}.raw"],
}


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("case", sorted(FULL_DISK_CASES))
def test_full_disk_leaves_everything_as_it_was(
    tmp_path: Path, source: Path, case: str, existing: bool
) -> None:
    args = [a.format(src=source, dst=tmp_path / "out") for a in FULL_DISK_CASES[case]]
    dst = Path(args[-2] if case.startswith("create") else args[-1])
    if existing:
        dst.write_bytes(b"the old image " * 1000)
        args.insert(1, "--overwrite" if case.startswith("create") else "--force")
    source_digest = sha(source)
    before = snapshot(tmp_path, dst)
    result = cli(*args, limit=LIMIT)
    one_error_line(result, f"pyvhdx: error: {dst}: File too large")
    assert TEMP_SUFFIX not in result.stderr
    assert snapshot(tmp_path, dst) == before  # names (no temp), inode, bytes
    assert sha(source) == source_digest
    # the same command with room succeeds
    assert cli(*args).returncode == 0
    assert temps(tmp_path) == []


# -- signals -----------------------------------------------------------------------------


def write_pattern(path: Path, mib: int) -> Path:
    """``mib`` MiB of non-zero data (no 64 KiB piece is all zeros)."""
    block = bytes(range(1, 256)) * (4 * MiB // 255 + 1)
    with path.open("wb") as f:
        for i in range(mib // 4):
            f.write(block[i % 255 : i % 255 + 4 * MiB])
        f.write(block[: mib % 4 * MiB])
    return path


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 MiB of non-zero data: a convert long enough to be killed halfway."""
    return write_pattern(tmp_path_factory.mktemp("big") / "big.raw", 96)


def _wait_for_temp(
    folder: Path, proc: subprocess.Popen[str], old: set[str], timeout: float = 30
) -> bool:
    """Wait until ``proc`` has made its temporary file (a name not in ``old``); False
    if it ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if set(temps(folder)) - old:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("no temporary file appeared")


@dataclass
class Kill:
    sig: signal.Signals
    delay: float
    returncode: int
    stderr: str
    finished: bool  # the destination held the new file afterwards


def kill_points(
    folder: Path,
    args: list[str],
    sig: signal.Signals,
    delays: list[float],
    check_destination_ok: Callable[[], bool],
) -> Iterator[Kill]:
    """Start ``pyvhdx ARGS`` once per delay; send ``sig`` that long after its temporary
    file appears; check the destination after each (old, absent, or complete)."""
    for delay in delays:
        old = set(temps(folder))
        proc = subprocess.Popen(
            [*PYVHDX, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        try:
            if _wait_for_temp(folder, proc, old):
                time.sleep(delay)
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        finished = check_destination_ok()
        yield Kill(sig, delay, proc.returncode, err, finished)


@dataclass(frozen=True)
class KillCase:
    args: list[str]
    dst: Path
    complete: Callable[[Path], bool]  # the destination holds the finished result


def convert_case(folder: Path, src: Path) -> KillCase:
    dst = folder / "out.vhdx"
    digest = sha(src)

    def complete(path: Path) -> bool:
        return content_sha(path) == digest

    args = ["convert", "--force", "--no-progress", str(src), str(dst)]
    return KillCase(args, dst, complete)


def create_case(folder: Path, fmt: str, mib: int = 256) -> KillCase:
    dst = folder / f"out.{fmt}"

    def complete(path: Path) -> bool:
        with pyvhdx.open(path) as img:
            return img.virtual_size == mib * MiB and img.disk_type.value == "fixed"

    args = ["create", "--overwrite", "--preallocate", "--type", "fixed", str(dst), f"{mib}M"]
    return KillCase(args, dst, complete)


def run_kill_campaign(
    folder: Path, case: KillCase, points: int, seed: int, max_delay: float
) -> list[Kill]:
    """SIGTERM then SIGKILL at ``points`` seeded random delays each, checking every time
    that the destination is the old file or the complete new one; then one more run
    must report and remove the stale temporary files SIGKILL left, and succeed."""
    rng = random.Random(seed)
    old = b"the old destination\n" * 100
    case.dst.write_bytes(old)
    state = {"old_inode": os.lstat(case.dst).st_ino}

    def check() -> bool:
        """The old file or the whole new image (then put the old file back)."""
        assert sorted(os.listdir(folder)) == sorted([case.dst.name, *temps(folder)])
        st = os.lstat(case.dst)  # the final name is never missing or partial
        if st.st_ino == state["old_inode"]:
            assert case.dst.read_bytes() == old
            return False
        assert case.complete(case.dst)
        case.dst.write_bytes(old)  # back to the old bytes for the next point
        state["old_inode"] = os.lstat(case.dst).st_ino
        return True

    kills: list[Kill] = []
    stale: list[str] = []  # left by the last SIGKILL: the next run must report them
    for sig in (signal.SIGTERM, signal.SIGKILL):
        delays = [rng.uniform(0, max_delay) for _ in range(points)]
        for kill in kill_points(folder, case.args, sig, delays, check):
            kills.append(kill)
            for name in stale:
                assert f"removed {folder / name}," in kill.stderr, kill
                assert name not in temps(folder)
            stale = temps(folder)
            if sig is signal.SIGTERM:
                # cleaned up and reported as 128 + 15; or the run had finished (a
                # signal after the command, while Python exits, kills it as usual)
                assert temps(folder) == [], kill
                if kill.returncode == 128 + signal.SIGTERM:
                    assert kill.stderr.endswith("pyvhdx: error: interrupted by SIGTERM\n"), kill
                else:
                    assert kill.returncode in (0, -signal.SIGTERM) and kill.finished, kill
            else:
                assert kill.returncode == -signal.SIGKILL or kill.finished, kill
    result = cli(*case.args)
    assert result.returncode == 0, result.stderr
    removed = [line for line in result.stderr.splitlines() if "warning: removed" in line]
    assert len(removed) == len(stale), (stale, result.stderr)
    for name in stale:
        assert any(f"removed {folder / name}," in line for line in removed)
    assert temps(folder) == []
    assert sorted(os.listdir(folder)) == [case.dst.name]
    assert case.complete(case.dst)
    return kills


@pytest.mark.parametrize("what", ["convert", "create-vhdx", "create-vhd"])
def test_kills_leave_old_or_new_and_the_next_run_cleans_up(
    tmp_path: Path, big_source: Path, what: str
) -> None:
    folder = tmp_path
    if what == "convert":
        case = convert_case(folder, big_source)
    else:
        case = create_case(folder, what.split("-")[1])
    points = 5 if what == "convert" else 2
    kills = run_kill_campaign(folder, case, points, seed=13, max_delay=0.25)
    interrupted = [k for k in kills if not k.finished]
    assert interrupted, "every run finished before its signal: the test proved nothing"


# -- a live temporary file is left alone --------------------------------------------------

HOLDER = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 1 << 62, 1, 0))
print("locked", flush=True)
sys.stdin.read()
"""


def test_live_temp_is_kept_and_stale_one_removed(tmp_path: Path) -> None:
    dst = tmp_path / "d.vhdx"
    live = tmp_path / f".d.vhdx.live0000{TEMP_SUFFIX}"
    stale = tmp_path / f".d.vhdx.stale000{TEMP_SUFFIX}"
    other = tmp_path / f".e.vhdx.stale000{TEMP_SUFFIX}"  # another destination's
    for path in (live, stale, other):
        path.write_bytes(b"partial image")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(live)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        result = cli("create", str(dst), "1M")
        assert result.returncode == 0, result.stderr
        assert f"removed {stale}" in result.stderr
        assert str(live) not in result.stderr
        assert sorted(os.listdir(tmp_path)) == sorted([dst.name, live.name, other.name])
        assert live.read_bytes() == b"partial image"
    finally:
        holder.communicate("", timeout=30)
    result = cli("create", "--overwrite", str(dst), "1M")  # the holder is gone: stale now
    assert result.returncode == 0 and f"removed {live}" in result.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([dst.name, other.name])


# -- a block device (a loop device over a file) --------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB loop device full of 0xAA bytes (root and losetup needed)."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("loop devices need root and losetup")
    backing = tmp_path / "backing.img"
    backing.write_bytes(b"\xaa" * (16 * MiB))
    r = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        pytest.skip(f"no loop device here: {r.stderr.strip()}")
    dev = Path(r.stdout.strip())
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)


def _device_bytes(dev: Path) -> bytes:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.pread(fd, 16 * MiB + 1, 0)
    finally:
        os.close(fd)


def test_convert_raw_onto_a_block_device(tmp_path: Path, source: Path, loop_device: Path) -> None:
    dev = loop_device
    rdev = os.stat(dev).st_rdev
    untouched = _device_bytes(dev)
    small = tmp_path / "small.raw"  # 12 MiB of the source: data, a hole, zeros, data
    with small.open("wb") as f:
        f.write(source.read_bytes()[: 12 * MiB])
        f.truncate(12 * MiB)
    with small.open("r+b") as f:  # punch the hole back: the source's is at 5-7 MiB
        f.truncate(5 * MiB)
        f.seek(7 * MiB)
        f.write(source.read_bytes()[7 * MiB : 12 * MiB])
    expected = small.read_bytes()
    # refused: no --force; not raw; bigger than the device; create
    one_error_line(cli("convert", str(small), str(dev), "-O", "raw"), f"{dev}: exists")
    one_error_line(
        cli("convert", "--force", str(small), str(dev), "-O", "vhdx"),
        f"{dev}: is a block device",
        "-O raw",
    )
    big = tmp_path / "big.raw"
    with big.open("wb") as f:
        f.truncate(32 * MiB)
    one_error_line(
        cli("convert", "--force", str(big), str(dev), "-O", "raw"),
        f"{dev}: the block device holds {16 * MiB} bytes, less than the {32 * MiB}",
    )
    one_error_line(cli("convert", "--force", str(dev), str(dev), "-O", "raw"), "same file")
    one_error_line(cli("create", "--overwrite", "-f", "vhdx", str(dev), "1M"), "block device")
    assert _device_bytes(dev) == untouched
    # with --force and raw output: written in place, zeros included, the rest untouched
    result = cli("convert", "--force", str(small), str(dev), "-O", "raw")
    assert result.returncode == 0, result.stderr
    st = os.lstat(dev)
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev
    data = _device_bytes(dev)
    assert len(data) == 16 * MiB
    assert data[5 * MiB : 7 * MiB] == bytes(2 * MiB)  # the hole: zeros written
    assert data[: 12 * MiB] == expected  # the written zeros too
    assert data[12 * MiB :] == untouched[12 * MiB :]  # past the virtual disk: untouched
    assert temps(dev.parent) == []


def test_longest_file_name_can_be_created_and_its_stale_temp_found(tmp_path: Path) -> None:
    """A destination name near NAME_MAX: the temporary name is cut to fit (it used to
    fail with ENAMETOOLONG), and a stale one is still recognised and removed."""
    from pyvhdx.newfile import temp_pattern

    name = "n" * 250 + ".vhdx"
    dst = tmp_path / name
    pyvhdx.create(dst, 8 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    # NAME_MAX 255 = "." + stem + "." + 8 random + ".pyvhdx-tmp": the stem keeps 234 bytes
    stale = tmp_path / ("." + name[:234] + ".abcdefgh.pyvhdx-tmp")
    assert len(stale.name) == 255
    assert temp_pattern(name).fullmatch(stale.name)
    stale.write_bytes(b"x")
    with pytest.warns(pyvhdx.PyvhdxWarning):
        pyvhdx.create(dst, 8 << 20, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
