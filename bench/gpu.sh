#!/usr/bin/env bash
# The GPU check: one command on a machine with a GPU -> a table of training images/s (ResNet34 at
# 224 px, fp32 and autocast + channels_last), cache building, push and a revision epoch at CUB size,
# and torchrun with one process against a plain run. Under 8 minutes on one GPU.
#
#   bench/gpu.sh              # on the GPU machine, from anywhere
#   bench/gpu.sh --dry-run    # every step on CPU at toy size: checks that each one starts
#
# The steps are in bench/gpu.py (its docstring says what each measures). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu.py "$@"
