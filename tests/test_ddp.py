"""The multi-process (DDP) path, run on a CPU: two gloo processes train one run, and the
final evaluation predicts every test image exactly once (not one process's shard)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.result import validate

REPO = Path(__file__).resolve().parent.parent


def train(dataset: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark.train", "solver=smoke", "solver.max_iter=4",
                           "measure.flops=false", "device=cpu", f"dataset_dir={dataset}",
                           f"hydra.run.dir={run_dir}", *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_two_cpu_processes_score_the_whole_test_set(tiny_dataset, tmp_path):
    p = train(tiny_dataset, tmp_path / "ddp", "num_gpus=2")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert validate(res) == [] and res["status"] == "ok"
    assert res["config"]["num_gpus"] == 2
    # rank 0's facts come back from the worker file only a multi-process launch writes
    assert (tmp_path / "ddp" / "d2" / "lungbench_worker.json").is_file()
    test = json.loads(Path(res["artifacts"]["test_annotations"]).read_text())
    assert res["dataset"]["n_test_images"] == len(test["images"])
    assert res["dataset"]["n_predicted_images"] == len(test["images"])
    preds = json.loads((tmp_path / "ddp" / res["artifacts"]["predictions"]).read_text())
    assert {p["image_id"] for p in preds} <= {im["id"] for im in test["images"]}
    assert any("gloo" in n for n in res["notes"])

    one = train(tiny_dataset, tmp_path / "one")  # the same contract as a one-process run
    assert one.returncode == 0, one.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "result.json").read_text())
    assert set(single) == set(res)
    assert set(single["metrics"]["segm"]) == set(res["metrics"]["segm"])
    assert single["dataset"]["n_predicted_images"] == res["dataset"]["n_predicted_images"]
