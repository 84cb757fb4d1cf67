"""Seeded random-operation model test: the same operations on the mount and on a local dir.

Every op must have the same outcome on both sides (same return value, or OSError with the same
errno); every CHECK_EVERY ops, after every remount and at the end the whole trees are compared
(paths, types, contents, sizes, permission bits, uid/gid, symlink targets, mtimes: exact to
the nanosecond when set with utime, since dgfs stores ns; within MTIME_TOLERANCE_NS when they
are "now" of a change, which differs between the two sides by the op's duration).

    DG_MODEL_SEED=1234 DG_MODEL_OPS=20000 .venv/bin/python -m pytest tests/test_model.py -s

The seed is in the test id (so in pytest's summary line), printed at the start and in every
failure message, with the last ops. CI (CI set) runs a fixed seed and a fresh random one.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.model_ops import Generator, Op, apply_op, compare_trees, snapshot

pytestmark = pytest.mark.fuse

CHECK_EVERY = 50
LOG_TAIL = 30


CI_SEED = 20261129  # CI runs this fixed seed and a fresh one; local runs a fresh one


def _seeds() -> list[int]:
    """DG_MODEL_SEED if set; else a fresh random seed, preceded in CI by the fixed CI_SEED."""
    env = os.environ.get("DG_MODEL_SEED")
    if env:
        return [int(env)]
    fresh = random.SystemRandom().randrange(2**32)
    return [CI_SEED, fresh] if os.environ.get("CI") else [fresh]


def _n_ops() -> int:
    return int(os.environ.get("DG_MODEL_OPS", "400"))


def excluded(op: Op, model: Path) -> bool:
    """Op patterns with a known, not yet fixed dgfs bug (each with an xfail reproduction below).

    None at the moment. Fixed bugs the test found have plain regression tests below (readdir
    dir attributes, other clients' chmod/utime, pending attributes across a dir rename, setgid
    dirs, rename of a file with unsaved writes).
    """
    return False


class Failure(AssertionError):
    pass


@pytest.mark.parametrize("seed", _seeds(), ids=lambda seed: f"DG_MODEL_SEED={seed}")
def test_random_ops_match_model(mounter, bucket, tmp_path, seed):
    n_ops = _n_ops()
    print(f"\nDG_MODEL_SEED={seed} DG_MODEL_OPS={n_ops}")
    model = tmp_path / "model"
    model.mkdir()
    mnt = mounter(bucket)
    gen = Generator(random.Random(seed), model, exclude=excluded)
    log: list[str] = []
    counts: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    stored: dict[str, int] = {}  # storage kinds of the files met at tree checks
    started = time.monotonic()

    def fail(what: str) -> None:
        tail = "\n".join(log[-LOG_TAIL:])
        noise = ("DEBUG pyfuse3", "DEBUG botocore", "DEBUG urllib3", "DEBUG s3transfer")
        lines = [ln for ln in mnt.log_text().splitlines() if not any(n in ln for n in noise)]
        mount_log = "\n".join(lines[-25:])
        raise Failure(
            f"{what}\nDG_MODEL_SEED={seed} DG_MODEL_OPS={n_ops}\n"
            f"last ops:\n{tail}\n--- mount log ({mnt.log}), last lines ---\n{mount_log}"
        )

    def check_trees(when: str) -> None:
        mounted = snapshot(mnt.path)
        diffs = compare_trees(snapshot(model), mounted)
        if diffs:
            fail(f"trees differ {when}:\n  " + "\n  ".join(diffs[:40]))
        for path, entry in mounted.items():
            if entry.kind == "file":
                kind = os.getxattr(mnt.path / path, "user.dg.kind").decode()
                stored[kind] = stored.get(kind, 0) + 1

    for i in range(n_ops):
        op = gen.next()
        counts[op.kind] = counts.get(op.kind, 0) + 1
        if op.kind == "remount":
            log.append(f"#{i} remount")
            done = mnt.umount()
            if done.returncode != 0:
                fail(f"#{i} umount failed: {done.stdout} {done.stderr}")
            mnt = mounter(bucket)
            check_trees(f"after remount at op #{i}")
            continue
        want = apply_op(op, model)
        got = apply_op(op, mnt.path)
        outcomes[want.status] = outcomes.get(want.status, 0) + 1
        log.append(f"#{i} {op} -> model {want}" + ("" if got == want else f" mount {got}"))
        if got != want:
            fail(f"op #{i} {op}: model {want} but mount {got}\nrepro: {op.repro()}")
        if (i + 1) % CHECK_EVERY == 0:
            check_trees(f"after op #{i}")
    check_trees("at the end")
    print(
        f"seed {seed}: {n_ops} ops in {time.monotonic() - started:.1f}s; ops {counts}; "
        f"outcomes {outcomes}; "
        f"files by storage kind at checks {stored}"
    )


# ------------------------------------------------ reproductions of mismatches the model test found


def _remount(mounter, bucket, mnt):
    assert mnt.umount().returncode == 0
    return mounter(bucket)


def test_dir_mode_after_remount_and_listdir(mounter, bucket):
    mnt = mounter(bucket)
    os.mkdir(mnt.path / "d", 0o700)
    assert os.lstat(mnt.path / "d").st_mode & 0o7777 == 0o700
    mnt = _remount(mounter, bucket, mnt)
    os.listdir(mnt.path)
    assert oct(os.lstat(mnt.path / "d").st_mode & 0o7777) == oct(0o700)


def test_other_clients_chmod_and_utime_become_visible(mounter, bucket, tmp_path):
    a = mounter(bucket, "a")
    b = mounter(bucket, "b", "--cache-dir", str(tmp_path / "cache-b"))
    (a.path / "f").write_bytes(b"hello")
    os.chmod(a.path / "f", 0o644)
    time.sleep(2.5)  # > --metadata-ttl 1 and the 1 s attribute coalescing
    assert os.stat(b.path / "f").st_mode & 0o777 == 0o644
    os.chmod(a.path / "f", 0o600)
    os.utime(a.path / "f", ns=(10**18, 10**18 + 7))
    time.sleep(2.5)
    st = os.stat(a.path / "f")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o600, 10**18 + 7)
    st = os.stat(b.path / "f")
    assert (oct(st.st_mode & 0o777), st.st_mtime_ns) == (oct(0o600), 10**18 + 7)


def test_pending_chmod_survives_dir_rename(mounter, bucket):
    mnt = mounter(bucket)
    os.mkdir(mnt.path / "d")
    (mnt.path / "d" / "f").write_bytes(b"x")
    os.chmod(mnt.path / "d" / "f", 0o600)
    os.utime(mnt.path / "d" / "f", ns=(10**18, 10**18 + 7))
    os.rename(mnt.path / "d", mnt.path / "e")
    done = mnt.umount()
    mnt = mounter(bucket)
    st = os.stat(mnt.path / "e" / "f")
    assert (oct(st.st_mode & 0o7777), st.st_mtime_ns) == (oct(0o600), 10**18 + 7)
    assert done.returncode == 0 and "Traceback" not in mnt.log_text(), done.stderr


def test_mkdir_in_setgid_dir_inherits_setgid(mounter, bucket, tmp_path):
    mnt = mounter(bucket)
    modes = []
    for root in (tmp_path / "local", mnt.path):
        root.mkdir(exist_ok=True)
        os.mkdir(root / "d", 0o755)
        os.chmod(root / "d", 0o2755)
        os.mkdir(root / "d" / "e", 0o755)
        modes.append(oct(os.stat(root / "d" / "e").st_mode & 0o7777))
    assert modes[0] == oct(0o2755)  # what Linux does on a local disk
    assert modes[1] == modes[0]


def _create(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, data)
    os.close(fd)


@pytest.mark.parametrize("target", ["existing", "new"])
def test_rename_of_file_with_unsaved_writes_keeps_its_mode(mounter, bucket, tmp_path, target):
    mnt = mounter(bucket)
    modes = []
    for root in (tmp_path / "local", mnt.path):
        root.mkdir(exist_ok=True)
        _create(root / "f", b"f" * 100, 0o640)
        _create(root / "existing", b"g" * 100, 0o600)
        fd = os.open(root / "f", os.O_RDWR)
        os.pwrite(fd, b"x", 0)
        os.rename(root / "f", root / target)
        os.close(fd)
        modes.append(oct(os.stat(root / target).st_mode & 0o7777))
    assert modes[0] == oct(0o640)  # what a local disk does
    assert modes[1] == modes[0]
