"""`make sweep EXPERIMENT=leak` on the phantom: R50-FPN on patient_kfold and slice_random over
the same folds, then `make report`: the report measures the gap in its leak section."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def make(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    # the venv is built (make test depends on it): never rebuild it from here
    proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.lungbench-stamp", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_make_sweep_leak_runs_both_splits_and_the_report_shows_the_gap(tiny_dataset, tmp_path):
    sweep = tmp_path / "leak"
    proc = make("sweep", "EXPERIMENT=leak", f"DATA_OUT={tiny_dataset}", f"SWEEP_DIR={sweep}",
                "ARGS=solver=smoke solver.max_iter=4 measure.flops=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "4 runs: 4 ok"
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert sorted((r["backbone"], r["dataset"]["split"], r["dataset"]["fold"]) for r in results) == [
        ("R50-FPN", s, f) for s in ("patient_kfold", "slice_random") for f in (0, 1)]

    proc = make("report", f"SWEEP={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (sweep / "report" / "report.html").read_text()
    assert "id='leak'" in html and 'id="leak-table"' in html
    leak = pd.read_csv(sweep / "report" / "leak.csv")
    # one row per class and the mean, over the cases both splits tested (the patient folds' 2)
    assert list(leak["backbone"].str.split().str[0].unique()) == ["R50-FPN"]
    assert len(leak) == 4 and set(leak["n_cases"]) == {2}
    # 2 cases: the gap is shown, but no interval or p-value is claimed
    assert leak["gap"].notna().all() and leak["p"].isna().all()
