"""Render the benchmark results as PNG charts beside docs/benchmarks.md.

    python scripts/bench/charts.py                       # from the tables in docs/benchmarks.md
    python scripts/bench/charts.py --json data/bench-results/latest-full.json   # from a run
    python scripts/bench/charts.py --out /tmp/charts     # elsewhere

Reads rows (workload, case, system, seconds, MB/s, files/s, stored) from the markdown tables
of docs/benchmarks.md (every table whose header starts `| workload | case | system`; a later
table's row replaces an earlier one for the same workload, case and system), or from the JSON
document(s) `scripts/bench/run.py` writes (data/bench-results/), and writes:

    docs/images/bench-stored.png    stored bytes per system per release series (+ zstd limit)
    docs/images/bench-slowlink.png  seconds per system to copy each series, local vs 50 Mbit/s
    docs/images/bench-listing.png   cold/warm `ls -l`, `find`, second `rsync -a`
    docs/images/bench-read.png      large-file and small-file reads (and writes)

Needs matplotlib (`pip install -e '.[bench]'`), which dgfs itself never imports.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "docs" / "images"

DGFS_COLOR = "#1f77b4"
PEER_COLOR = "#9aa5b1"
SYSTEM_ORDER = [
    "dgfs",
    "dgfs adaptive",
    "dgfs-noindex",
    "s3fs",
    "rclone",
    "rclone-srvmtime",
    "boto3",
    "deltaglider",
]
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


# ----------------------------------------------------------------------------- reading rows


def _number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _bytes(text: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)\s*(B|KB|MB|GB)", text.strip())
    return float(match[1]) * UNITS[match[2]] if match else None


def _split(line: str) -> list[str]:
    """A markdown table row's cells (a `|` inside a cell, as in `find | wc -l`, is kept when
    the row has more cells than the header)."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rows_from_markdown(text: str) -> list[dict]:
    rows: dict[tuple, dict] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _split(line)
        if header is None:
            header = cells if cells[:3] == ["workload", "case", "system"] else []
            continue
        if not header or set(line) <= set("|- "):
            continue
        extra = len(cells) - len(header)
        if extra > 0:  # the case held a '|': join it back
            cells = [cells[0], " | ".join(cells[1 : 2 + extra]), *cells[2 + extra :]]
        cell = dict(zip(header, cells, strict=False))
        row = {
            "workload": cell["workload"],
            "case": cell["case"],
            "system": cell["system"],
            "seconds": _number(cell.get("seconds", "")),
            "mb_s": _number(cell.get("MB/s", "")),
            "files_s": _number(cell.get("files/s", "")),
            "stored": _bytes(cell.get("stored", "")),
        }
        rows[(row["workload"], row["case"], row["system"])] = row
    return list(rows.values())


def rows_from_json(paths: list[Path]) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for path in paths:
        for r in json.loads(path.read_text())["rows"]:
            rows[(r["workload"], r["case"], r["system"])] = r
    return list(rows.values())


# ----------------------------------------------------------------------------- drawing


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _order(systems) -> list[str]:
    known = [s for s in SYSTEM_ORDER if s in systems]
    return known + sorted(set(systems) - set(known))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: reproducible
    return path


def _bold_dgfs(ax) -> None:
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        if label.get_text().startswith("dgfs"):
            label.set_fontweight("bold")


def _panel(ax, title: str, values: dict[str, float], unit: str, better: str) -> None:
    """Horizontal bars, one per system (dgfs variants in blue), value printed at the end."""
    systems = _order(values)
    if not systems:
        ax.set_visible(False)
        return
    ys = range(len(systems))
    vals = [values[s] for s in systems]
    colors = [DGFS_COLOR if s.startswith("dgfs") else PEER_COLOR for s in systems]
    ax.barh(list(ys), vals, color=colors)
    ax.set_yticks(list(ys), systems)
    ax.invert_yaxis()
    _bold_dgfs(ax)
    top = max(vals) or 1
    for y, v in zip(ys, vals, strict=True):
        label = f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
        ax.text(v + top * 0.01, y, f"{label} {unit}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.3)
    ax.set_title(f"{title}\n({unit}, {better} is better)", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)


def _find(rows, workload: str, pattern: str) -> list[dict]:
    return [r for r in rows if r["workload"] == workload and re.search(pattern, r["case"])]


def chart_stored(rows, out: Path) -> Path | None:
    series = _find(rows, "series", "")
    adaptive = [r for r in _find(rows, "slowlink", "") if r["system"] == "dgfs adaptive"]
    data: dict[str, dict[str, float]] = {}  # series name → system → MB
    limits: dict[str, float] = {}
    for r in series + adaptive:
        if r.get("stored") is None:
            continue
        name = r["case"].split(" ")[0]
        if r["system"] == "zstd":
            limits[name] = r["stored"] / 1e6
        else:
            data.setdefault(name, {})[r["system"]] = r["stored"] / 1e6
    if not data:
        return None
    plt = _plt()
    names = list(data)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        systems = _order(data[name])
        vals = [data[name][s] for s in systems]
        colors = [DGFS_COLOR if s.startswith("dgfs") else PEER_COLOR for s in systems]
        bars = ax.bar(range(len(systems)), vals, color=colors)
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right")
        for bar, v in zip(bars, vals, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom")
        if name in limits:
            ax.axhline(
                limits[name],
                color="#d62728",
                linestyle="--",
                linewidth=1,
                label=f"zstd -19 --long of the whole series: {limits[name]:.1f} MB",
            )
            ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.28))
        cases = " ".join(r["case"] for r in series if r["case"].startswith(name))
        count = re.search(r"cp (\d+) versions", cases)
        ax.set_title(f"{name}: {count[1] if count else 'all'} versions copied in")
        _bold_dgfs(ax)
        ax.set_ylabel("stored in the bucket (MB)")
        ax.set_ylim(0, max(vals + [limits.get(name, 0)]) * 1.15)
    fig.suptitle("Bytes stored in S3 per system (lower is better)", fontweight="bold")
    return _save(fig, out / "bench-stored.png")


def chart_slowlink(rows, out: Path) -> Path | None:
    local = {
        (r["case"].split(" ")[0], r["system"]): r["seconds"] for r in _find(rows, "series", "cp")
    }
    slow = {
        (r["case"].split(" ")[0], r["system"]): r["seconds"] for r in _find(rows, "slowlink", "")
    }
    link = next((re.search(r"@(\S+)", r["case"]) for r in _find(rows, "slowlink", "")), None)
    link_name = link[1].replace("mbit", " Mbit/s") if link else "slow link"
    names = sorted({n for n, _ in {**local, **slow}}, key=lambda n: n != "botocore")
    if not slow:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    width = 0.4
    for ax, name in zip(axes[0], names, strict=True):
        systems = _order({s for n, s in {**local, **slow} if n == name and s != "zstd"})
        xs = range(len(systems))
        for offset, figures, label, color in (
            (-width / 2, local, "local server", "#b8c2cc"),
            (width / 2, slow, link_name, "#ff7f0e"),
        ):
            vals = [figures.get((name, s)) or 0 for s in systems]
            bars = ax.bar([x + offset for x in xs], vals, width, label=label, color=color)
            for bar, v in zip(bars, vals, strict=True):
                if v:
                    ax.text(
                        bar.get_x() + bar.get_width() / 2,
                        v,
                        f"{v:.0f}" if v >= 10 else f"{v:.1f}",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(list(xs), systems, rotation=30, ha="right")
        ax.set_ylabel("seconds until every object is stored")
        ax.set_title(f"{name} series")
        ax.legend(frameon=False, fontsize=8)
        _bold_dgfs(ax)
    fig.suptitle(
        f"Copying a release series in: local vs {link_name} link (lower is better)",
        fontweight="bold",
    )
    return _save(fig, out / "bench-slowlink.png")


def _grid(rows, panels, title: str, path: Path, cols: int = 3) -> Path | None:
    """`panels`: (workload, case regex, title, field, unit, better) → one bar panel each."""
    found = []
    for workload, pattern, name, key, unit, better in panels:
        values = {r["system"]: r[key] for r in _find(rows, workload, pattern) if r.get(key)}
        if values:
            found.append((name, values, unit, better))
    if not found:
        return None
    plt = _plt()
    nrows = (len(found) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.0 * nrows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for ax, (name, values, unit, better) in zip(flat, found, strict=False):
        _panel(ax, name, values, unit, better)
    for ax in flat[len(found) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontweight="bold")
    return _save(fig, path)


def chart_listing(rows, out: Path) -> Path | None:
    def secs(pattern: str, title: str) -> tuple:
        return ("metadata", pattern, title, "seconds", "s", "lower")

    return _grid(
        rows,
        [
            secs(r"^ls -l 1000 files cold", "ls -l, 1,000 files, cold"),
            secs(r"^ls -l 10000 files cold", "ls -l, 10,000 files, cold"),
            secs(r"^find", "find | wc -l, 1,000 files in a tree, cold"),
            secs(r"^ls -l 1000 files warm", "ls -l, 1,000 files, warm"),
            secs(r"^ls -l 10000 files warm", "ls -l, 10,000 files, warm"),
            secs(r"2nd run", "rsync -a of 1,000 files, 2nd run"),
        ],
        "Listing a directory through the mount (dgfs-noindex: without directory index objects)",
        out / "bench-listing.png",
    )


def chart_read(rows, out: Path) -> Path | None:
    def big(pattern: str, title: str) -> tuple:
        return ("throughput", pattern, title, "mb_s", "MB/s", "higher")

    def small(pattern: str, title: str) -> tuple:
        return ("throughput", pattern, title, "files_s", "files/s", "higher")

    return _grid(
        rows,
        [
            big(r"MiB read cold", "one large file, read cold"),
            big(r"MiB read warm", "one large file, read warm"),
            big(r"MiB write", "one large file, write"),
            small(r"KiB read cold", "64 KiB files, read cold"),
            small(r"KiB read warm", "64 KiB files, read warm"),
            small(r"KiB write", "64 KiB files, write"),
        ],
        "Reading and writing through the mount (boto3: plain GET/PUT, no mount)",
        out / "bench-read.png",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", nargs="+", type=Path, help="run.py result documents (in order)")
    ap.add_argument("--doc", type=Path, default=DOC, help="markdown with the result tables")
    ap.add_argument("--out", type=Path, default=OUT, help="where the PNGs go")
    args = ap.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("charts: needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    rows = rows_from_json(args.json) if args.json else rows_from_markdown(args.doc.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for chart in (chart_stored, chart_slowlink, chart_listing, chart_read):
        path = chart(rows, args.out)
        print(f"charts: {path.relative_to(ROOT) if path and path.is_relative_to(ROOT) else path}"
              if path else f"charts: {chart.__name__}: no rows for it")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
