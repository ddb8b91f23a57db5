#!/usr/bin/env bash
# A single-node SLURM cluster on this host, for the tests: Debian's slurm-wlm and munge.
#
#   tests/slurm/cluster.sh start DIR   install if missing, write /etc/slurm/slurm.conf
#                                      (state and logs in DIR), start munged, slurmctld
#                                      and slurmd
#   tests/slurm/cluster.sh stop DIR    stop the daemons this script started, and put back
#                                      the slurm.conf it replaced
#
# The configuration goes where every Slurm command looks without being told (srun
# inside a batch job does not see the SLURM_CONF of the submitting shell). Root only.
# No slurmdbd, so no sacct: jobs are polled with squeue (MinJobAge keeps finished jobs
# visible long enough). The node advertises as many GPUs as it has cores, as generic
# resources backed by stand-in device files, so jobs that ask for a GPU are scheduled
# (and run on the CPU). Memory is not a consumable resource here: the profile's
# requests are sized for real GPU nodes, and must not serialise a 2-core test node.
set -euo pipefail

command=${1:?usage: cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
mkdir -p "$dir"
conf=/etc/slurm/slurm.conf

install() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q slurm-wlm munge >/dev/null
    }
}

write_conf() {
    local host cpus mem gpus devices=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty)
    host=$(hostname -s)
    cpus=$(nproc)
    gpus=$(( cpus < ${#devices[@]} ? cpus : ${#devices[@]} ))
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
    mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log" /etc/slurm
    for file in slurm.conf gres.conf; do
        if [ -e "/etc/slurm/$file" ] && [ ! -e "$dir/$file.orig" ]; then cp -p "/etc/slurm/$file" "$dir/$file.orig"; fi
    done
    touch "$dir/wrote-conf"
    cat > "$conf" <<CONF
ClusterName=dlsci-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=30
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    for ((i = 0; i < gpus; i++)); do
        echo "NodeName=$host Name=gpu File=${devices[i]}"
    done > /etc/slurm/gres.conf
}

start() {
    install
    write_conf
    if ! munge -n >/dev/null 2>&1; then  # no munged answering (pgrep would count zombies)
        mkdir -p /run/munge && chown munge:munge /run/munge
        [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged
        touch "$dir/started-munged"
    fi
    for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
    slurmctld -c -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 60); do
        if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            return
        fi
        sleep 1
    done
    echo "slurm did not come up; logs in $dir/log" >&2
    tail -n 20 "$dir"/log/*.log >&2 || true
    exit 1
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -f "$dir/$daemon.pid" ]; then
            pid=$(cat "$dir/$daemon.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            rm -f "$dir/$daemon.pid"
        fi
    done
    if [ -f "$dir/wrote-conf" ]; then
        for file in slurm.conf gres.conf; do
            if [ -e "$dir/$file.orig" ]; then mv "$dir/$file.orig" "/etc/slurm/$file"; else rm -f "/etc/slurm/$file"; fi
        done
        rm -f "$dir/wrote-conf"
    fi
    if [ -f "$dir/started-munged" ]; then
        pkill -x munged || true
        for _ in $(seq 50); do munge -n >/dev/null 2>&1 || break; sleep 0.1; done
        rm -f "$dir/started-munged"
    fi
}

case $command in
    start) start ;;
    stop) stop ;;
    *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
