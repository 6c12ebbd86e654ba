"""Facts about the public COVID-19-CT-Seg release that the converter needs at run time, read
from the packaged ``converters/covid19_ct_seg.json`` (the dataset's published facts).

Official folds: Ma et al. 2021, COVID-19-CT-Seg-Benchmark, Task 1, 80/20 patient-level 5-fold.
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
