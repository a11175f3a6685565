""":class:`pyvhdx.remote.RemoteFile` as a file (issue 18): any sequence of seeks and
reads returns the object's bytes, whatever the read-ahead has in flight, and the
cache with the window in flight stays within ``cache_bytes``. Read through fsspec's
own local file system (``file://``), the same code path as a store's.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyvhdx.remote import BLOCK, open_remote

pytest.importorskip("fsspec")

SIZE = 23 * BLOCK + 12345  # a short last block
CACHE = 8 * BLOCK  # small: windows and evictions happen at once


class _Blob(tuple[str, bytes]):
    """(URL, content); printed as its URL alone (hypothesis prints a failing case's
    arguments: 23 MiB of bytes would take minutes)."""

    def __repr__(self) -> str:
        return f"_Blob({self[0]!r})"


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    data = random.Random(18).randbytes(SIZE)
    path = tmp_path_factory.mktemp("remote-reads") / "blob.bin"
    path.write_bytes(data)
    return _Blob((path.as_uri(), data))


#: One step: a seek to a block boundary, a byte, or nowhere (go on), then a read.
steps = st.tuples(
    st.one_of(
        st.none(),
        st.integers(0, SIZE // BLOCK).map(lambda b: b * BLOCK),
        st.integers(0, SIZE + 100),
    ),
    st.sampled_from([1, 512, 4096, 65536, BLOCK - 1, BLOCK, 3 * BLOCK + 7, 5 * BLOCK]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=st.lists(steps, min_size=1, max_size=40))
@example(plan=[(None, 1), (4 * BLOCK, 1), (0, 5 * BLOCK)])  # found in CI: 5 + 4 in flight > 8
def test_any_reads_return_the_objects_bytes(
    blob: tuple[str, bytes], plan: list[tuple[int | None, int]]
) -> None:
    url, data = blob
    f = open_remote(url, cache_bytes=CACHE)
    try:
        pos = 0
        for k, (seek, length) in enumerate(plan):
            if seek is not None:
                pos = f.seek(seek)
            got = f.read(length)
            want = data[pos : pos + length]
            ok = got == want  # a bool: a failure names the step, not two long byte strings
            assert ok, f"step {k}: read({length}) at {pos} gave {len(got)} bytes, not the object's"
            pos += len(want)
            assert f.tell() == pos
            in_flight = 0 if f.ahead is None else f.ahead.last + 1 - f.ahead.first
            most = max(CACHE // BLOCK, -(-length // BLOCK) + 1)  # one read may need more
            cached = len(f.cache)
            bounded = cached + in_flight <= most
            assert bounded, f"step {k}: {cached} blocks cached + {in_flight} in flight > {most}"
    finally:
        f.close()
    assert f.ahead is None
    assert not any(t.name == "pyvhdx-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_a_whole_read_fetches_every_byte_once(blob: tuple[str, bytes]) -> None:
    url, data = blob
    with open_remote(url, cache_bytes=CACHE) as f:
        out = bytearray()
        while chunk := f.read(65536):
            out += chunk
        assert bytes(out) == data
        assert f.bytes_fetched == SIZE  # nothing twice, nothing past the end
        assert 1 < f.requests < SIZE // BLOCK  # windows, not a request per block


def test_reading_a_closed_file_is_refused(blob: tuple[str, bytes], tmp_path: Path) -> None:
    url, _ = blob
    f = open_remote(url)
    f.read(10)
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.read(10)


def test_options_per_protocol() -> None:
    """Keys naming a protocol hold that store's options (over the shared ones); one
    that holds no mapping is an InvalidArgumentError, not a traceback from fsspec."""
    import pyvhdx
    from pyvhdx.remote import options_for

    given = {"anon": True, "s3": {"anon": False, "key": "k"}, "az": {"account_name": "a"}}
    assert options_for("s3://b/x", given) == {"anon": False, "key": "k"}
    assert options_for("az://c/x", given) == {"anon": True, "account_name": "a"}
    assert options_for("/local/x", given) == {"anon": True}
    with pytest.raises(pyvhdx.InvalidArgumentError, match=r"'s3' names a protocol"):
        options_for("az://c/x", {"s3": "notadict"})
    with pytest.raises(pyvhdx.InvalidArgumentError, match=r"^s3://b/x\.vhdx: the storage option"):
        pyvhdx.open("s3://b/x.vhdx", storage_options={"s3": "notadict"})


@pytest.mark.parametrize("url", ["s3://", "s3://bucket", "s3://bucket/dir/", "file:///tmp/"])
def test_a_folder_url_is_refused(url: str) -> None:
    """``s3://`` opened as an empty raw image (the store's root has size 0): a URL
    that names no object is refused before any request."""
    import pyvhdx

    with pytest.raises(pyvhdx.InvalidArgumentError, match="names a folder or bucket"):
        pyvhdx.open(url, storage_options={"anon": True} if url.startswith("s3") else None)
