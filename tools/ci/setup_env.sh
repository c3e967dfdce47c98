#!/usr/bin/env bash
# Creates $VENV and installs the OpenMMLab 2.0 stack for CPU (or an existing CUDA torch).
# Idempotent: every step checks what is already there.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEELS=${WHEELS:-../shared/wheels}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# Set USE_SYSTEM_SITE_PACKAGES=1 to see a torch (e.g. a CUDA build) installed outside the venv.
USE_SYSTEM_SITE_PACKAGES=${USE_SYSTEM_SITE_PACKAGES:-0}

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  if [ "$USE_SYSTEM_SITE_PACKAGES" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

find_links=()
if [ -d "$WHEELS" ]; then
  find_links=(--find-links "$WHEELS")
  log "using prebuilt wheels from $WHEELS"
fi

# 1. torch: keep one that imports (e.g. a CUDA build), else the CPU build that lies on disk.
if "$PY" -c 'import torch' 2>/dev/null; then
  log "keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  log "installing $TORCH_SPEC (CPU build)"
  "${PIP[@]}" "$TORCH_SPEC"
fi
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
# Every later install is pinned to this torch so that no resolver swaps it for a CUDA build.
constraints="$VENV/torch-constraint.txt"
echo "torch==$TORCH_VERSION" > "$constraints"

# 2. build tools: torch 2.13 needs setuptools>=77.0.3; mmcv 2.1.0's setup.py needs pkg_resources (<82).
"${PIP[@]}" -c "$constraints" 'setuptools>=77.0.3,<82' wheel ninja

# 3. mmcv 2.1.0 with its compiled ops. mmengine and mmcv's other runtime requirements come
# first, so that the import check below tests the ops and not a missing dependency.
"${PIP[@]}" -c "$constraints" mmengine==0.10.7 addict numpy packaging Pillow pyyaml yapf opencv-python
mmcv_ok() { "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; }
if ! mmcv_ok; then
  if [ ${#find_links[@]} -gt 0 ] && ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    log "installing mmcv 2.1.0 from $WHEELS"
    "${PIP[@]}" -c "$constraints" "${find_links[@]}" --only-binary mmcv --no-deps mmcv==2.1.0 || true
  fi
  if ! mmcv_ok; then
    log "building mmcv 2.1.0 with its ops from source: this takes 12 to 20 minutes on 2 cores"
    "$PY" -m pip uninstall -y mmcv >/dev/null 2>&1 || true
    MMCV_WITH_OPS=1 "${PIP[@]}" -c "$constraints" --no-build-isolation --no-binary mmcv --no-cache-dir mmcv==2.1.0
  fi
fi
# 4. the OpenMMLab packages, mmseg's undeclared imports, COCO tools and this project.
"${PIP[@]}" -c "$constraints" mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex pycocotools
"${PIP[@]}" -c "$constraints" --no-build-isolation -e '.[tests]'

# 5. openmim (`mim list/search/download/train/test/run metaformer_mm`) in a folder of its own:
# it pins setuptools 60.2.0 (through openxlab), which would break the builds above. The
# launcher $VENV/bin/mim puts that folder after site-packages, so mim runs on this env's
# packages and only adds its own.
if ! "$PY" -c 'import sys; sys.path.append(sys.argv[1]); import mim' "$VENV/mim" 2>/dev/null; then
  log "installing openmim into $VENV/mim"
  # pip's closing note that torch wants setuptools>=77 concerns that folder only: kept in a log
  if ! "${PIP[@]}" --target "$VENV/mim" --upgrade openmim >"$VENV/mim-install.log" 2>&1; then
    cat "$VENV/mim-install.log"; exit 1
  fi
fi
cat > "$VENV/bin/mim" <<'LAUNCHER'
#!/usr/bin/env bash
# mim with its own packages (openmim, setuptools 60.2.0 ...) after this env's site-packages.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/python" -c 'import runpy, sys; sys.path.append(sys.argv.pop(1)); runpy.run_module("mim", run_name="__main__", alter_sys=True)' "$here/../mim" "$@"
LAUNCHER
chmod +x "$VENV/bin/mim"

# 6. the compiled ops must load against this torch; a wheel built for another torch fails here.
if ! mmcv_ok; then
  log "mmcv.ops does not load against torch $TORCH_VERSION; rebuilding from source (12 to 20 minutes)"
  "$PY" -m pip uninstall -y mmcv
  MMCV_WITH_OPS=1 "${PIP[@]}" -c "$constraints" --no-build-isolation --no-binary mmcv --no-cache-dir mmcv==2.1.0
  mmcv_ok
fi
log "ready: $("$PY" -c 'import torch, mmcv, mmdet, mmseg, mmengine; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")')"
