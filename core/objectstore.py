"""The only module that imports boto3: object get/put/head/list/copy/delete with error mapping.

Every call is synchronous and thread-safe (one boto3 client shared by worker threads).
Throttling and 5xx answers are retried by botocore's standard retry mode with backoff; broken
download streams are retried here.
"""

from __future__ import annotations

import collections
import datetime as dt
import email.utils
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import boto3
import botocore.exceptions as bce
import botocore.session
import botocore.utils
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from core import listparse
from core.config import S3Settings
from core.errors import AccessDenied, BucketNotFound, EndpointError, NotFound, PreconditionFailed

log = logging.getLogger("dgfs.s3")

SINGLE_PUT_LIMIT = 5 * 2**30
SMALL_BODY = 2**20  # files up to this size are PUT from memory
STREAM_CHUNK = 1 << 20
DOWNLOAD_ATTEMPTS = 3
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
}
# the `outcome` label of a failed request (dgfs_s3_requests_total); anything else is "error"
_OUTCOME_OF = {
    NotFound: "not_found",
    BucketNotFound: "not_found",
    AccessDenied: "denied",
    PreconditionFailed: "precondition_failed",
}
_STREAM_ERRORS = (
    bce.ReadTimeoutError,
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
    bce.ConnectionClosedError,
)
_CONNECTION_ERRORS = (
    bce.EndpointConnectionError,
    bce.ConnectTimeoutError,
    bce.ReadTimeoutError,
    bce.ConnectionClosedError,
    bce.ResponseStreamingError,
    bce.SSLError,
    bce.ProxyConnectionError,
    bce.HTTPClientError,
)


@dataclass(frozen=True)
class ObjectInfo:
    """An object as LIST or HEAD describes it (metadata only from HEAD/GET)."""

    key: str
    size: int
    etag: str
    last_modified_ns: int
    metadata: dict[str, str] | None = None


@dataclass
class ListPage:
    """One page of a delimited listing."""

    objects: list[ObjectInfo]
    prefixes: list[str]


def _client_config(s: S3Settings) -> Config:
    extra: dict = {}
    if s.checksum_when_required:
        extra["request_checksum_calculation"] = "when_required"
        extra["response_checksum_validation"] = "when_required"
    return Config(
        region_name=s.region,
        connect_timeout=s.connect_timeout,
        read_timeout=s.read_timeout,
        retries={"max_attempts": s.max_attempts, "mode": "standard"},
        max_pool_connections=s.max_pool_connections,
        s3={"addressing_style": "path" if s.path_style else "auto"},
        **extra,
    )


def _timestamp(value: str) -> dt.datetime:
    """botocore's timestamp parser without dateutil (45 µs per value: most of the time spent on
    a 1000-key LIST page): ISO 8601 from XML bodies, RFC 1123 from headers, else botocore's."""
    try:
        if "T" in value:
            parsed = dt.datetime.fromisoformat(value)
        else:
            parsed = email.utils.parsedate_to_datetime(value)
        if parsed.tzinfo is not None:
            return parsed
    except (TypeError, ValueError):
        pass
    return botocore.utils.parse_timestamp(value)


def _ns(timestamp) -> int:
    return int(timestamp.timestamp() * 1e9) if timestamp is not None else 0


@dataclass(frozen=True)
class PutStamp:
    """What a single PUT's response says: the new object's ETag, and the response's Date
    (the server's clock, whole seconds; the object's LastModified is at most that)."""

    etag: str
    date_ns: int


def _stamp_of(response: dict) -> PutStamp | None:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        when = email.utils.parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        when = None
    if not response.get("ETag") or when is None:
        return None
    return PutStamp(response["ETag"], _ns(when))


class ObjectStore:
    """A bucket on an S3 endpoint, with errors mapped to core.errors."""

    def __init__(self, bucket: str, settings: S3Settings) -> None:
        self.bucket = bucket
        self.settings = settings
        core_session = botocore.session.get_session()
        core_session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_timestamp
        )
        session = boto3.session.Session(
            profile_name=settings.profile, botocore_session=core_session
        )
        verify: bool | str = settings.ca_bundle or settings.verify_tls
        try:
            self._client = session.client(
                "s3",
                endpoint_url=settings.endpoint_url,
                verify=verify,
                config=_client_config(settings),
            )
        except (bce.ProfileNotFound, ValueError) as exc:
            raise AccessDenied(str(exc)) from None
        listparse.install(self._client, _timestamp)
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            max_concurrency=4,
        )
        self._lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        # for metrics (dgfs/metrics.py): requests by (kind, outcome), body bytes each way
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bytes_uploaded = 0
        self.bytes_downloaded = 0
        # False on servers that ignore `If-None-Match: *` (core/capabilities.py probes it):
        # conditional creates then go through create_then_verify (below)
        self.conditional_put = True

    # ------------------------------------------------------------ bookkeeping

    def _count(self, op: str) -> None:
        with self._lock:
            self.requests[op] += 1

    def _outcome(self, op: str, outcome: str) -> None:
        with self._lock:
            self.outcomes[(op, outcome)] += 1

    def _add_bytes(self, uploaded: int = 0, downloaded: int = 0) -> None:
        with self._lock:
            self.bytes_uploaded += uploaded
            self.bytes_downloaded += downloaded

    def counters(self) -> tuple[dict[str, int], dict[tuple[str, str], int], int, int]:
        """A consistent copy: requests by kind, by (kind, outcome), bytes up, bytes down."""
        with self._lock:
            return (
                dict(self.requests),
                dict(self.outcomes),
                self.bytes_uploaded,
                self.bytes_downloaded,
            )

    def _map(self, exc: Exception, key: str | None) -> Exception:
        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (key is None and code in _NOT_FOUND):
                return BucketNotFound(f"bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND:
                return NotFound(f"{where}: no such key")
            if code in _DENIED:
                return AccessDenied(f"{where}: access denied ({code})")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status == 412:
                return PreconditionFailed(f"{where}: precondition failed (exists or changed)")
            return EndpointError(f"{where}: {code or status} {err.get('Message', '')}".strip())
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return AccessDenied("no AWS credentials found (set AWS_ACCESS_KEY_ID/… or a profile)")
        if isinstance(exc, _CONNECTION_ERRORS):
            return EndpointError(f"{where}: cannot reach endpoint: {exc}")
        if isinstance(exc, bce.BotoCoreError):
            return EndpointError(f"{where}: {exc}")
        return exc

    def _call(self, op: str, key: str | None, fn, **kwargs):
        self._count(op)
        try:
            result = fn(**kwargs)
        except (bce.ClientError, bce.BotoCoreError) as exc:
            mapped = self._map(exc, key)
            self._outcome(op, _OUTCOME_OF.get(type(mapped), "error"))
            raise mapped from None
        except BaseException:
            self._outcome(op, "error")
            raise
        self._outcome(op, "ok")
        return result

    def call_raw(self, op: str, key: str | None, **kwargs) -> dict:
        """One boto3 client call by name on this bucket, errors mapped (capability probes)."""
        return self._call(op, key, getattr(self._client, op), Bucket=self.bucket, **kwargs)

    def _extra_put_args(self, metadata: dict[str, str]) -> dict:
        args = {"Metadata": metadata, "ContentType": "application/octet-stream"}
        if self.settings.sse:
            args["ServerSideEncryption"] = self.settings.sse
        if self.settings.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.settings.sse_kms_key_id
        if self.settings.storage_class:
            args["StorageClass"] = self.settings.storage_class
        return args

    # ------------------------------------------------------------ bucket

    def check_bucket(self) -> None:
        """Raise BucketNotFound / AccessDenied / EndpointError unless the bucket is usable."""
        self._call("head_bucket", None, self._client.head_bucket, Bucket=self.bucket)

    def create_bucket(self) -> None:
        """Create the bucket (used by the local-server tooling); an existing one is fine."""
        try:
            self._call("create_bucket", None, self._client.create_bucket, Bucket=self.bucket)
        except EndpointError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise

    # ------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo:
        r = self._call("head", key, self._client.head_object, Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key, r["ContentLength"], r["ETag"], _ns(r.get("LastModified")), r.get("Metadata", {})
        )

    def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Whole object, or bytes [start, end] inclusive (a ranged GET)."""
        kwargs = {"Bucket": self.bucket, "Key": key}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end}"
        for attempt in range(DOWNLOAD_ATTEMPTS):
            r = self._call("get", key, self._client.get_object, **kwargs)
            try:
                data = r["Body"].read()
            except _STREAM_ERRORS as exc:
                if attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise self._map(exc, key) from None
                log.warning("get %s: stream broke (%s), retrying", key, exc)
                continue
            self._add_bytes(downloaded=len(data))
            return data
        raise AssertionError("unreachable")

    def download(self, key: str, out: BinaryIO) -> tuple[ObjectInfo, str]:
        """Stream an object into an open binary file (rewound on retry).

        Returns the object's info and the SHA-256 hex digest of the bytes written.
        """
        start = out.tell()
        for attempt in range(DOWNLOAD_ATTEMPTS):
            r = self._call("get", key, self._client.get_object, Bucket=self.bucket, Key=key)
            digest = hashlib.sha256()
            try:
                for chunk in r["Body"].iter_chunks(STREAM_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    self._add_bytes(downloaded=len(chunk))
            except _STREAM_ERRORS as exc:
                if attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise self._map(exc, key) from None
                log.warning("get %s: stream broke (%s), retrying", key, exc)
                out.seek(start)
                out.truncate()
                continue
            info = ObjectInfo(
                key,
                r["ContentLength"],
                r["ETag"],
                _ns(r.get("LastModified")),
                r.get("Metadata", {}),
            )
            return info, digest.hexdigest()
        raise AssertionError("unreachable")

    def list_pages(self, prefix: str, delimiter: str | None = "/") -> Iterator[ListPage]:
        """ListObjectsV2 pages (1000 keys each) under `prefix`, delimited unless None."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            r = self._call("list", prefix, self._client.list_objects_v2, **kwargs)
            objects = [
                ObjectInfo(o["Key"], o["Size"], o.get("ETag", ""), _ns(o.get("LastModified")))
                for o in r.get("Contents", [])
            ]
            prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            yield ListPage(objects, prefixes)
            if not r.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = r["NextContinuationToken"]

    # ------------------------------------------------------------ writes

    def put_bytes(
        self, key: str, data: bytes, metadata: dict[str, str], if_none_match: bool = False
    ) -> str:
        """Single PUT of small data; returns the ETag. PreconditionFailed if it must not exist."""
        if if_none_match and not self.conditional_put:
            return create_then_verify(self, key, lambda: self.put_bytes(key, data, metadata))
        kwargs = {"Bucket": self.bucket, "Key": key, "Body": data, **self._extra_put_args(metadata)}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        etag = self._call("put", key, self._client.put_object, **kwargs)["ETag"]
        self._add_bytes(uploaded=len(data))
        return etag

    def put_file(
        self,
        key: str,
        path: Path,
        metadata: dict[str, str],
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> PutStamp | None:
        """Upload a file (multipart above the threshold). Conditional puts use one PUT (≤ 5 GB):
        `if_none_match` (the key must not exist) or `if_match` (its current ETag must be this);
        PreconditionFailed (or NotFound for `if_match`) otherwise.

        Returns the single PUT's ETag and response date (None for a multipart upload, whose
        response the transfer manager does not hand back).
        """
        if if_none_match and not self.conditional_put:
            return create_then_verify(self, key, lambda: self.put_file(key, path, metadata))
        size = path.stat().st_size
        conditional = if_none_match or if_match is not None
        if conditional and size > SINGLE_PUT_LIMIT:
            raise EndpointError(f"{key}: conditional put above 5 GB is not supported")
        if conditional or size < self._transfer.multipart_threshold:
            extra = {"IfNoneMatch": "*"} if if_none_match else {}
            if if_match is not None:
                extra["IfMatch"] = if_match
            with path.open("rb") as f:
                # bytes, not a file: botocore sends `Expect: 100-continue` (one more round
                # trip) with every file-like body
                body = f.read() if size <= SMALL_BODY else f
                response = self._call(
                    "put",
                    key,
                    self._client.put_object,
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    **extra,
                    **self._extra_put_args(metadata),
                )
            self._add_bytes(uploaded=size)
            return _stamp_of(response)
        self._call(
            "multipart_put",
            key,
            self._client.upload_file,
            Filename=str(path),
            Bucket=self.bucket,
            Key=key,
            ExtraArgs=self._extra_put_args(metadata),
            Config=self._transfer,
        )
        self._add_bytes(uploaded=size)
        return None

    def copy(
        self, src: str, dst: str, metadata: dict[str, str], if_match: str | None = None
    ) -> None:
        """Server-side copy with replaced metadata (also used to change metadata in place);
        with `if_match`, only while the source's ETag is that (else PreconditionFailed)."""
        source = {"Bucket": self.bucket, "Key": src}
        args = self._extra_put_args(metadata)
        if if_match is not None:
            args["CopySourceIfMatch"] = if_match
        self._call(
            "copy",
            dst,
            self._client.copy,
            CopySource=source,
            Bucket=self.bucket,
            Key=dst,
            ExtraArgs={**args, "MetadataDirective": "REPLACE"},
            Config=self._transfer,
        )

    def delete(self, key: str) -> None:
        """Delete one key (deleting a missing key is not an error in S3)."""
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=key)


VERIFY_DELAY = 1.0  # create-then-verify: seconds between our PUT and the re-HEAD


def create_then_verify(
    store: ObjectStore, key: str, do_put: Callable[[], object], delay: float = VERIFY_DELAY
):
    """Create `key` on a server without conditional PUT: HEAD, PUT, wait, re-HEAD.

    PreconditionFailed if the key exists before, or if after our PUT and `delay` seconds the
    key's ETag is not ours (another writer's PUT landed after ours: it won, and the caller
    encodes against theirs, as after a 412). `do_put()` performs the unconditional PUT and
    returns a PutStamp or an ETag (None: multipart, then the ETag is taken from a HEAD at once).
    """
    try:
        store.head(key)
    except NotFound:
        pass
    else:
        raise PreconditionFailed(f"s3://{store.bucket}/{key}: already exists")
    result = do_put()
    ours = result.etag if isinstance(result, PutStamp) else result
    try:
        if ours is None:  # a multipart upload: its ETag is whatever is there now
            ours = store.head(key).etag
        if delay > 0:
            time.sleep(delay)
        theirs = store.head(key).etag
    except NotFound:
        raise PreconditionFailed(f"s3://{store.bucket}/{key}: deleted by another writer") from None
    if theirs != ours:
        log.warning("%s: another writer's PUT replaced ours (no conditional PUT): we lost", key)
        raise PreconditionFailed(f"s3://{store.bucket}/{key}: another writer created it")
    return result
