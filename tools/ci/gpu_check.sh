#!/usr/bin/env bash
# The CUDA check, offline, in under 10 minutes, on a machine with a GPU and a CUDA torch:
#   tools/ci/gpu_check.sh [OUT_DIR]            (default: gpu_check_out/)
# 1. if mmengine/mmcv/mmdet/mmseg are missing, installs them from WHEELS (default
#    ../shared/wheels) without the network: an mmcv wheel that fits this python and torch, or
#    else mmcv's source release (mmcv-2.1.0.tar.gz) built there with its CPU ops (a few
#    minutes on 16 cores; MMCV_CUDA=1 builds its CUDA ops too, several times longer), then
#    every other wheel in WHEELS with --no-deps (the machine's own numpy/opencv/torch stay);
# 2. reports the environment (GPU, CPU, torch, CUDA, whether mmcv's ops run on CUDA
#    tensors) to OUT_DIR/env.txt;
# 3. runs tests/kernels/test_cuda.py (CUDA equals CPU, AMP fp16 training finite, bf16 inference)
#    -> OUT_DIR/cuda_tests.txt (+ junit xml);
# 4. runs tools/analysis/benchmark.py --suite cuda compile -> OUT_DIR/cuda_bench.md (the tables
#    for the README), written table by table so a timeout keeps what was measured.
# Each step has its own time limit; the exit status is the tests' (the benchmark's if they pass).
# WHEELS for a GPU image without network (e.g. CPython 3.12, its own torch/numpy/opencv),
# fetched where pip works:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d WHEELS \
#     mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 addict yapf termcolor terminaltables \
#     pycocotools shapely prettytable ftfy wcwidth platformdirs setuptools==69.5.1
#   plus mmcv's source release, mmcv-2.1.0.tar.gz, from PyPI's files (about 10 MB in all).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-gpu_check_out}
WHEELS=${WHEELS:-../shared/wheels}
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# torch's extension builder compiles in parallel only when it finds ninja (on the PATH).
PATH="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
PIP=("$PY" -m pip install -q --no-index --no-deps --no-cache-dir --disable-pip-version-check)

if ! "$PY" -c 'import mmcv.ops' 2>/dev/null && [ -d "$WHEELS" ]; then
  if ! "${PIP[@]}" --only-binary=:all: --find-links "$WHEELS" mmcv==2.1.0 >"$OUT/mmcv_build.txt" 2>&1; then
    sdist=$(ls "$WHEELS"/mmcv-2.1.0.tar.gz 2>/dev/null | head -1)
    if [ -n "$sdist" ]; then
      echo "[gpu_check] building mmcv from $sdist (MMCV_CUDA=${MMCV_CUDA:-0})"
      build_env=(MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)")
      # mmcv 2.1's setup.py imports pkg_resources, which new setuptools releases dropped.
      if ! "$PY" -c 'import pkg_resources' 2>/dev/null && ls "$WHEELS"/setuptools-*.whl >/dev/null 2>&1; then
        "${PIP[@]}" --target /tmp/gpu_check_buildtools "$WHEELS"/setuptools-*.whl
        build_env+=(PYTHONPATH="/tmp/gpu_check_buildtools:$PYTHONPATH")
      fi
      # setup.py builds CUDA ops whenever it sees a GPU: hide it unless they are asked for.
      if [ "${MMCV_CUDA:-0}" = 1 ]; then build_env+=(FORCE_CUDA=1); else build_env+=(CUDA_VISIBLE_DEVICES=); fi
      "$PY" -c 'from torch.utils.cpp_extension import is_ninja_available as n; print("ninja:", n())' \
        | tee -a "$OUT/mmcv_build.txt"
      start=$SECONDS
      env "${build_env[@]}" timeout "${MMCV_BUILD_LIMIT:-300}" "${PIP[@]}" -v --no-build-isolation \
        "$sdist" >>"$OUT/mmcv_build.txt" 2>&1 || echo "[gpu_check] mmcv build failed, see $OUT/mmcv_build.txt"
      echo "[gpu_check] mmcv build: $((SECONDS - start)) s"
    fi
  fi
fi
if ! "$PY" -c 'import mmengine, mmdet, mmseg' 2>/dev/null && [ -d "$WHEELS" ]; then
  echo "[gpu_check] installing the other mm packages from $WHEELS (offline, --no-deps)"
  wheels=$(ls "$WHEELS"/*.whl | grep -v -E '/(mmcv|setuptools)-')
  # shellcheck disable=SC2086
  timeout 120 "${PIP[@]}" $wheels >"$OUT/pip.txt" 2>&1 ||
    echo "[gpu_check] offline install failed, see $OUT/pip.txt"
fi

timeout 60 "$PY" - >"$OUT/env.txt" 2>&1 <<'PYEOF'
import platform
import subprocess

import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('gpu', torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())
cpu = subprocess.run(['sh', '-c', "grep -m1 'model name' /proc/cpuinfo"], capture_output=True,
                     text=True).stdout.strip()
print('python', platform.python_version(), '|', cpu, '|', torch.get_num_threads(), 'threads')
try:
    import mmcv
    from mmcv.ops import nms
    print('mmcv', mmcv.__version__, 'ops import: yes')
    nms(torch.rand(4, 4, device='cuda') * 10, torch.rand(4, device='cuda'), 0.5)
    print('mmcv CUDA ops: yes')
except Exception as err:  # reported, not fatal: the backbone and Semantic FPN need no mmcv op
    print('mmcv CUDA ops: no:', type(err).__name__, str(err).splitlines()[0])
PYEOF
cat "$OUT/env.txt"

timeout "${TESTS_LIMIT:-200}" "$PY" -m pytest tests/kernels/test_cuda.py -q -rs -p no:cacheprovider \
  --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.txt"
tests=${PIPESTATUS[0]}

timeout "${BENCH_LIMIT:-180}" "$PY" tools/analysis/benchmark.py --suite cuda compile \
  --out "$OUT/cuda_bench.md" >"$OUT/cuda_bench.log" 2>&1
bench=$?
cat "$OUT/cuda_bench.md" 2>/dev/null; tail -5 "$OUT/cuda_bench.log"
echo "[gpu_check] tests exit $tests, benchmark exit $bench; results in $OUT/"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
