"""All nine backbones train a few smoke iterations on the tiny phantom (CPU) and write a valid
result.json; a finished run is not redone; a diverging run records why it failed."""

from __future__ import annotations

import json
import time

import pytest

from benchmark.result import CLASSES, read_result, validate
from benchmark.run import compose, run

# pycocotools' encode/decode on numpy 2 (not ours): one warning per mask
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BACKBONES = ["r50_c4", "r50_dc5", "r50_fpn", "r101_c4", "r101_dc5", "r101_fpn",
             "x101_c4", "x101_dc5", "x101_fpn"]
# 4 iterations, the first left out of the median; one checkpoint at the end only
SMOKE = ["solver=smoke", "solver.max_iter=4", "solver.checkpoint_period=100", "measure.warmup_iters=1"]


def classes_in(json_file) -> set[str]:
    coco = json.loads(open(json_file).read())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return {names[a["category_id"]] for a in coco["annotations"]}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_trains_and_writes_result(backbone, tiny_dataset, tmp_path):
    run_dir = tmp_path / backbone
    cfg = compose([f"dataset_dir={tiny_dataset}", f"backbone={backbone}", *SMOKE])
    t0 = time.perf_counter()
    assert run(cfg, run_dir) == 0
    print(f"{backbone}: {time.perf_counter() - t0:.1f} s")
    r = read_result(run_dir)
    assert validate(r) == [], validate(r)
    assert r["status"] == "ok" and r["error"] is None
    assert r["backbone"] == cfg.backbone.name and r["in_zoo"] == (backbone not in ("x101_c4", "x101_dc5"))
    assert r["weights"] == "scratch" and r["solver"]["max_iter"] == 4 and r["resumed_from_iter"] == 0
    assert r["dataset"]["name"] == "phantom" and r["dataset"]["image_size"] == [64, 64]
    assert r["dataset"]["n_train_images"] > r["dataset"]["n_test_images"] > 0
    # per-class AP for bbox and segm: defined (a number) for every class the test split has
    present = classes_in(r["artifacts"]["test_annotations"])
    for task in ("bbox", "segm"):
        for cls in CLASSES:
            row = r["metrics"][task]["per_class"][cls]
            assert (row["AP"] is not None) == (cls in present), (task, cls, row)
    assert set(r["metrics"]["dice"]["mean"]) == set(CLASSES)
    # measured, not guessed
    t, m = r["timing"], r["model"]
    assert t["train_s_per_iter"] > 0 and t["infer_s_per_image"] > 0 and t["train_iters_timed"] == 3, t
    assert t["train_wall_s"] > t["train_s_per_iter"] and t["eval_wall_s"] > t["infer_s_per_image"], t
    assert 20 < m["params_m"] < 300 and m["gflops_input_hw"] == [64, 64], m
    assert m["gflops"] is not None and m["gflops"] > 0, r["notes"]
    assert r["memory"]["peak_rss_mb"] > 100 and r["env"]["device"] in ("cpu", "cuda")
    # artifacts exist; checkpoints are gone (keep_checkpoint false); TensorBoard events stay
    d2 = run_dir / "d2"
    preds = json.loads((run_dir / r["artifacts"]["predictions"]).read_text())
    assert isinstance(preds, list) and all("segmentation" in p for p in preds)
    assert (run_dir / r["artifacts"]["metrics_log"]).is_file()
    assert list(d2.glob("events.out.tfevents.*"))
    assert not list(d2.glob("*.pth")) and not (d2 / "last_checkpoint").exists()
    assert r["config"]["backbone"]["name"] == r["backbone"]


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
                   "weights.freeze_at=2", "solver.base_lr=10.0"])
    assert run(cfg, tmp_path) == 1
    r = read_result(tmp_path)
    assert validate(r) == []
    assert r["status"] == "failed" and r["error"]["type"] == "FloatingPointError"
    assert r["error"]["where"].startswith("train iter ")
    assert "NaN" in r["error"]["message"] and "Traceback" in r["error"]["traceback"]
    assert r["finished_at"] and r["backbone"] == "R50-FPN" and r["config"]["seed"] == 0
    # failed runs are redone (resumed) on the next call, not skipped
    assert run(cfg, tmp_path) == 1
