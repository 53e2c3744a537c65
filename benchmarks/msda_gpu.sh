#!/usr/bin/env bash
# The prepared GPU check of the multi-scale deformable attention op (see csrc/README.md): builds crobim_d2._C
# in place for this machine's torch with the CUDA kernels, runs the op's tests (CPU and CUDA) and the benchmark
# (CUDA kernel vs reference at batch 32, achieved bandwidth against the copy bandwidth). Needs torch, nvcc and
# pytest; not detectron2. benchmarks/gpu_check.sh runs it as its first stage.
#   bash benchmarks/msda_gpu.sh            # JSON to $OUT/msda_gpu.json if OUT is set, else output/benchmarks/
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_common.sh
PY=${PYTHON:-python}
require_gpu msda_gpu.sh "$PY"
find_cuda_home msda_gpu.sh
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
"$PY" -c "import pytest" || { echo "msda_gpu.sh: pytest is missing: pip install pytest" >&2; exit 2; }
"$PY" setup.py -q build_ext --inplace
"$PY" -c "from crobim_d2.modeling.ops import extension_info as e; i = e(); assert i['cuda'], i; print('crobim_d2._C:', i)"
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py || status=$?  # benchmark even if a test fails
"$PY" benchmarks/msda.py --skip-cpu --repeats 10 --output "${OUT:-output/benchmarks}/msda_gpu.json"
exit "$status"
