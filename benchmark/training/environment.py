"""Where a run ran: the machine, the library versions and the git commit (result.json ``env``)."""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from pathlib import Path


def now() -> str:
    """The time in UTC, ISO 8601 to the second (``started_at``, ``finished_at``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_sha() -> str | None:
    """The short commit of the lungbench checkout, None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | None) -> dict:
    """result.json's ``env``: ``device``, torch/detectron2/python versions, ``git_sha``,
    ``hostname``, ``torch_threads``, and with CUDA the ``gpu`` name."""
    import detectron2
    import torch

    env = {"device": device, "torch": torch.__version__, "detectron2": detectron2.__version__,
           "python": platform.python_version(), "git_sha": git_sha(),
           "hostname": socket.gethostname(), "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
