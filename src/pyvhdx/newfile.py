"""New files built beside their destination and renamed into place.

``create`` and ``convert`` never write into the file they are asked to make.
They write a temporary file ``.<name>.<random>.pyvhdx-tmp`` in the
destination's folder and rename it over the destination only when it is
complete (after an fsync when asked), so an error, a full disk, Ctrl-C,
SIGTERM or SIGKILL leaves the destination as it was: absent, or the old file.

What may be a destination (:func:`check_destination`):

* a missing name: made;
* a regular file: replaced only with ``overwrite``/``force`` (its permission
  bits are kept); otherwise :class:`FileExistsError`;
* a symbolic link: followed, as ``cp`` and ``qemu-img`` do. The file is built
  beside the link's final target and renamed onto it, so the link stays; the
  rules above apply to the target (a dangling link counts as an existing name);
* a block device: only when the caller allows it (``convert`` to raw) and
  with ``force``; written in place (never unlinked or truncated) after checking
  that the device holds the whole virtual disk;
* a character device, FIFO, socket or directory: refused at once with a
  :class:`DestinationError` naming the file and its kind. A FIFO is never
  opened, so nothing blocks.

While the temporary file is built, an open file description lock (Linux
``F_OFD_SETLK``, ``F_WRLCK``) is held on one byte at offset 2**62 of it, far
from any byte an image lock would use. A temporary file of ours that nobody
holds that lock on was left by a killed run: the next create or convert to the
same destination removes it and warns (:class:`~pyvhdx.errors.PyvhdxWarning`).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import InvalidArgumentError, PyvhdxWarning

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TEMP_SUFFIX",
    "Destination",
    "DestinationError",
    "DestinationKind",
    "NewFile",
    "check_destination",
    "destination_names",
    "fsync_dir",
    "inspect_destination",
    "new_file",
    "remove_stale_temps",
    "temp_pattern",
]

#: Suffix of every temporary file pyvhdx builds.
TEMP_SUFFIX: Final = ".pyvhdx-tmp"
#: Offset of the byte locked in a temporary file while it is being built.
LOCK_OFFSET: Final = 1 << 62
_TEMP_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789_"  # also mkstemp's
_TEMP_RANDOM: Final = 8
#: Errors that mean "the new file does not fit".
SPACE_ERRNOS: Final = frozenset(
    {errno.ENOSPC, errno.EFBIG, *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])}
)
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY: Final = getattr(os, "O_BINARY", 0)

_own_temps: set[str] = set()  # temporary files this process is building now


class DestinationError(InvalidArgumentError):
    """The destination is a file pyvhdx will not write (a device, FIFO, directory...)."""


class DestinationKind(enum.Enum):
    """What a destination name holds."""

    MISSING = "missing"
    REGULAR = "regular file"
    BLOCK_DEVICE = "block device"
    CHARACTER_DEVICE = "character device"
    FIFO = "FIFO"
    SOCKET = "socket"
    DIRECTORY = "directory"
    OTHER = "special file"


@dataclass(frozen=True)
class Destination:
    """A destination as :func:`inspect_destination` found it.

    Attributes:
        path: the name given.
        target: the file to write: ``path``, or where its symbolic links lead.
        kind: what ``target`` is.
        symlink: ``path`` is a symbolic link.
        mode: ``st_mode`` of ``target`` (None when missing).
    """

    path: Path
    target: Path
    kind: DestinationKind
    symlink: bool
    mode: int | None


#: File types (``stat.S_IFMT``) as destination kinds; any other is OTHER (doors, whiteouts).
_KINDS: Final = {
    stat.S_IFREG: DestinationKind.REGULAR,
    stat.S_IFBLK: DestinationKind.BLOCK_DEVICE,
    stat.S_IFCHR: DestinationKind.CHARACTER_DEVICE,
    stat.S_IFIFO: DestinationKind.FIFO,
    stat.S_IFSOCK: DestinationKind.SOCKET,
    stat.S_IFDIR: DestinationKind.DIRECTORY,
}


def _kind(mode: int) -> DestinationKind:
    return _KINDS.get(stat.S_IFMT(mode), DestinationKind.OTHER)


def inspect_destination(path: str | os.PathLike[str]) -> Destination:
    """What ``path`` is, without opening it (``lstat``, then ``stat`` for a link).

    Raises:
        OSError: the name cannot be examined (no access, a symlink loop).
    """
    given = Path(path)
    try:
        st = os.lstat(given)
    except FileNotFoundError:
        return Destination(given, given, DestinationKind.MISSING, False, None)
    if not stat.S_ISLNK(st.st_mode):
        return Destination(given, given, _kind(st.st_mode), False, st.st_mode)
    target = Path(os.path.realpath(given))
    try:
        st = os.stat(target)
    except FileNotFoundError:  # dangling: the file would be made where it points
        return Destination(given, target, DestinationKind.MISSING, True, None)
    return Destination(given, target, _kind(st.st_mode), True, st.st_mode)


def _describe(dest: Destination) -> str:
    kind = dest.kind.value
    article = "an" if kind[0] in "aeiou" else "a"
    if dest.symlink:
        return f"{dest.path}: is a symbolic link to {article} {kind} ({dest.target})"
    return f"{dest.path}: is {article} {kind}"


def check_destination(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    option: str = "overwrite",
    allow_block_device: bool = False,
    block_device_hint: str = "only raw output can be written onto a device",
) -> Destination:
    """Decide whether ``path`` may be written (the rules in the module docstring).

    Args:
        path: the destination.
        overwrite: an existing regular file (or, when allowed, block device) may
            be replaced (written onto).
        option: the caller's name for ``overwrite``, for the error message.
        allow_block_device: a block device may be written in place.
        block_device_hint: why a block device is refused, for the message.

    Returns:
        The destination, which :func:`new_file` can build.

    Raises:
        DestinationError: a device, FIFO, socket or directory that may not be
            written.
        FileExistsError: an existing file (or device) without ``overwrite``.
    """
    dest = inspect_destination(path)
    kind = dest.kind
    if kind is DestinationKind.BLOCK_DEVICE and not allow_block_device:
        raise DestinationError(f"{_describe(dest)}; refused: {block_device_hint}")
    if kind not in (
        DestinationKind.MISSING,
        DestinationKind.REGULAR,
        DestinationKind.BLOCK_DEVICE,
    ):
        raise DestinationError(
            f"{_describe(dest)}, not a regular file; refused: pyvhdx writes only "
            "regular files (and, with convert to raw, block devices)"
        )
    exists = kind is not DestinationKind.MISSING or dest.symlink
    if exists and not overwrite:
        what = "write onto the device" if kind is DestinationKind.BLOCK_DEVICE else "replace it"
        raise FileExistsError(
            errno.EEXIST, f"File exists (pass {option}=True to {what})", str(dest.path)
        )
    return dest


_NAME_MAX: Final = 255  # bytes in one file name (NAME_MAX on Linux and most systems)


def _temp_stem(name: str) -> str:
    """``name`` cut so that ``.<stem>.<random><suffix>`` is a legal file name."""
    room = _NAME_MAX - 2 - _TEMP_RANDOM - len(TEMP_SUFFIX)
    raw = os.fsencode(name)
    return name if len(raw) <= room else os.fsdecode(raw[:room])


def temp_pattern(name: str) -> re.Pattern[str]:
    """The names of pyvhdx's temporary files for the destination file name ``name``."""
    chars = re.escape(_TEMP_CHARS)
    return re.compile(
        re.escape(f".{_temp_stem(name)}.") + f"[{chars}]{{{_TEMP_RANDOM}}}" + re.escape(TEMP_SUFFIX)
    )


#: A temporary name of ours in a text: ``.<stem>.<random>.pyvhdx-tmp``.
_TEMP_IN_TEXT: Final = re.compile(
    r"\.([^\s/\\]+)\." + f"[{re.escape(_TEMP_CHARS)}]{{{_TEMP_RANDOM}}}" + re.escape(TEMP_SUFFIX)
)


def destination_names(text: str) -> str:
    """``text`` with each temporary file name of ours (``.d.vhdx.k3j9x0ab.pyvhdx-tmp``)
    replaced by the name of the destination it is built for (``d.vhdx``), its folder
    kept: a message about the file being built names the file asked for."""
    if TEMP_SUFFIX not in text:
        return text
    return _TEMP_IN_TEXT.sub(lambda m: m.group(1), text)


# struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
# (0 for OFD locks), padded to the alignment of off_t (as pyvhdx.locking).
_FLOCK: Final = struct.Struct("hhqqi")


def _try_lock(fd: int) -> bool | None:
    """Take the builder's lock on ``fd``: False if another open file holds it, None
    where there are no OFD locks (another system, a file system without them)."""
    if fcntl is None or not hasattr(fcntl, "F_OFD_SETLK"):  # pragma: no cover
        return None
    lock = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, LOCK_OFFSET, 1, 0) + bytes(-_FLOCK.size % 8)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise
    return True


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of killed runs that were building ``target``.

    A file counts when its name matches :func:`temp_pattern` for ``target``'s
    name, it is a regular file, and no open file holds the builder's lock on
    it (a live run keeps it). Each removal is reported as a PyvhdxWarning.

    Returns:
        The files removed.
    """
    target = Path(target)
    folder = target.parent
    pattern = temp_pattern(target.name)
    removed: list[Path] = []
    try:
        entries = [e.name for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for name in entries:
        path = folder / name
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDWR | _O_NOFOLLOW | _O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                continue  # a live run is building it (or no lock tells)
            size = os.fstat(fd).st_size
            os.unlink(path)
        except OSError:
            continue
        finally:
            os.close(fd)
        removed.append(path)
        warnings.warn(
            f"removed {path}, a temporary file ({size} bytes) left by an interrupted "
            f"run that was making {target}",
            PyvhdxWarning,
            stacklevel=2,
        )
    return removed


@dataclass(frozen=True)
class NewFile:
    """The file :func:`new_file` is building.

    Attributes:
        destination: the name the caller gave.
        path: where to write now: the temporary file, or the device itself.
        fd: an open read-write descriptor of ``path``.
        in_place: ``path`` is the destination (a block device), written in place.
    """

    destination: Path
    path: Path
    fd: int
    in_place: bool


def fsync_dir(folder: Path) -> None:
    """Make a rename or removal in ``folder`` durable (where the system can fsync it)."""
    with contextlib.suppress(OSError):  # not every system can open or fsync a folder
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _for_destination(exc: OSError, temp: Path | None, dest: Destination, note: str) -> OSError:
    """``exc`` told about the destination: a full disk, or an error naming the temp file."""
    if exc.errno in SPACE_ERRNOS or (temp is not None and exc.filename == str(temp)):
        return OSError(exc.errno, f"{exc.strerror} ({note})", str(dest.path))
    return exc


def _open_temp(target: Path) -> tuple[Path, int]:
    """Create and lock a new temporary file beside ``target`` (mode 0666 & ~umask)."""
    import secrets  # here: 12 ms to import (hmac, _hashlib), and only writers need it

    while True:
        rand = "".join(secrets.choice(_TEMP_CHARS) for _ in range(_TEMP_RANDOM))
        temp = target.parent / f".{_temp_stem(target.name)}.{rand}{TEMP_SUFFIX}"
        try:
            fd = os.open(
                temp,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY,
                0o666,
            )
        except FileExistsError:
            continue
        try:
            locked = _try_lock(fd) is not False
            # A cleaner could take it for stale between the open and the lock.
            if locked and os.fstat(fd).st_nlink > 0:
                return temp, fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            os.close(fd)
            raise
        os.close(fd)


def _open_device(dest: Destination, size: int | None) -> int:
    """Open a block device to write in place, after checking what it is and its size."""
    flags = os.O_WRONLY | os.O_NONBLOCK | _O_CLOEXEC | _O_BINARY
    # O_EXCL on a Linux block device: EBUSY when it is mounted or otherwise in use.
    fd = os.open(dest.target, flags | os.O_EXCL)
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):  # changed since it was examined
            raise DestinationError(f"{dest.path}: is no longer a block device; refused")
        if fcntl is not None:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        device_size = os.lseek(fd, 0, os.SEEK_END)
        if size is not None and device_size < size:
            raise DestinationError(
                f"{dest.path}: the block device holds {device_size} bytes, "
                f"less than the {size} bytes of the image; refused"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def new_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    sync: bool = True,
    option: str = "overwrite",
    allow_block_device: bool = False,
    block_device_hint: str = "only raw output can be written onto a device",
    size: int | None = None,
) -> Iterator[NewFile]:
    """Build a new file for ``path``, put in place when the ``with`` body succeeds.

    The body writes through :attr:`NewFile.fd` (or reopens :attr:`NewFile.path`).
    On success the file is fsynced (``sync``), renamed over the destination and
    the folder fsynced. On any exception, KeyboardInterrupt included, the
    temporary file is removed and the destination is left as it was. A block
    device (``allow_block_device``) is written in place: it must hold ``size``
    bytes; an error leaves it partly written.

    ``path`` may be a temporary file this process is building (``convert``
    creates an image in its own temporary file): it is then written directly,
    and its owner does the rest.

    Raises:
        DestinationError, FileExistsError: see :func:`check_destination`.
        OSError: for a full disk (ENOSPC, EFBIG, EDQUOT) and errors about the
            temporary file, an error whose filename is the destination.
    """
    own = os.path.abspath(path)
    if own in _own_temps:
        fd = os.open(own, os.O_RDWR | os.O_TRUNC | _O_CLOEXEC | _O_BINARY)
        try:
            yield NewFile(Path(path), Path(path), fd, True)
        finally:
            os.close(fd)
        return
    dest = check_destination(
        path,
        overwrite=overwrite,
        option=option,
        allow_block_device=allow_block_device,
        block_device_hint=block_device_hint,
    )
    if dest.kind is DestinationKind.BLOCK_DEVICE:
        fd = _open_device(dest, size)
        try:
            yield NewFile(dest.path, dest.target, fd, True)
            if sync:
                os.fsync(fd)
        except OSError as exc:
            raise _for_destination(exc, None, dest, "the device is partly written") from exc
        finally:
            os.close(fd)
        return
    existed = dest.kind is DestinationKind.REGULAR
    note = "the existing file is unchanged" if existed else "no file was made"
    remove_stale_temps(dest.target)
    try:
        temp, fd = _open_temp(dest.target)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(dest.path)) from exc
    _own_temps.add(os.path.abspath(temp))
    done = False
    try:
        if existed and dest.mode is not None:
            os.fchmod(fd, stat.S_IMODE(dest.mode) & 0o777)  # keep the old file's permissions
        yield NewFile(dest.path, temp, fd, False)
        if sync:
            os.fsync(fd)
        os.replace(temp, dest.target)
        done = True
        if sync:
            fsync_dir(dest.target.parent)
    except BaseException as exc:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if isinstance(exc, OSError):
            raise _for_destination(exc, temp, dest, note) from exc
        raise
    finally:
        _own_temps.discard(os.path.abspath(temp))
        os.close(fd)
