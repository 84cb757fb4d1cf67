"""The chunked AES-GCM entry format: round trips and every kind of tampering is rejected."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.cache.crypto import (
    CHUNK_SIZE,
    HEADER_SIZE,
    OVERHEAD,
    ChunkReader,
    Header,
    WrongKey,
    encrypt_stream,
    key_id,
)
from core.cache.errors import CacheIntegrityError

KEY = bytes(range(32))
RECORD = CHUNK_SIZE + OVERHEAD


def make_entry(data: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    sha = hashlib.sha256(data).hexdigest()
    assert encrypt_stream(AESGCM(key), key_id(key), sha, len(data), io.BytesIO(data), out) == sha
    return out.getvalue()


def open_reader(tmp_path, blob: bytes, sha: str, key: bytes = KEY) -> ChunkReader:
    path = tmp_path / f"entry-{os.urandom(4).hex()}"
    path.write_bytes(blob)
    return ChunkReader(os.open(path, os.O_RDONLY), AESGCM(key), key_id(key), sha)


@pytest.fixture
def data() -> bytes:
    return os.urandom(3 * CHUNK_SIZE + 1234)


@pytest.fixture
def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip_and_random_access(tmp_path, data, sha):
    blob = make_entry(data)
    assert len(blob) == HEADER_SIZE + 4 * OVERHEAD + len(data)
    reader = open_reader(tmp_path, blob, sha)
    assert reader.read(0, len(data) + 100) == data
    for offset, size in [(0, 1), (CHUNK_SIZE - 1, 2), (5, 3 * CHUNK_SIZE), (len(data) - 1, 10)]:
        assert reader.read(offset, size) == data[offset : offset + size]
    assert reader.read(len(data), 10) == b""
    assert reader.read(-1, 10) == b""
    assert b"".join(reader.iter_plaintext()) == data
    twin = reader.duplicate()
    reader.close()
    assert twin.read(100, 50) == data[100:150]
    twin.close()


def test_ciphertext_reveals_no_plaintext(data):
    blob = make_entry(data)
    assert data[:64] not in blob
    assert make_entry(data) != blob  # fresh random nonces


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1])
def test_edge_sizes(tmp_path, size):
    data = os.urandom(size)
    reader = open_reader(tmp_path, make_entry(data), hashlib.sha256(data).hexdigest())
    assert reader.read(0, size + 1) == data
    reader.close()


def flip(blob: bytes, pos: int) -> bytes:
    return blob[:pos] + bytes([blob[pos] ^ 0x01]) + blob[pos + 1 :]


@pytest.mark.parametrize(
    "pos, field",
    [(0, "magic"), (9, "version"), (11, "flags"), (13, "chunk size"), (20, "plaintext size")],
)
def test_tampered_header_rejected_at_open(tmp_path, data, sha, pos, field):
    with pytest.raises(CacheIntegrityError):
        open_reader(tmp_path, flip(make_entry(data), pos), sha)


def test_tampered_key_id_is_wrong_key(tmp_path, data, sha):
    with pytest.raises(WrongKey):
        open_reader(tmp_path, flip(make_entry(data), 24), sha)


def test_tampered_entry_id_rejected(tmp_path, data, sha):
    blob = flip(make_entry(data), 40)
    with pytest.raises(CacheIntegrityError):
        open_reader(tmp_path, blob, sha)  # header names another sha
    forged = Header.unpack(blob[:HEADER_SIZE]).sha256
    reader = open_reader(tmp_path, blob, forged)  # consistent with the path, but not the AAD
    with pytest.raises(CacheIntegrityError, match="authentication"):
        reader.read(0, 10)


@pytest.mark.parametrize("part, offset", [("nonce", 0), ("ciphertext", 100), ("tag", RECORD - 1)])
def test_tampered_chunk_rejected_only_where_touched(tmp_path, data, sha, part, offset):
    reader = open_reader(tmp_path, flip(make_entry(data), HEADER_SIZE + RECORD + offset), sha)
    assert reader.read(0, 100) == data[:100]  # chunk 0 is intact
    with pytest.raises(CacheIntegrityError):
        reader.read(CHUNK_SIZE + 10, 10)
    with pytest.raises(CacheIntegrityError):
        reader.read(0, len(data))


def test_swapped_chunks_rejected(tmp_path, data, sha):
    blob = make_entry(data)
    c0 = blob[HEADER_SIZE : HEADER_SIZE + RECORD]
    c1 = blob[HEADER_SIZE + RECORD : HEADER_SIZE + 2 * RECORD]
    swapped = blob[:HEADER_SIZE] + c1 + c0 + blob[HEADER_SIZE + 2 * RECORD :]
    reader = open_reader(tmp_path, swapped, sha)
    with pytest.raises(CacheIntegrityError):
        reader.read(0, 10)
    with pytest.raises(CacheIntegrityError):
        reader.read(CHUNK_SIZE, 10)


def test_chunk_from_another_entry_rejected(tmp_path, data, sha):
    other = make_entry(os.urandom(len(data)))
    blob = make_entry(data)
    mixed = (
        blob[:HEADER_SIZE]
        + other[HEADER_SIZE : HEADER_SIZE + RECORD]
        + blob[HEADER_SIZE + RECORD :]
    )
    with pytest.raises(CacheIntegrityError):
        open_reader(tmp_path, mixed, sha).read(0, 10)


def test_truncated_or_appended_rejected(tmp_path, data, sha):
    blob = make_entry(data)
    with pytest.raises(CacheIntegrityError):
        open_reader(tmp_path, blob[:-1], sha)
    with pytest.raises(CacheIntegrityError):
        open_reader(tmp_path, blob + b"\0", sha)
    with pytest.raises(CacheIntegrityError):
        open_reader(tmp_path, blob + blob[HEADER_SIZE : HEADER_SIZE + RECORD], sha)


def test_truncation_with_forged_size_rejected(tmp_path, sha):
    data = os.urandom(2 * CHUNK_SIZE)
    sha = hashlib.sha256(data).hexdigest()
    blob = make_entry(data)
    header = Header.unpack(blob[:HEADER_SIZE])
    short = Header(header.chunk_size, CHUNK_SIZE, header.key_id, sha).pack()
    # drop the final chunk and claim the first is the whole entry: its final flag is wrong
    reader = open_reader(tmp_path, short + blob[HEADER_SIZE : HEADER_SIZE + RECORD], sha)
    with pytest.raises(CacheIntegrityError):
        reader.read(0, 10)


def test_wrong_key_is_clean(tmp_path, data, sha):
    with pytest.raises(WrongKey):
        open_reader(tmp_path, make_entry(data), sha, key=os.urandom(32))


def test_source_size_change_rejected(data):
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(CacheIntegrityError):
        encrypt_stream(AESGCM(KEY), key_id(KEY), sha, len(data) + 1, io.BytesIO(data), io.BytesIO())
    with pytest.raises(CacheIntegrityError):
        encrypt_stream(AESGCM(KEY), key_id(KEY), sha, len(data) - 1, io.BytesIO(data), io.BytesIO())


def test_without_encrypt_into(tmp_path, data, sha, monkeypatch):
    import core.cache.crypto as crypto

    monkeypatch.setattr(crypto, "_HAS_INTO", False)
    reader = open_reader(tmp_path, make_entry(data), sha)
    assert reader.read(10, 3 * CHUNK_SIZE) == data[10 : 10 + 3 * CHUNK_SIZE]
    reader.close()
