"""The report's 3-D section: Dice and surface Dice (NSD) per patient on whole volumes, per
backbone group, beside the published 3-D nnU-Net numbers of Ma et al. 2021.

A view of the per-case table (``reports.stats.per_case_table``: ``dice3d``/``nsd3d`` as
result.json schema 3 records them, benchmark.metrics3d): per group, class and metric the
mean over test cases in percent with a 95% bootstrap interval (none under
``stats.MIN_CASES`` cases) and what the paired tests against the best group say. The
published numbers come from the packaged dataset facts (``converters/covid19_ct_seg.json``,
``reference_results``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from converters.official import FACTS

from . import stats
from .schema import CLASS_LABELS, CLASSES

COLUMNS = ["group", "metric", "class", "n_cases", "mean_pct", "ci_low_pct", "ci_high_pct", "verdict", "source"]
METRIC_LABELS = {"dice3d": "Dice 3-D", "nsd3d": "NSD"}
OURS = "ours"
#: reference_results keys, in the order shown, with what makes each one (un)like ours
REFERENCES = {
    "ma2021_nnunet_3d_80_20": "like for like in training size: 16 training cases per fold, as our ma2021_5fold "
                              "and 5-fold patient splits",
    "ma2021_task1_nnunet_3d": "not like for like: their Task 1 trains on 4 cases per fold and tests on 16, "
                              "a few-shot setting; our folds train on 16",
}


def _refs() -> dict[str, Any]:
    return json.loads(FACTS.read_text()).get("reference_results", {})


def reference_rows() -> list[dict[str, Any]]:
    """The published numbers as rows of COLUMNS (percent; no interval: only means are published)."""
    rows = []
    for key, why in REFERENCES.items():
        ref = _refs().get(key)
        if not ref:
            continue
        label = ref.get("label", key)
        for metric, values in (("dice3d", ref), ("nsd3d", ref.get("nsd", {}))):
            for c in CLASSES:
                if isinstance(values.get(c), (int, float)):
                    rows.append({"group": label, "metric": metric, "class": c, "n_cases": ref.get("n_test_cases"),
                                 "mean_pct": float(values[c]), "ci_low_pct": math.nan, "ci_high_pct": math.nan,
                                 "verdict": why, "source": ref.get("source", key)})
    return rows


def table(comparison: stats.Comparison) -> pd.DataFrame:
    """Long table (COLUMNS): our groups' 3-D numbers, then the published ones; empty when no
    run holds 3-D metrics."""
    pc = comparison.per_case
    rows: list[dict[str, Any]] = []
    if not pc.empty:
        for metric in stats.METRICS_3D:
            if metric not in pc.columns or pc[metric].notna().sum() == 0:
                continue
            for group in dict.fromkeys(pc["group"]):
                for c in CLASSES:
                    vals = pc[(pc["group"] == group) & (pc["class"] == c)][metric].to_numpy(dtype=float)
                    mean, lo, hi, n = stats.mean_ci(vals)
                    if not n:
                        continue
                    rows.append({"group": group, "metric": metric, "class": c, "n_cases": n,
                                 "mean_pct": 100 * mean, "ci_low_pct": 100 * lo, "ci_high_pct": 100 * hi,
                                 "verdict": comparison.row_verdict(group, c, metric), "source": OURS})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.DataFrame(rows + reference_rows(), columns=COLUMNS)


def _cell(mean: float, lo: float, hi: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:.1f}"
    return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"


def wide(t: pd.DataFrame) -> pd.DataFrame:
    """One row per group (ours, then the published), one column per metric and class:
    'mean [95% CI]' in percent."""
    if t.empty:
        return pd.DataFrame()
    out = []
    for group, g in t.groupby("group", sort=False):
        row: dict[str, Any] = {"backbone": group, "cases": _first_int(g["n_cases"])}
        for metric, label in METRIC_LABELS.items():
            for c in CLASSES:
                r = g[(g["metric"] == metric) & (g["class"] == c)]
                row[f"{label} {CLASS_LABELS[c]}"] = (_cell(*r[["mean_pct", "ci_low_pct", "ci_high_pct"]].iloc[0])
                                                     if len(r) else "-")
        out.append(row)
    return pd.DataFrame(out)


def _first_int(s: pd.Series) -> str:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return str(int(v.iloc[0])) if len(v) else "-"


def verdict_lines(comparison: stats.Comparison) -> list[str]:
    """What the paired tests say, per 3-D metric and class (best group and its verdict)."""
    lines = []
    for metric in stats.METRICS_3D:
        for target in (*CLASSES, stats.MEAN):
            v = comparison.verdict(target, metric)
            if v["best"] is None:
                continue
            lines.append(f"{METRIC_LABELS[metric]}, {stats.target_label(target)}: highest mean {v['best']} "
                         f"({100 * v['best_mean']:.1f}%); {v['verdict']}")
    return lines
