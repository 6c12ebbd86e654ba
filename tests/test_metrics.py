"""Oracle tests for benchmark/evaluation/metrics.py on tiny hand-built COCO data.

Geometry (32 x 32 slices, radiological display: the patient's left lung on the image
right): every lung is a rectangle 10 px wide, every infection component a rectangle
4 px wide inside a lung, so a prediction shifted by 2 px along x has a Dice known in
closed form: (w - 2) / w, i.e. 0.8 for the lungs and 0.5 for infection.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from benchmark.evaluation import metrics

# pycocotools' decode trips numpy 2's copy-keyword deprecation on every call (harmless).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H = W = 32
LUNG_W, INF_W = 10, 4
CATS = [{"id": 1, "name": "left_lung"}, {"id": 2, "name": "right_lung"}, {"id": 3, "name": "infection"}]


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _rle(m: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def _ann(ann_id: int, image_id: int, cat: int, m: np.ndarray) -> dict:
    r = _rle(m)
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": r,
            "area": int(m.sum()), "bbox": [float(v) for v in mask_util.toBbox(r)], "iscrowd": 0}


# Per case: slices (in slice order) with lung heights and infection rectangles
# (y0, y1, x0) inside the right lung (x 3..13) or left lung (x 19..29).
CASES = {
    "case_a": [
        {"lung": (4, 24), "inf": [(6, 10, 5), (14, 18, 21)]},
        {"lung": (5, 25), "inf": [(8, 12, 7)]},
        {"lung": (6, 22), "inf": []},
    ],
    "case_b": [
        {"lung": (3, 27), "inf": [(4, 8, 4), (10, 14, 4), (18, 22, 22)]},
        {"lung": (4, 26), "inf": [(12, 20, 23)]},
    ],
}
RIGHT_X, LEFT_X = 3, 19  # patient right lung on the image left


def _build_gt() -> dict:
    images, anns = [], []
    ann_id = 1
    # Slice indices deliberately listed out of order and not contiguous, to pin the
    # ordering by slice_index rather than by image id.
    for case_id, slices in CASES.items():
        order = list(range(len(slices)))[::-1]
        for k in order:
            s = slices[k]
            img_id = len(images) + 1
            images.append({"id": img_id, "file_name": f"{case_id}/{10 + 3 * k:04d}.png", "height": H,
                           "width": W, "case_id": case_id, "slice_index": 10 + 3 * k})
            y0, y1 = s["lung"]
            for cat, x0 in ((1, LEFT_X), (2, RIGHT_X)):
                anns.append(_ann(ann_id, img_id, cat, _rect(y0, y1, x0, x0 + LUNG_W)))
                ann_id += 1
            for iy0, iy1, ix0 in s["inf"]:
                anns.append(_ann(ann_id, img_id, 3, _rect(iy0, iy1, ix0, ix0 + INF_W)))
                ann_id += 1
    return {"images": images, "annotations": anns, "categories": CATS}


@pytest.fixture(scope="module")
def gt() -> dict:
    return _build_gt()


@pytest.fixture()
def gt_path(tmp_path, gt):
    p = tmp_path / "test.json"
    p.write_text(json.dumps(gt))
    return p


def _as_predictions(anns: list[dict], score: float = 1.0) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": score,
             "bbox": list(a["bbox"]), "segmentation": dict(a["segmentation"])} for a in anns]


def _shifted(gt: dict, dx: int) -> list[dict]:
    """Every ground-truth instance moved dx px to the right (they never reach the border)."""
    preds = []
    for a in gt["annotations"]:
        m = np.roll(mask_util.decode(a["segmentation"]), dx, axis=1)
        r = _rle(m)
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
                      "bbox": [float(v) for v in mask_util.toBbox(r)], "segmentation": r})
    return preds


def _imperfect(gt: dict) -> list[dict]:
    """Shifted, jittered, some missed, some false positives, varied scores (seeded)."""
    rng = np.random.default_rng(0)
    preds = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed instance
        m = mask_util.decode(a["segmentation"])
        m = np.roll(m, (int(rng.integers(-2, 3)), int(rng.integers(-3, 4))), axis=(0, 1))
        r = _rle(m)
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"],
                      "score": float(rng.uniform(0.05, 1.0)),
                      "bbox": [float(v) for v in mask_util.toBbox(r)], "segmentation": r})
    for im in gt["images"]:  # false positives
        y, x = rng.integers(0, 24, size=2)
        r = _rle(_rect(int(y), int(y) + 6, int(x), int(x) + 6))
        preds.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)),
                      "score": float(rng.uniform(0.05, 1.0)),
                      "bbox": [float(v) for v in mask_util.toBbox(r)], "segmentation": r})
    return preds


# ---------------------------------------------------------------------------- COCO AP


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_ground_truth_as_predictions_scores_100(gt_path, gt, iou_type, backend):
    m = metrics.coco_metrics(gt_path, _as_predictions(gt["annotations"]), iou_type, backend=backend)
    for name in ("left_lung", "right_lung", "infection"):
        assert m["per_class"][name] == {"AP": 100.0, "AP50": 100.0, "AP75": 100.0}
    assert m["AP"] == m["AP50"] == m["AP75"] == 100.0
    # 32 x 32 images: every instance is "small"; medium/large are undefined, not 0.
    assert m["APs"] == 100.0 and m["APm"] is None and m["APl"] is None


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_swapped_lungs_score_zero(gt, iou_type):
    preds = _as_predictions(gt["annotations"])
    for p in preds:
        p["category_id"] = {1: 2, 2: 1}.get(p["category_id"], p["category_id"])
    m = metrics.coco_metrics(gt, preds, iou_type)
    for name in ("left_lung", "right_lung"):
        assert m["per_class"][name] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    assert m["per_class"]["infection"]["AP"] == 100.0
    assert m["AP"] == pytest.approx(100.0 / 3)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_empty_predictions_score_zero(gt, backend):
    m = metrics.coco_metrics(gt, [], "segm", backend=backend)
    assert m["AP"] == 0.0 and m["APm"] is None
    assert all(v == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0} for v in m["per_class"].values())


def test_class_without_ground_truth_is_none(gt):
    no_inf = copy.deepcopy(gt)
    no_inf["annotations"] = [a for a in no_inf["annotations"] if a["category_id"] != 3]
    m = metrics.coco_metrics(no_inf, _as_predictions(no_inf["annotations"]), "segm")
    assert m["per_class"]["infection"] == {"AP": None, "AP50": None, "AP75": None}
    assert m["AP"] == 100.0


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_faster_coco_eval_matches_pycocotools(gt, iou_type):
    preds = _imperfect(gt)
    a = metrics.coco_metrics(gt, preds, iou_type, backend="faster")
    b = metrics.coco_metrics(gt, preds, iou_type, backend="pycocotools")
    assert 0 < a["AP"] < 100  # imperfect on purpose, or the comparison proves little
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], abs=1e-6), key
    for name, va in a["per_class"].items():
        for key, x in va.items():
            assert x == pytest.approx(b["per_class"][name][key], abs=1e-6), (name, key)


def test_shifted_boxes_lose_ap75_not_ap50(gt):
    # A 2 px shift of a 10 px wide lung: IoU = 8*h / (12*h) = 0.667, between 0.5 and 0.75.
    m = metrics.coco_metrics(gt, _shifted(gt, 2), "bbox")
    assert m["per_class"]["left_lung"]["AP50"] == 100.0
    assert m["per_class"]["left_lung"]["AP75"] == 0.0


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_inputs_are_not_modified(gt, backend):
    preds = _imperfect(gt)
    before, gt_before = copy.deepcopy(preds), copy.deepcopy(gt)
    metrics.evaluate(gt, preds, backend=backend)
    assert preds == before
    assert gt == gt_before


def test_bad_predictions_name_the_problem(gt):
    p = _as_predictions(gt["annotations"][:1])
    p[0]["image_id"] = 999
    with pytest.raises(ValueError, match="image_id 999"):
        metrics.coco_metrics(gt, p, "segm")
    with pytest.raises(ValueError, match="iou_type"):
        metrics.coco_metrics(gt, [], "keypoints")
    with pytest.raises(ValueError, match="backend"):
        metrics.coco_metrics(gt, [], "segm", backend="nope")


def test_unreadable_gt_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        metrics.evaluate(bad, [])


# ---------------------------------------------------------------------------- volumes


def test_voxel_counts_cover_the_test_slices(gt):
    c = metrics.voxel_counts(gt, _as_predictions(gt["annotations"]))
    assert sorted(c) == ["case_a", "case_b"]
    # case_a: lung heights 20, 20, 16 rows; infection 2, 1 and 0 rectangles of 4 rows
    assert c["case_a"]["left_lung"] == {"gt": 56 * LUNG_W, "pred": 56 * LUNG_W, "inter": 56 * LUNG_W}
    assert c["case_a"]["infection"]["gt"] == 3 * 4 * INF_W
    assert c["case_a"]["lung"]["gt"] == 2 * 56 * LUNG_W  # the infection lies inside the lungs


def test_score_threshold_applies_to_dice_not_ap(gt):
    m = metrics.evaluate(gt, _as_predictions(gt["annotations"], 0.3), score_thresh=0.5)
    assert m["dice"]["mean"] == {"left_lung": 0.0, "right_lung": 0.0, "infection": 0.0}
    assert m["segm"]["AP"] == 100.0  # AP ranks every detection


def test_ground_truth_as_prediction_scores_dice_1_and_ap_100(gt_path, gt, tmp_path):
    preds_path = tmp_path / "coco_instances_results.json"
    preds_path.write_text(json.dumps(_as_predictions(gt["annotations"])))
    m = metrics.evaluate(gt_path, preds_path, score_thresh=0.5)
    assert set(m) == {"segm", "bbox", "dice", "infection_burden_abs_error", "per_case"}
    for t in ("segm", "bbox"):
        assert set(m[t]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
        assert m[t]["AP"] == 100.0
    assert m["dice"]["mean"] == {"left_lung": 1.0, "right_lung": 1.0, "infection": 1.0}
    assert set(m["dice"]["per_case"]) == {"case_a", "case_b"}
    assert m["infection_burden_abs_error"] == {"per_case": {"case_a": 0.0, "case_b": 0.0}, "mean": 0.0}
    json.dumps(m, allow_nan=False)  # NaN-free: writable as strict JSON


def test_dice_of_shifted_prediction_is_known(gt):
    d = metrics.evaluate(gt, _shifted(gt, 2))["dice"]
    for case in ("case_a", "case_b"):
        assert d["per_case"][case]["left_lung"] == pytest.approx((LUNG_W - 2) / LUNG_W)
        assert d["per_case"][case]["right_lung"] == pytest.approx((LUNG_W - 2) / LUNG_W)
        assert d["per_case"][case]["infection"] == pytest.approx((INF_W - 2) / INF_W)
    assert d["mean"]["infection"] == pytest.approx(0.5)


def test_dice_both_empty_is_one_and_missing_is_zero(gt):
    no_inf = copy.deepcopy(gt)
    no_inf["annotations"] = [a for a in no_inf["annotations"] if a["category_id"] != 3]
    d = metrics.evaluate(no_inf, _as_predictions(no_inf["annotations"]))["dice"]
    assert d["mean"]["infection"] == 1.0  # nothing there, nothing predicted
    d = metrics.evaluate(gt, _as_predictions(no_inf["annotations"]))["dice"]
    assert d["mean"]["infection"] == 0.0  # infection there, none predicted


def _gt_burden(case: str) -> float:
    slices = CASES[case]
    lung = sum(2 * LUNG_W * (s["lung"][1] - s["lung"][0]) for s in slices)
    inf = sum((y1 - y0) * INF_W for s in slices for y0, y1, _ in s["inf"])
    return 100.0 * inf / lung


def _burden_error(gt: dict, preds: list[dict]) -> dict:
    return metrics.evaluate(gt, preds)["infection_burden_abs_error"]


def test_burden_error(gt):
    # shifting everything together keeps volumes: Dice drops, burden does not move
    assert _burden_error(gt, _shifted(gt, 2))["mean"] == pytest.approx(0.0)
    lungs_only = [a for a in gt["annotations"] if a["category_id"] != 3]
    e = _burden_error(gt, _as_predictions(lungs_only))
    for case in CASES:
        assert e["per_case"][case] == pytest.approx(_gt_burden(case))
    assert e["mean"] == pytest.approx((_gt_burden("case_a") + _gt_burden("case_b")) / 2)
    # no lung predicted at all: the burden is undefined, not 0
    assert _burden_error(gt, [])["per_case"] == {"case_a": None, "case_b": None}


def test_burden_counts_infection_outside_lung_labels(gt):
    # Combined label maps give infection voxels their own label (holes in the lung
    # masks); the lung volume must still include them.
    holed = copy.deepcopy(gt)
    inf_by_img = {}
    for a in holed["annotations"]:
        if a["category_id"] == 3:
            inf_by_img.setdefault(a["image_id"], []).append(mask_util.decode(a["segmentation"]))
    for a in holed["annotations"]:
        if a["category_id"] in (1, 2) and a["image_id"] in inf_by_img:
            m = mask_util.decode(a["segmentation"])
            for inf in inf_by_img[a["image_id"]]:
                m[inf > 0] = 0
            a["segmentation"] = _rle(m)
    c = metrics.voxel_counts(holed, [])
    c_full = metrics.voxel_counts(gt, [])
    for case in CASES:
        assert c[case]["lung"]["gt"] == c_full[case]["lung"]["gt"]


def test_size_ranges_use_mask_area_for_segm_and_box_area_for_bbox():
    # One 128 x 128 slice: a small (10 x 10) left lung, a large (100 x 100) right lung,
    # and a false-positive left-lung ring whose mask area is small (40^2 - 36^2 = 304 px)
    # while its box area is medium (1600 px). As detectron2 does, segm AP sizes a
    # detection by its mask, bbox AP by its box, so the ring only hurts segm APs.
    size = 128
    def rle(y0, y1, x0, x1, hole=None):
        m = np.zeros((size, size), np.uint8)
        m[y0:y1, x0:x1] = 1
        if hole:
            m[hole[0]:hole[1], hole[2]:hole[3]] = 0
        r = mask_util.encode(np.asfortranarray(m))
        r["counts"] = r["counts"].decode("ascii")
        return r
    small, large = rle(2, 12, 2, 12), rle(20, 120, 20, 120)
    ring = rle(60, 100, 60, 100, hole=(62, 98, 62, 98))
    gt = {"images": [{"id": 1, "file_name": "c/0000.png", "height": size, "width": size,
                      "case_id": "c", "slice_index": 0}],
          "categories": CATS,
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "segmentation": small, "area": 100,
               "bbox": [2.0, 2.0, 10.0, 10.0], "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 2, "segmentation": large, "area": 10000,
               "bbox": [20.0, 20.0, 100.0, 100.0], "iscrowd": 0}]}
    preds = [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [2.0, 2.0, 10.0, 10.0], "segmentation": small},
             {"image_id": 1, "category_id": 2, "score": 0.8, "bbox": [20.0, 20.0, 100.0, 100.0],
              "segmentation": large},
             {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [60.0, 60.0, 40.0, 40.0], "segmentation": ring}]
    for backend in ("faster", "pycocotools"):
        segm = metrics.coco_metrics(gt, preds, "segm", backend=backend)
        assert segm["APs"] == pytest.approx(50.0) and segm["APm"] is None
        assert segm["APl"] == pytest.approx(100.0)
        assert segm["AP"] == pytest.approx(75.0)
        assert segm["per_class"]["left_lung"]["AP"] == pytest.approx(50.0)
        bbox = metrics.coco_metrics(gt, preds, "bbox", backend=backend)
        assert bbox["APs"] == pytest.approx(100.0) and bbox["APm"] is None
        assert bbox["APl"] == pytest.approx(100.0)
