# Shared by benchmarks/gpu_check.sh and benchmarks/msda_gpu.sh (sourced): the checks that must pass before
# anything is built on a GPU machine, each stopping with a message that names the fix.

# require_gpu NAME PYTHON: stop unless PYTHON's torch sees a CUDA GPU.
require_gpu() {
  "$2" - "$1" <<'EOF' || exit 2
import sys

name = sys.argv[1]
try:
    import torch
except ImportError as e:
    sys.exit(f"{name}: this Python ({sys.executable}) cannot import torch ({e}); set PYTHON to one that can.")
if not torch.cuda.is_available():
    sys.exit(
        f"{name}: no CUDA GPU is visible: torch {torch.__version__} (built for CUDA {torch.version.cuda}) reports "
        "torch.cuda.is_available() False. This check proves the GPU path and needs a machine with an NVIDIA GPU: "
        'run it through the device tool as projects/CroBIM/README.md ("GPU check") says. Nothing was built.'
    )
print(f"{name}: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
EOF
}

# find_cuda_home NAME: export CUDA_HOME (given, /usr/local/cuda, or the folder above nvcc on PATH).
find_cuda_home() {
  if [ -z "${CUDA_HOME:-}" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then
      CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then
      CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    fi
  fi
  if [ ! -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
    echo "$1: no nvcc found (CUDA_HOME=${CUDA_HOME:-unset}, none on PATH): set CUDA_HOME to a CUDA toolkit." >&2
    exit 2
  fi
  export CUDA_HOME
}
