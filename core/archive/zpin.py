"""The pinned deflate implementation (zlib 1.3.2 from the `cmeel-zlib` wheel), through ctypes.

Reconstruction must give the same compressed bytes on every machine, so it never uses the
system zlib (some distributions ship zlib-ng, which deflates differently). Inflating may use
Python's zlib: inflate output is the same everywhere.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
from ctypes import POINTER, c_char_p, c_int, c_uint, c_ulong, c_void_p
from pathlib import Path
from typing import NamedTuple

from core.errors import ArchiveError

VERSION = "1.3.2"
IMPLEMENTATION = f"zlib-{VERSION}"
DISTRIBUTION = "cmeel-zlib"
MISSING = f"{IMPLEMENTATION} not available (pip install {DISTRIBUTION}=={VERSION})"
_OUT = 1 << 18
_Z_NO_FLUSH, _Z_FINISH = 0, 4
_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR = 0, 1, -5
_Z_DEFLATED = 8


class Params(NamedTuple):
    """Deflate parameters of one stream (window bits negative: raw deflate)."""

    level: int
    mem_level: int
    wbits: int = -15
    strategy: int = 0

    def valid(self) -> bool:
        """Whether zlib accepts these parameters."""
        return (
            0 <= self.level <= 9
            and 1 <= self.mem_level <= 9
            and -15 <= self.wbits <= -9
            and 0 <= self.strategy <= 4
        )


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", c_void_p),
        ("avail_in", c_uint),
        ("total_in", c_ulong),
        ("next_out", c_void_p),
        ("avail_out", c_uint),
        ("total_out", c_ulong),
        ("msg", c_char_p),
        ("state", c_void_p),
        ("zalloc", c_void_p),
        ("zfree", c_void_p),
        ("opaque", c_void_p),
        ("data_type", c_int),
        ("adler", c_ulong),
        ("reserved", c_ulong),
    ]


def _library_path() -> Path | None:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.startswith("libz") and VERSION in file.name:
            return Path(str(dist.locate_file(file)))
    return None


@functools.cache
def _load() -> ctypes.CDLL | None:
    path = _library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.zlibVersion.restype = c_char_p
    if lib.zlibVersion() != VERSION.encode():
        return None
    stream = POINTER(_ZStream)
    lib.deflateInit2_.argtypes = [stream, c_int, c_int, c_int, c_int, c_int, c_char_p, c_int]
    lib.deflate.argtypes = [stream, c_int]
    lib.deflateEnd.argtypes = [stream]
    return lib


def available() -> bool:
    """Whether the pinned implementation loads on this machine."""
    return _load() is not None


class Deflater:
    """One raw deflate stream of the pinned zlib; feed with compress(), end with finish().

    For levels 1-9 the output does not depend on how the input is split between calls.
    """

    _open = False

    def __init__(self, params: Params) -> None:
        lib = _load()
        if lib is None:
            raise ArchiveError(f"cannot deflate: {MISSING}")
        if not params.valid():
            raise ArchiveError(f"invalid deflate parameters {tuple(params)}")
        self._lib = lib
        self._z = _ZStream()
        self._buf = ctypes.create_string_buffer(_OUT)
        rc = lib.deflateInit2_(
            ctypes.byref(self._z),
            params.level,
            _Z_DEFLATED,
            params.wbits,
            params.mem_level,
            params.strategy,
            VERSION.encode(),
            ctypes.sizeof(_ZStream),
        )
        if rc != _Z_OK:
            raise ArchiveError(f"deflateInit2 failed ({rc}) for {tuple(params)}")
        self._open = True

    def compress(self, data: bytes) -> bytes:
        """Deflate more input; returns whatever output zlib emits for it."""
        return self._run(data, _Z_NO_FLUSH)

    def finish(self) -> bytes:
        """The rest of the stream; the deflater is released."""
        try:
            return self._run(b"", _Z_FINISH)
        finally:
            self.close()

    def close(self) -> None:
        """Release zlib's state (idempotent)."""
        if self._open:
            self._open = False
            self._lib.deflateEnd(ctypes.byref(self._z))

    def __del__(self) -> None:
        self.close()

    def _run(self, data: bytes, flush: int) -> bytes:
        z = self._z
        keep = c_char_p(data)  # points into `data`, which stays alive for the call
        z.next_in = ctypes.cast(keep, c_void_p)
        z.avail_in = len(data)
        out = []
        base = ctypes.addressof(self._buf)
        while True:
            z.next_out = base
            z.avail_out = _OUT
            rc = self._lib.deflate(ctypes.byref(z), flush)
            if rc not in (_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR):
                raise ArchiveError(f"deflate failed ({rc})")
            produced = _OUT - z.avail_out
            if produced:
                out.append(ctypes.string_at(base, produced))
            if flush == _Z_FINISH:
                if rc == _Z_STREAM_END:
                    break
            elif z.avail_in == 0 and z.avail_out:
                break
        return b"".join(out)
