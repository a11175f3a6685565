"""The pyvhdx exception hierarchy (DESIGN.md "Errors").

Every exception raised for a malformed image or a bad argument derives from
:class:`PyvhdxError` and carries, where they apply, the name of the structure,
the field and the file offset that were at fault.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ImageLockedError",
    "InvalidArgumentError",
    "InvalidImageError",
    "LogReplayError",
    "ParentError",
    "PyvhdxError",
    "PyvhdxWarning",
    "ReadOnlyError",
    "TruncatedImageError",
    "UnsupportedFeatureError",
]


class PyvhdxError(Exception):
    """Base of every pyvhdx error.

    Args:
        message: what went wrong, in one line.
        structure: the on-disk structure concerned (``"VHDX header 1"``).
        field: the field of that structure (``"SequenceNumber"``).
        offset: the absolute file offset of the structure or field.
    """

    def __init__(
        self,
        message: str,
        *,
        structure: str | None = None,
        field: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.message = message
        self.structure = structure
        self.field = field
        self.offset = offset
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.structure is not None:
            where.append(self.structure)
        if self.field is not None:
            where.append(f"field {self.field}")
        if self.offset is not None:
            where.append(f"at offset {self.offset:#x}")
        if where:
            return f"{self.message} ({', '.join(where)})"
        return self.message


class InvalidImageError(PyvhdxError):
    """The image is malformed: a structure, field or offset is out of bounds."""


class ChecksumError(InvalidImageError):
    """A checksum does not match and no valid copy of the structure is left."""


class TruncatedImageError(InvalidImageError):
    """The file ends before a structure or data block it declares."""


class UnsupportedFeatureError(PyvhdxError):
    """The image uses a feature that pyvhdx does not (yet) implement."""


class ParentError(PyvhdxError):
    """A differencing disk's parent is missing, unreadable or not the right one.

    Attributes:
        tried: every path that was tried, in order.
    """

    def __init__(self, message: str, *, tried: list[str] | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.tried = list(tried or [])


class LogReplayError(PyvhdxError):
    """The VHDX log is pending but cannot be replayed safely."""


class ReadOnlyError(PyvhdxError):
    """A write was attempted on an image opened read-only."""


class ImageLockedError(PyvhdxError):
    """Another process (pyvhdx or qemu), or another open here, holds the image's lock.

    Raised by an open whose qemu-compatible lock (see :mod:`pyvhdx.locking`)
    conflicts: a writer excludes every other user, a reader excludes writers.
    ``force_share=True`` (``-U``) reads without a lock.

    Attributes:
        filename: the image file.
    """

    def __init__(self, message: str, *, filename: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.filename = filename


class InvalidArgumentError(PyvhdxError, ValueError):
    """The caller passed a bad argument (offset, size, mode, option)."""


class PyvhdxWarning(UserWarning):
    """A defect that did not stop the open (a bad VHD checksum, a damaged copy)."""
