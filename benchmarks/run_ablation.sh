#!/usr/bin/env bash
# Quality ablation on the capture scenes, one process per GPU (ablate_quality.py), in one go.
# PLAN lists "GPU SCENE NAME=JSON" lines (default benchmarks/ablation_plan.txt); the scenes and
# their ray caches are made first with every core, then each GPU trains its variants in order.
#   OUT=results bash benchmarks/run_ablation.sh   (ITERS, BATCH, EVERY, PLAN override; ARGS: more
#   ablate_quality.py options for every process, e.g. ARGS="--size 8x64x48 --device cpu --preset small")
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-/tmp/xscale_ablate}
ITERS=${ITERS:-1500}; BATCH=${BATCH:-262144}; EVERY=${EVERY:-300}
PLAN=${PLAN:-benchmarks/ablation_plan.txt}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for scene in $(grep -v '^#' "$PLAN" | awk 'NF {print $2}' | sort -u); do   # shared by the processes below
  python3 benchmarks/ablate_quality.py --scene-kind "$scene" --work "$WORK" --workers "$(nproc)" \
    --out /dev/null --prepare-only ${ARGS:-} 2>&1 | tail -n 2
done
pids=()
for key in $(grep -v '^#' "$PLAN" | awk 'NF {print $1 ":" $2}' | sort -u); do
  gpu=${key%%:*}; scene=${key#*:}
  args=()
  while read -r g s v; do
    [ "$g" = "$gpu" ] && [ "$s" = "$scene" ] && args+=(--variant "$v")
  done < <(grep -v '^#' "$PLAN")
  CUDA_VISIBLE_DEVICES=$gpu python3 benchmarks/ablate_quality.py --scene-kind "$scene" --work "$WORK" \
    --iters "$ITERS" --batch-rays "$BATCH" --eval-every "$EVERY" \
    --out "$OUT/ablate_${scene}_gpu$gpu.json" ${ARGS:-} "${args[@]}" > "$OUT/ablate_${scene}_gpu$gpu.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
grep -h -v "^\s*$" "$OUT"/ablate_*.log | grep -v "Traceback\|File \|^ " | tail -n 60
