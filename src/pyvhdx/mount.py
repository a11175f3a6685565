"""Mount an image or chain as one file, ``DIR/disk`` (``pyvhdx mount``), through FUSE.

Needs the ``mount`` extra (mfusepy, a maintained fusepy that speaks libfuse 2
and 3) and a kernel that lets this user mount FUSE file systems. Read-only by
default: the image is opened read-only (a pending log replayed in memory) and
the file cannot be opened for writing; ``writable`` opens the image ``r+`` and
writes go through pyvhdx's crash-consistent write path, flushed on fsync and at
unmount. Ctrl-C (SIGINT) or ``fusermount -u DIR`` unmounts cleanly.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from .image import DiskImage, open_image

__all__ = ["DISK_NAME", "mount"]

DISK_NAME = "disk"


class _DiskFS:
    """The FUSE callbacks over one image: the root holds the file ``disk``."""

    use_ns = False

    def __init__(self, img: DiskImage, writable: bool, error: type[OSError]) -> None:
        self.img, self.writable, self.error = img, writable, error
        self.size = img.get_size()
        self.lock = threading.Lock()
        self.now = time.time()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        t = self.now
        base = {"st_atime": t, "st_mtime": t, "st_ctime": t, "st_nlink": 1}
        base.update(st_uid=os.getuid(), st_gid=os.getgid())
        if path == "/":
            return {**base, "st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
        if path != f"/{DISK_NAME}":
            raise self.error(errno.ENOENT)
        mode = 0o644 if self.writable else 0o444
        return {**base, "st_mode": stat.S_IFREG | mode, "st_size": self.size}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", DISK_NAME]

    def open(self, path: str, flags: int) -> int:
        if path != f"/{DISK_NAME}":
            raise self.error(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR) and not self.writable:
            raise self.error(errno.EROFS)
        return 0

    def read(self, path: str, length: int, offset: int, fh: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        with self.lock:
            return self.img.read_at(offset, length)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if not self.writable:
            raise self.error(errno.EROFS)
        if offset + len(data) > self.size:
            raise self.error(errno.ENOSPC)
        with self.lock:
            self.img.write_at(offset, data)
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if length != self.size:
            raise self.error(errno.EPERM)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        with self.lock:
            self.img.flush()

    def flush(self, path: str, fh: int) -> None:
        if self.writable:
            with self.lock:
                self.img.flush()


def mount(
    image: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    *,
    writable: bool = False,
    **open_options: Any,
) -> None:
    """Mount ``image`` at ``mountpoint`` (its file ``disk``) until unmounted; blocks.

    Raises:
        ImportError: the ``mount`` extra (mfusepy) is not installed.
        RuntimeError: FUSE refused the mount (no /dev/fuse, no permission).
    """
    import mfusepy

    with open_image(image, "r+" if writable else "r", **open_options) as img:
        operations = type("DiskFS", (_DiskFS, mfusepy.Operations), {})
        ops = operations(img, writable, mfusepy.FuseOSError)
        mfusepy.FUSE(
            ops,
            str(Path(mountpoint)),
            foreground=True,
            nothreads=True,
            ro=not writable,
            fsname=f"pyvhdx:{Path(image).name}",
        )
