"""`dgfs verify` and core.verify against the real local S3 server."""

from __future__ import annotations

import json

import pytest

from core.verify import targets, verify
from tests.datagen import write
from tests.test_stats import populate, run_cli


@pytest.fixture
def filled(deltastore, objectstore, tmp_path):
    populate(deltastore, objectstore, tmp_path)
    return deltastore


def corrupt(objectstore, key: str) -> None:
    """Flip the body's bytes, keeping the object's metadata."""
    head = objectstore.head(key)
    bad = bytes(b ^ 0xFF for b in objectstore.get_bytes(key))
    objectstore.put_bytes(key, bad, head.metadata)


def test_verify_good_bucket(filled, bucket):
    result = run_cli("verify", f"s3://{bucket}", "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert (got["checked"], got["ok"], got["failed"]) == (7, 6, [])
    assert got["unchecked"] == ["foreign/plain.dat"]
    human = run_cli("verify", f"s3://{bucket}", "--jobs", "2")
    assert human.returncode == 0, human.stderr
    assert "7 file(s): 6 ok, 0 failed, 1 unchecked" in human.stdout


def test_verify_catches_corrupted_delta(filled, objectstore, bucket):
    corrupt(objectstore, "releases/app-2.zip.delta")
    result = run_cli("verify", f"s3://{bucket}")
    assert result.returncode == 1
    assert "FAILED releases/app-2.zip.delta" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == ["Error: verification failed for 1 file(s): releases/app-2.zip"]
    as_json = run_cli("verify", f"s3://{bucket}/releases", "--json")
    assert as_json.returncode == 1
    failed = json.loads(as_json.stdout)["failed"]
    assert [f["key"] for f in failed] == ["releases/app-2.zip"]
    assert "releases/app-2.zip.delta" in failed[0]["error"]


def test_verify_one_key_and_corrupted_direct(filled, objectstore, bucket):
    one = run_cli("verify", f"s3://{bucket}/releases/app-1.zip", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["checked"] == 1
    corrupt(objectstore, "notes.txt")
    bad = run_cli("verify", f"s3://{bucket}/notes.txt")
    assert bad.returncode == 1 and "notes.txt" in bad.stderr
    assert "sha256 mismatch" in bad.stdout


def test_verify_missing_reference_names_the_delta(filled, objectstore):
    objectstore.delete("releases/reference.bin")
    report = verify(filled, targets(filled, "releases"), jobs=4)
    assert sorted(report.failed) == [f"releases/app-{i}.zip" for i in range(4)]
    assert all(
        f"releases/app-{i}.zip.delta" in report.failed[f"releases/app-{i}.zip"] for i in range(4)
    )
    assert report.ok == ["releases/random.bin"]


def test_verify_progress_and_empty_target(deltastore, bucket, tmp_path):
    deltastore.put(write(tmp_path / "a", b"a" * 100), "d/a.txt")
    seen: list[int] = []
    report = verify(deltastore, targets(deltastore, "d"), progress=seen.append)
    assert report.ok == ["d/a.txt"] and seen == [1]
    nothing = run_cli("verify", f"s3://{bucket}/no/such/thing")
    assert nothing.returncode == 1
    assert nothing.stderr.strip() == f"Error: s3://{bucket}/no/such/thing: no such file or prefix"
