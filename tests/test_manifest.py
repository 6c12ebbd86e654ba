"""A run reads a converted dataset through its dataset.json (contracts.dataset, registered by
benchmark.training.data): the manifest is checked
on load (schema, classes, the split's file as annotation_files lists it, its image count), and
each problem is a DatasetError naming the file, the problem and what to re-run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark.training.data import Split, register_split
from contracts.dataset import READABLE_SCHEMAS, SCHEMA, DatasetError, read_dataset


@pytest.fixture
def dataset(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny phantom dataset (the session's one stays untouched)."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def manifest(d: Path) -> dict:
    return json.loads((d / "dataset.json").read_text())


def write_manifest(d: Path, m: dict) -> None:
    (d / "dataset.json").write_text(json.dumps(m))


def register(d: Path, scheme: str, fold: int, part: str) -> Split:
    """What a run does: read the dataset once, register one split of it."""
    return register_split(read_dataset(d), scheme, fold, part)


def test_registers_the_file_the_manifest_lists(dataset):
    m = manifest(dataset)
    split = register(dataset, "patient_kfold", 0, "test")
    assert split.json_file == (dataset / m["annotation_files"]["patient_kfold"][0]["test"]).resolve()
    per_case = {c["id"]: c["n_images"] for c in m["cases"]}
    assert split.n_images == sum(per_case[c] for c in m["splits"]["patient_kfold"]["folds"][0]["test"]) > 0
    slices = register(dataset, "slice_random", 1, "train")
    assert slices.n_images == len(m["splits"]["slice_random"]["folds"][1]["train"])

    # the path comes from the manifest, not from the file-naming convention
    moved = dataset / "annotations" / "renamed.json"
    (dataset / m["annotation_files"]["patient_kfold"][2]["train"]).rename(moved)
    m["annotation_files"]["patient_kfold"][2]["train"] = "annotations/renamed.json"
    write_manifest(dataset, m)
    assert register(dataset, "patient_kfold", 2, "train").json_file == moved.resolve()


def test_the_loader_reads_the_converters_schema():
    from benchmark.training.run import expected_errors

    assert SCHEMA in READABLE_SCHEMAS
    assert issubclass(DatasetError, expected_errors())  # a run records it without a traceback


def test_missing_manifest(dataset, tmp_path):
    (dataset / "dataset.json").unlink()
    with pytest.raises(DatasetError, match=r"dataset\.json: no such file: .* not a converted dataset") as e:
        register(dataset, "patient_kfold", 0, "train")
    assert f"make data DATA_OUT={dataset}" in str(e.value)
    assert f"python -m converters.convert" in str(e.value)
    with pytest.raises(DatasetError, match="no such folder"):
        register(tmp_path / "nope", "patient_kfold", 0, "train")
    (dataset / "dataset.json").write_text('{"schema": 1, ')
    with pytest.raises(DatasetError, match=r"dataset\.json: unreadable .*convert it again: make data"):
        register(dataset, "patient_kfold", 0, "train")


def test_unknown_schema(dataset):
    m = manifest(dataset)
    write_manifest(dataset, m | {"schema": 99})
    with pytest.raises(DatasetError, match=r"dataset\.json: schema 99 is not one this lungbench reads") as e:
        register(dataset, "patient_kfold", 0, "train")
    assert f"delete {dataset}, then make data" in str(e.value)
    del m["schema"]
    write_manifest(dataset, m)
    with pytest.raises(DatasetError, match="schema None"):
        register(dataset, "patient_kfold", 0, "train")


def test_other_classes(dataset):
    m = manifest(dataset)
    m["classes"][0]["name"], m["classes"][1]["name"] = m["classes"][1]["name"], m["classes"][0]["name"]
    write_manifest(dataset, m)
    with pytest.raises(DatasetError, match=r"dataset\.json: classes .*right_lung.* differ from lungbench's") as e:
        register(dataset, "patient_kfold", 0, "train")
    assert "rebuild the dataset" in str(e.value)
    write_manifest(dataset, m | {"classes": None})
    with pytest.raises(DatasetError, match="classes None differ"):
        register(dataset, "patient_kfold", 0, "train")


def test_split_not_in_the_manifest(dataset):
    m = manifest(dataset)
    with pytest.raises(DatasetError, match=r"no split scheme 'ma2021_5fold' in annotation_files \(not applicable"):
        register(dataset, "ma2021_5fold", 0, "train")
    with pytest.raises(DatasetError, match=r"patient_kfold has folds 0\.\.4, not fold 7"):
        register(dataset, "patient_kfold", 7, "train")
    # the file is there, but the manifest does not list it: not part of this dataset
    del m["annotation_files"]["patient_kfold"]
    write_manifest(dataset, m)
    assert (dataset / "annotations" / "patient_kfold_f0_train.json").is_file()
    with pytest.raises(DatasetError, match=r"no split scheme 'patient_kfold' .*this dataset has: slice_random"):
        register(dataset, "patient_kfold", 0, "train")


def test_listed_file_missing_or_outside(dataset):
    m = manifest(dataset)
    listed = dataset / m["annotation_files"]["patient_kfold"][1]["test"]
    listed.unlink()
    with pytest.raises(DatasetError, match=rf"{listed.name}: no such file, although .*dataset\.json lists it "
                                             r"as patient_kfold fold 1 test; rebuild the dataset"):
        register(dataset, "patient_kfold", 1, "test")
    m["annotation_files"]["patient_kfold"][0]["train"] = "../elsewhere.json"
    write_manifest(dataset, m)
    with pytest.raises(DatasetError, match="points outside the dataset"):
        register(dataset, "patient_kfold", 0, "train")


def test_image_count_differs_from_the_manifest(dataset):
    m = manifest(dataset)
    f = dataset / m["annotation_files"]["patient_kfold"][0]["train"]
    coco = json.loads(f.read_text())
    n = len(coco["images"])
    dropped = coco["images"].pop()
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != dropped["id"]]
    f.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=rf"{f.name}: {n - 1} images, but .*dataset\.json says patient_kfold "
                                             rf"fold 0 train has {n}; rebuild the dataset"):
        register(dataset, "patient_kfold", 0, "train")


def test_images_of_other_cases(dataset):
    m = manifest(dataset)
    folds = m["annotation_files"]["patient_kfold"]
    # fold 1's test case in fold 0's test file: same kind of file, not this split's images
    shutil.copyfile(dataset / folds[1]["test"], dataset / folds[0]["test"])
    with pytest.raises(DatasetError, match=r"images, but|holds images of 1 case\(s\)"):
        register(dataset, "patient_kfold", 0, "test")


def test_listed_file_that_is_not_coco(dataset):
    m = manifest(dataset)
    f = dataset / m["annotation_files"]["slice_random"][0]["test"]
    f.write_text("{")
    with pytest.raises(DatasetError, match=rf"{f.name}: not valid JSON .*; rebuild the dataset: delete"):
        register(dataset, "slice_random", 0, "test")
