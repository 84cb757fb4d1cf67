"""The canonical form's serialization (docs/FORMAT.md, "Archive canonical form").

    header   "DGAC" version:u8 len:u8 implementation:ascii
    records  R len:u64 bytes             bytes kept verbatim
             D params len:u64 bytes      inflated bytes of one deflate stream
             N params records... E       a deflate stream whose inflated bytes are themselves
                                         records (a container inside a container)
    trailer  T size:u64 sha256:32        the original's size and SHA-256; nothing follows

params: level:u8 mem_level:u8 wbits:i8 strategy:u8. Integers are big-endian.
"""

from __future__ import annotations

import struct

MAGIC = b"DGAC"
VERSION = 1
RAW, DEFLATED, NESTED, END, TRAILER = b"R", b"D", b"N", b"E", b"T"
PARAMS = struct.Struct(">BBbB")
LENGTH = struct.Struct(">Q")
TRAILER_SIZE = 1 + LENGTH.size + 32


def header(implementation: str) -> bytes:
    """The file header naming the deflate implementation that rebuilds it."""
    name = implementation.encode("ascii")
    return MAGIC + bytes((VERSION, len(name))) + name
