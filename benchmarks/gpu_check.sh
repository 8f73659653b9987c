#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): fits in 9 minutes on one GPU.
#   benchmarks/gpu_check.sh [--device cuda] [--budget 520] [--data-root DIR] [--dry-run]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python -m benchmarks.gpu_check "$@"
