"""A training budget in compute, not iterations: ``solver.budget`` (training TFLOPs) -> MAX_ITER.

Backbones cost very different amounts per iteration (a C4 head runs res5 once per RoI), so
"the same iterations" is not "the same training". With ``solver.budget=B`` every backbone
trains ``round(B * 1e12 / F)`` iterations, where F is its training FLOPs per iteration:

    F = 3 x (forward FLOPs of one training image) x SOLVER.IMS_PER_BATCH

(3 x forward: the backward pass costs about twice the forward, the usual convention). The
forward count is fvcore's (one fused multiply-add = one flop) on the training workload, so
that it depends on the architecture and sizes alone, never on weights, data or the machine:
the image at its training size; the RPN keeping exactly its training ``POST_NMS_TOPK_TRAIN``
proposals (no NMS, as many boxes as training gives the box head, up to
``ROI_HEADS.BATCH_SIZE_PER_IMAGE``); the mask head on the foreground share of those RoIs.
It is counted on the CPU in float32 whatever device the run trains on, and cached by that
counting config (same config, same count: on any machine, in any process).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from contracts.fsutil import write_text

BACKWARD_FACTOR = 3  # forward + backward = 3 x forward
TERA = 1e12


def cache_file() -> Path:
    """Where counted FLOPs are kept: $LUNGBENCH_CACHE, else ~/.cache/lungbench."""
    root = os.getenv("LUNGBENCH_CACHE") or os.path.expanduser("~/.cache/lungbench")
    return Path(root) / "train_flops.json"


def training_size(d2cfg, image_hw: Sequence[int]) -> tuple[int, int]:
    """The (height, width) a training image of ``image_hw`` is resized to: ResizeShortestEdge
    to the mean of INPUT.MIN_SIZE_TRAIN (its choices), long side capped at MAX_SIZE_TRAIN."""
    h, w = (int(x) for x in image_hw)
    sizes = list(d2cfg.INPUT.MIN_SIZE_TRAIN)
    short = sum(sizes) / len(sizes)
    scale = short / min(h, w)
    if max(h, w) * scale > d2cfg.INPUT.MAX_SIZE_TRAIN:
        scale = d2cfg.INPUT.MAX_SIZE_TRAIN / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def counting_config(d2cfg):
    """``d2cfg`` as an inference config whose forward pass does a training iteration's work
    (per image) with a fixed number of boxes at every stage (see the module docstring)."""
    c = d2cfg.clone()
    c.defrost()
    n_rois = min(int(c.MODEL.RPN.POST_NMS_TOPK_TRAIN), int(c.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE))
    c.MODEL.DEVICE = "cpu"
    c.MODEL.WEIGHTS = ""
    c.MODEL.RPN.PRE_NMS_TOPK_TEST = int(c.MODEL.RPN.PRE_NMS_TOPK_TRAIN)
    c.MODEL.RPN.POST_NMS_TOPK_TEST = n_rois
    c.MODEL.RPN.NMS_THRESH = 1.0  # keep every proposal: the count never depends on the weights
    c.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    c.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    c.TEST.DETECTIONS_PER_IMAGE = max(1, round(n_rois * float(c.MODEL.ROI_HEADS.POSITIVE_FRACTION)))
    c.freeze()
    return c


def _key(c, hw: tuple[int, int]) -> str:
    import detectron2
    import torch

    model = {"MODEL": {k: v for k, v in c.MODEL.items() if k not in ("DEVICE", "WEIGHTS")},
             "TEST.DETECTIONS_PER_IMAGE": c.TEST.DETECTIONS_PER_IMAGE}
    blob = json.dumps({"model": model, "hw": hw, "torch": torch.__version__.split("+")[0],
                       "detectron2": detectron2.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _count(c, hw: tuple[int, int]) -> float:
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    from benchmark.training.engine import count_gflops

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = build_model(c)
    finally:
        torch.random.set_rng_state(state)
    return count_gflops(model, np.zeros((*hw, 3), np.uint8)) * 1e9


def train_flops_per_iter(d2cfg, image_hw: Sequence[int]) -> dict[str, Any]:
    """``{"train_flops_per_iter", "forward_flops_per_image", "count_input_hw"}`` of the run
    ``d2cfg`` on images of ``image_hw`` (counted once per counting config, then cached)."""
    c = counting_config(d2cfg)
    hw = training_size(d2cfg, image_hw)
    key = _key(c, hw)
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    forward = cache.get(key)
    if not isinstance(forward, (int, float)):
        forward = _count(c, hw)
        try:
            write_text(path, json.dumps({**cache, key: forward}, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only home: counted again next time, same number
    return {"train_flops_per_iter": BACKWARD_FACTOR * forward * int(d2cfg.SOLVER.IMS_PER_BATCH),
            "forward_flops_per_image": forward, "count_input_hw": list(hw)}


def iterations(budget_tflop: float, flops_per_iter: float) -> int:
    """The iterations a budget of ``budget_tflop`` training TFLOPs buys (at least 1)."""
    if not budget_tflop > 0:
        raise ValueError(f"solver.budget={budget_tflop}: a budget is a positive number of TFLOPs")
    return max(1, round(budget_tflop * TERA / flops_per_iter))
