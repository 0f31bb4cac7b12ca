#!/usr/bin/env bash
# One command for a lent GPU, under 10 minutes: what the machine is, fakejax's train and eval
# speed for ResNet-50@224 and Xception@299 in bf16 and fp32, the input pipeline, a short real
# training run. Writes OUT/gpu_check.md (docs/performance.md's format) and the raw logs.
#
#   bash scripts/gpu_check.sh [OUT]          # default OUT: runs/gpu_check
#
# Worst case 8 x 45 + 2 x 60 + 90 s = 9.5 min. Not yet run on a GPU: none has been lent to a session so
# far. The PyTorch side (AMP + channels_last, torch.compile) needs torch on the box: not covered here.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.md"
step() {  # step SECONDS NAME COMMAND...: runs it with a time limit, keeps its log, never stops the script.
  local limit=$1 name=$2; shift 2
  echo "== $name" | tee -a "$OUT/log.txt"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "exit $? ($name)" | tee -a "$OUT/log.txt"
}
{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/- GPU: /'
  echo "- CPU cores: $(nproc)"
  $PY -c "import jax, flax; print(f'- jax {jax.__version__}, flax {flax.__version__}, devices {jax.devices()}')"
} >"$REPORT"
# fakejax's own step times (the benchmark prints a Markdown row with img/s and MFU).
for model in "resnet50 224" "xception 299"; do
  set -- $model
  for dtype in bfloat16 float32; do
    for batch in 128 256; do
      step 45 "bench_${1}_${dtype}_${batch}" $PY -m fakejax.benchmark --model "$1" --image_size "$2" \
        --batch "$batch" --dtype "$dtype" --steps 20 --warmup 3
    done
  done
done
# CLIP ViT-L/14 feature extraction (UnivFD's frozen backbone), bf16 and fp32.
for dtype in bfloat16 float32; do
  step 45 "bench_clip_vit_l14_${dtype}_128" $PY -m fakejax.benchmark --model clip_vit_l14 --image_size 224 \
    --batch 128 --dtype "$dtype" --notrain --steps 20 --warmup 3
done
# The input pipeline on all cores, raw and PNG storage.
for storage in raw png; do
  step 60 "pipeline_${storage}" $PY -m fakejax.benchmark --input data --storage "$storage" \
    --image_size 256 --batch 64 --workers "$(nproc)"
done
# A short real training run: the quick config on the synthetic benchmark (loss must fall).
step 90 train_quick $PY -m fakejax.train --config configs/quick.py --workdir "$OUT/quick" \
  --config.model.dtype=bfloat16
{
  echo
  echo "## Results (each command's last lines; logs beside this file)"
  for f in "$OUT"/bench_*.log "$OUT"/pipeline_*.log "$OUT"/train_quick.log; do
    echo
    echo "### $(basename "$f" .log)"
    echo '```'
    tail -n 6 "$f"
    echo '```'
  done
} >>"$REPORT"
cat "$REPORT"
