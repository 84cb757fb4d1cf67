"""The fast ListObjectsV2 parser gives what botocore's own parser gives, on real bodies."""

from __future__ import annotations

import boto3
import botocore.session
from botocore.parsers import RestXMLParser

from core import listparse
from core.objectstore import _timestamp

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def _body(ns: str, truncated: bool) -> bytes:
    items = "".join(
        f"<Contents><Key>d/f%20{i}+%25.bin</Key><LastModified>2026-11-29T10:0{i}:01.{i}00Z"
        f"</LastModified><ETag>&quot;{i:032x}&quot;</ETag><Size>{i * 1000}</Size>"
        "<StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(5)
    )
    more = "<NextContinuationToken>tok+/=</NextContinuationToken>" if truncated else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {ns}><Name>b</Name>'
        f"<Prefix>d/</Prefix><KeyCount>7</KeyCount><MaxKeys>1000</MaxKeys>"
        f"<Delimiter>/</Delimiter><EncodingType>url</EncodingType>"
        f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{more}{items}"
        "<CommonPrefixes><Prefix>d/sub%20one/</Prefix></CommonPrefixes>"
        "<CommonPrefixes><Prefix>d/two/</Prefix></CommonPrefixes></ListBucketResult>"
    ).encode()


def _botocore(body: bytes) -> dict:
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("ListObjectsV2").output_shape
    parser = RestXMLParser(timestamp_parser=_timestamp)
    parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


def test_same_result_as_botocore():
    for ns in (NS, ""):
        for truncated in (True, False):
            body = _body(ns, truncated)
            assert listparse.parse_list_body(body, _timestamp) == _botocore(body)


def test_empty_listing_and_non_listing_bodies():
    empty = f"<ListBucketResult {NS}><Name>b</Name><KeyCount>0</KeyCount>"
    empty += "<IsTruncated>false</IsTruncated></ListBucketResult>"
    assert listparse.parse_list_body(empty.encode(), _timestamp) == _botocore(empty.encode())
    assert listparse.parse_list_body(b"<Error><Code>X</Code></Error>", _timestamp) is None
    assert listparse.parse_list_body(b"not xml", _timestamp) is None


def test_weird_keys_through_a_real_server(objectstore, bucket):
    """botocore asks for URL-encoded keys and decodes them after our parse."""
    names = ["a b", "plus+sign", "pct%41", "ünï", "amp&lt", "tab\tname", "q?#"]
    for name in names:
        objectstore.put_bytes(f"w/{name}", name.encode(), {})
    objectstore.put_bytes("w/sub dir/x", b"x", {})
    (page,) = list(objectstore.list_pages("w/"))
    assert sorted(o.key for o in page.objects) == sorted(f"w/{n}" for n in names)
    assert page.prefixes == ["w/sub dir/"]
    raw = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="w/", Delimiter="/")
    by_key = {o["Key"]: o for o in raw["Contents"]}
    for obj in page.objects:
        assert obj.size == by_key[obj.key]["Size"] and obj.etag == by_key[obj.key]["ETag"]
