"""The image format a file name suggests (for new files only).

An existing image's format is always told by its content
(:func:`pyvhdx.image.detect_format`), never by its name; a name decides only
what ``create`` and ``convert`` make and which files ``merge`` looks at.
"""

from __future__ import annotations

import os
from typing import Final

from .constants import ImageFormat

__all__ = ["IMAGE_SUFFIXES", "format_from_suffix"]

#: Extensions of VHDX and VHD images (``.avhdx``/``.avhd``: Hyper-V checkpoint disks).
IMAGE_SUFFIXES: Final = {
    ".vhdx": ImageFormat.VHDX,
    ".avhdx": ImageFormat.VHDX,
    ".vhd": ImageFormat.VHD,
    ".avhd": ImageFormat.VHD,
}
_RAW_SUFFIXES: Final = (".img", ".raw")


def format_from_suffix(path: str | os.PathLike[str]) -> ImageFormat | None:
    """The format ``path``'s extension names (case-insensitive), or None.

    ``.vhdx``/``.avhdx``: VHDX; ``.vhd``/``.avhd``: VHD; ``.img``/``.raw``: raw.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in _RAW_SUFFIXES:
        return ImageFormat.RAW
    return IMAGE_SUFFIXES.get(suffix)
