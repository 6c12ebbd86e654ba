"""A finished run is not redone; a diverging run records why it failed (tiny phantom, CPU)."""

from __future__ import annotations

import pytest

from contracts.result import read_result, validate
from benchmark.training.config import compose
from benchmark.training.run import run

# pycocotools' encode/decode on numpy 2 (not ours): one warning per mask
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# 4 iterations, the first left out of the median; one checkpoint at the end only
SMOKE = ["solver=smoke", "solver.max_iter=4", "solver.checkpoint_period=100", "measure.warmup_iters=1"]


# Each of the nine backbones training and writing a valid result.json is checked once, on the
# end-to-end smoke sweep (tests/test_e2e_smoke.py), so CI trains them once, not twice.


@pytest.mark.slow
def test_finished_run_is_not_redone(tiny_dataset, tmp_path, capsys):
    cfg = compose([f"dataset_dir={tiny_dataset}", *SMOKE, "solver.max_iter=2", "measure.flops=false"])
    assert run(cfg, tmp_path) == 0
    mtime = (tmp_path / "result.json").stat().st_mtime_ns
    assert run(cfg, tmp_path) == 0
    assert "not redone" in capsys.readouterr().out
    assert (tmp_path / "result.json").stat().st_mtime_ns == mtime
    # the same folder with another config is refused, the result left as it is
    other = compose([f"dataset_dir={tiny_dataset}", *SMOKE, "solver.max_iter=3"])
    assert run(other, tmp_path) == 2
    assert "solver.max_iter" in capsys.readouterr().err
    assert (tmp_path / "result.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_diverging_run_records_failed(tiny_dataset, tmp_path):
    """Scratch training with the zoo's frozen BatchNorm diverges at once (DESIGN.md)."""
    cfg = compose([f"dataset_dir={tiny_dataset}", *SMOKE, "weights.norm=FrozenBN",
                   "weights.freeze_at=2", "weights.recipe.base_lr=10.0", "weights.recipe.clip_gradients=null"])
    assert run(cfg, tmp_path) == 1
    r = read_result(tmp_path).data
    assert validate(r) == []
    assert r["status"] == "failed" and r["error"]["type"] == "FloatingPointError"
    assert r["error"]["where"].startswith("train iter ")
    assert "NaN" in r["error"]["message"] and "Traceback" in r["error"]["traceback"]
    assert r["finished_at"] and r["backbone"] == "R50-FPN" and r["config"]["seed"] == 0
    # failed runs are redone (resumed) on the next call, not skipped
    assert run(cfg, tmp_path) == 1
