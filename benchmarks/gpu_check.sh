#!/usr/bin/env bash
# The prepared GPU check of the whole model, for one NVIDIA GPU without network (projects/CroBIM/README.md,
# "GPU check"). Needs python3 with torch (CUDA), timm, transformers, opencv, pytest; nvcc; and the bundle of
# `make gpu-bundle` (.gpu-bundle: the other packages as wheels, detectron2's source). In about 6 minutes:
#   1. installs the wheels, builds detectron2 (background, then generates synrrsis at 480x480 for training);
#   2. benchmarks/msda_gpu.sh: builds crobim_d2._C with the CUDA kernels, runs tests/test_ms_deform_attn.py
#      (without detectron2 on the path), benchmarks the op against the reference and the copy bandwidth;
#   3. benchmarks/gpu_model.py check: paper-size Swin-B CroBIM, GPU vs CPU float32 probabilities, inference at
#      batch 1 and 32, the largest training batch that fits;
#   4. gpu_model.py train, through train_net.py, with SOLVER.AMP in bfloat16 (evaluated on synrrsis_val at the
#      end) and in float16, each for about GPU_CHECK_TRAIN_SECONDS;
#   5. one JSON ($OUT/gpu_check.json) and a table. Every stage runs under a timeout that ends the script
#      inside GPU_CHECK_DEADLINE seconds; a failed stage is recorded and the others still run.
#   bash benchmarks/gpu_check.sh                # OUT defaults to output/gpu_check; PYTHON to python3
#   GPU_CHECK_STAGES="check train" bash ...     # a rerun of some stages (build always runs first)
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_common.sh
PY=${PYTHON:-python3}
export PYTHON=$PY PYTHONUNBUFFERED=1
require_gpu gpu_check.sh "$PY"
find_cuda_home gpu_check.sh
BUNDLE=${GPU_BUNDLE:-.gpu-bundle}
if [ ! -d "$BUNDLE/wheels" ] || [ ! -f "$BUNDLE/pb1-detectron2-0.6/setup.py" ]; then
  echo "gpu_check.sh: no bundle at $BUNDLE: run \`make gpu-bundle\` where the package index is reachable and" \
       "carry .gpu-bundle in the device call (projects/CroBIM/README.md, \"GPU check\")." >&2
  exit 2
fi
OUT=${OUT:-output/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
DEADLINE=${GPU_CHECK_DEADLINE:-470}
TRAIN_SECONDS=${GPU_CHECK_TRAIN_SECONDS:-45}
STAGES=${GPU_CHECK_STAGES:-op check train}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
export DETECTRON2_DATASETS=$WORK/datasets
mkdir -p "$OUT" "$WORK/parts"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
SITE=$WORK/site D2SITE=$WORK/detectron2
log() { echo "[gpu_check +${SECONDS}s] $*"; }

# stage NAME BUDGET CMD...: run CMD under a timeout of BUDGET seconds (less if the deadline is nearer; 20 s
# stay for the report) and record its exit status.
stage() {
  local name=$1 budget=$2 left rc start=$SECONDS
  shift 2
  left=$((DEADLINE - SECONDS - 20))
  [ "$left" -lt "$budget" ] && budget=$left
  if [ "$budget" -le 10 ]; then
    log "$name: skipped, the deadline ($DEADLINE s) is too near"; rc=124
  else
    log "$name: start (timeout ${budget}s)"
    timeout --kill-after=10 "$budget" "$@"
    rc=$?
  fi
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}" >> "$WORK/parts/stages.jsonl"
  log "$name: exit $rc after $((SECONDS - start))s"
  return "$rc"
}

rm -f "$WORK/parts/stages.jsonl"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$BUNDLE"/wheels/*.whl \
  || { echo "gpu_check.sh: installing the bundle's wheels failed" >&2; exit 1; }
export PYTHONPATH=$PWD:$SITE
# detectron2 and synrrsis in the background, apart from the op's stage, which must not see detectron2.
# On a warm machine (a rerun) both may be there already.
prepare="{ [ -f $D2SITE/detectron2/__init__.py ] ||
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --target $D2SITE $BUNDLE/pb1-detectron2-0.6; } &&
  { [ -f $DETECTRON2_DATASETS/synrrsis/info.json ] || PYTHONPATH=$PYTHONPATH:$D2SITE $PY datasets/prepare_synrrsis.py \
    --root $DETECTRON2_DATASETS --image-size 480 --num-train 800 --num-val 40 --num-test 10; }"
stage prepare 200 bash -c "$prepare" > "$WORK/prepare.log" 2>&1 &
prepare_pid=$!
log "detectron2 build and synrrsis generation started in the background (log: $WORK/prepare.log)"

case " $STAGES " in *" op "*) rm -f "$WORK/parts/msda_gpu.json"; OUT=$WORK/parts stage op 240 bash benchmarks/msda_gpu.sh ;; esac
if ! "$PY" -c "from crobim_d2.modeling.ops import extension_info as e; assert e()['cuda']" 2>/dev/null; then
  stage op-build 240 "$PY" setup.py -q build_ext --inplace  # the op's stage was skipped or failed before it built
fi
wait "$prepare_pid"
cat "$WORK/prepare.log"
export PYTHONPATH=$PYTHONPATH:$D2SITE

MODEL="$PY benchmarks/gpu_model.py"
if [[ " $STAGES " == *" check "* ]]; then
  rm -f "$WORK/parts/model.json"
  stage check 150 $MODEL check --train-seconds "$TRAIN_SECONDS" --output "$WORK/parts/model.json"
fi
if [[ " $STAGES " == *" train "* ]]; then
  read -r batch iters < <("$PY" -c "import json; f = json.load(open('$WORK/parts/model.json'))['fit']; print(f['batch'], f['iters'])" 2>/dev/null || echo "32 40")
  log "training at batch $batch for $iters iterations"
  for dtype in bfloat16 float16; do
    rm -f "$WORK/parts/train_$dtype.json"
    test_sets=(); [ "$dtype" = bfloat16 ] && test_sets=(--test synrrsis_val)
    stage "train-$dtype" $((TRAIN_SECONDS + 90)) $MODEL train --dtype "$dtype" --batch "$batch" --iters "$iters" \
      "${test_sets[@]}" --train-output "$WORK/train_$dtype" --output "$WORK/parts/train_$dtype.json"
    cp "$WORK/train_$dtype/log.txt" "$OUT/train_${dtype}_log.txt" 2>/dev/null
  done
fi
$MODEL report --parts "$WORK/parts" --output "$OUT/gpu_check.json"
failed=$("$PY" -c "import json; print(sum(json.loads(l)['rc'] != 0 for l in open('$WORK/parts/stages.jsonl')))")
log "done: $failed stage(s) failed; $OUT/gpu_check.json"
[ "$failed" -eq 0 ]
