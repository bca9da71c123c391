#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian's slurm-wlm + munge), for trying the cluster
# path (scripts/slurm_array.sbatch) without a cluster:
#   scripts/slurm.sh start DIR [CPUS]   configure DIR, start munged, slurmctld, slurmd; print SLURM_CONF
#   scripts/slurm.sh stop DIR
# The node is this host with CPUS CPUs (default 24: three tasks of --cpus-per-task=8) and three
# count-only GPUs (no devices), so the unchanged script's --gres=gpu:1 is schedulable; every
# daemon runs as the current user with its state, logs and sockets in DIR. Client commands need
# `export SLURM_CONF=DIR/slurm.conf`. `sacct` reads the job completion log (jobcomp/filetxt).
set -euo pipefail
cmd=${1:?usage: slurm.sh start|stop DIR [CPUS]}
dir=$(realpath -m "${2:?usage: slurm.sh start|stop DIR [CPUS]}")
cpus=${3:-24}
for exe in slurmctld slurmd munged; do
  command -v $exe >/dev/null || [ -x /usr/sbin/$exe ] || {
    echo "slurm.sh: $exe is not installed (Debian: apt-get install slurm-wlm munge)" >&2; exit 2; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
stop() {
  for name in slurmd slurmctld munged; do
    [ -f "$dir/$name.pid" ] && kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
  done
  for name in slurmd slurmctld munged; do
    for _ in $(seq 50); do
      [ -f "$dir/$name.pid" ] && kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || break; sleep 0.2
    done
    rm -f "$dir/$name.pid"
  done
}
case $cmd in
  start)
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    chmod 700 "$dir/munge"
    [ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
    chmod 600 "$dir/munge/munge.key"
    user=$(id -un); host=$(hostname -s)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=steerlab
SlurmctldHost=$host
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.log
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=1000 Gres=gpu:3 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    for g in 0 1 2; do  # stand-in devices (null devices as root): SLURM counts and binds them
      [ -e "$dir/gpu$g" ] || mknod "$dir/gpu$g" c 1 3 2>/dev/null || touch "$dir/gpu$g"
    done
    printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/gpu[0-2]\n' "$host" "$dir" >"$dir/gres.conf"
    stop
    export SLURM_CONF=$dir/slurm.conf  # the daemons find gres.conf beside it
    /usr/sbin/munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed"
    /usr/sbin/slurmctld -f "$dir/slurm.conf" -i
    /usr/sbin/slurmd -f "$dir/slurm.conf"
    for _ in $(seq 60); do
      sinfo -h -o %t 2>/dev/null | grep -qx idle && { echo "$SLURM_CONF"; exit 0; }
      sleep 0.5
    done
    echo "slurm.sh: the node did not become idle within 30 s; logs in $dir" >&2
    sinfo >&2 || true
    exit 2
    ;;
  stop) stop ;;
  *) echo "usage: slurm.sh start|stop DIR [CPUS]" >&2; exit 2 ;;
esac
