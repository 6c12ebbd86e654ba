"""A GPU that torch cannot use fails setup and every device=auto run loudly (benchmark.cudacheck),
with nvidia-smi simulated by a stub on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.training.config import resolve_device
from contracts.errors import ConfigError
from benchmark import cudacheck

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that lists one H200 under driver 535 (CUDA 12.2); without CUDA
    torch here cannot use it, which is the case to catch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "nvidia-smi"
    stub.write_text("#!/bin/sh\n"
                    'case "$*" in\n'
                    '  *--query-gpu=name,driver_version*) echo "NVIDIA H200, 535.104.05" ;;\n'
                    '  *) echo "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |" ;;\n'
                    "esac\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return stub


def test_the_stub_is_read_like_nvidia_smi(smi):
    assert cudacheck.visible_gpus() == [{"name": "NVIDIA H200", "driver": "535.104.05"}]
    assert cudacheck.driver_cuda() == "12.2"


def test_no_nvidia_smi_sees_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi at all
    assert cudacheck.visible_gpus() == [] and cudacheck.driver_cuda() is None


def test_a_failing_nvidia_smi_sees_no_gpu(smi):
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with "
                   "the NVIDIA driver' >&2\nexit 9\n")
    assert cudacheck.visible_gpus() == []


def test_the_message_says_why_and_what_to_do():
    h200 = [{"name": "NVIDIA H200", "driver": "535.104.05"}]
    old = cudacheck.unusable_message(h200, "2.14.1+cu130", "13.0", "12.2")
    assert "nvidia-smi sees 1 GPU(s) (NVIDIA H200; driver 535.104.05, CUDA 12.2)" in old
    assert "built for CUDA 13.0, newer than this driver supports (12.2)" in old
    assert "--index-url" in old and "device=cpu" in old and "CUDA_VISIBLE_DEVICES=" in old
    cpu = cudacheck.unusable_message(h200, "2.11.0+cpu", None, "13.0")
    assert "torch 2.11.0+cpu is a CPU-only build" in cpu


def test_device_auto_refuses_to_train_on_the_cpu_beside_a_gpu(smi, monkeypatch):
    if CUDA:  # torch uses this machine's GPUs: auto is cuda, whatever the stub says
        assert resolve_device("auto") == "cuda"
        return
    with pytest.raises(ConfigError) as e:
        resolve_device("auto")
    assert str(e.value).startswith("device=auto: nvidia-smi sees 1 GPU(s) (NVIDIA H200")
    assert resolve_device("cpu") == "cpu"  # the CPU on purpose
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose
    assert resolve_device("auto") == "cpu"


def test_device_auto_without_nvidia_smi_is_the_cpu_or_cuda(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: nothing to compare with
    assert resolve_device("auto") == ("cuda" if CUDA else "cpu")


def test_setup_fails_before_building_anything(smi, tmp_path):
    if CUDA:
        pytest.skip("torch uses this machine's GPU: setup would go on and install detectron2")
    cache = tmp_path / "cache"
    env = dict(os.environ, LUNGBENCH_CACHE=str(cache))
    p = subprocess.run([sys.executable, "-m", "benchmark.build_detectron2", "--install"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "setup: nvidia-smi sees 1 GPU(s) (NVIDIA H200" in p.stderr
    assert not cache.exists()  # nothing downloaded or built
    p = subprocess.run([sys.executable, "-m", "benchmark.cudacheck"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "cudacheck: nvidia-smi sees 1 GPU(s)" in p.stderr


def test_the_checker_passes_without_a_gpu_it_cannot_use(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no nvidia-smi
    p = subprocess.run([sys.executable, "-m", "benchmark.cudacheck"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert ("uses" if CUDA else "no GPU seen; torch") in p.stdout
