"""Evaluation of one run's test-split predictions: COCO AP and volumetric Dice.

Pure functions over COCO data (numpy, pycocotools, faster-coco-eval; no detectron2, no
torch), so they test fast and can re-score any saved ``coco_instances_results.json``.

Inputs
------
``gt``
    A COCO instances annotation file (path) or the loaded dict, as the converter writes it:
    images carry ``case_id`` and ``slice_index``; categories are ``left_lung``,
    ``right_lung`` and ``infection``; segmentations are compressed RLE (polygons and
    uncompressed RLE are accepted too).
``predictions``
    A list of COCO result dicts, as detectron2's ``COCOEvaluator`` writes them:
    ``image_id``, ``category_id``, ``score``, ``bbox`` ``[x, y, w, h]`` (pixels) and
    ``segmentation`` (compressed RLE, ``counts`` as str). The list is never modified.

Outputs follow result.json (docs/reference.md): AP on a 0-100 scale, Dice in [0, 1],
infection burden error in percentage points; a value that COCO cannot define (no ground
truth of that class or size, reported as -1 by COCOeval) is ``None`` (null in JSON).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from contracts.catalog import INFECTION_CLASS, LUNG_CLASSES

log = logging.getLogger(__name__)

IOU_TYPES = ("segm", "bbox")
BACKENDS = ("auto", "faster", "pycocotools")
# COCOeval's default parameters: area ranges all/small/medium/large, maxDets 1/10/100,
# IoU thresholds 0.50:0.05:0.95 (index 0 is 0.50, index 5 is 0.75).
_AREA_INDEX = {"AP": 0, "APs": 1, "APm": 2, "APl": 3}
_IOU50, _IOU75 = 0, 5


# ---------------------------------------------------------------------------- loading


def _read_json(path: str | os.PathLike, what: str):
    """The JSON in ``path``; a ValueError naming the file and ``what`` it should hold if not."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {what}: {e}") from e


def load_gt(gt: str | os.PathLike | Mapping) -> dict:
    """Return the COCO ground-truth dict (read from ``gt`` when it is a path).

    Checks what every metric here relies on, with a clear error naming the file.
    """
    name = str(gt) if isinstance(gt, (str, os.PathLike)) else "<ground-truth dict>"
    if isinstance(gt, (str, os.PathLike)):
        data = _read_json(gt, "COCO annotations")
    elif isinstance(gt, Mapping):
        data = dict(gt)
    else:
        raise TypeError(f"gt must be a path or a dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{name}: not COCO instances JSON (missing list {key!r})")
    return data


def _check_predictions(gt: dict, predictions: Sequence[Mapping], iou_type: str | None = None) -> None:
    image_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    for i, p in enumerate(predictions):
        for key in ("image_id", "category_id", "score"):
            if key not in p:
                raise ValueError(f"prediction {i}: missing {key!r}")
        if p["image_id"] not in image_ids:
            raise ValueError(f"prediction {i}: image_id {p['image_id']} is not in the ground truth")
        if p["category_id"] not in cat_ids:
            raise ValueError(f"prediction {i}: category_id {p['category_id']} is not a ground-truth category")
        if iou_type in ("segm", None) and "segmentation" not in p:
            raise ValueError(f"prediction {i}: missing 'segmentation' (needed for {iou_type or 'Dice'})")
        if iou_type == "bbox" and "bbox" not in p and "segmentation" not in p:
            raise ValueError(f"prediction {i}: neither 'bbox' nor 'segmentation'")


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            return "pycocotools"
        return "faster"
    return backend


# ---------------------------------------------------------------------------- COCO AP


def _ap(precision: np.ndarray) -> float | None:
    """The mean of a slice of COCOeval's precision array on a 0-100 scale; None where COCO cannot
    define it (COCOeval marks "no ground truth here" with -1; NaN can come from empty slices)."""
    defined = precision[precision > -1]
    x = float(defined.mean()) if defined.size else -1.0
    return None if (x < 0 or np.isnan(x)) else 100.0 * x


def _aps(precision: np.ndarray) -> dict[str, float | None]:
    """AP, AP50 and AP75 of a slice of the precision array whose first axis is the IoU threshold."""
    return {"AP": _ap(precision), "AP50": _ap(precision[_IOU50]), "AP75": _ap(precision[_IOU75])}


def _results_for(predictions: Sequence[Mapping], iou_type: str) -> list[dict]:
    """Copies of the predictions, shaped the way detectron2's COCOEvaluator feeds them.

    For ``segm`` the box is dropped, so that COCO takes the instance area from the mask
    (with a box, the API uses the box area, which moves instances across the
    small/medium/large ranges). For ``bbox`` a missing box is derived from the mask.
    """
    out = []
    for p in predictions:
        # The COCO APIs add and replace top-level keys (id, area, iscrowd, bbox,
        # segmentation) but never edit values in place, so a shallow copy one level down
        # keeps the caller's list intact at a fraction of deepcopy's cost.
        q = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in p.items()}
        if iou_type == "segm":
            q.pop("bbox", None)
        elif "bbox" not in q:
            q["bbox"] = [float(v) for v in mask_util.toBbox(q["segmentation"])]
        out.append(q)
    return out


def _run_cocoeval(gt: dict, results: list[dict], iou_type: str, backend: str) -> np.ndarray:
    """Run COCOeval; return its precision array, shape (T, R, K, A, M), categories sorted by id."""
    # COCOeval writes into the ground-truth annotation dicts (ignore flags, decoded
    # segmentations): give it its own copies of the records.
    gt = {**gt, **{k: [dict(x) for x in gt[k]] for k in ("images", "annotations", "categories")}}
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        coco_gt = COCO(gt)
        make_eval = lambda g, d: COCOeval_faster(g, d, iou_type, print_function=log.debug)  # noqa: E731
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        coco_gt = COCO()
        coco_gt.dataset = gt
        make_eval = lambda g, d: COCOeval(g, d, iou_type)  # noqa: E731
    # pycocotools prints progress to stdout; keep the run's log readable.
    with contextlib.redirect_stdout(io.StringIO()):
        if backend != "faster":
            coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # loadRes cannot take an empty list (it inspects the first entry); an empty
            # result set is still well defined: every class with ground truth scores 0.
            coco_dt = type(coco_gt)()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]), "annotations": []}
            coco_dt.createIndex()
        ev = make_eval(coco_gt, coco_dt)
        ev.evaluate()
        ev.accumulate()
    precision = np.asarray(ev.eval["precision"], dtype=np.float64)
    p = ev.params
    if list(p.areaRngLbl) != ["all", "small", "medium", "large"] or list(p.maxDets) != [1, 10, 100]:
        raise RuntimeError(f"unexpected COCOeval parameters: {p.areaRngLbl} {p.maxDets}")
    if not (np.isclose(p.iouThrs[_IOU50], 0.5) and np.isclose(p.iouThrs[_IOU75], 0.75)):
        raise RuntimeError(f"unexpected COCOeval IoU thresholds: {p.iouThrs}")
    return precision


def coco_metrics(gt: str | os.PathLike | Mapping, predictions: Sequence[Mapping], iou_type: str,
                 backend: str = "auto") -> dict:
    """COCO AP for one IoU type, overall and per class.

    Returns ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: {"AP",
    "AP50", "AP75"}}}`` on a 0-100 scale; ``None`` where COCO cannot define the value
    (no ground truth of that class or size). All numbers are read from COCOeval's
    precision array (IoU x recall x class x area x maxDets) at maxDets 100, which is
    exactly how ``COCOeval.summarize`` derives its first six statistics; per class uses
    area "all". ``backend``: ``"faster"`` (faster-coco-eval), ``"pycocotools"``, or
    ``"auto"`` (faster-coco-eval when importable). Empty ``predictions`` score 0.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    gt = load_gt(gt)
    _check_predictions(gt, predictions, iou_type)
    precision = _run_cocoeval(gt, _results_for(predictions, iou_type), iou_type, _resolve_backend(backend))
    m = -1  # maxDets 100
    out: dict[str, Any] = _aps(precision[:, :, :, 0, m])
    for key in ("APs", "APm", "APl"):
        out[key] = _ap(precision[:, :, :, _AREA_INDEX[key], m])
    cats = sorted(gt["categories"], key=lambda c: c["id"])  # COCOeval's class axis order
    out["per_class"] = {c["name"]: _aps(precision[:, :, k, 0, m]) for k, c in enumerate(cats)}
    return out


def segm_ap_per_case(gt: str | os.PathLike | Mapping, predictions: Sequence[Mapping],
                     backend: str = "auto") -> dict[str, dict[str, float | None]]:
    """Mask (segm) AP per test case and class: ``{case_id: {class: AP}}``, cases sorted.

    The same COCOeval run as :func:`coco_metrics`, restricted to one case's images (its
    ground truth and the predictions on those images), so each patient gets its own AP
    on a 0-100 scale; ``None`` for a class without ground truth in that case. With
    patient-level folds every case is tested once per run, which makes backbones
    comparable case by case.
    """
    gt = load_gt(gt)
    _check_predictions(gt, predictions, "segm")
    by_case: dict[str, set] = defaultdict(set)
    for im in gt["images"]:
        if "case_id" not in im:
            raise ValueError(f"image {im.get('id')} ({im.get('file_name')}): missing 'case_id', "
                             "needed for per-case AP")
        by_case[str(im["case_id"])].add(im["id"])
    out: dict[str, dict[str, float | None]] = {}
    for case_id in sorted(by_case):
        ids = by_case[case_id]
        sub = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
               "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
        preds = [p for p in predictions if p["image_id"] in ids]
        m = coco_metrics(sub, preds, "segm", backend)
        out[case_id] = {name: v["AP"] for name, v in m["per_class"].items()}
    return out


def false_positives_per_case(gt: str | os.PathLike | Mapping, predictions: Sequence[Mapping],
                             score_thresh: float = 0.5) -> dict[str, dict[str, dict[str, int | None]]]:
    """Per test case, the predicted instances of each class the case has no ground truth of:
    ``{case: {"fp_no_gt": {class: n}, "fp_no_gt_any": {class: n}}}`` (``fp_no_gt``: scoring at
    least ``score_thresh``, as the masks that Dice counts; ``fp_no_gt_any``: every score). None
    for a class the case has: there the per-case AP scores its false positives.

    Per-case AP is undefined for a class absent from the case (COCO leaves it out), so a
    confident false infection on a patient without infection costs it nothing; these counts
    show that blind spot beside the AP."""
    gt = load_gt(gt)
    _check_predictions(gt, predictions)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    case_of = {im["id"]: str(im["case_id"]) for im in gt["images"] if "case_id" in im}
    present: dict[str, set[str]] = defaultdict(set)
    for a in gt["annotations"]:
        if a["image_id"] in case_of:
            present[case_of[a["image_id"]]].add(names[a["category_id"]])
    counts = {case: {"fp_no_gt": dict.fromkeys(names.values(), 0), "fp_no_gt_any": dict.fromkeys(names.values(), 0)}
              for case in sorted(set(case_of.values()))}
    for p in predictions:
        case = case_of.get(p["image_id"])
        name = names.get(p["category_id"])
        if case is None or name is None or name in present[case]:
            continue
        counts[case]["fp_no_gt_any"][name] += 1
        if p["score"] >= score_thresh:
            counts[case]["fp_no_gt"][name] += 1
    for case, c in counts.items():
        for key in c:
            c[key] = {name: (None if name in present[case] else n) for name, n in c[key].items()}
    return counts


# ---------------------------------------------------------------------------- volumes


def _to_rle(segm: Any, h: int, w: int, where: str) -> dict:
    """Compressed RLE for any COCO segmentation form (polygons, RLE with list or str counts)."""
    if isinstance(segm, list):  # polygons
        rles = mask_util.frPyObjects(segm, h, w)
        return mask_util.merge(rles) if rles else mask_util.encode(np.zeros((h, w), np.uint8, order="F"))
    if isinstance(segm, Mapping) and "counts" in segm and "size" in segm:
        if list(segm["size"]) != [h, w]:
            raise ValueError(f"{where}: mask size {list(segm['size'])} != image size {[h, w]}")
        if isinstance(segm["counts"], list):
            return mask_util.frPyObjects(dict(segm), h, w)
        return dict(segm)
    raise ValueError(f"{where}: unsupported segmentation {type(segm).__name__}")


def _union(rles: list[dict], h: int, w: int) -> np.ndarray:
    """Boolean (h, w) union of RLE masks."""
    if not rles:
        return np.zeros((h, w), dtype=bool)
    rle = rles[0] if len(rles) == 1 else mask_util.merge(rles, intersect=False)
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips numpy 2's copy-keyword DeprecationWarning on
        # every call; it is harmless and would drown the run's log.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(rle).astype(bool)


def _iter_slices(gt: dict, predictions: Sequence[Mapping],
                 score_thresh: float) -> Iterator[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Yield ``(case_id, gt_masks, pred_masks)`` per test slice, cases in sorted order.

    Each mask dict is ``{class name: bool (H, W)}``, a class mask being the union of its
    instances (predictions count when ``score >= score_thresh``); masks are decoded one slice
    at a time so a whole test split never sits in memory at once.
    """
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    _check_predictions(gt, predictions)
    cat_name = {c["id"]: c["name"] for c in gt["categories"]}
    gt_by_img: dict[int, list[dict]] = defaultdict(list)
    for a in gt["annotations"]:
        gt_by_img[a["image_id"]].append(a)
    pred_by_img: dict[int, list[Mapping]] = defaultdict(list)
    for p in predictions:
        if p["score"] >= score_thresh:
            pred_by_img[p["image_id"]].append(p)

    by_case: dict[str, list[dict]] = defaultdict(list)
    for im in gt["images"]:
        for key in ("case_id", "slice_index", "height", "width"):
            if key not in im:
                raise ValueError(f"image {im.get('id')} ({im.get('file_name')}): missing {key!r}, "
                                 "needed to rebuild volumes")
        by_case[str(im["case_id"])].append(im)

    for case_id in sorted(by_case):
        images = by_case[case_id]
        idx = [im["slice_index"] for im in images]
        if len(set(idx)) != len(idx):
            raise ValueError(f"case {case_id}: duplicate slice_index values")
        shapes = {(im["height"], im["width"]) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"case {case_id}: slices of different sizes {sorted(shapes)}")
        for im in images:
            h, w = im["height"], im["width"]
            masks = []
            for anns, what in ((gt_by_img[im["id"]], "annotation"), (pred_by_img[im["id"]], "prediction")):
                rles: dict[str, list[dict]] = {name: [] for name in cat_name.values()}
                for a in anns:
                    where = f"{what} on image {im['id']} ({im.get('file_name')})"
                    rles[cat_name[a["category_id"]]].append(_to_rle(a["segmentation"], h, w, where))
                masks.append({name: _union(r, h, w) for name, r in rles.items()})
            yield case_id, masks[0], masks[1]


def voxel_counts(gt: str | os.PathLike | Mapping, predictions: Sequence[Mapping],
                 score_thresh: float = 0.5) -> dict[str, dict[str, dict[str, int]]]:
    """Per case, per class: ``{"gt", "pred", "inter"}`` voxel counts over the case's test slices
    (only the slices in ``gt``: the converter keeps lung slices, so volumes cover those).

    An extra entry ``"lung"`` counts the lung region, the union of left lung, right lung and
    infection masks: that equals left + right when the lung masks already contain the
    infection (Zenodo ``Lung_Mask``), and stays right when infection voxels carry their own
    label instead of a lung label (the combined ``Lung_and_Infection_Mask``).
    """
    gt = load_gt(gt)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for case_id, g, p in _iter_slices(gt, predictions, score_thresh):
        counts = out.setdefault(case_id, {})
        lung = [name for name in g if name in LUNG_CLASSES or name == INFECTION_CLASS]
        region_g, region_p = (np.logical_or.reduce([m[name] for name in lung]) for m in (g, p))
        for name, gm, pm in [(n, g[n], p[n]) for n in g] + [("lung", region_g, region_p)]:
            c = counts.setdefault(name, {"gt": 0, "pred": 0, "inter": 0})
            c["gt"] += int(gm.sum())
            c["pred"] += int(pm.sum())
            c["inter"] += int(np.logical_and(gm, pm).sum())
    return out


def _dice(c: Mapping[str, int]) -> float:
    denom = c["gt"] + c["pred"]
    # Both empty: the prediction is exactly right, so Dice is 1 (the common convention,
    # e.g. in the COVID-19-CT-Seg benchmark code); a 0/0 NaN would poison the means.
    return 1.0 if denom == 0 else 2.0 * c["inter"] / denom


def _dice_from_counts(counts: Mapping[str, Mapping[str, Mapping[str, int]]], classes: Sequence[str]) -> dict:
    per_case = {case: {name: _dice(c[name]) for name in classes} for case, c in counts.items()}
    mean = {name: float(np.mean([d[name] for d in per_case.values()])) if per_case else None for name in classes}
    return {"per_case": per_case, "mean": mean}


def _burden_from_counts(counts: Mapping[str, Mapping[str, Mapping[str, int]]]) -> dict:
    per_case: dict[str, float | None] = {}
    for case, c in counts.items():
        lung, inf = c["lung"], c[INFECTION_CLASS]
        per_case[case] = (abs(100.0 * inf["pred"] / lung["pred"] - 100.0 * inf["gt"] / lung["gt"])
                          if lung["gt"] and lung["pred"] else None)
    defined = [v for v in per_case.values() if v is not None]
    return {"per_case": per_case, "mean": float(np.mean(defined)) if defined else None}


# ---------------------------------------------------------------------------- all of it


def evaluate(gt_json_path: str | os.PathLike | Mapping, predictions: Sequence[Mapping] | str | os.PathLike,
             score_thresh: float = 0.5, backend: str = "auto") -> dict:
    """The ``metrics`` section of result.json.

    - ``segm``, ``bbox``: :func:`coco_metrics`.
    - ``dice``: volumetric Dice per case and class, ``{"per_case": {case: {class: d}}, "mean":
      {class: d}}``: 2|G ∩ P| / (|G| + |P|) in [0, 1] over the voxels of :func:`voxel_counts`,
      1.0 when ground truth and prediction are both empty; ``mean`` is the unweighted mean
      over cases (as the Dice-based literature reports it).
    - ``infection_burden_abs_error``: ``{"per_case": {case: pp}, "mean": pp}``. Burden =
      infection voxels / lung voxels * 100 (percent of lung infected, the lung region of
      :func:`voxel_counts`); the error is |predicted - ground-truth burden| in percentage
      points. A case whose lung is empty has an undefined burden: its error is ``None`` and
      it is left out of the mean.
    - ``per_case``: per test case ``{"segm_AP": {class: AP}, "dice": {class: d}, "fp_no_gt",
      "fp_no_gt_any"}``: its segm AP (:func:`segm_ap_per_case`), its Dice, the unit the
      report's paired comparisons are made on, and the false positives on a case without that
      class (:func:`false_positives_per_case`).

    ``predictions`` is the list of COCO result dicts or the path of a COCO results JSON
    (detectron2's ``coco_instances_results.json``). ``score_thresh`` applies to the
    volumetric metrics only (AP ranks every detection).
    """
    gt = load_gt(gt_json_path)
    if isinstance(predictions, (str, os.PathLike)):
        path, predictions = predictions, _read_json(predictions, "COCO results")
        if not isinstance(predictions, list):
            raise ValueError(f"{path}: a COCO results JSON holds a list of predictions, "
                             f"not {type(predictions).__name__}")
    counts = voxel_counts(gt, predictions, score_thresh)
    dice = _dice_from_counts(counts, [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])])
    segm_ap = segm_ap_per_case(gt, predictions, backend)
    fp = false_positives_per_case(gt, predictions, score_thresh)
    return {
        "segm": coco_metrics(gt, predictions, "segm", backend),
        "bbox": coco_metrics(gt, predictions, "bbox", backend),
        "dice": dice,
        "infection_burden_abs_error": _burden_from_counts(counts),
        "per_case": {case: {"segm_AP": dict(segm_ap.get(case, {})), "dice": dict(dice["per_case"].get(case, {})),
                            **{k: dict(v) for k, v in fp.get(case, {}).items()}}
                     for case in sorted(set(segm_ap) | set(dice["per_case"]) | set(fp))},
    }
