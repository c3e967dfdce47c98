#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py options]
# (multi-node and interpreter: see torchrun_tool in launcher.sh).
source "$(dirname "$0")/launcher.sh"
need 2 'CONFIG GPUS [tools/train.py options]' "$@"
torchrun_tool "$2" train.py "$1" "${@:3}"
