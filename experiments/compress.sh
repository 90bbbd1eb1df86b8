#!/usr/bin/env bash
# The README's "Making models cheaper" table (quantization and pruning): train a 2-layer,
# width-256 model (model=base with 2 layers: 4 heads of 64, MLP 1024) on BBC News at 512 BPE
# tokens for 2 epochs (about 10 minutes on 2 idle CPU cores), then measure its variants with
# arena-compress (about 15 minutes, a 1-epoch fine-tune of the head-pruned model included):
#   bash experiments/compress.sh [RUN_DIR] [RESULTS_DIR]
# The compressed models stay in RUN_DIR/compress/models; the table, CSV, JSON and plot are
# copied to RESULTS_DIR (default results/compress).
set -euo pipefail
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}   # spinning OpenMP threads distort timings
py=${PYTHON:-python}
run=${1:-outputs/compress/base2_L512}
results=${2:-results/compress}
if [ ! -d "$run/checkpoints" ]; then
  "$py" -m attention_arena.train model=base model.num_layers=2 model.positions=sinusoidal \
    model.pooling=mean data.max_length=512 trainer.max_epochs=2 logger=csv \
    hydra.run.dir="$run"
fi
"$py" -m attention_arena.compress "$run" --threads 2 --repeats 5 \
  --variants fp32,bf16,int8,int8_torchao,prune30,prune50,prune70,heads50,heads50+ft1,heads50+ft1+int8
mkdir -p "$results"
cp "$run"/compress/compress.{md,csv,json,png} "$results"/
