#!/usr/bin/env bash
# Installs detectron2 into the given venv unless a working one is already importable.
# There is no detectron2 wheel on PyPI; `pb1-detectron2==0.6` is detectron2's v0.6 source without
# its C++ ops (detectron2/layers/csrc). CroBIM needs none of those ops, so a placeholder extension
# lets the pure-Python package build and install.
set -euo pipefail
PY=${1:-.venv/bin/python}
SDIST=pb1-detectron2-0.6.tar.gz
SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
if "$PY" -c "import detectron2, detectron2.engine, detectron2.modeling" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__file__)'); leaving it alone."
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
tar -xzf "$work/$SDIST" -C "$work"
src="$work/pb1-detectron2-0.6"
sed -i '/panopticapi @/d' "$src/setup.py"
mkdir -p "$src/detectron2/layers/csrc"
printf '#include <torch/extension.h>\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}\n' > "$src/detectron2/layers/csrc/vision.cpp"
"$PY" -m pip install --no-build-isolation "Pillow<10" "omegaconf<2.4" "$src"
