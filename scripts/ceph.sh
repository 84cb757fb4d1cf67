#!/usr/bin/env bash
# A one-node Ceph cluster with an S3 gateway (RGW) on 127.0.0.1, for testing dgfs against a
# production S3 implementation (issue #19). All state lives under data/ceph/ (git-ignored).
#
#   bash scripts/ceph.sh start   # install the Debian packages if missing, start mon/mgr/osd/rgw,
#                                # create the S3 user, print `export AWS_...` lines (idempotent)
#   bash scripts/ceph.sh env     # print the export lines of the running cluster
#   bash scripts/ceph.sh status  # "running" (exit 0) or "stopped" (exit 1)
#   bash scripts/ceph.sh stop    # stop the daemons (data kept; `start` brings them back)
#   bash scripts/ceph.sh wipe    # stop and delete data/ceph
#
# Layout: one monitor (msgr v1 only, cephx off: only RGW's S3 signatures are checked), one
# manager, one OSD on BlueStore in a sparse file (data/ceph/osd/block, 8 GiB apparent, grows as
# written), pools of size 1, one radosgw (beast frontend). Progress goes to stderr, the export
# lines to stdout, so `eval "$(bash scripts/ceph.sh start)"` works.
# Env: DGFS_CEPH_DIR (default data/ceph), DGFS_CEPH_RGW_PORT / DGFS_CEPH_MON_PORT (default: free
# ports chosen at the first start and kept in DIR/ports).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="$(mkdir -p "${DGFS_CEPH_DIR:-data/ceph}" && cd "${DGFS_CEPH_DIR:-data/ceph}" && pwd)"
CONF="$DIR/ceph.conf"
ACCESS_KEY=dgfs-ceph-access
SECRET_KEY=dgfs-ceph-secret-key
REGION=us-east-1
PACKAGES=(ceph-mon ceph-osd ceph-mgr radosgw ceph-common)

say() { echo "ceph.sh: $*" >&2; }
die() { say "$*"; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}

load_ports() {
    if [ ! -f "$DIR/ports" ]; then
        echo "MON_PORT=${DGFS_CEPH_MON_PORT:-$(free_port)}" >"$DIR/ports"
        echo "RGW_PORT=${DGFS_CEPH_RGW_PORT:-$(free_port)}" >>"$DIR/ports"
    fi
    # shellcheck disable=SC1091
    . "$DIR/ports"
}

write_conf() {
    local fsid
    fsid="$(cat "$DIR/fsid" 2>/dev/null || true)"
    if [ -z "$fsid" ]; then
        fsid="$(python3 -c 'import uuid; print(uuid.uuid4())')"
        echo "$fsid" >"$DIR/fsid"
    fi
    mkdir -p "$DIR/run" "$DIR/log" "$DIR/mon" "$DIR/osd" "$DIR/mgr" "$DIR/rgw"
    cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$MON_PORT
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $DIR/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 1

[mon]
mon data = $DIR/mon/\$name

[mgr]
mgr data = $DIR/mgr/\$name
mgr initial modules =

[osd]
osd data = $DIR/osd/\$name
osd objectstore = bluestore
bluestore block path = $DIR/osd/block
bluestore block create = true
bluestore block size = 8589934592
bluestore fsck on mkfs = false
bluestore cache size = 268435456
osd memory target = 939524096
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.gw]
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw dns name = 127.0.0.1
rgw thread pool size = 64
EOF
}

pid_of() { # running daemon's pid (from its pid file) or nothing
    local f="$DIR/run/$1.pid"
    [ -f "$f" ] || return 0
    local pid
    pid="$(cat "$f")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

ceph_cli() { timeout 30 ceph -c "$CONF" "$@"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "$what not ready after ${limit}s (logs: $DIR/log/)"
        sleep 0.5
    done
}

start_mon() {
    if [ ! -f "$DIR/mon/mon.a/store.db/CURRENT" ]; then
        say "creating monitor"
        rm -rf "$DIR/mon/mon.a"
        monmaptool --create --fsid "$(cat "$DIR/fsid")" --addv a "[v1:127.0.0.1:$MON_PORT]" \
            --clobber "$DIR/monmap" >/dev/null
        ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" >>"$DIR/log/mkfs.log" 2>&1 \
            || die "monitor mkfs failed (see $DIR/log/mkfs.log)"
    fi
    [ -n "$(pid_of mon.a)" ] || ceph-mon -c "$CONF" -i a
    wait_for 60 "monitor" ceph_cli mon stat
}

start_mgr() {
    mkdir -p "$DIR/mgr/mgr.x"
    [ -n "$(pid_of mgr.x)" ] || ceph-mgr -c "$CONF" -i x
}

start_osd() {
    if [ ! -f "$DIR/osd/osd.0/ready" ]; then
        say "creating OSD (BlueStore in $DIR/osd/block)"
        rm -rf "$DIR/osd/osd.0" "$DIR/osd/block"
        mkdir -p "$DIR/osd/osd.0"
        local uuid
        uuid="$(python3 -c 'import uuid; print(uuid.uuid4())')"
        local id
        id="$(ceph_cli osd new "$uuid")"
        [ "$id" = 0 ] || die "expected OSD id 0, the monitor gave $id (wipe with: $0 wipe)"
        ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$DIR/log/mkfs.log" 2>&1 \
            || die "OSD mkfs failed (see $DIR/log/mkfs.log)"
    fi
    [ -n "$(pid_of osd.0)" ] || ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/daemons.log"
    wait_for 120 "OSD" sh -c "ceph -c '$CONF' osd dump 2>/dev/null | grep -q '^osd.0 up'"
}

start_rgw() {
    [ -n "$(pid_of client.rgw.gw)" ] || radosgw -c "$CONF" -n client.rgw.gw 2>>"$DIR/log/daemons.log"
    wait_for 120 "radosgw" python3 - "$RGW_PORT" <<'EOF'
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2)
EOF
    if ! timeout 60 radosgw-admin -c "$CONF" user info --uid dgfs >/dev/null 2>&1; then
        say "creating S3 user dgfs"
        timeout 60 radosgw-admin -c "$CONF" user create --uid dgfs \
            --display-name dgfs --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >/dev/null
    fi
}

print_env() {
    echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$RGW_PORT"
    echo "export AWS_ACCESS_KEY_ID=$ACCESS_KEY"
    echo "export AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
    echo "export AWS_DEFAULT_REGION=$REGION"
}

stop_all() {
    local name pid pids=()
    for name in client.rgw.gw mgr.x osd.0 mon.a; do
        pid="$(pid_of "$name")"
        [ -n "$pid" ] && kill "$pid" && pids+=("$pid")
    done
    local end=$((SECONDS + 30))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if [ $SECONDS -ge $end ]; then kill -9 "$pid" 2>/dev/null || true; break; fi
            sleep 0.2
        done
    done
}

running() {
    [ -f "$DIR/ports" ] || return 1
    load_ports
    [ -n "$(pid_of mon.a)" ] && [ -n "$(pid_of osd.0)" ] && [ -n "$(pid_of client.rgw.gw)" ]
}

case "${1:-}" in
start)
    t0=$(date +%s.%N)
    install_packages
    load_ports
    write_conf
    start_mon
    start_mgr
    start_osd
    touch "$DIR/osd/osd.0/ready"
    start_rgw
    say "ready in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")s: RGW on http://127.0.0.1:$RGW_PORT"
    print_env
    ;;
env)
    running || die "not running (start it with: $0 start)"
    print_env
    ;;
status)
    if running; then echo "running: RGW on http://127.0.0.1:$RGW_PORT"; else echo stopped; exit 1; fi
    ;;
stop)
    stop_all
    say "stopped (data kept in $DIR)"
    ;;
wipe)
    stop_all
    rm -rf "$DIR"
    say "wiped $DIR"
    ;;
*)
    echo "usage: $0 start|env|status|stop|wipe" >&2
    exit 2
    ;;
esac
