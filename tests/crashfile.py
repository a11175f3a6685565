"""A file wrapper that "crashes" after a given number of writes, truncates or flushes.

Used to prove crash consistency (DESIGN.md "Writes"): run a write scenario with
the crash at every step N, then check the image left behind. With
``lose_unflushed=True`` the crash also undoes every write since the last flush,
as a power cut may (writes are undone newest first).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any


class SimulatedCrash(Exception):
    """Raised by :class:`CrashFile` at the chosen step, and at every step after."""


class CrashFile(io.RawIOBase):
    def __init__(self, path: Path, crash_at: int | None, *, lose_unflushed: bool = False) -> None:
        super().__init__()
        self._f = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.crash_at = crash_at
        self.lose_unflushed = lose_unflushed
        self.steps = 0
        self.dead = False
        self._undo: list[tuple[int, bytes, int]] = []  # (offset, old bytes, old size)
        self.name = str(path)

    # -- counting ----------------------------------------------------------------

    def _step(self) -> None:
        if self.dead:
            raise SimulatedCrash("already crashed")
        if self.crash_at is not None and self.steps >= self.crash_at:
            self.dead = True
            if self.lose_unflushed:
                for offset, old, size in reversed(self._undo):
                    self._f.seek(offset)
                    self._f.write(old)
                    self._f.truncate(size)
            self._undo.clear()
            raise SimulatedCrash(f"crash at step {self.steps}")
        self.steps += 1

    def _size(self) -> int:
        return os.fstat(self._f.fileno()).st_size

    # -- io.RawIOBase --------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.dead:
            raise SimulatedCrash("already crashed")
        return self._f.readinto(b) or 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def write(self, b: Any) -> int:
        self._step()
        data = bytes(b)
        pos = self._f.tell()
        size = self._size()
        old = b""
        if pos < size:
            old = os.pread(self._f.fileno(), min(len(data), size - pos), pos)
        self._undo.append((pos, old, size))
        return self._f.write(data) or 0

    def truncate(self, size: int | None = None) -> int:
        self._step()
        old_size = self._size()
        new = self._f.tell() if size is None else size
        old = b""
        if new < old_size:
            old = os.pread(self._f.fileno(), old_size - new, new)
        self._undo.append((new, old, old_size))
        return self._f.truncate(new)

    def flush(self) -> None:
        if self.closed or self._f.closed:
            return
        self._step()
        os.fsync(self._f.fileno())
        self._undo.clear()

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
