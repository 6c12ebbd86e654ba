"""A GPU that torch cannot use is an error, never a silent run on the CPU.

When the NVIDIA driver is older than the CUDA a torch wheel was built for (PyPI's torch is
built for the newest CUDA), or torch is a CPU-only build, ``torch.cuda.is_available()`` is
False on a machine full of GPUs, and ``device=auto`` would train on the CPU for hours.
``nvidia-smi`` sees the GPUs either way: where it lists one and torch cannot use it, setup
(``python -m benchmark.build_detectron2 --install``, run by ``make setup``) and every run
(``device=auto``) stop with what to do.

Running on the CPU on purpose stays possible: ``device=cpu`` for a run, or
``CUDA_VISIBLE_DEVICES=`` (empty: no GPU for this process) for anything::

    python -m benchmark.cudacheck    # exit 0: torch uses the GPUs nvidia-smi sees, or there are none
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

#: what a torch build for an older driver is installed from (perf/GPU.md, "An older driver")
TORCH_INDEX_HINT = "https://download.pytorch.org/whl/cu126"


class CudaUnusable(RuntimeError):
    """nvidia-smi sees a GPU that torch cannot use."""


def _smi(*args: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        p = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def visible_gpus() -> list[dict]:
    """The GPUs nvidia-smi lists: [{name, driver}]; [] without nvidia-smi or when it fails
    (no driver loaded: nothing to use)."""
    out = _smi("--query-gpu=name,driver_version", "--format=csv,noheader")
    gpus = []
    for line in (out or "").strip().splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip():
            gpus.append({"name": name.strip(), "driver": driver.strip()})
    return gpus


def driver_cuda() -> str | None:
    """The newest CUDA the driver supports, from nvidia-smi's banner ("CUDA Version: 12.2")."""
    m = re.search(r"CUDA Version:\s*([0-9.]+)", _smi() or "")
    return m.group(1) if m else None


def _version(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or ""))


def hidden_on_purpose() -> bool:
    """CUDA_VISIBLE_DEVICES set to nothing (or -1): this process is meant to have no GPU."""
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    return v is not None and v.strip() in ("", "-1")


def unusable_message(gpus: list[dict], torch_version: str, torch_cuda: str | None,
                     cuda_of_driver: str | None) -> str:
    """What is wrong and what to do, for GPUs ``gpus`` that torch ``torch_version`` (built for
    CUDA ``torch_cuda``, None: CPU-only) cannot use under a driver supporting ``cuda_of_driver``."""
    names = ", ".join(sorted({g["name"] for g in gpus}))
    drivers = ", ".join(sorted({g["driver"] for g in gpus if g["driver"]})) or "?"
    seen = (f"nvidia-smi sees {len(gpus)} GPU(s) ({names}; driver {drivers}"
            f"{f', CUDA {cuda_of_driver}' if cuda_of_driver else ''})")
    if torch_cuda is None:
        why = f"torch {torch_version} is a CPU-only build"
    elif cuda_of_driver and _version(cuda_of_driver) < _version(torch_cuda):
        why = (f"torch {torch_version} is built for CUDA {torch_cuda}, newer than this driver "
               f"supports ({cuda_of_driver})")
    else:
        why = f"torch {torch_version} (CUDA {torch_cuda}) cannot use them"
    return (f"{seen}, but torch.cuda.is_available() is False: {why}. Install a torch build for "
            f"this driver, e.g. `.venv/bin/python -m pip install 'torch>=2.11,<2.15' "
            f"'torchvision>=0.26,<0.30' --index-url {TORCH_INDEX_HINT}` (pick the cuXXX not newer "
            f"than the driver's CUDA), then `make setup` (perf/GPU.md, \"An older driver\"). "
            "To use the CPU on purpose: device=cpu, or CUDA_VISIBLE_DEVICES= (empty).")


def check() -> list[dict]:
    """Raise CudaUnusable where nvidia-smi sees a GPU and torch cannot use it (unless GPUs are
    hidden on purpose). Returns the GPUs nvidia-smi sees."""
    import torch

    gpus = visible_gpus()
    if gpus and not torch.cuda.is_available() and not hidden_on_purpose():
        raise CudaUnusable(unusable_message(gpus, torch.__version__, torch.version.cuda, driver_cuda()))
    return gpus


def main() -> int:
    import torch

    try:
        gpus = check()
    except CudaUnusable as e:
        print(f"cudacheck: {e}", file=sys.stderr)
        return 1
    if torch.cuda.is_available():
        print(f"cudacheck: torch {torch.__version__} uses {torch.cuda.device_count()} CUDA device(s) "
              f"({torch.cuda.get_device_name(0)})")
    else:
        print(f"cudacheck: no GPU {'for this process (CUDA_VISIBLE_DEVICES)' if gpus else 'seen'}; "
              f"torch {torch.__version__} runs on the CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
