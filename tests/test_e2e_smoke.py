"""End to end, as CI and `make demo` run it: the nine backbones swept with the smoke solver on
the tiny phantom (real detectron2 training and COCO evaluation on the CPU), then the report.

One sweep serves every test here (module fixture): each backbone's result.json is checked on
its own (a valid run with per-class AP for bbox and segm), then the report built from them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from contracts.catalog import CLASS_NAMES as CLASSES
from contracts.result import read_result, validate
from reports.build import build_report
from tests.test_reports import Page, section_text

REPO = Path(__file__).resolve().parents[1]
NINE = {"r50_c4": "R50-C4", "r50_dc5": "R50-DC5", "r50_fpn": "R50-FPN",
        "r101_c4": "R101-C4", "r101_dc5": "R101-DC5", "r101_fpn": "R101-FPN",
        "x101_c4": "X101-C4", "x101_dc5": "X101-DC5", "x101_fpn": "X101-FPN"}
# 4 iterations (the first left out of the median s/iter), one checkpoint at the end only
SMOKE = ["solver.max_iter=4", "solver.checkpoint_period=100", "measure.warmup_iters=1"]

pytestmark = pytest.mark.slow
# benchmark.sweep's last line: `9 runs: 8 ok, 1 failed (R50-C4: ...), 1 missing (X101-C4)`
SUMMARY = re.compile(r"(?P<runs>\d+) runs?: (?P<ok>\d+) ok"
                     r"(?:, (?P<failed>\d+) failed \(.*?\))?(?:, (?P<missing>\d+) missing \(.*\))?")


def summary_counts(line: str) -> dict[str, int]:
    """{runs, ok, failed, missing} read from a sweep's summary line (absent parts count 0)."""
    m = SUMMARY.fullmatch(line.strip())
    assert m, f"not a sweep summary line: {line!r}"
    return {k: int(v or 0) for k, v in m.groupdict().items()}


def expected_device() -> str:
    """What device=auto resolves to here (the sweep runs with the default device)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def smoke_sweep(tiny_dataset, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("e2e") / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.sweep", "+experiment=smoke", f"dataset_dir={tiny_dataset}",
         f"hydra.sweep.dir={sweep_dir}", *SMOKE],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    runs = {}
    for path in sweep_dir.rglob("result.json"):
        r = read_result(path.parent).data
        runs[r["backbone"]] = (path.parent, r)
    return proc, sweep_dir, runs


def classes_in(json_file) -> set[str]:
    coco = json.loads(Path(json_file).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return {names[a["category_id"]] for a in coco["annotations"]}


def test_sweep_finishes_with_summary(smoke_sweep):
    proc, sweep_dir, runs = smoke_sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert summary_counts(last) == {"runs": 9, "ok": 9, "failed": 0, "missing": 0}, last
    assert last == "9 runs: 9 ok"
    assert sorted(runs) == sorted(NINE.values())
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["summary"] == last
    assert sorted(r["label"] for r in plan["runs"]) == sorted(NINE.values())
    assert [r["status"] for r in plan["runs"]] == ["ok"] * 9, [(r["label"], r["status"], r["error"])
                                                               for r in plan["runs"]]


@pytest.mark.parametrize("backbone", NINE)
def test_backbone_trains_and_writes_result(smoke_sweep, backbone):
    _, _, runs = smoke_sweep
    run_dir, r = runs[NINE[backbone]]
    assert validate(r) == [], validate(r)
    assert r["status"] == "ok" and r["error"] is None
    assert r["trunk"] + "-" + r["head"] == r["backbone"]
    assert r["in_zoo"] == (backbone not in ("x101_c4", "x101_dc5"))
    assert r["experiment"] == "smoke" and r["weights"] == "scratch" and r["solver"]["max_iter"] == 4
    assert r["dataset"]["n_train_images"] > r["dataset"]["n_test_images"] > 0
    # per-class AP for bbox and segm: a number for every class the test split has
    present = classes_in(r["artifacts"]["test_annotations"])
    assert present == set(CLASSES)
    for task in ("bbox", "segm"):
        for cls in CLASSES:
            row = r["metrics"][task]["per_class"][cls]
            assert row["AP"] is not None and 0 <= row["AP"] <= 100, (task, cls, row)
    assert set(r["metrics"]["dice"]["mean"]) == set(CLASSES)
    # measured, not guessed
    t, m = r["timing"], r["model"]
    assert t["train_s_per_iter"] > 0 and t["infer_s_per_image"] > 0 and t["train_iters_timed"] == 3
    # the median of 3 timed iterations is at most half the sum of the two slowest
    assert t["train_wall_s"] >= 2 * t["train_s_per_iter"]
    assert 20 < m["params_m"] < 300 and m["gflops"] > 0 and m["gflops_input_hw"] == r["dataset"]["image_size"]
    assert r["memory"]["peak_rss_mb"] > 100 and r["env"]["device"] == expected_device()
    if r["env"]["device"] == "cuda":
        assert r["memory"]["peak_gpu_mb"] > 0
    else:  # a process that never touched CUDA has no GPU peak
        assert r["memory"]["peak_gpu_mb"] is None
    # artifacts exist; checkpoints are gone (keep_checkpoint false); TensorBoard events stay
    d2 = run_dir / "d2"
    preds = json.loads((run_dir / r["artifacts"]["predictions"]).read_text())
    assert isinstance(preds, list) and all("segmentation" in p for p in preds)
    assert (run_dir / r["artifacts"]["metrics_log"]).is_file()
    assert list(d2.glob("events.out.tfevents.*"))
    assert not list(d2.glob("*.pth")) and not (d2 / "last_checkpoint").exists()


def test_report_from_the_sweep(smoke_sweep):
    _, sweep_dir, _ = smoke_sweep
    html = build_report(sweep_dir, progress=False)
    report = html.parent
    runs = pd.read_csv(report / "runs.csv")
    assert sorted(runs["backbone"]) == sorted(NINE.values())
    assert list(runs["status"]) == ["ok"] * 9, runs.filter(["backbone", "status", "error_reason"]).to_string()
    t3 = pd.read_csv(report / "table3.csv")
    assert sorted(t3["backbone"]) == sorted(NINE.values())
    assert list(t3["n_runs"]) == list(t3["n_ok"]) == [1] * 9
    per_class = pd.read_csv(report / "per_class_ap.csv")
    classes = per_class.groupby("backbone")["class"].apply(set)
    assert len(classes) == 9 and all(c == set(CLASSES) for c in classes)
    page = Page(html.read_text())
    assert "NOT comparable" in page.text("smoke-warning")
    # nothing failed, nothing missing: the counts say 0 and the failures section says none
    assert [page.text(i) for i in ("n-runs", "n-ok", "n-failed", "n-missing")] == [
        "9 run(s)", "9 ok", "0 FAILED", "0 MISSING (of 9 planned run(s))"]
    assert "failed" not in page.tables and "missing" not in page.tables and "problems" not in page.texts
    assert section_text(page, "failures") == "None: every expected run has a result and every run succeeded."
    every = page.table("runs")
    assert [r["status"] for r in every.rows] == ["ok"] * 9 and not any(every.classes)
    assert len(list(report.glob("*.png"))) >= 4


def test_report_3d_section_has_both_lung_definitions(smoke_sweep):
    """The 3-D section of a real sweep: every run scored its test case on the lungs as labelled
    (the benchmark's definition) and on whole lungs, and from every detection; the published
    numbers sit beside the labelled lungs only; the threshold is stated; scratch runs carry no
    schedule; one test case per run can test nothing, and the verdicts say so."""
    _, sweep_dir, runs = smoke_sweep
    for _, r in runs.values():
        v3d = r["metrics"]["volume3d"]
        assert v3d is not None and v3d["score_thresh"] == 0.5 and v3d["score_thresh_all"] == 0.05
        assert "per_case" not in v3d  # each case's numbers once, in metrics.per_case
        for case in r["metrics"]["per_case"].values():
            assert {"dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled", "dice3d_all"} <= set(case)
            # infection is one definition; the labelled lung is never bigger than the whole one
            assert case["nsd3d_labelled"]["infection"] == case["nsd3d"]["infection"]
        assert {"fp_no_gt", "fp_no_gt_any"} <= set(next(iter(r["metrics"]["per_case"].values())))
    html = build_report(sweep_dir, progress=False)
    report = html.parent
    page = Page(html.read_text())
    labelled, whole = page.table("volume3d-labelled"), page.table("volume3d-table")
    refs = {"Ma et al., nnU-Net 3-D joint model, 80/20 (16 train / 4 test per fold)",
            "Ma et al., nnU-Net 3-D separate models, Task 1 (4 train / 16 test per fold)"}
    labelled_rows = {row["backbone"] for row in labelled.rows}
    whole_rows = {row["backbone"] for row in whole.rows}
    assert refs <= labelled_rows and not refs & whole_rows
    ours = {f"{b} scratch" for b in NINE.values()}
    assert ours <= labelled_rows and ours <= whole_rows  # scratch runs: the weights, no schedule
    assert not any(" 3x" in b or " 1x" in b for b in labelled_rows | whole_rows)
    assert "Score threshold of the 3-D label volumes: detections scoring at least 0.5" in page.text("volume3d-settings")
    v = pd.read_csv(report / "volume3d.csv")
    assert set(v[v["source"] != "ours"]["metric"]) == {"dice3d_labelled", "nsd3d_labelled"}
    assert {"dice3d", "dice3d_labelled", "dice3d_all"} <= set(v[v["source"] == "ours"]["metric"])
    # one test case per run: no verdict can claim anything
    verdicts = pd.read_csv(report / "verdicts.csv")
    assert set(verdicts["kind"]) <= {"no_test", "zero"}, verdicts.to_string()
    assert (report / "false_positives.csv").is_file()
