"""The ``pyvhdx`` command line (DESIGN.md "Command line").

Argparse and rendering only: every fact shown comes from the library
(:meth:`pyvhdx.DiskImage.info` and friends); no format logic lives here.

Conventions shared by every subcommand:

* stdout is data, stderr is diagnostics;
* exit codes: 0 success, 1 image problem (or failed check), 2 usage error;
* an image problem prints one line, ``pyvhdx: error: <message>``; ``--debug``
  prints the traceback instead;
* library warnings print one line each, ``pyvhdx: warning: <message>``;
* a closed stdout (``pyvhdx info --json x | head -1``) ends the command quietly.

Adding a subcommand: write ``cmd_<name>(args) -> int`` and
``_add_<name>_parser(subparsers, common)``, and list the latter in
:data:`_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import os
import sys
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from . import __version__
from .constants import ImageFormat
from .errors import PyvhdxError
from .image import DiskImage, open_image
from .info import ImageInfo

__all__ = [
    "CommandError",
    "build_parser",
    "format_size",
    "main",
    "print_json",
    "print_lines",
    "render_fields",
]

PROG = "pyvhdx"

EXIT_OK = 0
EXIT_FAILURE = 1  # image problem, failed check
EXIT_USAGE = 2  # argparse's own code for usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

_INDENT = "    "
_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")

Row = tuple[str, Any]
"""One ``key: value`` line (or a nested section when the value is a mapping or list)."""


class CommandError(Exception):
    """A failure a subcommand reports as one ``pyvhdx: error:`` line (exit 1)."""


# -- rendering helpers ----------------------------------------------------------------


def format_size(size: int) -> str:
    """A byte count with a binary unit: ``10 MiB (10485760 bytes)``, ``512 bytes``."""
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = size / 1024
    index = 0
    while value >= 1024 and index < len(_SIZE_UNITS) - 1:
        value /= 1024
        index += 1
    unit = _SIZE_UNITS[index]
    if value == int(value):
        text = str(int(value))
    else:
        # Three significant digits, as qemu-img prints sizes ("9.77 MiB").
        decimals = 0 if value >= 100 else 1 if value >= 10 else 2
        text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return f"{text} {unit} ({size} bytes)"


def _printable(text: str) -> str:
    """Escape control and other non-printable characters (strings come from images)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return "".join(out)


def _scalar(key: str, value: Any) -> str:
    """Render one scalar value for humans; ``key`` picks offsets/sizes by name."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        name = key.replace("_", "-").lower()
        if name.endswith(("offset", "checksum")):
            return f"{value:#x}"
        if name.endswith(("size", "length", "capacity")):
            return format_size(value)
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex() or '""'
    return _printable(str(value)) or '""'


def _is_scalar_row(value: Any) -> bool:
    if isinstance(value, Mapping):
        return not value
    if isinstance(value, (list, tuple)):
        return not value or all(not isinstance(v, (Mapping, list, tuple, str)) for v in value)
    return True


def _scalar_row(key: str, value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        if not value:
            return "none"
        return ", ".join(_scalar(key, v) for v in value)
    return _scalar(key, value)


def _label(key: str) -> str:
    return _printable(str(key)).replace("-", " ")


def render_fields(rows: Iterable[Row], indent: int = 0) -> list[str]:
    """Render ``(key, value)`` rows as aligned ``key: value`` lines.

    Values:
        * a scalar is one line (offsets in hex, sizes with a unit, booleans yes/no);
        * a list of numbers is one line, comma separated; an empty one is "none";
        * a list of strings is one indented line per item under ``key:``;
        * a mapping is a nested section (its keys with ``-`` shown as spaces);
        * a list of mappings is numbered nested sections ``[0]:``, ``[1]:``...

    Values of one level are aligned on the longest key of that level.
    """
    rows = list(rows)
    pad = _INDENT * indent
    width = max((len(_label(k)) + 1 for k, v in rows if _is_scalar_row(v)), default=0)
    lines: list[str] = []
    for key, value in rows:
        label = _label(key)
        if _is_scalar_row(value):
            lines.append(f"{pad}{label + ':':<{width}} {_scalar_row(key, value)}".rstrip())
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{label}:")
            lines.extend(render_fields(value.items(), indent + 1))
        elif all(isinstance(v, str) for v in value):
            lines.append(f"{pad}{label}:")
            lines.extend(f"{pad}{_INDENT}{_printable(v)}" for v in value)
        else:
            lines.append(f"{pad}{label}:")
            items = [
                (f"[{i}]", v if isinstance(v, Mapping) else {"value": v})
                for i, v in enumerate(value)
            ]
            lines.extend(render_fields(items, indent + 1))
    return lines


def _json_default(value: Any) -> Any:
    """``json.dumps`` hook: make any value the library might hand over serializable."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def print_json(data: Any, file: TextIO | None = None) -> None:
    """Print ``data`` as indented JSON, keys in their given order."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    print(text, file=file if file is not None else sys.stdout)


def print_lines(lines: Iterable[str], file: TextIO | None = None) -> None:
    """Print rendered lines (from :func:`render_fields`), one per line."""
    out = file if file is not None else sys.stdout
    for line in lines:
        print(line, file=out)


# -- shared plumbing ------------------------------------------------------------------


def _open(path: str, args: argparse.Namespace) -> DiskImage:
    """Open an image read-only with the common options; failures become one line."""
    try:
        return open_image(
            path,
            "r",
            format=getattr(args, "format", None),
            strict=bool(getattr(args, "strict", False)),
        )
    except PyvhdxError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that opens an image shares."""
    parser.add_argument("image", metavar="IMAGE", help="the image file (VHDX, VHD or raw)")
    parser.add_argument(
        "-f",
        "--format",
        choices=[f.value for f in ImageFormat],
        default=None,
        help="image format (default: detected from the content, never the name)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse images with non-fatal defects (e.g. a bad VHD checksum)",
    )


# -- info -----------------------------------------------------------------------------

_IDENTIFIER_LABELS = {"vhdx": "page 83 id", "vhd": "unique id"}


def info_rows(info: ImageInfo) -> list[Row]:
    """The human ``pyvhdx info`` report as rows for :func:`render_fields`."""
    rows: list[Row] = [
        ("image", info.filename),
        ("file format", info.format),
        ("disk type", info.disk_type),
        ("virtual size", format_size(info.virtual_size)),
        ("file size", format_size(info.file_size)),
    ]
    if info.block_size is not None:
        rows.append(("block size", format_size(info.block_size)))
    rows += [
        ("logical sector size", format_size(info.logical_sector_size)),
        ("physical sector size", format_size(info.physical_sector_size)),
    ]
    if info.creator is not None:
        rows.append(("creator", info.creator))
    if info.identifier is not None:
        rows.append((_IDENTIFIER_LABELS.get(info.format, "identifier"), str(info.identifier)))
    rows.append(("log replayed", info.log_replayed))
    if info.dirty != info.log_replayed:
        rows.append(("dirty", info.dirty))
    if info.header_copy is not None:
        rows.append(("header copy", info.header_copy))
    if info.region_table_copy is not None:
        rows.append(("region table copy", info.region_table_copy))
    rows.append(("failed copies", [str(c) for c in info.failed_copies]))
    rows.append(("problems", [str(p) for p in info.problems]))
    if info.allocation is not None:
        rows.append(("allocation", info.allocation.to_dict()))
    if info.parent is not None:
        rows.append(("parent", info.parent))
    if info.format_specific:
        rows.append(("format specific information", info.format_specific))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    """``pyvhdx info``: what the image is, which copies were used, what is wrong."""
    with _open(args.image, args) as img:
        info = img.info()
    if args.json:
        print_json(info.to_dict())
    else:
        print_lines(render_fields(info_rows(info)))
    return EXIT_OK


def _add_info_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "info",
        parents=[common],
        help="show what an image is and how it is laid out",
        description="Show the format, sizes, identity, header and region table copies, "
        "problems, allocation and parent locator of an image.",
    )
    _add_image_options(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON (keys as qemu-img info --output=json where they exist)",
    )
    p.set_defaults(func=cmd_info)


_SUBCOMMANDS: Sequence[Callable[[Any, argparse.ArgumentParser], None]] = (_add_info_parser,)


# -- main -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``pyvhdx`` argument parser with every subcommand."""
    # --debug is accepted before and after the subcommand. On the subparsers its
    # default is SUPPRESS, so an absent one does not overwrite the main parser's value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read, check and inspect VHDX and VHD virtual disk images.",
        epilog="Exit status: 0 success, 1 image problem, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub, common)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _warning_printer(debug: bool) -> Callable[..., None]:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = f"{PROG}: warning: {_one_line(str(message))}"
        if debug:
            text += f" ({category.__name__} at {filename}:{lineno})"
        with contextlib.suppress(OSError):
            print(text, file=sys.stderr)

    return show


def _error(message: str) -> None:
    with contextlib.suppress(OSError):
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)


def _silence_stdout() -> None:
    """After EPIPE on stdout: point it at /dev/null so the exit-time flush is quiet."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _exit_status(code: object) -> int:
    """The int status of a ``SystemExit`` code (argparse: 0 for help, 2 for usage)."""
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyvhdx`` command line and return its exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` if None.

    Returns:
        0 on success, 1 for an image problem, 2 for a usage error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error, --help, --version
        return _exit_status(exc.code)
    debug = bool(getattr(args, "debug", False))
    func: Callable[[argparse.Namespace], int] = args.func
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _warning_printer(debug)
        try:
            status = func(args)
            sys.stdout.flush()
            return status
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_FAILURE
        except (CommandError, PyvhdxError, OSError) as exc:
            if debug:
                traceback.print_exc()
            elif isinstance(exc, OSError) and exc.strerror:
                name = f"{exc.filename}: " if exc.filename else ""
                _error(f"{name}{exc.strerror}")
            else:
                _error(str(exc))
            return EXIT_FAILURE
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            return EXIT_INTERRUPTED
