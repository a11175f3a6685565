"""pyvhdx: read, write, create, convert and inspect VHDX and VHD disk images.

>>> import pyvhdx
>>> with pyvhdx.open("disk.vhdx") as img:          # doctest: +SKIP
...     mbr = img.read_at(0, 512)
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from . import errors
from ._version import __version__
from .constants import DiskType, ImageFormat, RunKind
from .errors import *  # noqa: F403  (the exceptions: errors.__all__)
from .errors import InvalidArgumentError, UnsupportedFeatureError
from .suffix import format_from_suffix

if TYPE_CHECKING:
    from .convert import convert_image as convert
    from .image import DiskImage, Extent, detect_format
    from .image import open_image as open
    from .info import ImageInfo
    from .merge import merge_image as merge

# ``import pyvhdx`` loads no reader, writer or numpy: the names below are imported
# when first used (a command line that only prints its help starts at once).
_LAZY: Final = {
    "DiskImage": ("image", "DiskImage"),
    "Extent": ("image", "Extent"),
    "detect_format": ("image", "detect_format"),
    #: :func:`pyvhdx.open` is :func:`~pyvhdx.image.open_image` (documented there).
    "open": ("image", "open_image"),
    "ImageInfo": ("info", "ImageInfo"),
    #: :func:`pyvhdx.convert` is ``convert_image`` of the convert module; the
    #: destination format comes from ``format`` or the destination's extension
    #: (``.vhdx``, ``.vhd``, else raw).
    "convert": ("convert", "convert_image"),
    #: :func:`pyvhdx.merge` is ``merge_image`` of the merge module: merge a
    #: differencing disk into its parent (as Merge-VHD), or finish an interrupted
    #: merge of it; its children beside it are re-parented.
    "merge": ("merge", "merge_image"),
}

# Submodules named like public functions (create, convert, merge): the functions,
# not the modules, are the package's attributes, even after the modules are
# imported (the import system then sets the attribute to the module: _Package
# refuses that). So no attribute path leads through them to a function of those
# modules: texts name such a function as ``from pyvhdx.create import create_vhd``
# does (tests/unit/test_dotted_names.py checks every dotted name they mention).
_SHADOWED: Final = frozenset({"create", "convert", "merge"})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # a submodule imported: the attribute stays the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def _module(name: str) -> types.ModuleType:
    """The submodule ``pyvhdx.<name>`` (imported now if it is not yet)."""
    return importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str) -> Any:
    """The lazy names of :data:`_LAZY`, and submodules by attribute (``pyvhdx.image``)."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(_module(module), attribute)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return _module(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DiskImage",
    "DiskType",
    "Extent",
    "ImageFormat",
    "ImageInfo",
    "RunKind",
    "__version__",
    "convert",
    "create",
    "detect_format",
    "merge",
    "open",
]
__all__ += errors.__all__


def create(
    path: str | os.PathLike[str],
    size: int | str | None = None,
    *,
    format: str | ImageFormat | None = None,
    disk_type: str | DiskType | None = None,
    block_size: int | str | None = None,
    logical_sector_size: int | str | None = None,
    physical_sector_size: int | str | None = None,
    overwrite: bool = False,
    preallocate: bool = False,
    azure: bool = False,
    parent: str | os.PathLike[str] | DiskImage | None = None,
) -> int:
    """Create an empty VHDX or VHD image; the format from ``format`` or the file name.

    VHD images have 512-byte sectors (``physical_sector_size`` is not stored
    and is ignored); ``azure=True`` makes an Azure-ready fixed VHD, its size
    rounded up to a whole MiB (see ``create_azure_vhd`` in the ``pyvhdx.create``
    module: ``from pyvhdx.create import create_azure_vhd``).

    With ``parent``, the new image is a differencing child of it (a Hyper-V
    checkpoint disk; see ``create_vhdx_child`` and ``create_vhd_child`` in
    the ``pyvhdx.create`` module): a VHDX child of a VHDX parent or
    a VHD child of a VHD parent. Its virtual size, sector sizes and (VHD)
    geometry are the parent's, so ``size`` may be left out; the format is
    ``format``, else the name's (``.vhdx``/``.avhdx``, ``.vhd``/``.avhd``),
    else the parent's. Defaults: dynamic, 512-byte logical and 4096-byte
    physical sectors (VHDX); a child's block size is 2 MiB.

    Returns:
        The virtual size of the new image (with ``azure``, the rounded size).

    Raises:
        InvalidArgumentError: a parameter outside the format's limits; with
            ``parent``, a ``size``, sector size or format that differs from the
            parent's, or a disk type other than differencing.
        FileExistsError: the file exists and ``overwrite`` is false.
        UnsupportedFeatureError: a format pyvhdx cannot create (raw).
        ParentError: ``parent``'s own chain does not open.
    """
    from .create import azure_vhd_size, create_vhd, create_vhdx, size_argument

    # Sizes in bytes, or strings such as "64G" (see size_argument in pyvhdx.create).
    size, block_size, logical_sector_size, physical_sector_size = (
        None if value is None else size_argument(value, what)
        for value, what in (
            (size, "size"),
            (block_size, "block size"),
            (logical_sector_size, "logical sector size"),
            (physical_sector_size, "physical sector size"),
        )
    )
    if parent is not None:
        _refuse_for_child(disk_type, preallocate=preallocate, azure=azure)
        given = {
            "size": size,
            "logical sector size": logical_sector_size,
            "physical sector size": physical_sector_size,
        }
        return _create_child(
            path, parent, format, given, block_size=block_size, overwrite=overwrite
        )
    if size is None:
        raise InvalidArgumentError("a size is needed (or a parent to take it from)")
    fmt = ImageFormat(format) if format is not None else format_from_suffix(path)
    fmt = ImageFormat.VHDX if fmt is None else fmt  # an unknown name makes a VHDX
    if fmt not in (ImageFormat.VHD, ImageFormat.VHDX):
        raise UnsupportedFeatureError(f"creating {fmt.value} images is not supported yet")
    options: dict[str, Any] = {
        "disk_type": DiskType.DYNAMIC if disk_type is None else disk_type,
        "block_size": block_size,
        "overwrite": overwrite,
        "preallocate": preallocate,
    }
    logical_sector_size = 512 if logical_sector_size is None else logical_sector_size
    if fmt is ImageFormat.VHD:
        if logical_sector_size != 512:
            raise InvalidArgumentError(f"VHD sectors are 512 bytes, not {logical_sector_size}")
        create_vhd(path, size, azure=azure, **options)
        return azure_vhd_size(size) if azure else size
    if azure:
        raise InvalidArgumentError("Azure-ready images are fixed VHDs (format 'vhd')")
    create_vhdx(
        path,
        size,
        logical_sector_size=logical_sector_size,
        physical_sector_size=4096 if physical_sector_size is None else physical_sector_size,
        **options,
    )
    return size


def _refuse_for_child(disk_type: str | DiskType | None, *, preallocate: bool, azure: bool) -> None:
    """What :func:`create` cannot do with ``parent=``: a child is a differencing disk."""
    if disk_type is not None and DiskType(disk_type) is not DiskType.DIFFERENCING:
        raise InvalidArgumentError(
            f"a child of a parent is a differencing disk, not {DiskType(disk_type).value}"
        )
    if azure or preallocate:
        raise InvalidArgumentError(
            f"{'azure' if azure else 'preallocate'} is for fixed disks, not differencing ones"
        )


def _create_child(
    path: str | os.PathLike[str],
    parent: str | os.PathLike[str] | DiskImage,
    format: str | ImageFormat | None,
    given: dict[str, int | None],
    *,
    block_size: int | None,
    overwrite: bool,
) -> int:
    """The ``parent=`` branch of :func:`create`: check ``given`` (size and sector
    sizes, None where not given) and the format against the parent."""
    with _open_parent_image(parent) as pimg:
        pfmt = pimg.format
        theirs = {"size": pimg.virtual_size}
        if pfmt is ImageFormat.VHDX:
            theirs["logical sector size"] = pimg.logical_sector_size
            theirs["physical sector size"] = pimg.physical_sector_size
        else:
            for what in ("logical sector size", "physical sector size"):
                if given[what] not in (None, 512):
                    raise InvalidArgumentError(f"VHD sectors are 512 bytes, not {given[what]}")
        for what, value in theirs.items():
            if given[what] is not None and given[what] != value:
                raise InvalidArgumentError(
                    f"a child has its parent's {what} ({value}), not {given[what]}"
                )
        fmt = ImageFormat(format) if format is not None else format_from_suffix(path)
        if fmt is None or (format is None and fmt is ImageFormat.RAW):
            fmt = pfmt  # the name names no image format: the parent's
        if fmt is not pfmt or fmt is ImageFormat.RAW:
            raise InvalidArgumentError(
                f"a {fmt.value.upper()} child cannot have a {pfmt.value.upper()} parent "
                "(VHDX children have VHDX parents, VHD children VHD parents)"
            )
        from .create import create_vhd_child, create_vhdx_child

        make = create_vhd_child if fmt is ImageFormat.VHD else create_vhdx_child
        make(path, pimg, block_size=block_size, overwrite=overwrite)
        return pimg.virtual_size


@contextlib.contextmanager
def _open_parent_image(parent: str | os.PathLike[str] | DiskImage) -> Iterator[DiskImage]:
    """``parent`` as an open image (read-only, with its chain); closed after if opened here."""
    image = _module("image")
    if isinstance(parent, image.DiskImage):
        yield parent
        return
    with image.open_image(parent) as img:
        yield img
