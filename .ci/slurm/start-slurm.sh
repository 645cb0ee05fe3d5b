#!/usr/bin/env bash
# Start a one-node Slurm cluster on localhost for tests: its own munged, slurmctld and slurmd, all
# state, logs, sockets and pidfiles under $SLURM_DIR (default /tmp/finetune-slurm). Stop it with
# stop-slurm.sh and the same SLURM_DIR. Needs root and Debian's Slurm 22.05 / MUNGE 0.5
# (install-slurm.sh). Tested on Debian bookworm.
#
# What it takes to make this work (each learnt the hard way):
# - No cgroups (proctrack/linuxproc, task/none) and no accounting storage: runs in a container, no slurmdbd.
#   Memory is enforced as on a cluster without cgroups: jobacct_gather/linux samples each step every second and
#   OverMemoryKill kills one past its --mem (`slurmstepd: error: ... exceeded memory limit ..., being killed`).
# - slurm.conf must be at /etc/slurm/slurm.conf: the Snakemake jobstep plugin drops SLURM_CONF from the
#   environment of its inner `srun`, which then fails with "Could not establish a configuration source".
#   We link it there, and refuse to replace a real file (a real Slurm installation).
# - Accounting off means `sacct` fails: the Snakemake profile uses `slurm-status-command: squeue`, and
#   MinJobAge is large so finished jobs stay visible to squeue (`squeue --states=all`).
# - DefMemPerCPU: without it, a job without --mem takes the whole node and jobs run one at a time.
# - MaxTime 2 days, as real clusters limit a partition's walltime: a job asking for more is refused at start
#   (tests/test_slurm.py); the profile's runtimes, retries included, stay within it.
# - NodeName must be `hostname -s` (CI machines get other names); CPUs/cores as slurmd detects them.
# - Our own munged (own key, socket, pidfile: AuthInfo=socket=...) so a system munged, if any, is
#   neither used nor stopped.
set -euo pipefail

D=${SLURM_DIR:-/tmp/finetune-slurm}
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
PARTITION=${SLURM_PARTITION_NAME:-debug}

die() { echo "start-slurm: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (SlurmUser=root, /etc/slurm/slurm.conf)"
for cmd in munged munge unmunge slurmctld slurmd sinfo sbatch squeue; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run .ci/slurm/install-slurm.sh first"
done
if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    die "/etc/slurm/slurm.conf is a real file (a Slurm installation?): not replacing it"
fi
for f in "$D/run/slurmctld.pid" "$D/run/slurmd.pid" "$D/munge/munged.pid"; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        die "already running ($f); stop it first: SLURM_DIR=$D $(dirname "$0")/stop-slurm.sh"
    fi
done
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use (another Slurm?); set SLURMCTLD_PORT/SLURMD_PORT or stop it"
    fi
done

H=$(hostname -s 2>/dev/null || uname -n | cut -d. -f1)
MEM=$(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # MB (no procps on minimal images)
# CPUs/Boards/Sockets/Cores/Threads exactly as slurmd detects them; RealMemory lowered to 90%.
NODEHW=$(slurmd -C | head -1 | sed -E "s/^NodeName=[^ ]+ //; s/RealMemory=[0-9]+/RealMemory=$MEM/")

mkdir -p "$D"/{etc,state,spool,log,run,munge}
# munged runs as user munge and must reach its files: every directory above them must be searchable
# by it (e.g. a directory made by mktemp -d under /tmp, after this chmod).
chmod 755 "$D"
runuser -u munge -- test -x "$D" \
    || die "user munge cannot reach $D: pick a SLURM_DIR whose parents others may enter (e.g. under /tmp)"

# --- MUNGE: own key and socket -------------------------------------------------------------------
M=$D/munge
chown munge:munge "$M"
chmod 755 "$M"  # munged requires its socket directory to be searchable by all
if [ ! -s "$M/munge.key" ]; then
    runuser -u munge -- mungekey --create --keyfile "$M/munge.key" >/dev/null
fi
chmod 600 "$M/munge.key"
runuser -u munge -- munged --socket "$M/munge.socket" --key-file "$M/munge.key" \
    --pid-file "$M/munged.pid" --log-file "$M/munged.log" --seed-file "$M/munged.seed"
for _ in $(seq 1 50); do [ -S "$M/munge.socket" ] && break; sleep 0.1; done
munge --socket "$M/munge.socket" -n | unmunge --socket "$M/munge.socket" >/dev/null \
    || die "munged does not answer (log: $M/munged.log)"

# --- Slurm ---------------------------------------------------------------------------------------
cat > "$D/etc/slurm.conf" <<EOF
# One-node test cluster written by $(basename "$0"); state in $D
ClusterName=finetune-test
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$M/munge.socket
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=3600
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
NodeName=$H NodeAddr=127.0.0.1 $NODEHW State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=2-00:00:00 State=UP
EOF
mkdir -p /etc/slurm
ln -sfn "$D/etc/slurm.conf" /etc/slurm/slurm.conf

# Both daemonize; their PIDs land in $D/run/*.pid. -c: start clean, ignore saved state.
slurmctld -c
slurmd -c

for _ in $(seq 1 120); do
    if [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; then
        echo "start-slurm: node $H idle (partition $PARTITION, state in $D)"
        exit 0
    fi
    sleep 0.5
done
sinfo -N -l >&2 || true
tail -n 20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
die "node $H did not become idle"
