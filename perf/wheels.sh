#!/usr/bin/env bash
# Fill .whl/ with wheels for a GPU machine without internet, where perf/gpu_check.sh installs
# those whose distribution the machine lacks. Run it where pip reaches PyPI (`make wheels`), then
# copy .whl/ along with the checkout:
# - detectron2: the pure-Python wheel `make setup` builds (benchmark/build_detectron2.py, cached
#   in ~/.cache/lungbench/wheels; built now if missing);
# - every other distribution in .venv at its version there (what the tests run against): a binary
#   wheel for the target Python and platform (pip download), else one built here from the sdist,
#   which must then be pure Python (py3-none-any).
# Environment: PYTHON (.venv/bin/python); TARGET_PY, the GPU machine's Python X.Y (default:
# PYTHON's); PLATFORMS, its wheel platform tags (default manylinux x86_64); SKIP, distributions
# (glob patterns) to leave out, default "torch torchvision triton nvidia-* cuda-*": the GPU machine's
# own CUDA build of torch must match its driver. .whl/ is emptied first (two versions of one
# package stop pip's whole install) and is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
TARGET_PY=${TARGET_PY:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
read -r -a PLATFORMS <<< "${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64}"
read -r -a skips <<< "lungbench detectron2 pip ${SKIP:-torch torchvision triton nvidia-* cuda-*}"
cp_tag=cp${TARGET_PY/./}
TARGET=(--python-version "$TARGET_PY" --implementation cp)
for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

d2=$("$PY" -c 'from benchmark.build_detectron2 import build_wheel, default_cache; print(build_wheel(default_cache()))')
cp "$d2" "$DEST/"
echo "wheels: $(basename "$d2") (built by benchmark/build_detectron2.py)"

# name==version of every distribution in .venv but lungbench itself, detectron2, pip and SKIP
mapfile -t pins < <("$PY" -c '
import importlib.metadata as m
for d in sorted({(d.metadata["Name"], d.version) for d in m.distributions()}):
    print("%s==%s" % d)')
for pin in "${pins[@]}"; do
  name=${pin%%==*}
  skip=0
  for pat in "${skips[@]}"; do
    # shellcheck disable=SC2053
    [[ ${name,,} == ${pat,,} ]] && skip=1
  done
  [ "$skip" = 1 ] && continue
  rm -rf "$tmp/dl"
  if "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
       "${TARGET[@]}" -d "$tmp/dl" "$pin" 2>"$tmp/err"; then
    how="downloaded"
  else
    # no wheel for the target on PyPI (e.g. fvcore, iopath, antlr4: sdists only): build it here
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-binary "$name" -w "$tmp/dl" "$pin"
    how="built from the sdist"
  fi
  whl=$(ls "$tmp"/dl/*.whl)
  case "$whl" in
    *-none-any.whl|*"$cp_tag"*manylinux*.whl|*abi3*manylinux*.whl) ;;
    *) echo "wheels: $whl is not for CPython $TARGET_PY on ${PLATFORMS[0]}" >&2; exit 1 ;;
  esac
  mv "$whl" "$DEST/"
  echo "wheels: $(basename "$whl") ($how)"
done

# The set must install, offline and as a whole, for the target interpreter.
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --only-binary=:all: \
  "${TARGET[@]}" --target "$tmp/site" "$DEST"/*.whl
echo "wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST, $(du -sh "$DEST" | cut -f1); they install for CPython $TARGET_PY (${PLATFORMS[*]})"
