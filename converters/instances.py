"""Masks of one slice -> COCO instance annotations.

Classes (COCO category ids = mask label values of Lung_and_Infection_Mask): 1 left_lung,
2 right_lung (the patient's sides, from the label value, never from the image side),
3 infection. One instance per lung (all its pixels, even if split into several pieces),
one instance per connected infection component.
"""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

CLASSES = [
    {"id": 1, "name": "left_lung", "label_value": 1},
    {"id": 2, "name": "right_lung", "label_value": 2},
    {"id": 3, "name": "infection", "label_value": 3},
]
CATEGORIES = [{"id": c["id"], "name": c["name"], "supercategory": "lung"} for c in CLASSES]
LABELS = (0, 1, 2, 3)
STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def slice_instances(labels: np.ndarray, connectivity: int = 8, min_area: int = 1,
                    polygons: bool = False) -> tuple[list[dict], int]:
    """Annotations (without ``id``/``image_id``) for one (H, W) label slice.

    Returns ``(annotations, n_dropped)``: infection components smaller than ``min_area``
    pixels are dropped and counted. ``segmentation`` is compressed RLE with ``counts`` as
    str, or polygons when asked; ``area`` and ``bbox`` always come from the exact mask.
    """
    if connectivity not in STRUCTURES:
        raise ValueError(f"infection.connectivity must be 4 or 8, not {connectivity}")
    cats: list[int] = []
    planes: list[np.ndarray] = []
    for value in (1, 2):
        m = labels == value
        if m.any():
            cats.append(value)
            planes.append(m)
    dropped = 0
    inf = labels == 3
    if inf.any():
        comp, n = ndimage.label(inf, structure=STRUCTURES[connectivity])
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        for k in range(1, n + 1):
            if sizes[k] >= min_area:
                cats.append(3)
                planes.append(comp == k)
            else:
                dropped += 1
    if not planes:
        return [], dropped
    # one Fortran-ordered (H, W, N) stack: a single encode call for all instances
    stack = np.asfortranarray(np.stack(planes, axis=-1).astype(np.uint8))
    rles = mask_utils.encode(stack)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    anns = []
    for i, (cat, rle) in enumerate(zip(cats, rles)):
        seg = {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
        if polygons:
            seg = mask_to_polygons(planes[i])
        anns.append({"category_id": cat, "segmentation": seg, "area": int(areas[i]),
                     "bbox": [float(b) for b in boxes[i]], "iscrowd": 0})
    return anns, dropped


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outline polygons ``[[x0, y0, x1, y1, ...], ...]`` of a binary mask (approximate).

    Uses skimage's marching squares; polygons lose pixel exactness, which is why RLE is
    the default.
    """
    from skimage import measure  # optional dependency, only for polygons=true

    padded = np.pad(mask.astype(np.uint8), 1)
    polys = []
    for c in measure.find_contours(padded, 0.5):
        c = c - 1.0  # undo the padding
        if len(c) < 3:
            continue
        xy = np.stack([c[:, 1], c[:, 0]], axis=1).ravel()
        polys.append([round(float(v), 2) for v in xy])
    return polys
