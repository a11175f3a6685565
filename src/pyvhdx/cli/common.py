"""What every subcommand shares: exit codes, one-line errors, opening an image
with the common options, sizes on the command line, progress bars."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Final

from .. import sizes
from ..errors import InvalidArgumentError, PyvhdxError
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
    except BrokenPipeError:  # stdout closed (| head): not the file's failure
        raise
    except PyvhdxError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc


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


def report_error(exc: BaseException, debug: bool) -> None:
    """One ``pyvhdx: error:`` line for ``exc`` (an OSError as ``file: strerror``), or the
    traceback with ``debug``."""
    if debug:
        traceback.print_exc()
    elif isinstance(exc, OSError) and exc.strerror:
        error(cli_advice(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"))
    else:
        error(cli_advice(str(exc)))


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
