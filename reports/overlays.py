"""Prediction overlays on a few fixed test slices, one panel per backbone (like the paper's
Figures 4-6): ground truth first, then each backbone's masks, boxes, class and score.

The slices are chosen deterministically from the test annotations most runs share: the
images with the largest total infection area (ties: lowest image id), so every backbone is
shown on the same slices and a rebuild picks the same ones.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from contracts.catalog import CLASS_COLOURS, CLASS_LABELS, CLASS_NAMES, INFECTION, NAME_BY_ID

from .groups import Groups, group_label
from .plots import Plot, summarize, to_png

SCORE_THRESHOLD = 0.5
MAX_DETECTIONS = 20
N_SLICES = 3
_RGB = {i: np.array([int(CLASS_COLOURS[c][k:k + 2], 16) for k in (1, 3, 5)]) / 255 for i, c in NAME_BY_ID.items()}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE -> bool mask (h, w). pycocotools 2.0.x warns on numpy 2 about its own
    ``__array__``; the result is correct, so the warning is silenced here only."""
    from pycocotools import mask as mask_util
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(rle).astype(bool)


def pick_slices(coco: dict[str, Any], n: int = N_SLICES) -> list[int]:
    """Image ids with the most infection area; images without infection rank by
    total annotated area after them. Deterministic: ties go to the lowest id."""
    inf: dict[int, float] = {}
    tot: dict[int, float] = {}
    for a in coco.get("annotations", []):
        i = a["image_id"]
        tot[i] = tot.get(i, 0) + float(a.get("area", 0))
        if a.get("category_id") == INFECTION.id:
            inf[i] = inf.get(i, 0) + float(a.get("area", 0))
    ids = [im["id"] for im in coco.get("images", [])]
    return sorted(ids, key=lambda i: (-inf.get(i, 0.0), -tot.get(i, 0.0), i))[:n]


def _blend(img: np.ndarray, dets: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Masks over an RGB float image: lungs first, infection last and more opaque, so an
    infection inside a lung stays red whatever the scores."""
    out = img.copy()
    for cat, m in sorted(dets, key=lambda d: d[0]):
        if cat in _RGB and m.shape == out.shape[:2]:
            alpha = 0.65 if cat == INFECTION.id else 0.35
            out[m] = (1 - alpha) * out[m] + alpha * _RGB[cat]
    return out


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=float) / 255.0


def _choose_runs(groups: Groups, sweep_dir: Path) -> tuple[str | None, list[tuple[str, pd.Series]], list[tuple[str, str]]]:
    """(test annotations path, [(group label, run)] one run per backbone group, [(group, why not shown)]).

    The test file is the one the most groups have predictions for; per group the run with the
    lowest fold/seed on that file is shown."""
    notes, cands = [], []
    for k, g in groups:
        label = group_label(k)
        ok = g[g["status"] == "ok"]
        usable = []
        for _, r in ok.iterrows():
            pred, ann, ds = (r.get(f"artifacts.{x}") for x in ("predictions", "test_annotations", "dataset_dir"))
            if not all(isinstance(v, str) for v in (pred, ann, ds)):
                continue
            if not (Path(sweep_dir) / r["run_dir"] / pred).is_file() or not Path(ann).is_file():
                continue
            usable.append(r)
        if not usable:
            notes.append((label, "no successful run with predictions and test annotations on disk"))
        cands.append((label, usable))
    counts: dict[str, int] = {}
    for _, usable in cands:
        for ann in {r["artifacts.test_annotations"] for r in usable}:
            counts[ann] = counts.get(ann, 0) + 1
    if not counts:
        return None, [], notes
    ann = sorted(counts, key=lambda a: (-counts[a], a))[0]
    chosen = []
    for label, usable in cands:
        rs = [r for r in usable if r["artifacts.test_annotations"] == ann]
        if usable and not rs:
            notes.append((label, f"no run evaluated on {ann}"))
        if rs:
            rs.sort(key=lambda r: (_num(r.get("dataset.fold")), _num(r.get("seed")), r["run_dir"]))
            chosen.append((label, rs[0]))
    return ann, chosen, notes


def _num(v: Any) -> float:
    try:
        f = float(v)
        return -1.0 if math.isnan(f) else f
    except (TypeError, ValueError):
        return -1.0


def overlays(groups: Groups, sweep_dir: Path) -> list[Plot]:
    """One figure per fixed slice: ground truth + one panel per backbone group."""
    sweep_dir = Path(sweep_dir)
    ann_path, chosen, notes = _choose_runs(groups, sweep_dir)
    if ann_path is None:
        return [Plot("overlay.png", "Prediction overlays", "", note=summarize(notes) or "no predictions to show")]
    coco = json.loads(Path(ann_path).read_text())
    ids = pick_slices(coco)
    images = {im["id"]: im for im in coco["images"]}
    gt: dict[int, list[tuple[int, np.ndarray, list[float], float | None]]] = {i: [] for i in ids}
    for a in coco["annotations"]:
        if a["image_id"] in gt:
            gt[a["image_id"]].append((a["category_id"], decode(a["segmentation"]), a["bbox"], None))
    preds = _predictions(chosen, sweep_dir, ids, notes)
    ds_dir = Path(chosen[0][1]["artifacts.dataset_dir"]) if chosen else None
    plots = []
    for n, i in enumerate(ids):
        im = images[i]
        img_path = ds_dir / "images" / im["file_name"] if ds_dir else None
        title = f"Test slice {n + 1}: {im.get('case_id', '')} slice {im.get('slice_index', im['file_name'])}"
        p = Plot(f"overlay_{n + 1}.png", title,
                 f"{im['file_name']} (image id {i}) from {ann_path}. Ground truth, then each backbone's "
                 f"detections with score >= {SCORE_THRESHOLD} (at most {MAX_DETECTIONS}).")
        if img_path is None or not img_path.is_file():
            p.note = f"image {img_path} not found"
        else:
            panels = [("ground truth", gt[i])] + [(label, preds[label][i]) for label, _ in chosen if label in preds]
            p.png = _slice_figure(_load_image(img_path), title, panels)
        plots.append(p)
    if notes and plots:
        plots[0].note = "not shown: " + summarize(notes)
    return plots


def _predictions(chosen: list[tuple[str, pd.Series]], sweep_dir: Path, ids: list[int],
                 notes: list[tuple[str, str]]) -> dict[str, dict[int, list]]:
    """Per group label and image id, the run's detections scoring at least SCORE_THRESHOLD (at
    most MAX_DETECTIONS, best first) as (category, mask, box, score); an unreadable file is a note."""
    preds: dict[str, dict[int, list]] = {}
    for label, r in chosen:
        path = sweep_dir / r["run_dir"] / r["artifacts.predictions"]
        try:
            dets = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            notes.append((label, f"cannot read {path}: {e}"))
            continue
        per: dict[int, list] = {i: [] for i in ids}
        for d in dets:
            if d.get("image_id") in per and d.get("score", 0) >= SCORE_THRESHOLD:
                per[d["image_id"]].append(d)
        for i in per:
            per[i].sort(key=lambda d: -d["score"])
            per[i] = [(d["category_id"], decode(d["segmentation"]) if "segmentation" in d
                       else None, d["bbox"], d["score"]) for d in per[i][:MAX_DETECTIONS]]
        preds[label] = per
    return preds


def _slice_figure(img: np.ndarray, title: str, panels: list[tuple[str, list]]) -> bytes:
    """The PNG of one slice: a panel per (label, detections), the class legend in the header."""
    ncol = min(5, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    h, w = img.shape[:2]
    # Laid out by hand (no tight bbox: one draw instead of two): panel, title strip, header.
    pw, ph, title_h, gap = 2.9, 2.9 * h / w, 0.28, 0.06
    fig_w = ncol * pw + (ncol - 1) * gap + 0.1
    narrow = fig_w < 9  # then the legend goes on its own line below the title
    head_h = 0.7 if narrow else 0.42
    fig_h = nrow * (ph + title_h) + head_h
    fig = Figure(figsize=(fig_w, fig_h))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False, gridspec_kw={
        "left": 0.05 / fig_w, "right": 1 - 0.05 / fig_w, "bottom": 0.03 / fig_h,
        "top": 1 - (head_h + title_h) / fig_h, "wspace": gap / pw, "hspace": title_h / ph})).ravel()
    fig.text(0.05 / fig_w, 1 - 0.08 / fig_h, title, fontsize=11, fontweight="bold", va="top")
    for ax, (label, dets) in zip(axes, panels):
        ax.imshow(_blend(img, [(c, m) for c, m, _, _ in dets if m is not None]), interpolation="nearest")
        fs = 6.5 if w < 300 else 7
        for c, _, (x, y, bw, bh), score in dets:
            color = CLASS_COLOURS.get(NAME_BY_ID.get(c), "white")
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, ec=color, lw=1.1))
            if score is not None:
                ax.text(x, y - 1, f"{CLASS_LABELS.get(NAME_BY_ID.get(c), c)} {score:.2f}",
                        color="white", fontsize=fs, va="bottom",
                        bbox={"facecolor": color, "alpha": 0.75, "pad": 0.8, "lw": 0})
        ax.set_title(label, fontsize=9.5, fontweight="bold" if label == "ground truth" else "normal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.legend(handles=[Patch(color=CLASS_COLOURS[c], label=CLASS_LABELS[c]) for c in CLASS_NAMES],
               loc="upper left" if narrow else "upper right", ncol=3, frameon=False, fontsize=9,
               bbox_to_anchor=(0.0, 1 - 0.3 / fig_h) if narrow else (1.0, 1.0 + 0.02 / fig_h))
    return to_png(fig)
