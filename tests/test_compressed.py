"""Compressed files (gzip, bzip2, xz, lzma, compress) stored as deltas read back byte for byte.

xdelta3 decompresses such inputs on its own unless run with `-D -R`; a delta of the
decompressed content then decodes to other bytes. Every check here reads back cold: from S3
through a store without a cache, or from a fresh mount with an empty cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from core.config import DeltaSettings
from core.deltastore import DeltaStore
from core.layout import Kind
from tests.datagen import COMPRESSED_SUFFIXES, compressed_series, write

POLICIES = ("deltaglider", "adaptive", "adaptive-compatible")
VERSIONS = 3


def _name(suffix: str, i: int) -> str:
    return f"pkg-1.{i}{suffix}"


def _dir(suffix: str) -> str:
    return "s" + suffix.replace(".", "_")


@pytest.mark.parametrize("policy", POLICIES)
def test_core_store_round_trips_compressed_series(objectstore, tmp_path, policy):
    settings = DeltaSettings(reference_policy=policy)
    writer = DeltaStore(objectstore, settings, workdir=tmp_path / "w")
    series = {s: compressed_series(s, VERSIONS) for s in COMPRESSED_SUFFIXES}
    kinds = {}
    for suffix, versions in series.items():
        for i, data in enumerate(versions):
            src = write(tmp_path / "src" / _name(suffix, i), data)
            record = writer.put(src, f"{_dir(suffix)}/{_name(suffix, i)}")
            kinds[suffix, i] = record.kind
    writer.close()
    assert Kind.DELTA in kinds.values()
    reader = DeltaStore(objectstore, settings, workdir=tmp_path / "r")  # no cache: cold
    for suffix, versions in series.items():
        for i, data in enumerate(versions):
            out = tmp_path / "out" / _name(suffix, i)
            out.parent.mkdir(exist_ok=True)
            reader.get(f"{_dir(suffix)}/{_name(suffix, i)}", out)
            assert out.read_bytes() == data, (suffix, i, kinds[suffix, i])
    reader.close()


@pytest.mark.fuse
@pytest.mark.parametrize("policy", POLICIES)
def test_mount_round_trips_compressed_series_cold(mounter, bucket, tmp_path, policy):
    series = {s: compressed_series(s, VERSIONS, seed=11) for s in COMPRESSED_SUFFIXES}
    src = tmp_path / "src"
    for suffix, versions in series.items():
        for i, data in enumerate(versions):
            write(src / _dir(suffix) / _name(suffix, i), data)
    m = mounter(bucket, "mnt", "--reference-policy", policy)
    subprocess.run(["cp", "-r", f"{src}/.", str(m.path)], check=True)
    kind = _xattr(m.path / "s_tar_gz" / _name(".tar.gz", 1), "user.dg.kind")
    assert m.umount().returncode == 0
    assert kind == "delta"  # the case that lost data before xdelta3 ran with -D -R
    fresh = mounter(bucket, "fresh", "--reference-policy", policy, cache="cold-cache")
    result = subprocess.run(["diff", "-r", str(src), str(fresh.path)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode(errors="replace")[-2000:]


def _xattr(path, name: str) -> str:
    return subprocess.run(
        ["getfattr", "--only-values", "-n", name, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_a_delta_that_does_not_decode_back_is_never_stored(objectstore, tmp_path, monkeypatch):
    """An xdelta3 that decompresses inputs on its own (as without -D) makes deltas that decode
    to other bytes: each is caught by the decode-back check and the file is stored direct."""
    real = shutil.which("xdelta3")
    fake = write(tmp_path / "bin" / "xdelta3", _DROPPING_D.replace(b"REAL", real.encode()))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    store = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "w")
    versions = compressed_series(".tar.gz", 3, seed=3)
    for i, data in enumerate(versions):
        record = store.put(write(tmp_path / "src" / f"a{i}.tgz", data), f"d/a{i}.tgz")
        assert record.kind == Kind.DIRECT
    store.close()
    keys = {o.key for page in objectstore.list_pages("d/") for o in page.objects}
    assert keys == {f"d/a{i}.tgz" for i in range(3)}  # no delta, no reference left behind
    monkeypatch.undo()
    reader = DeltaStore(objectstore, DeltaSettings(), workdir=tmp_path / "r")
    for i, data in enumerate(versions):
        reader.get(f"d/a{i}.tgz", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == data
    reader.close()


# Encodes the way xdelta3 does without -D -R (inputs decompressed), decodes as asked.
_DROPPING_D = b"""#!/bin/sh
if [ "$1" = "-e" ]; then
  args=""
  for a in "$@"; do case "$a" in -D|-R) ;; *) args="$args '$a'";; esac; done
  eval exec REAL $args
fi
exec REAL "$@"
"""
