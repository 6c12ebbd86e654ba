"""Paired tests of the report's claims, case by case (the patient is the unit of analysis).

With patient-level folds every test case is scored exactly once per run, so two backbone
groups can be compared on the same patients: per class (and for the mean over the
classes) the per-case differences between the best group and each other group get a
mean with a 95% bootstrap confidence interval and a paired Wilcoxon signed-rank p-value,
Holm-corrected over the comparisons of that metric and class. Pure functions of the
runs table (``metrics.per_case.<case>.<metric>.<class>`` columns, as collect flattens
``metrics.per_case``); numbers from scipy.stats.

A case tested by several runs of one group (seeds: replicates of the same cases) is
averaged over them first, so every case counts once. The test needs cases, not runs: one
run per group over at least MIN_CASES shared test cases is tested; fewer cases are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from .schema import CLASS_LABELS, CLASSES
from .tables import iter_groups, ok_rows

PER_CASE_PREFIX = "metrics.per_case."
#: Per-case metrics in result.json (metrics.per_case.<case>.<key>.<class>) and their column here.
METRICS = {"segm_AP": "segm_AP", "dice": "dice", "dice3d": "dice3d", "nsd3d": "nsd3d"}
#: The 3-D metrics on whole volumes (benchmark.metrics3d), in [0, 1].
METRICS_3D = ("dice3d", "nsd3d")
#: The metric the winners are decided on.
PRIMARY = "segm_AP"
#: The target "mean over the classes" (beside the class names).
MEAN = "mean"
ALPHA = 0.05
MIN_CASES = 5
N_RESAMPLES = 9999
SEED = 0
RANK_RESAMPLES = 1000

AHEAD = f"ahead of all (p < {ALPHA} after Holm)"
NO_TEST = f"no test possible (n cases < {MIN_CASES})"
NO_DATA = "no test possible (no per-case results)"
ONLY_ONE = "the only group (nothing to compare)"
TIED_ZERO = "tied at 0.00 (no winner)"

PAIRWISE_COLUMNS = ["group", "vs", "metric", "class", "n_cases", "mean_diff", "ci_low", "ci_high",
                    "p", "p_holm", "significant"]
PER_CASE_COLUMNS = ["group", "case", "class", *METRICS]


def target_label(target: str) -> str:
    return "mean of 3 classes" if target == MEAN else CLASS_LABELS.get(target, target)


def _parse(col: str) -> tuple[str, str, str] | None:
    """'metrics.per_case.<case>.<metric>.<class>' -> (case, metric, class); case ids may hold dots."""
    if not col.startswith(PER_CASE_PREFIX):
        return None
    rest = col[len(PER_CASE_PREFIX):]
    for m in METRICS:
        for c in CLASSES:
            suffix = f".{m}.{c}"
            if rest.endswith(suffix) and len(rest) > len(suffix):
                return rest[: -len(suffix)], m, c
    return None


def per_case_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long table, one row per (group, case, class): segm_AP and dice averaged over the
    group's ok runs that tested the case (NaN where no run defines it)."""
    cols = {c: p for c in df.columns if (p := _parse(c)) is not None}
    rows = []
    for key, g in iter_groups(df):
        ok = ok_rows(g)
        cell: dict[tuple[str, str], dict[str, list[float]]] = {}
        for col, (case, metric, c) in cols.items():
            v = pd.to_numeric(ok[col], errors="coerce").dropna()
            if v.size:
                cell.setdefault((case, c), {}).setdefault(metric, []).extend(float(x) for x in v)
        for (case, c), vals in cell.items():
            rows.append({"group": key["label"], "case": case, "class": c,
                         **{m: float(np.mean(vals[m])) if vals.get(m) else math.nan for m in METRICS}})
    out = pd.DataFrame(rows, columns=PER_CASE_COLUMNS)
    if out.empty:
        return out
    order = {c: i for i, c in enumerate(CLASSES)}
    groups = {k["label"]: i for i, (k, _) in enumerate(iter_groups(df))}
    out = out.assign(_g=out["group"].map(groups), _c=out["class"].map(order))
    return out.sort_values(["_g", "case", "_c"]).drop(columns=["_g", "_c"]).reset_index(drop=True)


def case_matrix(per_case: pd.DataFrame, metric: str, target: str) -> pd.DataFrame:
    """cases x groups of one metric for one class, or (``MEAN``) its mean over the classes
    defined in the case (a class without ground truth in a case is left out of its mean)."""
    if per_case.empty:
        return pd.DataFrame()
    groups = list(dict.fromkeys(per_case["group"]))
    sub = per_case if target == MEAN else per_case[per_case["class"] == target]
    m = sub.groupby(["case", "group"], sort=True)[metric].mean().unstack("group")
    return m.reindex(columns=[g for g in groups if g in m.columns])


def mean_ci(values: np.ndarray | list[float]) -> tuple[float, float, float, int]:
    """(mean, 95% bootstrap CI low, high, n) of per-case values; the CI is NaN under
    MIN_CASES values (no interval from so few cases) and collapses when all are equal."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < MIN_CASES:
        return mean, math.nan, math.nan, n
    if np.all(v == v[0]):
        return mean, mean, mean, n
    res = sps.bootstrap((v,), np.mean, vectorized=True, n_resamples=N_RESAMPLES, confidence_level=0.95, rng=SEED)
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high), n


def holm(p: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b with a 95% paired bootstrap CI and the Wilcoxon signed-rank p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    mean = float(d.mean())
    if np.all(d == d[0]):
        # no spread: every resample has the same mean (BCa is undefined there)
        lo = hi = mean
    else:
        res = sps.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True,
                            vectorized=True, n_resamples=N_RESAMPLES, confidence_level=0.95, rng=SEED)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    p = 1.0 if np.all(d == 0) else float(sps.wilcoxon(a, b).pvalue)
    return {"mean_diff": mean, "ci_low": lo, "ci_high": hi, "p": p}


@dataclass
class Comparison:
    """The paired comparisons of one sweep: ``pairwise`` (PAIRWISE_COLUMNS) and a verdict
    per (metric, target)."""
    pairwise: pd.DataFrame
    per_case: pd.DataFrame
    #: (metric, target) -> {"best", "best_mean", "verdict", "winner", "tied_with", "n_cases"}
    verdicts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def verdict(self, target: str, metric: str = PRIMARY) -> dict[str, Any]:
        return self.verdicts.get((metric, target), {"best": None, "best_mean": math.nan, "verdict": NO_DATA,
                                                    "winner": None, "tied_with": [], "n_cases": 0})

    def row_verdict(self, group: str, target: str, metric: str = PRIMARY) -> str | None:
        """What the tests say of one group on one target (Table 3's verdict cells)."""
        v = self.verdict(target, metric)
        if v["best"] is None:
            return None
        if group == v["best"]:
            return v["verdict"]
        if v["verdict"].startswith("no test possible") or v["verdict"] == TIED_ZERO:
            return v["verdict"]
        pw = self.pairwise
        r = pw[(pw["group"] == v["best"]) & (pw["vs"] == group) & (pw["metric"] == metric) & (pw["class"] == target)]
        if r.empty:
            return None
        r = r.iloc[0]
        if r["significant"]:
            return f"below {v['best']} (p_holm = {r['p_holm']:.3g})"
        return f"tied with {v['best']} (p_holm = {r['p_holm']:.3g})"


def compare(df: pd.DataFrame) -> Comparison:
    """Every group against the best group (highest mean over cases), per metric and target."""
    pc = per_case_table(df)
    rows: list[dict[str, Any]] = []
    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    for metric in METRICS:
        for target in (*CLASSES, MEAN):
            mat = case_matrix(pc, metric, target).dropna(axis=1, how="all")
            if mat.empty:
                continue
            means = mat.mean()
            best = str(means.idxmax())  # first of equal means: report order
            others = [g for g in mat.columns if g != best]
            block = []
            for g in others:
                both = mat[[best, g]].dropna()
                n = len(both)
                r = {"group": best, "vs": g, "metric": metric, "class": target, "n_cases": n,
                     "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
                if n >= MIN_CASES:
                    r.update(paired_test(both[best].to_numpy(), both[g].to_numpy()))
                elif n:
                    r["mean_diff"] = float((both[best] - both[g]).mean())
                block.append(r)
            adj = holm([r["p"] for r in block])
            for r, q in zip(block, adj):
                r["p_holm"] = float(q)
                r["significant"] = bool(q < ALPHA) if not math.isnan(q) else False
            rows += block
            best_mean = float(means[best])
            n_cases = int(mat[best].notna().sum())
            if not others:
                text, winner, tied = ONLY_ONE, best, []
            elif any(r["n_cases"] < MIN_CASES for r in block):
                text, winner, tied = NO_TEST, None, []
            elif round(best_mean, 2) == 0.0:
                text, winner, tied = TIED_ZERO, None, [r["vs"] for r in block]
            else:
                tied = [r["vs"] for r in block if not r["significant"]]
                if tied:
                    text, winner = f"tied with {', '.join(tied)} (difference not significant)", None
                else:
                    text, winner = AHEAD, best
            verdicts[(metric, target)] = {"best": best, "best_mean": best_mean, "verdict": text,
                                          "winner": winner, "tied_with": tied, "n_cases": n_cases}
    return Comparison(pd.DataFrame(rows, columns=PAIRWISE_COLUMNS), pc, verdicts)


def rank_first_frequency(per_case: pd.DataFrame, metric: str = PRIMARY, n: int = RANK_RESAMPLES,
                         seed: int = SEED) -> tuple[pd.Series, int]:
    """How often each group ranks first on the mean over classes when the cases are
    resampled with replacement (``n`` times, fixed ``seed``); ties split the count.
    Uses the cases every group has; returns (share per group, number of those cases)."""
    mat = case_matrix(per_case, metric, MEAN).dropna(axis=1, how="all").dropna(axis=0, how="any")
    if mat.shape[1] == 0 or mat.shape[0] == 0:
        return pd.Series(dtype=float), 0
    vals = mat.to_numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vals.shape[0], size=(n, vals.shape[0]))
    means = vals[idx].mean(axis=1)  # (n, groups)
    top = np.isclose(means, means.max(axis=1, keepdims=True), rtol=0, atol=1e-9)
    share = (top / top.sum(axis=1, keepdims=True)).mean(axis=0)
    return pd.Series(share, index=list(mat.columns)), int(vals.shape[0])


LEAK_COLUMNS = ["backbone", "class", "n_cases", "patient_kfold", "slice_random", "gap", "ci_low",
                "ci_high", "p"]
LEAK_SPLITS = ("patient_kfold", "slice_random")


def leak(df: pd.DataFrame, metric: str = PRIMARY) -> pd.DataFrame:
    """The leak of a slice-level split, measured: for every backbone (and schedule) with runs on
    both ``patient_kfold`` and ``slice_random``, the per-case ``metric`` under each and their
    paired gap (slice_random - patient_kfold) with a 95% bootstrap CI and a Wilcoxon p-value,
    per class and for the mean over the classes. A case's value under slice_random is the mean
    over the folds that tested its slices. Empty without such pairs."""
    pc = per_case_table(df)
    split_of: dict[str, tuple[Any, str]] = {}
    for key, g in iter_groups(df):
        splits = {s for s in g.get("dataset.split", pd.Series(dtype=object)) if isinstance(s, str)}
        if len(splits) == 1 and (s := splits.pop()) in LEAK_SPLITS:
            split_of[key["label"]] = ((key["backbone"], key.get("schedule")), s)
    pairs: dict[Any, dict[str, str]] = {}
    for label, (bb, s) in split_of.items():
        pairs.setdefault(bb, {})[s] = label
    rows = []
    for (backbone, schedule), p in pairs.items():
        if set(p) != set(LEAK_SPLITS) or pc.empty:
            continue
        for target in (*CLASSES, MEAN):
            mat = case_matrix(pc, metric, target)
            if not {p["patient_kfold"], p["slice_random"]} <= set(mat.columns):
                continue
            both = mat[[p["patient_kfold"], p["slice_random"]]].dropna()
            r = {"backbone": f"{backbone} {schedule}" if schedule else str(backbone), "class": target,
                 "n_cases": len(both), "patient_kfold": float(both.iloc[:, 0].mean()) if len(both) else math.nan,
                 "slice_random": float(both.iloc[:, 1].mean()) if len(both) else math.nan,
                 "gap": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
            if len(both) >= MIN_CASES:
                t = paired_test(both.iloc[:, 1].to_numpy(), both.iloc[:, 0].to_numpy())
                r.update(gap=t["mean_diff"], ci_low=t["ci_low"], ci_high=t["ci_high"], p=t["p"])
            elif len(both):
                r["gap"] = r["slice_random"] - r["patient_kfold"]
            rows.append(r)
    return pd.DataFrame(rows, columns=LEAK_COLUMNS)
