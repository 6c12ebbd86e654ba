"""Split schemes: no patient leak, balance, determinism, the official folds, split files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from converters import official
from converters.splits import build_splits, patient_kfold, slice_random

REPO = Path(__file__).resolve().parent.parent


def test_patient_kfold_partitions_cases_without_leak():
    cases = official.CASE_IDS
    folds = patient_kfold(cases, k=5, seed=0)
    assert len(folds) == 5
    tests = [c for f in folds for c in f["test"]]
    assert sorted(tests) == sorted(cases)  # every case tested exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["test"])
        assert sorted(f["train"] + f["test"]) == sorted(cases)
        # balanced by source: 10 coronacases + 10 radiopaedia -> 2 + 2 per test fold
        assert sum(c.startswith("coronacases") for c in f["test"]) == 2
        assert sum(c.startswith("radiopaedia") for c in f["test"]) == 2


def test_patient_kfold_is_seeded():
    ids = [f"phantom_{i:03d}" for i in range(8)]
    assert patient_kfold(ids, 4, 1) == patient_kfold(ids, 4, 1)
    assert patient_kfold(ids, 4, 1) != patient_kfold(ids, 4, 2)
    sizes = sorted(len(f["test"]) for f in patient_kfold(ids[:7], 3, 0))
    assert sizes == [2, 2, 3]
    with pytest.raises(ValueError, match="exceeds"):
        patient_kfold(ids[:2], 3, 0)


def test_slice_random_partitions_slices_and_leaks():
    keys = [f"case_{c}/{s:04d}" for c in range(3) for s in range(10)]
    folds = slice_random(keys, 5, 0)
    assert sorted(k for f in folds for k in f["test"]) == sorted(keys)
    train_cases = {k.split("/")[0] for k in folds[0]["train"]}
    test_cases = {k.split("/")[0] for k in folds[0]["test"]}
    assert train_cases & test_cases  # the leak it exists to measure


def test_official_folds_partition_the_release_and_match_the_dataset_facts():
    folds = official.ma2021_folds()
    assert len(folds) == 5 and len(official.CASE_IDS) == 20
    assert sorted(c for f in folds for c in f["test"]) == sorted(official.CASE_IDS)
    for f in folds:  # patient-level: no case on both sides, none left out
        assert len(f["train"]) == 16 and len(f["test"]) == 4
        assert sorted(f["train"] + f["test"]) == sorted(official.CASE_IDS)
    shared = REPO.parent / "shared" / "data" / "covid19_ct_seg.json"
    if not shared.exists():
        pytest.skip(f"{shared} absent: the packaged copy cannot be compared with it")
    d = json.loads(shared.read_text())
    packaged = json.loads(official.FACTS.read_text())
    assert packaged["cases"] == d["cases"]
    assert packaged["splits"]["ma2021_5fold"]["folds"] == d["splits"]["ma2021_5fold"]["folds"]


def test_ma2021_only_for_official_ids():
    cfg = {"splits": {"patient_kfold": {"enabled": True, "k": 2, "seed": 0},
                      "ma2021_5fold": {"enabled": True},
                      "slice_random": {"enabled": False, "k": 5, "seed": 0}}}
    splits, omitted = build_splits(["phantom_000", "phantom_001"], [], cfg)
    assert "ma2021_5fold" not in splits and "not the official" in omitted["ma2021_5fold"]
    splits, omitted = build_splits(official.CASE_IDS, [], cfg)
    assert splits["ma2021_5fold"]["folds"] == official.ma2021_folds() and not omitted


def test_split_files_follow_the_manifest(tiny_dataset):
    m = json.loads((tiny_dataset / "dataset.json").read_text())
    for scheme, s in m["splits"].items():
        for k, fold in enumerate(s["folds"]):
            parts = {}
            for part in ("train", "test"):
                d = json.loads((tiny_dataset / "annotations" / f"{scheme}_f{k}_{part}.json").read_text())
                assert d["info"]["split"] == scheme and d["info"]["fold"] == k
                if s["unit"] == "case":
                    parts[part] = {im["case_id"] for im in d["images"]}
                    assert parts[part] == set(fold[part])
                else:
                    parts[part] = {im["file_name"][:-4] for im in d["images"]}
                    assert parts[part] == set(fold[part]) and "LEAKY" in d["info"]["warning"]
            assert not parts["train"] & parts["test"]
