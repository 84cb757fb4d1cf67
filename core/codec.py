"""xdelta3 encode/decode through the `xdelta3` binary (the deltaglider wire format: VCDIFF).

Every run passes `-D -R`: xdelta3 otherwise gunzips/bunzips/unxzs compressed inputs on its own
and encodes the *decompressed* content, which no decoder turns back into the original bytes.
Every encode is decoded back and SHA-256-checked before the caller may store it.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from core.errors import CodecError, NoSpace

MIN_SOURCE_WINDOW = 2**20  # xdelta3 allocates the whole window: 64 MiB cost ~110 ms per file
# an encode's xdelta3 peaks at ~3× its source window (-9's hash tables; decode ~1×): measured
# 392 MiB for -B 128 MiB on a 2 GiB file, 776 MiB for 256 MiB; daemon + child stay < 600 MB
DEFAULT_MAX_SOURCE_WINDOW = 2**27
_max_source_window = DEFAULT_MAX_SOURCE_WINDOW
STREAM_WINDOW = 2**20
NO_EXTERNAL_COMPRESSION = ("-D", "-R")  # never decompress inputs, never recompress output
CHUNK = 1 << 20
DECODE_SECONDS_MIN = 120.0  # a decode's time limit: this much plus 1 s per 2 MB of output
DECODE_BYTES_PER_SECOND = 2_000_000

# Magic bytes of the formats xdelta3 decompresses externally unless told not to (-D).
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x9d", "compress"),
    (b"\x5d\x00\x00", "lzma"),
)


class RoundTripMismatch(CodecError):
    """A fresh delta did not decode back to the bytes it was made from."""


class OutputTooLarge(CodecError):
    """A decode produced more bytes than the file it claims to rebuild."""


def xdelta3_path() -> str:
    """The xdelta3 binary, or CodecError naming what to install."""
    path = shutil.which("xdelta3")
    if path is None:
        raise CodecError("xdelta3 not found on PATH (apt-get install xdelta3)")
    return path


def compression_of(path: Path) -> str | None:
    """The external compression format xdelta3 would recognise in `path` (gzip, bzip2, xz,
    compress, lzma), by magic bytes; None for anything else."""
    with path.open("rb") as f:
        head = f.read(8)
    return next((name for magic, name in _COMPRESSED_MAGIC if head.startswith(magic)), None)


def set_max_source_window(nbytes: int) -> None:
    """Cap every later run's source window (`-B`) at `nbytes` (at least MIN_SOURCE_WINDOW).

    References larger than the cap still encode and decode (xdelta3 seeks in the reference
    file); matches farther than the window from their place in the target are lost."""
    global _max_source_window
    if nbytes < MIN_SOURCE_WINDOW:
        raise ValueError(f"source window must be at least {MIN_SOURCE_WINDOW} bytes")
    _max_source_window = nbytes


def max_source_window() -> int:
    """The current cap on xdelta3's source window, in bytes."""
    return _max_source_window


def _source_window(reference: Path) -> int:
    """A source window covering the whole reference (xdelta3's default 64 MiB misses matches
    in larger references, and costs 10× the time of a small window on small files), a power
    of two from 1 MiB, at most max_source_window() (xdelta3 allocates it in full)."""
    size = reference.stat().st_size
    window = MIN_SOURCE_WINDOW
    while window < size and window < _max_source_window:
        window *= 2
    return min(window, _max_source_window)


def _run(args: list[str], what: str) -> None:
    try:
        proc = subprocess.run(args, capture_output=True, check=False)
    except OSError as exc:
        raise CodecError(f"{what}: cannot run xdelta3: {exc}") from None
    if proc.returncode != 0:
        _fail(what, proc.returncode, proc.stderr)


def _fail(what: str, returncode: int, stderr: bytes) -> None:
    detail = stderr.decode(errors="replace").strip().splitlines()
    message = f"{what}: xdelta3 exit {returncode}: {detail[-1] if detail else ''}"
    if "No space left on device" in message:
        raise NoSpace(message)
    raise CodecError(message)


def encode(
    reference: Path, target: Path, out: Path, sha256: str, limit: int | None = None
) -> int | None:
    """Write the VCDIFF delta of `target` against `reference` to `out`; returns its size.

    Flags as deltaglider's (`-e -f -9 -s`) plus `-A` (no application header, so deltas do not
    carry temp file names), `-D -R` and a source window sized to the reference. With `limit`,
    the encode is abandoned (returns None) as soon as the delta grows past `limit` bytes, so
    an unrelated file does not cost a full xdelta3 pass before being stored direct.
    The delta is then decoded back against `reference` and must give `sha256` (the target's),
    else RoundTripMismatch: nothing unverified leaves this function.
    """
    args = [xdelta3_path(), "-e", "-f", "-9", "-A", *NO_EXTERNAL_COMPRESSION]
    args += ["-B", str(_source_window(reference))]
    if limit is None:
        _run([*args, "-s", str(reference), str(target), str(out)], f"encode {target.name}")
        size = out.stat().st_size
    else:
        # 1 MiB input windows make xdelta3 emit output as it goes, so the bound can stop it
        # early (measured: deltas 0.04% larger; an unrelated 10 MB file abandoned in 1.5 s
        # instead of 3.8)
        bounded = [*args, "-W", str(STREAM_WINDOW), "-c", "-s", str(reference), str(target)]
        size = _encode_bounded(bounded, out, limit, target)
        if size is None:
            return None
    check_round_trip(reference, out, sha256, target.stat().st_size)
    return size


def check_round_trip(reference: Path, delta: Path, sha256: str, size: int) -> None:
    """Decode `delta` against `reference` in memory (hashing, not writing) and require
    `sha256`; RoundTripMismatch otherwise."""
    digest = hashlib.sha256()
    try:
        _decode_to(reference, delta, digest.update, size, f"check {delta.name}")
    except CodecError as exc:
        raise RoundTripMismatch(f"delta does not decode back: {exc}") from None
    if digest.hexdigest() != sha256:
        raise RoundTripMismatch("delta decodes to other bytes (sha256 mismatch)")


def _encode_bounded(args: list[str], out: Path, limit: int, target: Path) -> int | None:
    # 64 KiB reads: the bound stops an encode soon after its output passes it
    with out.open("wb") as f:
        try:
            return _stream(args, f.write, limit, f"encode {target.name}", 1 << 16)
        except _OverBound:
            return None


def decode(reference: Path, delta: Path, out: Path, max_size: int | None = None) -> None:
    """Rebuild the original from `reference` and `delta` into `out` (`xdelta3 -d -D -R`).

    `max_size`: the size the file should have; a delta that expands past it is stopped
    (OutputTooLarge) instead of filling the disk, and every decode has a time limit.
    """
    with out.open("wb") as f:
        _decode_to(reference, delta, f.write, max_size, f"decode {delta.name}")


def decode_decompressed(
    reference: Path, delta: Path, out: Path, max_size: int | None = None
) -> None:
    """Decode a delta that was made from *externally decompressed* inputs (xdelta3 without
    `-D`, as dgfs before 0.2 and deltaglider 6.2 ran it): xdelta3 decompresses `reference`
    itself and writes the decompressed content of the original, never recompressed (`-R`).
    The result cannot be checked against the file's SHA-256 (that is of the compressed form).
    """
    with out.open("wb") as f:
        _decode_to(reference, delta, f.write, max_size, f"decode {delta.name}", ("-R",))


def _decode_to(
    reference: Path,
    delta: Path,
    sink: Callable[[bytes], object],
    max_size: int | None,
    what: str,
    flags: tuple[str, ...] = NO_EXTERNAL_COMPRESSION,
) -> None:
    """Run a bounded, time-limited `xdelta3 -d -c` and feed its output to `sink`."""
    args = [xdelta3_path(), "-d", "-c", *flags]
    args += ["-B", str(_source_window(reference)), "-s", str(reference), str(delta)]
    timeout = DECODE_SECONDS_MIN + (max_size or 0) / DECODE_BYTES_PER_SECOND
    try:
        _stream(args, sink, max_size, what, CHUNK, timeout)
    except _OverBound:
        raise OutputTooLarge(f"{what}: output exceeds the expected {max_size} bytes") from None


class _OverBound(Exception):
    """A piped xdelta3 run's output passed its bound (the process was killed)."""


def _stream(
    args: list[str],
    sink: Callable[[bytes], object],
    bound: int | None,
    what: str,
    chunk: int,
    timeout: float | None = None,
) -> int:
    """Run xdelta3 with its output on a pipe, fed to `sink` `chunk` bytes at a time; returns
    the bytes written. _OverBound once the output passes `bound`; killed after `timeout` s."""
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise CodecError(f"{what}: cannot run xdelta3: {exc}") from None
    timer = _Deadline(proc, timeout) if timeout is not None else None
    written = 0
    try:
        while data := proc.stdout.read(chunk):
            written += len(data)
            if bound is not None and written > bound:
                proc.kill()
                raise _OverBound
            sink(data)
    except OSError as exc:
        proc.kill()
        if exc.errno == errno.ENOSPC:
            raise NoSpace(f"{what}: {exc}") from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
        proc.wait()
    if timer is not None and timer.expired:
        raise CodecError(f"{what}: xdelta3 took longer than {timeout:.0f} s; stopped")
    if proc.returncode != 0:
        _fail(what, proc.returncode, stderr)
    return written


class _Deadline:
    """Kill a child process if it is still running after `seconds`."""

    def __init__(self, proc: subprocess.Popen, seconds: float) -> None:
        self.expired = False
        self._proc = proc
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self._proc.kill()

    def cancel(self) -> None:
        self._timer.cancel()
