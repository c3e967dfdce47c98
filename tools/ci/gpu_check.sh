#!/usr/bin/env bash
# The CUDA check, offline, in about 8 minutes at most, on a machine with a GPU and a CUDA torch:
#   tools/ci/gpu_check.sh [OUT_DIR]            (default: gpu_check_out/)
# 1. reports the environment (GPU, torch, CUDA, whether mmcv's compiled ops import and run on
#    CUDA tensors) to OUT_DIR/env.txt;
# 2. if mmengine/mmcv/mmdet/mmseg are missing and WHEELS (default ../shared/wheels) holds
#    wheels for them, installs them from there without the network (--no-index);
# 3. runs tests/test_cuda.py (CUDA equals CPU, AMP fp16 training finite, bf16 inference)
#    -> OUT_DIR/cuda_tests.txt (+ junit xml);
# 4. runs tools/analysis/cuda_bench.py -> OUT_DIR/cuda_bench.md (the table for the README).
# Each step has its own time limit; the exit status is the tests' (the benchmark's if they pass).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-gpu_check_out}
WHEELS=${WHEELS:-../shared/wheels}
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import mmengine, mmcv, mmdet, mmseg' 2>/dev/null && [ -d "$WHEELS" ]; then
  echo "[gpu_check] installing the mm packages from $WHEELS (offline)"
  timeout 120 "$PY" -m pip install --no-index --find-links "$WHEELS" \
    mmengine mmcv mmdet mmsegmentation ftfy regex pycocotools >"$OUT/pip.txt" 2>&1 ||
    echo "[gpu_check] offline install failed, see $OUT/pip.txt"
fi

timeout 60 "$PY" - >"$OUT/env.txt" 2>&1 <<'PYEOF'
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('gpu', torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())
try:
    import mmcv
    from mmcv.ops import nms
    print('mmcv', mmcv.__version__, 'ops import: yes')
    nms(torch.rand(4, 4, device='cuda') * 10, torch.rand(4, device='cuda'), 0.5)
    print('mmcv CUDA ops: yes')
except Exception as err:  # reported, not fatal: the backbone and Semantic FPN need no mmcv op
    print('mmcv CUDA ops: no:', type(err).__name__, err)
PYEOF
cat "$OUT/env.txt"

timeout 300 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider \
  --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.txt"
tests=${PIPESTATUS[0]}

timeout 180 "$PY" tools/analysis/cuda_bench.py --out "$OUT/cuda_bench.md" \
  >"$OUT/cuda_bench.log" 2>&1
bench=$?
cat "$OUT/cuda_bench.md" 2>/dev/null || tail -20 "$OUT/cuda_bench.log"
echo "[gpu_check] tests exit $tests, benchmark exit $bench; results in $OUT/"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
