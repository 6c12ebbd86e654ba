"""A run scored on whole volumes: Dice and normalised surface Dice (NSD) per test case and class.

After training, the run predicts every slice of each test case's source volumes
(``benchmark.evaluation.predictor``) and scores the label volumes against the ground truth
(``evaluate_run``): result.json's ``metrics.volume3d``, each case's numbers in ``metrics.per_case``.

The benchmark of this dataset (Ma et al. 2021) reports both per patient, NSD at 1 mm for the
lungs and 3 mm for infection, computed with DeepMind's surface-distance code. NSD here is
MONAI's ``compute_surface_dice`` with ``use_subvoxels=True``, which follows that code:
surface elements sit on voxel corners and are weighted by their area, distances are in mm
from the voxel spacing. NSD = (area of each surface within the tolerance of the other) /
(total area of both surfaces), in [0, 1].

Conventions: a class empty in both volumes scores 1 (Dice and NSD: the prediction is exactly
right); empty in one of them scores 0. Lungs are scored on two definitions: with their
infection (``dice3d``/``nsd3d``: ``whole_lungs``, as the release's ``Lung_Mask``) and as
labelled (``dice3d_labelled``/``nsd3d_labelled``: labels 1 and 2 only, the lungs without the
infection inside them, as the benchmark's evaluation script scores ``Lung_and_Infection_Mask``
and so as its published numbers are). Infection is the same in both. ``dice3d_all``: whole-lung
Dice of a second prediction, painted from every detection the model returned (no Dice score
threshold), so a backbone whose scores are low is not 0 by the threshold alone. Inputs are
label volumes on one voxel grid, labels and ``spacing`` as in ``benchmark.evaluation.predictor``.

A lung "with its infection" (``whole_lungs``) is the lung label plus the infection voxels
nearer to that lung than to the other one (Euclidean distance in mm from the voxel spacing),
the way the release's ``Lung_Mask`` holds whole lungs; infection in a volume without any lung
voxel belongs to neither.
"""


from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmark.evaluation.predictor import INFECT, LEFT, RIGHT, Predictor, conversion_settings, spacing_of
from contracts.catalog import INFECTION_CLASS, LUNG_CLASSES
from contracts.dataset import Dataset
from converters.errors import ConversionError
from converters.layout import CaseFiles
from converters.volume import canonical, is_prewindowed

log = logging.getLogger(__name__)

#: NSD tolerance per class, mm (the benchmark's: 1 mm lungs, 3 mm infection)
TOLERANCE_MM = {LUNG_CLASSES[0]: 1.0, LUNG_CLASSES[1]: 1.0, INFECTION_CLASS: 3.0}
#: The per-case keys ``volume_metrics`` writes, in order
METRIC_KEYS = ("dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled", "dice3d_all")


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """2|G n P| / (|G| + |P|); 1.0 when both are empty."""
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    denom = int(g.sum()) + int(p.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(g, p).sum()) / denom


def _crop(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the box holding either, one voxel of margin (surfaces need it)."""
    box = ndimage.find_objects((g | p).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    return g[box], p[box]


def nsd(gt: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float) -> float:
    """Normalised surface Dice of two bool volumes at ``tolerance_mm`` (module doc)."""
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    if g.ndim != 3 or g.shape != p.shape:
        raise ValueError(f"nsd needs two 3-D masks of one shape, got {g.shape} and {p.shape}")
    gs, ps = bool(g.any()), bool(p.any())
    if not gs and not ps:
        return 1.0
    if not gs or not ps:
        return 0.0
    import torch
    from monai.metrics import compute_surface_dice

    g, p = _crop(g, p)
    # crop margin 1: pad so that a mask touching the array edge still has a closed surface
    g, p = np.pad(g, 1), np.pad(p, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's deprecation notices of unrelated arguments
        v = compute_surface_dice(torch.from_numpy(p)[None, None].float(),
                                 torch.from_numpy(g)[None, None].float(),
                                 class_thresholds=[float(tolerance_mm)], include_background=True,
                                 spacing=tuple(float(s) for s in spacing), use_subvoxels=True)
    return float(v.reshape(-1)[0])


def whole_lungs(labels: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) bool volumes: each lung label with the infection assigned to it (module doc)."""
    left, right = labels == LEFT, labels == RIGHT
    infection = labels == INFECT
    if not infection.any() or not (left.any() or right.any()):
        return left, right
    # distances only matter inside the box holding every labelled voxel
    box = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
    sub = labels[box]
    lung = (sub == LEFT) | (sub == RIGHT)
    idx = ndimage.distance_transform_edt(~lung, sampling=spacing, return_distances=False,
                                         return_indices=True)
    nearest = sub[tuple(idx)]
    inf = sub == INFECT
    left, right = left.copy(), right.copy()
    left[box] |= inf & (nearest == LEFT)
    right[box] |= inf & (nearest == RIGHT)
    return left, right


def class_masks(labels: np.ndarray, spacing, whole: bool = True) -> dict[str, np.ndarray]:
    """{class name: bool volume}: each lung (``whole``: with its infection, ``whole_lungs``; else
    label 1 / 2 as it is), and the infection."""
    left, right = whole_lungs(labels, np.asarray(spacing, float)) if whole else (labels == LEFT, labels == RIGHT)
    return {LUNG_CLASSES[0]: left, LUNG_CLASSES[1]: right, INFECTION_CLASS: labels == INFECT}


def volume_metrics(gt_labels: np.ndarray, pred_labels: np.ndarray, spacing,
                   pred_all: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """``{"dice3d": {class: d}, "nsd3d": {class: n}, "dice3d_labelled": ..., "nsd3d_labelled": ...}``
    of one case (all on one grid), and ``"dice3d_all"`` when ``pred_all`` (the prediction from
    every detection) is given."""
    for name, p in (("prediction", pred_labels), ("prediction from every detection", pred_all)):
        if p is not None and gt_labels.shape != p.shape:
            raise ValueError(f"ground truth {gt_labels.shape} and {name} {p.shape} differ in shape")
    out: dict[str, dict[str, float]] = {}
    for whole, suffix in ((True, ""), (False, "_labelled")):
        g, p = class_masks(gt_labels, spacing, whole), class_masks(pred_labels, spacing, whole)
        out[f"dice3d{suffix}"] = {c: dice(g[c], p[c]) for c in g}
        # infection has one definition: its NSD is computed once
        out[f"nsd3d{suffix}"] = {c: out["nsd3d"][c] if not whole and c == INFECTION_CLASS
                                 else nsd(g[c], p[c], spacing, TOLERANCE_MM[c]) for c in g}
    if pred_all is not None:
        g, p = class_masks(gt_labels, spacing), class_masks(pred_all, spacing)
        out["dice3d_all"] = {c: dice(g[c], p[c]) for c in g}
    return out


def case_means(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """Mean over cases of each metric and class: ``{"dice3d": {class: mean}, "nsd3d": ...}`` for
    every key of METRIC_KEYS some case has."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in [k for k in METRIC_KEYS if any(k in m for m in per_case.values())]:
        out[metric] = {}
        for c in TOLERANCE_MM:
            vals = [m[metric][c] for m in per_case.values() if m.get(metric, {}).get(c) is not None]
            out[metric][c] = float(np.mean(vals)) if vals else None
    return out


def known_slices(test_coco: dict, predictions: list[dict]) -> dict[str, dict[int, list[dict]]]:
    """case -> slice index -> a run's COCO results on that test image (``Predictor.predict_volume``'s
    ``known``; masks stay RLE until a case is rebuilt)."""
    where = {im["id"]: (str(im["case_id"]), int(im["slice_index"])) for im in test_coco["images"]}
    out: dict[str, dict[int, list[dict]]] = {}
    for case, k in where.values():
        out.setdefault(case, {})[k] = []
    for p in predictions:
        case, k = where[p["image_id"]]
        out[case][k].append(p)
    return out


def read_case(dataset: Dataset, cid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(CT volume, its affine, ground-truth labels), as stored, of one case's source files,
    verified against the sha256 the dataset recorded; or why they cannot be had (a note)."""
    from converters.case import load_verified

    manifest = dataset.manifest
    rec = {c["id"]: c for c in manifest.get("cases", [])}.get(cid)
    if rec is None:
        return f"3-D metrics not computed: case {cid} is not in {dataset.path}"
    raw_root = Path(str(manifest.get("raw_root")))
    files = {s["role"]: raw_root / s["path"] for s in rec["sources"]}
    gone = [p for p in files.values() if not p.is_file()]
    if gone:
        return (f"3-D metrics not computed: the source volume {gone[0]} is not there (they need "
                "the raw folder the dataset was converted from)")
    case = CaseFiles(cid, image=files["image"], combined=files.get("combined"), lung=files.get("lung"),
                     infection=files.get("infection"))
    try:
        image, img, masks, labels, _ = load_verified(case, manifest["config"])
    except ConversionError as e:  # a source that no longer reads: note it, keep the run
        return f"3-D metrics not computed: {e}"
    sha = {s["role"]: s["sha256"] for s in rec["sources"]}
    for role, v in [("image", image), *zip([r for r, _ in case.masks()], masks)]:
        if v.sha256 != sha.get(role):
            return (f"3-D metrics not computed: {v.path} changed since the dataset was converted "
                    "(sha256 differs); convert it again")
    return img, image.affine, labels


def evaluate_volumes(model, d2cfg, dataset: Dataset, case_ids: list[str], score_thresh: float,
                     batch_size: int = 1, known: dict[str, dict[int, list[dict]]] | None = None
                     ) -> tuple[dict | None, list[str]]:
    """The metrics of the module doc per test case, on the whole source volumes (every slice, also
    those the converter did not keep), predicted by ``Predictor`` (``known``: the slices the
    run's COCO evaluation already predicted, see ``known_slices``). Returns (the
    ``metrics.volume3d`` section, notes); (None, [why]) when the source volumes the dataset was
    converted from are gone or changed."""
    from tqdm import tqdm

    predictor = Predictor.from_model(model, d2cfg, conversion_settings(dataset.manifest), score_thresh, batch_size)
    per_case: dict[str, dict] = {}
    for cid in tqdm(sorted(case_ids), desc="3-D metrics", unit="case", leave=False, disable=None):
        found = read_case(dataset, cid)
        if isinstance(found, str):
            return None, [found]
        img, affine, labels = found
        img_ras, aff_ras, _ = canonical(img, affine)
        gt_ras, _, _ = canonical(labels, affine)
        pred_ras, pred_all = predictor.predict_volumes(img_ras, is_prewindowed(img), (score_thresh, 0.0), desc=cid,
                                                       known=(known or {}).get(cid))
        per_case[cid] = volume_metrics(gt_ras, pred_ras, spacing_of(aff_ras), pred_all=pred_all)
    return {"per_case": per_case, "mean": case_means(per_case), "tolerance_mm": dict(TOLERANCE_MM),
            "n_cases": len(per_case), "slices": "every slice of each test volume",
            "lungs": "each lung with the infection nearer to it (as the release's Lung_Mask)",
            "lungs_labelled": "labels 1 and 2 as they are, without the infection (as the benchmark's "
                              "evaluation script scores Lung_and_Infection_Mask)",
            "score_thresh": float(score_thresh),
            # every detection the model returned: those at or above its test threshold, the ones AP ranks
            "score_thresh_all": float(d2cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)}, []


def evaluate_run(model, d2cfg, dataset: Dataset, scheme: str, fold: int, predictions: list[dict],
                 score_thresh: float, batch_size: int) -> tuple[dict | None, list[str]]:
    """The run's 3-D evaluation (``evaluate_volumes``) of its test cases that have no slice in
    training; whatever goes wrong there is a note, not a failed run (the model and its COCO
    metrics are done). ``predictions``: the run's COCO results on its test split."""
    try:
        test_coco = dataset.coco(scheme, fold, "test")
        trained = {str(im["case_id"]) for im in dataset.coco(scheme, fold, "train")["images"]}
        tested = {str(im["case_id"]) for im in test_coco["images"]}
        cases = sorted(tested - trained)
        notes = []
        if tested & trained:
            # slice_random: a whole volume would score slices the model trained on
            notes.append(f"3-D metrics leave out {len(tested & trained)} of {len(tested)} test case(s) "
                         "with slices in training (a slice-level split)")
        if not cases:
            return None, notes
        # the test slices were just predicted on the same pixels: only the others run again
        volume3d, more = evaluate_volumes(model, d2cfg, dataset, cases, score_thresh, batch_size,
                                          known=known_slices(test_coco, predictions))
        return volume3d, notes + more
    except Exception as e:  # noqa: BLE001 - out of memory, a broken source, ...: the run stands
        log.exception("3-D metrics failed")
        return None, [f"3-D metrics not computed: {type(e).__name__}: {e}"]


def add_volume3d(metrics: dict, volume3d: dict | None) -> dict:
    """``metrics`` with the 3-D section (``metrics.volume3d``: means, tolerances, thresholds;
    None when not computed) and each case's 3-D Dice and NSD beside its AP in
    ``metrics.per_case``, stored there only (the report tests them alike)."""
    volume3d = None if volume3d is None else dict(volume3d)
    per_case = (volume3d or {}).pop("per_case", None) or {}
    metrics["volume3d"] = volume3d
    for case, m in per_case.items():
        metrics["per_case"].setdefault(case, {}).update(m)
    return metrics
