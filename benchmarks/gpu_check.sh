#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU, nvcc and a CUDA build
# of torch: builds her2kit with its CUDA kernels, runs the CUDA tests, the
# native-op benchmark and the whole-slide throughput benchmark on the GPU,
# and scores a synthetic slide on the GPU. Everything lands in $OUT
# (default ./gpu_out):
#   gpu_check.log  build.log  tests_cuda.xml  bench_cuda.json  wsi_gpu.json  score_gpu.json
# Missing Python packages may be supplied as wheels in .whl/ (installed with
# --no-deps into /tmp/site). Each step has its own time limit so one hang
# cannot eat the rest.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
step() { echo "=== $(date +%T) $*"; }

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

step "CUDA tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_ops.py -k "cuda or CUDA" \
  --junitxml="$OUT/tests_cuda.xml"

step "op benchmark"
timeout 240 python3 -m her2kit bench --device cuda --out "$OUT/bench_cuda.json"

step "score a synthetic slide on the GPU"
time timeout 120 python3 -m her2kit synth slide /tmp/gs.zarr --size 4096x4096 --score 2+ --seed 3 &&
  time timeout 180 python3 -m her2kit score /tmp/gs.zarr --out /tmp/gs_out --device cuda &&
  cp /tmp/gs_out/*/score.json "$OUT/score_gpu.json"
step "whole-slide throughput on the GPU"
timeout 240 python3 benchmarks/bench_wsi.py --sections throughput --throughput-size 4096 \
  --block 2048 --throughput-model her2net --device cuda --overlap both --work /tmp/bw \
  --out "$OUT/wsi_gpu.json"

step "done"
