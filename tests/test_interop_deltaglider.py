"""Interop with the real deltaglider 6.2.0 CLI, both ways, against the local S3 server.

deltaglider runs from its own venv (`.venv-deltaglider`, made by scripts/setup.sh) as a
subprocess; it reads AWS_ENDPOINT_URL and the credentials from the environment that the
`s3_server` fixture sets. No mocks: every byte goes through S3 and xdelta3.

deltaglider CLI quirks worked around here (all in 6.2.0):
- `cp f s3://b/dir/` lands at the bucket root and `cp f s3://b/dir/other.zip` ignores the
  target name, so uploads use a local file already named as the target and give the full key;
  where the object landed is then checked with boto3.
- `cp s3://b/dir/x.zip localdir/` fails for deltas ("Is a directory"), so downloads always
  name the local output file.
- Only archive extensions are delta-encoded, so the delta series uses `.zip` names.
- `ls` prints stored sizes (the delta's bytes, not the original's), so only names are compared.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from core.deltastore import DeltaStore
from core.layout import Kind
from tests.datagen import compressed_series, random_bytes, version_series, write

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parent.parent
DG_CLI = REPO / ".venv-deltaglider" / "bin" / "deltaglider"
DG_TOOL = "deltaglider/6.2.0"
SIZE = 1 << 20
_LS_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+(\d+) (.+)$")


class DeltagliderCLI:
    """`deltaglider` as a subprocess, pointed at the local S3 server through the environment."""

    def __init__(self, exe: Path) -> None:
        self.exe = exe

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.try_run(*args, cwd=cwd)
        assert proc.returncode == 0, (
            f"deltaglider {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
        return proc

    def try_run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run deltaglider and return the process whatever its exit status."""
        env = {**os.environ, "DG_SUPPRESS_DEPRECATION": "1", "DG_LOG_LEVEL": "WARNING"}
        return subprocess.run(
            [str(self.exe), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def upload(self, local: Path, bucket: str, key: str) -> None:
        """`cp local s3://bucket/key`; the local name must already be the key's basename."""
        assert local.name == key.rsplit("/", 1)[-1], "deltaglider ignores the target name"
        self.run("cp", str(local), f"s3://{bucket}/{key}")

    def download(self, bucket: str, key: str, out: Path) -> bytes:
        self.run("cp", f"s3://{bucket}/{key}", str(out))
        return out.read_bytes()

    def ls(self, bucket: str, prefix: str) -> dict[str, int]:
        """Names (relative to `prefix/`) to the sizes `deltaglider ls` prints."""
        out = self.run("ls", f"s3://{bucket}/{prefix}/").stdout
        found = {}
        for line in out.splitlines():
            m = _LS_LINE.match(line.strip())
            if m:
                found[m.group(2)] = int(m.group(1))
        return found

    def stats(self, bucket: str, *flags: str) -> dict:
        return json.loads(self.run("stats", bucket, "--json", *flags).stdout)


@pytest.fixture(scope="session")
def dg(s3_server) -> DeltagliderCLI:
    if not os.access(DG_CLI, os.X_OK):
        pytest.fail(
            f"{DG_CLI} is missing: run scripts/setup.sh (or `python3 -m venv .venv-deltaglider "
            "&& .venv-deltaglider/bin/pip install deltaglider==6.2.0`) for the interop tests"
        )
    return DeltagliderCLI(DG_CLI)


@pytest.fixture
def s3(s3_server):
    """A raw boto3 client (independent of dgfs's ObjectStore) for checking what landed."""
    return boto3.client("s3")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keys(s3, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def meta(s3, bucket: str, key: str) -> dict[str, str]:
    return s3.head_object(Bucket=bucket, Key=key)["Metadata"]


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}/app-1.{i}.zip" for i in range(count)]


# ---------------------------------------------------------------- deltaglider → dgfs


def test_dgfs_reads_what_deltaglider_wrote(dg, s3, bucket, deltastore: DeltaStore, tmp_path):
    versions = version_series(4, SIZE, seed=11)
    logical = names("rel", 4)
    for key, data in zip(logical, versions, strict=True):
        dg.upload(write(tmp_path / "up" / key.rsplit("/", 1)[1], data), bucket, key)
    notes = b"release notes\n" * 20
    dg.upload(write(tmp_path / "up" / "NOTES.txt", notes), bucket, "rel/NOTES.txt")

    stored = keys(s3, bucket)
    assert stored == {f"{k}.delta" for k in logical} | {"rel/reference.bin", "rel/NOTES.txt"}
    assert meta(s3, bucket, "rel/reference.bin")["dg-tool"] == DG_TOOL
    assert meta(s3, bucket, "rel/app-1.0.zip.delta")["dg-note"].startswith("zero-diff")

    expected = dict(zip(logical, versions, strict=True)) | {"rel/NOTES.txt": notes}
    for key, data in expected.items():
        out = tmp_path / "get" / key.replace("/", "_")
        out.parent.mkdir(exist_ok=True)
        record = deltastore.get(key, out)
        assert out.read_bytes() == data, key
        assert record.sha256 == sha(data)

    listed = deltastore.list("rel")
    assert [r.logical_key for r in listed] == sorted(expected)
    by_name = {r.logical_key: r for r in listed}
    assert "rel/reference.bin" not in by_name
    for key, data in expected.items():
        assert by_name[key].original_size == len(data), key
    notes_rec = by_name.pop("rel/NOTES.txt")
    assert notes_rec.kind == Kind.DIRECT
    assert notes_rec.stored_key == "rel/NOTES.txt"
    for key, record in by_name.items():
        assert record.kind == Kind.DELTA, key
        assert record.stored_key == f"{key}.delta"
        assert record.ref_key == "rel/reference.bin"
        assert record.ref_sha256 == sha(versions[0])
        assert record.tool == DG_TOOL
        assert record.stored_size < SIZE // 20, f"{key}: not really a delta"
    assert "zero-diff" in by_name["rel/app-1.0.zip"].metadata["dg-note"]


# ---------------------------------------------------------------- dgfs → deltaglider


def test_deltaglider_reads_what_dgfs_wrote(dg, s3, bucket, deltastore: DeltaStore, tmp_path):
    versions = version_series(4, SIZE, seed=12)
    files = dict(zip(names("up", 4), versions, strict=True))
    files["up/NOTES.txt"] = b"direct body\n" * 50
    # deltaglider handles spaces and non-ASCII in keys for download (dgfs stores the name in
    # dg-original-name RFC 2047-encoded; deltaglider never reads that field on download).
    files["up/my file ü €.zip"] = versions[1][: SIZE // 2]
    records = {}
    for key, data in files.items():
        src = write(tmp_path / "src" / sha(key.encode()), data)
        records[key] = deltastore.put(src, key)

    assert records["up/app-1.0.zip"].kind == Kind.DELTA
    assert "zero-diff" in records["up/app-1.0.zip"].metadata["dg-note"]
    for key in ("up/app-1.1.zip", "up/app-1.3.zip", "up/my file ü €.zip"):
        assert records[key].kind == Kind.DELTA, key
    assert records["up/NOTES.txt"].kind == Kind.DIRECT
    assert "up/reference.bin" in keys(s3, bucket)

    for i, (key, data) in enumerate(files.items()):
        out = tmp_path / "dl" / f"{i}-{key.rsplit('/', 1)[1]}"
        out.parent.mkdir(exist_ok=True)
        assert dg.download(bucket, key, out) == data, key

    listed = dg.ls(bucket, "up")
    assert set(listed) == {k.rsplit("/", 1)[1] for k in files}
    assert listed["NOTES.txt"] == len(files["up/NOTES.txt"])  # direct: stored = original


def test_deltaglider_on_adaptive_policies(dg, s3, bucket, objectstore, tmp_path):
    """adaptive-compatible: deltaglider reads every file. adaptive: it reads the files whose
    hidden reference is a raw root and fails (never returns wrong bytes) on chained ones."""
    from core.config import DeltaSettings
    from core.layout import chain_parent

    versions = version_series(6, SIZE, seed=14)
    chained = 0
    for policy in ("adaptive-compatible", "adaptive"):
        store = DeltaStore(objectstore, DeltaSettings(reference_policy=policy), workdir=tmp_path)
        for i, data in enumerate(versions):
            key = f"{policy}/app-1.{i}.zip"
            rec = store.put(write(tmp_path / "src" / f"app-1.{i}.zip", data), key)
            link = chain_parent(store.head_record(rec.ref_key).metadata) if rec.ref_key else None
            out = tmp_path / "dl" / policy / f"app-1.{i}.zip"
            out.parent.mkdir(parents=True, exist_ok=True)
            proc = dg.try_run("cp", f"s3://{bucket}/{key}", str(out))
            if link is None:
                assert proc.returncode == 0 and out.read_bytes() == data, (key, proc.stderr)
            else:
                chained += 1
                assert proc.returncode != 0, key
                assert not out.exists() or out.read_bytes() == data
        store.close()
    assert chained >= 3


# ---------------------------------------------------------------- mixed deltaspaces


def test_mixed_deltaglider_first(dg, s3, bucket, deltastore: DeltaStore, tmp_path):
    versions = version_series(4, SIZE, seed=13)
    logical = names("mix", 4)
    for key, data in zip(logical[:2], versions[:2], strict=True):
        dg.upload(write(tmp_path / "up" / key.rsplit("/", 1)[1], data), bucket, key)
    ref_meta = meta(s3, bucket, "mix/reference.bin")
    assert ref_meta["dg-tool"] == DG_TOOL

    for key, data in zip(logical[2:], versions[2:], strict=True):
        record = deltastore.put(write(tmp_path / "src" / key.rsplit("/", 1)[1], data), key)
        assert record.kind == Kind.DELTA, key
        assert record.ref_key == "mix/reference.bin"
        assert record.ref_sha256 == sha(versions[0])
        assert record.stored_size < SIZE // 20
    assert meta(s3, bucket, "mix/reference.bin") == ref_meta  # not replaced
    assert keys(s3, bucket) == {f"{k}.delta" for k in logical} | {"mix/reference.bin"}

    for i, (key, data) in enumerate(zip(logical, versions, strict=True)):
        assert dg.download(bucket, key, tmp_path / f"dg-{i}.zip") == data, key
        deltastore.get(key, tmp_path / f"ds-{i}.zip")
        assert (tmp_path / f"ds-{i}.zip").read_bytes() == data, key


def test_mixed_dgfs_first(dg, s3, bucket, deltastore: DeltaStore, tmp_path):
    versions = version_series(4, SIZE, seed=14)
    logical = names("mix", 4)
    for key, data in zip(logical[:2], versions[:2], strict=True):
        deltastore.put(write(tmp_path / "src" / key.rsplit("/", 1)[1], data), key)
    ref_meta = meta(s3, bucket, "mix/reference.bin")
    assert ref_meta["dg-tool"] == deltastore.tool
    assert ref_meta["dg-file-sha256"] == sha(versions[0])

    for key, data in zip(logical[2:], versions[2:], strict=True):
        dg.upload(write(tmp_path / "up" / key.rsplit("/", 1)[1], data), bucket, key)
        m = meta(s3, bucket, f"{key}.delta")
        assert m["dg-tool"] == DG_TOOL
        assert m["dg-ref-key"] == "mix/reference.bin"
        assert m["dg-ref-sha256"] == sha(versions[0])
        assert "dg-note" not in m  # a real delta against dgfs's reference, not a self-delta
    assert meta(s3, bucket, "mix/reference.bin") == ref_meta  # deltaglider kept ours
    assert keys(s3, bucket) == {f"{k}.delta" for k in logical} | {"mix/reference.bin"}

    for i, (key, data) in enumerate(zip(logical, versions, strict=True)):
        assert dg.download(bucket, key, tmp_path / f"dg-{i}.zip") == data, key
        record = deltastore.get(key, tmp_path / f"ds-{i}.zip")
        assert (tmp_path / f"ds-{i}.zip").read_bytes() == data, key
        assert record.original_size == len(data)


# ---------------------------------------------------------------- stats


def expected_stats(s3, bucket: str) -> dict:
    """deltaglider's stats definitions (spec), computed from a raw boto3 listing + HEADs."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    objects = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
    objects = {k: v for k, v in objects.items() if not k.startswith(".deltaglider/")}

    def space(key: str) -> str:
        return key.rsplit("/", 1)[0] if "/" in key else ""

    deltas = {k: v for k, v in objects.items() if k.endswith(".delta")}
    refs = {k: v for k, v in objects.items() if k.rsplit("/", 1)[-1] == "reference.bin"}
    directs = {k: v for k, v in objects.items() if k not in deltas and k not in refs}
    spaces_with_deltas = {space(k) for k in deltas}
    total = sum(directs.values()) + sum(int(meta(s3, bucket, k)["dg-file-size"]) for k in deltas)
    compressed = (
        sum(deltas.values())
        + sum(directs.values())
        + sum(v for k, v in refs.items() if space(k) in spaces_with_deltas)
    )
    return {
        "bucket": bucket,
        "object_count": len(deltas) + len(directs),
        "total_size": total,
        "compressed_size": compressed,
        "space_saved": total - compressed,
        "delta_objects": len(deltas),
        "direct_objects": len(directs),
    }


def test_deltaglider_stats_on_dgfs_bucket(dg, s3, bucket, deltastore: DeltaStore, tmp_path):
    versions = version_series(4, SIZE, seed=15)
    files = dict(zip(names("a", 4), versions, strict=True))
    files["a/NOTES.txt"] = b"notes\n" * 100
    files["b/c/tool-2.0.zip"] = random_bytes(200_000, seed=16)  # alone: a self-delta
    files["README.md"] = b"# top\n"
    for key, data in files.items():
        deltastore.put(write(tmp_path / "src" / sha(key.encode()), data), key)

    want = expected_stats(s3, bucket)
    assert want["delta_objects"] == 5 and want["direct_objects"] == 2
    assert want["total_size"] == sum(len(d) for d in files.values())

    # --detailed HEADs every delta, so it knows the original sizes: every field must match.
    # --no-cache: deltaglider 6.2.0's cache write always fails ("S3StorageAdapter.put() got an
    # unexpected keyword argument 'address'", logged as a non-fatal warning), so a cached run
    # would only recompute anyway.
    detailed = dg.stats(bucket, "--detailed", "--no-cache")
    for field, value in want.items():
        assert detailed[field] == value, field
    assert detailed["average_compression_ratio"] == pytest.approx(
        want["space_saved"] / want["total_size"]
    )

    # The default quick mode only LISTs: deltas' original sizes are unknown to it, so its
    # total_size is the directs' bytes alone (by design, it warns); counts and compressed_size
    # come from the listing and must match. Run with its (failing, non-fatal) cache write.
    quick = dg.stats(bucket)
    for field in ("object_count", "compressed_size", "delta_objects", "direct_objects"):
        assert quick[field] == want[field], field
    assert quick["total_size"] == len(files["a/NOTES.txt"]) + len(files["README.md"])


def test_deltaglider_ignores_the_dgfs_directory_index(dg, s3, bucket, mounter):
    files = dict(zip(names("idx", 3), version_series(3, SIZE // 4, seed=21), strict=True))
    files["idx/NOTES.txt"] = b"notes\n" * 400
    m = mounter(bucket)
    (m.path / "idx").mkdir()
    for key, data in files.items():
        (m.path / key).write_bytes(data)
    assert m.umount().returncode == 0
    assert "idx/.dgfs/index/reference.bin" in keys(s3, bucket)
    assert set(dg.ls(bucket, "idx")) == {k.rsplit("/", 1)[1] for k in files}
    recursive = dg.run("ls", "-r", f"s3://{bucket}/").stdout
    assert ".dgfs" not in recursive, recursive
    stats = dg.stats(bucket, "--detailed", "--no-cache")
    assert stats["object_count"] == len(files) + 1  # + the `idx/` marker, counted by deltaglider
    assert stats["delta_objects"] == 3


@pytest.mark.fuse
def test_deltaglider_tar_gz_delta_gives_eio_and_verify_names_it(dg, s3, bucket, mounter, tmp_path):
    """deltaglider 6.2 runs xdelta3 without -D: its delta of a .tar.gz is one of the
    decompressed tar, which cannot give the original bytes back. dgfs never returns other
    bytes: EIO with a log line, `verify` names the reason, `get --decompressed` saves the tar."""
    versions = compressed_series(".tar.gz", 2, seed=5)
    logical = [f"src/pkg-1.{i}.tar.gz" for i in range(2)]
    for key, data in zip(logical, versions, strict=True):
        dg.upload(write(tmp_path / "up" / key.rsplit("/", 1)[1], data), bucket, key)
    assert f"{logical[1]}.delta" in keys(s3, bucket)

    m = mounter(bucket, "mnt", cache="cold")
    assert (m.path / logical[0]).read_bytes() == versions[0]  # zero-diff: the reference itself
    with pytest.raises(OSError) as err:
        (m.path / logical[1]).read_bytes()
    assert err.value.errno == errno.EIO
    assert "delta of externally decompressed content" in m.log_text()
    assert "dgfs get --decompressed" in m.log_text()

    dgfs = [sys.executable, "-m", "dgfs.cli"]
    verify = subprocess.run([*dgfs, "verify", f"s3://{bucket}"], capture_output=True, text=True)
    assert verify.returncode == 1
    assert f"{logical[1]}.delta: delta of externally decompressed content" in verify.stdout
    assert "Traceback" not in verify.stderr

    out = tmp_path / "pkg.tar"
    got = subprocess.run(
        [*dgfs, "get", "--decompressed", f"s3://{bucket}/{logical[1]}", str(out)],
        capture_output=True,
        text=True,
    )
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == gzip.decompress(versions[1])
    plain = subprocess.run(
        [*dgfs, "get", f"s3://{bucket}/{logical[1]}", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 1 and "externally decompressed" in plain.stderr
    assert not (tmp_path / "x").exists()
