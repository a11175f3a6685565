"""``Problem``: one defect (or notable fact) found in an image, wherever it was found.

Opening an image records the non-fatal defects it tolerated
(``ImageInfo.problems``), ``check`` reports findings, a layout model reports what
each on-disk copy of a structure looks like: all of them are a :class:`Problem`.
It names the structure, the field (spec name) and the absolute file offset where
they apply, says what is wrong, and, where a repair is known, what it would do.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = ["Problem", "Severity"]


class Severity(str, enum.Enum):
    """How bad a problem is: an error fails ``check`` (exit 1), the others do not."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect or fact about a structure of an image.

    The first four fields may be given by position (``Problem(structure,
    message, offset, field)``); the others by keyword.

    Attributes:
        structure: the on-disk structure (``"header 1"``, ``"BAT"``, ``"parent"``).
        message: what is wrong (or, for INFO, what was found).
        offset: the absolute file offset of the structure or field, if any.
        field: the field concerned, by its spec name, if any.
        severity: how bad it is (a tolerated defect is a WARNING).
        code: a stable identifier for programs (``"vhd.footer.checksum"``), if any.
        repair: what a repair would do, if one is known.
    """

    structure: str
    message: str
    offset: int | None = None
    field: str | None = None
    severity: Severity = dataclasses.field(default=Severity.WARNING, kw_only=True)
    code: str | None = dataclasses.field(default=None, kw_only=True)
    repair: str | None = dataclasses.field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict for JSON output; absent keys are omitted."""
        d: dict[str, Any] = {"severity": self.severity.value, "structure": self.structure}
        if self.code is not None:
            d["code"] = self.code
        if self.field is not None:
            d["field"] = self.field
        if self.offset is not None:
            d["offset"] = self.offset
        d["message"] = self.message
        if self.repair is not None:
            d["repair"] = self.repair
        return d

    def __str__(self) -> str:
        where = f" at {self.offset:#x}" if self.offset is not None else ""
        return f"{self.structure}{where}: {self.message}"
