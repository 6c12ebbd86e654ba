"""The report's 3-D section: Dice and surface Dice (NSD) per patient on whole volumes, per
backbone group, on both lung definitions, beside the published 3-D nnU-Net numbers of the
dataset's benchmark (Ma et al.) on the definition they were scored on.

A view of the per-case table (``reports.stats.per_case_table``, from result.json's
``metrics.per_case`` and ``metrics.volume3d``): per group, metric and class the mean over test
cases in percent with a 95% bootstrap interval (none under ``stats.MIN_CASES`` cases) and what
the paired tests against the best group say. Metrics:

- ``dice3d_labelled`` / ``nsd3d_labelled``: the lungs as labelled (1 / 2, without the infection
  inside them), as the benchmark's evaluation script scores them: the published numbers sit
  beside these only;
- ``dice3d`` / ``nsd3d``: each lung with its infection (whole lungs, as the release's Lung_Mask);
- ``dice3d_all``: whole-lung Dice painted from every detection the model returned (no Dice
  score threshold), shown beside, never tested.

The published numbers come from the packaged dataset facts (``converters/covid19_ct_seg.json``,
``reference_results``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from contracts.catalog import CLASS_LABELS, CLASS_NAMES
from converters.official import FACTS

from . import stats

COLUMNS = ["group", "metric", "class", "n_cases", "mean_pct", "ci_low_pct", "ci_high_pct", "verdict", "source"]
#: every 3-D metric of the section, in the order shown
METRIC_LABELS = {"dice3d_labelled": "Dice 3-D", "nsd3d_labelled": "NSD",
                 "dice3d": "Dice 3-D", "nsd3d": "NSD", "dice3d_all": "Dice 3-D, every detection"}
#: the two views of the section: (title, metrics, with the published rows)
VIEWS = {
    "labelled": ("Lungs as labelled (1 / 2, without their infection): the benchmark's definition",
                 ("dice3d_labelled", "nsd3d_labelled"), True),
    "whole": ("Whole lungs (each with its infection), and Dice from every detection",
              ("dice3d", "nsd3d", "dice3d_all"), False),
}
OURS = "ours"
#: The split whose folds are the benchmark's (converters/covid19_ct_seg.json, splits)
OFFICIAL_SPLIT = "ma2021_5fold"
#: reference_results keys, in the order shown, with which of our splits matches each
REFERENCES = {
    "ma2021_nnunet_3d_80_20": f"like for like: 16 training / 4 test cases per fold, 5 folds (20 evaluations), "
                              f"lungs as labelled; our {OFFICIAL_SPLIT} split has exactly these folds (a 5-fold "
                              "patient split of the 20 cases has the same sizes, other folds)",
    "ma2021_task1_nnunet_3d": "not like for like: their Task 1 trains on 4 cases per fold and tests on 16 (80 "
                              "evaluations), separate lung and infection models; none of our splits matches it",
}


def reference_rows() -> list[dict[str, Any]]:
    """The published numbers as rows of COLUMNS (percent; no interval: only means are published),
    on the definition they were scored on: the lungs as labelled (``*_labelled``)."""
    rows, refs = [], json.loads(FACTS.read_text()).get("reference_results", {})
    for key, why in REFERENCES.items():
        ref = refs.get(key)
        if not ref:
            continue
        label = ref.get("label", key)
        for metric, values in (("dice3d_labelled", ref), ("nsd3d_labelled", ref.get("nsd", {}))):
            for c in CLASS_NAMES:
                if isinstance(values.get(c), (int, float)):
                    rows.append({"group": label, "metric": metric, "class": c,
                                 "n_cases": ref.get("n_evaluations", ref.get("n_test_cases")),
                                 "mean_pct": float(values[c]), "ci_low_pct": math.nan, "ci_high_pct": math.nan,
                                 "verdict": why, "source": ref.get("source", key)})
    return rows


def table(comparison: stats.Comparison) -> pd.DataFrame:
    """Long table (COLUMNS): our groups' 3-D numbers, then the published ones; empty when no
    run holds 3-D metrics."""
    pc = comparison.per_case
    rows: list[dict[str, Any]] = []
    if not pc.empty:
        for metric in METRIC_LABELS:
            if metric not in pc.columns or pc[metric].notna().sum() == 0:
                continue
            for group in dict.fromkeys(pc["group"]):
                for c in CLASS_NAMES:
                    vals = pc[(pc["group"] == group) & (pc["class"] == c)][metric].to_numpy(dtype=float)
                    mean, lo, hi, n = stats.mean_ci(vals)
                    if not n:
                        continue
                    verdict = (comparison.row_verdict(group, c, metric) if metric in stats.METRICS
                               else "shown, not tested")
                    rows.append({"group": group, "metric": metric, "class": c, "n_cases": n,
                                 "mean_pct": 100 * mean, "ci_low_pct": 100 * lo, "ci_high_pct": 100 * hi,
                                 "verdict": verdict, "source": OURS})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(rows + reference_rows(), columns=COLUMNS)


def _cell(mean: float, lo: float, hi: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:.1f}"
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def wide(t: pd.DataFrame, view: str) -> pd.DataFrame:
    """One row per group (ours, then the published where the ``view`` shows them), one column
    per metric and class: 'mean [95% CI]' in percent. ``view``: a VIEWS key."""
    metrics = list(VIEWS[view][1])
    t = t[t["metric"].isin(metrics)]
    out = []
    for group, g in t.groupby("group", sort=False):
        # ours: test cases; the published: their evaluations (5 folds x their test cases)
        row: dict[str, Any] = {"backbone": group, "n (cases; published: evaluations)": _first_int(g["n_cases"])}
        for metric in metrics:
            for c in CLASS_NAMES:
                r = g[(g["metric"] == metric) & (g["class"] == c)]
                row[f"{METRIC_LABELS[metric]} {CLASS_LABELS[c]}"] = (
                    _cell(*r[["mean_pct", "ci_low_pct", "ci_high_pct"]].iloc[0]) if len(r) else "-")
        out.append(row)
    return pd.DataFrame(out)


def _first_int(s: pd.Series) -> str:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return str(int(v.iloc[0])) if len(v) else "-"


def verdict_lines(comparison: stats.Comparison) -> list[str]:
    """What the paired tests say, per 3-D metric and class (best group and its verdict)."""
    names = {"dice3d_labelled": "Dice 3-D (lungs as labelled)", "nsd3d_labelled": "NSD (lungs as labelled)",
             "dice3d": "Dice 3-D (whole lungs)", "nsd3d": "NSD (whole lungs)"}
    lines = []
    for metric in stats.METRICS_3D:
        for target in (*CLASS_NAMES, stats.MEAN):
            if metric.endswith("_labelled") and target == "infection":
                continue  # the infection is one definition: its verdict is the whole-lung metric's
            v = comparison.verdict(target, metric)
            if v["best"] is None:
                continue
            lines.append(f"{names[metric]}, {stats.target_label(target)}: highest mean {v['best']} "
                         f"({100 * v['best_mean']:.1f}%); {v['verdict']}")
    return lines


def _values(df: pd.DataFrame, col: str) -> list[Any]:
    if df.empty or col not in df.columns:
        return []
    return sorted({v for v in df[col] if isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v))},
                  key=str)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def setting_lines(df: pd.DataFrame) -> list[str]:
    """What the 3-D numbers were made with, read from the runs: the score thresholds (the 3-D
    label volumes, and make predict's label files and volumes.csv, keep detections at or above
    the Dice threshold) and which of our splits matches which published table."""
    dice_t = _values(df, "metrics.volume3d.score_thresh") or _values(df, "config.dice_score_thresh")
    all_t = _values(df, "metrics.volume3d.score_thresh_all") or _values(df, "config.score_thresh")
    lines = []
    if dice_t:
        lines.append(f"Score threshold of the 3-D label volumes: detections scoring at least "
                     f"{' / '.join(map(_fmt, dice_t))} are painted (the runs' dice_score_thresh; make predict's "
                     "label files and volumes.csv use the same one). COCO AP ranks every detection, so a "
                     "backbone whose scores stay low can have AP above 0 and Dice 0 by this threshold alone.")
    if all_t:
        lines.append(f"'Dice 3-D, every detection': the same detections painted from every score the model "
                     f"returned (at least {' / '.join(map(_fmt, all_t))}, its test threshold, the ones AP ranks): "
                     "where this is above the thresholded Dice, the threshold cost the score.")
    splits = _values(df, "dataset.split")
    if splits:
        match = (f"{OFFICIAL_SPLIT} has the folds of the benchmark's 80/20 table" if OFFICIAL_SPLIT in splits
                 else f"none is {OFFICIAL_SPLIT}, the benchmark's own folds of its 80/20 table")
        lines.append(f"Our split(s) here: {', '.join(map(str, splits))}; {match}. Their Task 1 "
                     "(4 training / 16 test cases per fold) matches none of our splits.")
    return lines
