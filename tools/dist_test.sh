#!/usr/bin/env bash
# Distributed evaluation with torchrun: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
# (multi-node and interpreter: see torchrun_tool in launcher.sh).
source "$(dirname "$0")/launcher.sh"
need 3 'CONFIG CHECKPOINT GPUS [tools/test.py options]' "$@"
torchrun_tool "$3" test.py "$1" "$2" "${@:4}"
