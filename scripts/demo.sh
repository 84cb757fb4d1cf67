#!/usr/bin/env bash
# The main job on one machine: set up, start the local S3 server (data/local-s3), mount bucket
# "demo" on ./mnt, copy a small release series in, and show what dgfs saved. Idempotent: a
# second run reuses the server and the mount. Both stay running; stop them as printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DGFS=.venv/bin/dgfs
eval "$($DGFS server start --bucket demo)"
mkdir -p mnt
if ! mountpoint -q mnt; then
    $DGFS mount demo mnt --log-file data/dgfs-mount.log
fi

# A release series: tarballs of this repository's source, each version a little different.
src=data/demo-src
mkdir -p "$src"
for v in 1 2 3 4; do
    out="$src/dgfs-src-0.$v.tar"
    [ -f "$out" ] && continue
    tmp=$(mktemp -d)
    cp -r core dgfs "$tmp/"
    for i in $(seq 1 "$v"); do echo "# release 0.$v change $i" >> "$tmp/core/__init__.py"; done
    tar -C "$tmp" --sort=name --mtime=2026-01-01 --owner=0 --group=0 -cf "$out" core dgfs
    rm -rf "$tmp"
done
mkdir -p mnt/releases
cp "$src"/*.tar mnt/releases/
echo
echo "== ls -l mnt/releases (original sizes)"
ls -l mnt/releases
echo
echo "== du (what S3 stores) vs du --apparent-size (what you copied)"
du -sh mnt/releases; du -sh --apparent-size mnt/releases
echo
echo "== getfattr -d mnt/releases/dgfs-src-0.4.tar"
getfattr -d --absolute-names mnt/releases/dgfs-src-0.4.tar
echo
echo "== getfattr -d mnt/releases (the directory's figures, reference.bin included)"
getfattr -d --absolute-names mnt/releases
echo
echo "== objects in the bucket"
.venv/bin/python - <<'PY'
import boto3
s3 = boto3.client("s3")
for o in s3.list_objects_v2(Bucket="demo", Prefix="releases/").get("Contents", []):
    print(f"{o['Size']:>10}  {o['Key']}")
PY
cat <<MSG

dgfs is mounted on $(pwd)/mnt (bucket "demo" on the local S3 server at $AWS_ENDPOINT_URL).
  environment:   eval "\$(.venv/bin/dgfs server start)"
  unmount:       .venv/bin/dgfs umount mnt
  stop all:      bash scripts/stop.sh
MSG
