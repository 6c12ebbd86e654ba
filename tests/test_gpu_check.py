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

from perf import gpu_check

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _res(backbone, s_per_iter, *, amp=False, wall=30.0, infer=0.05, eval_wall=2.0, train_mb=3000.0,
         iters=100, status="ok", seed=0, train_at=(5.0, 25.0)):
    """The parts of a result.json the check reads (training from T0 + train_at[0] to [1] s)."""
    return {"backbone": backbone, "status": status, "seed": seed,
            "error": None if status == "ok" else {"type": "OutOfMemoryError", "message": "CUDA"},
            "solver": {"amp": amp, "max_iter": iters, "ims_per_batch": 2},
            "dataset": {"n_predicted_images": 40},
            "timing": {"train_s_per_iter": s_per_iter if status == "ok" else None,
                       "infer_s_per_image": infer, "train_wall_s": wall - 5.0,
                       "eval_wall_s": eval_wall, "infer_batch_size": 8,
                       "train_started_at": (T0 + timedelta(seconds=train_at[0])).isoformat(),
                       "train_finished_at": (T0 + timedelta(seconds=train_at[1])).isoformat()},
            "memory": {"peak_gpu_mb": 4200.0, "peak_rss_mb": 900.0, "train_peak_gpu_mb": train_mb,
                       "train_reserved_gpu_mb": train_mb + 500, "infer_peak_gpu_mb": 4200.0,
                       "infer_reserved_gpu_mb": 6000.0},
            "env": {"gpu_slot": 0},
            "started_at": T0.isoformat(), "finished_at": (T0 + timedelta(seconds=wall)).isoformat()}


def _level(precision, k, results, wall_s=60.0, **kw):
    return {"precision": precision, "k": k, "slots": k, "wall_s": wall_s, "cut_short": None,
            "iters": 100 if k == 1 else 300, "runs": [gpu_check.run_facts(r) for r in results], **kw}


# Two backbones alone (k = 1), 100 iterations a run, inference 0.05 s/image, eval_wall_s 2 s;
# then packing levels of R50-FPN copies (seeds), 300 iterations each.
LEVELS = [
    _level("fp32", 1, [_res("R50-FPN", 0.10, wall=30), _res("R50-C4", 0.30, wall=50)]),
    _level("amp", 1, [_res("R50-FPN", 0.06, amp=True, wall=30),
                      _res("R50-C4", 0.15, amp=True, wall=40)]),
    _level("amp", 2, [_res("R50-FPN", 0.09, amp=True, infer=0.075, iters=300, train_at=(5, 25)),
                      _res("R50-FPN", 0.09, amp=True, infer=0.075, iters=300, seed=1,
                           train_at=(7, 26))]),
    _level("amp", 4, [_res("R50-FPN", 0.10, amp=True, iters=300),
                      _res("R50-FPN", None, amp=True, status="failed", seed=1)]),
    {"precision": "amp", "k": 8, "slots": 8, "skipped": "time budget (3 s left, ~50 s needed)"},
]


def test_run_facts_from_a_result_json():
    f = gpu_check.run_facts(_res("R50-FPN", 0.10, wall=30))
    assert f["ok"] and f["s_per_iter"] == 0.10 and f["gpu"] == 0
    assert f["run_wall_s"] == 30.0
    # training and inference apart, allocated / reserved; a run holds its largest reserved peak
    assert (f["train_mb"], f["train_reserved_mb"], f["infer_mb"], f["infer_reserved_mb"]) == \
        (3000.0, 3500.0, 4200.0, 6000.0)
    assert f["peak_mb"] == 6000.0
    # 40 test images in batches of 8: the first batch is warm-up, 32 are timed
    assert f["n_test"] == 40 and f["infer_timed"] == 32 and f["infer_warm"] is True
    # fewer test images than one batch (a dry run on CUDA): every batch timed, warm-up included
    few = gpu_check.run_facts(dict(_res("R50-FPN", 0.1), dataset={"n_predicted_images": 4}))
    assert few["infer_timed"] == 4 and few["infer_warm"] is False
    # paid once: 30 s wall - 100 iterations x 0.1 s - 2 s inference = 18 s
    assert f["once_s"] == pytest.approx(18.0)
    # 1000 iterations, 100 test slices: 18 + 1000 x 0.1 + 100 x 0.05 = 123 s; packed 1.5x slower
    assert gpu_check.extrapolated_s(f, 1000, 100) == pytest.approx(123.0)
    assert gpu_check.extrapolated_s(f, 1000, 100, 1.5, 2.0) == pytest.approx(18 + 150 + 10)
    bad = gpu_check.run_facts(_res("R50-C4", None, status="failed"))
    assert not bad["ok"] and bad["once_s"] is None and bad["error"].startswith("OutOfMemoryError")
    cpu = gpu_check.run_facts(dict(_res("R50-C4", 0.3), memory={"peak_gpu_mb": None, "peak_rss_mb": 900.0}))
    assert cpu["peak_mb"] == 900.0 and cpu["train_mb"] is None  # no CUDA: the process's peak RSS


def test_overlap_is_the_time_all_trained_together():
    runs = [gpu_check.run_facts(_res("R50-FPN", 0.1, train_at=(5, 25))),
            gpu_check.run_facts(_res("R50-FPN", 0.1, train_at=(7, 26)))]
    assert gpu_check.overlap(runs) == pytest.approx((25 - 7) / 20)
    # one after the other: nothing in common
    apart = [gpu_check.run_facts(_res("R50-FPN", 0.1, train_at=(0, 10))),
             gpu_check.run_facts(_res("R50-FPN", 0.1, train_at=(12, 20)))]
    assert gpu_check.overlap(apart) == 0.0
    assert gpu_check.overlap(runs[:1]) is None


def test_packed_runs_train_long_enough_to_overlap():
    # 15 s of training at 0.05 s/iter alone: 300 iterations, never fewer than a k = 1 run's
    assert gpu_check.pack_iterations(0.05, 15.0, 30) == 300
    assert gpu_check.pack_iterations(2.0, 15.0, 30) == 30
    assert gpu_check.pack_iterations(0.001, 15.0, 30) == gpu_check.PACK_ITERS_MAX
    assert gpu_check.pack_iterations(None, 15.0, 30) == 30  # no k = 1 figure: as many as alone


def test_makespan_is_list_scheduling_in_order():
    assert gpu_check.makespan([5, 3, 4], 1) == 12
    # slot A: 5; slot B: 3, frees first, takes 4 -> 7
    assert gpu_check.makespan([5, 3, 4], 2) == 7
    assert gpu_check.makespan([5, 3, 4], 8) == 5
    assert gpu_check.makespan([], 3) == 0
    with pytest.raises(ValueError):
        gpu_check.makespan([1.0], 0)


def test_summarise_levels():
    s = gpu_check.summarise(LEVELS, iters=1000, test_images=100, pack_precision="amp")
    rows = {(r["precision"], r["k"]): r for r in s["levels"]}
    # each run at 1000 iterations = once + 1000 x s/iter + 100 x 0.05 (once = wall - 100 s/iter - 2):
    #   fp32 k=1: R50-FPN 18 + 100 + 5 = 123, R50-C4 18 + 300 + 5 = 323 -> 446 s one after another
    assert s["sequential"]["fp32"] == pytest.approx(446 / 60)
    #   amp k=1: 22 + 60 + 5 = 87, 23 + 150 + 5 = 178 -> 265 s
    assert s["sequential"]["amp"] == pytest.approx(265 / 60)
    assert rows[("amp", 1)]["slowdown"] == 1.0 and rows[("amp", 1)]["overlap"] is None
    assert rows[("amp", 1)]["runs_per_hour"] == pytest.approx(3600 * 2 / 265)
    #   amp k=2: two R50-FPN at 0.09 s/iter (alone 0.06) and 0.075 s/image (alone 0.05): 1.5x
    #   both; the grid from each backbone's k=1 figures x 1.5: R50-FPN 22 + 90 + 7.5 = 119.5,
    #   R50-C4 23 + 225 + 7.5 = 255.5 on two slots -> 255.5 s
    k2 = rows[("amp", 2)]
    assert k2["slowdown"] == pytest.approx(1.5) and k2["infer_slowdown"] == pytest.approx(1.5)
    assert k2["overlap"] == pytest.approx(18 / 20)
    assert k2["grid_min"] == pytest.approx(255.5 / 60) and k2["grid_runs"] == 2
    assert k2["runs_per_hour"] == pytest.approx(3600 * 2 * 2 / (119.5 + 255.5))
    assert k2["median_s_per_iter"] == pytest.approx(0.09)
    assert k2["failed"] == 0 and k2["peak_mb"] == 6000.0
    # a level with a failed run is not extrapolated; a skipped one stays skipped
    assert rows[("amp", 4)]["failed"] == 1 and rows[("amp", 4)]["grid_min"] is None
    assert rows[("amp", 8)]["skipped"].startswith("time budget")
    assert s["best_k"] == 2 and s["best_min"] == pytest.approx(255.5 / 60)
    assert s["speedup_vs_fp32"] == pytest.approx(446 / 255.5)


def _doc(levels=LEVELS, **kw):
    zoo = gpu_check.load_zoo()
    doc = {"dry_run": False, "measured_at": "now", "command": "perf/gpu_check.sh", "wall_s": 400.0,
           "finished": True, "plan": {"pack_backbone": "r50_fpn", "pack_train_s": 15.0},
           "env": {"device": "cuda", "gpu": "NVIDIA H200", "gpus": 1, "gpu_memory_mb": 143771.0,
                   "driver": "580.65.06", "driver_cuda": "13.0", "torch": "2.11.0+cu130",
                   "torch_cuda": "13.0", "cudnn": 91002, "detectron2": "0.6+lb1",
                   "python": "3.12.3", "cpu_count": 16},
           "settings": {"image_size": 512, "n_train_images": 76, "n_test_images": 40,
                        "solver": "paper", "weights": "scratch", "iters": 100, "overrides": [],
                        "ims_per_batch": 2, "input_size": "zoo", "infer_batch": 8,
                        "infer_timed": 32, "n_predicted": 40},
           "zoo": {k: zoo[k] for k in ("source", "gpu", "gpus", "images_per_iter")},
           "levels": levels, "skipped": ["amp k=8"], **kw}
    doc["backbones"] = gpu_check.backbone_rows(levels, ["r50_fpn", "r50_c4", "x101_c4"], zoo, 2, None)
    doc["summary"] = gpu_check.summarise(levels, iters=5000, test_images=704, pack_precision="amp")
    return doc


def test_render_the_table():
    md = gpu_check.render(_doc())
    zoo = gpu_check.load_zoo()
    # the machine: GPU, driver and its CUDA, torch and its CUDA
    assert ("on 1x NVIDIA H200 (143,771 MiB), driver 580.65.06 (CUDA 13.0); torch 2.11.0+cu130 "
            "(CUDA 13.0, cuDNN 91002)") in md
    assert "32 of 40 test images timed" in md and "Partial" not in md
    zfpn = gpu_check.zoo_figures(zoo, "R50-FPN", 2)["train_s_per_iter"]
    row = next(line for line in md.splitlines() if line.startswith("| R50-FPN |"))
    assert row.startswith(f"| R50-FPN | 0.1 | 0.06 | 1.7x | {zfpn:.3g} | {0.1 / zfpn:.2g}x | 0.05 |")
    # train peaks fp32 and AMP, then inference's, allocated / reserved
    assert "| 3,000 / 3,500 | 3,000 / 3,500 | 4,200 / 6,000 |" in row
    assert "| X101-C4 | - | - | - | - |" in md  # not run, not in the zoo
    assert "| 2 | 2 | 300 | 0.09 | 1.5 | 1.5 | 90 % | 60 | 6,000 |" in md
    assert "| 4 | 2 (1 FAILED) | 300 |" in md and "amp k=4 R50-FPN failed: OutOfMemoryError" in md
    assert "| 8 | skipped: time budget" in md and "train MiB fp32 (alloc / reserved)" in md
    # at 5000 iterations R50-C4 alone (808 s) outlasts the pair at k=1 (1165 s in all) once
    # slowed 1.5x on two slots (1201 s): one run per GPU is best here
    assert "make sweep ARGS='hydra/launcher=joblib jobs_per_gpu=1 amp=true'" in md
    assert "Sweep of the 2 backbone(s) above x 5000 iterations (NOT the full grid)" in md


def test_render_flags_short_overlap_and_a_partial_report():
    levels = [dict(lv) for lv in LEVELS[:3]]
    levels[2] = _level("amp", 2, [_res("R50-FPN", 0.07, amp=True, iters=300, train_at=(5, 25)),
                                  _res("R50-FPN", 0.07, amp=True, iters=300, seed=1,
                                       train_at=(20, 40))])
    md = gpu_check.render(_doc(levels, finished=False, written_after="amp k=2"))
    assert "| 2 | 2 | 300 | 0.07 | 1.17 | 1 | 25 % (short) |" in md
    assert "**Partial**: written after amp k=2; the check was still running." in md


def test_zoo_figures_scale_to_images_per_gpu():
    zoo = gpu_check.load_zoo()
    assert zoo["images_per_iter"] / zoo["gpus"] == 2  # 16 images/iter on 8 V100s
    row = next(c for c in zoo["configs"] if c["backbone"] == "R101-FPN" and c["schedule"] == "3x")
    same = gpu_check.zoo_figures(zoo, "R101-FPN", 2)
    assert same["train_s_per_iter"] == pytest.approx(row["train_s_per_iter"])  # 2 per GPU: as is
    assert gpu_check.zoo_figures(zoo, "R101-FPN", 4)["train_s_per_iter"] == pytest.approx(
        2 * row["train_s_per_iter"])
    assert same["train_mem_mb"] == pytest.approx(row["train_mem_gb"] * 1024)
    assert gpu_check.zoo_figures(zoo, "R50-FPN", 2)["schedule"] == "3x"  # the 3x row where there are two
    assert gpu_check.zoo_figures(zoo, "X101-C4", 2) is None and gpu_check.zoo_figures(zoo, "X101-DC5", 2) is None
    assert {gpu_check.display_name(k) for k in gpu_check.GRID9} - {c["backbone"] for c in zoo["configs"]} == \
        set(zoo["not_in_zoo"])


def test_one_harness_sweep_per_level(tmp_path):
    cmd = gpu_check.sweep_command(1, "amp", iters=15, solver="paper", weights="scratch",
                          backbones=["r50_fpn", "x101_c4"], dataset=tmp_path, sweep_dir=tmp_path / "s",
                          device="cuda", overrides=["cudnn_benchmark=true"])
    assert cmd[1:3] == ["-m", "benchmark.sweep"]
    for arg in ("+experiment=grid9", "backbone=r50_fpn,x101_c4", "hydra/launcher=joblib",
                "jobs_per_gpu=1", "solver.max_iter=15", "amp=true", "solver=paper",
                f"hydra.sweep.dir={tmp_path / 's'}", "cudnn_benchmark=true"):
        assert arg in cmd
    assert not any(a.startswith(("hydra.launcher.n_jobs=", "seed=")) for a in cmd)  # the harness's
    packed = gpu_check.sweep_command(4, "amp", iters=300, solver="paper", weights="scratch",
                             backbones=["r50_fpn"], dataset=tmp_path, sweep_dir=tmp_path, device="cuda",
                             seeds=4)
    assert "seed=0,1,2,3" in packed and "jobs_per_gpu=4" in packed and "backbone=r50_fpn" in packed
    cpu = gpu_check.sweep_command(2, "fp32", iters=6, solver="smoke", weights="scratch", backbones=["r50_c4"],
                          dataset=tmp_path, sweep_dir=tmp_path, device="cpu", seeds=2)
    assert "hydra.launcher.n_jobs=2" in cpu and "amp=false" in cpu


def test_a_level_is_kept_whole(tmp_path):
    sweep = tmp_path / "sweep"
    for d in ("R50-FPN_seed=0", "R50-FPN_seed=1"):
        (sweep / d / "d2").mkdir(parents=True)
        (sweep / d / "result.json").write_text("{}")
        (sweep / d / "d2" / "model_final.pth").write_bytes(b"x" * 100)  # not kept
    (sweep / "sweep.json").write_text("{}")
    log = tmp_path / "level.log"
    log.write_text("sweep: 2 runs\n")
    dest = tmp_path / "out" / "runs" / "amp_k2"
    dest.mkdir(parents=True)
    (dest / "stale.json").write_text("{}")  # an earlier copy of the level is replaced whole
    gpu_check.keep_level(sweep, log, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "R50-FPN_seed=0/result.json", "R50-FPN_seed=1/result.json", "sweep.json", "sweep.log"]
    assert not (dest.parent / "amp_k2.partial").exists()


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
    pb = gpu_check.display_name(doc["plan"]["pack_backbone"])
    assert doc["finished"] is True and doc["written_after"] == f"{expect[-1][0]} k=2"
    for lv in doc["levels"]:
        assert not lv.get("skipped") and not lv["cut_short"] and lv["rc"] == 0, lv
        # k = 1: the plan's backbones; packed: k equal runs of one backbone (seeds 0..k-1)
        want = sorted(map(gpu_check.display_name, backbones)) if lv["k"] == 1 else [pb] * lv["slots"]
        assert sorted(r["backbone"] for r in lv["runs"]) == want
        if lv["k"] > 1:
            assert sorted(r["seed"] for r in lv["runs"]) == list(range(lv["slots"]))
            assert lv["iters"] >= doc["plan"]["iters"]
        for r in lv["runs"]:
            assert r["ok"] and r["s_per_iter"] > 0 and r["peak_mb"] > 0 and r["once_s"] is not None, r
            assert r["infer_timed"] and r["train_span"][0] < r["train_span"][1]
            assert r["infer_warm"] == (r["n_test"] > r["infer_batch"])
        # every run's result.json kept under --out
        kept = sorted((out / "runs" / f"{lv['precision']}_k{lv['k']}").rglob("result.json"))
        assert len(kept) == len(lv["runs"]) and (kept[0].parent.parent / "sweep.json").is_file()
        assert f"| {lv['k']} | {len(lv['runs'])} |" in md or lv["precision"] != doc["summary"]["pack_precision"]
    for b in doc["backbones"]:
        assert f"| {b['name']} | " in md and b["fp32"]["ok"]
    s = doc["summary"]
    assert s["sequential"]["fp32"] > 0 and s["best_k"] in (1, 2)
    packed = next(r for r in s["levels"] if r["k"] == 2)
    assert packed["overlap"] is not None and packed["slowdown"] > 0
    assert "best:" in md and "one after another, fp32" in md
    assert doc["env"]["torch"] and doc["env"]["python"] and "torch " in md.splitlines()[2]
