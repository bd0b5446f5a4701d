#!/usr/bin/env bash
# Rewrite constraints.txt from a working virtualenv, after a dependency was added or upgraded
# (in setup.py or in scripts/setup_env.sh) and `make test` passed in that virtualenv:
#   .venv/bin/pip install -c constraints.txt NEW_PACKAGE   # or --upgrade, as needed
#   bash scripts/update_constraints.sh
# then review `git diff constraints.txt` and commit it with the change that needed it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
OUT="$ROOT/constraints.txt"

{
  cat <<'HEADER'
# Exact versions of every package of the development environment: runtime dependencies,
# detectron2's dependencies, torch, and the test tools (extra "test" of setup.py).
# scripts/setup_env.sh installs with `pip install -c constraints.txt`, so a fresh machine gets
# the environment the tests last passed in, and a new release elsewhere cannot break them.
# detectron2 itself is pinned in scripts/setup_env.sh (a source commit, else a PyPI wheel).
#
# To refresh: install the new or upgraded package into .venv with pip, run `make test`, then
# run `bash scripts/update_constraints.sh`, which rewrites this file from `pip freeze`.
HEADER
  "$VENV/bin/python" -m pip --disable-pip-version-check freeze --all --exclude-editable \
    --exclude sal-detectron2 | grep -v '^#' | sort -f
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $(grep -vc '^#' "$OUT") pins to $OUT"
