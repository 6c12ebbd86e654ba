"""The converted dataset inside detectron2: split registration and the training mapper.

A split is the COCO file (RLE masks, images under ``<dataset_dir>/images``) its
``contracts.dataset.Dataset`` lists and checks (``register_split``). Category ids 1 left_lung,
2 right_lung, 3 infection (the patient's sides); detectron2 sees them as contiguous ids 0, 1, 2
in that order.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import HFlipTransform

from contracts.catalog import CLASS_NAMES, LUNG_CLASSES, NAME_BY_ID
from contracts.dataset import Dataset


@dataclass(frozen=True)
class Split:
    """A registered split: detectron2 dataset name, its annotation file, a few facts."""

    name: str
    json_file: Path
    n_images: int
    image_hw: tuple[int, int] | None  # the most common (height, width), pixels
    mixed_sizes: bool


def load_split(coco: dict, json_file: str | Path, image_root: str | Path, name: str | None = None) -> list[dict]:
    """detectron2 dataset dicts (``load_coco_json`` of ``json_file``) plus each image's
    ``case_id`` and ``slice_index`` from ``coco``, the same file as the Dataset read it
    (load_coco_json keeps only file_name/height/width/image_id)."""
    extra = {im["id"]: im for im in coco["images"]}
    dicts = load_coco_json(str(json_file), str(image_root), dataset_name=name)
    for d in dicts:
        im = extra[d["image_id"]]
        d["case_id"] = im.get("case_id")
        d["slice_index"] = im.get("slice_index")
    return dicts


def register_split(dataset: Dataset, scheme: str, fold: int, part: str) -> Split:
    """Register one split with DatasetCatalog/MetadataCatalog (idempotent: a second call with
    the same file reuses the registration). The name carries a hash of the file's absolute
    path, so two datasets never share a registration.

    The file is the one dataset.json lists for the split, checked first (``Dataset.coco``: its
    categories and its image count): DatasetError names the file, the problem and what to
    re-run."""
    coco = dataset.coco(scheme, fold, part)
    json_file = dataset.split_file(scheme, fold, part)
    dataset_dir = dataset.dir.resolve()
    image_root = dataset_dir / "images"
    tag = hashlib.sha1(str(json_file).encode()).hexdigest()[:8]
    name = f"lungbench_{scheme}_f{int(fold)}_{part}_{tag}"
    sizes = Counter((im["height"], im["width"]) for im in coco["images"])
    hw = sizes.most_common(1)[0][0]
    split = Split(name, json_file, len(coco["images"]), (int(hw[0]), int(hw[1])), len(sizes) > 1)
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: load_split(coco, json_file, image_root, name))
        MetadataCatalog.get(name).set(json_file=str(json_file), image_root=str(image_root), evaluator_type="coco",
                                      thing_classes=list(CLASS_NAMES),
                                      thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(NAME_BY_ID)})
    return split


class LungDatasetMapper(DatasetMapper):
    """DatasetMapper that swaps left_lung <-> right_lung on every image it flips horizontally.

    lung_swap: contiguous id -> contiguous id for the two lungs (None: never swap)."""

    def __init__(self, *args, lung_swap: dict[int, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lung_swap = lung_swap

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        # an odd number of horizontal flips mirrors the image: the patient's left lung is now
        # on the other side of the image, but it is still the left lung
        if self.lung_swap and sum(isinstance(t, HFlipTransform) for t in transforms.transforms) % 2 == 1:
            for anno in dataset_dict["annotations"]:
                anno["category_id"] = self.lung_swap.get(anno["category_id"], anno["category_id"])
        super()._transform_annotations(dataset_dict, transforms, image_shape)


def build_mapper(d2cfg, is_train: bool) -> LungDatasetMapper:
    """detectron2's DatasetMapper with the CT-correct flip of ``d2cfg.LUNGBENCH``.

    FLIP none: no flip at all (INPUT.RANDOM_FLIP is none in our configs). FLIP swap: a
    horizontal flip with probability FLIP_PROB that also swaps left_lung <-> right_lung on
    the flipped image. Test-time mappers never flip."""
    kwargs = DatasetMapper.from_config(d2cfg, is_train)
    if any(isinstance(a, T.RandomFlip) for a in kwargs["augmentations"]):
        raise ValueError("INPUT.RANDOM_FLIP must be 'none': a label-keeping flip mirrors "
                         "anatomy (use input.flip=swap)")
    swap = None
    if is_train and d2cfg.LUNGBENCH.FLIP == "swap":
        kwargs["augmentations"] = list(kwargs["augmentations"]) + [
            T.RandomFlip(prob=float(d2cfg.LUNGBENCH.FLIP_PROB), horizontal=True, vertical=False)]
        left, right = (MetadataCatalog.get(d2cfg.DATASETS.TRAIN[0]).thing_classes.index(n) for n in LUNG_CLASSES)
        swap = {left: right, right: left}
    return LungDatasetMapper(lung_swap=swap, **kwargs)


def first_image(coco: dict, image_root: str | Path) -> np.ndarray:
    """The first image (lowest id) of a split's COCO as detectron2 reads it: HxWx3 uint8, BGR."""
    im = min(coco["images"], key=lambda i: i["id"])
    return read_image(str(Path(image_root) / im["file_name"]), format="BGR")
