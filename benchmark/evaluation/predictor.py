"""A trained model on CT volumes: each axial slice prepared as the run's training PNGs were,
predicted, and painted into a label volume (``Predictor``). ``make predict`` and the run's 3-D
evaluation both predict through it, so the files users get and the numbers in result.json
come from one code path.

Labels are the dataset's: 0 background, 1 left lung, 2 right lung, 3 infection (the
patient's sides, ``contracts.catalog``), one label per voxel, uint8.

Overlap rule (``labels_from_instances``): instances below the score threshold are dropped;
a pixel covered by any infection instance is infection (3), as in the release's
``Lung_and_Infection_Mask`` where infection overrides the lung label; otherwise it takes the
lung of the highest-scoring lung instance covering it; otherwise it is background.

Spacing is in mm per voxel along the array's own axes (``spacing_of(affine)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.catalog import CLASSES, INFECTION, LEFT_LUNG, RIGHT_LUNG
from converters.case import windows_of
from converters.volume import display_pixels, undisplay_slice

LEFT, RIGHT, INFECT = LEFT_LUNG.label_value, RIGHT_LUNG.label_value, INFECTION.label_value
#: detectron2's contiguous class index -> dataset label value
LABEL_OF_CONTIGUOUS = np.array([c.label_value for c in CLASSES], dtype=np.uint8)


def conversion_settings(manifest: dict) -> dict:
    """What a new volume needs to be prepared as the dataset's slices were (from dataset.json)."""
    cfg = manifest["config"]
    return {"window": list(cfg["window"]), "multiwindow": bool(cfg["multiwindow"]),
            "windows": {k: list(v) for k, v in cfg["windows"].items()},
            "orientation": manifest.get("orientation"), "config_hash": manifest.get("config_hash")}


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


@dataclass
class Predictor:
    """A detectron2 model with the test-time preparation of its run. ``mapper`` is the run's
    test DatasetMapper (its resize and image format); ``windows`` the HU windows, one per channel."""

    model: Any
    mapper: Any
    windows: list[tuple[float, float]]
    score_thresh: float
    batch_size: int = 1

    @classmethod
    def from_model(cls, model, d2cfg, conversion: dict, score_thresh: float, batch_size: int = 1) -> "Predictor":
        from benchmark.training.data import build_mapper

        return cls(model, build_mapper(d2cfg, is_train=False), windows_of(conversion), float(score_thresh),
                   max(1, int(batch_size)))

    def _input(self, img_ras: np.ndarray, k: int, prewindowed: bool) -> dict:
        import torch
        from detectron2.data import transforms as T
        from detectron2.data.detection_utils import convert_PIL_to_numpy
        from PIL import Image

        # the PNG the converter would write, read the way detectron2 reads it
        image = convert_PIL_to_numpy(Image.fromarray(display_pixels(img_ras, k, self.windows, prewindowed)),
                                     self.mapper.image_format)
        aug = T.AugInput(image)
        self.mapper.augmentations(aug)
        return {"image": torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))),
                "height": image.shape[0], "width": image.shape[1]}

    def predict_volume(self, img_ras: np.ndarray, prewindowed: bool, desc: str | None = None,
                       known: dict[int, list[dict]] | None = None) -> np.ndarray:
        """Label volume (uint8, RAS+ like ``img_ras``, shape (X, Y, Z)) of a RAS+ CT volume:
        every axial slice predicted, ``batch_size`` slices per forward pass.

        ``known``: slice index -> the COCO results (dataset category ids, RLE masks) this model
        already gave on the same pixels (a run's test PNGs are ``display_pixels`` of the same
        volume, written losslessly): those slices are not run again, only decoded."""
        return self.predict_volumes(img_ras, prewindowed, (self.score_thresh,), desc, known)[0]

    def predict_volumes(self, img_ras: np.ndarray, prewindowed: bool, thresholds, desc: str | None = None,
                        known: dict[int, list[dict]] | None = None) -> list[np.ndarray]:
        """``predict_volume`` painted at each score threshold of ``thresholds`` from one pass of the
        model (the same detections, kept from each threshold up)."""
        thresholds = [float(t) for t in thresholds]
        known = known or {}
        outs = [np.zeros(img_ras.shape, dtype=np.uint8) for _ in thresholds]
        for k, preds in known.items():
            for out, lab in zip(outs, self._labels_of_results(preds, img_ras.shape[1::-1], thresholds)):
                out[:, :, k] = undisplay_slice(lab)
        todo = [k for k in range(img_ras.shape[2]) if k not in known]
        if todo:
            self._run(img_ras, prewindowed, todo, outs, thresholds, desc)
        return outs

    def _labels_of_results(self, preds: list[dict], hw: tuple[int, int], thresholds: list[float]) -> list[np.ndarray]:
        from pycocotools import mask as mask_util

        preds = [p for p in preds if p["score"] >= min(thresholds)]  # decode only what counts
        if not preds:
            return [np.zeros(hw, np.uint8) for _ in thresholds]
        masks = np.stack([mask_util.decode(p["segmentation"]).astype(bool) for p in preds])
        labels = np.array([p["category_id"] for p in preds])
        scores = np.array([p["score"] for p in preds], float)
        return [labels_from_instances(masks, labels, scores, t) for t in thresholds]

    def _forward(self, inputs: list[dict]) -> list[dict]:
        from benchmark.training.engine import forward_or_one_by_one

        # as in the run's own inference: a batch can need more than training did
        return forward_or_one_by_one(self.model, inputs)[0]

    def _run(self, img_ras: np.ndarray, prewindowed: bool, todo: list[int], outs: list[np.ndarray],
             thresholds: list[float], desc: str | None) -> None:
        from tqdm import tqdm

        from benchmark.training.engine import evaluating

        with evaluating(self.model), tqdm(total=len(todo), desc=desc or "slices", unit="slice", leave=False,
                                          disable=None) as bar:
            for start in range(0, len(todo), self.batch_size):
                ks = todo[start:start + self.batch_size]
                outputs = self._forward([self._input(img_ras, k, prewindowed) for k in ks])
                for k, o in zip(ks, outputs):
                    inst = o["instances"].to("cpu")
                    masks, scores = inst.pred_masks.numpy(), inst.scores.numpy()
                    classes = LABEL_OF_CONTIGUOUS[inst.pred_classes.numpy()]
                    for out, t in zip(outs, thresholds):
                        out[:, :, k] = undisplay_slice(labels_from_instances(masks, classes, scores, t))
                bar.update(len(ks))

