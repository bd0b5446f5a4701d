#!/usr/bin/env bash
# The checks that need a GPU, in one short run (a few minutes on one GPU):
#   1. every CUDA test (they skip on machines without one);
#   2. the load benchmark's CUDA mode (--quick), which prints the ratios to stock and to
#      the pinned host-to-device bandwidth measured in the same run;
#   3. the save benchmark's CUDA mode, saves only: the async blocking time against one pinned
#      device-to-host copy of the state (target 1.5x) and the pipelined snapshot.
# Run from the repository root after `make setup`: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q -rs tests/checkpoint/storage/test_gpu_reads.py tests -k "cuda or gpu or GPU"
"$PY" benchmarks/bench_load.py --device cuda:0 --quick
"$PY" benchmarks/bench_save.py --device cuda:0 --skip-training --repeats 3 --settle-s 1 --no-plot
