#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the tests of `aaer reproduce --executor
# slurm` (and for trying it by hand). Debian's slurm-wlm 22.05 with munge, no cgroups.
#
#   bash scripts/slurm.sh install      # apt-get install slurm-wlm munge when missing (root)
#   bash scripts/slurm.sh start DIR    # config, state and logs in DIR; prints SLURM_CONF=...
#   bash scripts/slurm.sh stop DIR     # stops the daemons started in DIR
#
# `start` writes DIR/slurm.conf (the node is this machine under `hostname -s`, free ports, a
# munge socket of its own, proctrack/linuxproc, task/none, select/cons_tres), starts munged,
# slurmctld and slurmd in the foreground in the background, and waits until the node is idle.
# Clients (sbatch, squeue, scancel, submitit) find the cluster through SLURM_CONF.
set -euo pipefail

need() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
         command -v munged >/dev/null && command -v sbatch >/dev/null; }

install() {
  if need; then return 0; fi
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
    echo "slurm.sh: Slurm is not installed and this is not root with apt-get; install" \
         "slurm-wlm and munge (Debian: apt-get install -y slurm-wlm munge)" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
  local dir; dir="$(mkdir -p "$1" && cd "$1" && pwd)"
  install
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(nproc)"
  mem="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat > "$dir/slurm.conf" <<EOF
ClusterName=aaer
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  head -c 1024 /dev/urandom > "$dir/munge.key"
  chmod 400 "$dir/munge.key"
  munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
         --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
         --seed-file="$dir/munge.seed" --force
  export SLURM_CONF="$dir/slurm.conf"
  nohup slurmctld -D -f "$SLURM_CONF" > "$dir/log/slurmctld.out" 2>&1 &
  echo $! > "$dir/slurmctld.fg.pid"
  nohup slurmd -D -f "$SLURM_CONF" > "$dir/log/slurmd.out" 2>&1 &
  echo $! > "$dir/slurmd.fg.pid"
  for _ in $(seq 1 120); do
    if sinfo -h -o "%T" 2>/dev/null | grep -qx "idle"; then
      echo "SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm.sh: the node did not become idle within 60 s; last lines of the logs:" >&2
  tail -n 5 "$dir"/log/*.out "$dir"/log/*.log >&2 || true
  stop "$dir"
  return 1
}

stop() {
  local dir="$1"
  for f in slurmd.fg.pid slurmctld.fg.pid munged.pid; do
    if [ -f "$dir/$f" ]; then
      kill "$(cat "$dir/$f")" 2>/dev/null || true
    fi
  done
  for f in slurmd.fg.pid slurmctld.fg.pid munged.pid; do
    if [ -f "$dir/$f" ]; then
      for _ in $(seq 1 50); do kill -0 "$(cat "$dir/$f")" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$(cat "$dir/$f")" 2>/dev/null || true
      rm -f "$dir/$f"
    fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: slurm.sh start DIR}" ;;
  stop) stop "${2:?usage: slurm.sh stop DIR}" ;;
  *) echo "usage: slurm.sh install | start DIR | stop DIR" >&2; exit 2 ;;
esac
