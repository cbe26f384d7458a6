#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
#   bash benchmarks/gpu_check.sh [STEP...]     (default: all steps)
# Steps: build (her2kit with its CUDA kernels; always done first), tests (the
# CUDA tests and the native watershed's), ops (native-op benchmark on the GPU),
# score (score a synthetic 4096^2 slide on the GPU), wsi (whole-slide
# throughput on the GPU against the model alone, 8192^2 slide, 2048 px blocks,
# with cells and with the network's classes alone),
# diag (what sets the pipeline's pace on a GPU: benchmarks/gpu_diag.py; runs
# before the tests).
# Everything lands in $OUT (default ./gpu_out): gpu_check.log, build.log,
# tests_cuda.xml, bench_cuda.json, score_gpu.json, score_gpu_workers4.json, wsi_gpu.json,
# wsi_gpu_classes.json,
# gpu_diag.json.
# Missing Python packages may be supplied as wheels in .whl/ (installed with
# --no-deps into /tmp/site). Each step has its own time limit.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
step() { echo "=== $(date +%T) $*"; }
want() { [ $# -eq 0 ] && return 0; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests ops score wsi)

if compgen -G ".whl/*.whl" >/dev/null; then
  step "wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
nproc
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step "build (CUDA arch 90)"
export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
SECONDS=0
if ! timeout 420 python3 -m pip install --no-build-isolation --no-deps -v -e . \
    -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Ccmake.define.HER2KIT_CUDA=ON >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED after ${SECONDS}s"; exit 1
fi
echo "build took ${SECONDS}s"
python3 -c "import her2kit._C as c; print('cuda_built', c.cuda_built())" || exit 1

if want diag; then
  step "what sets the pace on a GPU"
  timeout 420 python3 benchmarks/gpu_diag.py --out "$OUT/gpu_diag.json" --work /tmp/gd \
    --sections topology,variants,cells,large --ns 1,4,8,15
fi
if want tests; then
  step "CUDA tests"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_watershed.py \
    -k "cuda or CUDA or watershed or skimage" --junitxml="$OUT/tests_cuda.xml"
fi
if want ops; then
  step "op benchmark"
  timeout 240 python3 -m her2kit bench --device cuda --out "$OUT/bench_cuda.json"
fi
if want score; then
  step "score a synthetic slide on the GPU"
  time timeout 120 python3 -m her2kit synth slide /tmp/gs.zarr --size 4096x4096 --score 2+ --seed 3 &&
    time timeout 180 python3 -m her2kit score /tmp/gs.zarr --out /tmp/gs_out --device cuda &&
    cp /tmp/gs_out/*/score.json "$OUT/score_gpu.json"
  step "the same slide with 4 local worker processes on the GPU"
  time timeout 180 python3 -m her2kit score /tmp/gs.zarr --out /tmp/gs_out4 --device cuda --workers 4 &&
    cp /tmp/gs_out4/*/score.json "$OUT/score_gpu_workers4.json" &&
    cmp /tmp/gs_out/gs/cells.csv /tmp/gs_out4/gs/cells.csv && echo "workers 4: same cells.csv"
fi
if want wsi; then
  step "whole-slide throughput on the GPU"
  timeout 300 python3 benchmarks/bench_wsi.py --sections throughput --throughput-size 8192 \
    --block 2048 --throughput-model her2net --device cuda --overlap on --throughput-job both --work /tmp/bw \
    --out "$OUT/wsi_gpu.json"
  step "the same, the network's classes alone (segment --classes-only: no cell finding)"
  timeout 240 python3 benchmarks/bench_wsi.py --sections throughput --throughput-size 8192 \
    --block 2048 --throughput-model her2net --device cuda --overlap on --cells classes --repeat 2 \
    --work /tmp/bw --out "$OUT/wsi_gpu_classes.json"
fi
step "done"
