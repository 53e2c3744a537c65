#!/usr/bin/env bash
# Fills DIR (default .gpu-bundle, git-ignored) with what benchmarks/gpu_check.sh needs on the GPU machine, which
# has no network: DIR/wheels/ holds the Python 3.12 x86-64 wheels of benchmarks/gpu_bundle.txt, DIR/pb1-detectron2-0.6/
# detectron2's prepared v0.6 source. `make gpu-bundle` runs it; the device call carries DIR (projects/CroBIM/README.md).
#   bash benchmarks/gpu_bundle.sh [DIR]       # PYTHON=python3 by default: its pip fetches from the package index
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu-bundle}
PY=${PYTHON:-python3}
# The device notes' platform list; pip matches manylinux_2_N exactly, so each N the wheels use is named.
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
tmp="$DIR.partial"
rm -rf "$tmp"
mkdir -p "$tmp/wheels" "$tmp/sdist"
grep -v '^\s*\(#\|$\)' benchmarks/gpu_bundle.txt | while read -r req; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --abi cp312 "${PLATFORMS[@]}" -d "$tmp/wheels" "$req" 2>/dev/null; then
    # No wheel on the index (fvcore, antlr4-python3-runtime): build one from the sdist. Only a pure-Python
    # wheel (py3-none-any) runs on the device's Python 3.12; anything else is an error below.
    "$PY" -m pip wheel -q --no-deps -w "$tmp/sdist" "$req"
  fi
done
for whl in "$tmp"/sdist/*.whl; do
  [ -e "$whl" ] || continue
  case "$(basename "$whl")" in
    *-py3-none-any.whl | *-py2.py3-none-any.whl) mv "$whl" "$tmp/wheels/" ;;
    *) echo "gpu_bundle: $(basename "$whl") was built from an sdist but is not pure Python, so it would not run" \
            "on the GPU machine's Python 3.12; pin a version of it that has a cp312 manylinux wheel." >&2; exit 1 ;;
  esac
done
rm -rf "$tmp/sdist"
bash tools/install_detectron2.sh --prepare "$tmp"
rm -rf "$DIR"
mv "$tmp" "$DIR"
echo "gpu_bundle: $(ls "$DIR/wheels" | wc -l) wheels and detectron2's source in $DIR ($(du -sh "$DIR" | cut -f1));" \
     "carry it in the device call (projects/CroBIM/README.md, \"GPU check\")."
