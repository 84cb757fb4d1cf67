"""Random filesystem operations for the model test (tests/test_model.py).

An `Op` is generated from the state of the *model* directory (a plain local directory) with a
seeded RNG, then applied with `apply_op` to the model and to the mount; the two outcomes must
be equal. `snapshot` + `compare_trees` check whole trees.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path

# A small namespace so that operations collide often. No name ends in `.delta` and none is
# `reference.bin`: dgfs refuses those with EINVAL by design (docs/SEMANTICS.md).
FILE_NAMES = ["a", "b", "c", "d", "e", "f"]
DIR_NAMES = ["d0", "d1", "d2"]
ALL_NAMES = FILE_NAMES + DIR_NAMES
MAX_DEPTH = 4  # path segments; dir renames that would go deeper are not generated

# Explicit mtimes (utime) are in [2001, 2019]: a model mtime in that range was set explicitly
# and must match to the nanosecond; later ones are "now" at the time of some change and may
# differ between the two sides by how long the operation took on each.
EXPLICIT_MTIME_MIN = 978_307_200 * 10**9
EXPLICIT_MTIME_MAX = 1_546_300_800 * 10**9
MTIME_TOLERANCE_NS = 10 * 10**9

FILE_MODES = [0o644, 0o600, 0o755, 0o640, 0o444, 0o700, 0o666, 0o4755, 0o2750]
DIR_MODES = [0o755, 0o700, 0o775, 0o1777, 0o2755, 0o750]


@dataclass
class Op:
    kind: str
    path: str = ""
    args: dict = field(default_factory=dict)

    def __str__(self) -> str:
        shown = {}
        for k, v in self.args.items():
            if isinstance(v, bytes):
                shown[k] = f"<{len(v)} bytes sha={hashlib.sha256(v).hexdigest()[:8]}>"
            elif k == "mode":
                shown[k] = oct(v)
            else:
                shown[k] = v
        extra = " ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{self.kind} {self.path!r} {extra}".rstrip()

    def repro(self) -> str:
        """A Python line reproducing the op against a root `r` (for copying into a test)."""
        return f"apply_op(Op({self.kind!r}, {self.path!r}, {self.args!r}), r)"


@dataclass(frozen=True)
class Outcome:
    """What an op returned: ('ok', value) or ('err', errno name)."""

    status: str
    value: object = None

    def __str__(self) -> str:
        return f"{self.status}({_short(self.value)})"


def _short(value) -> str:
    """repr with byte strings shown as <length, hash>."""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes sha={_h(value)}>"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    total = 0
    while total < len(data):
        total += os.write(fd, view[total:])
    return total


# ------------------------------------------------------------------ applying


def _do(op: Op, root: Path):
    p = root / op.path if op.path else root
    a = op.args
    k = op.kind
    if k == "create":
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if a.get("excl") else os.O_TRUNC)
        fd = os.open(p, flags, a["mode"])
        try:
            n = _write_all(fd, a["data"])
        finally:
            os.close(fd)
        return n
    if k == "write":
        rdwr = a.get("rdwr", False)
        fd = os.open(p, os.O_RDWR if rdwr else os.O_WRONLY)
        try:
            n = os.pwrite(fd, a["data"], a["offset"])
            if a.get("fsync"):
                os.fsync(fd)
            if not rdwr:
                return n
            back = os.pread(fd, len(a["data"]) + 16, a["offset"])
            return n, back, os.fstat(fd).st_size
        finally:
            os.close(fd)
    if k == "write2":  # two descriptors on one file: a write on one is read through the other
        fd1 = os.open(p, os.O_WRONLY)
        try:
            fd2 = os.open(p, os.O_RDONLY)
            try:
                n = os.pwrite(fd1, a["data"], a["offset"])
                back = os.pread(fd2, len(a["data"]), a["offset"])
            finally:
                os.close(fd2)
        finally:
            os.close(fd1)
        return n, back
    if k == "held":  # a descriptor kept open across a rename or unlink of its path
        fd = os.open(p, os.O_RDWR)
        try:
            first = os.pwrite(fd, a["data"], a["offset"])
            if a["dst"] is None:
                os.unlink(p)
            else:
                os.rename(p, root / a["dst"])
            second = os.pwrite(fd, a["data2"], a["offset2"])
            if a.get("fsync"):
                os.fsync(fd)
            size = os.fstat(fd).st_size
            back = os.pread(fd, size + 10, 0)
        finally:
            os.close(fd)
        return first, second, size, back
    if k == "append":
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            n = _write_all(fd, a["data"])
        finally:
            os.close(fd)
        return n
    if k == "truncate":
        if a.get("via_fd"):
            fd = os.open(p, os.O_WRONLY)
            try:
                os.ftruncate(fd, a["size"])
            finally:
                os.close(fd)
        else:
            os.truncate(p, a["size"])
        return None
    if k == "otrunc":  # open(O_TRUNC) and close without writing
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        return None
    if k == "rename":
        os.rename(p, root / a["dst"])
        return None
    if k == "unlink":
        os.unlink(p)
        return None
    if k == "mkdir":
        os.mkdir(p, a["mode"])
        return None
    if k == "rmdir":
        os.rmdir(p)
        return None
    if k == "chmod":
        os.chmod(p, a["mode"])
        return None
    if k == "utime":
        ns = a.get("ns")
        follow = a.get("follow", True)
        if ns is None:
            os.utime(p, follow_symlinks=follow)
        else:
            os.utime(p, ns=tuple(ns), follow_symlinks=follow)
        return None
    if k == "symlink":
        os.symlink(a["target"], p)
        return None
    if k == "read":
        fd = os.open(p, os.O_RDONLY)
        try:
            if "offset" in a:
                return os.pread(fd, a["size"], a["offset"])
            return _read_all(fd)
        finally:
            os.close(fd)
    if k == "readlink":
        return os.readlink(p)
    if k == "listdir":
        return sorted(os.listdir(p))
    if k == "stat":
        st = os.stat(p)  # follows symlinks; the type and size are compared
        return stat.S_IFMT(st.st_mode), (st.st_size if stat.S_ISREG(st.st_mode) else None)
    raise ValueError(f"unknown op {k}")


def apply_op(op: Op, root: Path) -> Outcome:
    try:
        return Outcome("ok", _do(op, root))
    except OSError as exc:
        return Outcome("err", errno.errorcode.get(exc.errno, str(exc.errno)))


# ------------------------------------------------------------------ trees


@dataclass(frozen=True)
class Entry:
    kind: str  # 'file', 'dir', 'link'
    mode: int  # stat.S_IMODE
    size: int | None = None
    sha: str | None = None
    target: str | None = None
    mtime_ns: int | None = None
    uid: int | None = None
    gid: int | None = None


def snapshot(root: Path) -> dict[str, Entry]:
    """Every path below `root` (not following symlinks) with what is compared of it."""
    out: dict[str, Entry] = {}

    def walk(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            p = d / name
            r = f"{rel}/{name}" if rel else name
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[r] = Entry("dir", mode, uid=st.st_uid, gid=st.st_gid)
                walk(p, r)
            elif stat.S_ISLNK(st.st_mode):
                out[r] = Entry(
                    "link", mode, target=os.readlink(p), mtime_ns=st.st_mtime_ns, uid=st.st_uid
                )
            elif stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
                out[r] = Entry(
                    "file",
                    mode,
                    size=st.st_size,
                    sha=_h(data) + f"/{len(data)}",
                    mtime_ns=st.st_mtime_ns,
                    uid=st.st_uid,
                    gid=st.st_gid,
                )
            else:
                out[r] = Entry(f"other:{stat.S_IFMT(st.st_mode):o}", mode)

    walk(root, "")
    return out


def mtime_matches(model_ns: int, mount_ns: int) -> bool:
    if EXPLICIT_MTIME_MIN <= model_ns <= EXPLICIT_MTIME_MAX:
        return model_ns == mount_ns
    return abs(model_ns - mount_ns) <= MTIME_TOLERANCE_NS


def compare_trees(model: dict[str, Entry], mounted: dict[str, Entry]) -> list[str]:
    """Differences, one line each (empty when the trees agree)."""
    diffs = []
    for path in sorted(set(model) - set(mounted)):
        diffs.append(f"{path}: only in model ({model[path]})")
    for path in sorted(set(mounted) - set(model)):
        diffs.append(f"{path}: only in mount ({mounted[path]})")
    for path in sorted(set(model) & set(mounted)):
        m, f = model[path], mounted[path]
        for name in ("kind", "mode", "size", "sha", "target", "uid", "gid"):
            mv, fv = getattr(m, name), getattr(f, name)
            if mv != fv:
                if name == "mode":
                    mv, fv = oct(mv), oct(fv)
                diffs.append(f"{path}: {name} model={mv} mount={fv}")
        timed = m.kind == f.kind and m.mtime_ns is not None and f.mtime_ns is not None
        if timed and not mtime_matches(m.mtime_ns, f.mtime_ns):
            diffs.append(f"{path}: mtime_ns model={m.mtime_ns} mount={f.mtime_ns}")
    return diffs


# ------------------------------------------------------------------ generating


def _depth(path: str) -> int:
    return path.count("/") + 1 if path else 0


class Generator:
    """Random ops drawn from the current state of the model directory."""

    WEIGHTS = {
        "create": 14,
        "write": 9,
        "write2": 2,
        "held": 3,
        "append": 6,
        "truncate": 6,
        "otrunc": 1,
        "rename": 10,
        "unlink": 6,
        "mkdir": 7,
        "rmdir": 4,
        "chmod": 5,
        "utime": 5,
        "symlink": 4,
        "read": 10,
        "readlink": 1,
        "listdir": 2,
        "stat": 2,
        "remount": 1,
    }

    def __init__(self, rng: random.Random, model: Path, exclude=None) -> None:
        self.rng = rng
        self.model = model
        # exclude(op, model_root) -> True: an op pattern with a known dgfs bug (see xfails)
        self.exclude = exclude
        kinds = list(self.WEIGHTS)
        self._kinds = kinds
        self._weights = [self.WEIGHTS[k] for k in kinds]

    # state of the model ------------------------------------------------
    def _scan(self) -> None:
        self.files, self.dirs, self.links = [], [""], []
        for dirpath, dirnames, filenames in os.walk(self.model):
            rel = os.path.relpath(dirpath, self.model)
            rel = "" if rel == "." else rel
            for name in sorted(dirnames + filenames):
                r = f"{rel}/{name}" if rel else name
                st = os.lstat(self.model / r)
                if stat.S_ISLNK(st.st_mode):
                    self.links.append(r)
                elif stat.S_ISDIR(st.st_mode):
                    self.dirs.append(r)
                else:
                    self.files.append(r)
            dirnames.sort()
        self.entries = self.files + self.dirs[1:] + self.links

    def _pick(self, seq: list[str], default: str | None = None) -> str | None:
        return self.rng.choice(seq) if seq else default

    def _new_path(self, names: list[str] = ALL_NAMES, max_parent_depth: int = 2) -> str:
        """A path in an existing directory (mostly), maybe existing, maybe not."""
        r = self.rng.random()
        if r < 0.88:
            parents = [d for d in self.dirs if _depth(d) <= max_parent_depth] or [""]
            parent = self.rng.choice(parents)
        elif r < 0.95 and self.entries:
            parent = self.rng.choice(self.entries)  # a file or symlink parent: ENOTDIR/follow
        else:
            parent = self.rng.choice(DIR_NAMES)  # maybe missing: ENOENT
        name = self.rng.choice(names)
        return f"{parent}/{name}" if parent else name

    def _file_path(self) -> str:
        """Mostly an existing file, sometimes a symlink, a dir or a new path."""
        r = self.rng.random()
        if r < 0.75 and self.files:
            return self.rng.choice(self.files)
        if r < 0.83 and self.links:
            return self.rng.choice(self.links)
        if r < 0.88 and len(self.dirs) > 1:
            return self.rng.choice(self.dirs[1:])
        return self._new_path(FILE_NAMES)

    def _any_path(self) -> str:
        if self.entries and self.rng.random() < 0.8:
            return self.rng.choice(self.entries)
        return self._new_path()

    def _content(self) -> bytes:
        r = self.rng.random()
        sized = [f for f in self.files if (self.model / f).stat().st_size >= 1024]
        if r < 0.3 and sized:
            return self._derived((self.model / self.rng.choice(sized)).read_bytes())
        if r < 0.4:
            return self._text(self.rng.randint(60_000, 140_000))
        if r < 0.5:
            return self.rng.randbytes(self.rng.randint(1024, 8000))
        return self._text(self.rng.choice([0, 1, 5, 100, 1000, 3000]) + self.rng.randint(0, 50))

    def _text(self, size: int) -> bytes:
        words = [b"alpha", b"beta", b"gamma", b"delta", b"zeta", b"\n", b"0123", b"xyz"]
        out = bytearray()
        while len(out) < size:
            out += self.rng.choice(words) + b" "
        return bytes(out[:size])

    def _derived(self, base: bytes) -> bytes:
        """A few small edits of existing content: files in one directory delta each other."""
        data = bytearray(base)
        for _ in range(self.rng.randint(1, 5)):
            at = self.rng.randrange(0, len(data) + 1)
            what = self.rng.random()
            if what < 0.4:
                data[at : at + 8] = self.rng.randbytes(8)
            elif what < 0.7:
                data[at:at] = self.rng.randbytes(self.rng.randint(1, 64))
            else:
                del data[at : at + self.rng.randint(1, 64)]
        return bytes(data)

    def _size_of(self, path: str) -> int:
        try:
            return os.stat(self.model / path).st_size
        except OSError:
            return 0

    def _mtime(self) -> int:
        return self.rng.randrange(EXPLICIT_MTIME_MIN, EXPLICIT_MTIME_MAX)

    # one op ------------------------------------------------------------
    def next(self) -> Op:
        self._scan()
        for _ in range(100):
            op = self._draw()
            if op is not None and not (self.exclude and self.exclude(op, self.model)):
                return op
        return Op("listdir", "")

    def _draw(self) -> Op | None:
        rng = self.rng
        k = rng.choices(self._kinds, self._weights)[0]
        if k == "create":
            path = self._new_path(FILE_NAMES) if rng.random() < 0.6 else self._file_path()
            return Op(
                k,
                path,
                {
                    "data": self._content(),
                    "mode": rng.choice(FILE_MODES[:7]),
                    "excl": rng.random() < 0.1,
                },
            )
        if k in ("write", "write2"):
            path = self._file_path()
            size = self._size_of(path)
            offset = rng.choice([0, size, rng.randint(0, size + 10), size + rng.randint(1, 5000)])
            data = rng.randbytes(rng.choice([1, 7, 100, 4096, 5000, 70_000]))
            args = {"offset": offset, "data": data}
            if k == "write":
                args["rdwr"] = rng.random() < 0.3
                args["fsync"] = rng.random() < 0.1
            return Op(k, path, args)
        if k == "held":
            path = self._file_path()
            size = self._size_of(path)
            r = rng.random()
            if r < 0.3:
                dst = None  # unlink while open
            elif r < 0.6 and self.files:
                dst = rng.choice(self.files)
            else:
                dst = self._new_path(FILE_NAMES)
            return Op(
                k,
                path,
                {
                    "offset": rng.randint(0, size + 100),
                    "data": rng.randbytes(rng.choice([1, 100, 3000])),
                    "dst": dst,
                    "offset2": rng.randint(0, size + 100),
                    "data2": rng.randbytes(rng.choice([1, 100, 3000])),
                    "fsync": rng.random() < 0.3,
                },
            )
        if k == "append":
            return Op(k, self._file_path(), {"data": rng.randbytes(rng.choice([0, 1, 10, 3000]))})
        if k == "truncate":
            path = self._file_path()
            size = self._size_of(path)
            new = rng.choice([0, rng.randint(0, size), size, size + rng.randint(1, 20_000)])
            return Op(k, path, {"size": new, "via_fd": rng.random() < 0.3})
        if k == "otrunc":
            return Op(k, self._file_path())
        if k == "rename":
            return self._rename()
        if k == "unlink":
            return Op(k, self._file_path())
        if k == "mkdir":
            names = DIR_NAMES if rng.random() < 0.85 else ALL_NAMES
            return Op(k, self._new_path(names, max_parent_depth=1), {"mode": rng.choice(DIR_MODES)})
        if k == "rmdir":
            if len(self.dirs) > 1 and rng.random() < 0.85:
                return Op(k, rng.choice(self.dirs[1:]))
            return Op(k, self._any_path())
        if k == "chmod":
            path = self._any_path()
            is_dir = path in self.dirs
            modes = DIR_MODES if is_dir else FILE_MODES
            return Op(k, path, {"mode": rng.choice(modes)})
        if k == "utime":
            path = self._any_path()
            ns = None if rng.random() < 0.1 else [self._mtime(), self._mtime()]
            follow = not (path in self.links and rng.random() < 0.5)
            return Op(k, path, {"ns": ns, "follow": follow})
        if k == "symlink":
            # relative targets that never climb (`..`): wherever the link is moved, the target
            # stays inside the tree, so following it never leaves the mount or the model
            target = rng.choice(
                [rng.choice(ALL_NAMES), f"{rng.choice(DIR_NAMES)}/{rng.choice(FILE_NAMES)}"]
            )
            return Op(k, self._new_path(FILE_NAMES), {"target": target})
        if k == "read":
            path = self._file_path()
            if rng.random() < 0.3:
                size = self._size_of(path)
                return Op(
                    k, path, {"offset": rng.randint(0, size + 10), "size": rng.randint(1, 9000)}
                )
            return Op(k, path)
        if k == "readlink":
            return Op(k, self._pick(self.links) or self._any_path())
        if k == "listdir":
            return Op(k, rng.choice(self.dirs))
        if k == "stat":
            return Op(k, self._any_path())
        if k == "remount":
            return Op(k)
        raise AssertionError(k)

    def _rename(self) -> Op:
        rng = self.rng
        r = rng.random()
        if r < 0.12 and len(self.dirs) > 1:
            src = rng.choice(self.dirs[1:])
            sub_depth = max(_depth(d) for d in self.dirs if d == src or d.startswith(src + "/"))
            height = sub_depth - _depth(src) + 1
            if rng.random() < 0.3:  # onto an existing dir (empty → replaced, else ENOTEMPTY)
                dst = rng.choice(self.dirs[1:])
            else:
                dst = self._new_path(ALL_NAMES, max_parent_depth=MAX_DEPTH - height)
            if _depth(dst) + height - 1 > MAX_DEPTH:
                return None
            return Op("rename", src, {"dst": dst})
        src = self._file_path() if rng.random() < 0.9 else self._any_path()
        if rng.random() < 0.4 and self.files:
            dst = rng.choice(self.files)  # replace an existing file
        else:
            dst = self._new_path(FILE_NAMES if rng.random() < 0.9 else ALL_NAMES)
        return Op("rename", src, {"dst": dst})
