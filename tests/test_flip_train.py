"""The training mapper's flip is CT-correct: a flipped image swaps left/right lung labels."""

from __future__ import annotations

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from pycocotools import mask as mask_util

from benchmark.training.config import build_d2_cfg, compose
from benchmark.training.data import build_mapper, register_split
from contracts.dataset import read_dataset

# pycocotools' decode on numpy 2 (not ours): one warning per mask
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LEFT, RIGHT, INFECTION = 0, 1, 2  # detectron2's contiguous ids for categories 1, 2, 3


def mapper_and_records(tiny_dataset, *overrides):
    train = register_split(read_dataset(tiny_dataset), "patient_kfold", 0, "train")
    test = register_split(read_dataset(tiny_dataset), "patient_kfold", 0, "test")
    cfg = compose([f"dataset_dir={tiny_dataset}", "solver=smoke", *overrides])
    d2 = build_d2_cfg(cfg, train_name=train.name, test_name=test.name, output_dir="/tmp/unused",
                      image_hw=train.image_hw)
    return build_mapper(d2, is_train=True), DatasetCatalog.get(train.name)


def original(record):
    image = read_image(record["file_name"], format="BGR")
    classes = [a["category_id"] for a in record["annotations"]]
    masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in record["annotations"]]
    return image, classes, masks


def mapped(mapper, record):
    out = mapper(record)
    inst = out["instances"]
    return (out["image"].numpy().transpose(1, 2, 0), inst.gt_classes.tolist(),
            [m.numpy() for m in inst.gt_masks.tensor])


def test_records_keep_case_and_slice(tiny_dataset):
    _, records = mapper_and_records(tiny_dataset)
    assert all(isinstance(r["case_id"], str) and isinstance(r["slice_index"], int) for r in records)
    assert {a["category_id"] for r in records for a in r["annotations"]} == {LEFT, RIGHT, INFECTION}


def test_swap_flip_mirrors_image_and_masks_and_swaps_lungs(tiny_dataset):
    mapper, records = mapper_and_records(tiny_dataset, "input.flip=swap", "input.flip_prob=1.0")
    swap = {LEFT: RIGHT, RIGHT: LEFT, INFECTION: INFECTION}
    for record in records:
        image, classes, masks = original(record)
        m_image, m_classes, m_masks = mapped(mapper, record)
        np.testing.assert_array_equal(m_image, image[:, ::-1])
        assert m_classes == [swap[c] for c in classes]
        assert len(m_masks) == len(masks)
        for got, want in zip(m_masks, masks):
            np.testing.assert_array_equal(got, want[:, ::-1])
    # the swap keeps anatomy: a "left lung" still lies on the image side where left lungs lie
    # unflipped (radiological display: patient left on the image right)
    record = next(r for r in records if {LEFT, RIGHT} <= {a["category_id"] for a in r["annotations"]})
    _, m_classes, m_masks = mapped(mapper, record)
    cx = {c: np.nonzero(m)[1].mean() for c, m in zip(m_classes, m_masks) if c in (LEFT, RIGHT)}
    assert cx[LEFT] > cx[RIGHT]


def test_no_flip_by_default(tiny_dataset):
    mapper, records = mapper_and_records(tiny_dataset)  # input.flip defaults to none
    for _ in range(3):  # a random flip would show up within 3 passes over ~44 images
        for record in records:
            image, classes, masks = original(record)
            m_image, m_classes, m_masks = mapped(mapper, record)
            np.testing.assert_array_equal(m_image, image)
            assert m_classes == classes
            for got, want in zip(m_masks, masks):
                np.testing.assert_array_equal(got, want)


def test_random_swap_flip_is_consistent(tiny_dataset):
    """With probability 0.5 some images flip, some do not; labels swap exactly when they do."""
    mapper, records = mapper_and_records(tiny_dataset, "input.flip=swap")
    flipped = kept = 0
    for record in records:
        image, classes, _ = original(record)
        m_image, m_classes, _ = mapped(mapper, record)
        if np.array_equal(m_image, image) and not np.array_equal(image, image[:, ::-1]):
            kept += 1
            assert m_classes == classes
        else:
            np.testing.assert_array_equal(m_image, image[:, ::-1])
            flipped += 1
            assert m_classes == [{LEFT: RIGHT, RIGHT: LEFT}.get(c, c) for c in classes]
    assert flipped > 0 and kept > 0


def test_label_keeping_flip_is_refused(tiny_dataset):
    train = register_split(read_dataset(tiny_dataset), "patient_kfold", 0, "train")
    cfg = compose([f"dataset_dir={tiny_dataset}", "d2_opts=[INPUT.RANDOM_FLIP,horizontal]"])
    d2 = build_d2_cfg(cfg, train_name=train.name, test_name=train.name, output_dir="/tmp/unused",
                      image_hw=train.image_hw)
    with pytest.raises(ValueError, match="RANDOM_FLIP must be 'none'"):
        build_mapper(d2, is_train=True)


def test_registration_is_idempotent(tiny_dataset):
    a = register_split(read_dataset(tiny_dataset), "patient_kfold", 1, "test")
    b = register_split(read_dataset(tiny_dataset), "patient_kfold", 1, "test")
    assert a == b and a.name in DatasetCatalog.list()
    assert a.n_images == len(DatasetCatalog.get(a.name)) and a.image_hw == (64, 64)
