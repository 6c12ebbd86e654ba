"""3-D metrics on whole volumes: Dice and normalised surface Dice (NSD) per class.

The benchmark of this dataset (Ma et al. 2021) reports both per patient, NSD at 1 mm for the
lungs and 3 mm for infection, computed with DeepMind's surface-distance code. NSD here is
MONAI's ``compute_surface_dice`` with ``use_subvoxels=True``, which follows that code:
surface elements sit on voxel corners and are weighted by their area, distances are in mm
from the voxel spacing. NSD = (area of each surface within the tolerance of the other) /
(total area of both surfaces), in [0, 1].

Conventions: a class empty in both volumes scores 1 (Dice and NSD: the prediction is exactly
right); empty in one of them scores 0. Lungs are scored on two definitions: with their
infection (``dice3d``/``nsd3d``: ``benchmark.volumes.whole_lungs``, as the release's
``Lung_Mask``) and as labelled (``dice3d_labelled``/``nsd3d_labelled``: labels 1 and 2 only,
the lungs without the infection inside them, as the benchmark's evaluation script scores
``Lung_and_Infection_Mask`` and so as its published numbers are). Infection is the same in both.
``dice3d_all``: whole-lung Dice of a second prediction, painted from every detection the model
returned (no Dice score threshold), so a backbone whose scores are low is not 0 by the
threshold alone. Inputs are label volumes (``benchmark.volumes`` labels) on one voxel grid,
with ``spacing`` in mm along the array axes.
"""

from __future__ import annotations

import warnings

import numpy as np

from benchmark.volumes import INFECT, LEFT, RIGHT, whole_lungs
from contracts.catalog import INFECTION_CLASS, LUNG_CLASSES

#: NSD tolerance per class, mm (the benchmark's: 1 mm lungs, 3 mm infection)
TOLERANCE_MM = {LUNG_CLASSES[0]: 1.0, LUNG_CLASSES[1]: 1.0, INFECTION_CLASS: 3.0}
#: Lung definitions: "whole" (with the infection), "labelled" (labels 1 / 2 as they are)
LUNG_DEFINITIONS = ("whole", "labelled")
#: The per-case keys ``volume_metrics`` writes, in order
METRIC_KEYS = ("dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled", "dice3d_all")


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """2|G n P| / (|G| + |P|); 1.0 when both are empty."""
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    denom = int(g.sum()) + int(p.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(g, p).sum()) / denom


def _crop(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the box holding either, one voxel of margin (surfaces need it)."""
    from scipy import ndimage

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


def class_masks(labels: np.ndarray, spacing, lungs: str = "whole") -> dict[str, np.ndarray]:
    """{class name: bool volume}: each lung (``lungs``: "whole", with its infection; "labelled",
    label 1 / 2 as it is), and the infection."""
    if lungs == "whole":
        left, right = whole_lungs(labels, np.asarray(spacing, float))
    elif lungs == "labelled":
        left, right = labels == LEFT, labels == RIGHT
    else:
        raise ValueError(f"lungs must be one of {LUNG_DEFINITIONS}, got {lungs!r}")
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
    inf_nsd = None
    for lungs, suffix in (("whole", ""), ("labelled", "_labelled")):
        g, p = class_masks(gt_labels, spacing, lungs), class_masks(pred_labels, spacing, lungs)
        out[f"dice3d{suffix}"] = {c: dice(g[c], p[c]) for c in g}
        n = {c: nsd(g[c], p[c], spacing, TOLERANCE_MM[c]) for c in g
             if not (c == INFECTION_CLASS and inf_nsd is not None)}
        if inf_nsd is None:
            inf_nsd = n[INFECTION_CLASS]
        out[f"nsd3d{suffix}"] = {**n, INFECTION_CLASS: inf_nsd}  # infection: one definition
    if pred_all is not None:
        g, p = class_masks(gt_labels, spacing), class_masks(pred_all, spacing)
        out["dice3d_all"] = {c: dice(g[c], p[c]) for c in g}
    return out


def summarize(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """Mean over cases of each metric and class: ``{"dice3d": {class: mean}, "nsd3d": ...}`` for
    every key of METRIC_KEYS some case has."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in [k for k in METRIC_KEYS if any(k in m for m in per_case.values())]:
        out[metric] = {}
        for c in TOLERANCE_MM:
            vals = [m[metric][c] for m in per_case.values() if m.get(metric, {}).get(c) is not None]
            out[metric][c] = float(np.mean(vals)) if vals else None
    return out
