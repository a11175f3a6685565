"""What every subcommand shares: exit codes, one-line errors, opening an image
with the common options, sizes on the command line, progress bars."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from collections.abc import Iterator
from decimal import Decimal

from ..errors import PyvhdxError
from ..image import DiskImage, open_image

PROG = "pyvhdx"

EXIT_OK = 0
EXIT_FAILURE = 1  # image problem, failed check
EXIT_USAGE = 2  # argparse's own code for usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_CANNOT_RUN = 2  # check and compare: the operation could not run (qemu-img's 2)


class CommandError(Exception):
    """A failure a subcommand reports as one ``pyvhdx: error:`` line (exit 1)."""


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Library and OS failures inside as one ``path: message`` line (a CommandError)."""
    try:
        yield
    except PyvhdxError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc


def open_image_for(path: str, args: argparse.Namespace) -> DiskImage:
    """Open an image read-only with the common options; failures become one line."""
    with naming(path):
        return open_image(
            path,
            "r",
            format=getattr(args, "format", None),
            strict=bool(getattr(args, "strict", False)),
            parent=getattr(args, "parent", None),
            # info and inspect describe a child whose parent is missing (and say so)
            allow_missing_parent=bool(getattr(args, "allow_missing_parent", False)),
            force_share=bool(getattr(args, "force_share", False)),
        )


_SIZE_SUFFIXES = {"": 1, **{unit: 1 << 10 * power for power, unit in enumerate("kmgtp", 1)}}
_SIZE_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:ib)?|b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count from the command line: ``512``, ``4K``, ``10M``, ``1.5G``, ``64GiB``.

    Suffixes are binary and case-insensitive: K = KiB, M = MiB, G = GiB, T = TiB,
    P = PiB (``B`` alone means bytes), as qemu-img reads them. The result must be
    a whole number of bytes.

    Raises:
        argparse.ArgumentTypeError: not a size (argparse turns it into a usage error).
    """
    match = _SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a number with an optional binary suffix "
            "K, M, G, T or P (KiB, MiB, ...)"
        )
    value = Decimal(match.group(1)) * _SIZE_SUFFIXES[(match.group(2) or "").lower()]
    if value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def report_error(exc: BaseException, debug: bool) -> None:
    """One ``pyvhdx: error:`` line for ``exc`` (an OSError as ``file: strerror``), or the
    traceback with ``debug``."""
    if debug:
        traceback.print_exc()
    elif isinstance(exc, OSError) and exc.strerror:
        error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}")
    else:
        error(str(exc))


def cannot_run(exc: BaseException, args: argparse.Namespace) -> int:
    """Report why a check or compare could not run (exit 2, as qemu-img)."""
    report_error(exc, bool(getattr(args, "debug", False)))
    return EXIT_CANNOT_RUN


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error(message: str, kind: str = "error") -> None:
    with contextlib.suppress(OSError):
        print(f"{PROG}: {kind}: {one_line(message)}", file=sys.stderr)


def want_progress(flag: bool | None) -> bool:
    """``--progress``/``--no-progress``, else a bar when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag
