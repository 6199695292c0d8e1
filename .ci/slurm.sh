# A real single-node SLURM cluster for CI, from Debian's packages (Slurm 22.05), with fake GPUs.
#
#   source .ci/slurm.sh
#   slurm_install            # apt-get: munge slurmctld slurmd slurm-client (needs root)
#   slurm_start              # starts munged, slurmctld, slurmd; stops them by PID on EXIT
#
# The config goes to /etc/slurm (the default path: `srun` inside batch jobs, as the Snakemake
# executor uses it, finds no other); a config already there is put back on EXIT. State, spool and
# logs live in a fresh directory per start.
# The GPUs are /dev/null clones (`mknod c 1 3`) declared as gres: jobs asking for `--gpus=1` get
# CUDA_VISIBLE_DEVICES=0. This proves scheduling and resource requests, not GPU code.
# No slurmdbd: `sacct` does not work, so snakemake must use `--slurm-status-command squeue`
# (MinJobAge below keeps finished jobs visible to squeue long enough).

SLURM_CI_GPUS=${SLURM_CI_GPUS:-2}
SLURM_CI_DIR=""
SLURM_CI_PIDS=()

slurm_install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client >/dev/null
}

slurm_stop() {
    local pid f
    for pid in "${SLURM_CI_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SLURM_CI_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    SLURM_CI_PIDS=()
    for f in slurm.conf gres.conf; do
        if [[ -n "$SLURM_CI_DIR" && -e "$SLURM_CI_DIR/$f.orig" ]]; then
            mv -f "$SLURM_CI_DIR/$f.orig" "/etc/slurm/$f"
        elif [[ -n "$SLURM_CI_DIR" && -e "$SLURM_CI_DIR/$f" ]]; then
            rm -f "/etc/slurm/$f"
        fi
    done
}

_slurm_write_config() {
    local dir=$1 node cpus mem gres_files="" i
    node=$(hostname -s)
    read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {
        for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } print v["CPUs"], v["RealMemory"] }')
    for i in $(seq 0 $((SLURM_CI_GPUS - 1))); do
        mknod "$dir/dev/nvidia$i" c 1 3
    done
    cat >"$dir/slurm.conf" <<CONF
ClusterName=mmcci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
DefMemPerCPU=1000
MinJobAge=300
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem - 512)) Gres=gpu:$SLURM_CI_GPUS State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    : >"$dir/gres.conf"
    for i in $(seq 0 $((SLURM_CI_GPUS - 1))); do
        echo "NodeName=$node Name=gpu File=$dir/dev/nvidia$i" >>"$dir/gres.conf"
    done
    mkdir -p /etc/slurm
    for f in slurm.conf gres.conf; do
        if [[ -e "/etc/slurm/$f" ]]; then mv "/etc/slurm/$f" "$dir/$f.orig"; fi
        cp "$dir/$f" "/etc/slurm/$f"
    done
}

slurm_start() {
    SLURM_CI_DIR=$(mktemp -d /tmp/slurm-ci.XXXXXX)
    chmod 755 "$SLURM_CI_DIR"  # munged (user munge) writes its log and pid file below
    mkdir -p "$SLURM_CI_DIR"/{state,spool,dev,munge}
    trap slurm_stop EXIT
    _slurm_write_config "$SLURM_CI_DIR"
    export SLURM_CONF=/etc/slurm/slurm.conf

    # munged runs as user munge; its socket directory must belong to munge.
    mkdir -p /run/munge && chown munge:munge /run/munge "$SLURM_CI_DIR/munge"
    if ! pgrep -u munge -x munged >/dev/null; then
        runuser -u munge -- /usr/sbin/munged --pid-file="$SLURM_CI_DIR/munge/munged.pid" \
            --log-file="$SLURM_CI_DIR/munge/munged.log"
        SLURM_CI_PIDS+=("$(cat "$SLURM_CI_DIR/munge/munged.pid")")
    fi
    slurmctld -D -i -f "$SLURM_CONF" >"$SLURM_CI_DIR/slurmctld.out" 2>&1 &
    SLURM_CI_PIDS+=("$!")
    sleep 1
    slurmd -D -f "$SLURM_CONF" >"$SLURM_CI_DIR/slurmd.out" 2>&1 &
    SLURM_CI_PIDS+=("$!")
    local state=""
    for _ in $(seq 60); do
        state=$(timeout 5 sinfo -h -o %t 2>/dev/null || true)
        [[ "$state" == idle* ]] && break
        sleep 0.5
    done
    if [[ "$state" != idle* ]]; then
        echo "slurm: node not idle (state '$state'); logs in $SLURM_CI_DIR" >&2
        tail -n 20 "$SLURM_CI_DIR"/slurmctld.log "$SLURM_CI_DIR"/slurmd.log >&2 || true
        return 1
    fi
    echo "slurm: cluster up ($SLURM_CI_GPUS fake GPUs), state and logs in $SLURM_CI_DIR"
}
