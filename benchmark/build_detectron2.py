"""Build detectron2 v0.6 as a pure-Python wheel that works on current libraries.

No official detectron2 wheel exists for current torch. The PyPI sdist
``pb1-detectron2==0.6`` holds upstream v0.6's Python package byte for byte, minus the
C++ sources; ROIAlign and NMS come from torchvision, so the Python package alone trains
and evaluates every Mask R-CNN variant. This script downloads that sdist (sha256
verified), applies the few patches listed in ``PATCHES`` (each must apply exactly once,
so an unexpected source fails loudly), builds the wheel and caches it:

    python -m benchmark.build_detectron2 [--install] [--cache DIR]

A second call finds the cached wheel and builds nothing. ``--install`` (``make setup``) first
checks that torch can use the GPUs nvidia-smi sees (benchmark.cudacheck) and fails if not.
Nothing of detectron2 is committed to this repository. Users with internet who prefer
upstream detectron2 can install it instead (docs/install.md); the harness only needs ``import detectron2``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from contracts.fsutil import sha256_file

SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/pb1-detectron2-0.6.tar.gz"
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Bump when PATCHES change: it names the cached wheel, so a stale build is never reused.
BUILD_TAG = "lb1"
WHEEL_NAME = f"detectron2-0.6+{BUILD_TAG}-py3-none-any.whl"

_OPTIONAL_C = (
    "try:\n"
    "    from detectron2 import _C\n"
    "except ImportError:  # pure-Python build: no C++ ops (deform conv, rotated boxes)\n"
    "    _C = None\n"
)

# (file, old, new, expected count). Counts pin the v0.6 sources.
PATCHES: list[tuple[str, str, str, int]] = [
    # No C++ extension: ROIAlign and NMS come from torchvision.
    ("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],", 1),
    # Stale pins that conflict with current environments (black is a dev tool).
    ('setup.py', '"black==21.4b2",', "", 1),
    ('setup.py', '"iopath>=0.1.7,<0.1.10",', '"iopath>=0.1.7,<0.1.11",', 1),
    ('setup.py', '"future",  # used by caffe2', "", 1),
    ('setup.py', '"pydot",  # used to save caffe2 SVGs', "", 1),
    # Install as `detectron2`, the name upstream uses, so either satisfies `import detectron2`.
    ("setup.py", 'name="pb1-detectron2",', 'name="detectron2",', 1),
    # A local version label marks the patched build in `pip list` and collect_env.
    ("detectron2/__init__.py", '__version__ = "0.6"', f'__version__ = "0.6+{BUILD_TAG}"', 1),
    # The four hard `_C` imports become optional.
    ("detectron2/evaluation/fast_eval_api.py", "from detectron2 import _C\n", _OPTIONAL_C, 1),
    ("detectron2/layers/deform_conv.py", "from detectron2 import _C\n", _OPTIONAL_C, 1),
    ("detectron2/layers/rotated_boxes.py", "from detectron2 import _C\n", _OPTIONAL_C, 1),
    ("detectron2/layers/roi_align_rotated.py", "from detectron2 import _C\n", _OPTIONAL_C, 1),
    # Pillow >= 10 removed Image.LINEAR (it was an alias of BILINEAR).
    ("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR", 1),
    # setuptools >= 81 has no pkg_resources; the configs sit next to model_zoo.py.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "", 1),
    ("detectron2/model_zoo/model_zoo.py",
     'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", '
     "os.path.join(\"configs\", config_path)\n    )",
     'cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)', 1),
]

# numpy >= 1.24 removed the np.bool/np.int/np.float/np.str aliases.
_NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str)\b(?!_)")


def default_cache() -> Path:
    """$LUNGBENCH_CACHE, else lungbench/ in $XDG_CACHE_HOME (default ~/.cache)."""
    return Path(os.environ.get("LUNGBENCH_CACHE")
                or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lungbench"))


def fetch_sdist(cache: Path) -> Path:
    """Download the sdist once (pooch: resume-free but hash-checked, atomic)."""
    import pooch

    return Path(pooch.retrieve(SDIST_URL, known_hash=f"sha256:{SDIST_SHA256}", fname="pb1-detectron2-0.6.tar.gz",
                               path=cache / "downloads", progressbar=False))


def apply_patches(src: Path) -> None:
    """Patch an unpacked sdist in place; raise if any patch does not match v0.6."""
    for rel, old, new, count in PATCHES:
        path = src / rel
        text = path.read_text()
        found = text.count(old)
        if found != count:
            raise RuntimeError(f"{path}: expected {count} occurrence(s) of {old!r}, found {found}; "
                               "is this really pb1-detectron2 0.6?")
        path.write_text(text.replace(old, new))
    for path in (src / "detectron2").rglob("*.py"):
        text = path.read_text()
        fixed = _NUMPY_ALIAS.sub(lambda m: m.group(1), text)
        if fixed != text:
            path.write_text(fixed)
    # setup.py packs model-zoo configs from a top-level configs/, which the sdist lacks.
    zoo = src / "detectron2" / "model_zoo" / "configs"
    if not (src / "configs").exists():
        shutil.move(str(zoo), str(src / "configs"))


def build_wheel(cache: Path) -> Path:
    """Return the cached wheel, building it first if needed."""
    wheel = cache / "wheels" / WHEEL_NAME
    if wheel.exists():
        return wheel
    sdist = fetch_sdist(cache)
    if sha256_file(sdist) != SDIST_SHA256:  # pooch checks too; keep the contract explicit
        sdist.unlink()
        raise RuntimeError(f"{sdist}: sha256 mismatch, deleted; run again to re-download")
    with tempfile.TemporaryDirectory(prefix="d2build-") as tmp:
        tmp = Path(tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / "pb1-detectron2-0.6"
        apply_patches(src)
        out = tmp / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src)], check=True, env=dict(os.environ, BUILD_NIGHTLY="0", FORCE_CUDA="0"))
        built = out / WHEEL_NAME
        if not built.exists():
            raise RuntimeError(f"pip wheel did not produce {WHEEL_NAME}: {sorted(os.listdir(out))}")
        # Copy next to the cache entry, then rename: a half-copied wheel is never cached.
        wheel.parent.mkdir(parents=True, exist_ok=True)
        staged = wheel.with_name(wheel.name + ".partial")
        shutil.copy2(built, staged)
        os.replace(staged, wheel)
    return wheel


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=default_cache())
    ap.add_argument("--install", action="store_true", help="pip install the wheel (no deps)")
    args = ap.parse_args(argv)
    if args.install:
        # setup: a GPU that this venv's torch cannot use fails here, not in the first run
        from benchmark.cudacheck import CudaUnusable, check

        try:
            check()
        except CudaUnusable as e:
            print(f"setup: {e}", file=sys.stderr)
            return 1
    wheel = build_wheel(args.cache)
    print(f"detectron2 wheel: {wheel}")
    if args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                       check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
