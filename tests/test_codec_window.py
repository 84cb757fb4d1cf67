"""xdelta3's source window is capped (memory bound): a reference larger than the window still
gives a delta that decodes back to the file, only compressing less."""

from __future__ import annotations

import hashlib

import pytest

from core import codec
from core.config import ConfigError, DeltaSettings, delta_settings_from_env
from core.deltastore import DeltaStore
from tests.datagen import random_bytes, write

MiB = 2**20


@pytest.fixture
def window():
    """Restore the default cap after the test."""
    yield codec.set_max_source_window
    codec.set_max_source_window(codec.DEFAULT_MAX_SOURCE_WINDOW)


def _pair(tmp_path):
    """An 8 MiB random reference and a target with a few bytes changed every 1 MiB."""
    ref = random_bytes(8 * MiB, 7)
    target = bytearray(ref)
    for i in range(0, len(target), MiB):
        target[i + 100 : i + 108] = b"changed!"
    return write(tmp_path / "ref", ref), write(tmp_path / "target", bytes(target))


def _encode_decode(tmp_path, ref, target, tag: str) -> int:
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    delta = tmp_path / f"{tag}.delta"
    size = codec.encode(ref, target, delta, sha)
    out = tmp_path / f"{tag}.out"
    codec.decode(ref, delta, out, target.stat().st_size)
    assert out.read_bytes() == target.read_bytes()
    return size


def test_window_smaller_than_reference_round_trips(tmp_path, window):
    ref, target = _pair(tmp_path)
    data = target.read_bytes()
    moved = write(tmp_path / "moved", data[4 * MiB :] + data[: 4 * MiB])  # halves swapped
    full = _encode_decode(tmp_path, ref, target, "full")  # window 8 MiB: whole reference
    full_moved = _encode_decode(tmp_path, ref, moved, "full-moved")
    window(MiB)
    assert codec._source_window(ref) == MiB
    capped = _encode_decode(tmp_path, ref, target, "capped")
    capped_moved = _encode_decode(tmp_path, ref, moved, "capped-moved")
    assert capped < 4096 and full < 4096  # changes in place: the window follows the target
    assert full_moved < 4096 < MiB < capped_moved  # matches 4 MiB away: lost under the cap


def test_delta_made_with_a_larger_window_decodes_under_the_cap(tmp_path, window):
    ref, target = _pair(tmp_path)
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    delta = tmp_path / "d"
    codec.encode(ref, target, delta, sha)
    window(MiB)
    out = tmp_path / "out"
    codec.decode(ref, delta, out, target.stat().st_size)
    assert out.read_bytes() == target.read_bytes()


def test_setting_reaches_the_codec(objectstore, tmp_path, window):
    settings = delta_settings_from_env({"DG_MAX_SOURCE_WINDOW_MB": "4"})
    assert settings.max_source_window == 4 * MiB
    store = DeltaStore(objectstore, settings, workdir=tmp_path / "w")
    assert codec.max_source_window() == 4 * MiB
    store.close()
    assert DeltaSettings().max_source_window == 128 * MiB
    with pytest.raises(ConfigError):
        delta_settings_from_env({}, max_source_window=1000)
