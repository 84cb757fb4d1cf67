"""Measure core.archive on real artifacts: canonicalize/rebuild time, how many deflate streams
the pinned zlib reproduces, and xdelta3 delta sizes raw vs canonical for consecutive versions.

    python scripts/bench/archive_bench.py OLD NEW [OLD NEW ...]
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core import codec  # noqa: E402
from core.archive import canonicalize, containers, rebuild  # noqa: E402


def _counting() -> dict[str, int]:
    """Count reproduced / kept streams by wrapping the container walker's reproduce()."""
    counts = {"reproduced": 0, "kept": 0}
    original = containers.reproduce

    def wrapped(*args, **kwargs):
        outcome = original(*args, **kwargs)
        counts["reproduced" if outcome.params else "kept"] += 1
        return outcome

    containers.reproduce = wrapped
    return counts


def _delta(reference: Path, target: Path, out: Path) -> int:
    return codec.encode(reference, target, out, hashlib.sha256(target.read_bytes()).hexdigest())


def main(paths: list[str]) -> None:
    counts = _counting()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for old, new in zip(paths[::2], paths[1::2], strict=True):
            canon = {}
            for name in (old, new):
                counts.update(reproduced=0, kept=0)
                src = Path(name)
                out = work / (src.name + ".canon")
                started, cpu = time.perf_counter(), time.process_time()
                result = canonicalize(src, out)
                took = time.perf_counter() - started, time.process_time() - cpu
                started, cpu = time.perf_counter(), time.process_time()
                rebuild(out, work / "back")
                rebuilt = time.perf_counter() - started, time.process_time() - cpu
                same = (work / "back").read_bytes() == src.read_bytes()
                print(
                    f"{src.name}: {src.stat().st_size} B -> {result.size} B {result.transform}, "
                    f"inflated {result.inflated}, kept {result.kept}; streams reproduced "
                    f"{counts['reproduced']}, kept {counts['kept']}; canonicalize {took[0]:.2f} s "
                    f"({took[1]:.2f} s CPU), rebuild {rebuilt[0]:.2f} s ({rebuilt[1]:.2f} s CPU), "
                    f"identical {same}"
                )
                canon[name] = out
            raw = _delta(Path(old), Path(new), work / "raw.delta")
            canonical = _delta(canon[old], canon[new], work / "canon.delta")
            print(f"delta {Path(new).name}: raw {raw} B, canonical {canonical} B")


if __name__ == "__main__":
    main(sys.argv[1:])
