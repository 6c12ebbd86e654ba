"""The GPU check (perf/gpu_check.sh): its figures and table from result.json dicts (fast) and
its --dry-run end to end on the CPU (slow), so the script for a GPU machine keeps working
between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from perf import gpu_check as G

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _res(backbone, s_per_iter, *, amp=False, wall=30.0, infer=0.05, eval_wall=2.0, peak=4000.0,
         iters=100, status="ok"):
    """The parts of a result.json the check reads."""
    return {"backbone": backbone, "status": status,
            "error": None if status == "ok" else {"type": "OutOfMemoryError", "message": "CUDA"},
            "solver": {"amp": amp, "max_iter": iters, "ims_per_batch": 2},
            "timing": {"train_s_per_iter": s_per_iter if status == "ok" else None,
                       "infer_s_per_image": infer, "train_wall_s": wall - 5.0,
                       "eval_wall_s": eval_wall, "infer_batch_size": 8},
            "memory": {"peak_gpu_mb": peak, "peak_rss_mb": 900.0}, "env": {"gpu_slot": 0},
            "started_at": T0.isoformat(), "finished_at": (T0 + timedelta(seconds=wall)).isoformat()}


def _level(precision, k, results, wall_s=60.0, **kw):
    return {"precision": precision, "k": k, "slots": k, "wall_s": wall_s, "cut_short": False,
            "runs": [G.run_facts(r) for r in results], **kw}


# Two backbones, 100 iterations a run, inference 0.05 s/image, eval_wall_s 2 s.
LEVELS = [
    _level("fp32", 1, [_res("R50-FPN", 0.10, wall=30), _res("R50-C4", 0.30, wall=50)]),
    _level("amp", 1, [_res("R50-FPN", 0.06, amp=True, wall=30),
                      _res("R50-C4", 0.15, amp=True, wall=40)]),
    _level("amp", 2, [_res("R50-FPN", 0.09, amp=True, wall=35),
                      _res("R50-C4", 0.20, amp=True, wall=60)]),
    _level("amp", 4, [_res("R50-FPN", 0.10, amp=True),
                      _res("R50-C4", None, amp=True, status="failed")]),
    {"precision": "amp", "k": 8, "slots": 8, "skipped": "time budget (3 s left, ~50 s needed)"},
]


def test_run_facts_from_a_result_json():
    f = G.run_facts(_res("R50-FPN", 0.10, wall=30))
    assert f["ok"] and f["s_per_iter"] == 0.10 and f["peak_mb"] == 4000.0 and f["gpu"] == 0
    assert f["run_wall_s"] == 30.0
    # paid once: 30 s wall - 100 iterations x 0.1 s - 2 s inference = 18 s
    assert f["once_s"] == pytest.approx(18.0)
    # 1000 iterations, 100 test slices: 18 + 1000 x 0.1 + 100 x 0.05 = 123 s
    assert G.extrapolated_s(f, 1000, 100) == pytest.approx(123.0)
    bad = G.run_facts(_res("R50-C4", None, status="failed"))
    assert not bad["ok"] and bad["once_s"] is None and bad["error"].startswith("OutOfMemoryError")
    cpu = G.run_facts(dict(_res("R50-C4", 0.3), memory={"peak_gpu_mb": None, "peak_rss_mb": 900.0}))
    assert cpu["peak_mb"] == 900.0  # no CUDA: the process's peak RSS


def test_makespan_is_list_scheduling_in_order():
    assert G.makespan([5, 3, 4], 1) == 12
    # slot A: 5; slot B: 3, frees first, takes 4 -> 7
    assert G.makespan([5, 3, 4], 2) == 7
    assert G.makespan([5, 3, 4], 8) == 5
    assert G.makespan([], 3) == 0
    with pytest.raises(ValueError):
        G.makespan([1.0], 0)


def test_summarise_levels():
    s = G.summarise(LEVELS, iters=1000, test_images=100, pack_precision="amp")
    rows = {(r["precision"], r["k"]): r for r in s["levels"]}
    # each run at 1000 iterations = once + 1000 x s/iter + 100 x 0.05 (once = wall - 100 s/iter - 2):
    #   fp32 k=1: R50-FPN 18 + 100 + 5 = 123, R50-C4 18 + 300 + 5 = 323 -> 446 s one after another
    assert s["sequential"]["fp32"] == pytest.approx(446 / 60)
    #   amp k=1: 22 + 60 + 5 = 87, 23 + 150 + 5 = 178 -> 265 s
    assert s["sequential"]["amp"] == pytest.approx(265 / 60)
    assert rows[("amp", 1)]["slowdown"] == pytest.approx(1.0)
    assert rows[("amp", 1)]["runs_per_hour"] == pytest.approx(3600 * 2 / 265)
    #   amp k=2: 24 + 90 + 5 = 119, 38 + 200 + 5 = 243 on two slots -> 243 s;
    #   slowdown (0.09 / 0.06 + 0.20 / 0.15) / 2 = (1.5 + 1.333) / 2
    k2 = rows[("amp", 2)]
    assert k2["grid_min"] == pytest.approx(243 / 60)
    assert k2["slowdown"] == pytest.approx((1.5 + 0.2 / 0.15) / 2)
    assert k2["median_s_per_iter"] == pytest.approx((0.09 + 0.20) / 2)
    assert k2["runs_per_hour"] == pytest.approx(3600 * 2 * 2 / (119 + 243))
    assert k2["failed"] == 0 and k2["peak_mb"] == 4000.0
    # a level with a failed run is not extrapolated; a skipped one stays skipped
    assert rows[("amp", 4)]["failed"] == 1 and rows[("amp", 4)]["grid_min"] is None
    assert rows[("amp", 8)]["skipped"].startswith("time budget")
    assert s["best_k"] == 2 and s["best_min"] == pytest.approx(243 / 60)
    assert s["speedup_vs_fp32"] == pytest.approx(446 / 243)


def test_render_the_table():
    zoo = G.load_zoo()
    doc = {"dry_run": False, "measured_at": "now", "command": "perf/gpu_check.sh", "wall_s": 400.0,
           "env": {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.14", "detectron2": "0.6",
                   "python": "3.12", "cpu_count": 16, "gpus": 1},
           "settings": {"image_size": 512, "n_train_images": 16, "n_test_images": 8,
                        "solver": "paper", "weights": "scratch", "iters": 100, "overrides": [],
                        "ims_per_batch": 2, "input_size": "zoo", "infer_batch": 8},
           "zoo": {k: zoo[k] for k in ("source", "gpu", "gpus", "images_per_iter")},
           "levels": LEVELS, "skipped": ["amp k=8"]}
    doc["backbones"] = G.backbone_rows(LEVELS, ["r50_fpn", "r50_c4", "x101_c4"], zoo, 2, None)
    doc["summary"] = G.summarise(LEVELS, iters=5000, test_images=704, pack_precision="amp")
    md = G.render(doc)
    zfpn = G.zoo_figures(zoo, "R50-FPN", 2)["train_s_per_iter"]
    row = next(line for line in md.splitlines() if line.startswith("| R50-FPN |"))
    assert row.startswith(f"| R50-FPN | 0.1 | 0.06 | 1.7x | {zfpn:.3g} | {0.1 / zfpn:.2g}x | 0.05 |")
    assert "| 4,000 | 4,000 |" in row
    assert "| X101-C4 | - | - | - | - |" in md  # not run, not in the zoo
    assert "| 2 | 2 | 0.145 | 1.42 | 60 | 4,000 |" in md
    assert "| 4 | 2 (1 FAILED) |" in md and "amp k=4 R50-C4 failed: OutOfMemoryError" in md
    assert "| 8 | skipped: time budget" in md and "peak GPU MiB fp32" in md
    assert "make sweep ARGS='hydra/launcher=joblib jobs_per_gpu=2 amp=true'" in md
    assert "Sweep of the 2 backbone(s) above x 5000 iterations (NOT the full grid)" in md


def test_zoo_figures_scale_to_images_per_gpu():
    zoo = G.load_zoo()
    assert zoo["images_per_iter"] / zoo["gpus"] == 2  # 16 images/iter on 8 V100s
    row = next(c for c in zoo["configs"] if c["backbone"] == "R101-FPN" and c["schedule"] == "3x")
    same = G.zoo_figures(zoo, "R101-FPN", 2)
    assert same["train_s_per_iter"] == pytest.approx(row["train_s_per_iter"])  # 2 per GPU: as is
    assert G.zoo_figures(zoo, "R101-FPN", 4)["train_s_per_iter"] == pytest.approx(
        2 * row["train_s_per_iter"])
    assert same["train_mem_mb"] == pytest.approx(row["train_mem_gb"] * 1024)
    assert G.zoo_figures(zoo, "R50-FPN", 2)["schedule"] == "3x"  # the 3x row where there are two
    assert G.zoo_figures(zoo, "X101-C4", 2) is None and G.zoo_figures(zoo, "X101-DC5", 2) is None
    assert {G.display_name(k) for k in G.GRID9} - {c["backbone"] for c in zoo["configs"]} == \
        set(zoo["not_in_zoo"])


def test_one_harness_sweep_per_level(tmp_path):
    cmd = G.sweep_command(4, "amp", iters=15, solver="paper", weights="scratch",
                          backbones=["r50_fpn", "x101_c4"], dataset=tmp_path, sweep_dir=tmp_path / "s",
                          device="cuda", overrides=["cudnn_benchmark=true"])
    assert cmd[1:3] == ["-m", "benchmark.sweep"]
    for arg in ("+experiment=grid9", "backbone=r50_fpn,x101_c4", "hydra/launcher=joblib",
                "jobs_per_gpu=4", "solver.max_iter=15", "amp=true", "solver=paper",
                f"hydra.sweep.dir={tmp_path / 's'}", "cudnn_benchmark=true"):
        assert arg in cmd
    assert not any(a.startswith("hydra.launcher.n_jobs=") for a in cmd)  # GPUs x 4, the harness's
    cpu = G.sweep_command(2, "fp32", iters=6, solver="smoke", weights="scratch", backbones=["r50_c4"],
                          dataset=tmp_path, sweep_dir=tmp_path, device="cpu")
    assert "hydra.launcher.n_jobs=2" in cpu and "amp=false" in cpu


def test_no_training_loop_in_perf():
    """The check drives the harness; it never steps a model itself."""
    for path in (REPO / "perf").glob("gpu_*"):
        text = path.read_text()
        for needle in ("run_step", "optimizer.step", "trainer._", "loss.backward"):
            assert needle not in text, f"{path.name}: {needle}"


# --------------------------------------------------------------------------- dry run


@pytest.mark.slow
def test_dry_run_prints_the_table(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "perf" / "gpu_check.sh"), "--dry-run", "--out",
                           str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert md in proc.stdout  # the table is printed too
    assert doc["dry_run"] is True
    cuda = doc["env"]["device"] == "cuda"
    expect = [("fp32", 1)] + ([("amp", 1)] if cuda else []) + [(p, 2) for p in (["amp"] if cuda else ["fp32"])]
    assert [(lv["precision"], lv["k"]) for lv in doc["levels"]] == expect
    backbones = doc["plan"]["backbones"]
    for lv in doc["levels"]:
        assert not lv.get("skipped") and not lv["cut_short"] and lv["rc"] == 0, lv
        assert sorted(r["backbone"] for r in lv["runs"]) == sorted(map(G.display_name, backbones))
        for r in lv["runs"]:
            assert r["ok"] and r["s_per_iter"] > 0 and r["peak_mb"] > 0 and r["once_s"] is not None, r
        assert f"| {lv['k']} | {len(backbones)} |" in md or lv["precision"] != doc["summary"]["pack_precision"]
    for b in doc["backbones"]:
        assert f"| {b['name']} | " in md and b["fp32"]["ok"]
    s = doc["summary"]
    assert s["sequential"]["fp32"] > 0 and s["best_k"] in (1, 2)
    assert "best:" in md and "one after another, fp32" in md
