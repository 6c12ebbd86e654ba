#!/usr/bin/env bash
# The GPU check (perf/GPU.md), also for a GPU machine without internet:
#   bash perf/gpu_check.sh [--dry-run] [--skip-tests] [--out DIR] [perf/gpu_check.py options]
# 1. where Python lacks a distribution pyproject.toml asks for, installs it from the wheels in
#    .whl/ (built beforehand by perf/wheels.sh and copied along with the checkout) into
#    $LUNGBENCH_SITE (default /tmp/lungbench-site), only those the machine lacks;
# 2. where CUDA is visible, runs the test suite first (--skip-tests leaves it out); a failing
#    suite stops the check;
# 3. python -m perf.gpu_check: one harness sweep per packing level, the table from their
#    result.json -> DIR/gpu_check.{md,json}. --dry-run: the same at toy sizes on the CPU (CI).
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
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# `missing`: distributions of pyproject.toml (dev extras and detectron2 included) not installed;
# `wheels DIR`: the wheels in DIR whose distribution is not installed
dists() {
  "$PY" - "$@" <<'EOF'
import importlib.metadata as m, pathlib, re, sys, tomllib
def have(name):
    try:
        return bool(m.distribution(name))
    except m.PackageNotFoundError:
        return False
if sys.argv[1] == "missing":
    p = tomllib.load(open("pyproject.toml", "rb"))["project"]
    reqs = p["dependencies"] + sum(p.get("optional-dependencies", {}).values(), []) + ["detectron2"]
    print(" ".join(n for n in (re.match(r"[A-Za-z0-9._-]+", r).group() for r in reqs) if not have(n)))
else:
    print(" ".join(str(w) for w in sorted(pathlib.Path(sys.argv[2]).glob("*.whl"))
                   if not have(w.name.split("-")[0])))
EOF
}
missing=$(dists missing)
if [ -n "$missing" ]; then
  echo "gpu_check: $PY lacks: $missing"
  todo=$([ -d .whl ] && dists wheels .whl || true)
  if [ -n "$todo" ]; then
    echo "gpu_check: installing $(echo "$todo" | wc -w) wheel(s) from .whl/ into $SITE"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$SITE" $todo
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
  fi
  missing=$(dists missing)
  if [ -n "$missing" ]; then
    echo "gpu_check: still missing: $missing; run 'make wheels' where pip reaches PyPI and copy .whl/ here" >&2
    exit 3
  fi
fi
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
