import json

from pycocotools.coco import COCO


def test_tiny_dataset_fixture(tiny_dataset):
    m = json.loads((tiny_dataset / "dataset.json").read_text())
    assert m["n_cases"] == 5 and m["image_size"] == [64, 64]
    folds = m["splits"]["patient_kfold"]["folds"]
    assert len(folds) >= 2 and all(len(f["test"]) >= 1 for f in folds)
    coco = COCO(str(tiny_dataset / "annotations" / "patient_kfold_f0_test.json"))
    assert len(coco.getImgIds()) > 0 and len(coco.getAnnIds()) > 0
