"""`dgfs stats`, `dgfs gc`, `dgfs verify`, `dgfs get` and `dgfs cache info|clear`: no mount."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from core import assembly
from core import stats as corestats
from core import verify as coreverify
from core.cache import CacheConfigError, CacheError, CacheSettings, ContentCache, inventory
from core.config import ConfigError, DeltaSettings, s3_settings_from_env
from core.deltastore import DeltaStore
from core.errors import DgError
from dgfs.logfmt import log_to_stderr

_ENDPOINT = click.option("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL / AWS).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def register(main: click.Group) -> None:
    """Add the maintenance commands to the `dgfs` group."""
    for command in (stats_cmd, gc_cmd, verify_cmd, get_cmd, cache_group):
        main.add_command(command)


# ---------------------------------------------------------------- helpers


def parse_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PATH` (or `BUCKET/PATH`) → (bucket, path without outer slashes)."""
    bucket, _, path = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise click.BadParameter(f"{url!r}: expected s3://BUCKET[/PREFIX]")
    return bucket, path.strip("/")


def s3_url(bucket: str, path: str = "") -> str:
    return f"s3://{bucket}/{path}" if path else f"s3://{bucket}"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn core, config and cache errors into a one-line message and exit status 1."""
    try:
        yield
    except (DgError, ConfigError, CacheError, CacheConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or 'error'}: {exc.strerror or exc}") from None


@contextmanager
def open_store(bucket: str, endpoint_url: str | None) -> Iterator[DeltaStore]:
    """A DeltaStore on an existing bucket (checked first), closed afterwards; core's
    warnings (e.g. ignored metadata fields) go to stderr, escaped."""
    log_to_stderr()
    s3 = s3_settings_from_env(endpoint_url=endpoint_url)
    with assembly.open_store(assembly.StoreConfig(bucket, s3, DeltaSettings())) as store:
        yield store


@contextmanager
def progress(enabled: bool, label: str) -> Iterator[Callable[[int], None] | None]:
    """A counter on stderr, updated in place; None (silent) unless enabled."""
    if not enabled:
        yield None
        return
    shown = False

    def show(n: int) -> None:
        nonlocal shown
        shown = True
        click.echo(f"\r{label} {n}", err=True, nl=False)

    try:
        yield show
    finally:
        if shown:
            click.echo("\r\033[K", err=True, nl=False)


def show_progress(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


def human(n: int) -> str:
    """Bytes in binary units, e.g. '1.5 MiB'."""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            return f"-{text}" if n < 0 else text
        value /= 1024
    raise AssertionError("unreachable")


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


# ---------------------------------------------------------------- stats


@click.command("stats")
@click.argument("url")
@_JSON
@click.option("--detailed", is_flag=True, help="Also show every deltaspace (directory).")
@_ENDPOINT
def stats_cmd(url: str, as_json: bool, detailed: bool, endpoint_url: str | None) -> None:
    """Storage savings of s3://BUCKET[/PREFIX] from object metadata (no downloads).

    Original bytes are what the files hold; stored bytes are what S3 holds (deltas,
    direct files, and each reference.bin that a delta uses). Warns about orphaned
    references (no delta uses them) and deltas whose reference is missing.

    \b
    Examples:
      dgfs stats s3://releases
      dgfs stats s3://releases/app --detailed
      dgfs stats s3://releases --json --endpoint-url http://127.0.0.1:9000
    """
    bucket, prefix = parse_url(url)
    with one_line_errors(), open_store(bucket, endpoint_url) as store:
        with progress(show_progress(as_json), "objects examined:") as tick:
            result = corestats.bucket_stats(store, prefix, progress=tick)
    if as_json:
        click.echo(json.dumps(result.to_json(detailed), indent=2))
    else:
        _print_stats(result, detailed)
    _stats_warnings(result)


def _print_stats(result: corestats.BucketStats, detailed: bool) -> None:
    t = result.total
    click.echo(s3_url(result.bucket, result.prefix))
    click.echo(
        f"  files      {t.file_count} ({t.delta_count} delta, {t.direct_count} direct, "
        f"{t.plain_count} plain)"
    )
    for label, value in (
        ("original", t.original_bytes),
        ("stored", t.stored_bytes),
        ("saved", t.saved_bytes),
    ):
        click.echo(f"  {label:<10} {human(value):>10}  ({value} bytes)")
    click.echo(f"  ratio      {t.ratio:.4f} (stored / original)")
    click.echo(f"  policy     {t.policy} (reference policy of the deltas)")
    if t.transforms:
        archive = ", ".join(f"{k} {n}" for k, n in sorted(t.transforms.items()))
        click.echo(f"  archive    {archive} (archive deltas per transform)")
    if not detailed:
        return
    click.echo("")
    header = (
        "DELTASPACE", "FILES", "DELTA", "DIRECT", "PLAIN", "ORIGINAL", "STORED", "RATIO", "POLICY"
    )  # fmt: skip
    rows = [
        (
            p or "(root)",
            str(s.file_count),
            str(s.delta_count),
            str(s.direct_count),
            str(s.plain_count),
            human(s.original_bytes),
            human(s.stored_bytes),
            f"{s.ratio:.4f}",
            s.policy,
        )
        for p, s in sorted(result.deltaspaces.items())
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        click.echo("  ".join(cells))


def _stats_warnings(result: corestats.BucketStats) -> None:
    orphans = result.orphaned_references
    if orphans:
        warn(
            f"{len(orphans)} orphaned reference(s) that no delta uses "
            f"({human(sum(orphans.values()))} wasted):"
        )
        for key, size in sorted(orphans.items()):
            click.echo(f"  {s3_url(result.bucket, key)} ({size} bytes)", err=True)
        click.echo(f"  fix: dgfs gc {s3_url(result.bucket, result.prefix)} --apply", err=True)
    missing = result.missing_references
    if missing:
        warn(f"{len(missing)} delta(s) whose reference is missing (they cannot be read):")
        for key, ref in sorted(missing.items()):
            click.echo(f"  {s3_url(result.bucket, key)} needs {ref}", err=True)
        click.echo(
            f"  check: dgfs verify {s3_url(result.bucket, result.prefix)}; restore the "
            "reference from a backup or S3 versioning, else delete those deltas",
            err=True,
        )
    plain = result.total.plain_count
    if plain:
        warn(f"{plain} object(s) without deltaglider metadata (plain), counted at stored size")


# ---------------------------------------------------------------- gc


@click.command("gc")
@click.argument("url")
@click.option("--apply", "apply_", is_flag=True, help="Delete (default: only list).")
@_JSON
@_ENDPOINT
def gc_cmd(url: str, apply_: bool, as_json: bool, endpoint_url: str | None) -> None:
    """Find orphaned references under s3://BUCKET[/PREFIX]; delete them with --apply.

    An orphaned reference is a reference.bin that no delta uses any more (deltaglider's
    CLI leaves them behind), or a hidden reference of the adaptive policies that no delta
    uses, directly or through a chain. Each deltaspace is listed again right after its
    references are deleted; one a delta appeared on meanwhile is restored (skipped).

    \b
    Examples:
      dgfs gc s3://releases            # dry run: list what would go
      dgfs gc s3://releases/app --apply
    """
    bucket, prefix = parse_url(url)
    removed: list[str] = []
    skipped: list[str] = []
    with one_line_errors(), open_store(bucket, endpoint_url) as store:
        with progress(show_progress(as_json), "objects examined:") as tick:
            orphans = corestats.bucket_stats(store, prefix, progress=tick).orphaned_references
        if apply_:
            removed = corestats.remove_orphans(store, orphans)
            skipped = sorted(set(orphans) - set(removed))
    if as_json:
        out = {
            "bucket": bucket,
            "prefix": prefix,
            "applied": apply_,
            "orphaned_references": [{"key": k, "size": v} for k, v in sorted(orphans.items())],
            "removed": removed,
            "skipped": skipped,
        }
        click.echo(json.dumps(out, indent=2))
        return
    if not orphans:
        click.echo(f"no orphaned references under {s3_url(bucket, prefix)}")
        return
    for key, size in sorted(orphans.items()):
        if not apply_:
            click.echo(f"would remove {s3_url(bucket, key)} ({size} bytes)")
        elif key in removed:
            click.echo(f"removed {s3_url(bucket, key)} ({size} bytes)")
        else:
            click.echo(f"skipped {s3_url(bucket, key)}: a delta uses it again")
    if not apply_:
        click.echo(f"dry run; to delete: dgfs gc {s3_url(bucket, prefix)} --apply")


# ---------------------------------------------------------------- verify


@click.command("verify")
@click.argument("url")
@_JSON
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=coreverify.DEFAULT_JOBS,
    show_default=True,
    help="Files reconstructed in parallel.",
)
@_ENDPOINT
def verify_cmd(url: str, as_json: bool, jobs: int, endpoint_url: str | None) -> None:
    """Reconstruct every file under s3://BUCKET[/PREFIX] (or one file) and check its SHA-256.

    Exits non-zero if any file fails, naming it. Plain objects (no deltaglider metadata)
    have no recorded SHA-256: they are read but reported as unchecked.

    \b
    Examples:
      dgfs verify s3://releases
      dgfs verify s3://releases/app/app-1.2.zip
      dgfs verify s3://releases --jobs 8 --json
    """
    bucket, path = parse_url(url)
    with one_line_errors(), open_store(bucket, endpoint_url) as store:
        records = coreverify.targets(store, path)
        if not records:
            raise click.ClickException(f"{s3_url(bucket, path)}: no such file or prefix")
        with progress(show_progress(as_json), f"verified (of {len(records)}):") as tick:
            report = coreverify.verify(store, records, jobs, progress=tick)
    if as_json:
        click.echo(json.dumps({"bucket": bucket, "target": path, **report.to_json()}, indent=2))
    else:
        for message in sorted(report.failed.values()):
            click.echo(f"FAILED {message}")
        click.echo(
            f"{report.checked} file(s): {len(report.ok)} ok, {len(report.failed)} failed, "
            f"{len(report.unchecked)} unchecked (plain, no SHA-256)"
        )
    if report.failed:
        keys = sorted(report.failed)
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise click.ClickException(f"verification failed for {len(keys)} file(s): {shown}")


# ---------------------------------------------------------------- get


@click.command("get")
@click.argument("url")
@click.argument("dest", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.option(
    "--decompressed",
    is_flag=True,
    help="For a delta of externally decompressed content (see `dgfs verify`): write its "
    "decompressed content, which is all that can be recovered (not checked: the recorded "
    "SHA-256 is of the compressed file).",
)
@_ENDPOINT
def get_cmd(url: str, dest: Path, decompressed: bool, endpoint_url: str | None) -> None:
    """Download one file s3://BUCKET/KEY to DEST, reconstructed and SHA-256 checked.

    \b
    Examples:
      dgfs get s3://releases/app/app-1.2.zip app-1.2.zip
      dgfs get --decompressed s3://releases/src/app-1.2.tar.gz app-1.2.tar
    """
    bucket, path = parse_url(url)
    if not path:
        raise click.BadParameter(f"{url!r}: expected s3://BUCKET/KEY")
    partial = dest.with_name(f".{dest.name}.dgfs-partial")
    with one_line_errors(), open_store(bucket, endpoint_url) as store:
        try:
            if decompressed:
                record = store.get_decompressed(path, partial)
            else:
                record = store.get(path, partial)
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
    what = "decompressed content (unverified)" if decompressed else "sha256 ok"
    click.echo(f"{s3_url(bucket, record.logical_key)} -> {dest} ({what})", err=True)


# ---------------------------------------------------------------- cache


def _cache_settings(cache_dir: Path | None) -> CacheSettings:
    with one_line_errors():
        return CacheSettings.from_env(cache_dir=cache_dir)


_CACHE_DIR = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Cache directory (default: DG_CACHE_DIR or ~/.cache/dgfs).",
)


@click.group("cache")
def cache_group() -> None:
    """The encrypted local read cache."""


@cache_group.command("info")
@_CACHE_DIR
@_JSON
def cache_info(cache_dir: Path | None, as_json: bool) -> None:
    """Entries and bytes of the cache on disk.

    With DG_CACHE_ENCRYPTION_KEY (or DG_CACHE_KEY_FILE) set, the shared cache is opened
    with that key. Without it, the files on disk are only counted: entries written under
    another key, and the ephemeral caches of running processes, cannot be read from here.
    Hit/miss counters live in each running dgfs process and are not shown.

    \b
    Examples:
      dgfs cache info
      dgfs cache info --cache-dir /var/cache/dgfs --json
    """
    settings = _cache_settings(cache_dir)
    base = settings.cache_dir
    info: dict = {
        "cache_dir": str(base),
        "backend": settings.backend,
        "encryption_key": "ephemeral" if settings.ephemeral else "configured",
        "exists": base.is_dir(),
        "shared": {"entries": 0, "bytes": 0},
        "process_caches": [],
        "notes": [],
    }
    if info["exists"]:
        if settings.ephemeral:
            count, size = inventory.count_entries(inventory.shared_objects(base))
            info["notes"].append(
                "no DG_CACHE_ENCRYPTION_KEY set: files on disk were counted, not opened"
            )
        else:
            with one_line_errors(), ContentCache(settings) as cache:
                current = cache.stats()
            count, size = current.entries, current.disk_bytes
        info["shared"] = {"entries": count, "bytes": size}
        info["process_caches"] = inventory.process_caches(base)
        if info["process_caches"]:
            info["notes"].append(
                "process caches use a per-process key and vanish when that process exits"
            )
    info["notes"].append("hit/miss counters are kept by each running dgfs process")
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    shared = info["shared"]
    click.echo(f"cache directory  {base}{'' if info['exists'] else ' (does not exist)'}")
    click.echo(f"encryption key   {info['encryption_key']}")
    click.echo(
        f"shared entries   {shared['entries']} ({human(shared['bytes'])}, {shared['bytes']} bytes)"
    )
    for proc in info["process_caches"]:
        click.echo(f"process {proc['pid']:<8} {proc['entries']} entries ({human(proc['bytes'])})")
    for note in info["notes"]:
        click.echo(f"note: {note}")


@cache_group.command("clear")
@_CACHE_DIR
def cache_clear(cache_dir: Path | None) -> None:
    """Delete the shared cache's entries (entries open right now are kept).

    Without DG_CACHE_ENCRYPTION_KEY the entry files are deleted directly. The ephemeral
    caches of running dgfs processes are left to them; those of dead processes are removed.

    \b
    Example:
      dgfs cache clear --cache-dir /var/cache/dgfs
    """
    settings = _cache_settings(cache_dir)
    base = settings.cache_dir
    if not base.is_dir():
        click.echo(f"nothing to clear: {base} does not exist")
        return
    objects = inventory.shared_objects(base)
    before, size = inventory.count_entries(objects)
    if settings.ephemeral:
        inventory.remove_unkeyed(base)
    else:
        with one_line_errors(), ContentCache(settings) as cache:
            cache.clear()
    after, _ = inventory.count_entries(objects)
    click.echo(f"removed {before - after} of {before} entries ({human(size)}) from {base}")
    running = inventory.process_caches(base)
    if running:
        pids = ", ".join(str(p["pid"]) for p in running)
        click.echo(f"left the ephemeral caches of running process(es) {pids}")
