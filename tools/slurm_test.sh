#!/usr/bin/env bash
# Evaluation on a Slurm cluster: tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [options]
# (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS, PYTHON: see srun_tool in launcher.sh).
source "$(dirname "$0")/launcher.sh"
need 4 'PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py options]' "$@"
srun_tool "$1" "$2" test.py "$3" "$4" "${@:5}"
