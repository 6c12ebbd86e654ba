"""Convert one case: the unit of work of the process pool (importable, so it pickles).

Reads the image and masks once, verifies everything before writing, orients, windows,
writes one PNG per kept slice and returns the slice records with their annotations.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from contracts import catalog
from .errors import ConversionError
from .instances import slice_instances
from .layout import CaseFiles
from .volume import (axcodes, canonical, check_finite, check_geometry, check_labels,
                     display_pixels, display_slice, is_prewindowed, read_volume, squeeze_3d)

CLASS_NAMES = catalog.NAME_BY_ID
_LEFT, _RIGHT = catalog.LEFT_LUNG.label_value, catalog.RIGHT_LUNG.label_value
_INFECTION = catalog.INFECTION.label_value
#: Label values each mask file may hold: the combined mask holds the class ids; the separate
#: lung mask the two lungs' ids, the separate infection mask 1 for infection.
_ALLOWED = {"combined": catalog.LABEL_VALUES, "lung": (catalog.BACKGROUND, _LEFT, _RIGHT),
            "infection": (catalog.BACKGROUND, 1)}


def windows_of(cfg: dict) -> list[tuple[float, float]]:
    """The HU windows, one per output channel (lung / mediastinal / wide if multiwindow)."""
    if cfg["multiwindow"]:
        return [tuple(map(float, w)) for w in cfg["windows"].values()]
    return [tuple(map(float, cfg["window"]))]


def kept_slices(lung_z: np.ndarray, n_slices: int, slices_cfg: dict) -> list[int]:
    """Slice indices to keep: ``all``, ``lung`` (any lung/infection label), or ``stride``
    (every ``stride``-th lung slice, starting with the first; both checked by config.validate)."""
    keep = slices_cfg["keep"]
    if keep == "all":
        return list(range(n_slices))
    return [int(z) for z in lung_z[::int(slices_cfg["stride"]) if keep == "stride" else 1]]


def load_verified(case: CaseFiles, cfg: dict):
    """Read and verify one case. Returns ``(image Volume, image 3-D array, mask Volumes,
    combined uint8 label array, voxel count per label)``; raises ConversionError naming
    the bad file."""
    cid = case.case_id
    atol = float(cfg["verify"]["affine_atol"])
    limit = int(cfg["verify"]["max_voxels"])
    image = read_volume(case.image, limit)
    img = squeeze_3d(image, cid)
    check_finite(image, img, cid)
    masks = [(role, read_volume(p, limit)) for role, p in case.masks()]
    arrays = {}
    for role, vol in masks:
        arr = squeeze_3d(vol, cid)
        check_geometry(image.path, img.shape, image.affine, vol.path, arr.shape, vol.affine,
                       atol, cid)
        arrays[role], counts = check_labels(vol, arr, _ALLOWED[role], cid)
    if "combined" in arrays:
        labels = arrays["combined"]
        lung_file = masks[0][1].path
    else:
        # infection overrides the lung label, as in Lung_and_Infection_Mask
        labels = np.where(arrays["infection"] == 1, np.uint8(_INFECTION), arrays["lung"])
        lung_file = dict(masks)["lung"].path
        counts = {v: int(np.count_nonzero(labels == v)) for v in CLASS_NAMES}
    if counts[_LEFT] == 0 and counts[_RIGHT] == 0:
        raise ConversionError(lung_file, f"lung mask is empty: no voxel labelled {_LEFT} (left lung) "
                              f"or {_RIGHT} (right lung)", case_id=cid)
    for v in (_LEFT, _RIGHT):
        if counts[v] == 0:
            raise ConversionError(lung_file, f"{CLASS_NAMES[v]} (label {v}) is empty", case_id=cid)
    return image, img, [v for _, v in masks], labels, counts


def process_case(case: CaseFiles, root: str, cfg: dict, images_dir: str) -> dict:
    """Convert one case; PNGs go to ``<images_dir>/<case_id>/<slice:04d>.png``.

    Returns ``{"case_id", "images": [image dict + "annotations": [...]], "record": {...}}``
    where the record is this case's entry of ``dataset.json["cases"]``.
    """
    cid = case.case_id
    image, img, mask_vols, labels, counts = load_verified(case, cfg)
    orig_axcodes = axcodes(image.affine)
    img_ras, aff_ras, ornt = canonical(img, image.affine)
    lab_ras, _, _ = canonical(labels, image.affine)
    spacing = np.sqrt((aff_ras[:3, :3] ** 2).sum(axis=0))
    prewindowed = is_prewindowed(img)
    warnings = []
    lung_z = np.flatnonzero((lab_ras > 0).any(axis=(0, 1)))
    keep = kept_slices(lung_z, lab_ras.shape[2], cfg["slices"])
    windows = windows_of(cfg)
    inf_cfg = cfg["infection"]
    case_dir = Path(images_dir) / cid
    case_dir.mkdir(parents=True, exist_ok=True)
    images = []
    n_inst = {name: 0 for name in catalog.CLASS_NAMES}
    dropped = 0
    side = {_LEFT: [0.0, 0.0], _RIGHT: [0.0, 0.0]}  # lung -> [sum(area * bbox centre x), sum(area)]
    for k in keep:
        lab2d = display_slice(lab_ras, k)
        pixels = display_pixels(img_ras, k, windows, prewindowed)
        anns, d = slice_instances(lab2d, int(inf_cfg["connectivity"]), int(inf_cfg["min_area"]),
                                  bool(cfg["polygons"]))
        dropped += d
        for a in anns:
            n_inst[CLASS_NAMES[a["category_id"]]] += 1
            if a["category_id"] in side:
                side[a["category_id"]][0] += a["area"] * (a["bbox"][0] + a["bbox"][2] / 2)
                side[a["category_id"]][1] += a["area"]
        file_name = f"{cid}/{k:04d}.png"
        Image.fromarray(pixels).save(
            case_dir / f"{k:04d}.png", format="PNG", compress_level=int(cfg["png_compress_level"]))
        images.append({"file_name": file_name, "height": int(lab2d.shape[0]),
                       "width": int(lab2d.shape[1]), "case_id": cid, "slice_index": int(k),
                       "annotations": anns})
    # sanity check of the label/affine pair: the patient's left lung (label 1) must lie
    # on the image's right (larger x) of the right lung (label 2)
    (l_sum, l_area), (r_sum, r_area) = side[_LEFT], side[_RIGHT]
    if l_area and r_area and l_sum / l_area < r_sum / r_area:
        warnings.append("label 1 (left lung) lies on the patient's right of label 2 according "
                        "to the affine: the labels or the affine may be swapped")
    lung_vox = int(sum(counts[v] for v in CLASS_NAMES))
    root = Path(root)
    record = {
        "id": cid,
        "sources": [image.source_record(root, "image")]
        + [v.source_record(root, role) for (role, _), v in zip(case.masks(), mask_vols)],
        "shape": [int(s) for s in img.shape],
        "orientation": orig_axcodes,
        "ornt_to_ras": ornt,
        "canonical_shape": [int(s) for s in img_ras.shape],
        "spacing_mm": [round(float(s), 6) for s in spacing],
        "intensity": "prewindowed_0_255" if prewindowed else "hu",
        "value_range": [float(img.min()), float(img.max())],
        "n_slices": int(lab_ras.shape[2]),
        "lung_slices": [int(lung_z[0]), int(lung_z[-1])] if len(lung_z) else None,
        "slices_kept": keep,
        "n_images": len(images),
        "instances": n_inst,
        "infection_components_dropped": dropped,
        "voxels": {name: int(counts[v]) for v, name in CLASS_NAMES.items()},
        "infection_burden_pct": round(100.0 * int(counts[_INFECTION]) / lung_vox, 4) if lung_vox else None,
        "warnings": warnings,
    }
    return {"case_id": cid, "images": images, "record": record}


def run_case(case: CaseFiles, root: str, cfg: dict, images_dir: str) -> dict:
    """Pool entry point: a bad case comes back as ``{"case_id", "error"}`` (not raised),
    so one bad case does not hide the others."""
    try:
        return process_case(case, root, cfg, images_dir)
    except ConversionError as e:
        if e.case_id is None:
            e.case_id = case.case_id
        return {"case_id": case.case_id, "error": e}
