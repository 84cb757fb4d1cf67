"""Conformance of the local S3 server (ministack) on the points dgfs relies on."""

from __future__ import annotations

import os
import signal

import boto3
import pytest
from botocore.exceptions import ClientError

from dgfs import localserver
from tests.s3kind import ministack_only


def _client(endpoint: str, env: dict[str, str] | None = None):
    env = env or localserver.client_env(endpoint)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


@pytest.fixture
def client(s3_server):
    return _client(s3_server.endpoint_url, s3_server.env())


def test_user_metadata_round_trip(client, bucket):
    client.put_object(Bucket=bucket, Key="k", Body=b"x", Metadata={"dg-file-sha256": "ab"})
    assert client.head_object(Bucket=bucket, Key="k")["Metadata"] == {"dg-file-sha256": "ab"}


def test_conditional_create_returns_412(client, bucket):
    client.put_object(Bucket=bucket, Key="r", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="r", Body=b"2", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="r")["Body"].read() == b"1"


def test_multipart_upload(client, bucket):
    part = os.urandom(5 * 2**20)
    mpu = client.create_multipart_upload(Bucket=bucket, Key="big", Metadata={"a": "b"})
    parts = []
    for n in (1, 2):
        r = client.upload_part(
            Bucket=bucket, Key="big", UploadId=mpu["UploadId"], PartNumber=n, Body=part
        )
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    client.complete_multipart_upload(
        Bucket=bucket, Key="big", UploadId=mpu["UploadId"], MultipartUpload={"Parts": parts}
    )
    head = client.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == 2 * len(part)
    assert head["Metadata"] == {"a": "b"}


def test_delimited_paginated_listing(client, bucket):
    for i in range(7):
        client.put_object(Bucket=bucket, Key=f"d/f{i}", Body=b"")
    client.put_object(Bucket=bucket, Key="d/sub/x", Body=b"")
    keys, prefixes, token = [], [], None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": "d/", "Delimiter": "/", "MaxKeys": 3}
        if token:
            kwargs["ContinuationToken"] = token
        r = client.list_objects_v2(**kwargs)
        keys += [o["Key"] for o in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r["IsTruncated"]:
            break
        token = r["NextContinuationToken"]
    assert keys == [f"d/f{i}" for i in range(7)]
    assert prefixes == ["d/sub/"]


def test_copy_with_metadata_replace(client, bucket):
    client.put_object(Bucket=bucket, Key="s", Body=b"data", Metadata={"old": "1"})
    client.copy_object(
        Bucket=bucket,
        Key="s",
        CopySource={"Bucket": bucket, "Key": "s"},
        Metadata={"new": "2"},
        MetadataDirective="REPLACE",
    )
    head = client.head_object(Bucket=bucket, Key="s")
    assert head["Metadata"] == {"new": "2"}
    assert client.get_object(Bucket=bucket, Key="s")["Body"].read() == b"data"


def test_ranged_get(client, bucket):
    client.put_object(Bucket=bucket, Key="r", Body=b"0123456789")
    assert client.get_object(Bucket=bucket, Key="r", Range="bytes=2-5")["Body"].read() == b"2345"


@ministack_only
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_persists_across_restart(tmp_path, how):
    """Objects, metadata, and a key `x` beside `x/y` survive a restart (also after kill -9)."""
    server = localserver.start(tmp_path)
    client = _client(server.endpoint_url)
    client.create_bucket(Bucket="persist-test")
    client.put_object(Bucket="persist-test", Key="x", Body=b"file", Metadata={"m": "1"})
    client.put_object(Bucket="persist-test", Key="x/y", Body=b"nested")
    client.put_object(Bucket="persist-test", Key="dir/", Body=b"")
    localserver.kill(server.pid, sig=how)
    (tmp_path / "server.state").unlink()
    server = localserver.start(tmp_path)
    try:
        client = _client(server.endpoint_url)
        assert client.get_object(Bucket="persist-test", Key="x")["Body"].read() == b"file"
        assert client.head_object(Bucket="persist-test", Key="x")["Metadata"] == {"m": "1"}
        assert client.get_object(Bucket="persist-test", Key="x/y")["Body"].read() == b"nested"
        assert client.head_object(Bucket="persist-test", Key="dir/")["ContentLength"] == 0
    finally:
        localserver.stop(tmp_path)


@ministack_only
def test_start_is_idempotent(s3_server):
    again = localserver.start(s3_server.data_dir)
    assert again.pid == s3_server.pid
