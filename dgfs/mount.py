"""Running a mount: checks before mounting, pyfuse3 init/main/close, signals, readiness.

`dgfs mount` (without --foreground) starts this module's `run_foreground` in a child process
and returns once the child reports over a pipe that the mount is ready (or why it failed).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyfuse3
import trio

from core import codec
from core.assembly import StoreConfig, open_store
from core.cache import CacheSettings
from core.cache.procdir import make_private_dir
from core.config import DeltaSettings, S3Settings
from core.deltastore import DeltaStore
from core.errors import DgError
from core.objectstore import ObjectStore
from core.proc import pid_alive
from dgfs import sdnotify
from dgfs.fs import DgfsOperations
from dgfs.options import FsOptions
from dgfs.staging import StagingArea

log = logging.getLogger("dgfs.mount")

ROOT_STATE_DIR = Path("/run/dgfs")
DAEMON_NAMES = ("dgfs.cli", "dgfs", "mount.dgfs")  # how a serving process was started


class MountError(Exception):
    """A mount cannot start (one-line message for the user)."""


@dataclass
class MountConfig:
    """Everything a mount needs, gathered by the CLI."""

    bucket: str
    mountpoint: Path
    s3: S3Settings
    delta: DeltaSettings
    cache: CacheSettings
    fs: FsOptions
    allow_other: bool = False
    nonempty: bool = False
    fuse_options: list[str] = field(default_factory=list)
    metrics_addr: tuple[str, int] | None = None  # (host, port) of the Prometheus endpoint

    def store(self) -> StoreConfig:
        """What core needs to serve the bucket (core/assembly.py)."""
        return StoreConfig(self.bucket, self.s3, self.delta, self.cache)


def runtime_dir() -> Path:
    """Where running mounts leave their state files (pid, status) for `dgfs umount`.

    $XDG_RUNTIME_DIR/dgfs-mounts, else /run/dgfs for root, else /tmp/dgfs-<uid>; a verified
    private directory (ours, 0700, not a symlink), or MountError.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        path = Path(xdg) / "dgfs-mounts"
    elif os.geteuid() == 0:
        path = ROOT_STATE_DIR
    else:
        path = Path(f"/tmp/dgfs-{os.geteuid()}")
    _private_dir(path)
    return path


def _private_dir(path: Path) -> None:
    """make_private_dir, failing with a one-line MountError."""
    try:
        make_private_dir(path)
    except OSError as exc:
        raise MountError(str(exc)) from None


def state_file(mountpoint: Path) -> Path:
    return runtime_dir() / (str(mountpoint.resolve()).strip("/").replace("/", "_") + ".json")


def preflight(cfg: MountConfig) -> bool:
    """Fail fast, with one line, on everything we can check before mounting.

    Returns whether conditional creates can rely on the server (see _conditional_put)."""
    runtime_dir()
    for directory in {cfg.fs.cache_base, cfg.cache.cache_dir} - {None}:
        _private_dir(directory)
    mp = cfg.mountpoint
    if not mp.exists():
        raise MountError(f"mount point {mp} does not exist")
    if not mp.is_dir():
        raise MountError(f"mount point {mp} is not a directory")
    if os.path.ismount(mp) and any(
        line.split()[1] == str(mp.resolve())
        for line in Path("/proc/mounts").read_text().splitlines()
    ):
        raise MountError(f"{mp} is already a mount point")
    if not cfg.nonempty and any(mp.iterdir()):
        raise MountError(f"mount point {mp} is not empty (use -o nonempty to mount over it)")
    if not os.path.exists("/dev/fuse"):
        raise MountError(
            "/dev/fuse is missing (load the fuse module or run with --device /dev/fuse)"
        )
    if shutil.which("fusermount3") is None:
        raise MountError("fusermount3 not found (apt-get install fuse3)")
    try:
        codec.xdelta3_path()
    except DgError as exc:
        raise MountError(str(exc)) from None
    try:
        # fail fast: a dead endpoint must not cost the full retry budget of normal requests
        probe = replace(cfg.s3, max_attempts=2, connect_timeout=min(cfg.s3.connect_timeout, 3.0))
        probe_store = ObjectStore(cfg.bucket, probe)
        probe_store.check_bucket()
    except DgError as exc:
        raise MountError(str(exc)) from None
    return cfg.fs.read_only or _conditional_put(cfg, probe_store)


def _conditional_put(cfg: MountConfig, store: ObjectStore) -> bool:
    """Whether the server honours `If-None-Match: *` (core/capabilities.py, cached per
    endpoint). Without it reference creation falls back to create-then-verify (one warning),
    and the `adaptive` policy, whose stream links rely on it, is refused."""
    from core import capabilities

    try:
        mode = capabilities.conditional_put_mode()
    except ValueError as exc:
        raise MountError(str(exc)) from None
    if mode != "auto":
        ok, why = mode == "on", "DG_CONDITIONAL_PUT=" + mode
    else:
        try:
            caps = capabilities.cached_probe(store, cfg.cache.cache_dir)
            ok, why = caps.has("conditional_put"), caps.details.get("conditional_put", "")
        except DgError as exc:
            ok, why = False, f"capability probe failed: {exc}"
    if ok:
        return True
    if cfg.delta.reference_policy == "adaptive":
        raise MountError(
            "reference policy 'adaptive' needs conditional PUT (If-None-Match: *), which this "
            f"endpoint does not honour ({why}); use deltaglider or adaptive-compatible"
        )
    log.warning(
        "endpoint without conditional PUT (%s): references are created with create-then-verify",
        why,
    )
    return False


def fuse_options(cfg: MountConfig) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts |= {f"fsname=dgfs:{cfg.bucket}", "subtype=dgfs"}
    opts |= {"suid" if cfg.fs.suid else "nosuid", "dev" if cfg.fs.dev else "nodev"}
    if cfg.allow_other:
        opts.add("allow_other")
    if cfg.fs.read_only:
        opts.add("ro")
    opts |= set(cfg.fuse_options)
    return opts


def run_foreground(cfg: MountConfig, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted or signalled; returns the exit status."""
    try:
        cond = preflight(cfg)
    except MountError as exc:
        _report_ready(ready_fd, f"error: {exc}")
        raise
    try:
        exporter = _start_metrics(cfg)
    except MountError as exc:
        _report_ready(ready_fd, f"error: {exc}")
        raise
    staging = StagingArea(cfg.fs.cache_base, cfg.bucket, cfg.s3.endpoint_url or "aws")
    failed: list[str] | None = None  # None: serving ended abnormally; staged data is kept
    try:
        work = staging.path / "work"
        with open_store(cfg.store(), work, check_bucket=False, conditional_put=cond) as store:
            failed = _mount_and_serve(cfg, store, staging, ready_fd, exporter)
    finally:
        staging.close(keep=failed != [])
        if exporter is not None:
            exporter.close()
    if failed:
        log.error(
            "unmounted with %d upload(s) not done: %s (staged data kept in %s)",
            len(failed),
            ", ".join(failed),
            staging.path,
        )
        return 1
    log.info("unmounted cleanly")
    return 0


def _start_metrics(cfg: MountConfig):
    """The Prometheus endpoint (dgfs/metrics.py) when asked for, bound before mounting."""
    if cfg.metrics_addr is None:
        return None
    from dgfs import metrics

    try:
        metrics.check_available()
        return metrics.Exporter(*cfg.metrics_addr)
    except (ValueError, OSError) as exc:
        raise MountError(str(exc) if isinstance(exc, ValueError) else exc.strerror) from None


def _mount_and_serve(
    cfg: MountConfig,
    store: DeltaStore,
    staging: StagingArea,
    ready_fd: int | None,
    exporter=None,
) -> list[str]:
    """Mount `store` and serve until unmounted; returns the uploads that did not succeed."""
    ops = DgfsOperations(store, store.cache, cfg.fs, staging)
    if exporter is not None:
        src = exporter.sources
        src.bucket, src.prefix, src.mountpoint = cfg.bucket, cfg.fs.prefix, str(cfg.mountpoint)
        src.store, src.cache, src.writeback = store, store.cache, ops.writeback
    status_path = state_file(cfg.mountpoint)  # before mounting: resolve() would stat the mount
    try:
        pyfuse3.init(ops, str(cfg.mountpoint), fuse_options(cfg))
    except RuntimeError as exc:
        _report_ready(ready_fd, f"error: cannot mount {cfg.mountpoint}: {exc}")
        raise MountError(f"cannot mount {cfg.mountpoint}: {exc}") from None
    _write_state(status_path, {"pid": os.getpid(), "bucket": cfg.bucket, "state": "mounted"})
    failed: list[str] = []
    where = f"s3://{cfg.bucket}/{cfg.fs.prefix} on {cfg.mountpoint}"
    try:
        failed = trio.run(_serve, ops, ready_fd, where, cfg.mountpoint, exporter)
    finally:
        pyfuse3.close(unmount=True)
        ops.namespace.close()
        _write_state(
            status_path, {"pid": os.getpid(), "state": "stopped", "failed_uploads": failed}
        )
    return failed


async def _serve(
    ops: DgfsOperations, ready_fd: int | None, where: str, mountpoint: Path, exporter=None
) -> list[str]:
    if exporter is not None:
        exporter.sources.trio_token = trio.lowlevel.current_trio_token()
    queue = ops.writeback.queue
    # async write-back: background uploads outlive serving; leaving this block waits for them
    async with trio.open_nursery() as uploads:
        queue.nursery = uploads
        await _serve_requests(ops, ready_fd, where, mountpoint)
        waiting = len(queue.queued) + len(queue.active)
        if waiting:
            log.info("unmounting: waiting for %d background upload(s)", waiting)
        if sdnotify.enabled():
            pending, _ = ops.writeback.pending_keys()
            sdnotify.notify("STOPPING=1", f"STATUS=unmounting: {len(pending)} upload(s) to finish")
    return await ops.writeback.flush_all()


async def _serve_requests(
    ops: DgfsOperations, ready_fd: int | None, where: str, mountpoint: Path
) -> None:
    """Answer FUSE requests (and run the mount's background tasks) until unmounted."""
    async with trio.open_nursery() as nursery:
        ops.namespace.dir_stats.nursery = nursery
        nursery.start_soon(_on_signals)
        nursery.start_soon(_raise_readahead, mountpoint)
        nursery.start_soon(ops.writeback.retry_failed_uploads)
        nursery.start_soon(ops.writeback.apply_pending_attrs)
        nursery.start_soon(
            ops.writeback.recover_staged
        )  # in the background: the mount comes up first
        # boto3's service models and the imports are hundreds of thousands of long-lived
        # objects: left to the cyclic GC, every full collection rescans them (measured: 80 ms
        # in the middle of a cold `ls -l` of 1,000 files). Freeze them out of its view.
        gc.collect()
        gc.freeze()
        _report_ready(ready_fd, "ok")
        if sdnotify.enabled():
            sdnotify.notify("READY=1", f"MAINPID={os.getpid()}", _status_text(ops, where))
            nursery.start_soon(_notify_status, ops, where)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


NOTIFY_STATUS_SECONDS = 5.0


def _status_text(ops: DgfsOperations, where: str) -> str:
    """systemd's STATUS= line (`systemctl status` shows it)."""
    uploads, _ = ops.writeback.pending_keys()
    failed = len(ops.writeback.failed_uploads)
    return f"STATUS=serving {where}: {len(uploads)} upload(s) pending, {failed} failed"


async def _notify_status(ops: DgfsOperations, where: str) -> None:
    """STATUS= every few seconds while serving (with WATCHDOG=1 when the unit wants one)."""
    interval = float(os.environ.get("DG_NOTIFY_INTERVAL") or NOTIFY_STATUS_SECONDS)
    watchdog = sdnotify.watchdog_interval()
    if watchdog is not None:
        interval = min(interval, watchdog)
    while True:
        await trio.sleep(interval)
        fields = ["WATCHDOG=1"] if watchdog is not None else []
        sdnotify.notify(*fields, _status_text(ops, where))


READAHEAD_KB = 1024  # the kernel's default for a FUSE mount is 128 KiB


async def _raise_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead `READAHEAD_KB` on this mount (best effort: root only): a
    sequential read then comes as 1 MiB FUSE requests instead of 128 KiB ones, 8× fewer round
    trips through the daemon (docs/benchmarks.md, issue #17). The stat of the mount point
    is served by this daemon, hence from a worker thread once serving has begun."""
    try:
        dev = (await trio.to_thread.run_sync(os.stat, mountpoint)).st_dev
        knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        if int(knob.read_text()) < READAHEAD_KB:
            knob.write_text(f"{READAHEAD_KB}\n")
    except (OSError, ValueError) as exc:
        log.debug("readahead of %s left as it is: %s", mountpoint, exc)


async def _on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting after pending uploads", signum)
            pyfuse3.terminate()
            return


def _report_ready(fd: int | None, message: str) -> None:
    """Tell the waiting `dgfs mount` parent its one line ('ok' or 'error: …')."""
    if fd is None:
        return
    try:
        os.write(fd, message.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _write_state(path: Path, state: dict) -> None:
    """Replace the state file atomically: a new temp file (O_EXCL, O_NOFOLLOW), renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_state(path: Path) -> dict:
    """A state file's content; {} when missing, unreadable or a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(fd) as src:
        try:
            state = json.load(src)
        except ValueError:
            return {}
    return state if isinstance(state, dict) else {}


def serves(pid: int, mountpoint: str) -> bool:
    """Whether process `pid` is a dgfs daemon started for `mountpoint` (a real path).

    Checked in /proc: it runs as our uid, and its cmdline has a program or module named like
    dgfs and an argument that is the mount point relative to its cwd. A forged state file
    therefore cannot make `umount` wait on (or act on) any other process.
    """
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    if owner != os.geteuid():
        return False
    words = [os.fsdecode(arg) for arg in args if arg]
    if not any(os.path.basename(word) in DAEMON_NAMES for word in words[:3]):
        return False
    return any(os.path.realpath(os.path.join(cwd, word)) == mountpoint for word in words[1:])


def spawn_daemon(argv: list[str], log_file: Path | None, timeout: float = 60.0) -> None:
    """Run `dgfs mount --foreground …` in the background; return once it is mounted."""
    read_fd, write_fd = os.pipe()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgfs.cli", *argv, "--foreground", "--ready-fd", str(write_fd)],
        pass_fds=[write_fd],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
    )
    os.close(write_fd)
    text = _read_ready(read_fd, timeout)
    if text == "ok":
        return
    if text is None:
        proc.kill()
        raise MountError(f"mount not ready after {timeout:.0f}s")
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        code = "?"
    raise MountError(text.removeprefix("error: ") or f"mount failed (exit {code})")


def _read_ready(read_fd: int, timeout: float) -> str | None:
    """The child's line ('ok' / 'error: …' / '' at EOF); None on timeout."""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as pipe:
        while (remaining := deadline - time.monotonic()) > 0:
            if select.select([pipe], [], [], remaining)[0]:
                return pipe.readline().decode().strip()
    return None


def unmount(mountpoint: Path, lazy: bool = False, timeout: float = 600.0) -> list[str]:
    """Unmount and wait for the daemon to finish its uploads; returns failed upload keys."""
    target = os.path.realpath(mountpoint)
    path = state_file(mountpoint)
    pid = _read_state(path).get("pid")
    args = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        if detail and "busy" in detail[-1].lower():
            raise MountError(f"{mountpoint} is busy (files open); close them or use --lazy")
        raise MountError(detail[-1] if detail else f"fusermount3 exit {proc.returncode}")
    if lazy:  # detached: the daemon finishes (and uploads) once the last open file closes
        return []
    if isinstance(pid, int) and serves(pid, target):
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    elif pid is not None:
        log.warning("state file %s names pid %s, not a dgfs daemon of %s", path, pid, target)
    state = _read_state(path)
    path.unlink(missing_ok=True)
    return list(state.get("failed_uploads", []))
