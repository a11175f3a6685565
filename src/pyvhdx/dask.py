"""Many images at once: one row per image, computed on Dask (the ``fleet`` extra:
``pip install 'pyvhdx[fleet]'``).

:func:`describe` is the row of one image: path, format, disk type, virtual size,
the digests asked for (by algorithm name), the problems found on opening, and
``error`` (None, or the one-line error of an image that cannot be read: a
failing image is a row, never a failed job; its virtual size reads 0 and its
digests None). :func:`scan` maps it over paths or
URLs as a ``dask.bag.Bag`` that runs on any Dask scheduler (threads, processes,
``distributed.LocalCluster``, a cluster) and turns into a data frame with
``.to_dataframe()``. ``pyvhdx scan`` uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import PyvhdxError

__all__ = ["COLUMNS", "describe", "scan"]

#: The keys of every row, before the digests.
COLUMNS = ("path", "format", "disk-type", "virtual-size", "problems", "error")


def describe(
    path: str | os.PathLike[str],
    algorithms: Sequence[str] = ("sha256",),
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The row of one image (see the module doc); never raises for a bad image."""
    from .hashing import hash_image
    from .image import open_image

    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update({alg: None for alg in algorithms})
    row["path"] = str(path)
    row["virtual-size"] = 0  # an int in every row, so that a data frame column is one
    row["problems"] = []
    try:
        with open_image(path, storage_options=storage_options, force_share=True) as img:
            row["format"] = img.format.value
            row["disk-type"] = img.disk_type.value
            row["virtual-size"] = img.get_size()
            row["problems"] = [str(p) for p in img.info().problems]
            row.update(hash_image(img, algorithms))
    except (PyvhdxError, OSError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def scan(
    paths: Iterable[str | os.PathLike[str]],
    *,
    algorithms: Sequence[str] = ("sha256",),
    storage_options: Mapping[str, Any] | None = None,
    partitions: int | None = None,
) -> Any:
    """A ``dask.bag.Bag`` of :func:`describe` rows, one per path or URL (lazy: call
    ``.compute()`` or ``.to_dataframe()`` on the scheduler of your choice)."""
    import importlib

    db: Any = importlib.import_module("dask.bag")  # the fleet extra
    items = [str(p) for p in paths]
    bag = db.from_sequence(items, npartitions=partitions or max(1, min(len(items), 64)))
    return bag.map(describe, algorithms=tuple(algorithms), storage_options=storage_options)
