#!/usr/bin/env bash
# Unmount ./mnt (waiting for pending uploads) and stop the local S3 server.
set -uo pipefail
cd "$(dirname "$0")/.."
if mountpoint -q mnt 2>/dev/null; then
    .venv/bin/dgfs umount mnt || exit 1
fi
.venv/bin/dgfs server stop || true
