"""3-D metrics on whole volumes: Dice and normalised surface Dice (NSD) per class.

The benchmark of this dataset (Ma et al. 2021) reports both per patient, NSD at 1 mm for the
lungs and 3 mm for infection, computed with DeepMind's surface-distance code. NSD here is
MONAI's ``compute_surface_dice`` with ``use_subvoxels=True``, which follows that code:
surface elements sit on voxel corners and are weighted by their area, distances are in mm
from the voxel spacing. NSD = (area of each surface within the tolerance of the other) /
(total area of both surfaces), in [0, 1].

Conventions: a class empty in both volumes scores 1 (Dice and NSD: the prediction is exactly
right); empty in one of them scores 0. Lungs are scored with their infection
(``benchmark.volumes.whole_lungs``, as the release's ``Lung_Mask``), infection as labelled.
Inputs are label volumes (``benchmark.volumes`` labels) on one voxel grid, with ``spacing``
in mm along the array axes.
"""

from __future__ import annotations

import warnings

import numpy as np

from benchmark.volumes import INFECT, whole_lungs
from converters.catalog import INFECTION_CLASS, LUNG_CLASSES

#: NSD tolerance per class, mm (the benchmark's: 1 mm lungs, 3 mm infection)
TOLERANCE_MM = {LUNG_CLASSES[0]: 1.0, LUNG_CLASSES[1]: 1.0, INFECTION_CLASS: 3.0}


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


def class_masks(labels: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """{class name: bool volume}: each lung with its infection, and the infection."""
    left, right = whole_lungs(labels, np.asarray(spacing, float))
    return {LUNG_CLASSES[0]: left, LUNG_CLASSES[1]: right, INFECTION_CLASS: labels == INFECT}


def volume_metrics(gt_labels: np.ndarray, pred_labels: np.ndarray, spacing) -> dict[str, dict[str, float]]:
    """``{"dice3d": {class: d}, "nsd3d": {class: n}}`` of one case (both on one grid)."""
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"ground truth {gt_labels.shape} and prediction {pred_labels.shape} differ in shape")
    g, p = class_masks(gt_labels, spacing), class_masks(pred_labels, spacing)
    return {"dice3d": {c: dice(g[c], p[c]) for c in g},
            "nsd3d": {c: nsd(g[c], p[c], spacing, TOLERANCE_MM[c]) for c in g}}


def summarize(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """Mean over cases of each metric and class: ``{"dice3d": {class: mean}, "nsd3d": ...}``."""
    out: dict[str, dict[str, float | None]] = {}
    for metric in ("dice3d", "nsd3d"):
        out[metric] = {}
        for c in TOLERANCE_MM:
            vals = [m[metric][c] for m in per_case.values() if m.get(metric, {}).get(c) is not None]
            out[metric][c] = float(np.mean(vals)) if vals else None
    return out
