#!/usr/bin/env bash
# Cost vs length of every attention backend (and the public implementations it is compared
# with), forward + backward of the whole module, fp32, B=1, 4 heads x 64, D=256:
#   bash experiments/scaling.sh [OUT_DIR] [extra arena-bench args, e.g. --device cuda --dtype bf16
#                                          or attention.k=128 --opt longformer.window=512]
# Needs the peers for the dashed lines: pip install -e '.[peers]'
set -euo pipefail
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}   # spinning OpenMP threads distort 2-thread timings
out=${1:-results/scaling}; shift || true
arena-bench --lengths 512 1024 2048 4096 8192 16384 --threads 2 --repeats 5 --warmup 2 \
  --peers --out "$out" "$@"
