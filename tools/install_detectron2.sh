#!/usr/bin/env bash
# Installs detectron2 into the given venv unless a working one is already importable.
# There is no detectron2 wheel on PyPI; `pb1-detectron2==0.6` is detectron2's v0.6 source without
# its C++ ops (detectron2/layers/csrc). CroBIM needs none of those ops, so a placeholder extension
# lets the pure-Python package build and install.
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -c "import detectron2, detectron2.engine, detectron2.modeling" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__file__)'); leaving it alone."
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --no-deps --no-build-isolation -d "$work" pb1-detectron2==0.6
tar -xzf "$work"/pb1[-_]detectron2-0.6*.tar.gz -C "$work"
src=$(find "$work" -maxdepth 1 -mindepth 1 -type d | head -n 1)
mkdir -p "$src/detectron2/layers/csrc"
echo '#include <torch/extension.h>
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}' > "$src/detectron2/layers/csrc/vision.cpp"
"$PY" -m pip install --no-build-isolation "Pillow<10" "omegaconf<2.4" "$src"
