#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing `fairbench sweep --launcher slurm`.
#
#   scripts/slurm-local.sh start    # install munge + Slurm when missing (as root), start the daemons
#   scripts/slurm-local.sh stop     # stop the daemons this script started
#   scripts/slurm-local.sh status   # is it up?
#   scripts/slurm-local.sh env      # print `export SLURM_CONF=...` for your shell
#
# Debian's packages (munge, slurmctld, slurmd, slurm-client); the controller and the node are this
# machine, on 127.0.0.1 only; everything (config, state, logs, pid files) lives in $FAIRBENCH_SLURM_DIR
# (default /tmp/fairbench-slurm), and the Slurm commands find the cluster through SLURM_CONF. The
# daemons run as root (so do the jobs): this is a test cluster, not a shared one. `stop` ends only
# the processes whose pid files this script wrote.
set -euo pipefail

DIR="${FAIRBENCH_SLURM_DIR:-/tmp/fairbench-slurm}"
CONF="$DIR/slurm.conf"
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"

die() { echo "error: $*" >&2; exit 2; }

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || die "Slurm is not installed (missing: ${missing[*]}); run this script as root to install it, or: apt-get install ${missing[*]}"
    echo "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get could not install ${missing[*]}"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$CONF" <<EOF
# written by scripts/slurm-local.sh: a one-node test cluster on this machine
ClusterName=fairbench-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
JobRequeue=1
# a cancelled job's processes get SIGTERM, then SIGKILL this many seconds later
KillWait=10
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if alive "$MUNGE_PID"; then return; fi
    [ -f /etc/munge/munge.key ] || { [ "$(id -u)" -eq 0 ] && mungekey --create >/dev/null 2>&1 || true; }
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    else
        /usr/sbin/munged --pid-file="$MUNGE_PID"
    fi
    echo "$MUNGE_PID" > "$DIR/munged.pidfile"  # remember that this script started it
}

wait_for_node() {
    local i
    for i in $(seq 1 60); do
        if SLURM_CONF="$CONF" sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
            return 0
        fi
        sleep 1
    done
    die "the Slurm node did not come up within 60 s; see $DIR/log/"
}

start() {
    install_packages
    [ "$(id -u)" -eq 0 ] || die "start the test cluster as root (its daemons run as root)"
    mkdir -p "$DIR"
    start_munge
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        echo "Slurm is already running (SLURM_CONF=$CONF)"
        return
    fi
    write_conf
    alive "$DIR/slurmctld.pid" || SLURM_CONF="$CONF" slurmctld -f "$CONF" -c
    alive "$DIR/slurmd.pid" || SLURM_CONF="$CONF" slurmd -f "$CONF"
    wait_for_node
    echo "Slurm is up: one node ($(hostname -s), $(nproc) CPUs), partition debug"
    echo "export SLURM_CONF=$CONF"
}

stop_pid() {  # stop the daemon whose pid file is $1, waiting up to 20 s
    local pidfile="$1" pid i
    alive "$pidfile" || return 0
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    [ -f "$CONF" ] && SLURM_CONF="$CONF" scancel --user="$(id -un)" 2>/dev/null || true
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    if [ -f "$DIR/munged.pidfile" ]; then
        stop_pid "$(cat "$DIR/munged.pidfile")"
        rm -f "$DIR/munged.pidfile"
    fi
    echo "Slurm stopped"
}

status() {
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
        SLURM_CONF="$CONF" sinfo
    else
        echo "not running"; return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
