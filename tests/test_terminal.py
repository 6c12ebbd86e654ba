"""What a user sees: one line per run (progress bar, then AP), detectron2's chatter in the
run's log file, warnings and errors in full, and the sweep's one-line summary."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.training.logs import summary_line

REPO = Path(__file__).resolve().parent.parent


def test_summary_line_of_ok_and_failed_runs():
    ok = {"backbone": "R50-FPN", "status": "ok", "timing": {"train_wall_s": 312.4},
          "metrics": {"segm": {"per_class": {"left_lung": {"AP": 57.14}, "right_lung": {"AP": 72.3},
                                             "infection": {"AP": None}}}}}
    assert summary_line(ok) == ("R50-FPN  ok  segm AP  left lung 57.1  right lung 72.3  "
                                "infection n/a  (312 s training)")
    bad = {"backbone": "R50-C4", "status": "failed",
           "error": {"where": "train iter 3", "type": "FloatingPointError", "message": "Loss NaN"}}
    assert summary_line(bad) == "R50-C4  FAILED at train iter 3: FloatingPointError: Loss NaN"


@pytest.mark.slow
def test_sweep_terminal_is_one_line_per_run_and_logs_go_to_the_run(tiny_dataset, tmp_path):
    sweep = tmp_path / "sweep"
    master, slave = pty.openpty()  # stderr a terminal: the progress bar draws, as for a user
    p = subprocess.Popen([sys.executable, "-m", "benchmark.sweep", "+experiment=smoke", "backbone=r50_fpn",
                          "solver.max_iter=3", "measure.flops=false", f"dataset_dir={tiny_dataset}",
                          f"hydra.sweep.dir={sweep}"], cwd=REPO, stdout=subprocess.PIPE, stderr=slave,
                         text=True)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read()
    assert p.wait(timeout=600) == 0, out + err.decode(errors="replace")[-3000:]
    err_text = err.decode(errors="replace")
    both = out + err_text
    # detectron2's INFO logs and the model dump are in the run's log file, not on the terminal
    assert "GeneralizedRCNN(" not in both and "d2.data" not in both and "[detectron2" not in both
    log = (sweep / "R50-FPN" / "d2" / "log.txt").read_text()
    assert "GeneralizedRCNN(" in log and "Starting training from iteration 0" in log
    # one progress line for the run (iterations with the loss), then its AP, then the summary
    assert "R50-FPN  [" in err_text and "]  3/3  loss " in err_text
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert any(ln.startswith("R50-FPN  ok  segm AP  left lung ") for ln in lines), out
    assert lines[-1] == "1 run: 1 ok"


def test_progress_text():
    from benchmark.training.logs import progress_text

    assert progress_text("R50-FPN", 120, 300, 1.23456, width=10) == "R50-FPN  [####------]  120/300  loss 1.235"
    assert progress_text("R50-C4", 0, 60, None, width=4) == "R50-C4  [----]  0/60"


class _Tty:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def _drive_progress(runs_at_once: int, max_iter: int = 8) -> str:
    """Run the progress hook over a fake trainer of ``max_iter`` steps; what it drew."""
    from types import SimpleNamespace

    from benchmark.training.logs import progress_hook, share_terminal

    class History:
        def latest(self):
            return 0.5

    tty = _Tty()
    share_terminal(runs_at_once)
    try:
        hook = progress_hook("R50-C4", stream=tty)
        hook.trainer = SimpleNamespace(start_iter=0, max_iter=max_iter,
                                       storage=SimpleNamespace(history=lambda k: History()))
        hook.before_train()
        for _ in range(max_iter):
            hook.after_step()
        hook.after_train()
    finally:
        share_terminal(1)
    return tty.text


def test_progress_redraws_one_line_when_the_run_is_alone():
    text = _drive_progress(1)
    assert text.count("\r") == 9 and text.endswith("]  8/8  loss 0.500\n") and text.count("\n") == 1


def test_progress_prints_quarters_when_runs_share_the_terminal():
    # two runs at once (the demo's joblib launcher): redrawing in place would overwrite the
    # other run's line, so each run prints whole lines at 1/4, 1/2, 3/4 and the end
    lines = _drive_progress(2).splitlines()
    assert "\r" not in "".join(lines)
    assert [ln.split("]  ")[1] for ln in lines] == ["2/8  loss 0.500", "4/8  loss 0.500",
                                                    "6/8  loss 0.500", "8/8  loss 0.500"]
