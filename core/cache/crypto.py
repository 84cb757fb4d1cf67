"""The encrypted entry format: chunked AES-256-GCM, streamed on write, random access on read.

Layout: a 64-byte header (magic, version, chunk size, plaintext size, key id, entry SHA-256),
then one record per chunk: nonce (12 random bytes) | ciphertext | tag (16). Each chunk's AAD is
the whole header plus the chunk index and a final-chunk flag, so a changed header field, or a
chunk that is swapped, reordered, dropped or appended, fails authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.cache.errors import CacheError, CacheIntegrityError

MAGIC = b"DGFSCACH"
VERSION = 1
CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 2**20
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
_HEADER = struct.Struct(">8sHHIQ8s32s")
HEADER_SIZE = _HEADER.size
_CHUNK_CACHE = 4
_BATCH = 16  # chunks encrypted per write
_SCRATCH_MAX = 8 * 2**20


class WrongKey(CacheError):
    """The entry was written under another key (a miss, not corruption)."""


def key_id(key: bytes) -> bytes:
    """8 bytes identifying `key` without revealing it."""
    return hmac.new(key, b"dgfs cache key id v1", hashlib.sha256).digest()[:8]


@dataclass(frozen=True)
class Header:
    """The fixed-size header of an entry file."""

    chunk_size: int
    size: int
    key_id: bytes
    sha256: str

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, 0, self.chunk_size, self.size, self.key_id, bytes.fromhex(self.sha256)
        )

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if len(data) != HEADER_SIZE:
            raise CacheIntegrityError("entry header is truncated")
        magic, version, flags, chunk_size, size, kid, sha = _HEADER.unpack(data)
        if magic != MAGIC or version != VERSION or flags != 0:
            raise CacheIntegrityError("entry header has a bad magic, version or flags")
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise CacheIntegrityError(f"entry header has a bad chunk size {chunk_size}")
        return cls(chunk_size, size, kid, sha.hex())

    @property
    def chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.chunks * OVERHEAD + self.size

    def record_offset(self, index: int) -> int:
        return HEADER_SIZE + index * (self.chunk_size + OVERHEAD)

    def record_size(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size) + OVERHEAD


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack(">QB", index, final)


def encrypt_stream(
    aead: AESGCM,
    kid: bytes,
    sha256: str,
    size: int,
    src: BinaryIO,
    dst: BinaryIO,
    on_chunk: Callable[[bytes], None] | None = None,
) -> str:
    """Write `size` plaintext bytes from `src` to `dst` as an entry; return their SHA-256.

    The caller compares the result with `sha256` (the entry id bound into every chunk).
    Raises CacheIntegrityError if `src` does not hold exactly `size` bytes.
    """
    header = Header(CHUNK_SIZE, size, kid, sha256)
    header_bytes = header.pack()
    dst.write(header_bytes)
    digest = hashlib.sha256()
    plain = memoryview(bytearray(_BATCH * CHUNK_SIZE))
    records = memoryview(bytearray(_BATCH * (CHUNK_SIZE + OVERHEAD)))
    final = header.chunks - 1
    for first in range(0, header.chunks, _BATCH):
        last = min(first + _BATCH, header.chunks) - 1
        want = min((last + 1 - first) * CHUNK_SIZE, size - first * CHUNK_SIZE)
        if _read_exact(src, plain[:want]) != want:
            raise CacheIntegrityError("source file changed size while being cached")
        digest.update(plain[:want])
        if on_chunk is not None:
            on_chunk(bytes(plain[:want]))
        pos = 0
        for index in range(first, last + 1):
            start = (index - first) * CHUNK_SIZE
            chunk = plain[start : start + header.record_size(index) - OVERHEAD]
            nonce = os.urandom(NONCE_SIZE)
            records[pos : pos + NONCE_SIZE] = nonce
            out = records[pos + NONCE_SIZE : pos + len(chunk) + OVERHEAD]
            _encrypt_into(aead, nonce, chunk, _aad(header_bytes, index, index == final), out)
            pos += len(chunk) + OVERHEAD
        dst.write(records[:pos])
    if src.read(1):
        raise CacheIntegrityError("source file changed size while being cached")
    return digest.hexdigest()


def _read_exact(src: BinaryIO, buf: memoryview) -> int:
    got = 0
    while got < len(buf):
        n = src.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


class ChunkReader:
    """Random-access plaintext reads of one entry file held open by `fd` (which it owns)."""

    def __init__(self, fd: int, aead: AESGCM, kid: bytes, sha256: str) -> None:
        header_bytes = os.pread(fd, HEADER_SIZE, 0)
        header = Header.unpack(header_bytes)
        if header.key_id != kid:
            raise WrongKey(f"cache entry {sha256} was written under another key")
        if header.sha256 != sha256:
            raise CacheIntegrityError(f"entry file holds {header.sha256}, expected {sha256}")
        if os.fstat(fd).st_size != header.file_size:
            raise CacheIntegrityError("entry file is truncated or extended")
        self.fd = fd
        self.header = header
        self._header_bytes = header_bytes
        self._aead = aead
        self._recent: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.header.size

    def duplicate(self) -> ChunkReader:
        """An independent reader on the same open file."""
        other = object.__new__(ChunkReader)
        other.__dict__.update(self.__dict__)
        other.fd = os.dup(self.fd)
        other._recent = OrderedDict()
        other._lock = threading.Lock()
        return other

    def read(self, offset: int, size: int) -> bytes:
        """Plaintext [offset, offset+size), short at EOF; decrypts only the chunks it touches."""
        end = min(offset + size, self.header.size)
        if offset < 0 or offset >= end:
            return b""
        cs = self.header.chunk_size
        first, last = offset // cs, (end - 1) // cs
        if first == last:
            return self._cached_chunk(first)[offset - first * cs : end - first * cs]
        start = self.header.record_offset(first)
        stop = self.header.record_offset(last) + self.header.record_size(last)
        records = _scratch("records", stop - start)
        if os.preadv(self.fd, [records], start) != stop - start:
            raise CacheIntegrityError("entry file is truncated")
        plain = _scratch("plain", (last + 1 - first) * cs)
        for index in range(first, last + 1):
            pos = self.header.record_offset(index) - start
            out = (index - first) * cs
            record = records[pos : pos + self.header.record_size(index)]
            self._decrypt_into(index, record, plain[out : out + len(record) - OVERHEAD])
        return bytes(plain[offset - first * cs : end - first * cs])

    def iter_plaintext(self, block: int = 2**20) -> Iterator[bytes]:
        """The whole plaintext, in order, in pieces of about `block` bytes."""
        for offset in range(0, self.header.size, block):
            yield self.read(offset, block)

    def close(self) -> None:
        os.close(self.fd)

    def _cached_chunk(self, index: int) -> bytes:
        with self._lock:
            chunk = self._recent.get(index)
            if chunk is not None:
                self._recent.move_to_end(index)
                return chunk
        record = os.pread(self.fd, self.header.record_size(index), self.header.record_offset(index))
        if len(record) != self.header.record_size(index):
            raise CacheIntegrityError("entry file is truncated")
        chunk = self._decrypt(index, memoryview(record))
        with self._lock:
            self._recent[index] = chunk
            if len(self._recent) > _CHUNK_CACHE:
                self._recent.popitem(last=False)
        return chunk

    def _decrypt(self, index: int, record: memoryview) -> bytes:
        out = bytearray(len(record) - OVERHEAD)
        self._decrypt_into(index, record, memoryview(out))
        return bytes(out)

    def _decrypt_into(self, index: int, record: memoryview, out: memoryview) -> None:
        aad = _aad(self._header_bytes, index, index == self.header.chunks - 1)
        try:
            _decrypt_into(self._aead, record[:NONCE_SIZE], record[NONCE_SIZE:], aad, out)
        except InvalidTag:
            raise CacheIntegrityError(
                f"chunk {index} of cache entry {self.header.sha256} failed authentication"
            ) from None


def _encrypt_into(
    aead: AESGCM, nonce: bytes, data: memoryview, aad: bytes, out: memoryview
) -> None:
    """aead.encrypt_into where cryptography has it, else encrypt and copy."""
    if _HAS_INTO:
        aead.encrypt_into(nonce, data, aad, out)
    else:
        out[:] = aead.encrypt(nonce, data, aad)


def _decrypt_into(
    aead: AESGCM, nonce: memoryview, data: memoryview, aad: bytes, out: memoryview
) -> None:
    """aead.decrypt_into where cryptography has it, else decrypt and copy."""
    if _HAS_INTO:
        aead.decrypt_into(nonce, data, aad, out)
    else:
        out[:] = aead.decrypt(nonce, data, aad)


_HAS_INTO = hasattr(AESGCM, "decrypt_into") and hasattr(AESGCM, "encrypt_into")
_local = threading.local()


def _scratch(name: str, size: int) -> memoryview:
    """A per-thread reusable buffer of `size` bytes: fresh large buffers cost page faults."""
    if size > _SCRATCH_MAX:
        return memoryview(bytearray(size))
    buf = getattr(_local, name, None)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 2**20))
        setattr(_local, name, buf)
    return memoryview(buf)[:size]
