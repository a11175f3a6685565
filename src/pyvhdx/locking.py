"""Image locks compatible with qemu's (SPEC-NOTES.md pitfall 24).

qemu locks an image file with Linux open-file-description (OFD) byte-range
locks (block/file-posix.c, ``raw_apply_lock_bytes``/``raw_check_lock_bytes``):
for each permission bit ``i`` (0 CONSISTENT_READ, 1 WRITE, 2 WRITE_UNCHANGED,
3 RESIZE) byte ``100 + i`` stands for "holds the permission" and byte ``200 + i``
for "does not share it". A user takes a shared (read) lock on ``100 + i`` for
each permission it holds and on ``200 + i`` for each one it does not share,
then tests (``F_OFD_GETLK`` with a write lock) byte ``200 + i`` for each
permission it holds and ``100 + i`` for each one it does not share: a lock
there means another user forbids what it wants, or holds what it forbids.

pyvhdx takes exactly the bytes qemu 7.2 takes (read from ``/proc/locks`` and
``strace``): a writer (``"r+"``, as ``qemu-io``) holds CONSISTENT_READ, WRITE
and RESIZE and shares neither WRITE nor RESIZE (bytes 100, 101, 103, 201,
203); a reader (as ``qemu-io -r``) holds CONSISTENT_READ and shares neither
WRITE nor RESIZE (bytes 100, 201, 203). So readers coexist, and a writer
excludes every other reader and writer, pyvhdx's or qemu's. qemu's
``force-share`` (``-U``) takes no lock and checks none; so does pyvhdx's
``force_share``, which is for read-only opens only.

OFD locks belong to the open file description: closing the descriptor (or the
death of the process) releases them, two opens of one file in one process
exclude each other as two processes do, and taking them changes no byte and no
timestamp of the file. Where OFD locks are missing (not Linux) or the file
system refuses them, the image is opened without a lock, as qemu does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import sys

from .errors import ImageLockedError

__all__ = [
    "PERM_CONSISTENT_READ",
    "PERM_RESIZE",
    "PERM_WRITE",
    "PERM_WRITE_UNCHANGED",
    "READ_LOCK",
    "WRITE_LOCK",
    "LockSpec",
    "lock_image",
    "unlock_image",
]

if sys.platform != "win32":
    import fcntl

    _SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
    _GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)
else:  # pragma: no cover - Windows has no fcntl
    _SETLK = _GETLK = None

PERM_CONSISTENT_READ = 0
PERM_WRITE = 1
PERM_WRITE_UNCHANGED = 2
PERM_RESIZE = 3
_PERM_NAMES = {
    PERM_CONSISTENT_READ: "consistent read",
    PERM_WRITE: "write",
    PERM_WRITE_UNCHANGED: "write unchanged",
    PERM_RESIZE: "resize",
}

PERM_LOCK_BASE = 100
SHARED_LOCK_BASE = 200

_RDLCK = 0  # F_RDLCK, F_WRLCK, F_UNLCK on Linux (asm-generic/fcntl.h)
_WRLCK = 1
_UNLCK = 2
# struct flock: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (0 for OFD locks), padded to the alignment of off_t.
_FLOCK = struct.Struct("hhqqi")
_FLOCK_PAD = bytes(-_FLOCK.size % 8)

# errors that mean "this file system or kernel has no OFD locks": open unlocked
_UNSUPPORTED = {errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_UNSUPPORTED |= {getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_CONFLICT = {errno.EAGAIN, errno.EACCES}


class LockSpec:
    """The permissions a user holds and those it does not share (qemu's perm/shared)."""

    def __init__(self, holds: frozenset[int], unshared: frozenset[int]) -> None:
        self.holds = holds
        self.unshared = unshared

    @property
    def lock_bytes(self) -> list[int]:
        """The bytes that get a shared lock, ascending."""
        return sorted(
            [PERM_LOCK_BASE + p for p in self.holds] + [SHARED_LOCK_BASE + p for p in self.unshared]
        )

    def checks(self) -> list[tuple[int, str]]:
        """``(byte, what a lock on it means)`` to test, in qemu's order."""
        out = [
            (SHARED_LOCK_BASE + p, f'it does not share the "{_PERM_NAMES[p]}" right')
            for p in sorted(self.holds)
        ]
        out += [
            (PERM_LOCK_BASE + p, f'it holds the "{_PERM_NAMES[p]}" right')
            for p in sorted(self.unshared)
        ]
        return out


WRITE_LOCK = LockSpec(
    frozenset({PERM_CONSISTENT_READ, PERM_WRITE, PERM_RESIZE}),
    frozenset({PERM_WRITE, PERM_RESIZE}),
)
"""What an ``"r+"`` open takes: bytes 100, 101, 103, 201, 203 (as ``qemu-io``)."""

READ_LOCK = LockSpec(frozenset({PERM_CONSISTENT_READ}), frozenset({PERM_WRITE, PERM_RESIZE}))
"""What a read-only open takes: bytes 100, 201, 203 (as ``qemu-io -r``)."""


def _flock(kind: int, start: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0) + _FLOCK_PAD


def _setlk(fd: int, kind: int, start: int) -> None:
    assert _SETLK is not None
    fcntl.fcntl(fd, _SETLK, _flock(kind, start))


def _conflicts(fd: int, start: int) -> bool:
    """Whether another open file description holds a lock on byte ``start``."""
    assert _GETLK is not None
    out = fcntl.fcntl(fd, _GETLK, _flock(_WRLCK, start))
    return bool(_FLOCK.unpack_from(out)[0] != _UNLCK)


def _locked_error(name: str, writable: bool, why: str) -> ImageLockedError:
    what = "write" if writable else "shared read"
    return ImageLockedError(
        f"cannot get the {what} lock on {name}: it is in use by another process "
        f"(pyvhdx or qemu: {why}); to read it anyway while it is in use, open it "
        "read-only with force-share (-U/--force-share; its data may be inconsistent)",
        filename=name,
    )


def lock_image(fd: int, name: str, *, writable: bool) -> bool:
    """Take qemu's image locks on ``fd`` for a writer or a reader.

    The locks are applied first, then checked, as qemu does; on a conflict
    every byte taken here is released again.

    Args:
        fd: a descriptor this process opened itself (its open file description
            holds the locks; closing it releases them).
        name: the file name, for the error message.
        writable: lock as a writer (``"r+"``) instead of a reader.

    Returns:
        True if locked, False if OFD locks are not available here (the image
        is then used without a lock, as qemu does).

    Raises:
        ImageLockedError: another process (or another open in this process),
            pyvhdx or qemu, holds a conflicting lock.
    """
    if _SETLK is None or _GETLK is None:
        return False
    spec = WRITE_LOCK if writable else READ_LOCK
    taken: list[int] = []
    try:
        for byte in spec.lock_bytes:
            try:
                _setlk(fd, _RDLCK, byte)
            except OSError as exc:
                if exc.errno in _CONFLICT:
                    raise _locked_error(name, writable, f"it holds lock byte {byte}") from None
                raise
            taken.append(byte)
        for byte, why in spec.checks():
            if _conflicts(fd, byte):
                raise _locked_error(name, writable, why)
    except OSError as exc:
        _release(fd, taken)
        if exc.errno in _UNSUPPORTED:
            return False
        raise
    except BaseException:
        _release(fd, taken)
        raise
    return True


def _release(fd: int, taken: list[int]) -> None:
    for byte in taken:
        # best effort: closing the descriptor releases them anyway
        with contextlib.suppress(OSError):
            _setlk(fd, _UNLCK, byte)


def unlock_image(fd: int) -> None:
    """Release every lock byte :func:`lock_image` may have taken on ``fd``.

    Closing the descriptor does the same; this is for a descriptor kept open.
    """
    if _SETLK is None:
        return
    _release(fd, sorted(set(WRITE_LOCK.lock_bytes) | set(READ_LOCK.lock_bytes)))
