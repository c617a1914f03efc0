#!/usr/bin/env bash
# A real SLURM test: install Debian's SLURM and munge, start a single-node cluster on
# localhost, run the tiny demo through `--profile workflow/profiles/slurm`, check that every
# job went through sbatch and completed, and stop the daemons this script started (by PID).
#
# Needs root and apt-get (CI machines, throw-away containers). Usage, from the repository:
#     sudo bash tests/slurm/run_slurm_test.sh [python-venv-bin-dir]
# Prints the job ids it saw complete. Exit status 0 on success.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
VENV_BIN=${1:-$REPO/.venv/bin}
WORK=$(mktemp -d /tmp/grape-slurm.XXXXXX)
HOST=$(hostname -s)
NCPU=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
PIDS=()

log() { printf '[slurm-test] %s\n' "$*"; }

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        log "FAILED; daemon logs follow"
        tail -n 40 "$WORK"/slurmctld.log "$WORK"/slurmd.log 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "needs root and apt-get"; exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm, slurmctld, slurmd, munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmctld slurmd munge >/dev/null
fi

# --- munge --------------------------------------------------------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged --pid-file=/run/munge/grape-test.pid
    sleep 0.5
    PIDS+=("$(cat /run/munge/grape-test.pid)")
fi
munge -n | unmunge >/dev/null

# --- slurm.conf (srun inside a job reads /etc/slurm/slurm.conf, not SLURM_CONF) ----------
mkdir -p /etc/slurm "$WORK/spool/ctld" "$WORK/spool/d"
if [ -f /etc/slurm/slurm.conf ] && ! grep -q "grape-slurm-test" /etc/slurm/slurm.conf; then
    cp /etc/slurm/slurm.conf "$WORK/slurm.conf.orig"
fi
cat > /etc/slurm/slurm.conf <<CONF
# grape-slurm-test: single-node cluster written by tests/slurm/run_slurm_test.sh
ClusterName=grape
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/spool/ctld
SlurmdSpoolDir=$WORK/spool/d
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
NodeName=$HOST CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -f /etc/slurm/slurm.conf
slurmd -f /etc/slurm/slurm.conf
for _ in $(seq 100); do [ -s "$WORK/slurmctld.pid" ] && [ -s "$WORK/slurmd.pid" ] && break; sleep 0.1; done
PIDS+=("$(cat "$WORK/slurmctld.pid")" "$(cat "$WORK/slurmd.pid")")
for _ in $(seq 60); do
    sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break; sleep 1
done
sinfo
log "cluster up: $HOST, $NCPU CPUs, $MEM_MB MB"

# --- the tiny demo through the SLURM profile -------------------------------------------
mkdir -p "$WORK/wf"
cp -r "$REPO/Snakefile" "$REPO/config.yaml" "$REPO/rules" "$REPO/workflow" "$REPO/grape" "$REPO/envs" "$WORK/wf/"
cp "$REPO/tests/slurm/tiny.yaml" "$WORK/wf/tiny.yaml"
cd "$WORK/wf"
export PATH="$VENV_BIN:$PATH"
# Poll every few seconds (the profile keeps the plugin's gentler default for real clusters).
snakemake --profile workflow/profiles/slurm --configfile tiny.yaml \
    --default-resources slurm_partition=debug --slurm-init-seconds-before-status-checks 3 \
    > "$WORK/snakemake.log" 2>&1 || { tail -n 60 "$WORK/snakemake.log"; exit 1; }

# --- checks: every job went through sbatch (except the workflow's declared localrules, which
# only plan and merge files) and every SLURM job completed ---------------------------------
mapfile -t remote < <(grep -oP '^rule \K\w+(?=:)' "$WORK/snakemake.log" || true)
mapfile -t local < <(grep -oP '^localrule \K\w+(?=:)' "$WORK/snakemake.log" | grep -vx all || true)
mapfile -t jobids < <(grep -oP 'SLURM jobid \K[0-9]+' "$WORK/snakemake.log" | sort -un)
log "jobs submitted to SLURM: ${remote[*]}"
log "declared localrules run on the submit host: ${local[*]:-none}"
log "SLURM job ids: ${jobids[*]}"
[ "${#remote[@]}" -gt 0 ] || { log "no job went through sbatch"; exit 1; }
[ "${#jobids[@]}" -eq "${#remote[@]}" ] || { log "${#remote[@]} jobs but ${#jobids[@]} SLURM job ids"; exit 1; }
declared=$(cd "$WORK/wf" && grep -hA20 '^localrules:' rules/*.smk Snakefile 2>/dev/null | grep -oP '^\s+\K\w+(?=,)' || true)
for rule in "${local[@]}"; do
    grep -qx "$rule" <<<"$declared" || { log "job of rule $rule ran locally but is not a declared localrule"; exit 1; }
done
for heavy in train evaluate; do
    printf '%s\n' "${remote[@]}" | grep -qx "$heavy" || { log "rule $heavy did not go through sbatch"; exit 1; }
done
for id in "${jobids[@]}"; do
    state=$(scontrol show job "$id" 2>/dev/null | grep -oP 'JobState=\K\S+' || echo UNKNOWN)
    printf '[slurm-test] job %s %s\n' "$id" "$state"
    [ "$state" = COMPLETED ] || { log "job $id did not complete ($state)"; exit 1; }
done
[ -s results/tiny/report/summary.md ] || { log "no summary written"; exit 1; }
log "OK: ${#jobids[@]} jobs submitted with sbatch, all COMPLETED"
cd / && rm -rf "$WORK"
