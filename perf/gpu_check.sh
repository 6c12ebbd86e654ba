#!/usr/bin/env bash
# The GPU check, for a single-GPU machine without internet (perf/GPU.md):
#   bash perf/gpu_check.sh [--dry-run] [--out DIR] [other perf/gpu_check.py options]
# 1. installs what the machine lacks from the wheels in .whl/ (filled by perf/wheels.sh where
#    pip reaches PyPI; carried along with the working tree) into /tmp/lungbench-site;
# 2. runs python -m perf.gpu_check: phantom 512x512 -> per-backbone fp32/AMP speed, inference,
#    memory next to the zoo; 1/2/4/8 runs at once; grid9 extrapolation -> DIR/gpu_check.{md,json}.
# Where CUDA is visible, the whole test suite runs first (the suite must pass on a GPU machine
# too; --skip-tests leaves it out), and a failing suite stops the check.
# --dry-run: the same code path at toy sizes on the CPU (CI). Python: $PYTHON, else .venv's,
# else python3 (the GPU image's, which holds torch).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
SITE=${LUNGBENCH_SITE:-/tmp/lungbench-site}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if ! missing=$("$PY" -m perf.gpu_env missing); then
  echo "gpu_check: $PY lacks: $missing"
  "$PY" -m perf.gpu_env install --wheels "$REPO/.whl" --target "$SITE"
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
  if ! missing=$("$PY" -m perf.gpu_env missing); then
    echo "gpu_check: still missing after installing .whl/: $missing" >&2
    echo "gpu_check: run 'bash perf/wheels.sh' where pip reaches PyPI and carry .whl" >&2
    exit 3
  fi
fi
# what a "bus error" (DataLoader shared memory) or "too many open files" would need to explain
echo "gpu_check: /dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $2 " total, " $4 " free"}'); ulimit -n $(ulimit -n)"
args=()
run_tests=1
for a in "$@"; do
  case "$a" in
    --skip-tests) run_tests=0 ;;
    --dry-run) run_tests=0; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done
if [ "$run_tests" = 1 ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: the test suite on this CUDA machine first"
  "$PY" -m pytest -q -p no:cacheprovider || { echo "gpu_check: the test suite failed on CUDA" >&2; exit 4; }
fi
exec "$PY" -m perf.gpu_check "${args[@]}"
