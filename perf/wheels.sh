#!/usr/bin/env bash
# The offline bundle for a GPU machine (perf/GPU.md): fills .whl/ with wheels of exactly what
# that machine lacks to run lungbench, for its Python and platform, and prints the size of what
# is to be copied there (.whl/ + the checkout). Run it where pip reaches PyPI:
#   bash perf/wheels.sh            (make gpu-bundle)
# - which: `python -m perf.bundle pins`: the closure of pyproject.toml's run-time requirements
#   and detectron2's, less the closure of what the target has (TARGET_HAS), at the versions
#   installed in PYTHON's environment (what the tests run against); no dev extras;
# - detectron2: the pure-Python wheel benchmark/build_detectron2.py builds (cached; built now
#   if missing);
# - every other one: PyPI's wheel for the target (one `pip download`), else the sdist built
#   here into a wheel, which must then be pure Python (py3-none-any).
# The set is then installed, offline, for the target interpreter into a temp folder (it must
# install as a whole), and the total is checked against LIMIT_MIB.
# Environment: PYTHON (.venv/bin/python); TARGET_PY, the GPU machine's Python X.Y (3.12);
# PLATFORMS, its wheel platform tags (manylinux x86_64); TARGET_HAS, what it has installed
# (default: perf/bundle.py's TARGET_HAS: torch torchvision numpy scipy pandas matplotlib
# scikit-image pytest tqdm pyyaml requests jinja2 tensorboard); DEST (.whl); LIMIT_MIB (60).
# DEST is emptied of wheels first (two versions of one package stop pip's whole install); .whl/
# is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=${DEST:-.whl}
TARGET_PY=${TARGET_PY:-3.12}
LIMIT_MIB=${LIMIT_MIB:-60}
read -r -a PLATFORMS <<< "${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64}"
[[ $TARGET_PY =~ ^3\.[0-9]+$ ]] || { echo "wheels: TARGET_PY=$TARGET_PY: expected X.Y, e.g. 3.12" >&2; exit 2; }
cp_tag=cp${TARGET_PY/./}
TARGET=(--python-version "$TARGET_PY" --implementation cp --abi "$cp_tag" --abi abi3 --abi none)
for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done
has=()
[ -n "${TARGET_HAS:-}" ] && has=(--has "$TARGET_HAS")

mapfile -t pins < <("$PY" -m perf.bundle pins --python "$TARGET_PY" "${has[@]}")
[ "${#pins[@]}" -gt 0 ] || { echo "wheels: perf.bundle found nothing to bundle" >&2; exit 1; }
others=()
for pin in "${pins[@]}"; do
  [[ $pin == detectron2* ]] || others+=("$pin")
done
echo "wheels: CPython $TARGET_PY (${PLATFORMS[0]}) lacks ${#pins[@]} distributions: ${pins[*]}"

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

d2=$("$PY" -c 'from benchmark.build_detectron2 import build_wheel, default_cache; print(build_wheel(default_cache()))')
cp "$d2" "$DEST/"
echo "wheels: $(basename "$d2") (built by benchmark/build_detectron2.py)"

# one download for all: a wheel for the target where PyPI has one, else the sdist (--no-deps
# allows sdists under --platform; their wheels are built below)
"$PY" -m pip download -q --disable-pip-version-check --no-deps "${TARGET[@]}" -d "$tmp/dl" "${others[@]}"
shopt -s nullglob
for sdist in "$tmp"/dl/*.tar.gz "$tmp"/dl/*.zip; do
  # e.g. fvcore, iopath, antlr4: sdists only
  "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/dl" "$sdist"
  echo "wheels: $(basename "$sdist") built into a wheel here"
  rm -f "$sdist"
done
for whl in "$tmp"/dl/*.whl; do
  case "$(basename "$whl")" in
    *-none-any.whl|*-"$cp_tag"-*manylinux*.whl|*-abi3-*manylinux*.whl) ;;
    *) echo "wheels: $(basename "$whl") is not for CPython $TARGET_PY on ${PLATFORMS[0]}" >&2; exit 1 ;;
  esac
  mv "$whl" "$DEST/"
done
n=$(ls "$DEST"/*.whl | wc -l)
[ "$n" = "${#pins[@]}" ] || { echo "wheels: $n wheels for ${#pins[@]} distributions" >&2; exit 1; }

# The set must install, offline and as a whole, for the target interpreter.
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --only-binary=:all: \
  "${TARGET[@]}" --target "$tmp/site" "$DEST"/*.whl

# What is copied to the GPU machine: the checkout's tracked files and the bundle.
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bundle_b=$(cat "$DEST"/*.whl | wc -c)
checkout_b=$(git ls-files -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
total_b=$((bundle_b + checkout_b))
echo "wheels: $n wheels in $DEST: $(mib "$bundle_b") MiB; with the checkout ($(mib "$checkout_b") MiB): $(mib "$total_b") MiB of at most $LIMIT_MIB MiB"
if [ "$total_b" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "wheels: over $LIMIT_MIB MiB" >&2
  exit 1
fi
