"""Which GPU a run of a joblib sweep trains on: ``jobs_per_gpu`` runs per GPU, over every GPU.

joblib's loky workers are reused from run to run and CUDA may already be initialised in them,
so CUDA_VISIBLE_DEVICES cannot steer a run; ``torch.cuda.set_device`` can (MODEL.DEVICE
"cuda" means the current device). A run holds one of GPUs x jobs_per_gpu slots for its whole
life through an exclusive ``flock`` on a slot file in a folder shared by the sweep's runs;
the kernel drops the lock when the run's process ends, however it ends, so a crashed run
never keeps its slot. Slot s is on GPU s % GPUs: the first runs spread over the GPUs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

POLL_S = 1.0


def slot_dir() -> Path:
    """Where the slot files live: $LUNGBENCH_GPU_SLOTS, else one folder per user in /tmp
    (runs of two sweeps on one machine then share the GPUs' slots, as they share the GPUs)."""
    return Path(os.environ.get("LUNGBENCH_GPU_SLOTS")
                or Path(tempfile.gettempdir()) / f"lungbench-gpu-slots-{os.getuid()}")


@contextlib.contextmanager
def hold_slot(n_gpus: int, per_gpu: int, folder: Path | None = None) -> Iterator[int]:
    """Wait for a free slot among n_gpus x per_gpu, hold it, yield its GPU index."""
    if n_gpus < 1 or per_gpu < 1:
        raise ValueError(f"need >= 1 GPU and >= 1 job per GPU, got {n_gpus} x {per_gpu}")
    folder = folder or slot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for s in range(n_gpus * per_gpu):
            f = open(folder / f"slot{s}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield s % n_gpus
            finally:
                f.close()  # releases the lock
            return
        time.sleep(POLL_S)  # more runs than slots (n_jobs > GPUs x jobs_per_gpu): wait


@contextlib.contextmanager
def gpu_slot(jobs_per_gpu: int, under_joblib: bool, device: str, res: dict) -> Iterator[None]:
    """Around one run: under the joblib launcher with CUDA, hold a slot and make its GPU the
    current device (recorded as res["env"]["gpu_slot"]); otherwise do nothing."""
    if not under_joblib or device == "cpu":
        yield
        return
    import torch

    if not torch.cuda.is_available():
        yield
        return
    with hold_slot(torch.cuda.device_count(), jobs_per_gpu) as gpu:
        torch.cuda.set_device(gpu)
        res.setdefault("env", {})["gpu_slot"] = gpu
        yield
