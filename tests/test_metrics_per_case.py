"""benchmark.evaluation.metrics: segm AP per test case (patient) next to the per-case Dice."""

from __future__ import annotations

import json

import pytest

from benchmark.evaluation import metrics

from .test_metrics import CASES, _as_predictions, _build_gt

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = ("left_lung", "right_lung", "infection")


@pytest.fixture(scope="module")
def gt() -> dict:
    return _build_gt()


def _case_of(gt: dict) -> dict[int, str]:
    return {im["id"]: im["case_id"] for im in gt["images"]}


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_oracle_scores_100_per_class_per_case(gt, backend):
    ap = metrics.segm_ap_per_case(gt, _as_predictions(gt["annotations"]), backend)
    assert set(ap) == set(CASES)
    for case in CASES:
        assert ap[case] == {c: 100.0 for c in CLASSES}


def test_a_case_without_predictions_scores_0_the_other_100(gt):
    case_of = _case_of(gt)
    preds = [p for p in _as_predictions(gt["annotations"]) if case_of[p["image_id"]] != "case_a"]
    ap = metrics.segm_ap_per_case(gt, preds)
    assert ap["case_a"] == {c: 0.0 for c in CLASSES}
    assert ap["case_b"] == {c: 100.0 for c in CLASSES}


def test_class_without_ground_truth_in_a_case_is_none(gt):
    case_of = _case_of(gt)
    no_inf_a = {**gt, "annotations": [a for a in gt["annotations"]
                                      if not (a["category_id"] == 3 and case_of[a["image_id"]] == "case_a")]}
    ap = metrics.segm_ap_per_case(no_inf_a, _as_predictions(no_inf_a["annotations"]))
    assert ap["case_a"]["infection"] is None and ap["case_a"]["left_lung"] == 100.0
    assert ap["case_b"]["infection"] == 100.0


def test_false_infection_on_a_case_without_infection_is_counted_beside_the_blind_ap(gt):
    """case_a has no infection; the detector paints its infection anyway (one confident, one
    faint instance per slice): AP cannot see it (None), the counts do."""
    case_of = _case_of(gt)
    no_inf_a = {**gt, "annotations": [a for a in gt["annotations"]
                                      if not (a["category_id"] == 3 and case_of[a["image_id"]] == "case_a")]}
    preds = _as_predictions(gt["annotations"])  # still predicts case_a's (removed) infection
    inf_a = [p for p in preds if p["category_id"] == 3 and case_of[p["image_id"]] == "case_a"]
    faint = [{**p, "score": 0.1} for p in inf_a]
    ap = metrics.segm_ap_per_case(no_inf_a, preds + faint)
    fp = metrics.false_positives_per_case(no_inf_a, preds + faint, score_thresh=0.5)
    assert ap["case_a"]["infection"] is None and len(inf_a) > 0
    assert fp["case_a"]["fp_no_gt"] == {"left_lung": None, "right_lung": None, "infection": len(inf_a)}
    assert fp["case_a"]["fp_no_gt_any"]["infection"] == 2 * len(inf_a)
    assert fp["case_b"]["fp_no_gt"] == {c: None for c in CLASSES}


def test_evaluate_puts_per_case_ap_and_dice_in_the_metrics(gt, tmp_path):
    gt_path = tmp_path / "test.json"
    gt_path.write_text(json.dumps(gt))
    case_of = _case_of(gt)
    preds = [p for p in _as_predictions(gt["annotations"]) if case_of[p["image_id"]] != "case_b"]
    m = metrics.evaluate(gt_path, preds)
    pc = m["per_case"]
    assert set(pc) == set(CASES)
    none = {c: None for c in CLASSES}  # every case has every class: the AP scores its false positives
    assert pc["case_a"] == {"segm_AP": {c: 100.0 for c in CLASSES}, "dice": {c: 1.0 for c in CLASSES},
                            "fp_no_gt": none, "fp_no_gt_any": none}
    assert pc["case_b"] == {"segm_AP": {c: 0.0 for c in CLASSES}, "dice": {c: 0.0 for c in CLASSES},
                            "fp_no_gt": none, "fp_no_gt_any": none}
    assert {case: v["dice"] for case, v in pc.items()} == m["dice"]["per_case"]
    json.dumps(m, allow_nan=False)


def test_metrics_module_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, benchmark.evaluation.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
