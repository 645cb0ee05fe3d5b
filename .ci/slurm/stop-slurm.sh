#!/usr/bin/env bash
# Stop the one-node cluster started by start-slurm.sh (same SLURM_DIR): cancel its jobs, then stop
# slurmd, slurmctld and its munged by the PIDs in their pidfiles (TERM, then KILL after 10 s), and
# remove the /etc/slurm/slurm.conf link if it points into SLURM_DIR. Safe to run twice, or after a
# failed start. Never touches processes it did not start.
set -uo pipefail

D=${SLURM_DIR:-/tmp/finetune-slurm}

stop_pid() {  # pidfile name
    local f=$1 name=$2 pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop-slurm: $name ($pid) ignored TERM, sending KILL" >&2
            kill -9 "$pid" 2>/dev/null
        fi
        echo "stop-slurm: stopped $name ($pid)"
    fi
    rm -f "$f"
}

# Running jobs: cancel them while slurmctld is still up, so no job steps outlive the cluster.
if [ -s "$D/run/slurmctld.pid" ] && kill -0 "$(cat "$D/run/slurmctld.pid")" 2>/dev/null \
        && [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$D/etc/slurm.conf" ]; then
    jobs=$(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        scancel $jobs 2>/dev/null
        for _ in $(seq 1 50); do
            [ -z "$(squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

stop_pid "$D/run/slurmd.pid" slurmd
stop_pid "$D/run/slurmctld.pid" slurmctld
stop_pid "$D/munge/munged.pid" munged

if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$D/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
