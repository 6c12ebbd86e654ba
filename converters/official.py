"""Facts about the public COVID-19-CT-Seg release that the converter needs at run time, read
from the packaged ``converters/covid19_ct_seg.json`` (the dataset's published facts).

Official folds: COVID-19-CT-Seg-Benchmark (Ma et al. 2021) split file, patient-level 5-fold with
16 train / 4 test cases per fold: the setting of its "80% training, 20% testing" table (its
Task 1 is the inverse, 4 train / 16 test).
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

FACTS = Path(__file__).with_name("covid19_ct_seg.json")


@cache
def _facts() -> dict:
    return json.loads(FACTS.read_text())


CASE_IDS: list[str] = [c for source in ("coronacases", "radiopaedia")
                       for c in _facts()["cases"][source]]


def ma2021_folds() -> list[dict[str, list[str]]]:
    """The five official folds as ``[{train: [...], test: [...]}]`` (sorted ids)."""
    return [{"train": sorted(f["train"]), "test": sorted(f["test"])}
            for f in _facts()["splits"]["ma2021_5fold"]["folds"]]
