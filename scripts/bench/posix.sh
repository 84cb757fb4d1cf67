#!/usr/bin/env bash
# POSIX completeness (issue 18): pjdfstest on dgfs, and on s3fs / rclone mount when installed,
# all against one private local S3 server; prints the pass % per group.
#
# Usage: bash scripts/bench/posix.sh [GROUP...]      (default: the 10 groups of issue 18)
# Env:   PJDFSTEST_DIR  a pjdfstest source tree (built here if `pjdfstest` is missing);
#                       default /work/pjdfstest-src, else a checkout of github.com/pjd/pjdfstest
#        SYSTEMS        which mounts to test (default: "dgfs s3fs rclone", missing ones skipped)
#        DGFS_OPTS      extra `dgfs mount` arguments (e.g. "--dev --suid")
#        KEEP_LOGS=1    keep the per-test prove output in $WORK/<system>-<group>.log
# Needs root (pjdfstest changes uids) and FUSE. Builds with autoconf/automake (apt-get).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY=${PY:-/work/main/.venv/bin/python}
[ -x "$PY" ] || PY=$ROOT/.venv/bin/python
GROUPS_=("$@")
((${#GROUPS_[@]})) || GROUPS_=(chmod chown mkdir open rename rmdir symlink truncate unlink utimensat)
SYSTEMS=${SYSTEMS:-dgfs s3fs rclone}
PJD=${PJDFSTEST_DIR:-/work/pjdfstest-src}

if [ ! -x "$PJD/pjdfstest" ]; then
    if [ ! -f "$PJD/configure.ac" ]; then
        echo "posix: no pjdfstest source in $PJD; set PJDFSTEST_DIR to a checkout of" >&2
        echo "       https://github.com/pjd/pjdfstest" >&2
        exit 2
    fi
    command -v autoreconf >/dev/null || apt-get install -y -qq autoconf automake libtool >/dev/null
    (cd "$PJD" && autoreconf -ifs && ./configure && make pjdfstest) >/tmp/pjdfstest-build.log 2>&1 \
        || { echo "posix: pjdfstest build failed, see /tmp/pjdfstest-build.log" >&2; exit 2; }
fi

WORK=$(mktemp -d /tmp/dgfs-posix.XXXXXX)
DATA=$WORK/server
eval "$("$PY" -m dgfs.cli server start --data-dir "$DATA")"
MOUNTS=()
cleanup() {
    for m in "${MOUNTS[@]}"; do
        mountpoint -q "$m" && { "$PY" -m dgfs.cli umount "$m" >/dev/null 2>&1 || umount "$m" 2>/dev/null || umount -l "$m"; }
    done
    "$PY" -m dgfs.cli server stop --data-dir "$DATA" >/dev/null 2>&1
    [ -n "${KEEP_LOGS:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

mkbucket() { "$PY" -c "import sys; from core.config import s3_settings_from_env as s; \
from core.objectstore import ObjectStore as O; O(sys.argv[1], s()).create_bucket()" "$1"; }

mount_system() { # system bucket dir
    local sys=$1 bucket=$2 dir=$3
    mkdir -p "$dir"
    case $sys in
    dgfs)
        # shellcheck disable=SC2086
        "$PY" -m dgfs.cli mount "$bucket" "$dir" --allow-other --cache-dir "$WORK/cache-$bucket" \
            ${DGFS_OPTS:-} >"$WORK/$sys.mount.log" 2>&1 ;;
    s3fs)
        printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3fs.passwd"
        chmod 600 "$WORK/s3fs.passwd"
        s3fs "$bucket" "$dir" -o "url=$AWS_ENDPOINT_URL,use_path_request_style,allow_other" \
            -o "passwd_file=$WORK/s3fs.passwd,dbglevel=err" >"$WORK/$sys.mount.log" 2>&1 ;;
    rclone)
        RCLONE_CONFIG_P_TYPE=s3 RCLONE_CONFIG_P_PROVIDER=Other \
            RCLONE_CONFIG_P_ENDPOINT=$AWS_ENDPOINT_URL RCLONE_CONFIG_P_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
            RCLONE_CONFIG_P_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
            RCLONE_CONFIG_P_REGION=${AWS_DEFAULT_REGION:-us-east-1} RCLONE_CONFIG_P_FORCE_PATH_STYLE=true \
            "$RCLONE" mount "p:$bucket" "$dir" --allow-other --vfs-cache-mode writes \
            --cache-dir "$WORK/rclone-cache" --daemon >"$WORK/$sys.mount.log" 2>&1 ;;
    esac
    for _ in $(seq 100); do mountpoint -q "$dir" && return 0; sleep 0.1; done
    echo "posix: $sys mount failed: $(tail -5 "$WORK/$sys.mount.log")" >&2
    return 1
}

RCLONE=$(command -v rclone || echo "$ROOT/.venv/bin/rclone")
declare -A RESULT
RUN=()
for sys in $SYSTEMS; do
    case $sys in
    s3fs) command -v s3fs >/dev/null || { echo "posix: s3fs not installed, skipped" >&2; continue; } ;;
    rclone) [ -x "$RCLONE" ] || { echo "posix: rclone not installed, skipped" >&2; continue; } ;;
    esac
    bucket=posix-$sys
    mkbucket "$bucket"
    dir=$WORK/mnt-$sys
    mount_system "$sys" "$bucket" "$dir" || continue
    MOUNTS+=("$dir")
    RUN+=("$sys")
    for g in "${GROUPS_[@]}"; do
        t=$dir/t-$g
        mkdir -p "$t"
        log=$WORK/$sys-$g.log
        # verbose TAP: every test file prints its plan (1..N) first, then one ok/not ok per
        # subtest; a file that dies midway has its missing subtests counted as failed
        (cd "$t" && timeout 1800 prove -v -r "$PJD/tests/$g" >"$log" 2>&1)
        total=$(grep -oE '^1\.\.[0-9]+' "$log" | awk -F. '{s+=$3} END {print s+0}')
        # as prove counts them: a failing TODO subtest ("not ok N # TODO", a known platform
        # difference such as Linux keeping setgid on a chowned directory) is not a failure
        passed=$(grep -cE '^ok [0-9]+|^not ok [0-9]+ # TODO' "$log")
        failed=$((total - passed))
        RESULT[$sys,$g]="$((total - failed))/$total"
        printf '%-7s %-10s %s\n' "$sys" "$g" "${RESULT[$sys,$g]}" >&2
    done
done

printf '\n%-10s' group
for sys in "${RUN[@]}"; do printf ' %18s' "$sys"; done
printf '\n'
declare -A SUM_P SUM_T
for g in "${GROUPS_[@]}" total; do
    printf '%-10s' "$g"
    for sys in "${RUN[@]}"; do
        if [ "$g" = total ]; then p=${SUM_P[$sys]:-0} n=${SUM_T[$sys]:-0}
        else
            p=${RESULT[$sys,$g]%/*} n=${RESULT[$sys,$g]#*/}
            SUM_P[$sys]=$((${SUM_P[$sys]:-0} + p)) SUM_T[$sys]=$((${SUM_T[$sys]:-0} + n))
        fi
        printf ' %10s %6s%%' "$p/$n" "$(awk -v p="$p" -v n="$n" 'BEGIN {printf "%.1f", n ? 100*p/n : 0}')"
    done
    printf '\n'
done
[ -n "${KEEP_LOGS:-}" ] && echo "logs: $WORK" >&2
exit 0
