"""A run reads its dataset once and passes it down: dataset.json and the test split's COCO file
are each parsed once by lungbench in a whole run (train, predict the test slices, score them,
score the test cases in 3-D), however many steps use them. detectron2's own loader reads the
COCO files too; it opens them itself, not through pathlib, so it is not counted here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from benchmark.training.config import compose
from benchmark.training.run import run
from contracts.dataset import read_dataset
from contracts.result import read_result

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.mark.slow
def test_a_run_parses_dataset_json_and_its_test_file_once(tiny_dataset, tmp_path, monkeypatch):
    test_file = read_dataset(tiny_dataset).split_file("patient_kfold", 0, "test")
    reads: Counter[str] = Counter()
    read_text = Path.read_text

    def counting(self: Path, *args, **kwargs) -> str:
        reads[str(self.resolve())] += 1
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    cfg = compose([f"dataset_dir={tiny_dataset}", "solver=smoke", "solver.max_iter=1",
                   "measure.flops=false", "measure.warmup_iters=0"])
    assert run(cfg, tmp_path / "run") == 0
    r = read_result(tmp_path / "run").data
    assert r["status"] == "ok" and r["metrics"]["volume3d"] is not None  # every step ran
    assert reads[str((tiny_dataset / "dataset.json").resolve())] == 1
    assert reads[str(test_file.resolve())] == 1
