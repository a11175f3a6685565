"""An NBD server for any image or chain pyvhdx reads (``pyvhdx serve``).

The NBD protocol (the ``proto.md`` of the NetworkBlockDevice project): the fixed
newstyle handshake with options EXPORT_NAME, ABORT, LIST, INFO, GO,
STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (``base:allocation``);
then READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS and DISC, answered with
simple or structured replies. One thread per client.

Read-only by default: every client thread opens the image read-only on its own
(reads run in parallel; the file is never opened for writing). ``writable``
opens it ``r+`` once, shared under a lock, through pyvhdx's crash-consistent
write path. ``overlay`` creates a new differencing child of the image and
writes there, leaving the image itself untouched.

A client that breaks the protocol (a bad magic, an option or request too large,
a read past the end) gets an error reply or is disconnected; the server and the
other clients carry on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PyvhdxError
from .image import DiskImage, open_image

__all__ = ["DEFAULT_PORT", "NBDServer", "ServeOptions", "serve"]

DEFAULT_PORT = 10809

_NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
_REPLY_MAGIC = 0x0003E889045565A9  # option replies
_REQUEST_MAGIC = 0x25609513
_SIMPLE_MAGIC = 0x67446698
_STRUCTURED_MAGIC = 0x668E33EF

_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2

# options
_OPT_EXPORT_NAME, _OPT_ABORT, _OPT_LIST = 1, 2, 3
_OPT_INFO, _OPT_GO, _OPT_STRUCTURED_REPLY = 6, 7, 8
_OPT_LIST_META_CONTEXT, _OPT_SET_META_CONTEXT = 9, 10
# option replies
_REP_ACK, _REP_SERVER, _REP_INFO, _REP_META_CONTEXT = 1, 2, 3, 4
_REP_ERR_UNSUP = 0x80000001
_REP_ERR_INVALID = 0x80000003
_REP_ERR_UNKNOWN = 0x80000006
_INFO_EXPORT, _INFO_BLOCK_SIZE = 0, 3

# transmission flags
_T_HAS_FLAGS, _T_READ_ONLY, _T_SEND_FLUSH, _T_SEND_FUA = 1, 2, 4, 8
_T_SEND_TRIM, _T_SEND_WRITE_ZEROES, _T_CAN_MULTI_CONN = 32, 64, 256
# commands
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
_CMD_TRIM, _CMD_WRITE_ZEROES, _CMD_BLOCK_STATUS = 4, 6, 7
_CMD_FLAG_REQ_ONE = 8
# structured reply chunk types
_REPLY_FLAG_DONE = 1
_REPLY_OFFSET_DATA, _REPLY_BLOCK_STATUS, _REPLY_ERROR = 1, 5, 0x8001
_STATE_HOLE, _STATE_ZERO = 1, 2

_BASE_ALLOCATION = b"base:allocation"
_CONTEXT_ID = 1
MAX_OPTION = 1 << 16  # bytes of option data a client may send
MAX_REQUEST = 32 << 20  # bytes a READ or WRITE may move (NBD_INFO_BLOCK_SIZE maximum)


class _ClientError(Exception):
    """The client broke the protocol: close its connection."""


@dataclass
class ServeOptions:
    """What :func:`serve` exports and how (``pyvhdx.open`` options included). ``image``
    is a path or a URL, as :func:`pyvhdx.open` takes."""

    image: str | os.PathLike[str]
    name: str = ""
    writable: bool = False
    overlay: Path | None = None
    open_options: dict[str, Any] = field(default_factory=dict)


class _Export:
    """The image clients see: read-only views per client, or one shared writer."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.writer: DiskImage | None = None
        path = options.image
        if options.overlay is not None:
            from . import create

            create(options.overlay, parent=options.image)
            path = options.overlay
        self.path = path
        if options.writable or options.overlay is not None:
            opts = dict(options.open_options)
            if options.overlay is not None:
                opts["parent"] = options.image
            self.writer = open_image(path, "r+", **opts)
            self.size = self.writer.get_size()
        else:
            with self.open() as img:  # each client opens its own view (_Client._image)
                self.size = img.get_size()

    @property
    def read_only(self) -> bool:
        return self.writer is None

    def open(self) -> DiskImage:
        """A new read-only view of the export's image."""
        return open_image(self.path, **self.options.open_options)

    def close(self) -> None:
        if self.writer is not None:
            with self.lock:
                self.writer.flush()
                self.writer.close()


def _recv(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        got = sock.recv(min(n, 1 << 20))
        if not got:
            raise _ClientError("the client closed the connection")
        chunks.append(got)
        n -= len(got)
    return b"".join(chunks)


class _Client:
    """One connection: handshake, then requests until DISC or the end of the stream."""

    def __init__(self, sock: socket.socket, export: _Export) -> None:
        self.sock = sock
        self.export = export
        self.structured = False
        self.meta = False
        self.reader: DiskImage | None = None
        self.send_lock = threading.Lock()

    # -- handshake (fixed newstyle) ----------------------------------------------

    def handshake(self) -> bool:
        self.sock.sendall(
            struct.pack(">QQH", _NBDMAGIC, _IHAVEOPT, _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES)
        )
        (client_flags,) = struct.unpack(">I", _recv(self.sock, 4))
        no_zeroes = bool(client_flags & _FLAG_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack(">QII", _recv(self.sock, 16))
            if magic != _IHAVEOPT:
                raise _ClientError(f"bad option magic {magic:#x}")
            if length > MAX_OPTION:
                raise _ClientError(f"option of {length} bytes")
            data = _recv(self.sock, length)
            if option == _OPT_EXPORT_NAME:
                if not self._name_ok(data):
                    raise _ClientError("unknown export")
                self.sock.sendall(
                    struct.pack(">QH", self.export.size, self._flags())
                    + (b"" if no_zeroes else bytes(124))
                )
                return True
            if option == _OPT_ABORT:
                self._reply(option, _REP_ACK)
                return False
            if not self._option(option, data):
                return True  # GO

    def _name_ok(self, name: bytes) -> bool:
        return name in (b"", self.export.options.name.encode("utf-8"))

    def _option(self, option: int, data: bytes) -> bool:
        """Answer one option; False when the client may start sending requests (GO)."""
        if option == _OPT_LIST:
            name = self.export.options.name.encode("utf-8")
            self._reply(option, _REP_SERVER, struct.pack(">I", len(name)) + name)
            self._reply(option, _REP_ACK)
        elif option in (_OPT_INFO, _OPT_GO):
            if len(data) < 6:
                self._reply(option, _REP_ERR_INVALID)
                return True
            (n,) = struct.unpack(">I", data[:4])
            if not self._name_ok(data[4 : 4 + n]):
                self._reply(option, _REP_ERR_UNKNOWN)
                return True
            self._reply(
                option,
                _REP_INFO,
                struct.pack(">HQH", _INFO_EXPORT, self.export.size, self._flags()),
            )
            self._reply(
                option, _REP_INFO, struct.pack(">HIII", _INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST)
            )
            self._reply(option, _REP_ACK)
            return option != _OPT_GO
        elif option == _OPT_STRUCTURED_REPLY:
            self.structured = True
            self._reply(option, _REP_ACK)
        elif option in (_OPT_LIST_META_CONTEXT, _OPT_SET_META_CONTEXT):
            self._meta_context(option, data)
        else:
            self._reply(option, _REP_ERR_UNSUP)
        return True

    def _meta_context(self, option: int, data: bytes) -> None:
        try:
            (n,) = struct.unpack(">I", data[:4])
            pos = 4 + n
            (count,) = struct.unpack(">I", data[pos : pos + 4])
            pos += 4
            queries = []
            for _ in range(count):
                (k,) = struct.unpack(">I", data[pos : pos + 4])
                queries.append(data[pos + 4 : pos + 4 + k])
                pos += 4 + k
        except struct.error:
            self._reply(option, _REP_ERR_INVALID)
            return
        wanted = not queries if option == _OPT_LIST_META_CONTEXT else False
        wanted = wanted or any(q in (_BASE_ALLOCATION, b"base:") for q in queries)
        if wanted and self.structured:
            body = struct.pack(">I", _CONTEXT_ID) + _BASE_ALLOCATION
            self._reply(option, _REP_META_CONTEXT, body)
            if option == _OPT_SET_META_CONTEXT:
                self.meta = True
        self._reply(option, _REP_ACK)

    def _reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QIII", _REPLY_MAGIC, option, kind, len(data)) + data)

    def _flags(self) -> int:
        flags = _T_HAS_FLAGS | _T_SEND_FLUSH | _T_SEND_FUA | _T_CAN_MULTI_CONN
        if self.export.read_only:
            return flags | _T_READ_ONLY
        return flags | _T_SEND_TRIM | _T_SEND_WRITE_ZEROES

    # -- transmission ------------------------------------------------------------

    def serve(self) -> None:
        while True:
            magic, _flags, kind, handle, offset, length = struct.unpack(
                ">IHHQQI", _recv(self.sock, 28)
            )
            if magic != _REQUEST_MAGIC:
                raise _ClientError(f"bad request magic {magic:#x}")
            data = b""
            if kind == _CMD_WRITE:
                if length > MAX_REQUEST:
                    raise _ClientError(f"write of {length} bytes")
                data = _recv(self.sock, length)
            if kind == _CMD_DISC:
                return
            error = self._check(kind, offset, length)
            if error:
                self._error(handle, error)
                continue
            try:
                self._command(kind, handle, offset, length, data, _flags)
            except (PyvhdxError, OSError) as exc:
                code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
                self._error(handle, code, str(exc))

    def _check(self, kind: int, offset: int, length: int) -> int:
        known = (_CMD_READ, _CMD_WRITE, _CMD_FLUSH, _CMD_TRIM, _CMD_WRITE_ZEROES)
        if kind not in (*known, _CMD_BLOCK_STATUS):
            return errno.EINVAL
        if kind == _CMD_BLOCK_STATUS and not self.meta:
            return errno.EINVAL
        if kind in (_CMD_WRITE, _CMD_TRIM, _CMD_WRITE_ZEROES) and self.export.read_only:
            return errno.EPERM
        if kind != _CMD_FLUSH and offset + length > self.export.size:
            return errno.EINVAL
        if kind == _CMD_READ and length > MAX_REQUEST:
            return errno.EINVAL
        return 0

    def _command(
        self, kind: int, handle: int, offset: int, length: int, data: bytes, flags: int
    ) -> None:
        export = self.export
        if kind == _CMD_READ:
            buf = bytearray(length)
            with self._image() as img:
                img.readinto_at(offset, memoryview(buf))
            self._data(handle, offset, buf)
        elif kind == _CMD_BLOCK_STATUS:
            with self._image() as img:
                status = _status(img, offset, length, bool(flags & _CMD_FLAG_REQ_ONE))
            self._status(handle, status)
        else:
            assert export.writer is not None
            with export.lock:
                if kind == _CMD_WRITE:
                    export.writer.write_at(offset, data)
                elif kind == _CMD_TRIM:
                    _trim(export.writer, offset, length)
                elif kind == _CMD_WRITE_ZEROES:
                    _write_zeros(export.writer, offset, length)
                if kind == _CMD_FLUSH or flags & 1:  # FUA
                    export.writer.flush()
            self._done(handle)

    @contextlib.contextmanager
    def _image(self) -> Iterator[DiskImage]:
        if self.export.writer is not None:
            with self.export.lock:
                yield self.export.writer
            return
        if self.reader is None:
            self.reader = self.export.open()
        yield self.reader

    # -- replies --------------------------------------------------------------------

    def _send(self, data: bytes | bytearray) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def _done(self, handle: int) -> None:
        if self.structured:
            self._send(struct.pack(">IHHQI", _STRUCTURED_MAGIC, _REPLY_FLAG_DONE, 0, handle, 0))
        else:
            self._send(struct.pack(">IIQ", _SIMPLE_MAGIC, 0, handle))

    def _data(self, handle: int, offset: int, buf: bytearray) -> None:
        if self.structured:
            head = struct.pack(
                ">IHHQIQ",
                _STRUCTURED_MAGIC,
                _REPLY_FLAG_DONE,
                _REPLY_OFFSET_DATA,
                handle,
                8 + len(buf),
                offset,
            )
        else:
            head = struct.pack(">IIQ", _SIMPLE_MAGIC, 0, handle)
        self._send(head + buf)

    def _status(self, handle: int, extents: list[tuple[int, int]]) -> None:
        body = struct.pack(">I", _CONTEXT_ID) + b"".join(
            struct.pack(">II", n, flags) for n, flags in extents
        )
        head = struct.pack(
            ">IHHQI", _STRUCTURED_MAGIC, _REPLY_FLAG_DONE, _REPLY_BLOCK_STATUS, handle, len(body)
        )
        self._send(head + body)

    def _error(self, handle: int, code: int, message: str = "") -> None:
        if self.structured:
            text = message.encode("utf-8")[:4096]
            body = struct.pack(">IH", code, len(text)) + text
            head = struct.pack(
                ">IHHQI", _STRUCTURED_MAGIC, _REPLY_FLAG_DONE, _REPLY_ERROR, handle, len(body)
            )
            self._send(head + body)
        else:
            self._send(struct.pack(">IIQ", _SIMPLE_MAGIC, code, handle))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _status(img: DiskImage, offset: int, length: int, one: bool) -> list[tuple[int, int]]:
    """``base:allocation`` extents of ``[offset, offset + length)``, ``(length, flags)``,
    through the whole chain (:func:`pyvhdx.compare.allocation_map`)."""
    from .compare import allocation_map

    out: list[tuple[int, int]] = []
    for run in allocation_map(img, offset, length):
        flags = _STATE_HOLE | _STATE_ZERO if run.reads_zero else 0
        n = run.length
        while n:  # descriptor lengths are 32 bits
            k = min(n, 1 << 31)
            if out and out[-1][1] == flags and out[-1][0] + k < 1 << 32:
                out[-1] = (out[-1][0] + k, flags)
            else:
                out.append((k, flags))
            n -= k
        if one and out:
            return out[:1]
    return out or [(length, 0)]


def _trim(img: DiskImage, offset: int, length: int) -> None:
    """TRIM: the blocks wholly inside the range are unmapped (read as zeros, their space
    given back by the next compact), as :mod:`pyvhdx.compact` releases them; the edges,
    and every byte of a fixed or differencing disk, are written as zeros."""
    from .constants import DiskType
    from .vhd import compact as vhd_compact
    from .vhdx import compact as vhdx_compact
    from .vhdx.file import VHDXFile

    h: Any = img.handler
    bs = img.block_size
    if img.disk_type is not DiskType.DYNAMIC or not bs:
        _write_zeros(img, offset, length)
        return
    first, stop = -(-offset // bs), (offset + length) // bs
    blocks = [b for b in range(first, stop) if h.table.code(b) >= 0]
    if blocks:
        fmt: Any = vhdx_compact if isinstance(h, VHDXFile) else vhd_compact
        fmt.release(h, blocks)
    if first >= stop:
        _write_zeros(img, offset, length)
        return
    _write_zeros(img, offset, first * bs - offset)
    _write_zeros(img, stop * bs, offset + length - stop * bs)


def _write_zeros(img: DiskImage, offset: int, length: int) -> None:
    if length <= 0:
        return
    zeros = bytes(min(length, 4 << 20))
    pos = offset
    while pos < offset + length:
        n = min(len(zeros), offset + length - pos)
        img.write_at(pos, zeros[:n])
        pos += n


class NBDServer:
    """A running server: :meth:`serve_forever` in a thread, :meth:`shutdown` to stop."""

    def __init__(
        self,
        options: ServeOptions,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        unix_socket: Path | None = None,
    ) -> None:
        self.export = _Export(options)
        export = self.export

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client = _Client(self.request, export)
                try:
                    if client.handshake():
                        client.serve()
                except (_ClientError, OSError, struct.error):
                    pass
                finally:
                    client.close()

        server: socketserver.BaseServer
        if unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_socket)

            class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True

            server = UnixServer(str(unix_socket), Handler)
            self.address = str(unix_socket)
        else:

            class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
                daemon_threads = True
                allow_reuse_address = True

            server = TCPServer((host, port), Handler)
            self.address = f"{host}:{server.server_address[1]}"
            self.port = int(server.server_address[1])
        self.server = server

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop accepting, flush and close the image (writes are on disk after this)."""
        self.server.shutdown()
        self.server.server_close()
        self.export.close()


def serve(
    options: ServeOptions,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    unix_socket: Path | None = None,
    ready: Callable[[NBDServer], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (KeyboardInterrupt), then flush and close."""
    import signal

    srv = NBDServer(options, host=host, port=port, unix_socket=unix_socket)

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if ready is not None:
        ready(srv)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server.server_close()
        srv.export.close()
