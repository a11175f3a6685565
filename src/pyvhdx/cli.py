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
import re
import signal
import sys
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, TextIO

import numpy as np

from . import __version__
from .constants import DiskType, ImageFormat, RunKind
from .errors import PyvhdxError
from .image import DiskImage, open_image
from .info import ImageInfo

__all__ = [
    "CommandError",
    "build_parser",
    "cmd_create",
    "format_size",
    "main",
    "parse_size",
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


def render_fields(rows: Iterable[Row], indent: int = 0, *, tables: bool = False) -> list[str]:
    """Render ``(key, value)`` rows as aligned ``key: value`` lines.

    Values:
        * a scalar is one line (offsets in hex, sizes with a unit, booleans yes/no);
        * a list of numbers is one line, comma separated; an empty one is "none";
        * a list of strings is one indented line per item under ``key:``;
        * a mapping is a nested section (its keys with ``-`` shown as spaces);
        * a list of mappings is numbered nested sections ``[0]:``, ``[1]:``...

    Values of one level are aligned on the longest key of that level. With
    ``tables``, a list of flat records that fits the width is a table instead.
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
            lines.extend(render_fields(value.items(), indent + 1, tables=tables))
        elif all(isinstance(v, str) for v in value):
            lines.append(f"{pad}{label}:")
            lines.extend(f"{pad}{_INDENT}{_printable(v)}" for v in value)
        elif (
            tables
            and _is_table(value)
            and (
                max(map(len, table := table_lines(value, indent + 1))) <= _TABLE_WIDTH
                or (
                    len(value) <= 4
                    and max(map(len, table := transposed_lines(value, indent + 1))) <= _TABLE_WIDTH
                )
            )
        ):
            lines.append(f"{pad}{label}:")
            lines.extend(table)
        else:
            lines.append(f"{pad}{label}:")
            items = [
                (f"[{i}]", v if isinstance(v, Mapping) else {"value": v})
                for i, v in enumerate(value)
            ]
            lines.extend(render_fields(items, indent + 1, tables=tables))
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
            parent=getattr(args, "parent", None),
            # info and inspect describe a child whose parent is missing (and say so)
            allow_missing_parent=bool(getattr(args, "allow_missing_parent", False)),
            force_share=bool(getattr(args, "force_share", False)),
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
    args.allow_missing_parent = True  # describe the child even when its parent is gone
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


# -- create ---------------------------------------------------------------------------

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
_CREATE_FORMATS = {".vhdx": "vhdx", ".avhdx": "vhdx", ".vhd": "vhd", ".avhd": "vhd"}


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


def _create_format(args: argparse.Namespace) -> str | None:
    """The format to create: ``-f``, else the file's extension, else VHD for ``--azure``."""
    if args.format is not None:
        return str(args.format)
    by_name = _CREATE_FORMATS.get(os.path.splitext(args.file)[1].lower())
    return by_name or ("vhd" if args.azure else None)


def cmd_create(args: argparse.Namespace) -> int:
    """``pyvhdx create``: make an empty VHDX or VHD (or a child of ``--parent``) and
    describe it."""
    import pyvhdx  # the package's create(), not the module of that name

    if args.parent is not None:
        return _create_child(args)
    if args.size is None:
        _error("create: a SIZE is needed (or --parent BASE to make a differencing child)")
        return EXIT_USAGE
    fmt = _create_format(args)
    if fmt is None:
        _error(
            f"create: cannot tell the format from the name {args.file!r}: "
            "use -f vhdx or -f vhd (or a .vhdx or .vhd name)"
        )
        return EXIT_USAGE
    disk_type = args.type or ("fixed" if args.azure else "dynamic")
    if fmt == "vhd" and args.physical_sector_size not in (None, 512):
        raise CommandError("a VHD has no physical sector size: --physical-sector-size is VHDX only")
    options: dict[str, Any] = {}
    if args.physical_sector_size is not None:
        options["physical_sector_size"] = args.physical_sector_size
    try:
        size = pyvhdx.create(
            args.file,
            args.size,
            format=fmt,
            disk_type=disk_type,
            block_size=args.block_size,
            logical_sector_size=args.logical_sector_size,
            overwrite=args.overwrite,
            preallocate=args.preallocate,
            azure=args.azure,
            **options,
        )
    except FileExistsError as exc:
        raise CommandError(f"{args.file}: exists (use --overwrite to replace it)") from exc
    with _open(args.file, argparse.Namespace(format=fmt)) as img:
        info = img.info()
    if size != args.size:
        with contextlib.suppress(OSError):
            print(
                f"{PROG}: note: size rounded up from {args.size} to {size} bytes "
                "(Azure takes whole MiB)",
                file=sys.stderr,
            )
    if args.json:
        data = info.to_dict()
        data["requested-size"] = args.size
        print_json(data)
        return EXIT_OK
    rows: list[Row] = [
        ("created", info.filename),
        ("file format", info.format),
        ("disk type", info.disk_type),
        ("virtual size", format_size(size)),
    ]
    if size != args.size:
        rows.append(("requested size", format_size(args.size)))
    if info.block_size is not None:
        rows.append(("block size", format_size(info.block_size)))
    rows += [
        ("logical sector size", format_size(info.logical_sector_size)),
        ("physical sector size", format_size(info.physical_sector_size)),
        ("file size", format_size(info.file_size)),
    ]
    if info.creator is not None:
        rows.append(("creator", info.creator))
    print_lines(render_fields(rows))
    return EXIT_OK


def _create_child(args: argparse.Namespace) -> int:
    """``pyvhdx create --parent BASE CHILD``: a differencing child of BASE (DESIGN.md
    "Parents"); size, sector sizes and format come from the parent."""
    import pyvhdx

    fixed_only = [
        name
        for name, given in (
            ("--type", args.type),
            ("--azure", args.azure),
            ("--preallocate", args.preallocate),
        )
        if given
    ]
    if fixed_only:
        _error(
            f"create: {', '.join(fixed_only)} cannot be used with --parent "
            "(a child is a differencing disk)"
        )
        return EXIT_USAGE
    fmt = args.format or _CREATE_FORMATS.get(os.path.splitext(args.file)[1].lower())
    try:
        size = pyvhdx.create(
            args.file,
            args.size,
            format=fmt,  # None: the parent's format
            block_size=args.block_size,
            logical_sector_size=args.logical_sector_size,
            physical_sector_size=args.physical_sector_size,
            overwrite=args.overwrite,
            parent=args.parent,
        )
    except FileExistsError as exc:
        raise CommandError(f"{args.file}: exists (use --overwrite to replace it)") from exc
    child_dir = os.path.dirname(os.path.abspath(args.file))
    if os.path.dirname(os.path.abspath(args.parent)) != child_dir:
        with contextlib.suppress(OSError):
            print(
                f"{PROG}: note: the parent is not in the child's directory; pyvhdx opens "
                f"the child only with --parent {args.parent}",
                file=sys.stderr,
            )
    with _open(args.file, argparse.Namespace(format=None, parent=args.parent)) as img:
        info = img.info()
    if args.json:
        data = info.to_dict()
        data["backing-filename"] = args.parent
        print_json(data)
        return EXIT_OK
    rows: list[Row] = [
        ("created", info.filename),
        ("file format", info.format),
        ("disk type", info.disk_type),
        ("parent", args.parent),
        ("virtual size", format_size(size)),
    ]
    if info.block_size is not None:
        rows.append(("block size", format_size(info.block_size)))
    rows += [
        ("logical sector size", format_size(info.logical_sector_size)),
        ("physical sector size", format_size(info.physical_sector_size)),
        ("file size", format_size(info.file_size)),
    ]
    if info.parent is not None:
        rows.append(("parent locator", info.parent))
    print_lines(render_fields(rows))
    return EXIT_OK


def _add_create_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "create",
        parents=[common],
        help="create an empty VHDX or VHD image",
        description="Create an empty image. The format comes from -f or the file name "
        "(.vhdx/.avhdx: VHDX, .vhd/.avhd: VHD). Sizes take binary suffixes: 512, 4K, 10M, "
        "64G, 1T. With --parent BASE, create a differencing child of BASE (a checkpoint "
        "disk): its size, sector sizes and format are BASE's, its block size 2M; do not "
        "write to BASE afterwards (merge the child into it instead).",
    )
    p.add_argument("file", metavar="FILE", help="the new image file")
    p.add_argument(
        "size",
        metavar="SIZE",
        type=parse_size,
        nargs="?",
        default=None,
        help="virtual size (e.g. 10G); with --parent, the parent's (optional)",
    )
    p.add_argument(
        "--parent",
        metavar="BASE",
        default=None,
        help="make a differencing child of this VHDX or VHD (same format)",
    )
    p.add_argument("-f", "--format", choices=["vhdx", "vhd"], default=None, help="image format")
    p.add_argument(
        "--type",
        choices=["dynamic", "fixed"],
        default=None,
        help="dynamic (blocks allocated on write; the default) or fixed",
    )
    p.add_argument(
        "--block-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="block size of a dynamic image (default VHDX 32M, VHD 2M) or a child (2M)",
    )
    p.add_argument(
        "--logical-sector-size",
        type=int,
        choices=[512, 4096],
        default=None,
        help="VHDX logical sector size (default 512; VHD: 512 only)",
    )
    p.add_argument(
        "--physical-sector-size",
        type=int,
        choices=[512, 4096],
        default=None,
        help="VHDX physical sector size (default 4096)",
    )
    p.add_argument(
        "--preallocate", action="store_true", help="write out the data area of a fixed image"
    )
    p.add_argument(
        "--azure",
        action="store_true",
        help="an Azure-ready fixed VHD: size rounded up to a whole MiB, 20M to 32T",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--json", action="store_true", help="print what was made as JSON")
    p.set_defaults(func=cmd_create)


# -- merge ----------------------------------------------------------------------------


def cmd_merge(args: argparse.Namespace) -> int:
    """``pyvhdx merge``: merge a differencing disk into its parent, as Merge-VHD does."""
    from .merge import merge_image

    update, close_bar = _merge_progress(args.child)
    try:
        result = merge_image(
            args.child, parent=args.parent, keep_child=args.keep_child, progress=update
        )
    finally:
        close_bar()
    if args.json:
        print_json(
            {
                "child": str(result.child),
                "parent": str(result.parent),
                "bytes-merged": result.bytes_merged,
                "child-deleted": result.child_deleted,
                "reparented": [str(p) for p in result.reparented],
                "resumed": result.resumed,
            }
        )
        return EXIT_OK
    rows: list[Row] = [
        ("merged", str(result.child)),
        ("into", str(result.parent)),
        ("bytes merged", format_size(result.bytes_merged)),
        ("child", "deleted" if result.child_deleted else "kept (it no longer matches its parent)"),
    ]
    if result.resumed:
        rows.append(("resumed", "yes: an interrupted merge of this child was finished"))
    if result.reparented:
        rows.append(("re-parented", [str(p) for p in result.reparented]))
    print_lines(render_fields(rows))
    return EXIT_OK


def _merge_progress(child: str) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """A progress bar on stderr when it is a terminal: the total is what the child holds."""
    if not sys.stderr.isatty():
        return None, lambda: None
    try:
        from tqdm import tqdm

        with open_image(child, resolve_parent=False) as img:
            total = sum(e.length for e in img.extents() if e.kind is not RunKind.PARENT)
    except (ImportError, OSError, PyvhdxError):
        return None, lambda: None  # merge_image reports what is wrong
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def update(done: int) -> None:
        bar.update(done - bar.n)

    return update, bar.close


def _add_merge_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "merge",
        parents=[common],
        help="merge a differencing disk (a checkpoint) into its parent",
        description="Write every range the differencing disk CHILD holds (its data, and the "
        "zeros it stores over its parent) into its parent, as Hyper-V's Merge-VHD does, "
        "through the parent's crash-consistent write path; then delete CHILD. Writing "
        "changes the parent (a VHDX parent gets a new DataWriteGuid), so other children of "
        "the same parent no longer open. CHILD's own children in its folder are re-parented "
        "onto the parent. The merge is recorded beside CHILD (CHILD.pyvhdx-merge) before the "
        "parent is written: if it is interrupted (Ctrl-C, a kill, a full disk), the chain "
        "still reads as before and running the same command again finishes it. The parent "
        "is found as for reading (beside CHILD) unless --parent names it.",
        epilog="Exit status: 0 merged, 1 image problem (not a differencing disk, parent "
        "missing or not CHILD's parent), 2 usage error.",
    )
    p.add_argument("child", metavar="CHILD", help="the differencing disk (VHDX or VHD)")
    p.add_argument(
        "--parent",
        metavar="PATH",
        default=None,
        help="CHILD's parent (tried before the paths CHILD records)",
    )
    p.add_argument(
        "--keep-child",
        action="store_true",
        help="keep CHILD afterwards (it opens only with linkage checks off)",
    )
    p.add_argument("--json", action="store_true", help="print what was merged as JSON")
    p.set_defaults(func=cmd_merge)


# -- check ----------------------------------------------------------------------------

EXIT_CANNOT_RUN = 2  # check and compare: the operation could not run (qemu-img's 2)


def _cannot_run(exc: BaseException, args: argparse.Namespace) -> int:
    """Report why a check or compare could not run (one line, or the traceback)."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    elif isinstance(exc, OSError) and exc.strerror:
        _error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}")
    else:
        _error(str(exc))
    return EXIT_CANNOT_RUN


def check_lines(report: Any) -> list[str]:
    """The human ``pyvhdx check`` report: one line per finding, then a summary."""
    lines = [f"{report.filename}: {report.format} {report.disk_type or ''}".rstrip()]
    for f in report.findings:
        where = f" at {f.offset:#x}" if f.offset is not None else ""
        field = f" ({f.field})" if f.field else ""
        lines.append(f"{f.severity.value}: {f.structure}{where}{field}: {_printable(f.message)}")
        if f.repair:
            lines.append(f"{_INDENT}repair: {f.repair}")
    errors, warns = len(report.errors), len(report.warnings)
    if errors:
        summary = f"{errors} error{'s' if errors != 1 else ''}"
    else:
        summary = "No errors were found on the image."
    if warns:
        summary += f"{'' if errors else ' '}{', ' if errors else ''}{warns} warning"
        summary += "s" if warns != 1 else ""
    if report.total_blocks is not None and report.allocated_blocks is not None:
        unit = "" if report.block_size is None else f" of {report.block_size} bytes"
        summary += f"\n{report.allocated_blocks}/{report.total_blocks} blocks{unit} allocated"
    if report.image_end_offset is not None:
        summary += f"\nImage end offset: {report.image_end_offset}"
    if not report.opened:
        summary += "\nThe image cannot be opened for reading."
    lines.append(summary)
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    """``pyvhdx check``: every structure a reader relies on; exit 0 clean, 1 errors, 2 failed."""
    from .check import check_image

    try:
        report = check_image(args.image, format=args.format)
    except (OSError, PyvhdxError) as exc:
        return _cannot_run(exc, args)
    if args.json:
        print_json(report.to_dict())
    else:
        print_lines(check_lines(report))
    return report.exit_code


def _add_check_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "check",
        parents=[common],
        help="check an image's structures and report every problem",
        description="Check both header and region table copies, checksums, metadata, the "
        "log and every BAT entry (VHDX), or both footer copies, the dynamic header and every "
        "BAT entry (VHD). Every finding has a severity, the structure and its file offset; "
        "errors say what a repair would do. Works on images that cannot be opened.",
        epilog="Exit status: 0 no errors (warnings allowed), 1 errors found, 2 the check "
        "could not run.",
    )
    p.add_argument("image", metavar="IMAGE", help="the image file (VHDX, VHD or raw)")
    p.add_argument(
        "-f",
        "--format",
        choices=[f.value for f in ImageFormat],
        default=None,
        help="image format (default: detected from the content)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)


# -- map ------------------------------------------------------------------------------

_MAP_KINDS = {
    RunKind.DATA: "data",
    RunKind.ZERO: "zero",
    RunKind.UNMAPPED: "unallocated",
    RunKind.PARENT: "parent (not open)",
}


def map_entry(run: Any) -> dict[str, Any]:
    """A ``qemu-img map --output=json`` entry (qapi ``MapEntry``) for one run.

    ``offset`` is present for data only (qemu also gives it for raw holes).
    Ranges a missing parent should supply are ``depth`` one further down and
    neither present, zero nor data.
    """
    if run.kind is RunKind.PARENT:
        return {
            "start": run.start,
            "length": run.length,
            "depth": run.depth + 1,
            "present": False,
            "zero": False,
            "data": False,
        }
    data = run.kind is RunKind.DATA
    entry = {
        "start": run.start,
        "length": run.length,
        "depth": run.depth,
        "present": True,
        "zero": run.reads_zero,
        "data": data,
    }
    if data:
        entry["offset"] = run.file_offset
    return entry


def _merged_entries(runs: Iterable[Any]) -> Iterable[dict[str, Any]]:
    """Map entries, adjacent ones with equal flags (and contiguous data) merged, as qemu."""
    pending: dict[str, Any] | None = None
    for run in runs:
        e = map_entry(run)
        if (
            pending is not None
            and all(pending[k] == e[k] for k in ("depth", "present", "zero", "data"))
            and (not e["data"] or e["offset"] == pending["offset"] + pending["length"])
        ):
            pending["length"] += e["length"]
            continue
        if pending is not None:
            yield pending
        pending = e
    if pending is not None:
        yield pending


def _json_entry(e: Mapping[str, Any]) -> str:
    """One entry in qemu-img's layout: ``{ "start": 0, ..., "offset": 5}``."""
    return "{ " + ", ".join(f'"{k}": {json.dumps(v)}' for k, v in e.items()) + "}"


def cmd_map(args: argparse.Namespace) -> int:
    """``pyvhdx map``: the allocation map as runs, streamed window by window."""
    from .compare import allocation_map

    out = sys.stdout
    with _open(args.image, args) as img:
        size = img.virtual_size
        start = min(args.offset, size)
        length = size - start if args.length is None else min(args.length, size - start)
        runs = allocation_map(img, start, length) if length else iter(())
        if args.json:
            out.write("[")
            for i, e in enumerate(_merged_entries(runs)):
                out.write((",\n" if i else "") + _json_entry(e))
            out.write("]\n")
            return EXIT_OK
        if img.disk_type is DiskType.DIFFERENCING:
            _map_chain_table(out, runs)
            return EXIT_OK
        out.write(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}{'Kind':<14}File\n")
        for run in runs:
            data = run.kind is RunKind.DATA
            kind = _MAP_KINDS[run.kind] + (" (hole)" if run.hole else "")
            mapped = f"{run.file_offset:#x}" if data else "-"
            name = _printable(run.filename) if data else ""
            out.write(
                f"{run.start:<#16x}{run.length:<#16x}{mapped:<16}{kind:<14}{name}".rstrip() + "\n"
            )
    return EXIT_OK


def _map_chain_table(out: TextIO, runs: Iterable[Any]) -> None:
    """The human map of a differencing chain: every run names the image that holds it
    (``depth`` 0 is the image mapped, 1 its parent, ...), zero runs included, since a
    child's ZERO block hides its parent's data. A range whose parent is not open
    names no file and is one level deeper, as in the JSON map.
    """
    out.write(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}{'Kind':<18}{'Depth':<7}File\n")
    for run in runs:
        data = run.kind is RunKind.DATA
        kind = _MAP_KINDS[run.kind] + (" (hole)" if run.hole else "")
        mapped = f"{run.file_offset:#x}" if data else "-"
        missing = run.kind is RunKind.PARENT
        depth = run.depth + 1 if missing else run.depth
        name = "-" if missing else _printable(run.filename)
        out.write(
            f"{run.start:<#16x}{run.length:<#16x}{mapped:<16}{kind:<18}{depth:<7}{name}".rstrip()
            + "\n"
        )


def _add_map_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "map",
        parents=[common],
        help="show which ranges of the disk are stored where",
        description="Print the allocation map as runs: start, length, what the range reads "
        "as (data, zero, unallocated) and, for data, where it is stored in the file. "
        "Streams: a 64 TiB disk maps in seconds.",
    )
    _add_image_options(p)
    p.add_argument(
        "--offset",
        "--start-offset",
        type=parse_size,
        default=0,
        metavar="N",
        help="first byte to map (suffixes K, M, G, T allowed)",
    )
    p.add_argument(
        "--length",
        "--max-length",
        type=parse_size,
        default=None,
        metavar="N",
        help="bytes to map (default: to the end of the disk)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the entries of qemu-img map --output=json "
        "(start, length, depth, present, zero, data, offset)",
    )
    p.set_defaults(func=cmd_map)


# -- compare --------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    """``pyvhdx compare``: 0 identical, 1 different, 2 error (as ``qemu-img compare``)."""
    from .compare import find_difference

    say = (lambda text: None) if args.quiet else print
    try:
        with (
            _open(args.image_a, argparse.Namespace(format=args.format_a)) as a,
            _open(args.image_b, argparse.Namespace(format=args.format_b)) as b,
        ):
            if a.virtual_size != b.virtual_size and not args.strict:
                say("Warning: Image size mismatch!")
            diff = find_difference(a, b, strict=args.strict)
    except (CommandError, OSError, PyvhdxError) as exc:
        return _cannot_run(exc, args)
    if diff is None:
        say("Images are identical.")
        return EXIT_OK
    if diff.reason == "size":
        say("Strict mode: Image size mismatch!")
    elif diff.reason == "allocation":
        say(f"Strict mode: Offset {diff.offset} block status mismatch!")
    else:
        say(f"Content mismatch at offset {diff.offset}!")
    return EXIT_FAILURE


def _add_compare_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    formats = [f.value for f in ImageFormat]
    p = sub.add_parser(
        "compare",
        parents=[common],
        help="compare the contents of two images of any formats",
        description="Compare the virtual contents of two images (VHDX, VHD or raw, in any "
        "combination) and print the first differing byte offset. Ranges unallocated in "
        "both are not read. Images of different sizes are identical if the larger one "
        "reads as zeros past the smaller one's end (unless --strict).",
        epilog="Exit status: 0 identical, 1 different, 2 error.",
    )
    p.add_argument("image_a", metavar="IMAGE1", help="the first image")
    p.add_argument("image_b", metavar="IMAGE2", help="the second image")
    p.add_argument("-f", dest="format_a", choices=formats, help="format of IMAGE1")
    p.add_argument("-F", dest="format_b", choices=formats, help="format of IMAGE2")
    p.add_argument(
        "-s",
        "--strict",
        action="store_true",
        help="also fail on a size difference or on a range stored in one image only",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing; use the exit status")
    p.set_defaults(func=cmd_compare)


# -- inspect --------------------------------------------------------------------------

_TABLE_ROWS = 32  # rows of a table shown by the human inspect report (JSON has them all)
_HEX_SHOWN = 64  # bytes of an item's hex shown by the human inspect report


def _short_size(size: int) -> str:
    """A compact byte count for tables: ``512 B``, ``8 KiB``, ``1.5 MiB``."""
    text = format_size(size)
    return text.split(" (")[0].replace("bytes", "B").replace("1 byte", "1 B")


def _cell(key: str, value: Any) -> str:
    """One table cell: offsets and checksums in hex, lengths compact, booleans yes/no."""
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(key, v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{_label(k)} {_cell(k, v)}" for k, v in value.items())
    if isinstance(value, bool) or value is None:
        return _scalar(key, value)
    if isinstance(value, int):
        name = key.lower()
        if name.endswith(("offset", "checksum", "tail")):
            return f"{value:#x}"
        if name.endswith(("length", "size", "bytes", "capacity")):
            return _short_size(value)
        return str(value)
    return _printable(str(value))


_TABLE_WIDTH = 150  # wider tables are shown as one section per record


def _flat(value: Any) -> bool:
    """A table cell: a scalar, a list of scalars, or a mapping of scalars."""
    if isinstance(value, Mapping):
        return all(not isinstance(v, Mapping) and _flat(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(not isinstance(v, (Mapping, list, tuple)) for v in value)
    return True


def _is_table(value: Any) -> bool:
    """A non-empty list of mappings whose values all fit in a cell."""
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, Mapping) and all(_flat(x) for x in v.values()) for v in value)
    )


def table_lines(records: Sequence[Mapping[str, Any]], indent: int = 0) -> list[str]:
    """Render records as an aligned table (columns in first-seen key order)."""
    pad = _INDENT * indent
    columns: list[str] = []
    for r in records:
        columns.extend(k for k in r if k not in columns)
    shown = records[:_TABLE_ROWS]
    cells = [[_cell(c, r.get(c)) if c in r else "" for c in columns] for r in shown]
    heads = [_label(c) for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = [pad + "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append(pad + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if len(records) > len(shown):
        lines.append(f"{pad}... {len(records) - len(shown)} more (see --json)")
    return lines


def transposed_lines(records: Sequence[Mapping[str, Any]], indent: int = 0) -> list[str]:
    """Render a few records side by side: one row per field, one column per record.

    Columns are headed by each record's first field (``copy 1``, ``where end``);
    a field holding a mapping becomes one row per key.
    """
    pad = _INDENT * indent
    columns = []
    for r in records:
        first = next(iter(r.items()), ("", ""))
        columns.append(f"{_label(first[0])} {_cell(first[0], first[1])}".strip())
    fields: list[tuple[str, str, tuple[str, ...]]] = []  # (label, key for rendering, path)
    for r in records:
        for k, v in list(r.items())[1:]:
            paths: list[tuple[str, ...]] = (
                [(k, str(sub)) for sub in v] if isinstance(v, Mapping) else [(k,)]
            )
            for path in paths:
                if all(f[2] != path for f in fields):
                    fields.append((" ".join(_label(x) for x in path), path[-1], path))

    def get(r: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
        value: Any = r
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                return False, None
            value = value[key]
        return True, value

    cells = []
    for _, key, path in fields:
        row: list[str] = []
        for r in records:
            found, value = get(r, path)
            row.append(_cell(key, value) if found else "")
        cells.append(row)
    width = max(len(label) for label, _, _ in fields) + 1 if fields else 0
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    heads = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = [f"{pad}{'':<{width}} {heads}".rstrip()]
    for (label, _, _), row in zip(fields, cells, strict=True):
        text = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        lines.append(f"{pad}{label + ':':<{width}} {text}".rstrip())
    return lines


def _metadata_row(item: Mapping[str, Any]) -> dict[str, Any]:
    """One metadata item as a table row: flags as letters, the value in a few words."""
    flags = "".join(
        c for c, k in (("U", "is-user"), ("V", "is-virtual-disk"), ("R", "is-required")) if item[k]
    )
    value = item.get("value")
    if isinstance(value, Mapping) and "values" in value:
        text = f"{len(value['values'])} keys (see parent locator)"
    elif isinstance(value, Mapping):
        text = ", ".join(f"{_label(k)} {_cell(k, v)}" for k, v in value.items() if k != "flags")
    elif value is not None:
        text = _cell(str(item.get("name", "")), value)
    elif "data-hex" in item:
        text = item["data-hex"][:32] + ("..." if len(item["data-hex"]) > 32 else "")
    else:
        text = ""
    if "error" in item:
        text = f"error: {item['error']}" + (f"; {text}" if text else "")
    known = item["name"] not in ("user", "unknown")
    return {
        "item": item["name"] if known else f"{item['name']} {item['item-id']}",
        "file-offset": item["file-offset"],
        "length": item["length"],
        "flags": flags or "-",
        "value": text,
    }


def _human_view(value: Any) -> Any:
    """The inspect report trimmed for people: digests dropped, hex and reserved areas short."""
    if isinstance(value, Mapping) and "item-id" in value and "is-user" in value:
        return _metadata_row(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        log_entry = "zero-descriptors" in value and "data-descriptors" in value
        for k, v in value.items():
            if k in ("old-sha256", "new-sha256"):
                continue
            if log_entry and k in ("file-offset", "descriptor-count", "zero-descriptors"):
                continue
            if log_entry and k == "data-descriptors":
                k, v = "descriptors", f"{value['zero-descriptors']} zero, {v} data"
            if k == "data-hex" and isinstance(v, str) and len(v) > 2 * _HEX_SHOWN:
                v = v[: 2 * _HEX_SHOWN] + "..."
            elif k.startswith("reserved") and isinstance(v, Mapping) and "nonzero-bytes" in v:
                k, v = f"{k}-nonzero-bytes", v["nonzero-bytes"]
            out[k] = _human_view(v)
        return out
    if isinstance(value, list):
        return [_human_view(v) for v in value]
    return value


def inspect_lines(report: Mapping[str, Any]) -> list[str]:
    """The human ``pyvhdx inspect`` report."""
    view = dict(_human_view(report))
    metadata = view.get("metadata")
    if isinstance(metadata, dict) and "items" in metadata:
        items = metadata.pop("items")
        metadata["item flags"] = "U user, V virtual disk, R required"
        metadata["items"] = items
    probe = view.pop("open", {})
    if probe.get("opens"):
        opens = "yes" + (", log replayed in memory" if probe.get("log-replayed") else "")
    else:
        opens = f"no: {probe.get('error', 'unknown error')}"
    head: list[Row] = [
        ("image", view.pop("filename")),
        ("format", view.pop("format")),
        ("file size", format_size(view.pop("file-size"))),
        ("opens", opens),
    ]
    problems = [
        f"{p['structure']}{' at ' + hex(p['offset']) if 'offset' in p else ''}: {p['message']}"
        for p in probe.get("problems", [])
    ]
    if problems:
        head.append(("problems", problems))
    errors = [f"{e['section']}: {e['message']}" for e in view.pop("errors", [])]
    head.append(("errors", errors))
    lines = render_fields(head, tables=True)
    for key, value in view.items():
        lines.append("")
        lines.extend(render_fields([(key, value)], tables=True))
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    """``pyvhdx inspect``: every structure as found in the file (read-only)."""
    from .inspect import inspect_image

    options: dict[str, Any] = {}
    if getattr(args, "parent", None):
        options["parent"] = args.parent
    if getattr(args, "strict", False):
        options["strict"] = True
    if getattr(args, "force_share", False):
        options["force_share"] = True
    try:
        report = inspect_image(
            args.image, format=args.format, scan_unreferenced=args.scan, **options
        )
    except PyvhdxError as exc:
        raise CommandError(f"{args.image}: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"{args.image}: {exc.strerror or exc}") from exc
    if args.json:
        print_json(report)
    else:
        print_lines(inspect_lines(report))
    return EXIT_OK


def _add_inspect_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="show every on-disk structure, as found (forensic view)",
        description="Show every structure of the file as found: VHDX file identifier, both "
        "headers and region tables with their checksums, the metadata items, the parent "
        "locator, every log entry with the active sequence and what replaying it changes, "
        "a BAT summary; VHD footers, dynamic header, parent locators, geometry and BAT. "
        "Lists the file ranges no structure references and whether they hold non-zero "
        "bytes. Never writes; works on images that cannot be opened.",
    )
    _add_image_options(p)
    p.add_argument(
        "--no-scan",
        dest="scan",
        action="store_false",
        help="do not read unreferenced ranges to tell whether they hold non-zero bytes",
    )
    p.add_argument("--json", action="store_true", help="print the complete report as JSON")
    p.set_defaults(func=cmd_inspect)


# -- hash -----------------------------------------------------------------------------


def _hash_algorithm(text: str) -> str:
    from .hashing import normalize_algorithms

    try:
        return normalize_algorithms([text])[0]
    except PyvhdxError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def cmd_hash(args: argparse.Namespace) -> int:
    """``pyvhdx hash``: digests of the virtual content, several in one pass."""
    from .hashing import DEFAULT_ALGORITHMS, hash_image

    algorithms = args.algorithms or list(DEFAULT_ALGORITHMS)
    with _open(args.image, args) as img:
        try:
            digests = hash_image(img, algorithms, progress=args.progress)
        except PyvhdxError as exc:
            raise CommandError(f"{args.image}: {exc}") from exc
        size = img.virtual_size
    if args.json:
        print_json({"filename": args.image, "virtual-size": size, "digests": digests})
        return EXIT_OK
    # Untagged lines (as sha256sum prints them) cannot say which digest is which:
    # with several algorithms the tagged form (sha256sum --tag) is used.
    tagged = args.tag or len(digests) > 1
    name = _printable(args.image)
    for algorithm, digest in digests.items():
        if tagged:
            print(f"{algorithm.upper()} ({name}) = {digest}")
        else:
            print(f"{digest}  {name}")
    return EXIT_OK


def _add_hash_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "hash",
        parents=[common],
        help="hash the virtual disk content (md5, sha1, sha256, ... in one pass)",
        description="Hash the whole virtual content of an image, as a raw conversion would "
        "give it, with one or more algorithms in a single streaming pass. Unallocated "
        "ranges are hashed as zeros without being read.",
        epilog="Output: '<hex>  IMAGE' as sha256sum prints it, or 'ALGORITHM (IMAGE) = <hex>' "
        "lines with --tag or several algorithms.",
    )
    _add_image_options(p)
    p.add_argument(
        "-a",
        "--algorithm",
        dest="algorithms",
        action="append",
        type=_hash_algorithm,
        metavar="NAME",
        help="hashlib algorithm (md5, sha1, sha256, sha512, ...); repeat for several "
        "(default: sha256)",
    )
    p.add_argument("--tag", action="store_true", help="name the algorithm on each line (BSD style)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--json", action="store_true", help="print the digests as JSON")
    p.set_defaults(func=cmd_hash)


# -- convert ---------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    """``pyvhdx convert``: raw, VHD or VHDX into a new image of any of them."""
    from .convert import convert_image
    from .newfile import DestinationError

    try:
        result = convert_image(
            args.source,
            args.destination,
            format=args.output_format,
            disk_type=args.type,
            block_size=args.block_size,
            logical_sector_size=args.logical_sector_size,
            physical_sector_size=args.physical_sector_size,
            src_format=args.format,
            force=args.force,
            progress=args.progress,
            sync=args.sync,
        )
    except FileExistsError as exc:
        raise CommandError(f"{args.destination}: exists (use --force to replace it)") from exc
    except DestinationError as exc:  # names the destination itself
        raise CommandError(str(exc)) from exc
    except PyvhdxError as exc:
        raise CommandError(f"{args.source}: {exc}") from exc
    if args.json:
        print_json(
            {
                "destination": str(result.destination),
                "format": result.format.value,
                "disk-type": result.disk_type.value,
                "virtual-size": result.virtual_size,
                "bytes-read": result.bytes_read,
                "bytes-written": result.bytes_written,
            }
        )
    return EXIT_OK


def _add_convert_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "convert",
        parents=[common],
        help="convert between raw, VHD and VHDX",
        description="Convert SOURCE (raw, VHD or VHDX; a differencing chain is flattened) "
        "into a new image. Unallocated ranges are never read, all-zero blocks are not "
        "written, and the result is renamed into place only when complete.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")
    p.add_argument(
        "-O",
        "--output-format",
        choices=[f.value for f in ImageFormat],
        default=None,
        help="destination format (default: from its extension: .vhdx, .vhd, else raw)",
    )
    p.add_argument(
        "-f",
        "--format",
        choices=[f.value for f in ImageFormat],
        default=None,
        help="source format (default: detected from the content)",
    )
    p.add_argument("--type", choices=["dynamic", "fixed"], default="dynamic")
    p.add_argument("--block-size", type=parse_size, default=None, metavar="SIZE")
    p.add_argument("--logical-sector-size", type=int, choices=[512, 4096], default=512)
    p.add_argument("--physical-sector-size", type=int, choices=[512, 4096], default=4096)
    p.add_argument("--force", action="store_true", help="replace an existing destination")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--sync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fsync the new image before renaming it into place (default: on)",
    )
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=cmd_convert)


_SUBCOMMANDS: Sequence[Callable[[Any, argparse.ArgumentParser], None]] = (
    _add_info_parser,
    _add_convert_parser,
    _add_create_parser,
    _add_merge_parser,
    _add_check_parser,
    _add_map_parser,
    _add_compare_parser,
    _add_inspect_parser,
    _add_hash_parser,
)


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


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is so that it cleans up as for Ctrl-C
    (a temporary file being built is removed: pyvhdx.newfile)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_TERMINATING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`_Terminated` while a command runs.

    Only the first signal raises; later ones are ignored, so they cannot cut the
    cleanup short. A signal that is ignored (``nohup``) stays ignored. The old
    handlers are back afterwards. In a thread other than the main one (where
    handlers cannot be set) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise _Terminated(signum)

    saved: dict[int, Any] = {}
    try:
        for sig in _TERMINATING_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                saved[sig] = signal.signal(sig, handler)
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """Run the ``pyvhdx`` command line and return its exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` if None.

    Returns:
        0 on success, 1 for an image problem, 2 for a usage error; 130 after
        Ctrl-C, 128 + the signal number after SIGTERM or SIGHUP.
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
            with _signals_as_interrupt():
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
        except KeyboardInterrupt as exc:
            if debug:
                traceback.print_exc()
            if isinstance(exc, _Terminated):
                _error(f"interrupted by {signal.Signals(exc.signum).name}")
                return 128 + exc.signum
            return EXIT_INTERRUPTED
