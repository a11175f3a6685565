"""Construct declarations of the on-disk structures (one module per format).

:func:`parse` is the one choke point through which untrusted bytes are parsed: it
turns every construct error into an :class:`~pyvhdx.errors.InvalidImageError`
that names the structure, the field (construct's path) and the file offset.
"""

from __future__ import annotations

from typing import Any

from construct import Construct, ConstructError

from ..errors import InvalidImageError

__all__ = ["field_offsets", "parse"]


def parse(struct: Construct, data: bytes, *, structure: str, offset: int) -> Any:
    """Parse ``data`` with ``struct``; raise InvalidImageError on any mismatch."""
    try:
        return struct.parse(data)
    except ConstructError as exc:
        path = getattr(exc, "path", None) or ""
        field = path.split("->")[-1].strip() if path else None
        raise InvalidImageError(
            f"cannot parse {structure}: {exc.__class__.__name__}",
            structure=structure,
            field=field or None,
            offset=offset,
        ) from None


def field_offsets(struct: Construct) -> dict[str, int]:
    """Where each field of the fixed-size ``struct`` starts, by its spec name
    (``file_format_version`` is ``FileFormatVersion``).
    """
    offsets, pos = {}, 0
    for sub in struct.subcons:
        offsets["".join(word.capitalize() for word in sub.name.split("_"))] = pos
        pos += sub.sizeof()
    return offsets
