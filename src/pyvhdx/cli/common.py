"""What every subcommand shares: exit codes, one-line errors, opening an image
with the common options, sizes on the command line, progress bars."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from .. import sizes
from ..errors import InvalidArgumentError, PyvhdxError
from .render import printable

if TYPE_CHECKING:
    from ..image import DiskImage

PROG = "pyvhdx"

EXIT_OK = 0
EXIT_FAILURE = 1  # image problem, failed check
EXIT_USAGE = 2  # argparse's own code for usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_CANNOT_RUN = 2  # check and compare: the operation could not run (qemu-img's 2)


class CommandError(Exception):
    """A failure a subcommand reports as one ``pyvhdx: error:`` line.

    Attributes:
        status: the exit status: 1, or 2 for a file that does not exist (:func:`exit_status`).
    """

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def exit_status(exc: BaseException) -> int:
    """The exit status of a failure: 2 for a file that does not exist (as for any
    argument that names nothing), else 1."""
    if isinstance(exc, CommandError):
        return exc.status
    return EXIT_USAGE if isinstance(exc, FileNotFoundError) else EXIT_FAILURE


def _mentions(message: str, path: str) -> bool:
    """``message`` names ``path`` (as given or absolute) as a whole name."""
    for name in {path, os.path.abspath(path)}:
        if re.search(rf"(?<![\w./-]){re.escape(name)}(?![\w/-]|\.\w)", message):
            return True
    return False


def named(message: str, *paths: str, also: Sequence[str] = ()) -> str:
    """``message`` naming its file: as it is when it names one of ``paths`` (or of
    ``also``), else prefixed ``path: `` (``a and b: `` for a failure of two files,
    when the library does not say which). A temporary file of pyvhdx's is named as
    the destination it is built for (:func:`pyvhdx.newfile.destination_names`)."""
    from ..newfile import destination_names  # on failure only: start-up imports little

    message = destination_names(message)
    if any(_mentions(message, p) for p in (*paths, *also)):
        return message
    return f"{' and '.join(dict.fromkeys(paths))}: {message}"


def os_error_text(exc: OSError, *paths: str) -> str:
    """``file: strerror`` for an OSError: the file it names (``paths`` if none)."""
    text = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {text}"
    return named(text, *paths) if paths else text


@contextlib.contextmanager
def naming(*paths: str) -> Iterator[None]:
    """Library and OS failures inside as one line naming the file (a CommandError):
    ``path: message`` unless the message names one of ``paths`` already; an OSError
    names the file it is about. A missing file exits 2 (:func:`exit_status`)."""
    try:
        yield
    except (BrokenPipeError, CommandError):  # a closed stdout is not the file's failure
        raise
    except PyvhdxError as exc:
        raise CommandError(named(str(exc), *paths)) from exc
    except OSError as exc:
        raise CommandError(os_error_text(exc, *paths), exit_status(exc)) from exc


#: ``open_image``'s keyword arguments that the reading options set (commands.py).
OPEN_OPTIONS = (
    "format",
    "strict",
    "parent",
    "salvage",
    "allow_missing_parent",
    "force_share",
    "storage_options",
)


def open_options(args: argparse.Namespace, **override: Any) -> dict[str, Any]:
    """``open_image``'s keyword arguments from the options given in ``args`` (then
    ``override``); those not given or off are left out, so the library's defaults hold."""
    given = {name: getattr(args, name, None) for name in OPEN_OPTIONS} | override
    if given["storage_options"]:  # --storage-option KEY=VALUE, repeated: (key, value) pairs
        given["storage_options"] = dict(given["storage_options"])
    return {name: value for name, value in given.items() if value}


def open_image_for(path: str, args: argparse.Namespace, **override: Any) -> DiskImage:
    """Open an image read-only with the reading options (:func:`open_options`);
    failures become one line."""
    with naming(path):
        from ..image import open_image  # when a command opens an image, not for --help

        return open_image(path, "r", **open_options(args, **override))


def parse_size(text: str) -> int:
    """:func:`pyvhdx.sizes.parse_size` as an argparse ``type`` (a bad size is a usage error).

    Raises:
        argparse.ArgumentTypeError: not a size (argparse turns it into a usage error).
    """
    try:
        return sizes.parse_size(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: The arguments that name the files a command works on, in the order a failure the
#: library does not attribute is put down to them (convert: its source).
_FILE_ARGS: Final = ("image", "file", "child", "source", "base", "new", "image_a", "image_b")


def command_files(args: argparse.Namespace) -> tuple[str, ...]:
    """The files the command of ``args`` works on (:data:`_FILE_ARGS` given)."""
    found = (getattr(args, name, None) for name in _FILE_ARGS)
    return tuple(str(f) for f in found if isinstance(f, str))


def positive_int(text: str) -> int:
    """A count of at least 1 from the command line (``--jobs``).

    Raises:
        argparse.ArgumentTypeError: not a whole number of at least 1 (a usage error).
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a whole number of at least 1")
    return value


def report_error(exc: BaseException, debug: bool, files: tuple[str, ...] = ()) -> None:
    """One ``pyvhdx: error:`` line for ``exc`` naming its file (an OSError as ``file:
    strerror``; a library error that names none of ``files`` prefixed with them), or
    the traceback with ``debug``."""
    if debug:
        import traceback

        traceback.print_exc()
    elif isinstance(exc, OSError) and exc.strerror:
        error(os_error_text(exc, *files))
    elif isinstance(exc, PyvhdxError) and files:
        error(named(str(exc), *files))
    else:
        error(str(exc))


#: The library's advice (its keyword arguments) as the command line gives it.
_CLI_WAYS: Final = (
    (re.compile(r"open with salvage=True"), "use --salvage"),
    (re.compile(r"pass (?:force|overwrite)=True"), "use --force"),
)


def cli_advice(message: str) -> str:
    """``message`` with the library's advice (``open with salvage=True``, ``pass
    overwrite=True``) turned into the options that do it (``use --salvage``, ``use --force``)."""
    for pattern, replacement in _CLI_WAYS:
        message = pattern.sub(replacement, message)
    return message


def cannot_run(exc: BaseException, args: argparse.Namespace) -> int:
    """Report why a check or compare could not run (exit 2, as qemu-img)."""
    report_error(exc, bool(getattr(args, "debug", False)), command_files(args))
    return EXIT_CANNOT_RUN


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error(message: str, kind: str = "error") -> None:
    """``pyvhdx: error: message`` on stderr: one line, control characters escaped (a
    name from an image cannot drive the terminal), the library's advice as options
    (:func:`cli_advice`: every command's errors and warnings, inspect's too)."""
    text = printable(one_line(cli_advice(str(message))))
    with contextlib.suppress(OSError):
        print(f"{PROG}: {kind}: {text}", file=sys.stderr)


def want_progress(flag: bool | None) -> bool:
    """``--progress``/``--no-progress``, else a bar when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag
