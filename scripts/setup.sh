#!/usr/bin/env bash
# Install everything dgfs needs on Debian 12 (root): system packages, a venv with dgfs and its
# test extra, and deltaglider in a venv of its own (for interop tests). Idempotent and fast
# on a second run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv xdelta3 attr rsync strace
    gzip bzip2 xz-utils ncompress)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
stamp_of() { sha256sum pyproject.toml | cut -c1-16; }
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.dgfs-stamp 2>/dev/null)" != "$(stamp_of)" ]; then
    echo "setup: creating .venv with dgfs (pyfuse3 builds from source, about a minute)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    stamp_of > .venv/.dgfs-stamp
fi

# deltaglider 6.2.0 pins cryptography<45, so it lives in its own venv and is called as a CLI.
if [ ! -x .venv-deltaglider/bin/deltaglider ]; then
    echo "setup: creating .venv-deltaglider (deltaglider==6.2.0, for interop tests and benchmarks)"
    "$PYTHON" -m venv .venv-deltaglider
    .venv-deltaglider/bin/pip install -q --upgrade pip
    .venv-deltaglider/bin/pip install -q deltaglider==6.2.0
fi
echo "setup: ok"
