"""Train/test splits.

* ``patient_kfold``: k folds of whole cases (no case in both train and test), seeded,
  balanced by source (the id prefix: coronacases / radiopaedia / phantom): each source's
  cases are shuffled and dealt round-robin, continuing the count across sources.
* ``ma2021_5fold``: the official 5 folds of Ma et al. 2021 (only for the release's ids).
* ``slice_random``: k folds of single slices, ignoring patients. It leaks (neighbouring
  slices of one patient in train and test); kept only to measure that leak.

Folds are ``{"train": [...], "test": [...]}`` with case ids (unit ``case``) or image keys
``<case_id>/<slice:04d>`` (unit ``slice``), sorted. k >= 2 (config.validate checks it).
"""
from __future__ import annotations

import logging

import numpy as np

from . import official

log = logging.getLogger("converters")

SLICE_RANDOM_WARNING = (
    "WARNING: LEAKY SPLIT. slice_random puts slices of the same patient in both train and "
    "test (neighbouring slices are nearly identical), so its scores are inflated. It mirrors "
    "the paper's likely protocol and is kept only to measure that leak; use patient_kfold or "
    "ma2021_5fold for real comparisons.")


def source_of(case_id: str) -> str:
    return case_id.split("_", 1)[0]


def patient_kfold(case_ids: list[str], k: int, seed: int) -> list[dict]:
    if k > len(case_ids):
        raise ValueError(f"splits.patient_kfold.k={k} exceeds the number of cases "
                         f"({len(case_ids)}): some folds would have no test case")
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    i = 0
    for src in sorted({source_of(c) for c in case_ids}):
        members = sorted(c for c in case_ids if source_of(c) == src)
        for c in rng.permutation(members).tolist():
            assignment[c] = i % k
            i += 1
    return [{"train": sorted(c for c, f in assignment.items() if f != fold),
             "test": sorted(c for c, f in assignment.items() if f == fold)} for fold in range(k)]


def ma2021_applicable(case_ids: list[str]) -> str | None:
    """None when the official folds apply, else the reason they do not."""
    foreign = sorted(set(case_ids) - set(official.CASE_IDS))
    if foreign:
        return (f"not applicable: {len(foreign)} case id(s) are not the official "
                f"COVID-19-CT-Seg ids (e.g. {foreign[0]})")
    return None


def ma2021_5fold(case_ids: list[str]) -> tuple[list[dict], str]:
    """The official folds restricted to the cases present, and a note."""
    present = set(case_ids)
    folds = [{"train": [c for c in f["train"] if c in present],
              "test": [c for c in f["test"] if c in present]} for f in official.ma2021_folds()]
    missing = sorted(set(official.CASE_IDS) - present)
    note = "official folds of Ma et al. 2021 (Med Phys 48(3):1197-1210), Task 1, 16/4 cases"
    if missing:
        note += f"; {len(missing)} official case(s) absent here and left out: {', '.join(missing)}"
    return folds, note


def slice_random(image_keys: list[str], k: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(image_keys))
    parts = np.array_split(order, k)
    keys = np.asarray(image_keys)
    folds = []
    for f in range(k):
        test = set(keys[parts[f]].tolist())
        folds.append({"train": sorted(x for x in image_keys if x not in test), "test": sorted(test)})
    return folds


def build_splits(case_ids: list[str], image_keys: list[str], cfg: dict) -> tuple[dict, dict]:
    """``(splits, omitted)``: scheme -> {unit, folds, seed, note}; scheme -> why left out
    (logged, and so is slice_random's leak)."""
    splits: dict[str, dict] = {}
    omitted: dict[str, str] = {}
    sc = cfg["splits"]
    if sc["patient_kfold"]["enabled"]:
        k, seed = int(sc["patient_kfold"]["k"]), int(sc["patient_kfold"]["seed"])
        splits["patient_kfold"] = {
            "unit": "case", "folds": patient_kfold(case_ids, k, seed), "seed": seed,
            "note": f"{k}-fold cross-validation over patients, balanced by source, seeded"}
    if sc["ma2021_5fold"]["enabled"]:
        reason = ma2021_applicable(case_ids)
        if reason:
            omitted["ma2021_5fold"] = reason
            log.info("split ma2021_5fold left out: %s", reason)
        else:
            folds, note = ma2021_5fold(case_ids)
            splits["ma2021_5fold"] = {"unit": "case", "folds": folds, "seed": None, "note": note}
    if sc["slice_random"]["enabled"]:
        k, seed = int(sc["slice_random"]["k"]), int(sc["slice_random"]["seed"])
        splits["slice_random"] = {"unit": "slice", "folds": slice_random(image_keys, k, seed),
                                  "seed": seed, "note": SLICE_RANDOM_WARNING}
        log.warning("%s", SLICE_RANDOM_WARNING)
    return splits, omitted
