#!/usr/bin/env bash
# The GPU check (perf/GPU.md), also for a GPU machine without internet:
#   bash perf/gpu_check.sh [--dry-run] [--tests] [--out DIR] [perf/gpu_check.py options]
# 1. where Python lacks a distribution lungbench needs at run time (perf/bundle.py: pyproject's
#    dependencies and detectron2's, followed through what is installed), installs the wheels of
#    .whl/ (built beforehand by `make gpu-bundle`, copied along with the checkout) whose
#    distribution is not installed into $LUNGBENCH_SITE (default /tmp/lungbench-site), never
#    over the machine's own torch or numpy; exit 3 if something is still missing;
# 2. --tests only: the CUDA tests (a short list, below) first; a failure stops the check;
# 3. python -m perf.gpu_check: one harness sweep per level, figures written after each level
#    -> DIR/gpu_check.{md,json}, the runs' result.json under DIR/runs/. --dry-run: the same at
#    toy sizes on the CPU (CI).
# Python: $PYTHON, else .venv's, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
SITE=${LUNGBENCH_SITE:-/tmp/lungbench-site}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# the checkout, then what an earlier call installed, then the caller's own path
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
# The CUDA tests: the code paths that differ on a GPU (OOM retry, GPU peaks, the nvidia-smi
# check, GPU slots, two runs sharing a GPU); a few minutes in all.
CUDA_TESTS=(tests/test_cuda_paths.py tests/test_cudacheck.py tests/test_gpus.py
            "tests/test_sweep.py::test_joblib_runs_two_at_once_with_dataloader_workers")

args=()
run_tests=0
for a in "$@"; do
  case "$a" in
    --tests) run_tests=1 ;;
    --skip-tests) ;;  # the default now; still accepted
    *) args+=("$a") ;;
  esac
done

echo "gpu_check: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
missing=$("$PY" -m perf.bundle missing)
if [ -n "$missing" ]; then
  echo "gpu_check: $PY lacks: $missing"
  todo=$([ -d .whl ] && "$PY" - .whl <<'EOF'
import pathlib, sys
from importlib import metadata
def have(name):
    try:
        return bool(metadata.distribution(name))
    except metadata.PackageNotFoundError:
        return False
print(" ".join(str(w) for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl"))
               if not have(w.name.split("-")[0])))
EOF
)
  if [ -n "$todo" ]; then
    echo "gpu_check: installing $(echo "$todo" | wc -w) wheel(s) from .whl/ into $SITE"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE" $todo
  fi
  missing=$("$PY" -m perf.bundle missing)
  if [ -n "$missing" ]; then
    echo "gpu_check: still missing: $missing; run 'make gpu-bundle' where pip reaches PyPI (TARGET_PY=this Python's X.Y) and copy .whl/ here" >&2
    exit 3
  fi
fi
"$PY" -m perf.bundle outside | sed 's/^/gpu_check: outside pyproject.toml (may still work): /'
echo "gpu_check: /dev/shm $(df -h /dev/shm 2>/dev/null | awk 'NR==2 {print $2 " total, " $4 " free"}'); ulimit -n $(ulimit -n)"
if [ "$run_tests" = 1 ]; then
  "$PY" -c 'import pytest' 2>/dev/null || { echo "gpu_check: --tests needs pytest" >&2; exit 3; }
  echo "gpu_check: the CUDA tests first: ${CUDA_TESTS[*]}"
  "$PY" -m pytest -q -p no:cacheprovider "${CUDA_TESTS[@]}" || { echo "gpu_check: a CUDA test failed" >&2; exit 4; }
fi
exec "$PY" -m perf.gpu_check "${args[@]}"
