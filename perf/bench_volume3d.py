"""3-D metrics on one CT-sized case: what Dice + NSD per class cost, and what cropping to the
objects' box saves, side by side.

A 512 x 512 x 120 label volume (0.7 x 0.7 x 2.5 mm, two lung ellipsoids with infection
blobs) and a prediction that is the truth shifted by a few voxels. Times
``benchmark.evaluation.volume3d.volume_metrics`` (the run's 3-D evaluation of one case: Dice and NSD for
three classes, the lungs with their infection and as labelled) and one NSD on the full array against the
same NSD on the cropped box the metric uses, alternating over rounds. Usage::

    python -m perf.bench_volume3d        # prints the figures as JSON
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark.evaluation.volume3d import nsd, volume_metrics

SHAPE, SPACING = (512, 512, 120), (0.7, 0.7, 2.5)
ROUNDS = 3


def case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) label volumes (uint8) of one synthetic chest CT."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]]
    lab = np.zeros(SHAPE, np.uint8)
    for value, cx in ((2, 170), (1, 342)):  # which lung is on which side does not change the cost
        lab[((x - cx) / 90.0) ** 2 + ((y - 256) / 130.0) ** 2 + ((z - 60) / 50.0) ** 2 <= 1] = value
    for _ in range(12):
        cx, cy, cz = rng.integers(120, 390), rng.integers(150, 360), rng.integers(25, 95)
        r = rng.uniform(6, 20)
        blob = ((x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 3.5) ** 2 <= r ** 2) & (lab > 0)
        lab[blob] = 3
    pred = np.roll(lab, (3, -2, 1), axis=(0, 1, 2))
    return lab, pred


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _nsd_full(g: np.ndarray, p: np.ndarray) -> float:
    import torch
    from monai.metrics import compute_surface_dice

    return float(compute_surface_dice(torch.from_numpy(p)[None, None].float(), torch.from_numpy(g)[None, None].float(),
                                      class_thresholds=[1.0], include_background=True, spacing=SPACING,
                                      use_subvoxels=True).reshape(-1)[0])


def run(tmpdir: Path) -> dict:
    gt, pred = case()
    g, p = gt == 1, pred == 1
    nsd(g, p, SPACING, 1.0)  # warm-up: imports
    assert abs(nsd(g, p, SPACING, 1.0) - _nsd_full(g, p)) < 1e-6, "the crop changed the NSD"
    t_case, t_full, t_crop = [], [], []
    for _ in range(ROUNDS):
        t_case.append(_timed(lambda: volume_metrics(gt, pred, SPACING)))
        t_full.append(_timed(lambda: _nsd_full(g, p)))
        t_crop.append(_timed(lambda: nsd(g, p, SPACING, 1.0)))
    full, crop, per_case = (statistics.median(t) for t in (t_full, t_crop, t_case))
    what = f"{SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels, {SPACING} mm, median of {ROUNDS} alternating rounds"
    return {
        "volume3d_s_per_case": {"value": per_case, "unit": "s", "target": "small beside a case's inference",
                                "detail": f"Dice + NSD of 3 classes, the lungs with their infection and as "
                                          f"labelled; {what}"},
        "nsd_crop_speedup": {"value": full / crop, "unit": "x", "target": ">= 1",
                             "detail": f"one lung's NSD on the full array {full:.2f} s vs on the box "
                                       f"holding both masks {crop:.2f} s (same value); {what}"},
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="perf-volume3d-") as tmp:
        json.dump(run(Path(tmp)), sys.stdout, indent=2)
        print()
