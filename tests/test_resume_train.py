"""Interrupted runs record why and resume from their last checkpoint (real processes, real signals)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts.result import validate

REPO = Path(__file__).resolve().parent.parent


def start(dataset: Path, run_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmark.train", "backbone=r50_fpn", "solver=smoke",
           "solver.max_iter=10", "solver.checkpoint_period=2", "keep_checkpoint=true",
           "measure.flops=false", f"dataset_dir={dataset}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def last_checkpoint(run_dir: Path) -> str | None:
    try:
        return (run_dir / "d2" / "last_checkpoint").read_text().strip() or None
    except FileNotFoundError:
        return None


def wait_for_new_checkpoint(proc: subprocess.Popen, run_dir: Path, old: str | None, timeout=600):
    t0 = time.monotonic()
    while last_checkpoint(run_dir) in (None, old):
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before a new checkpoint:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.05)


def next_iter(checkpoint: str) -> int:
    """model_0000003.pth holds iteration 3 done: training resumes at 4."""
    return int(checkpoint.removeprefix("model_").removesuffix(".pth")) + 1


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"

    # 1. SIGTERM after the first checkpoint: the run records it and exits non-zero
    p = start(tiny_dataset, run_dir)
    wait_for_new_checkpoint(p, run_dir, None)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 143, out[-3000:]
    r = result(run_dir)
    assert validate(r) == [] and r["status"] == "failed"
    assert r["error"]["type"] == "Terminated" and r["error"]["where"].startswith("train iter ")
    first = last_checkpoint(run_dir)

    # 2. resume, then SIGKILL after its next checkpoint: nothing can be recorded, but the
    #    result written at the start says the run did not finish
    p = start(tiny_dataset, run_dir)
    wait_for_new_checkpoint(p, run_dir, first)
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=60)
    log = run_dir / "d2" / "log.txt"  # detectron2's own log (appended by every process)
    assert f"Starting training from iteration {next_iter(first)}" in log.read_text()
    r = result(run_dir)
    assert r["status"] == "failed" and r["error"]["type"] == "Unfinished"
    second = last_checkpoint(run_dir)
    assert next_iter(second) > next_iter(first)

    # 3. run again: resumes from the SIGKILLed run's last checkpoint and finishes
    p = start(tiny_dataset, run_dir)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    r = result(run_dir)
    assert validate(r) == [] and r["status"] == "ok"
    assert r["resumed_from_iter"] == next_iter(second)
    assert f"Starting training from iteration {next_iter(second)}" in log.read_text()
    # only the last checkpoint is ever kept, across all three processes; keep_checkpoint=true
    # keeps the final model
    assert sorted(p.name for p in (run_dir / "d2").glob("*.pth")) == ["model_final.pth"]
    # the training log covers every iteration once the runs are put together
    iters = {json.loads(line)["iteration"] for line in (run_dir / "d2" / "metrics.json").open()}
    assert max(iters) == 9


def test_an_interrupt_is_not_masked_by_a_cleanup_failure():
    """SIGTERM early in training, then detectron2's after_train hooks (run in a finally) fail
    on the half-filled event storage: the run records the interrupt, not the hook's error."""
    from benchmark.training.signals import Terminated, interrupt_behind

    def train():
        try:
            raise Terminated("signal SIGTERM received")
        finally:
            1 / 0  # what a timer hook did with zero timed iterations

    with pytest.raises(ZeroDivisionError) as info:
        train()
    stop = interrupt_behind(info.value)
    assert isinstance(stop, Terminated) and "SIGTERM" in str(stop)
    assert interrupt_behind(ValueError("plain failure")) is None
