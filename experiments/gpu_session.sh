#!/usr/bin/env bash
# Everything the CUDA paths need checked, in one pass on one GPU (README "Measured on a GPU"):
#   bash experiments/gpu_session.sh OUT_DIR [TRAIN_BUDGET_S]
# 1. experiments/gpu_check.py: every backend on CUDA (fp32, bf16 autocast) against float64 CPU,
#    and which SDPA kernels run with and without a padding mask;
# 2. arena-bench --device cuda: bf16 with the public implementations, 1K-16K, and ours at 64K;
#    fp32, ours, 4K and 16K;
# 3. bf16-mixed training with the compare_bbc_gpu preset at 2,048 bytes, 10 epochs: the four
#    design-card backends x seeds 0-2, then (if the budget allows) the other four, the runs of a
#    batch side by side on the one GPU; and a 200-step smoke run of the lra_listops preset;
# 4. (first) masked-byte self-pretraining of the tiny model for README "Making models cheaper"
#    (experiment=pretrain_bytes, 25 epochs, seeds 0-2, bf16-mixed), checkpoints kept for
#    `arena-train experiment=cheaper_bytes init_from=OUT_DIR/pretrain/pretrain_full_L512_s<seed>`.
# Run dirs land in OUT_DIR/runs (no checkpoints kept); read them with arena-compare OUT_DIR/runs.
# ARENA_DRY=1 runs the same steps on the CPU at toy sizes (a check of this script).
set -u
out=${1:-results/gpu}; budget=${2:-200}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
start=$(date +%s)
log() { echo "[gpu_session $(($(date +%s) - start)) s] $*"; }

if [ "${ARENA_DRY:-0}" = 1 ]; then
  dev=cpu; lengths="256"; long=1024; train_len=256; epochs=1; seeds="0"; pt_epochs=1
  train_args="trainer.accelerator=cpu trainer.precision=bf16-mixed data.limit_examples=64"
  listops_args="trainer.accelerator=cpu trainer.precision=bf16-mixed data.batch_size=4"
  lo_train=100; lo_eval=20; lo_steps=2
  check_args="--device cpu --lengths 256"
else
  dev=cuda; lengths="1024 4096 16384"; long=65536; train_len=2048; epochs=10; seeds="0 1 2"
  pt_epochs=25
  train_args=""; listops_args=""; check_args=""; lo_train=10000; lo_eval=500; lo_steps=200
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1
fi
$py -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'lightning', lightning.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else '')" \
  | tee "$out/versions.txt"

log "1. gpu_check"
timeout 90 $py experiments/gpu_check.py --out "$out" $check_args > "$out/gpu_check.log" 2>&1
log "gpu_check exit $?"; tail -n 20 "$out/gpu_check.log"

log "2. arena-bench"
timeout 120 $py -m attention_arena.bench --device $dev --dtype bf16 --no-isolate --peers \
  --lengths $lengths --warmup 3 --repeats 10 --gemm-size 8192 \
  --out "$out/bench_bf16" > "$out/bench_bf16.log" 2>&1
log "bench bf16 exit $?"; tail -n 45 "$out/bench_bf16.log"
timeout 45 $py -m attention_arena.bench --device $dev --dtype bf16 --no-isolate \
  --lengths $long --warmup 2 --repeats 5 --gemm-size 8192 \
  --out "$out/bench_bf16_long" > "$out/bench_bf16_long.log" 2>&1
log "bench bf16 long exit $?"; tail -n 14 "$out/bench_bf16_long.log"
timeout 45 $py -m attention_arena.bench --device $dev --dtype fp32 --no-isolate \
  --lengths 4096 16384 --warmup 3 --repeats 10 --gemm-size 8192 \
  --out "$out/bench_fp32" > "$out/bench_fp32.log" 2>&1
log "bench fp32 exit $?"; tail -n 14 "$out/bench_fp32.log"

# 3. training: one process per run, the runs of a batch side by side (each with its own data
# cache, so that no two write the same file), each capped by the time left.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}   # many processes side by side

log "4. self-pretraining ($pt_epochs epochs)"
pids=()
for s in $seeds; do
  ATTENTION_ARENA_CACHE="/tmp/arena_cache_pt$s" timeout 150 $py -m attention_arena.pretrain \
    experiment=pretrain_bytes attention=full seed=$s trainer=gpu trainer.max_epochs=$pt_epochs \
    "+trainer.max_time=00:00:02:00" $train_args hydra.run.dir="$out/pretrain/pretrain_full_L512_s$s" \
    > "$out/pretrain_s$s.log" 2>&1 & pids+=($!)
done
wait "${pids[@]}"; log "pretraining done"; tail -n 3 "$out"/pretrain_s*.log
train() {  # train JOB_NUM BACKEND SEED CAP_S
  local dir="$out/runs/$1_$2_L${train_len}_s$3"
  local cap; cap=00:00:$(printf %02d:%02d $(($4 / 60)) $(($4 % 60)))
  ATTENTION_ARENA_CACHE="/tmp/arena_cache_$1" timeout $(($4 + 60)) $py -m attention_arena.train \
    experiment=compare_bbc_gpu attention="$2" seed="$3" data.max_length=$train_len \
    trainer.max_epochs=$epochs logger=csv "+trainer.max_time=$cap" $train_args \
    hydra.run.dir="$dir" > "$dir.log" 2>&1
  rm -rf "$dir/checkpoints"
}
batch() {  # batch FIRST_JOB_NUM BACKEND... (needs NEED_S seconds of the budget left)
  local left=$((budget - ($(date +%s) - start - t_train)))
  [ $left -lt "$need" ] && { log "$left s left, $need s needed: skipped $*"; return; }
  local n=$1 pids=(); shift
  for b in "$@"; do
    for s in $seeds; do train $n "$b" $s $((left - 30)) & pids+=($!); n=$((n + 1)); done
  done
  wait "${pids[@]}"
}
log "3. training ($budget s)"
t_train=$(($(date +%s) - start))
ATTENTION_ARENA_CACHE=/tmp/arena_cache_listops timeout $((budget + 30)) $py -m attention_arena.train \
  experiment=lra_listops attention=full seed=0 data.listops_num_train=$lo_train \
  data.listops_num_val=$lo_eval data.listops_num_test=$lo_eval trainer.max_steps=$lo_steps \
  trainer.val_check_interval=$((lo_steps / 2)) logger=csv $listops_args \
  hydra.run.dir="$out/listops_smoke" > "$out/listops_smoke.log" 2>&1 &
listops=$!
need=60; t1=$(date +%s)
batch 0 full linformer longformer performer
need=$(($(date +%s) - t1 + 20)); log "batch 1 done"
batch 12 bigbird nystrom linear reformer
log "batch 2 done"
wait $listops; log "listops smoke exit $?"; rm -rf "$out/listops_smoke/checkpoints"
tail -n 14 "$out/listops_smoke.log"
for f in "$out"/runs/*/metrics.json; do
  $py -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['run_dir'].split('/')[-1],
m['status'], m.get('test_acc'), m.get('epochs'), m.get('steps'), round(m.get('wall_time_s') or 0),
round(m.get('train_tokens_per_s') or 0), round(m.get('peak_memory_mb') or 0), m.get('error'))" "$f"
done
log "done"
