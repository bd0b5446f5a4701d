#!/usr/bin/env bash
# One setup path for `make demo`, `make test`, CI and fresh machines.
# Creates .venv inside the repo, installs torch, detectron2 and this package, and prints
# which detectron2 it installed. A second run with everything present takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# Exact versions of everything installed from PyPI below (torch included); see its header.
CONSTRAINTS="$ROOT/constraints.txt"
# Official detectron2 source, pinned; used when its host can be reached.
D2_REPO="https://github.com/facebookresearch/detectron2.git"
D2_COMMIT="2dde706855d87baa9760fbcd0bdb6004a3937204"
# PyPI wheel that carries detectron2's Python code (tagged cp310; its _C is not used on 3.11).
D2_PYPI_FALLBACK="sal-detectron2==0.7.2"
# detectron2's runtime dependencies, installed here because detectron2 itself is installed
# without them (its declared pins are stricter than its code needs). This package's own
# dependencies and test tools come from setup.py (`.[test]`).
D2_DEPS=(
  numpy fvcore iopath pycocotools termcolor yacs tabulate cloudpickle tqdm tensorboard
  omegaconf hydra-core matplotlib Pillow opencv-python-headless
)
STAMP="$VENV/.d2ec-setup-stamp"
stamp_value() {
  cat "$ROOT/scripts/setup_env.sh" "$ROOT/setup.py" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1
}

report() {
  "$VENV/bin/python" - <<'PY'
import importlib.util, os
import torch, detectron2
try:
    from detectron2 import _C  # noqa: F401
    ops = "present"
except Exception as e:  # the PyPI wheel's _C is built for another Python
    ops = f"absent ({type(e).__name__}); Faster R-CNN runs without them"
print(f"[setup] torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
print(f"[setup] detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}")
print(f"[setup] detectron2 compiled ops (_C): {ops}")
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]] \
   && "$VENV/bin/python" -c "import torch, detectron2, d2_efficient_ckpt" 2>/dev/null; then
  report
  exit 0
fi

if [[ -x "$VENV/bin/python" ]]; then
  echo "[setup] updating the virtualenv at $VENV"
else
  echo "[setup] creating a virtualenv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# setuptools stays below 81 (pinned in the constraints): detectron2.model_zoo needs pkg_resources.
"${PIP[@]}" install -q -c "$CONSTRAINTS" --upgrade pip setuptools wheel

echo "[setup] installing torch and torchvision (versions from constraints.txt)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" torch torchvision
echo "[setup] installing detectron2's runtime dependencies"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "${D2_DEPS[@]}"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if "$VENV/bin/python" -c "import detectron2" 2>/dev/null; then
  echo "[setup] detectron2 already installed"
elif command -v git >/dev/null && timeout 20 git ls-remote "$D2_REPO" HEAD >/dev/null 2>&1; then
  echo "[setup] building detectron2 from official source at $D2_COMMIT"
  "${PIP[@]}" install -q --no-build-isolation --no-deps "git+$D2_REPO@$D2_COMMIT"
else
  echo "[setup] official detectron2 source unreachable; installing $D2_PYPI_FALLBACK from PyPI"
  D2_DIR="$VENV/detectron2-pypi"
  rm -rf "$D2_DIR"
  "${PIP[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 \
    --target "$D2_DIR" "$D2_PYPI_FALLBACK"
  echo "$D2_DIR" > "$SITE/detectron2-pypi.pth"
fi

echo "[setup] installing d2_efficient_ckpt (editable) with its test tools"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[test]"
# A package missing from the constraints came at whatever version was newest today.
unpinned="$("${PIP[@]}" freeze --all --exclude-editable --exclude sal-detectron2 \
  | grep -vxF -f <(grep -v '^#' "$CONSTRAINTS") || true)"
if [[ -n "$unpinned" ]]; then
  echo "[setup] WARNING: not pinned in constraints.txt:" $unpinned
  echo "[setup] pin them with: bash scripts/update_constraints.sh"
fi
stamp_value > "$STAMP"
report
