"""What every subcommand shares: exit codes, one-line errors, opening an image
with the common options, sizes on the command line, progress bars."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from decimal import Decimal

from ..constants import ImageFormat
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


def open_image_for(path: str, args: argparse.Namespace) -> DiskImage:
    """Open an image read-only with the common options; failures become one line."""
    try:
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
    except PyvhdxError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc


def add_format_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``-f``/``--format`` of an image that is read (any format pyvhdx reads)."""
    parser.add_argument(
        "-f", "--format", choices=[f.value for f in ImageFormat], default=None, help=help
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress``/``--no-progress`` (see :func:`want_progress`)."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that opens an image shares."""
    parser.add_argument("image", metavar="IMAGE", help="the image file (VHDX, VHD or raw)")
    add_format_option(parser, "image format (default: detected from the content, never the name)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse images with non-fatal defects (e.g. a bad VHD checksum)",
    )
    parser.add_argument(
        "--parent",
        metavar="PATH",
        default=None,
        help="a differencing disk's parent (tried before the paths the image records)",
    )
    parser.add_argument(
        "-U",
        "--force-share",
        action="store_true",
        help="read an image another process (pyvhdx or qemu) has locked, taking no lock "
        "(as qemu-img -U; its data may be inconsistent while it is written)",
    )


_SIZE_SUFFIXES = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
}
_SIZE_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]?)(?:ib)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count from the command line: ``512``, ``4K``, ``10M``, ``1.5G``, ``64GiB``.

    Suffixes are binary and case-insensitive: K = KiB, M = MiB, G = GiB, T = TiB,
    P = PiB (``B`` alone means bytes), as qemu-img reads them. The result must be
    a whole number of bytes.

    Raises:
        argparse.ArgumentTypeError: not a size (argparse turns it into a usage error).
    """
    match = _SIZE_PATTERN.fullmatch(text.strip())
    suffix = match.group(2).lower() if match else ""
    if (
        match is None
        or suffix not in _SIZE_SUFFIXES
        or (suffix == "b" and text.strip().lower().endswith("ib"))
    ):
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use a number with an optional binary suffix "
            "K, M, G, T or P (KiB, MiB, ...)"
        )
    value = Decimal(match.group(1)) * _SIZE_SUFFIXES[suffix]
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
