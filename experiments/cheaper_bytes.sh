#!/usr/bin/env bash
# README "Making models cheaper": self-pretraining and distillation on byte-level BBC News
# (512 bytes, the main job's tiny 2 x 64 model, 2 epochs of fine-tuning; conf/experiment/
# cheaper_bytes.yaml and pretrain_bytes.yaml). Writes results/pretrain/ and results/distill/
# (run directories; git keeps their metrics.json and predictions.csv) and their tables.
#   experiments/cheaper_bytes.sh [pretrain|finetune|scratch|distill|pretrain10|finetune10|
#                                 distill10|conv_pretrain|conv_scratch|conv_finetune|
#                                 conv_long|conv_distill|conv_distill_long|
#                                 conv_distill_longformer|lr_probe|conv_pretrain30|conv_long30|
#                                 distill_backends|distill_linear_seeds|distill_linear_t4|
#                                 distill_init_teacher|conv_long30_seeds|conv_transfer30|
#                                 tables]...   (default: all)
# About 30 minutes of an idle 2-core CPU for the first five (pretraining 1 epoch ~5 min, 18
# classifier runs of ~70 s); the 10-epoch pretraining adds ~50 min and 9 runs; the conv_* steps
# ~40 min (pretraining ~10 min, 15 runs of 2 epochs ~30 s each, 9 runs of 10 epochs ~2 min);
# lr_probe ~15 min, conv_pretrain30 ~35 min, conv_long30 ~6 min, distill_backends ~15 min (24
# runs of 2 epochs), distill_linear_seeds ~10 min (21 runs), distill_linear_t4 ~6 min,
# distill_init_teacher ~15 min (26 runs), conv_long30_seeds ~15 min, conv_transfer30 ~20 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
R=results
SEEDS=(0 1 2)
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(pretrain finetune scratch distill pretrain10 finetune10 distill10
                                  conv_pretrain conv_scratch conv_finetune conv_long conv_distill
                                  conv_distill_long conv_distill_longformer lr_probe conv_pretrain30
                                  conv_long30 distill_backends distill_linear_seeds
                                  distill_linear_t4 distill_init_teacher conv_long30_seeds
                                  conv_transfer30 tables)
train() { "$PY" -m attention_arena.train experiment=cheaper_bytes "$@"; }
conv5() { train model.embedding_conv=5 "$@"; }
# long540 PREFIX NAME PRETRAIN SEED: 540 steps (10 epochs) of full from scratch, without and with
# the convolution, and of full + conv fine-tuned from the pretraining run PRETRAIN (as NAME)
long540() {
  local p=$1 i=$2 pre=$3 s=$4
  train attention=full seed=$s trainer.max_epochs=10 \
    hydra.run.dir=$R/pretrain/${p}long_scratch_full_L512_s$s
  conv5 attention=full seed=$s trainer.max_epochs=10 \
    hydra.run.dir=$R/pretrain/${p}long_scratch_conv5_full_L512_s$s
  conv5 attention=full seed=$s trainer.max_epochs=10 init_from=$R/pretrain/$pre \
    hydra.run.dir=$R/pretrain/${p}long_${i}_conv5_full_L512_s$s
}
# teacher SEED: the full model of SEED fine-tuned from the 10-epoch pretraining (finetune10 for
# seeds 0-2, distill_linear_seeds for 3-9)
teacher() {
  if [ "$1" -ge 3 ]; then echo $R/pretrain/extra_init10_full_L512_s$1
  else echo $R/pretrain/init10_full_L512_s$1; fi
}
# distil10 BACKEND SEED NAME [overrides]: a BACKEND student of seed SEED taught by teacher SEED
# (alpha 0.9, temperature $TEMP or 2), in results/distill/NAME
distil10() {
  local a=$1 s=$2 name=$3; shift 3
  train attention=$a seed=$s distill.teacher=$(teacher $s) distill.alpha=0.9 \
    distill.temperature=${TEMP:-2.0} "$@" hydra.run.dir=$R/distill/$name
}
# distil_conv5 BACKEND SEED PREFIX [overrides]: a BACKEND + conv5 student taught by the full + conv5
# model of SEED fine-tuned from the convolutional pretraining (PREFIX long_: the 540-step one)
distil_conv5() {
  local a=$1 s=$2 p=$3; shift 3
  conv5 attention=$a seed=$s "$@" distill.teacher=$R/pretrain/${p}init_conv5_full_L512_s$s \
    distill.alpha=0.9 distill.temperature=2.0 \
    hydra.run.dir=$R/distill/${p}student_conv5_a09_${a}_L512_s$s
}

for step in "${steps[@]}"; do
  case $step in
  pretrain)  # masked-byte pretraining of the encoder (full attention), once
    "$PY" -m attention_arena.pretrain experiment=pretrain_bytes attention=full seed=0 \
      hydra.run.dir=$R/pretrain/pretrain_full_L512_s0 ;;
  finetune)  # fine-tune the pretrained encoder with full and with linformer attention
    for a in full linformer; do for s in "${SEEDS[@]}"; do
      train attention=$a seed=$s init_from=$R/pretrain/pretrain_full_L512_s0 \
        hydra.run.dir=$R/pretrain/init_${a}_L512_s$s
    done; done ;;
  scratch)  # the same training from random weights. full from scratch is results/bytes_full_512
    # (README "What the comparison teaches": arena-compare-run --no-baseline attention=full
    # data.max_length=512 seed=0,1,2 tokenizer=bytes, the same settings), rerun here only if its
    # checkpoints are missing
    # (its checkpoints, not kept in git, are a distillation teacher below)
    [ -f $R/bytes_full_512/2_full_L512_s2/checkpoints/last.ckpt ] ||
      "$PY" -m attention_arena.compare_run \
      --no-baseline --sweep-dir $R/bytes_full_512 attention=full data.max_length=512 \
      seed=0,1,2 tokenizer=bytes
    for s in "${SEEDS[@]}"; do
      train attention=linformer seed=$s hydra.run.dir=$R/pretrain/scratch_linformer_L512_s$s
    done ;;
  distill)  # linformer students from scratch, taught by the full model of their seed: the
    # self-pretrained one (alpha 0.5, 0.9, 1.0) and the one from scratch (alpha 0.9)
    for s in "${SEEDS[@]}"; do
      train attention=linformer seed=$s distill.teacher=$R/pretrain/init_full_L512_s$s \
        distill.alpha=0.5 distill.temperature=2.0 hydra.run.dir=$R/distill/student_linformer_L512_s$s
      for a in 0.9 1.0; do
        train attention=linformer seed=$s distill.teacher=$R/pretrain/init_full_L512_s$s \
          distill.alpha=$a distill.temperature=2.0 \
          hydra.run.dir=$R/distill/student_a${a/./}_linformer_L512_s$s
      done
      train attention=linformer seed=$s distill.teacher=$R/bytes_full_512/${s}_full_L512_s$s \
        distill.alpha=0.9 distill.temperature=2.0 \
        hydra.run.dir=$R/distill/student_scratchteacher_a09_linformer_L512_s$s
    done ;;
  pretrain10)  # the same pretraining for 10 epochs (2,590 steps)
    "$PY" -m attention_arena.pretrain experiment=pretrain_bytes attention=full seed=0 \
      trainer.max_epochs=10 hydra.run.dir=$R/pretrain/pretrain10_full_L512_s0 ;;
  finetune10)
    for a in full linformer; do for s in "${SEEDS[@]}"; do
      train attention=$a seed=$s init_from=$R/pretrain/pretrain10_full_L512_s0 \
        hydra.run.dir=$R/pretrain/init10_${a}_L512_s$s
    done; done ;;
  distill10)  # linformer students of the full models fine-tuned from it (alpha 0.9)
    for s in "${SEEDS[@]}"; do distil10 linformer $s student10_a09_linformer_L512_s$s; done ;;
  conv_pretrain)  # the model with a depthwise convolution on its embeddings (kernel 5), which
    # learns which bytes are neighbours; masked-byte pretraining for 10 epochs (2,590 steps)
    "$PY" -m attention_arena.pretrain experiment=pretrain_bytes attention=full seed=0 \
      model.embedding_conv=5 trainer.max_epochs=10 hydra.run.dir=$R/pretrain/pretrain_conv5_full_L512_s0 ;;
  conv_scratch)  # the same convolutional model from random weights
    for a in full linformer; do for s in "${SEEDS[@]}"; do
      conv5 attention=$a seed=$s hydra.run.dir=$R/pretrain/scratch_conv5_${a}_L512_s$s
    done; done ;;
  conv_finetune)
    for a in full linformer; do for s in "${SEEDS[@]}"; do
      conv5 attention=$a seed=$s init_from=$R/pretrain/pretrain_conv5_full_L512_s0 \
        hydra.run.dir=$R/pretrain/init_conv5_${a}_L512_s$s
    done; done ;;
  conv_long)  # 10 epochs of fine-tuning (540 steps) instead of 2: full from scratch without and
    # with the convolution, and fine-tuned from the convolutional pretraining
    for s in "${SEEDS[@]}"; do long540 "" init pretrain_conv5_full_L512_s0 $s; done ;;
  conv_distill)  # linformer + conv students of the full + conv models fine-tuned from it
    for s in "${SEEDS[@]}"; do distil_conv5 linformer $s ""; done ;;
  conv_distill_long)  # the same with 540 steps: linformer + conv from scratch, and taught by
    # the 540-step full + conv models fine-tuned from the pretraining (conv_long)
    for s in "${SEEDS[@]}"; do
      conv5 attention=linformer seed=$s trainer.max_epochs=10 \
        hydra.run.dir=$R/pretrain/long_scratch_conv5_linformer_L512_s$s
      distil_conv5 linformer $s long_ trainer.max_epochs=10
    done ;;
  conv_distill_longformer)  # longformer + conv students (a backend that keeps positions), from
    # scratch and taught by the same teachers, at 108 and 540 steps
    for s in "${SEEDS[@]}"; do
      conv5 attention=longformer seed=$s hydra.run.dir=$R/pretrain/scratch_conv5_longformer_L512_s$s
      distil_conv5 longformer $s ""
      conv5 attention=longformer seed=$s trainer.max_epochs=10 \
        hydra.run.dir=$R/pretrain/long_scratch_conv5_longformer_L512_s$s
      distil_conv5 longformer $s long_ trainer.max_epochs=10
    done ;;
  lr_probe)  # fine-tuning and training from scratch at half the learning rate (1e-3), 540 steps
    for s in "${SEEDS[@]}"; do
      conv5 attention=full seed=$s trainer.max_epochs=10 optim.lr=1e-3 \
        init_from=$R/pretrain/pretrain_conv5_full_L512_s0 \
        hydra.run.dir=$R/pretrain/long_init_conv5_lr1e-3_full_L512_s$s
      train attention=full seed=$s trainer.max_epochs=10 optim.lr=1e-3 \
        hydra.run.dir=$R/pretrain/long_scratch_lr1e-3_full_L512_s$s
    done ;;
  conv_pretrain30)  # the convolutional pretraining for 30 epochs (7,770 steps)
    "$PY" -m attention_arena.pretrain experiment=pretrain_bytes attention=full seed=0 \
      model.embedding_conv=5 trainer.max_epochs=30 \
      hydra.run.dir=$R/pretrain/pretrain30_conv5_full_L512_s0 ;;
  conv_long30)  # 540 steps of fine-tuning from it
    for s in "${SEEDS[@]}"; do
      conv5 attention=full seed=$s trainer.max_epochs=10 \
        init_from=$R/pretrain/pretrain30_conv5_full_L512_s0 \
        hydra.run.dir=$R/pretrain/long_init30_conv5_full_L512_s$s
    done ;;
  distill_backends)  # four more efficient backends as students (108 steps, no convolution):
    # from scratch, and taught like the best linformer student (the full model fine-tuned from
    # the 10-epoch pretraining, alpha 0.9, temperature 2)
    for a in performer linear nystrom bigbird; do for s in "${SEEDS[@]}"; do
      train attention=$a seed=$s hydra.run.dir=$R/pretrain/scratch_${a}_L512_s$s
      distil10 $a $s student10_a09_${a}_L512_s$s
    done; done ;;
  distill_linear_seeds)  # seeds 3 to 9 of the linear students (and of their teachers), in
    # extra_* directories so that the 3-seed rows keep seeds 0-2
    for s in 3 4 5 6 7 8 9; do
      train attention=full seed=$s init_from=$R/pretrain/pretrain10_full_L512_s0 \
        hydra.run.dir=$R/pretrain/extra_init10_full_L512_s$s
      train attention=linear seed=$s hydra.run.dir=$R/pretrain/extra_scratch_linear_L512_s$s
      distil10 linear $s extra_student10_a09_linear_L512_s$s
    done ;;
  distill_linear_t4)  # the linear students of seeds 0-9 at temperature 4 instead of 2
    for s in 0 1 2 3 4 5 6 7 8 9; do
      TEMP=4.0 distil10 linear $s student10_a09_t4_linear_L512_s$s
    done ;;
  distill_init_teacher)  # DistilBERT's initialisation: the student starts from its teacher's
    # weights (init_from; cross-backend, the head fresh), without and with the soft targets
    for a in linear linformer; do
      seeds=(0 1 2 3 4 5 6 7 8 9); [ $a = linformer ] && seeds=("${SEEDS[@]}")
      for s in "${seeds[@]}"; do
        train attention=$a seed=$s init_from=$(teacher $s) \
          hydra.run.dir=$R/pretrain/initteacher_${a}_L512_s$s
        distil10 $a $s student10_a09_initteacher_${a}_L512_s$s init_from=$(teacher $s)
      done
    done ;;
  conv_long30_seeds)  # seeds 3 and 4 of conv_long30 and of the 540-step runs from scratch
    for s in 3 4; do long540 extra_ init30 pretrain30_conv5_full_L512_s0 $s; done ;;
  conv_transfer30)  # the 30-epoch full + conv encoder fine-tuned for 108 steps, and with
    # longformer and linformer attention for 540 steps
    for s in "${SEEDS[@]}"; do
      conv5 attention=full seed=$s init_from=$R/pretrain/pretrain30_conv5_full_L512_s0 \
        hydra.run.dir=$R/pretrain/init30_conv5_full_L512_s$s
      for a in longformer linformer; do
        conv5 attention=$a seed=$s trainer.max_epochs=10 \
          init_from=$R/pretrain/pretrain30_conv5_full_L512_s0 \
          hydra.run.dir=$R/pretrain/long_init30_conv5_${a}_L512_s$s
      done
    done ;;
  tables)
    "$PY" experiments/cheaper_tables.py --results $R ;;
  *) echo "unknown step $step (see the usage line at the top)" >&2; exit 2 ;;
  esac
done
