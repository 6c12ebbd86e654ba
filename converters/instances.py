"""Masks of one slice -> COCO instance annotations.

Classes (``contracts.catalog``; COCO category ids = mask label values of
Lung_and_Infection_Mask): 1 left_lung, 2 right_lung (the patient's sides, from the label
value, never from the image side), 3 infection. One instance per lung (all its pixels, even
if split into several pieces), one instance per connected infection component.
"""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from contracts import catalog

#: The classes as dataset.json records them.
CLASSES = [{"id": c.id, "name": c.name, "label_value": c.label_value} for c in catalog.CLASSES]
CATEGORIES = catalog.coco_categories()
_LUNGS = (catalog.LEFT_LUNG.label_value, catalog.RIGHT_LUNG.label_value)
_INFECTION = catalog.INFECTION.label_value
STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def slice_instances(labels: np.ndarray, connectivity: int = 8, min_area: int = 1,
                    polygons: bool = False) -> tuple[list[dict], int]:
    """Annotations (without ``id``/``image_id``) for one (H, W) label slice.

    ``connectivity``: 4 or 8 (config.validate checks it). Returns ``(annotations,
    n_dropped)``: infection components smaller than ``min_area``
    pixels are dropped and counted. ``segmentation`` is compressed RLE with ``counts`` as
    str, or polygons when asked; ``area`` and ``bbox`` always come from the exact mask.
    Order: left lung, right lung, then infection components in ``ndimage.label`` order
    (row-major scan of the displayed slice).

    Fast path: COCO RLE runs down columns, i.e. over ``labels.T`` in C order. The masks
    are written straight into one C-ordered (N, W, H) buffer, which *is* the
    Fortran-ordered (H, W, N) stack ``pycocotools.mask.encode`` wants: no per-mask
    transposing copies (pass ``labels`` as ``x.T`` of a C-contiguous ``x`` to avoid even
    the one copy here).
    """
    lab_t = np.ascontiguousarray(labels.T)  # (W, H)
    cats = [v for v in _LUNGS if (lab_t == v).any()]
    dropped = 0
    comps: list[tuple[int, tuple[slice, slice], tuple[slice, slice]]] = []
    inf = lab_t == _INFECTION
    comp_t = None
    if inf.any():
        # label only the bounding box of the infection pixels (usually a small part of
        # the slice), in the displayed orientation so the order is row-major on the image
        ws = np.flatnonzero(inf.any(axis=1))
        hs = np.flatnonzero(inf.any(axis=0))
        w0, h0 = int(ws[0]), int(hs[0])
        sub = np.ascontiguousarray(inf[w0:ws[-1] + 1, h0:hs[-1] + 1].T)  # (h, w)
        comp, n = ndimage.label(sub, structure=STRUCTURES[connectivity])
        comp_t = comp.T
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            if sizes[k] >= min_area:
                local = (sl[1], sl[0])  # (w, h) order, in the crop
                full = (slice(sl[1].start + w0, sl[1].stop + w0),
                        slice(sl[0].start + h0, sl[0].stop + h0))
                comps.append((k, local, full))
            else:
                dropped += 1
    n_inst = len(cats) + len(comps)
    if n_inst == 0:
        return [], dropped
    buf = np.zeros((n_inst, lab_t.shape[0], lab_t.shape[1]), dtype=np.uint8)
    for i, v in enumerate(cats):
        np.equal(lab_t, v, out=buf[i].view(bool))
    for i, (k, local, full) in enumerate(comps, start=len(cats)):
        buf[i][full] = comp_t[local] == k
    cats = cats + [_INFECTION] * len(comps)
    stack = buf.transpose(2, 1, 0)  # (H, W, N), Fortran-contiguous: no copy
    rles = mask_utils.encode(stack)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    anns = []
    for i, (cat, rle) in enumerate(zip(cats, rles)):
        seg = {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}
        if polygons:
            seg = mask_to_polygons(buf[i].T)
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
