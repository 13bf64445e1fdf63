#!/usr/bin/env bash
# Quality ablation on the capture scenes, one process per GPU (ablate_quality.py), in one go.
# The scenes are made first with every core; then each GPU trains its share of the variants.
#   OUT=results bash benchmarks/run_ablation.sh          (ITERS, BATCH, EVERY, SCENES override)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-/tmp/xscale_ablate}
ITERS=${ITERS:-1500}; BATCH=${BATCH:-262144}; EVERY=${EVERY:-300}
SCENES=${SCENES:-capture-sparse capture-dense}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NGPU=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")
# The variants: the paper's model, each change alone, the combination and its regularisers.
V=(
  'paper={"model.level_fade": 0, "model.photo_gains": false}'
  'fade={"model.photo_gains": false}'
  'gains={"model.level_fade": 0}'
  'fade+gains={}'
  'decay0.1={"optim.grid_decay": 0.1}'
  'decay1={"optim.grid_decay": 1.0}'
  'omega10={"model.omega_feat": 10}'
  'eps1e-8={"optim.grid_eps": 1e-8}'
  'bias+0.5={"model.level_bias": 0.5}'
  'bias-0.5={"model.level_bias": -0.5}'
  'expdecay={"optim.exposure_decay": 1.0}'
)
for scene in $SCENES; do       # scene and ray cache first, shared by the processes below
  python3 benchmarks/ablate_quality.py --scene-kind "$scene" --work "$WORK" --workers "$(nproc)" \
    --out /dev/null --prepare-only 2>&1 | tail -n 2
done
pids=()
g=0
for scene in $SCENES; do
  per=$(( (NGPU + 1) / 2 ))          # GPUs per scene
  for ((k = 0; k < per; k++)); do
    args=()
    for ((i = k; i < ${#V[@]}; i += per)); do args+=(--variant "${V[$i]}"); done
    CUDA_VISIBLE_DEVICES=$(( g % NGPU )) python3 benchmarks/ablate_quality.py --scene-kind "$scene" \
      --work "$WORK" --iters "$ITERS" --batch-rays "$BATCH" --eval-every "$EVERY" \
      --out "$OUT/ablate_${scene}_$k.json" "${args[@]}" > "$OUT/ablate_${scene}_$k.log" 2>&1 &
    pids+=($!)
    g=$((g + 1))
  done
done
for p in "${pids[@]}"; do wait "$p"; done
tail -n 16 "$OUT"/ablate_*.log
