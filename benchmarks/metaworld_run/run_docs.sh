#!/usr/bin/env bash
# Runs the ```bash commands of docs/metaworld.md on real Diffusion Policy, each as written with
# small CPU overrides appended (docs/design.md, rulings 18, 26, 27). Usage:
#   bash run_docs.sh DP_ROOT WORK_DIR OTHER_DIR PYTHON_BIN_DIR
# DP's train.py runs with WORK_DIR as the working folder (data/ and outputs there), eval.py from OTHER_DIR.
set -u
DP=$1; WORK=$2; OTHER=$3; BIN=$4
DOC=$(cd "$(dirname "$0")/../.." && pwd)/docs/metaworld.md
export PATH="$BIN:$PATH" DP_SAM2_ALLOW_MISSING_CHECKPOINT=1   # no official SAM 2 weights here: random weights
DEMO_EXTRA="--task push --episodes 10 --image-size 96 --camera corner --seed 1 --out data/metaworld/push.zarr"
COMMON="task.env_name=push task.image_size=96 task.camera=corner training.device=cpu logging.mode=disabled training.num_epochs=2 training.rollout_every=1 training.checkpoint_every=1 training.val_every=1 training.sample_every=1 training.max_train_steps=3 training.max_val_steps=2 dataloader.num_workers=0 val_dataloader.num_workers=0 dataloader.batch_size=8 val_dataloader.batch_size=8 dataloader.pin_memory=False val_dataloader.pin_memory=False policy.num_inference_steps=4 task.env_runner.n_test=4 task.env_runner.n_test_vis=1 task.env_runner.max_steps=24"
IMG="policy.down_dims=[32,64,128]"
SAM="policy.obs_encoder.image_size=64"
grep -E '^(dp-sam2|python) ' "$DOC" | while IFS= read -r line; do
  case "$line" in
    dp-sam2\ metaworld-demos*) dir=$WORK; extra=$DEMO_EXTRA ;;
    *train_diffusion_unet_lowdim_workspace*) dir=$WORK; extra="$COMMON policy.model.down_dims=[32,64,128] policy.num_inference_steps=4" ;;
    *sam2*) dir=$WORK; extra="$COMMON $IMG $SAM" ;;
    python\ train.py*) dir=$WORK; extra="$COMMON $IMG" ;;
    python\ eval.py*) dir=$OTHER; extra="-d cpu" ;;
  esac
  cmd="$line $extra"
  cmd=${cmd/python train.py/python $DP/train.py}
  cmd=${cmd/python eval.py --checkpoint data\//python $DP/eval.py --checkpoint $WORK\/data\/}
  cmd=${cmd/--output_dir data\//--output_dir $OTHER\/data\/}
  echo "=== [$dir] \$ $cmd"
  start=$(date +%s)
  (cd "$dir" && yes | eval "$cmd" > "$dir/last.log" 2>&1); rc=$?
  echo "=== rc=$rc, $(( $(date +%s) - start )) s"
  grep -aE "test_mean_score|Error|error:|Traceback" "$dir/last.log" | tail -5
  cp "$dir/last.log" "$WORK/log_$(echo "$line" | md5sum | cut -c1-8).txt"
done
