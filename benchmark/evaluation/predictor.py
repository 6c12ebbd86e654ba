"""Label volumes from per-slice predictions, and what is read off them (pure: numpy, scipy, nibabel).

Contracts
---------
Labels are the dataset's: 0 background, 1 left lung, 2 right lung, 3 infection (the
patient's sides, ``contracts.catalog``), one label per voxel, uint8.

Overlap rule (``labels_from_instances``): instances below the score threshold are dropped;
a pixel covered by any infection instance is infection (3), as in the release's
``Lung_and_Infection_Mask`` where infection overrides the lung label; otherwise it takes the
lung of the highest-scoring lung instance covering it; otherwise it is background.

A lung "with its infection" (``whole_lungs``, used by ``volume_table`` and the 3-D metrics)
is the lung label plus the infection voxels nearer to that lung than to the other one
(Euclidean distance in mm from the voxel spacing), the way the release's ``Lung_Mask`` holds
whole lungs; infection in a volume without any lung voxel belongs to neither.

Spacing is in mm per voxel along the array's own axes (``spacing_of(affine)``); volumes are
reported in ml (1 ml = 1000 mm^3), burden in percent of the lung volume.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from contracts.catalog import INFECTION, LEFT_LUNG, RIGHT_LUNG

LEFT, RIGHT, INFECT = LEFT_LUNG.label_value, RIGHT_LUNG.label_value, INFECTION.label_value
#: volumes.csv columns, in order (case and file first)
VOLUME_COLUMNS = ["case", "file", "left_lung_ml", "right_lung_ml", "lungs_ml", "infection_ml",
                  "infection_left_ml", "infection_right_ml", "burden_left_pct", "burden_right_pct",
                  "burden_pct"]


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis: the column norms of the affine's 3x3 part."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def labels_from_instances(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                          score_thresh: float) -> np.ndarray:
    """One slice's label image from its instances (see the module's overlap rule).

    ``masks``: bool (N, H, W); ``labels``: (N,) dataset label values (1, 2, 3); ``scores``:
    (N,) in [0, 1]. Returns uint8 (H, W)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    keep = np.asarray(scores, float) >= score_thresh
    labels = np.asarray(labels)
    lung = [i for i in np.argsort(np.asarray(scores, float), kind="stable")  # low score first
            if keep[i] and labels[i] in (LEFT, RIGHT)]
    for i in lung:  # a higher score paints over a lower one
        out[masks[i]] = labels[i]
    infection = keep & (labels == INFECT)
    if infection.any():
        out[masks[infection].any(axis=0)] = INFECT
    return out


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


def volume_table(labels: np.ndarray, spacing: np.ndarray, voxel_mm3: float | None = None) -> dict[str, float | None]:
    """Volumes (ml) and infection burden (%) of one label volume: each lung with its infection,
    both lungs, the infection overall and within each lung, and burden per lung and overall
    (infection / lung volume x 100; None for a lung of volume 0). ``voxel_mm3``: a voxel's
    volume, |det| of the affine's 3x3 part (differs from the product of ``spacing`` for a
    sheared grid); default that product."""
    ml = (float(np.prod(spacing)) if voxel_mm3 is None else float(voxel_mm3)) / 1000.0
    left, right = whole_lungs(labels, spacing)
    infection = labels == INFECT
    n_left, n_right = int(left.sum()), int(right.sum())
    inf_left, inf_right = int((left & infection).sum()), int((right & infection).sum())
    n_inf = int(infection.sum())

    def pct(a: int, b: int) -> float | None:
        return None if b == 0 else round(100.0 * a / b, 4)

    return {"left_lung_ml": round(n_left * ml, 3), "right_lung_ml": round(n_right * ml, 3),
            "lungs_ml": round((n_left + n_right) * ml, 3), "infection_ml": round(n_inf * ml, 3),
            "infection_left_ml": round(inf_left * ml, 3), "infection_right_ml": round(inf_right * ml, 3),
            "burden_left_pct": pct(inf_left, n_left), "burden_right_pct": pct(inf_right, n_right),
            "burden_pct": pct(inf_left + inf_right, n_left + n_right)}


def label_image(labels: np.ndarray, affine: np.ndarray, like=None):
    """A NIfTI-1 image of ``labels`` (uint8, no intensity scaling) on ``affine``. With ``like``
    (the input image whose grid ``labels`` is on) its header is kept: qform, sform and their
    codes exactly as the input has them (sheared grids included), units, pixdim; else
    both transforms are ``affine`` with code 1 (scanner)."""
    import nibabel as nib

    data = np.asarray(labels, dtype=np.uint8)
    if like is not None:
        img = nib.Nifti1Image(data, like.affine, header=like.header.copy())
    else:
        img = nib.Nifti1Image(data, np.asarray(affine, float))
        img.header.set_xyzt_units("mm")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 3
    img.header["descrip"] = b"lungbench labels: 1 left lung, 2 right lung, 3 infection"
    return img


def save_atomic(img, path: str | os.PathLike) -> Path:
    """Save a nibabel image at ``path`` through a temp file in the same folder, then a rename:
    the path never holds a half-written file."""
    import nibabel as nib

    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
