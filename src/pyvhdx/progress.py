"""Progress reporting: library functions call a callback; the bar is drawn here only.

Long operations (``convert_image`` in ``pyvhdx.convert``,
:func:`pyvhdx.hashing.hash_image`) take ``progress``: a callable given the bytes
done since its last call, or None for no report. ``progress=True`` asks for
:func:`stderr_bar`, the one tqdm bar of pyvhdx (the command line shows it when
stderr is a terminal); tqdm is imported nowhere else.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["Progress", "ProgressCallback", "reporting", "stderr_bar"]

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes done since the previous call."""

Progress = bool | ProgressCallback | None
"""What a library function accepts: a callback, True for a bar on stderr, None/False."""


def _ignore(_n: int) -> None:
    return None


@contextlib.contextmanager
def stderr_bar(
    total: int, *, desc: str | None = None, leave: bool = True
) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr for ``total`` bytes; yields its update callback, closes it after."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        yield _ignore
        return
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=desc,
        leave=leave,
    )
    try:
        yield bar.update
    finally:
        bar.close()


@contextlib.contextmanager
def reporting(
    progress: Progress, total: int, *, desc: str | None = None, leave: bool = True
) -> Iterator[ProgressCallback]:
    """The callback for a library function's ``progress`` argument (see the module doc)."""
    if callable(progress):
        yield progress
    elif progress:
        with stderr_bar(total, desc=desc, leave=leave) as update:
            yield update
    else:
        yield _ignore
