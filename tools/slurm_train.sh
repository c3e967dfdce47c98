#!/usr/bin/env bash
# Training on a Slurm cluster: tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [options]
# (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON: see srun_tool in launcher.sh).
source "$(dirname "$0")/launcher.sh"
need 4 'PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]' "$@"
srun_tool "$1" "$2" train.py "$3" --work-dir="$4" "${@:5}"
