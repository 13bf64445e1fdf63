#!/usr/bin/env bash
# GPU tests and benchmarks in one go (on a CUDA machine; `multigpu` runs 1, 2 and 4 processes, as many as there are GPUs;
# `photos` needs pycolmap's CUDA build: pip install pycolmap-cuda12). Logs and JSON go to ${OUT:-benchmarks/results}.
# Optional wheels (e.g. diffrp-nvdiffrast for a machine without network) can be put in ./.whl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -m backend doctor | tee "$OUT/doctor.log"
STEPS=${STEPS:-tests hashgrid pipeline quality demo}
for s in $STEPS; do
  case $s in
    tests)    python3 -m pytest -q -m gpu ${TESTS:-tests} 2>&1 | tee "$OUT/gpu_tests.log" | tail -25 ;;
    hashgrid) python3 benchmarks/bench_hashgrid.py --out "$OUT/hashgrid.json" 2>&1 | tee "$OUT/hashgrid.log" | tail -20 ;;
    gridbwd)  python3 benchmarks/bench_grid_backward.py --out "$OUT/grid_backward.json" ${GRIDBWD_ARGS:-} 2>&1 | tee "$OUT/grid_backward.log" | tail -24 ;;
    decoder)  python3 benchmarks/bench_decoder.py --out "$OUT/decoder.json" ${DECODER_ARGS:-} 2>&1 | tee "$OUT/decoder.log" | tail -30 ;;
    pipeline) python3 benchmarks/bench_pipeline.py --out "$OUT/pipeline.json" ${PIPELINE_ARGS:-} 2>"$OUT/pipeline_events.log" | tee "$OUT/pipeline.log" | tail -20 ;;
    server)   python3 benchmarks/bench_server.py --out "$OUT/server.json" ${SERVER_ARGS:-} 2>"$OUT/server_events.log" | tee "$OUT/server.log" | tail -22 ;;
    raster)   python3 benchmarks/bench_raster.py --out "$OUT/raster.json" ${RASTER_ARGS:-} 2>&1 | tee "$OUT/raster.log" | tail -40 ;;
    render)   python3 benchmarks/bench_render.py --out "$OUT/render.json" ${RENDER_ARGS:-} 2>&1 | tee "$OUT/render.log" | tail -8 ;;
    quality)  python3 benchmarks/bench_quality.py --quick --out "$OUT/quality" 2>"$OUT/quality_events.log" | tee "$OUT/quality.log" | tail -20 ;;
    outofcore) python3 benchmarks/bench_outofcore.py --views ${OOC_VIEWS:-40} --out "$OUT/outofcore.json" 2>"$OUT/outofcore_events.log" | tee "$OUT/outofcore.log" | tail -12 ;;
    multigpu) python3 benchmarks/bench_multigpu.py --gpus ${GPUS:-1,2,4} ${MULTIGPU_ARGS:-} --out "$OUT/multigpu" 2>&1 | tee "$OUT/multigpu.log" | tail -60 ;;
    distributed) python3 benchmarks/bench_distributed.py --nproc ${NPROC:-2} --out "$OUT/distributed.json" 2>&1 | tee "$OUT/distributed.log" | tail -20 ;;
    photos)   python3 benchmarks/bench_photos.py --out "$OUT/photos.json" ${PHOTOS_ARGS:-} 2>"$OUT/photos_events.log" | tee "$OUT/photos.log" | tail -30 ;;
    demo)     python3 -m backend demo --out /tmp/xscale_demo_gpu 2>&1 | grep -v '"progress"' | tee "$OUT/demo.log" | tail -8 ;;
  esac
done
