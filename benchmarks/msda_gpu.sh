#!/usr/bin/env bash
# The prepared GPU check of the multi-scale deformable attention op (see csrc/README.md): builds crobim_d2._C
# in place for this machine's torch with the CUDA kernels, runs the op's tests (CPU and CUDA) and the benchmark
# (CUDA kernel vs reference at batch 32, achieved bandwidth). Needs torch, nvcc and pytest; not detectron2.
#   bash benchmarks/msda_gpu.sh            # JSON to $OUT/msda_gpu.json if OUT is set, else output/benchmarks/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc at $CUDA_HOME/bin/nvcc: set CUDA_HOME to a CUDA toolkit" >&2; exit 2; }
"$PY" -c "import pytest" || { echo "pytest is missing: pip install pytest" >&2; exit 2; }
"$PY" setup.py -q build_ext --inplace
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn.py || status=$?  # benchmark even if a test fails
"$PY" benchmarks/msda.py --skip-cpu --repeats 10 --output "${OUT:-output/benchmarks}/msda_gpu.json"
exit "$status"
