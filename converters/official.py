"""Facts about the public COVID-19-CT-Seg release that the converter needs at run time.

Copied from ``shared/data/covid19_ct_seg.json`` (Ma et al. 2021, COVID-19-CT-Seg-Benchmark,
Task 1, 80/20 patient-level 5-fold split); ``tests/test_convert_splits.py`` checks the copy
against that file where it exists.
"""
from __future__ import annotations

CORONACASES = [f"coronacases_{i:03d}" for i in range(1, 11)]
RADIOPAEDIA = [
    "radiopaedia_4_85506_1", "radiopaedia_7_85703_0", "radiopaedia_10_85902_1",
    "radiopaedia_10_85902_3", "radiopaedia_14_85914_0", "radiopaedia_27_86410_0",
    "radiopaedia_29_86490_1", "radiopaedia_29_86491_1", "radiopaedia_36_86526_0",
    "radiopaedia_40_86625_0",
]
CASE_IDS = CORONACASES + RADIOPAEDIA

# Test cases of each official fold; the train cases are all the others.
MA2021_5FOLD_TEST = [
    ["coronacases_007", "coronacases_008", "radiopaedia_36_86526_0", "radiopaedia_4_85506_1"],
    ["coronacases_004", "coronacases_009", "radiopaedia_14_85914_0", "radiopaedia_7_85703_0"],
    ["coronacases_001", "coronacases_010", "radiopaedia_10_85902_1", "radiopaedia_29_86491_1"],
    ["coronacases_003", "coronacases_005", "radiopaedia_27_86410_0", "radiopaedia_40_86625_0"],
    ["coronacases_002", "coronacases_006", "radiopaedia_10_85902_3", "radiopaedia_29_86490_1"],
]


def ma2021_folds() -> list[dict[str, list[str]]]:
    """The five official folds as ``[{train: [...], test: [...]}]`` (sorted ids)."""
    return [
        {"train": sorted(set(CASE_IDS) - set(test)), "test": sorted(test)}
        for test in MA2021_5FOLD_TEST
    ]
