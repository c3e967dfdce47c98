#!/usr/bin/env bash
# What tools/dist_{train,test}.sh and tools/slurm_{train,test}.sh share; sourced by them.
set -euo pipefail
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# need N USAGE ARGS...: exit 2 with the usage line unless ARGS has at least N items.
need() {
    if [ $(($# - 2)) -lt "$1" ]; then
        echo "usage: $0 $2" >&2
        exit 2
    fi
}

# torchrun_tool GPUS SCRIPT ARGS...: GPUS processes of tools/SCRIPT on this node.
# Multi-node: NNODES, NODE_RANK (0..NNODES-1), MASTER_ADDR (node 0's address) and PORT set
# alike on every node; PYTHON selects the interpreter.
torchrun_tool() {
    local gpus=$1 script=$2
    shift 2
    exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" \
        --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
        --master_port="${PORT:-29500}" --nproc_per_node="$gpus" \
        "$TOOLS/$script" --launcher pytorch "$@"
}

# srun_tool PARTITION JOB_NAME SCRIPT ARGS...: tools/SCRIPT as one Slurm task per GPU (the
# Runner reads SLURM_PROCID / SLURM_NTASKS / SLURM_NODELIST). Environment: GPUS (total,
# default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5), SRUN_ARGS (extra srun
# arguments, e.g. "--quotatype=auto"), PYTHON.
srun_tool() {
    local partition=$1 job=$2 script=$3 gpus=${GPUS:-8} per_node=${GPUS_PER_NODE:-8}
    shift 3
    # Fewer GPUs than a node has: ask for just those on one node.
    local tasks=$((gpus < per_node ? gpus : per_node))
    # SRUN_ARGS is split on spaces on purpose.
    # shellcheck disable=SC2086
    exec srun -p "$partition" --job-name="$job" --gres=gpu:"$tasks" --ntasks="$gpus" \
        --ntasks-per-node="$tasks" --cpus-per-task="${CPUS_PER_TASK:-5}" --kill-on-bad-exit=1 \
        ${SRUN_ARGS:-} "${PYTHON:-python}" -u "$TOOLS/$script" --launcher slurm "$@"
}
