#!/usr/bin/env bash
# Installs detectron2 into the given venv unless a working one is already importable.
# There is no detectron2 wheel on PyPI; `pb1-detectron2==0.6` is detectron2's v0.6 source without
# its C++ ops (detectron2/layers/csrc). CroBIM needs none of those ops, so a placeholder extension
# lets the pure-Python package build and install.
#   bash tools/install_detectron2.sh [PYTHON]          # install (default .venv/bin/python)
#   bash tools/install_detectron2.sh --prepare DIR     # only write the prepared source to DIR/pb1-detectron2-0.6
#                                                      # (make gpu-bundle; the GPU machine builds it)
set -euo pipefail
SDIST=pb1-detectron2-0.6.tar.gz
SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29

# Fetch, check and unpack the sdist into $1/pb1-detectron2-0.6, ready to build.
prepare() {
  local dest=$1 index url
  # Fetch the sdist from the package index's simple page: `pip download` would build its metadata, which
  # recent pip rejects because of a direct-URL extra (panopticapi) in detectron2's setup.py.
  index=${PIP_INDEX_URL:-https://pypi.org/simple}
  url=$(curl -fsSL "${index%/}/pb1-detectron2/" | grep -o "href=\"[^\"]*/$SDIST[^\"]*\"" | head -n 1 | sed 's/^href="//; s/"$//; s/#.*//')
  if [ -z "$url" ]; then
    echo "Could not find $SDIST on $index; check network access to the package index." >&2
    exit 1
  fi
  case "$url" in http*) ;; *) url="${index%/}/pb1-detectron2/$url" ;; esac
  curl -fsSL -o "$work/$SDIST" "$url"
  echo "$SHA256  $work/$SDIST" | sha256sum -c --quiet
  tar -xzf "$work/$SDIST" -C "$dest"
  local src="$dest/pb1-detectron2-0.6"
  sed -i '/panopticapi @/d' "$src/setup.py"
  # Image.LINEAR, an old alias of Image.BILINEAR, is gone in Pillow 10 (the GPU machine's Pillow is newer).
  sed -i 's/Image\.LINEAR\b/Image.BILINEAR/' "$src/detectron2/data/transforms/transform.py"
  mkdir -p "$src/detectron2/layers/csrc"
  printf '#include <torch/extension.h>\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}\n' > "$src/detectron2/layers/csrc/vision.cpp"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "${1:-}" = "--prepare" ]; then
  dest=${2:?usage: install_detectron2.sh --prepare DIR}
  mkdir -p "$dest"
  rm -rf "$dest/pb1-detectron2-0.6"
  prepare "$dest"
  exit 0
fi
PY=${1:-.venv/bin/python}
if "$PY" -c "import detectron2, detectron2.engine, detectron2.modeling" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__file__)'); leaving it alone."
  exit 0
fi
prepare "$work"
"$PY" -m pip install --no-build-isolation "Pillow<10" "omegaconf<2.4" "$work/pb1-detectron2-0.6"
