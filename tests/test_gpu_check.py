"""The GPU check (perf/gpu_check.sh): its arithmetic (fast) and its --dry-run end to end on the
CPU (slow), so the script that runs on a rented GPU keeps working between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from perf import gpu_env
from perf import gpu_report as R

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- arithmetic


def test_zoo_figures_scale_to_images_per_gpu():
    zoo = R.load_zoo()
    per_gpu = zoo["images_per_iter"] / zoo["gpus"]
    assert per_gpu == 2  # 16 images/iter on 8 V100s
    row = next(c for c in zoo["configs"] if c["backbone"] == "R101-FPN" and c["schedule"] == "3x")
    same = R.zoo_figures(zoo, "R101-FPN", 2)
    assert same["train_s_per_iter"] == pytest.approx(row["train_s_per_iter"])  # 2 per GPU: as is
    assert R.zoo_figures(zoo, "R101-FPN", 4)["train_s_per_iter"] == pytest.approx(
        2 * row["train_s_per_iter"])
    assert same["train_mem_mb"] == pytest.approx(row["train_mem_gb"] * 1024)
    # R50-FPN has both schedules: the 3x row is used; X101-C4/DC5 are not in the zoo
    assert R.zoo_figures(zoo, "R50-FPN", 2)["schedule"] == "3x"
    assert R.zoo_figures(zoo, "X101-C4", 2) is None and R.zoo_figures(zoo, "X101-DC5", 2) is None
    assert {R.display_name(k) for k in R.GRID9} - {c["backbone"] for c in zoo["configs"]} == \
        set(zoo["not_in_zoo"])


def test_makespan_is_list_scheduling_in_order():
    assert R.makespan([5, 3, 4], 1) == 12
    # slot A: 5, then 4 (A frees at 5, B holds 3 until... B frees at 3 -> 4 goes to B: 3+4=7)
    assert R.makespan([5, 3, 4], 2) == 7
    assert R.makespan([5, 3, 4], 8) == 5
    assert R.makespan([], 3) == 0
    with pytest.raises(ValueError):
        R.makespan([1.0], 0)


def test_slowdown_skips_failed_runs():
    alone = {"a": 1.0, "b": 2.0}
    packed = [{"backbone": "a", "s_per_iter": 1.5}, {"backbone": "b", "s_per_iter": 5.0},
              {"backbone": "a", "s_per_iter": None, "error": "OOM"}]
    assert R.slowdown(packed, alone) == pytest.approx((1.5 + 2.5) / 2)
    assert R.slowdown([{"backbone": "c", "s_per_iter": 1.0}], alone) is None


def _bb(key, fp32, amp, setup=10.0, infer=0.05, mb=4000.0):
    return {"key": key, "name": R.display_name(key), "setup_s": setup, "infer_s_per_image": infer,
            "fp32": {"s_per_iter": fp32, "peak_mb": mb, "reserved_mb": mb * 1.2},
            "amp": {"s_per_iter": amp, "peak_mb": mb / 2, "reserved_mb": mb * 0.6}}


def test_extrapolate_sequential_and_packed():
    bbs = [_bb("r50_fpn", 0.10, 0.06), _bb("r50_c4", 0.30, 0.15), _bb("x101_fpn", 0.25, 0.12)]
    packing = [{"k": 1, "slowdown": 1.0}, {"k": 2, "slowdown": 1.5},
               {"k": 4, "slowdown": 3.5}, {"k": 8, "slowdown": None, "failed": True}]
    ext = R.extrapolate(bbs, packing, iters=1000, test_images=100, pack_precision="amp",
                        device_mb=140_000)
    seq = sum(10 + 1000 * b["fp32"]["s_per_iter"] + 100 * 0.05 for b in bbs)
    assert ext["sequential"]["fp32"]["wall_min"] == pytest.approx(seq / 60)
    assert ext["sequential"]["amp"]["n"] == 3
    # packed, AMP, each run = setup 10 s + slowdown x (1000 iters x amp s/iter + 100 images x 0.05 s):
    #   k=1 (x1.0): 75, 165, 135 s one after another: 375 s = 6.25 min
    #   k=2 (x1.5): 107.5, 242.5, 197.5 s; slot A 107.5, slot B 242.5, the third job goes to A
    #               (free first, at 107.5 s): A = 305 s, B = 242.5 s -> 305 s
    #   k=4 (x3.5): 237.5, 552.5, 447.5 s, each on its own slot -> 552.5 s
    assert ext["packed"]["1"]["wall_min"] == pytest.approx(375 / 60)
    assert ext["packed"]["2"]["wall_min"] == pytest.approx(305 / 60)
    assert ext["packed"]["4"]["wall_min"] == pytest.approx(552.5 / 60)
    assert "8" not in ext["packed"]  # failed level: not extrapolated
    assert ext["best_k"] == 2 and ext["best_wall_min"] == pytest.approx(305 / 60)
    assert ext["meets_target"] is True  # 5.08 min < 45 min
    assert ext["packed"]["2"]["worst_case_mb"] == pytest.approx(
        4000 * 0.6 * 2 + 2 * R.CONTEXT_MB)
    # a packing that cannot fit in the GPU is never the best
    tiny_gpu = R.extrapolate(bbs, packing, iters=1000, test_images=100, pack_precision="amp",
                             device_mb=3000)
    assert tiny_gpu["packed"]["2"]["fits"] is False and tiny_gpu["best_k"] == 1
    # a batched inference that needs more memory than training counts for packing
    hungry = [dict(b, infer_reserved_mb=9000.0) if b["key"] == "r50_c4" else b for b in bbs]
    ext_h = R.extrapolate(hungry, packing, iters=1000, test_images=100, pack_precision="amp",
                          device_mb=140_000)
    assert ext_h["packed"]["2"]["worst_case_mb"] == pytest.approx(9000 + 4000 * 0.6 + 2 * R.CONTEXT_MB)
    # batched inference, where measured, is what a sweep run pays
    batched = [dict(b, infer_batched_s_per_image=0.01) for b in bbs]
    ext_b = R.extrapolate(batched, packing, iters=1000, test_images=100, pack_precision="amp")
    assert ext_b["sequential"]["fp32"]["wall_min"] == pytest.approx((seq - 3 * 100 * 0.04) / 60)


def test_packed_runs_get_the_workers_a_packed_sweep_gives_them():
    from dataclasses import replace

    from benchmark.config import auto_workers
    from perf.gpu_check import DRY_PLAN, GPU_PLAN, pack_workers

    # paper solver (num_workers: auto) on the H200's 16 cores: what the joblib launcher does,
    # the cores each of k runs gets less one for its main process, between 1 and 4:
    #   k=1: 16 - 1 = 15 -> 4;  k=2: 8 - 1 = 7 -> 4;  k=4: 4 - 1 = 3;  k=8: 2 - 1 = 1
    assert [pack_workers(GPU_PLAN, k, cores=16) for k in (1, 2, 4, 8)] == [4, 4, 3, 1]
    assert [auto_workers(16, k) for k in (1, 2, 4, 8)] == [4, 4, 3, 1]
    assert [auto_workers(3, k) for k in (1, 2, 4)] == [2, 1, 1]  # 3 - 1 = 2; 1 - 1 = 0 -> 1; 0 - 1 -> 1
    assert pack_workers(DRY_PLAN, 2, cores=16) == 0  # the smoke solver's own 0
    assert pack_workers(replace(GPU_PLAN, num_workers=2), 8, cores=16) == 2  # --workers wins


def test_wheel_set_rejects_two_versions(tmp_path):
    for name in ("fvcore-0.1.5-py3-none-any.whl", "fvcore-0.1.6-py3-none-any.whl"):
        with zipfile.ZipFile(tmp_path / name, "w"):
            pass
    with pytest.raises(ValueError, match="two wheels of fvcore"):
        gpu_env.wheels_to_install(tmp_path)


def test_installed_distributions_are_not_reinstalled(tmp_path):
    # this venv has fvcore; a wheel of a distribution nobody has is kept
    for name in ("fvcore-0.1.5-py3-none-any.whl", "surely_absent_dist-1.0-py3-none-any.whl"):
        with zipfile.ZipFile(tmp_path / name, "w"):
            pass
    todo = [w.name for w in gpu_env.wheels_to_install(tmp_path)]
    assert todo == ["surely_absent_dist-1.0-py3-none-any.whl"]
    assert gpu_env.missing_imports() == []  # the venv has everything the check imports


# --------------------------------------------------------------------------- dry run


@pytest.mark.slow
def test_dry_run_writes_the_table(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "perf" / "gpu_check.sh"), "--dry-run", "--out",
                           str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto
    assert doc["dry_run"] is True and doc["env"]["device"] == device
    assert md in proc.stdout  # the table is printed too

    plan = doc["plan"]
    assert [b["key"] for b in doc["backbones"]] == plan["backbones"]
    assert any(R.display_name(k).endswith("-C4") for k in plan["backbones"])
    for b in doc["backbones"]:
        assert not b.get("skipped"), b
        fp = b["fp32"]
        assert fp["s_per_iter"] > 0 and fp["iters_timed"] >= 2 and fp["peak_mb"] > 0, b
        assert b["infer_s_per_image"] > 0 and b["infer_images"] >= 2
        assert b["infer_batch"] == plan["infer_batch"] > 1 and b["infer_batched_s_per_image"] > 0
        assert b["infer_peak_mb"] > 0 and b["infer_oom_batches"] == 0
        if device == "cpu":
            assert b["amp"] == {"note": "n/a: AMP needs CUDA"}
        else:
            assert b["amp"]["s_per_iter"] > 0 and b["amp"]["iters_timed"] >= 2, b["amp"]
        assert (b["zoo"] is None) == (b["name"] in ("X101-C4", "X101-DC5"))
        assert f"| {b['name']} | " in md

    assert [lv["k"] for lv in doc["packing"]] == plan["levels"]
    for lv in doc["packing"]:
        assert not lv.get("skipped") and not lv["failed"], lv
        assert len(lv["runs"]) == lv["k"]
        for r in lv["runs"]:
            assert r["error"] is None and r["s_per_iter"] > 0 and r["peak_mb"] > 0, r
            assert r["iters_timed"] >= 2
        assert lv["slowdown"] > 0
        assert f"| {lv['k']} | " in md

    ext = doc["extrapolation"]
    assert ext["sequential"]["fp32"]["n"] == len(plan["backbones"])
    assert ext["sequential"]["fp32"]["wall_min"] > 0
    assert set(ext["packed"]) == {str(k) for k in plan["levels"]}
    assert ext["best_k"] in plan["levels"] and ext["best_wall_min"] > 0
    assert "best:" in md and "one after another, fp32" in md


def test_render_a_gpu_doc():
    """The GPU branch of the report (only a GPU session runs it end to end): AMP columns,
    GPU memory, utilisation, the verdict against the 45-minute target."""
    zoo = R.load_zoo()
    bbs = []
    for i, key in enumerate(R.GRID9):
        b = _bb(key, 0.08 + 0.02 * i, 0.05 + 0.01 * i, mb=3000 + 500 * i)
        b["zoo"] = R.zoo_figures(zoo, b["name"], 2)
        b["infer_images"] = 8
        bbs.append(b)
    bbs.append({"key": "x", "name": "X", "skipped": "time budget"})
    runs = [{"name": bbs[i]["name"], "backbone": bbs[i]["key"], "error": None,
             "s_per_iter": bbs[i]["amp"]["s_per_iter"] * 2.0, "peak_mb": 2000.0,
             "reserved_mb": 2500.0, "iters_timed": 50, "import_s": 6.0} for i in range(4)]
    packing = [{"k": 4, "runs": runs, "failed": False, "total_mb": 12000.0,
                "gpu_util_median": 97.0, "slowdown": R.slowdown(runs, {b["key"]: b["amp"]["s_per_iter"]
                                                                     for b in bbs[:9]})},
               {"k": 8, "skipped": "time budget"}]
    doc = {"dry_run": False, "measured_at": "now", "command": "perf/gpu_check.sh", "wall_s": 400.0,
           "env": {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11", "detectron2": "0.6+lb1",
                   "python": "3.12.3", "cpu_count": 16, "gpu_total_mb": 143000.0,
                   "cudnn_benchmark": False, "tf32_conv": True},
           "settings": {"image_size": 512, "n_train_images": 16, "n_test_images": 8,
                        "solver": "paper", "ims_per_batch": 2, "input_desc": "zoo",
                        "roi_per_image": 512, "weights_desc": "w", "num_workers": 2,
                        "warmup": 3, "iters": 12, "window_s": 6.0},
           "packing_settings": {"precision": "amp", "num_workers": 2, "threads_desc": "16 / k",
                                "warmup": 3, "window_s": 15.0},
           "zoo": {k: zoo[k] for k in ("source", "gpu", "gpus", "images_per_iter")},
           "loader": {"mapper_s_per_image": 0.03, "png_decode_s_per_image": 0.003,
                      "rle_decode_s_per_image": 0.001, "images": 20, "cacheable_share": 0.13},
           "backbones": bbs, "packing": packing, "skipped": ["x: time budget"]}
    doc["extrapolation"] = R.extrapolate(bbs[:9], packing, iters=5000, test_images=704,
                                         pack_precision="amp", device_mb=143000.0)
    md = R.render_markdown(doc)
    assert doc["extrapolation"]["best_k"] == 4
    for b in bbs[:9]:
        row = next(line for line in md.splitlines() if line.startswith(f"| {b['name']} |"))
        assert f"{b['fp32']['s_per_iter'] / b['amp']['s_per_iter']:.2g}x" in row
    assert "peak GPU MiB fp32" in md and "| 4 | " in md and "| 97 |" in md
    assert "| 8 | skipped: time budget" in md and "cudnn.benchmark off" in md
    # packed 4 at once, AMP, slowdown 2.0 (each packed run at twice its alone s/iter): run i takes
    # 10 + 2 x (5000 x (0.05 + 0.01 i) + 704 x 0.05) = 580.4 + 100 i s, i = 0..8. Four slots:
    # 580.4, 680.4, 780.4, 880.4; then 980.4 -> 1560.8, 1080.4 -> 1760.8, 1180.4 -> 1960.8,
    # 1280.4 -> 2160.8; the last (1380.4) on the slot free first (1560.8): 2941.2 s = 49.02 min
    assert doc["extrapolation"]["best_wall_min"] == pytest.approx(2941.2 / 60)
    assert doc["extrapolation"]["meets_target"] is False and "MISSES" in md  # 49 min > 45
    assert "make sweep ARGS='hydra/launcher=joblib jobs_per_gpu=4'" in md  # the best packing, AMP
