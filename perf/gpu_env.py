"""What the GPU check needs that the machine lacks, and installing it from carried wheels.

Standard library only: this runs before anything is installed. ``perf/gpu_check.sh`` calls::

    python -m perf.gpu_env missing                          # prints missing imports; exit 1 if any
    python -m perf.gpu_env install --wheels .whl --target /tmp/lungbench-site

``install`` installs (pip, offline, no dependency resolution) only the wheels in ``--wheels``
whose distribution is not installed already, so a carried wheel never shadows a package the
machine's image brings (torch, numpy, scipy, ...). The caller puts ``--target`` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

# import name -> distribution: everything the check's code path imports (converters,
# benchmark, detectron2 and its runtime needs). The GPU image (device KINDS.md) has torch,
# torchvision, numpy, scipy, scikit-image, pillow, PyYAML, tqdm, tabulate, portalocker,
# cloudpickle, matplotlib, pandas and tensorboard; perf/wheels.sh carries the rest.
REQUIRED = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "scipy": "scipy",
    "skimage": "scikit-image", "PIL": "pillow", "yaml": "PyYAML", "tqdm": "tqdm",
    "tabulate": "tabulate", "portalocker": "portalocker", "cloudpickle": "cloudpickle",
    "matplotlib": "matplotlib", "tensorboard": "tensorboard",
    "detectron2": "detectron2", "fvcore": "fvcore", "iopath": "iopath", "yacs": "yacs",
    "termcolor": "termcolor", "pycocotools": "pycocotools", "hydra": "hydra-core",
    "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime", "nibabel": "nibabel",
}


def missing_imports() -> list[str]:
    """Import names of REQUIRED that this interpreter cannot find (nothing is imported)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def dist_of_wheel(path: Path) -> str:
    """Distribution name of a wheel file (the part of its name before the first dash)."""
    return path.name.split("-", 1)[0]


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)  # names are normalised (PEP 503) in the lookup
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def wheels_to_install(wheel_dir: Path) -> list[Path]:
    """Wheels in ``wheel_dir`` whose distribution is not installed. Raises ValueError if two
    wheels are of one distribution (pip would refuse the whole set)."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    seen: dict[str, Path] = {}
    for w in wheels:
        key = dist_of_wheel(w).lower().replace("-", "_").replace(".", "_")
        if key in seen:
            raise ValueError(f"{wheel_dir}: two wheels of {key}: {seen[key].name} and {w.name}; "
                             "keep one (perf/wheels.sh starts from an empty folder)")
        seen[key] = w
    return [w for w in wheels if not installed(dist_of_wheel(w))]


def install(wheel_dir: Path, target: Path) -> int:
    if not wheel_dir.is_dir():
        print(f"gpu_env: {wheel_dir}: no such folder: run perf/wheels.sh where pip reaches "
              "PyPI and carry .whl to this machine", file=sys.stderr)
        return 1
    todo = wheels_to_install(wheel_dir)
    if not todo:
        print(f"gpu_env: nothing to install from {wheel_dir}")
        return 0
    print(f"gpu_env: installing {len(todo)} wheel(s) into {target}: "
          + ", ".join(dist_of_wheel(w) for w in todo), flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(target),
           *map(str, todo)]
    return subprocess.run(cmd).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("missing", help="print the missing imports (exit 1 if any)")
    p = sub.add_parser("install", help="install the wheels of missing distributions")
    p.add_argument("--wheels", type=Path, default=Path(".whl"))
    p.add_argument("--target", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "missing":
        miss = missing_imports()
        print(" ".join(f"{m} ({REQUIRED[m]})" for m in miss))
        return 1 if miss else 0
    return install(args.wheels, args.target)


if __name__ == "__main__":
    sys.exit(main())
