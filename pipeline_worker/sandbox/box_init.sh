#!/bin/sh
# PID 1 of a fresh box (new PID, mount, network, IPC and UTS namespaces made by unshare): builds
# a root holding only read-only system and Python directories, the job's work directory and a
# private /tmp, switches into it, drops every privilege and becomes the boxed Python process.
#
# Arguments: NEWROOT WORKDIR TMP_BYTES NETWORK(0|1) DROP(user|caps) RLIMITS -- READONLY... -- CMD...
# NEWROOT is an empty directory on the host; nothing is written to it outside this namespace.
set -eu
# The tools below live in sbin directories; the boxed command gets the caller's PATH back.
BOX_PATH=${PATH:-/usr/bin:/bin}
PATH=/usr/sbin:/usr/bin:/sbin:/bin
SETPRIV=$(command -v setpriv) PRLIMIT=$(command -v prlimit)

NEWROOT=$1 WORKDIR=$2 TMP_BYTES=$3 NETWORK=$4 DROP=$5 RLIMITS=$6
shift 6
[ "$1" = "--" ] && shift

mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev box "$NEWROOT"
# The private /tmp first: a read-only directory below /tmp (a checkout's venv) stays visible.
mkdir -p "$NEWROOT/tmp"
mount -t tmpfs -o "mode=1777,size=$TMP_BYTES,nosuid,nodev" boxtmp "$NEWROOT/tmp"

# Read-only directories, each at its own path so absolute paths (the venv's interpreter, the
# editable install's finder) resolve inside as outside. Merged-usr symlinks stay symlinks.
while [ "$1" != "--" ]; do
    src=$1
    shift
    if [ -L "$src" ]; then
        mkdir -p "$NEWROOT$(dirname "$src")"
        ln -s "$(readlink "$src")" "$NEWROOT$src"
    elif [ -d "$src" ]; then
        mkdir -p "$NEWROOT$src"
        mount --rbind "$src" "$NEWROOT$src"
        mount -o remount,bind,ro,nosuid,nodev "$NEWROOT$src"
    elif [ -f "$src" ]; then
        mkdir -p "$NEWROOT$(dirname "$src")"
        : >"$NEWROOT$src"
        mount --bind "$src" "$NEWROOT$src"
        mount -o remount,bind,ro,nosuid,nodev "$NEWROOT$src"
    fi
done
shift

mkdir -p "$NEWROOT/pipeline" "$NEWROOT/proc" "$NEWROOT/dev"
mount --bind "$WORKDIR" "$NEWROOT/pipeline"
mount -o remount,bind,nosuid,nodev "$NEWROOT/pipeline"
mount -t proc -o nosuid,nodev,noexec proc "$NEWROOT/proc"

# A minimal /dev: the harmless character devices, a private /dev/shm (multiprocessing).
mount -t tmpfs -o mode=0755,size=1m,nosuid boxdev "$NEWROOT/dev"
for node in null zero full random urandom tty; do
    : >"$NEWROOT/dev/$node"
    mount --bind "/dev/$node" "$NEWROOT/dev/$node"
done
ln -s /proc/self/fd "$NEWROOT/dev/fd"
ln -s /proc/self/fd/0 "$NEWROOT/dev/stdin"
ln -s /proc/self/fd/1 "$NEWROOT/dev/stdout"
ln -s /proc/self/fd/2 "$NEWROOT/dev/stderr"
mkdir -p "$NEWROOT/dev/shm"
mount -t tmpfs -o "mode=1777,size=$TMP_BYTES,nosuid,nodev" boxshm "$NEWROOT/dev/shm"

if [ "$NETWORK" = 0 ]; then
    # The box's own network namespace: only its loopback, which the kernel's ZeroMQ needs.
    ip link set lo up
fi
hostname box

cd "$NEWROOT"
mkdir .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
# Nothing below may change: a read-only root.
mount -o remount,bind,ro /
cd /pipeline
unset OLDPWD

# NOTE: --pdeathsig again: changing the user clears the parent-death signal unshare's
# --kill-child gave this process (the box's PID 1), and without it a box whose worker was
# killed outright would run on as nobody, holding that user's process limit (setpriv sets it
# after the change).
if [ "$DROP" = user ]; then
    # Root outside: become nobody, with no capabilities and no way to gain any.
    set -- "$SETPRIV" --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
        --bounding-set=-all --no-new-privs --pdeathsig=KILL -- "$@"
else
    # An unprivileged user's namespace: stay its only mapped user, without capabilities.
    set -- "$SETPRIV" --inh-caps=-all --bounding-set=-all --no-new-privs --pdeathsig=KILL -- "$@"
fi
# shellcheck disable=SC2086 # RLIMITS is a list of prlimit options
PATH=$BOX_PATH
exec "$PRLIMIT" $RLIMITS -- "$@"
