"""The subcommands: ``cmd_<name>(args) -> int``, each with its argparse parser.

Adding a subcommand: write ``cmd_<name>(args) -> int``, decorate it with
:func:`_subcommand` (its parser) and name it in :data:`COMMAND_NAMES`. Reports
are built in :mod:`pyvhdx.cli.reports`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from ..constants import DiskType, ImageFormat
from ..errors import PyvhdxError
from ..suffix import format_from_suffix
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    cannot_run,
    error,
    named,
    naming,
    open_image_for,
    open_options,
    parse_size,
    positive_int,
    want_progress,
)
from .render import format_size, print_json, print_lines, printable, render_fields

if TYPE_CHECKING:  # the library is imported by the commands that use it, not for --help
    from ..image import DiskImage

# -- parsers: each option declared once, added by _subcommand ----------------------------

_Option = Callable[[argparse.ArgumentParser], Any]


def _arg(*flags: str, **spec: Any) -> _Option:
    """An option (or positional) as ``parser.add_argument(*flags, **spec)`` adds it."""
    return lambda parser: parser.add_argument(*flags, **spec)


def _flag(*flags_and_help: str) -> _Option:
    """An on/off option (``store_true``); the last argument is its help."""
    *flags, help = flags_and_help
    return _arg(*flags, action="store_true", help=help)


_FORMATS: Final = [f.value for f in ImageFormat]

#: Format names qemu-img uses for pyvhdx's (``-f vpc`` is a VHD).
_FORMAT_ALIASES: Final = {"vpc": "vhd"}


def _format_name(text: str) -> str:
    """A format given on the command line, qemu-img's names accepted (``vpc``)."""
    name = text.lower()
    return _FORMAT_ALIASES.get(name, name)


def _format_arg(*flags: str, choices: Sequence[str] = _FORMATS, **spec: Any) -> _Option:
    """An option naming an image format: one of ``choices``, or qemu-img's alias of one."""
    return _arg(*flags, type=_format_name, choices=choices, **spec)


def _format_option(help: str) -> _Option:
    """``-f``/``--format`` of an image that is read (any format pyvhdx reads)."""
    return _format_arg("-f", "--format", help=f"{help}; vpc means vhd, as in qemu-img")


#: ``-p``/``--progress``/``--no-progress`` (see :func:`~pyvhdx.cli.common.want_progress`).
_PROGRESS: Final = _arg(
    "-p",
    "--progress",
    action=argparse.BooleanOptionalAction,
    help="progress bar on stderr (default: when stderr is a terminal; -p as in qemu-img)",
)


def _overwrite(what: str) -> _Option:
    """``--force``/``--overwrite`` (one option, two names): replace an existing output."""
    return _arg(
        "--force",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help=f"replace an existing {what}",
    )


def _storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--storage-option``: VALUE as JSON when it parses (``true``,
    ``10``), else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    import json

    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _group(title: str, options: Sequence[_Option]) -> _Option:
    """``options`` under their own heading in the command's help."""

    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(title)
        for option in options:
            option(group)  # type: ignore[arg-type]  # a group adds arguments as a parser does

    return add


#: ``--parent`` of a command that reads one image.
_PARENT: Final = _arg(
    "--parent",
    metavar="PATH",
    help="a differencing disk's parent (tried before the paths the image records, which "
    "are looked up in the image's folder only)",
)


def _reading_options(*parents: _Option) -> _Option:
    """How a command that reads images opens them (info, map, hash, inspect, convert,
    compare, serve, mount): ``open_image``'s options (:func:`~pyvhdx.cli.common.open_options`).
    ``parents``: the command's parent options (default: ``--parent``)."""
    return _group(
        "how the image is opened",
        [
            *(parents or [_PARENT]),
            _flag(
                "--salvage",
                "read a truncated image: the blocks past the end of the file read as zeros "
                "(listed as problems; read-only)",
            ),
            _flag(
                "--allow-missing-parent",
                "read a differencing disk whose parent is not found: the parent's data "
                "reads as zeros",
            ),
            _flag(
                "-U",
                "--force-share",
                "read an image another process (pyvhdx or qemu) has locked, taking no lock "
                "(as qemu-img -U; its data may be inconsistent while it is written)",
            ),
            _arg(
                "--storage-option",
                dest="storage_options",
                action="append",
                type=_storage_option,
                metavar="KEY=VALUE",
                help="an fsspec option for an image given as a URL (s3://, az://, gs://, "
                "http(s)://), e.g. anon=true or endpoint_url=http://host:9000; repeat for "
                "several; VALUE is read as JSON when it parses (true, 10), else as a string; "
                "a protocol as KEY holds a store's own options, as in "
                '\'s3={"anon": true}\' beside \'az={"account_name": "x"}\'',
            ),
        ],
    )


#: The options every command that opens one image shares.
_IMAGE_OPTIONS: Final = [
    _arg("image", metavar="IMAGE", help="the image file or URL (VHDX, VHD or raw)"),
    _format_option("image format (default: detected from the content, never the name)"),
    _flag("--strict", "refuse images with non-fatal defects (e.g. a bad VHD checksum)"),
    _reading_options(),
]


def _layout_options(
    *,
    disk_type: str | None,
    block_size_help: str,
    logical_sector_size: int | None,
    physical_sector_size: int | None,
    sector_help: str | None = None,
) -> list[_Option]:
    """The layout of a new image (create, convert), with the command's defaults."""
    return [
        _arg(
            "--type",
            dest="disk_type",
            choices=["dynamic", "fixed"],
            default=disk_type,
            help="dynamic (blocks allocated on write; the default) or fixed",
        ),
        _arg("--block-size", type=parse_size, metavar="SIZE", help=block_size_help),
        *(
            _arg(f"--{kind}-sector-size", type=int, choices=[512, 4096], default=default, help=help)
            for kind, default, help in (
                (
                    "logical",
                    logical_sector_size,
                    f"VHDX logical sector size ({sector_help or 'default 512'}; VHD: 512 only)",
                ),
                (
                    "physical",
                    physical_sector_size,
                    f"VHDX physical sector size ({sector_help or 'default 4096'})",
                ),
            )
        ),
    ]


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options ``names`` of ``args``, as keyword arguments of the same names."""
    return {name: getattr(args, name) for name in names}


def _report(args: argparse.Namespace, data: Any, lines: Callable[[], Iterable[str]]) -> int:
    """Print ``data`` as JSON with ``--json``, else the human ``lines``; exit 0."""
    if args.json:
        print_json(data)
    else:
        print_lines(lines())
    return EXIT_OK


def _result_json(result: Any) -> dict[str, Any]:
    """A library result dataclass as JSON: its fields, in order, keys in kebab case."""
    import dataclasses

    from ..info import kebab_fields

    return kebab_fields(result, *(field.name for field in dataclasses.fields(result)))


_Command = Callable[[argparse.Namespace], int]
_ADDERS: dict[str, Callable[..., None]] = {}


def _subcommand(
    name: str, *, help: str, description: str, epilog: str | None = None, options: Sequence[_Option]
) -> Callable[[_Command], _Command]:
    """Register ``cmd_<name>`` as the subcommand ``name``: its parser has the options
    shared by all (``common``, given when the parser is built) and ``options``."""

    def register(func: _Command) -> _Command:
        def add(sub: Any, common: argparse.ArgumentParser, *, full: bool = True) -> None:
            if not full:  # named in the list of commands only: built when chosen
                sub.add_parser(name, help=help)
                return
            parser = sub.add_parser(
                name, parents=[common], help=help, description=description, epilog=epilog
            )
            for option in options:
                option(parser)
            parser.set_defaults(func=func)

        _ADDERS[name] = add
        return func

    return register


@_subcommand(
    "info",
    help="show what an image is and how it is laid out",
    description="Show the format, sizes, identity, header and region table copies, "
    "problems, allocation and parent locator of an image.",
    options=[
        *_IMAGE_OPTIONS,
        _flag(
            "--backing-chain",
            "describe every image of a differencing chain, the child first (JSON: a list)",
        ),
        _flag(
            "--json",
            "print JSON (keys as qemu-img info --output=json where they exist; a "
            "differencing disk's parent as backing-filename and backing-image)",
        ),
    ],
)
def cmd_info(args: argparse.Namespace) -> int:
    """``pyvhdx info``: what the image is, which copies were used, what is wrong;
    with ``--backing-chain``, for each image of the chain (as ``qemu-img info``)."""
    from .reports import backing_chain, backing_keys, info_json, info_rows

    args.allow_missing_parent = True  # describe the child even when its parent is gone
    data: list[dict[str, Any]] = []
    lines: list[str] = []
    with open_image_for(args.image, args) as img, naming(args.image):
        for i, image in enumerate(backing_chain(img) if args.backing_chain else [img]):
            info = image.info()
            if args.json:  # a chain lists each image once: no nested backing-image
                data.append(info_json(image, info, backing_image=not args.backing_chain))
            else:
                lines += [""] * bool(i) + render_fields(info_rows(info, backing_keys(image)))
    return _report(args, data if args.backing_chain else (data or [{}])[0], lambda: lines)


def _name_format(path: str) -> str | None:
    """The image format the file name gives (``.vhdx``/``.avhdx``, ``.vhd``/``.avhd``)."""
    fmt = format_from_suffix(path)
    return fmt.value if fmt in (ImageFormat.VHDX, ImageFormat.VHD) else None


@_subcommand(
    "create",
    help="create an empty VHDX or VHD image",
    description="Create an empty image. The format comes from -f or the file name "
    "(.vhdx/.avhdx: VHDX, .vhd/.avhd: VHD). Sizes take binary suffixes: 512, 4K, 10M, "
    "64G, 1T. With --parent BASE, create a differencing child of BASE (a checkpoint "
    "disk): its size, sector sizes and format are BASE's, its block size 2M; do not "
    "write to BASE afterwards (merge the child into it instead).",
    options=[
        _arg("file", metavar="FILE", help="the new image file"),
        _arg(
            "size",
            metavar="SIZE",
            type=parse_size,
            nargs="?",
            help="virtual size (e.g. 10G); with --parent, the parent's (optional)",
        ),
        _arg(
            "--parent",
            metavar="BASE",
            help="make a differencing child of this VHDX or VHD (same format)",
        ),
        _format_arg("-f", "--format", choices=["vhdx", "vhd"], help="image format (vpc: vhd)"),
        *_layout_options(
            disk_type=None,
            block_size_help="block size of a dynamic image (default VHDX 32M, VHD 2M) "
            "or a child (2M)",
            logical_sector_size=None,
            physical_sector_size=None,
        ),
        _flag("--preallocate", "write out the data area of a fixed image (--type fixed)"),
        _flag("--azure", "an Azure-ready fixed VHD: size rounded up to a whole MiB, 20M to 32T"),
        _overwrite("file"),
        _flag("--json", "print what was made as JSON"),
    ],
)
def cmd_create(args: argparse.Namespace) -> int:
    """``pyvhdx create``: make an empty VHDX or VHD (or a differencing child of
    ``--parent``, whose size, sector sizes and format are the parent's) and describe it."""
    import pyvhdx  # the package's create(), not the module of that name

    options = _child_options(args) if args.parent is not None else _create_options(args)
    if options is None:
        return EXIT_USAGE
    try:
        size = pyvhdx.create(
            args.file,
            args.size,
            **_given(args, "block_size", "logical_sector_size", "overwrite"),
            **options,
        )
    except FileExistsError as exc:
        raise CommandError(f"{args.file}: exists (use --force to replace it)") from exc
    if args.parent is not None:
        _note_parent_elsewhere(args.file, args.parent)
    elif size != args.size:
        error(f"size rounded up from {args.size} to {size} bytes (Azure takes whole MiB)", "note")
    how = argparse.Namespace(format=options.get("format"), parent=args.parent)
    with open_image_for(args.file, how) as img:
        info = img.info()
    data = info.to_dict()
    if args.parent is None:
        data["requested-size"] = args.size
    else:
        data["backing-filename"] = args.parent
    from .reports import created_rows

    return _report(
        args, data, lambda: render_fields(created_rows(info, size, args.size, args.parent))
    )


def _create_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``pyvhdx.create`` options of a new base image (None: a usage error, reported)."""
    if args.size is None:
        error("create: a SIZE is needed (or --parent BASE to make a differencing child)")
        return None
    # -f, else the file's extension, else VHD for --azure
    fmt = args.format or _name_format(args.file) or ("vhd" if args.azure else None)
    if fmt is None:
        error(
            f"create: cannot tell the format from the name {args.file!r}: "
            "use -f vhdx or -f vhd (or a .vhdx or .vhd name)"
        )
        return None
    if fmt == "vhd" and args.physical_sector_size not in (None, 512):
        raise CommandError("a VHD has no physical sector size: --physical-sector-size is VHDX only")
    disk_type = args.disk_type or ("fixed" if args.azure else "dynamic")
    if args.preallocate and disk_type != "fixed":
        error("create: --preallocate is for a fixed disk (--type fixed): a dynamic one has none")
        return None
    options: dict[str, Any] = {
        "format": fmt,
        "disk_type": disk_type,
        "preallocate": args.preallocate,
        "azure": args.azure,
    }
    if args.physical_sector_size is not None:
        options["physical_sector_size"] = args.physical_sector_size
    return options


def _child_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``pyvhdx.create`` options of a differencing child (None: a usage error, reported)."""
    fixed_only = [
        name
        for name, given in (
            ("--type", args.disk_type),
            ("--azure", args.azure),
            ("--preallocate", args.preallocate),
        )
        if given
    ]
    if fixed_only:
        error(
            f"create: {', '.join(fixed_only)} cannot be used with --parent "
            "(a child is a differencing disk)"
        )
        return None
    return {
        "format": args.format or _name_format(args.file),  # None: the parent's format
        "physical_sector_size": args.physical_sector_size,
        "parent": args.parent,
    }


def _note_parent_elsewhere(child: str, parent: str) -> None:
    """A child is opened with its parent looked up beside it only: say so if it is not."""
    child_dir = os.path.dirname(os.path.abspath(child))
    if os.path.dirname(os.path.abspath(parent)) != child_dir:
        error(
            "the parent is not in the child's directory; pyvhdx opens "
            f"the child only with --parent {parent}",
            "note",
        )


@_subcommand(
    "merge",
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
    options=[
        _arg("child", metavar="CHILD", help="the differencing disk (VHDX or VHD)"),
        _arg(
            "--parent",
            metavar="PATH",
            help="CHILD's parent (tried before the paths CHILD records)",
        ),
        _flag("--keep-child", "keep CHILD afterwards (it opens only with linkage checks off)"),
        _arg(
            "--into",
            metavar="ANCESTOR",
            help="merge the whole chain from CHILD down to ANCESTOR into ANCESTOR (as "
            "Merge-VHD -DestinationPath); the disks between are merged and deleted, the one "
            "above ANCESTOR first, so running it again resumes it",
        ),
        _PROGRESS,
        _flag("--json", "print what was merged as JSON"),
    ],
)
def cmd_merge(args: argparse.Namespace) -> int:
    """``pyvhdx merge``: merge a differencing disk into its parent, as Merge-VHD does."""
    from ..merge import merge_chain, merge_image

    if args.into is not None:
        if args.parent is not None or args.keep_child:
            error("merge: --into cannot be used with --parent or --keep-child")
            return EXIT_USAGE
        results = merge_chain(args.child, args.into, progress=want_progress(args.progress))
        return _merge_report(args, *results)
    result = merge_image(
        args.child,
        parent=args.parent,
        keep_child=args.keep_child,
        progress=want_progress(args.progress),
    )
    return _merge_report(args, result)


def _merge_report(args: argparse.Namespace, *results: Any) -> int:
    """What merge, merge --into and apply print: one report a merge (JSON: a list for
    --into)."""
    data = [_result_json(r) for r in results]
    from .reports import merge_rows

    lines = [line for r in results for line in render_fields(merge_rows(r))]
    many = getattr(args, "into", None) is not None
    return _report(args, data if many else data[0], lambda: lines)


@_subcommand(
    "check",
    help="check an image's structures and report every problem",
    description="Check both header and region table copies, checksums, metadata, the "
    "log and every BAT entry (VHDX), or both footer copies, the dynamic header and every "
    "BAT entry (VHD). Every finding has a severity, the structure and its file offset; "
    "errors say what a repair would do. Works on images that cannot be opened.",
    epilog="Exit status: 0 no errors (warnings allowed), 1 errors found, 2 the check "
    "could not run.",
    options=[
        _arg("image", metavar="IMAGE", help="the image file (VHDX, VHD or raw)"),
        _format_option("image format (default: detected from the content)"),
        _flag("--json", "print the report as JSON"),
    ],
)
def cmd_check(args: argparse.Namespace) -> int:
    """``pyvhdx check``: every structure a reader relies on; exit 0 clean, 1 errors, 2 failed."""
    from ..check import check_image

    try:
        report = check_image(args.image, format=args.format)
    except (OSError, PyvhdxError) as exc:
        return cannot_run(exc, args)
    from .reports import check_lines

    _report(args, report.to_dict(), lambda: check_lines(report))
    return report.exit_code


@_subcommand(
    "map",
    help="show which ranges of the disk are stored where",
    description="Print the allocation map as runs: start, length, what the range reads "
    "as (data, zero, unallocated) and, for data, where it is stored in the file. "
    "Streams: a 64 TiB disk maps in seconds.",
    options=[
        *_IMAGE_OPTIONS,
        _arg(
            "--offset",
            "--start-offset",
            type=parse_size,
            default=0,
            metavar="N",
            help="first byte to map (suffixes K, M, G, T allowed)",
        ),
        _arg(
            "--length",
            "--max-length",
            type=parse_size,
            metavar="N",
            help="bytes to map (default: to the end of the disk)",
        ),
        _flag(
            "--json",
            "print the entries of qemu-img map --output=json "
            "(start, length, depth, present, zero, data, offset)",
        ),
    ],
)
def cmd_map(args: argparse.Namespace) -> int:
    """``pyvhdx map``: the allocation map as runs, streamed window by window."""
    from ..compare import allocation_map

    with open_image_for(args.image, args) as img, naming(args.image):
        size = img.virtual_size
        start = min(args.offset, size)
        length = size - start if args.length is None else min(args.length, size - start)
        runs = allocation_map(img, start, length) if length else iter(())
        from .reports import map_json, map_table

        if args.json:
            sys.stdout.write(map_json(runs))  # all or nothing: JSON is never cut short
        else:
            map_table(sys.stdout, runs, chain=img.disk_type is DiskType.DIFFERENCING)
    return EXIT_OK


def _open_second(args: argparse.Namespace) -> DiskImage:
    """compare's IMAGE2, whose parent option is --parent2 (its errors say so)."""
    try:
        return open_image_for(
            args.image_b, args, format=args.format_b, strict=False, parent=args.parent2
        )
    except CommandError as exc:
        exc.args = (str(exc).replace("--parent PATH", "--parent2 PATH"),)
        raise


@_subcommand(
    "compare",
    help="compare the contents of two images of any formats",
    description="Compare the virtual contents of two images (VHDX, VHD or raw, in any "
    "combination) and print the first differing byte offset. Ranges unallocated in "
    "both are not read. Images of different sizes are identical if the larger one "
    "reads as zeros past the smaller one's end (unless --strict). The options on how "
    "an image is opened apply to both, but --parent names IMAGE1's parent and --parent2 "
    "IMAGE2's (as -f and -F).",
    epilog="Exit status: 0 identical, 1 different, 2 error.",
    options=[
        _arg("image_a", metavar="IMAGE1", help="the first image (file or URL)"),
        _arg("image_b", metavar="IMAGE2", help="the second image (file or URL)"),
        _format_arg("-f", dest="format_a", help="format of IMAGE1 (vpc: vhd)"),
        _format_arg("-F", dest="format_b", help="format of IMAGE2 (vpc: vhd)"),
        _flag(
            "-s",
            "--strict",
            "also fail on a size difference or on a range stored in one image only",
        ),
        _flag("-q", "--quiet", "print nothing; use the exit status"),
        _flag(
            "--json",
            "print the result as JSON: identical, difference (offset, reason: content, "
            "size or allocation), size-mismatch and both images' names and sizes",
        ),
        _reading_options(
            _arg("--parent", metavar="PATH", help="IMAGE1's parent, if a differencing disk"),
            _arg("--parent2", metavar="PATH", help="IMAGE2's parent, if a differencing disk"),
        ),
    ],
)
def cmd_compare(args: argparse.Namespace) -> int:
    """``pyvhdx compare``: 0 identical, 1 different, 2 error (as ``qemu-img compare``)."""
    import dataclasses

    from ..compare import find_difference

    say = (lambda text: None) if args.quiet or args.json else print
    try:
        # -s is compare's own strictness (sizes, allocation), not the open's
        with (
            open_image_for(args.image_a, args, format=args.format_a, strict=False) as a,
            _open_second(args) as b,
        ):
            if a.virtual_size != b.virtual_size and not args.strict:
                say("Warning: Image size mismatch!")
            diff = find_difference(a, b, strict=args.strict)
            sizes = a.virtual_size, b.virtual_size
    except (CommandError, OSError, PyvhdxError) as exc:
        return cannot_run(exc, args)
    if args.json and not args.quiet:
        print_json(
            {
                "image1": {"filename": args.image_a, "virtual-size": sizes[0]},
                "image2": {"filename": args.image_b, "virtual-size": sizes[1]},
                "identical": diff is None,
                "size-mismatch": sizes[0] != sizes[1],
                "difference": None if diff is None else dataclasses.asdict(diff),
            }
        )
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


@_subcommand(
    "inspect",
    help="show every on-disk structure, as found (forensic view)",
    description="Show every structure of the file as found: VHDX file identifier, both "
    "headers and region tables with their checksums, the metadata items, the parent "
    "locator, every log entry with the active sequence and what replaying it changes, "
    "a BAT summary; VHD footers, dynamic header, parent locators, geometry and BAT. "
    "Lists the file ranges no structure references and whether they hold non-zero "
    "bytes. Never writes; works on images that cannot be opened.",
    options=[
        *_IMAGE_OPTIONS,
        _arg(
            "--no-scan",
            dest="scan",
            action="store_false",
            help="do not read unreferenced ranges to tell whether they hold non-zero bytes",
        ),
        _flag("--json", "print the complete report as JSON"),
    ],
)
def cmd_inspect(args: argparse.Namespace) -> int:
    """``pyvhdx inspect``: every structure as found in the file (read-only)."""
    from ..inspect import inspect_image

    options = open_options(args, format=None)  # the format is inspect's own argument
    with naming(args.image):
        report = inspect_image(
            args.image, format=args.format, scan_unreferenced=args.scan, **options
        )
    from .reports import inspect_lines

    _report(args, report, lambda: inspect_lines(report))
    probe = report.get("open", {})
    if not probe.get("opens", True):  # the report is whole, but the image is not usable
        error(f"{args.image}: does not open: {probe.get('error', 'unknown error')}")
        return EXIT_FAILURE
    return EXIT_OK


def _hash_algorithm(text: str) -> str:
    from ..hashing import normalize_algorithms

    try:
        return normalize_algorithms([text])[0]
    except PyvhdxError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


#: ``-a``/``--algorithm`` of hash and scan.
_ALGORITHMS: Final = _arg(
    "-a",
    "--algorithm",
    dest="algorithms",
    action="append",
    type=_hash_algorithm,
    metavar="NAME",
    help="hashlib algorithm (md5, sha1, sha256, sha512, ...); repeat for several (default: sha256)",
)


@_subcommand(
    "hash",
    help="hash the virtual disk content (md5, sha1, sha256, ... in one pass)",
    description="Hash the whole virtual content of an image, as a raw conversion would "
    "give it, with one or more algorithms in a single streaming pass. Unallocated "
    "ranges are hashed as zeros without being read.",
    epilog="Output: '<hex>  IMAGE' as sha256sum prints it, or 'ALGORITHM (IMAGE) = <hex>' "
    "lines with --tag or several algorithms.",
    options=[
        *_IMAGE_OPTIONS,
        _ALGORITHMS,
        _flag("--tag", "name the algorithm on each line (BSD style)"),
        _PROGRESS,
        _flag("--json", "print the digests as JSON"),
    ],
)
def cmd_hash(args: argparse.Namespace) -> int:
    """``pyvhdx hash``: digests of the virtual content, several in one pass."""
    from ..hashing import DEFAULT_ALGORITHMS, hash_image

    algorithms = args.algorithms or list(DEFAULT_ALGORITHMS)
    with open_image_for(args.image, args) as img, naming(args.image):
        digests = hash_image(img, algorithms, progress=want_progress(args.progress))
        size = img.virtual_size
    # Untagged lines (as sha256sum prints them) cannot say which digest is which:
    # with several algorithms the tagged form (sha256sum --tag) is used.
    tagged = args.tag or len(digests) > 1
    name = printable(args.image)
    lines = [
        f"{alg.upper()} ({name}) = {hexdigest}" if tagged else f"{hexdigest}  {name}"
        for alg, hexdigest in digests.items()
    ]
    data = {"filename": args.image, "virtual-size": size, "digests": digests}
    return _report(args, data, lambda: lines)


@_subcommand(
    "convert",
    help="convert between raw, VHD and VHDX",
    description="Convert SOURCE (raw, VHD or VHDX; a differencing chain is flattened) "
    "into a new image. Unallocated ranges are never read, all-zero blocks are not "
    "written, and the result is renamed into place only when complete.",
    options=[
        _arg("source", metavar="SOURCE", help="the image to convert (file or URL)"),
        _arg("destination", metavar="DESTINATION", help="the new image"),
        _format_arg(
            "-O",
            "--output-format",
            help="destination format (default: from its extension: .vhdx, .vhd, else raw; "
            "vpc: vhd, as in qemu-img)",
        ),
        _format_option("source format (default: detected from the content)"),
        *_layout_options(
            disk_type="dynamic",
            block_size_help="block size of a dynamic image (default VHDX 32M, VHD 2M)",
            logical_sector_size=None,
            physical_sector_size=None,
            sector_help="default: the source's (a VHD or raw source: 512 and 4096)",
        ),
        _overwrite("destination"),
        _reading_options(),
        _PROGRESS,
        _arg(
            "--sync",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="fsync the new image before renaming it into place (default: on)",
        ),
        _flag("--json", "print what was done as JSON"),
    ],
)
def cmd_convert(args: argparse.Namespace) -> int:
    """``pyvhdx convert``: raw, VHD or VHDX into a new image of any of them."""
    from ..convert import convert_image
    from ..newfile import DestinationError

    source_options = open_options(args, format=None)  # the source's format: src_format
    storage_options = source_options.pop("storage_options", None)
    try:
        result = convert_image(
            args.source,
            args.destination,
            format=args.output_format,
            src_format=args.format,
            storage_options=storage_options,
            source_options=source_options,
            progress=want_progress(args.progress),
            force=args.overwrite,
            **_given(args, "disk_type", "block_size", "sync"),
            **_given(args, "logical_sector_size", "physical_sector_size"),
        )
    except FileExistsError as exc:
        raise CommandError(f"{args.destination}: exists (use --force to replace it)") from exc
    except DestinationError as exc:  # names the destination itself
        raise CommandError(str(exc)) from exc
    except PyvhdxError as exc:  # the source's, unless it names the destination
        raise CommandError(named(str(exc), args.source, also=[args.destination])) from exc
    return _report(args, _result_json(result), lambda: ())


@_subcommand(
    "resize",
    help="grow or shrink a VHDX, grow a VHD (Resize-VHD)",
    description="Give IMAGE the virtual size SIZE, in place and crash-safe (a VHDX "
    "through its log; a VHD in an order of flushed writes). Growing adds zeros; "
    "partition tables are not changed (a GPT's backup header stays where it was, for the "
    "guest's tools to move). Shrinking needs --shrink, works on VHDX only (as with "
    "Hyper-V) and never goes below the minimum size: the end of the last partition "
    "(the GPT backup header included) or, without a partition table, the last non-zero "
    "byte. An image with differencing children beside it is refused unless --force.",
    epilog="Exit status: 0 resized, 1 image problem, 2 usage error (a size the image "
    "cannot have, below its minimum, or a shrink without --shrink).",
    options=[
        _arg("image", metavar="IMAGE", help="the VHDX or VHD"),
        _arg("size", metavar="SIZE", type=parse_size, nargs="?", help="the new virtual size"),
        _flag("--shrink", "allow a smaller size (VHDX)"),
        _flag("--to-minimum", "shrink to the minimum size (VHDX)"),
        _flag("--force", "resize although differencing disks beside IMAGE have it as parent"),
        _flag("--json", "print the sizes as JSON"),
    ],
)
def cmd_resize(args: argparse.Namespace) -> int:
    """``pyvhdx resize``: Resize-VHD."""
    from ..errors import InvalidArgumentError
    from ..resize import resize_image

    if (args.size is None) == (not args.to_minimum):
        error("resize: give SIZE or --to-minimum (not both)")
        return EXIT_USAGE
    try:
        result = resize_image(
            args.image, args.size, **_given(args, "shrink", "to_minimum", "force")
        )
    except InvalidArgumentError as exc:
        error(named(str(exc), args.image))
        return EXIT_USAGE
    rows = [
        ("resized", args.image),
        ("from", format_size(result.old_size)),
        ("to", format_size(result.new_size)),
    ]
    if result.minimum_size is not None:
        rows.append(("minimum size", format_size(result.minimum_size)))
    return _report(args, _result_json(result), lambda: render_fields(rows))


@_subcommand(
    "compact",
    help="give back the space of blocks a dynamic disk no longer needs (Optimize-VHD)",
    description="Compact a dynamic VHDX or VHD in place, crash-safe. --mode zero releases "
    "stored blocks that read as zeros and punches holes for them; quick also moves the "
    "last blocks into the holes and cuts the file; full (the default) also releases "
    "blocks that only hold space the guest's ext2/3/4 file system marks free (they read "
    "as zeros afterwards, as after a TRIM).",
    options=[
        _arg("image", metavar="IMAGE", help="the dynamic VHDX or VHD"),
        _arg(
            "--mode",
            choices=["full", "quick", "zero"],
            default="full",
            help="what is given back (see above; default full)",
        ),
        _flag("--dry-run", "only tell what would be reclaimed (opens read-only)"),
        _PROGRESS,
        _flag("--json", "print what was done as JSON"),
    ],
)
def cmd_compact(args: argparse.Namespace) -> int:
    """``pyvhdx compact``: Optimize-VHD."""
    from ..compact import compact_image

    result = compact_image(args.image, mode=args.mode, dry_run=args.dry_run)
    data = {**_result_json(result), "bytes-reclaimed": result.bytes_reclaimed}
    verb = "would reclaim" if result.dry_run else "reclaimed"
    rows = [
        ("compacted" if not result.dry_run else "dry run", args.image),
        ("mode", result.mode),
        ("blocks released", str(result.blocks_released)),
        ("blocks moved", str(result.blocks_moved)),
        (
            "file size",
            f"{format_size(result.file_size_before)} -> {format_size(result.file_size_after)}",
        ),
        (verb, format_size(result.bytes_reclaimed)),
    ]
    return _report(args, data, lambda: render_fields(rows))


@_subcommand(
    "set-parent",
    help="point a differencing disk at its (moved) parent (Set-VHD -ParentPath)",
    description="Rewrite CHILD's parent locator to name PARENT (relative and absolute "
    "paths, as Hyper-V writes them), after checking that PARENT is the disk CHILD was "
    "made over (VHDX: its DataWriteGuid; VHD: its unique id). CHILD's data does not "
    "change. Crash-safe: a VHDX through its log, a VHD in an order of flushed writes.",
    options=[
        _arg("child", metavar="CHILD", help="the differencing disk (VHDX or VHD)"),
        _arg("parent", metavar="PARENT", help="its parent, where it is now"),
        _flag(
            "--ignore-id-mismatch",
            "link even when PARENT is not the disk CHILD records (you vouch for its content)",
        ),
    ],
)
def cmd_set_parent(args: argparse.Namespace) -> int:
    """``pyvhdx set-parent``: Set-VHD -ParentPath."""
    from ..setparent import set_parent

    set_parent(args.child, args.parent, ignore_id_mismatch=args.ignore_id_mismatch)
    return EXIT_OK


@_subcommand(
    "set",
    help="change a VHDX's disk identifier or physical sector size (Set-VHD)",
    description="Edit IMAGE's metadata in place through its log: a new disk identifier "
    "(Page 83 Data, as Set-VHD -ResetDiskIdentifier), or the physical sector size. The "
    "data and the DataWriteGuid stay, so differencing children stay linked.",
    options=[
        _arg("image", metavar="IMAGE", help="the VHDX"),
        _flag("--reset-identifier", "give the disk a new identifier"),
        _arg(
            "--physical-sector-size",
            type=int,
            choices=[512, 4096],
            help="the physical sector size to record (512 or 4096)",
        ),
    ],
)
def cmd_set(args: argparse.Namespace) -> int:
    """``pyvhdx set``: Set-VHD's other edits."""
    from ..setparent import set_disk_properties

    if not args.reset_identifier and args.physical_sector_size is None:
        error("set: nothing to change (--reset-identifier, --physical-sector-size)")
        return EXIT_USAGE
    new_id = set_disk_properties(
        args.image, **_given(args, "reset_identifier", "physical_sector_size")
    )
    if new_id is not None:
        print(new_id)
    return EXIT_OK


@_subcommand(
    "measure",
    help="tell the file size a convert would produce (as qemu-img measure)",
    description="The size of the dynamic image (required: every block SOURCE stores) "
    "and of the fixed one (fully allocated) that convert would write, without writing.",
    options=[
        _arg("source", metavar="SOURCE", help="the image (or raw disk) to measure"),
        _format_arg(
            "-O",
            "--output-format",
            default="vhdx",
            help="the format convert would write (default vhdx; vpc: vhd)",
        ),
        _arg(
            "--block-size",
            type=parse_size,
            metavar="SIZE",
            help="its block size (default VHDX 32M, VHD 2M)",
        ),
        _flag("--json", "print qemu-img measure's JSON keys"),
    ],
)
def cmd_measure(args: argparse.Namespace) -> int:
    """``pyvhdx measure``: qemu-img measure."""
    from ..measure import measure_image

    m = measure_image(args.source, format=args.output_format, block_size=args.block_size)
    lines = [f"required size: {m.required}", f"fully allocated size: {m.fully_allocated}"]
    return _report(args, m.to_dict(), lambda: lines)


@_subcommand(
    "diff",
    help="what changed between two disks or checkpoints, as runs or a delta image",
    description="List the runs of 512-byte sectors whose content differs between BASE and "
    "NEW. When NEW is a differencing disk over BASE (any depth), the runs are what the "
    "levels above BASE store, without reading data (--exact compares them too); else "
    "both are read where either stores data. -o DELTA writes a differencing child of "
    "BASE holding NEW's changed runs (BASE + DELTA reads as NEW; pyvhdx apply merges "
    "it); with --raw-delta, a sparse raw file and DELTA.json instead.",
    epilog="Exit status: 0 equal, 1 different, 2 error (as pyvhdx compare).",
    options=[
        _arg("base", metavar="BASE", help="the older disk"),
        _arg("new", metavar="NEW", help="the newer disk"),
        _arg("-o", "--output", metavar="DELTA", help="write the changes as a delta"),
        _flag("--raw-delta", "write DELTA as a sparse raw file with DELTA.json beside it"),
        _flag("--exact", "on a chain, compare the stored ranges and keep what differs"),
        _flag("--compare", "read and compare both even when NEW is a child of BASE"),
        _overwrite("DELTA"),
        _flag("--json", "print the runs as JSON"),
    ],
)
def cmd_diff(args: argparse.Namespace) -> int:
    """``pyvhdx diff``: changed runs, and a delta."""
    from ..diff import diff_images, write_delta, write_raw_delta

    if args.output is not None and not args.overwrite and os.path.lexists(args.output):
        raise CommandError(f"{args.output}: exists (use --force to replace it)")
    result = diff_images(
        args.base, args.new, exact=args.exact, method="compare" if args.compare else None
    )
    if args.output is not None:
        if args.raw_delta:
            write_raw_delta(args.new, args.output, result, base=args.base)
        else:
            write_delta(args.base, args.new, args.output, result, overwrite=args.overwrite)
    lines = [
        f"{result.method}: {len(result.runs)} runs, {result.changed_bytes} bytes changed",
        *(f"{start:#x} +{length:#x}" for start, length in result.runs),
    ]
    _report(args, result.to_dict(), lambda: lines)
    return EXIT_FAILURE if result.runs else EXIT_OK


@_subcommand(
    "apply",
    help="apply a delta made by pyvhdx diff -o onto its base (or a copy of it)",
    description="Merge DELTA (a differencing disk made over BASE, or over the disk BASE "
    "is a copy of) into BASE, through BASE's crash-consistent write path; resumable as "
    "pyvhdx merge. DELTA is kept and other deltas are not touched.",
    options=[
        _arg("base", metavar="BASE", help="the disk to update"),
        _arg("delta", metavar="DELTA", help="the delta (a differencing VHDX or VHD)"),
        _PROGRESS,
        _flag("--json", "print what was merged as JSON"),
    ],
)
def cmd_apply(args: argparse.Namespace) -> int:
    """``pyvhdx apply``: merge a delta into its base, keeping the delta."""
    from ..merge import merge_image

    result = merge_image(
        args.delta,
        parent=args.base,
        keep_child=True,
        reparent=False,
        progress=want_progress(args.progress),
    )
    return _merge_report(args, result)


@_subcommand(
    "serve",
    help="serve an image or chain over NBD (qemu-nbd's job, for every image pyvhdx reads)",
    description="Export IMAGE as a network block device on 127.0.0.1 (or --socket). "
    "Read-only by default: the file is never opened for writing. --writable writes "
    "through pyvhdx's crash-consistent write path; --overlay FILE keeps the writes in a "
    "new differencing child instead, leaving IMAGE untouched. Stops cleanly on Ctrl-C or "
    "SIGTERM (writes flushed).",
    options=[
        *_IMAGE_OPTIONS,
        _arg("--port", type=int, default=10809, help="TCP port (default 10809)"),
        _arg("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"),
        _arg("--socket", metavar="PATH", help="listen on this Unix socket instead"),
        _arg("--name", default="", help="the export name (default: empty)"),
        _flag("--writable", "let clients write into IMAGE"),
        _arg("--overlay", metavar="FILE", help="keep writes in this new differencing child"),
    ],
)
def cmd_serve(args: argparse.Namespace) -> int:
    """``pyvhdx serve``: an NBD server."""
    from pathlib import Path

    from ..nbd import NBDServer, ServeOptions, serve

    if args.writable and args.overlay:
        error("serve: --writable and --overlay exclude each other")
        return EXIT_USAGE
    if args.force_share and (args.writable or args.overlay):
        error("serve: -U is for read-only exports")
        return EXIT_USAGE
    opts = open_options(args)
    options = ServeOptions(
        args.image,
        name=args.name,
        writable=args.writable,
        overlay=Path(args.overlay) if args.overlay else None,
        open_options=opts,
    )

    def ready(srv: NBDServer) -> None:
        print(f"serving {args.image} on {srv.address}", file=sys.stderr, flush=True)

    serve(
        options,
        host=args.bind,
        port=args.port,
        unix_socket=Path(args.socket) if args.socket else None,
        ready=ready,
    )
    return EXIT_OK


@_subcommand(
    "mount",
    help="mount an image or chain as one file, DIR/disk (FUSE)",
    description="Expose IMAGE's virtual disk as the file DIR/disk until Ctrl-C or "
    "fusermount -u DIR. Read-only by default; --writable writes through pyvhdx's "
    "crash-consistent write path. Needs the 'mount' extra (pip install 'pyvhdx[mount]') "
    "and a system that lets you mount FUSE file systems.",
    options=[
        *_IMAGE_OPTIONS,
        _arg("mountpoint", metavar="DIR", help="an empty directory"),
        _flag("--writable", "let programs write into IMAGE through DIR/disk"),
    ],
)
def cmd_mount(args: argparse.Namespace) -> int:
    """``pyvhdx mount``: FUSE."""
    from ..mount import mount

    if args.force_share and args.writable:
        error("mount: -U is for read-only mounts")
        return EXIT_USAGE
    try:
        mount(args.image, args.mountpoint, writable=args.writable, **open_options(args))
    except ImportError as exc:
        raise CommandError(
            f"mount needs the 'mount' extra (pip install 'pyvhdx[mount]'): {exc}"
        ) from exc
    except RuntimeError as exc:
        raise CommandError(f"{args.mountpoint}: FUSE refused the mount: {exc}") from exc
    return EXIT_OK


@_subcommand(
    "scan",
    help="hash and describe many images at once, on Dask (the 'fleet' extra)",
    description="One row per image: path, format, disk type, virtual size, the digests, "
    "the problems found, and the error of an image that cannot be read (a bad image is a "
    "row, never a failed run). Paths may be fsspec URLs. Runs on Dask's threads.",
    options=[
        _arg("paths", metavar="PATH", nargs="+", help="images (files or URLs)"),
        _ALGORITHMS,
        _arg(
            "--jobs",
            type=positive_int,
            default=None,
            help="images read at once (default: the CPUs)",
        ),
        _flag("--json", "print the rows as JSON"),
    ],
)
def cmd_scan(args: argparse.Namespace) -> int:
    """``pyvhdx scan``: a fleet of images."""
    from ..dask import scan

    algorithms = args.algorithms or ["sha256"]
    rows = scan(args.paths, algorithms=algorithms).compute(
        scheduler="threads", num_workers=args.jobs
    )
    lines = [
        "\t".join(
            [printable(r["path"]), str(r["format"]), str(r["virtual-size"])]
            + [str(r[a]) for a in algorithms]
            + ([printable(r["error"])] if r["error"] else [])
        )
        for r in rows
    ]
    _report(args, rows, lambda: lines)
    return EXIT_FAILURE if any(r["error"] for r in rows) else EXIT_OK


#: The subcommands in the order ``pyvhdx --help`` lists them.
COMMAND_NAMES: Final = (
    "info",
    "convert",
    "create",
    "merge",
    "check",
    "map",
    "compare",
    "inspect",
    "hash",
    "resize",
    "compact",
    "set-parent",
    "set",
    "measure",
    "diff",
    "apply",
    "serve",
    "mount",
    "scan",
)
#: ``add(subparsers, common, full=True)`` for each subcommand, in that order: with
#: ``full=False`` only its name and help line are added.
SUBCOMMANDS: Final = [_ADDERS[name] for name in COMMAND_NAMES]
