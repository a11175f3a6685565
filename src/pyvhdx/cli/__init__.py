"""The ``pyvhdx`` command line (DESIGN.md "Command line").

Argparse and rendering only: every fact shown comes from the library
(:meth:`pyvhdx.DiskImage.info` and friends); no format logic lives here.
This module runs a command (:func:`main`: parsing, warnings, signals, exit
codes); :mod:`~pyvhdx.cli.commands` holds the subcommands and their parsers,
:mod:`~pyvhdx.cli.reports` the reports they print, :mod:`~pyvhdx.cli.render`
the generic text and JSON rendering, :mod:`~pyvhdx.cli.common` what the
subcommands share.

Conventions shared by every subcommand:

* stdout is data, stderr is diagnostics;
* exit codes: 0 success, 1 image problem (or failed check), 2 usage error;
* an image problem prints one line, ``pyvhdx: error: <message>``; ``--debug``
  prints the traceback instead;
* library warnings print one line each, ``pyvhdx: warning: <message>``;
* a closed stdout (``pyvhdx info --json x | head -1``) ends the command quietly;
* a progress bar on stderr for long work when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from .._version import __version__
from ..errors import PyvhdxError
from ..sizes import format_size
from .commands import COMMAND_NAMES, SUBCOMMANDS
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    CommandError,
    command_files,
    error,
    exit_status,
    parse_size,
    report_error,
)
from .render import render_fields, table_lines, transposed_lines

__all__ = [  # what tests and the ``pyvhdx`` script import
    "build_parser",
    "format_size",
    "inspect_lines",
    "main",
    "parse_size",
    "render_fields",
    "table_lines",
    "transposed_lines",
]


def __getattr__(name: str) -> Any:
    """``inspect_lines``, re-exported from :mod:`.reports`, which is imported when
    first used rather than at start-up."""
    if name == "inspect_lines":
        from .reports import inspect_lines

        return inspect_lines
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``pyvhdx`` argument parser with every subcommand.

    Given the command line ``argv``, only the subcommand it runs is built (building
    all of them took a fifth of the start-up of ``pyvhdx --help``); a command line
    that runs none gets every subcommand's name and help line.
    """
    # --debug is accepted before and after the subcommand. Its default is SUPPRESS,
    # so an absent one does not overwrite one given before (main reads it with getattr).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Read, check and inspect VHDX and VHD virtual disk images.",
        epilog="Exit status: 0 success, 1 image problem, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else _chosen_command(argv)
    for name, add in zip(COMMAND_NAMES, SUBCOMMANDS, strict=True):
        if chosen is None:  # all of them: in full for the API, else names for the help
            add(sub, common, full=argv is None)
        elif name == chosen:
            add(sub, common)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs: its first word that is not an option (the
    options before a subcommand take no value), if that is a subcommand and no
    ``--help`` or ``--version`` comes before it (they list every subcommand)."""
    for word in argv:
        abbreviated = len(word) > 2 and ("--help".startswith(word) or "--version".startswith(word))
        if word == "--" or word.startswith("-h") or abbreviated:  # argparse takes --he
            return None
        if not word.startswith("-"):
            return word if word in COMMAND_NAMES else None
    return None


def _warning_printer(debug: bool) -> Callable[..., None]:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        where = f" ({category.__name__} at {filename}:{lineno})" if debug else ""
        error(f"{message}{where}", "warning")

    return show


def _tolerant_streams() -> None:
    """Let stdout and stderr print any name: a character their encoding lacks (a
    Unicode file name on an ASCII terminal, ``PYTHONIOENCODING=ascii``) is written as
    a backslash escape instead of failing the command."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


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
    _tolerant_streams()
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2), --help, --version (0)
        code = EXIT_OK if exc.code is None else exc.code
        return code if isinstance(code, int) else EXIT_USAGE
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
        except BrokenPipeError:  # the reader has what it wanted (| head): not a failure
            _silence_stdout()
            return EXIT_OK
        except (CommandError, PyvhdxError, OSError) as exc:
            report_error(exc, debug, command_files(args))
            return exit_status(exc)
        except KeyboardInterrupt as exc:
            if debug:
                import traceback

                traceback.print_exc()
            if isinstance(exc, _Terminated):
                error(f"interrupted by {signal.Signals(exc.signum).name}")
                return 128 + exc.signum
            return EXIT_INTERRUPTED
