"""Opt-in Prometheus endpoint of a mount (`--metrics-addr 127.0.0.1:9101`, `-o metrics_addr=`).

An HTTP endpoint rather than a node_exporter textfile: each mount is its own target, a scrape
reads the live counters (no writer loop, no stale file after a crash, and Prometheus' `up`
says when the mount is gone), and it needs no node_exporter on the host.

The figures are the counters dgfs keeps anyway (ObjectStore, DeltaStore, the content cache,
the write-back engine, dgfs/opstats.py), read at scrape time by one collector: nothing on the
I/O path depends on prometheus_client, which is imported only when metrics are asked for
(the optional extra `dgfs[metrics]`).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

log = logging.getLogger("dgfs.metrics")

DEFAULT_HOST = "127.0.0.1"
MISSING = "--metrics-addr needs prometheus_client: pip install 'dgfs[metrics]'"


def parse_addr(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT', ':PORT' or 'PORT' (host 127.0.0.1) → (host, port)."""
    text = str(text).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address {text!r}: expected HOST:PORT (e.g. 127.0.0.1:9101)")
    return host, int(port)


def check_available() -> None:
    """ValueError(one line) when prometheus_client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ValueError(MISSING) from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class Sources:
    """What the collector reads; set once the mount is up (None before)."""

    bucket: str = ""
    prefix: str = ""
    mountpoint: str = ""
    store: object = None  # core.deltastore.DeltaStore
    cache: object = None  # core.cache.ContentCache
    writeback: object = None  # dgfs.writeback.WriteBack
    trio_token: object = None


class Exporter:
    """The HTTP endpoint: bound at construction (so a busy port fails the mount early)."""

    def __init__(self, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        self.sources = Sources()
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(_Collector(self.sources))
        try:
            started = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(exc.errno, f"metrics endpoint {host}:{port}: {exc.strerror}") from None
        self._server = started[0] if isinstance(started, tuple) else None
        self.address = (host, port)
        if not is_loopback(host):
            log.warning("metrics endpoint on %s:%d is reachable from the network", host, port)
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _counter(name, doc, labels=()):
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name, doc, labels=()):
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, labels=list(labels))


class _Collector:
    def __init__(self, sources: Sources) -> None:
        self.src = sources

    def describe(self):
        return []

    def collect(self):
        src = self.src
        info = _gauge("dgfs_mount_info", "The mount this process serves.", ["bucket", "prefix"])
        info.add_metric([src.bucket, src.prefix], 1)
        yield info
        if src.store is not None:
            yield from self._s3(src.store)
        if src.cache is not None:
            yield from self._cache(src.cache)
        if src.writeback is not None:
            yield from self._uploads(src.writeback, src.trio_token)
        yield from self._fuse()

    def _s3(self, store):
        _, outcomes, up, down = store.store.counters()
        requests = _counter(
            "dgfs_s3_requests", "S3 requests by kind and outcome.", ["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(outcomes.items()):
            requests.add_metric([kind, outcome], n)
        yield requests
        uploaded = _counter("dgfs_s3_uploaded_bytes", "Object bytes sent to S3 (PUT bodies).")
        uploaded.add_metric([], up)
        yield uploaded
        downloaded = _counter("dgfs_s3_downloaded_bytes", "Object bytes read from S3 (GETs).")
        downloaded.add_metric([], down)
        yield downloaded
        figures = [
            ("dgfs_delta_attempts", "xdelta3 encodings tried for new files.", store.delta_attempts),
            ("dgfs_delta_stored", "Files stored as deltas.", store.delta_stored),
            (
                "dgfs_delta_skipped",
                "Delta attempts skipped by the backoff (files stored direct).",
                store.backoff.skipped,
            ),
            (
                "dgfs_delta_saved_bytes",
                "Original minus delta size of files stored as deltas (references not deducted).",
                store.delta_saved_bytes,
            ),
        ]
        for name, doc, value in figures:
            metric = _counter(name, doc)
            metric.add_metric([], value)
            yield metric

    def _cache(self, cache):
        stats = cache.stats()
        for name, doc, value in [
            ("dgfs_cache_hits", "Content cache lookups that hit.", stats.hits),
            ("dgfs_cache_misses", "Content cache lookups that missed.", stats.misses),
            ("dgfs_cache_evictions", "Entries evicted from the content cache.", stats.evictions),
            ("dgfs_cache_corruptions", "Cache entries found corrupt.", stats.corruptions),
        ]:
            metric = _counter(name, doc)
            metric.add_metric([], value)
            yield metric
        size = _gauge("dgfs_cache_bytes", "Bytes held by the content cache.", ["tier"])
        size.add_metric(["memory"], stats.memory_bytes)
        size.add_metric(["disk"], stats.disk_bytes)
        yield size
        entries = _gauge("dgfs_cache_entries", "Entries in the content cache.")
        entries.add_metric([], stats.entries)
        yield entries

    def _uploads(self, writeback, token):
        try:
            import trio

            # the inode table belongs to the trio thread: read it there
            uploads, attrs = trio.from_thread.run_sync(writeback.pending_keys, trio_token=token)
        except Exception:  # the loop is not running (starting or stopped)
            return
        for name, doc, value in [
            ("dgfs_uploads_pending", "Files with content not yet uploaded.", len(uploads)),
            ("dgfs_attributes_pending", "Files with attributes not yet saved.", len(attrs)),
            (
                "dgfs_uploads_failed",
                "Files whose last upload failed (retried in the background).",
                len(writeback.failed_uploads),
            ),
        ]:
            metric = _gauge(name, doc)
            metric.add_metric([], value)
            yield metric

    def _fuse(self):
        from prometheus_client.core import HistogramMetricFamily

        from dgfs import opstats

        snap = opstats.snapshot()
        latency = HistogramMetricFamily(
            "dgfs_fuse_operation_seconds", "FUSE operations and latency.", labels=["op"]
        )
        errors = _counter(
            "dgfs_fuse_operation_errors", "FUSE operations answered with an errno.", ["op"]
        )
        for op, s in sorted(snap.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*opstats.BUCKETS, float("inf")), s.buckets, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([op], buckets, s.seconds)
            errors.add_metric([op], s.errors)
        yield latency
        yield errors
