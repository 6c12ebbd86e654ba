#!/usr/bin/env bash
# Fill .whl/ with the wheels the GPU machine lacks (Python 3.12, x86_64, no internet), for
# perf/gpu_check.sh to install there. Run it here, where pip reaches PyPI:
#   bash perf/wheels.sh            # then copy .whl to the GPU machine with the checkout (perf/GPU.md)
# - detectron2: the pure-Python wheel `make setup` builds (benchmark/build_detectron2.py, cached
#   in ~/.cache/lungbench/wheels; built now if missing);
# - the rest at the versions installed in .venv (what the tests run against): binary wheels
#   for CPython 3.12 manylinux x86_64 (pip download), else built here from the sdist, which
#   must give a pure-Python (py3-none-any) wheel.
# The GPU image already has torch, torchvision, numpy, scipy, scikit-image, pillow, PyYAML,
# tqdm, tabulate, portalocker, cloudpickle, matplotlib, pandas, tensorboard, joblib (device
# KINDS.md): they are not carried. .whl/ is emptied first (two versions of one package stop
# pip's whole install), must stay under MAX_MB (50) and is ignored by git (.gitignore /.whl/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
MAX_MB=${MAX_MB:-50}
PACKAGES=(fvcore iopath yacs termcolor pycocotools faster-coco-eval hydra-core omegaconf
          antlr4-python3-runtime hydra-joblib-launcher nibabel)
TARGET=(--python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

d2=$("$PY" -c 'from benchmark.build_detectron2 import build_wheel, default_cache; print(build_wheel(default_cache()))')
cp "$d2" "$DEST/"
echo "wheels: $(basename "$d2") (built by benchmark/build_detectron2.py)"

for name in "${PACKAGES[@]}"; do
  ver=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")
  if "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
       "${TARGET[@]}" -d "$tmp/dl" "$name==$ver" 2>"$tmp/err"; then
    how="downloaded"
  else
    # no 3.12 wheel on PyPI (fvcore, iopath, antlr4 are sdist-only): build it here
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-binary "$name" \
      -w "$tmp/dl" "$name==$ver"
    how="built from the sdist"
  fi
  whl=$(ls "$tmp"/dl/*.whl)
  case "$whl" in
    *-none-any.whl|*cp312*manylinux*x86_64*.whl|*abi3*manylinux*x86_64*.whl) ;;
    *) echo "wheels: $whl is not for CPython 3.12 x86_64 Linux" >&2; exit 1 ;;
  esac
  mv "$whl" "$DEST/"
  echo "wheels: $(basename "$whl") ($how)"
done

# The set must install, offline and as a whole, for the GPU machine's interpreter.
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --only-binary=:all: \
  "${TARGET[@]}" --target "$tmp/site" "$DEST"/*.whl
size_kb=$(du -sk "$DEST" | cut -f1)
echo "wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST, $((size_kb / 1024)) MiB ($size_kb KiB); they install for CPython 3.12 manylinux x86_64"
if [ "$size_kb" -gt $((MAX_MB * 1024)) ]; then
  echo "wheels: $DEST is over $MAX_MB MiB, the size budget for copying them along" >&2
  exit 1
fi
