"""A smoke run kept with its model: 3-D metrics in result.json, ``make predict`` on the phantom,
and the same numbers from both (tiny phantom, CPU)."""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark.evaluation.volume3d import volume_metrics
from benchmark.evaluation.apply import VOLUME_COLUMNS, load_trained_run
from benchmark.evaluation.volume3d import known_slices
from benchmark.predict import main
from contracts.dataset import read_dataset
from contracts.predictions import read_predictions
from contracts.result import read_result, validate
from benchmark.training.config import compose
from benchmark.training.run import run
from converters import phantom
from contracts.catalog import CLASS_NAMES
from converters.volume import canonical, is_prewindowed
from tests.test_predict import _same_in_itk

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
SMOKE = ["solver=smoke", "solver.max_iter=4", "solver.checkpoint_period=100", "measure.warmup_iters=1",
         "measure.flops=false", "keep_checkpoint=true"]
# a 4-iteration model scores under 0.5: count every detection, so the volumes compared hold labels;
# on the CPU also on a GPU machine, so that predicting again gives the very same masks
KEPT = [*SMOKE, "dice_score_thresh=0.0", "device=cpu"]


@pytest.fixture(scope="module")
def kept_run(tiny_dataset, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("kept") / "run"
    assert run(compose([f"dataset_dir={tiny_dataset}", *KEPT]), run_dir) == 0
    return run_dir


def _test_cases(tiny_dataset: Path) -> list[str]:
    coco = json.loads((tiny_dataset / "annotations" / "patient_kfold_f0_test.json").read_text())
    return sorted({im["case_id"] for im in coco["images"]})


def test_result_json_holds_3d_metrics_per_test_case(kept_run, tiny_dataset):
    r = read_result(kept_run).data
    assert r["schema"] == 5 and validate(r) == []
    v = r["metrics"]["volume3d"]
    cases = _test_cases(tiny_dataset)
    assert "per_case" not in v and v["n_cases"] == len(cases)  # the cases' numbers: metrics.per_case
    assert sorted(r["metrics"]["per_case"]) == cases
    assert v["tolerance_mm"] == {"left_lung": 1.0, "right_lung": 1.0, "infection": 3.0}
    for case in cases:
        for metric in ("dice3d", "nsd3d"):
            vals = r["metrics"]["per_case"][case][metric]  # beside the AP, for the paired tests
            assert set(vals) == set(CLASS_NAMES) and all(0.0 <= x <= 1.0 for x in vals.values())
            assert v["mean"][metric] is not None
    assert r["conversion"]["window"] == [-1250, 250] and r["timing"]["eval3d_wall_s"] > 0
    assert (kept_run / "d2" / "model_final.pth").is_file()


def _make_predict(run_dir: Path, inp: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(["make", "--no-print-directory", "predict", f"RUN={run_dir}", f"INPUT={inp}",
                           f"OUT={out}", "ARGS=--device cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_make_predict_writes_the_input_grid_and_volumes_csv(kept_run, tiny_raw, tiny_dataset, tmp_path):
    inp = tiny_raw / phantom.IMAGE_DIR
    out = tmp_path / "pred"
    p = _make_predict(kept_run, inp, out)
    assert p.returncode == 0, p.stderr[-3000:]
    sources = sorted(inp.glob("*.nii.gz"))
    assert sorted(x.name for x in out.glob("*.nii.gz")) == [s.name for s in sources]
    for s in sources:
        src, pred = nib.load(str(s)), nib.load(str(out / s.name))
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
        assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1, 2, 3}
        _same_in_itk(out / s.name, np.asarray(pred.dataobj), src.affine)
    assert any(np.asarray(nib.load(str(x)).dataobj).any() for x in out.glob("*.nii.gz")), "nothing predicted"
    rows = list(csv.DictReader((out / "volumes.csv").open()))
    assert [r["case"] for r in rows] == [s.name[:-7] for s in sources]
    assert list(rows[0]) == VOLUME_COLUMNS
    for r in rows:  # each lung holds its infection; both lungs are the sum
        assert float(r["lungs_ml"]) == pytest.approx(float(r["left_lung_ml"]) + float(r["right_lung_ml"]), abs=2e-3)
        assert float(r["infection_left_ml"]) <= float(r["left_lung_ml"]) + 1e-9
    info = read_predictions(out)
    assert info["backbone"] == "R50-FPN" and len(info["inputs"]) == len(sources)
    # the run's 3-D numbers are those of the files users get: one prediction code path
    res = read_result(kept_run).data["metrics"]["per_case"]
    for case in _test_cases(tiny_dataset):
        gt = nib.load(str(tiny_raw / phantom.COMBINED_DIR / f"{case}.nii.gz"))
        pred = nib.load(str(out / f"{case}.nii.gz"))
        g, _, _ = canonical(np.asarray(gt.dataobj), gt.affine)
        q, aff, _ = canonical(np.asarray(pred.dataobj), pred.affine)
        m = volume_metrics(g, q, np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))
        for metric in ("dice3d", "nsd3d"):
            assert m[metric] == pytest.approx(res[case][metric], abs=1e-6)


def test_reusing_the_test_predictions_equals_predicting_again(kept_run, tiny_raw, tiny_dataset):
    predictor, res = load_trained_run(kept_run, device="cpu")
    coco = json.loads(Path(res["artifacts"]["test_annotations"]).read_text())
    known = known_slices(coco, json.loads((kept_run / res["artifacts"]["predictions"]).read_text()))
    case = _test_cases(tiny_dataset)[0]
    img = nib.load(str(tiny_raw / phantom.IMAGE_DIR / f"{case}.nii.gz"))
    data = np.asarray(img.dataobj)
    ras, _, _ = canonical(data, img.affine)
    again = predictor.predict_volume(ras, is_prewindowed(data))
    reused = predictor.predict_volume(ras, is_prewindowed(data), known=known[case])
    assert known[case] and again.any() and np.array_equal(again, reused)


def test_a_bad_volume_mid_way_leaves_out_as_it_was(kept_run, tiny_raw, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    for s in sorted((tiny_raw / phantom.IMAGE_DIR).glob("*.nii.gz"))[:2]:
        shutil.copy(s, inp / s.name)
    out = tmp_path / "out"
    assert main(["--run", str(kept_run), "--input", str(inp), "--out", str(out), "--device", "cpu"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = sorted(inp.glob("*.nii.gz"))[1]
    raw = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # header intact, half the voxels gone
    assert main(["--run", str(kept_run), "--input", str(inp), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "nothing written" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "a temp folder was left"


@pytest.mark.parametrize("multiwindow", [False, True])
def test_a_new_volume_is_prepared_as_the_training_pngs(kept_run, tiny_raw, tmp_path, multiwindow):
    """The tensor make predict feeds the model for a slice equals the one detectron2's test
    mapper makes from the converter's PNG of that slice (one window, and three)."""
    import torch

    from benchmark.evaluation.predictor import Predictor, conversion_settings
    from converters.case import windows_of
    from converters.convert import convert

    ds = convert(tiny_raw, tmp_path / "ds", {"workers": 1, "multiwindow": multiwindow})
    settings = conversion_settings(read_dataset(ds).manifest)
    trained, _ = load_trained_run(kept_run, device="cpu")
    pred = Predictor(trained.model, trained.mapper, windows_of(settings), 0.5)
    coco = json.loads((ds / "annotations" / "all.json").read_text())
    for im in coco["images"][::7]:
        img = nib.load(str(tiny_raw / phantom.IMAGE_DIR / f"{im['case_id']}.nii.gz"))
        data = np.asarray(img.dataobj)
        ras, _, _ = canonical(data, img.affine)
        mine = pred._input(ras, im["slice_index"], is_prewindowed(data))["image"]
        png = trained.mapper({"file_name": str(ds / "images" / im["file_name"]), "height": im["height"],
                              "width": im["width"], "image_id": im["id"]})["image"]
        assert mine.shape == png.shape and torch.equal(mine, png), im["file_name"]


@pytest.mark.parametrize("what", ["gone", "changed"])
def test_without_the_source_volumes_the_run_still_finishes_and_says_why(tiny_raw, tmp_path, what):
    from converters.convert import convert

    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    ds = convert(raw, tmp_path / "ds", {"workers": 1})
    victim = raw / phantom.IMAGE_DIR / f"{_test_cases(ds)[0]}.nii.gz"
    if what == "gone":
        shutil.rmtree(raw)
    else:  # same shape and affine, other voxels: the dataset no longer describes this file
        img = nib.load(str(victim))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1, img.affine, img.header), str(victim))
    run_dir = tmp_path / "run"
    assert run(compose([f"dataset_dir={ds}", *SMOKE[:-1], "solver.max_iter=2"]), run_dir) == 0
    r = read_result(run_dir).data
    assert r["status"] == "ok" and r["metrics"]["volume3d"] is None and validate(r) == []
    note = [n for n in r["notes"] if n.startswith("3-D metrics not computed")]
    assert note and ("is not there" if what == "gone" else "changed since") in note[0], r["notes"]
    assert all("dice3d" not in v for v in r["metrics"]["per_case"].values())


def test_a_slice_split_is_not_scored_in_3d(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    assert run(compose([f"dataset_dir={tiny_dataset}", *SMOKE[:-1], "split=slice_random", "solver.max_iter=2"]),
               run_dir) == 0
    r = read_result(run_dir).data
    assert r["metrics"]["volume3d"] is None
    assert any("with slices in training" in n for n in r["notes"]), r["notes"]


def test_a_failing_3d_evaluation_is_a_note_not_a_failed_run(tiny_dataset, tmp_path, monkeypatch):
    import benchmark.evaluation.volume3d

    def boom(*a, **k):
        raise MemoryError("no room for the distance transform")

    monkeypatch.setattr(benchmark.evaluation.volume3d, "evaluate_volumes", boom)
    run_dir = tmp_path / "run"
    assert run(compose([f"dataset_dir={tiny_dataset}", *SMOKE[:-1], "solver.max_iter=2"]), run_dir) == 0
    r = read_result(run_dir).data
    assert r["status"] == "ok" and r["metrics"]["volume3d"] is None and r["metrics"]["segm"]["AP"] is not None
    assert "3-D metrics not computed: MemoryError: no room for the distance transform" in r["notes"]
