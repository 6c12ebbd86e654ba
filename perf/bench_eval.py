"""Evaluation speed: faster-coco-eval vs pycocotools on the same predictions, side by side.

Builds a synthetic test split (a few hundred CT-like slices, two lungs and a few
infection blobs each) and detector-like predictions (jittered true instances plus
low-score false positives, up to ~20 per image as a trained Mask R-CNN emits), then
times ``benchmark.evaluation.metrics.coco_metrics`` for segm + bbox with each backend, alternating
backends over several rounds so machine noise hits both alike. Also checks that both
backends give the same numbers. Usage::

    python -m perf.bench_eval            # prints the figures as JSON
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

from benchmark.evaluation import metrics

N_CASES, SLICES_PER_CASE, SIZE = 6, 50, 256  # 300 images
FALSE_POSITIVES_PER_IMAGE = 12
ROUNDS = 3


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _rle(m: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def synthetic_split(seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and a list of COCO results for it (seeded)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cats = [{"id": 1, "name": "left_lung"}, {"id": 2, "name": "right_lung"}, {"id": 3, "name": "infection"}]
    images, anns, preds = [], [], []

    def add_pred(img_id, cat, m, score):
        r = _rle(m)
        preds.append({"image_id": img_id, "category_id": cat, "score": float(score),
                      "bbox": [float(v) for v in mask_util.toBbox(r)], "segmentation": r})

    for c in range(N_CASES):
        for s in range(SLICES_PER_CASE):
            img_id = len(images) + 1
            images.append({"id": img_id, "file_name": f"case_{c}/{s:04d}.png", "height": SIZE, "width": SIZE,
                           "case_id": f"case_{c}", "slice_index": s})
            scale = 0.6 + 0.4 * np.sin(np.pi * (s + 1) / (SLICES_PER_CASE + 1))
            objects = [
                (1, _ellipse(yy, xx, SIZE * 0.5, SIZE * 0.7, SIZE * 0.3 * scale, SIZE * 0.15 * scale)),
                (2, _ellipse(yy, xx, SIZE * 0.5, SIZE * 0.3, SIZE * 0.3 * scale, SIZE * 0.15 * scale)),
            ]
            for _ in range(int(rng.integers(0, 5))):
                cx = SIZE * rng.choice([0.3, 0.7]) + rng.normal(0, 6)
                objects.append((3, _ellipse(yy, xx, SIZE * 0.5 + rng.normal(0, 20), cx,
                                            rng.uniform(3, 12), rng.uniform(3, 12))))
            for cat, m in objects:
                if not m.any():
                    continue
                r = _rle(m)
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "segmentation": r,
                             "area": int(m.sum()), "bbox": [float(v) for v in mask_util.toBbox(r)], "iscrowd": 0})
                if rng.random() < 0.9:  # detected, with a jittered mask
                    dy, dx = rng.integers(-4, 5, size=2)
                    add_pred(img_id, cat, np.roll(m, (int(dy), int(dx)), axis=(0, 1)), rng.uniform(0.4, 1.0))
            for _ in range(FALSE_POSITIVES_PER_IMAGE):
                cy, cx = rng.uniform(20, SIZE - 20, size=2)
                m = _ellipse(yy, xx, cy, cx, rng.uniform(3, 30), rng.uniform(3, 30))
                add_pred(img_id, int(rng.integers(1, 4)), m, rng.uniform(0.01, 0.6))
    return {"images": images, "annotations": anns, "categories": cats}, preds


def _time_backend(gt: dict, preds: list[dict], backend: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = {t: metrics.coco_metrics(gt, preds, t, backend=backend) for t in ("segm", "bbox")}
    return time.perf_counter() - t0, out


def _max_abs_diff(a: dict, b: dict) -> float:
    diffs = []
    for t in a:
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            if a[t][k] is not None or b[t][k] is not None:
                diffs.append(abs(a[t][k] - b[t][k]))
        for name, v in a[t]["per_class"].items():
            diffs += [abs(x - b[t]["per_class"][name][k]) for k, x in v.items() if x is not None]
    return max(diffs)


def run(tmpdir: Path) -> dict:
    """Figures for perf/run.py: the speed-up and the two times behind it (seconds)."""
    gt, preds = synthetic_split()
    # Warm-up (imports, caches) outside the timed rounds, and the equality check.
    _, ref_fast = _time_backend(gt, preds, "faster")
    _, ref_py = _time_backend(gt, preds, "pycocotools")
    diff = _max_abs_diff(ref_fast, ref_py)
    times: dict[str, list[float]] = {"faster": [], "pycocotools": []}
    for _ in range(ROUNDS):
        for backend in times:
            times[backend].append(_time_backend(gt, preds, backend)[0])
    fast, slow = statistics.median(times["faster"]), statistics.median(times["pycocotools"])
    what = f"{len(gt['images'])} images {SIZE}px, {len(gt['annotations'])} GT, {len(preds)} predictions, segm+bbox"
    return {
        "eval_speedup_vs_pycocotools": {
            "value": slow / fast, "unit": "x", "target": "> 1 (several x expected)",
            "detail": f"median of {ROUNDS} alternating rounds: pycocotools {slow:.2f} s vs faster-coco-eval "
                      f"{fast:.2f} s; {what}; max |AP difference| {diff:.2g}",
        },
        "eval_faster_coco_eval_s": {"value": fast, "unit": "s", "detail": what},
        "eval_pycocotools_s": {"value": slow, "unit": "s", "detail": what},
        "eval_backends_max_abs_ap_diff": {"value": diff, "unit": "AP points", "target": "<= 1e-6"},
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="perf-eval-") as tmp:
        json.dump(run(Path(tmp)), sys.stdout, indent=2)
        print()
