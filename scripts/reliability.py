"""Summarise the JSON lines the reliability tests append to $DG_RELIABILITY_REPORT."""

from __future__ import annotations

import collections
import json
import sys


def main(path: str) -> int:
    rows = []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    faults: collections.Counter[str] = collections.Counter()
    verified = lost = failed_closes = 0
    print("\nreliability summary")
    print(f"  {'scenario':<18} {'faults':>7} {'verified':>9} {'failed close':>13} {'lost':>6}")
    for row in rows:
        row_faults = row.get("faults", {})
        faults.update(row_faults)
        verified += row.get("files_verified", 0)
        lost += row.get("bytes_lost", 0)
        failed_closes += row.get("failed_closes", 0)
        print(
            f"  {row['test']:<18} {sum(row_faults.values()):>7} {row.get('files_verified', 0):>9}"
            f" {row.get('failed_closes', 0):>13} {row.get('bytes_lost', 0):>6}"
        )
    print(
        "  faults injected per class: "
        + (", ".join(f"{k}={v}" for k, v in sorted(faults.items())) or "none")
    )
    print(f"  files verified byte-identical: {verified}")
    print(f"  close() calls that reported a failed upload: {failed_closes}")
    print(f"  bytes lost (acknowledged but not stored): {lost}")
    if not rows:
        print("  no scenario reported (did the fault tests run?)")
        return 1
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
