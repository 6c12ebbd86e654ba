"""Paired tests of the report's claims, case by case (the patient is the unit of analysis).

With patient-level folds every test case is scored exactly once per run, so two backbone
groups can be compared on the same patients. Per metric and class (and for the mean over
the classes) the group with the highest mean over cases is chosen, and its per-case
differences to each other group get:

- a mean with a 95% paired bootstrap confidence interval (``scipy.stats.bootstrap``);
- a one-sided Wilcoxon signed-rank p-value in the direction claimed (the chosen group is
  higher; ``scipy.stats.wilcoxon(..., alternative="greater")``), zero differences dropped,
  Holm-corrected over the comparisons of that metric and class against its chosen group;
- the count of non-zero pairs, and the smallest p Holm could give with that many: k non-zero
  pairs can give no one-sided p below 1 / 2**k, so with too few the verdict says that no test
  is possible before any p-value is read.

The chosen group was picked on the same cases it is then tested on (selection). The
selection-adjusted p (``scipy.stats.permutation_test``, group labels exchanged within each
case, on the cases every group has) tests the lead of the highest mean over the runner-up
against the leads that relabelled cases give to whichever group then leads: it covers the
whole family of groups of one metric and class. "ahead of all" needs all three: every
p_holm < ALPHA, every interval above 0 and a selection-adjusted p < ALPHA. Nothing is
corrected across metrics and classes (each is its own family); ``method_lines`` says so.

Pure functions of the report's groups (reports.groups) and the runs' per-case numbers as long
rows (collect.SweepRuns.per_case, from result.json's ``metrics.per_case``), or of a per-case
table (``compare_per_case``).

A case tested by several runs of one group (seeds: replicates of the same cases) is
averaged over them first, so every case counts once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats as sps

from contracts.catalog import CLASS_LABELS, CLASS_NAMES

from .groups import Groups, is_scratch, ok_rows

#: Per-case metrics that are tested (higher is better); result.json's
#: metrics.per_case.<case>.<key>.<class> keys, and their per_case.csv columns.
METRICS = ("segm_AP", "dice", "dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled")
#: Per-case numbers shown beside them, never tested: 3-D Dice with every detection the AP ranks
#: (no Dice threshold), and false-positive instances on a case without that class (segm AP is
#: undefined there, so they cost it nothing).
SHOWN = ("dice3d_all", "fp_no_gt", "fp_no_gt_any")
#: The 3-D metrics on whole volumes (result.json's metrics.volume3d), in [0, 1]: lungs with their
#: infection (whole lungs), lungs as labelled (1 / 2, as the benchmark's evaluation script scores them).
METRICS_3D = ("dice3d", "nsd3d", "dice3d_labelled", "nsd3d_labelled")
#: The metric the winners are decided on.
PRIMARY = "segm_AP"
#: The target "mean over the classes" (beside the class names).
MEAN = "mean"
ALPHA = 0.05
#: No bootstrap interval (and so no "ahead") from fewer cases than this.
MIN_CASES = 5
N_RESAMPLES = 9999
SEED = 0
RANK_RESAMPLES = 1000

#: Verdict kinds (``Comparison.verdicts[...]["kind"]``); the words start with the constants below.
KIND_AHEAD, KIND_NOT_SHOWN, KIND_NO_TEST, KIND_ONLY, KIND_ZERO, KIND_NO_DATA = (
    "ahead", "not_shown", "no_test", "only", "zero", "no_data")
AHEAD = "ahead of all"
NOT_SHOWN = "not shown different from"
BELOW = "below"
NO_TEST = "no test possible"
NO_DATA = "no test possible (no per-case results)"
ONLY_ONE = "the only group (nothing to compare)"
TIED_ZERO = "tied at 0.00 (no winner)"
#: pairwise.csv's statement of the selection, on every row
SELECTION = "group chosen as the highest mean over these same cases"

PAIRWISE_COLUMNS = ["group", "vs", "metric", "class", "n_cases", "n_nonzero", "n_higher", "n_lower",
                    "mean_diff", "ci_low", "ci_high", "p", "p_holm", "p_min_holm", "significant",
                    "p_select", "n_select_cases", "selection", "holm_family", "select_family"]
VERDICT_COLUMNS = ["metric", "class", "best", "best_mean", "n_cases", "n_groups", "kind", "verdict", "p_select"]
PER_CASE_COLUMNS = ["group", "case", "class", *METRICS, *SHOWN]


def target_label(target: str) -> str:
    return "mean of 3 classes" if target == MEAN else CLASS_LABELS.get(target, target)


def per_case_table(groups: Groups, per_case: pd.DataFrame) -> pd.DataFrame:
    """Long table, one row per (group, case, class): every per-case number (PER_CASE_COLUMNS)
    averaged over the group's ok runs that tested the case (NaN where no run defines it).
    ``per_case``: the runs' per-case numbers, one row per (run_dir, case, metric, class, value)."""
    keys = (*METRICS, *SHOWN)
    by_run = dict(tuple(per_case[per_case["metric"].isin(keys)].groupby("run_dir", sort=False)))
    rows = []
    for key, g in groups:
        cell: dict[tuple[str, str], dict[str, list[float]]] = {}
        for run in ok_rows(g)["run_dir"]:  # in the runs table's order, as the mean adds them
            if run in by_run:
                for case, metric, c, v in by_run[run][["case", "metric", "class", "value"]].itertuples(
                        index=False, name=None):
                    cell.setdefault((case, c), {}).setdefault(metric, []).append(float(v))
        for (case, c), vals in cell.items():
            rows.append({"group": key["label"], "case": case, "class": c,
                         **{m: float(np.mean(vals[m])) if vals.get(m) else math.nan for m in keys}})
    out = pd.DataFrame(rows, columns=PER_CASE_COLUMNS)
    if out.empty:
        return out
    order = {c: i for i, c in enumerate(CLASS_NAMES)}
    position = {k["label"]: i for i, (k, _) in enumerate(groups)}
    out = out.assign(_g=out["group"].map(position), _c=out["class"].map(order))
    return out.sort_values(["_g", "case", "_c"]).drop(columns=["_g", "_c"]).reset_index(drop=True)


def case_matrix(per_case: pd.DataFrame, metric: str, target: str) -> pd.DataFrame:
    """cases x groups of one metric for one class, or (``MEAN``) its mean over the classes
    defined in the case (a class without ground truth in a case is left out of its mean)."""
    if per_case.empty or metric not in per_case.columns:
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
    return mean, *_bootstrap_ci(v, (v,), np.mean), n


def _bootstrap_ci(values: np.ndarray, data: tuple, statistic, paired: bool = False) -> tuple[float, float]:
    """scipy's 95% BCa bootstrap interval of the mean of ``values`` (``statistic`` of ``data``);
    the percentile interval where BCa is degenerate (a few distinct values can leave its
    acceleration undefined, and scipy then answers NaN). Without spread (up to float rounding)
    every resample has the same mean: the interval is that mean (BCa is undefined there)."""
    mean = float(values.mean())
    if np.ptp(values) <= 1e-9 * max(1.0, abs(mean)):
        return mean, mean
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sps.DegenerateDataWarning)
            ci = sps.bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=N_RESAMPLES,
                               confidence_level=0.95, method=method, rng=SEED).confidence_interval
        if not (math.isnan(ci.low) or math.isnan(ci.high)):
            break
    return float(ci.low), float(ci.high)


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


def min_attainable_p(n_nonzero: int) -> float:
    """The smallest one-sided signed-rank p-value ``n_nonzero`` non-zero pairs can give: every
    sign in the claimed direction is one of the 2**k equally likely sign patterns under the null
    (the exact test's bound; 1.0 with no non-zero pair)."""
    return 0.5 ** int(n_nonzero)


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """a - b per case: mean with a 95% paired bootstrap CI (none under MIN_CASES cases), the
    one-sided Wilcoxon signed-rank p-value of "a is higher" (zero differences dropped), the
    counts of non-zero, positive and negative differences."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = int(d.size)
    mean = float(d.mean()) if n else math.nan
    nonzero = int(np.count_nonzero(d))
    out = {"mean_diff": mean, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n_nonzero": nonzero,
           "n_higher": int((d > 0).sum()), "n_lower": int((d < 0).sum())}
    if n == 0:
        return out
    if n >= MIN_CASES:
        out["ci_low"], out["ci_high"] = _bootstrap_ci(d, (a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis),
                                                      paired=True)
    out["p"] = 1.0 if nonzero == 0 else float(sps.wilcoxon(d, alternative="greater").pvalue)
    return out


def _lead(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """The highest mean minus the runner-up's (vectorised over resamples)."""
    means = np.sort(np.stack([s.mean(axis=axis) for s in samples], axis=0), axis=0)
    return means[-1] - means[-2]


def selection_test(mat: pd.DataFrame) -> tuple[float, int]:
    """(p, cases): the selection-adjusted p-value of the leader's lead over the runner-up on the
    cases every group of ``mat`` (cases x groups) has. scipy's permutation test exchanges the
    groups' values within each case (the null: no group differs), so every relabelling picks
    its own leader, as the report picks its best; NaN with fewer than MIN_CASES such cases or
    fewer than two groups."""
    full = mat.dropna(axis=0, how="any")
    n = len(full)
    if full.shape[1] < 2 or n < MIN_CASES:
        return math.nan, n
    vals = full.to_numpy(float)
    if np.all(vals == vals[:, :1]):
        return 1.0, n  # every case the same for every group: nothing leads
    res = sps.permutation_test([vals[:, j] for j in range(vals.shape[1])], _lead, permutation_type="samples",
                               alternative="greater", vectorized=True, n_resamples=N_RESAMPLES, rng=SEED)
    return float(res.pvalue), n


def _g3(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _ci(r: dict[str, Any]) -> str:
    return f"CI [{_g3(r['ci_low'])}, {_g3(r['ci_high'])}]"


def _pair_no_test(r: dict[str, Any]) -> str | None:
    """Why this comparison cannot show a difference whatever its p-value (None when it can)."""
    if r["n_cases"] < MIN_CASES:
        return f"{NO_TEST} (n cases = {r['n_cases']} vs {r['vs']}, under {MIN_CASES}: no interval)"
    if r["p_min_holm"] >= ALPHA:
        return (f"{NO_TEST} (n non-zero pairs = {r['n_nonzero']} vs {r['vs']}; the smallest attainable p "
                f"after Holm is {_g3(r['p_min_holm'])})")
    return None


@dataclass
class Comparison:
    """The paired comparisons of one sweep (or of a per-case table): ``pairwise``
    (PAIRWISE_COLUMNS), ``per_case`` (PER_CASE_COLUMNS) and a verdict per (metric, target)."""
    pairwise: pd.DataFrame
    per_case: pd.DataFrame
    #: (metric, target) -> {"best", "best_mean", "kind", "verdict", "winner", "not_shown",
    #: "n_cases", "n_groups", "p_select"}
    verdicts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def verdict(self, target: str, metric: str = PRIMARY) -> dict[str, Any]:
        return self.verdicts.get((metric, target), {"best": None, "best_mean": math.nan, "kind": KIND_NO_DATA,
                                                    "verdict": NO_DATA, "winner": None, "not_shown": [],
                                                    "n_cases": 0, "n_groups": 0, "p_select": math.nan})

    def verdict_table(self) -> pd.DataFrame:
        """verdicts.csv: one row per (metric, target) (VERDICT_COLUMNS)."""
        rows = [{"metric": m, "class": t, **{k: v[k] for k in VERDICT_COLUMNS if k in v}}
                for (m, t), v in self.verdicts.items()]
        return pd.DataFrame(rows, columns=VERDICT_COLUMNS)

    def row_verdict(self, group: str, target: str, metric: str = PRIMARY) -> str | None:
        """What the tests say of one group on one target (Table 3's verdict cells)."""
        v = self.verdict(target, metric)
        if v["best"] is None:
            return None
        if group == v["best"] or v["kind"] == KIND_ZERO:
            return v["verdict"]
        pw = self.pairwise
        r = pw[(pw["group"] == v["best"]) & (pw["vs"] == group) & (pw["metric"] == metric) & (pw["class"] == target)]
        if r.empty:
            return None
        r = r.iloc[0].to_dict()
        why = _pair_no_test(r)
        if why:
            return why
        if r["significant"]:
            return f"{BELOW} {v['best']} (p_holm = {_g3(r['p_holm'])}, {_ci(r)})"
        return f"{NOT_SHOWN} {v['best']} (p_holm = {_g3(r['p_holm'])}, {_ci(r)})"


def targets_of(per_case: pd.DataFrame) -> list[str]:
    """The classes of a per-case table (the catalog's first, in its order) and the mean over them."""
    found = list(dict.fromkeys(str(c) for c in per_case["class"])) if not per_case.empty else []
    classes = [c for c in CLASS_NAMES if c in found] + [c for c in found if c not in CLASS_NAMES]
    return classes + ([MEAN] if len(classes) > 1 else [])


def _family(metric: str, target: str, best: str, n_other: int) -> str:
    return f"{metric} / {target}: {best} against each of the {n_other} other group(s)"


def compare_per_case(pc: pd.DataFrame, metrics: Iterable[str] | None = None) -> Comparison:
    """Every group against the best group (highest mean over cases), per metric and target, of
    a per-case table (PER_CASE_COLUMNS' group, case, class and metric columns)."""
    rows: list[dict[str, Any]] = []
    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    metrics = list(METRICS if metrics is None else metrics)
    targets = targets_of(pc)
    for metric in metrics:
        for target in targets:
            mat = case_matrix(pc, metric, target).dropna(axis=1, how="all")
            if mat.empty:
                continue
            means = mat.mean()
            best = str(means.idxmax())  # first of equal means: report order
            others = [g for g in mat.columns if g != best]
            p_select, n_select = selection_test(mat)
            select_family = (f"{metric} / {target}: all {mat.shape[1]} groups, the {n_select} case(s) every "
                             "group has")
            block = []
            for g in others:
                both = mat[[best, g]].dropna()
                r = {"group": best, "vs": g, "metric": metric, "class": target, "n_cases": len(both),
                     **paired_test(both[best].to_numpy(), both[g].to_numpy()),
                     "p_select": p_select, "n_select_cases": n_select, "selection": SELECTION,
                     "holm_family": _family(metric, target, best, len(others)), "select_family": select_family}
                block.append(r)
            adj = holm([r["p"] for r in block])
            adj_min = holm([min_attainable_p(r["n_nonzero"]) if not math.isnan(r["p"]) else math.nan
                            for r in block])
            for r, q, qmin in zip(block, adj, adj_min):
                r["p_holm"] = float(q)
                r["p_min_holm"] = float(qmin) if not math.isnan(qmin) else 1.0
                r["significant"] = bool(not math.isnan(q) and q < ALPHA and r["ci_low"] > 0)
            rows += block
            best_mean = float(means[best])
            n_cases = int(mat[best].notna().sum())
            winner, not_shown = None, []
            if not others:
                kind, text, winner = KIND_ONLY, ONLY_ONE, best
            elif round(best_mean, 2) == 0.0:
                kind, text, not_shown = KIND_ZERO, TIED_ZERO, others
            elif (why := next((w for r in block if (w := _pair_no_test(r))), None)) is not None:
                kind, text = KIND_NO_TEST, why
            elif math.isnan(p_select):
                kind, text = KIND_NO_TEST, (f"{NO_TEST} (n cases every group has = {n_select}, under {MIN_CASES}: "
                                            "no selection-adjusted test)")
            else:
                items = [f"{r['vs']} (p_holm = {_g3(r['p_holm'])}, {_ci(r)})" for r in block if not r["significant"]]
                not_shown = [r["vs"] for r in block if not r["significant"]]
                if p_select >= ALPHA:
                    runner_up = str(means.drop(best).idxmax())
                    if runner_up not in not_shown:
                        not_shown.append(runner_up)
                        items.append(f"{runner_up} (selection-adjusted p = {_g3(p_select)})")
                    else:
                        items.append(f"selection-adjusted p = {_g3(p_select)}")
                if not_shown:
                    kind, text = KIND_NOT_SHOWN, f"{NOT_SHOWN} {'; '.join(items)}"
                else:
                    kind, winner = KIND_AHEAD, best
                    text = (f"{AHEAD} (largest p_holm = {_g3(max(r['p_holm'] for r in block))}, every CI above 0; "
                            f"selection-adjusted p = {_g3(p_select)})")
            verdicts[(metric, target)] = {"best": best, "best_mean": best_mean, "kind": kind, "verdict": text,
                                          "winner": winner, "not_shown": not_shown, "n_cases": n_cases,
                                          "n_groups": int(mat.shape[1]), "p_select": p_select}
    return Comparison(pd.DataFrame(rows, columns=PAIRWISE_COLUMNS), pc, verdicts)


def compare(groups: Groups, per_case: pd.DataFrame) -> Comparison:
    """Every group against the best group (highest mean over cases), per metric and target, of
    the report's groups (their runs' per-case numbers ``per_case``: ``per_case_table``)."""
    return compare_per_case(per_case_table(groups, per_case))


def method_lines(comparison: Comparison | None = None) -> list[str]:
    """What the verdicts mean and which family each correction covers (report, table3.md,
    ``lungbench compare``)."""
    n_fam = len(comparison.verdicts) if comparison is not None else None
    fam = f"the {n_fam} (metric, class) families of this report" if n_fam else "the (metric, class) families"
    return [
        f"Unit: the test case (patient); a case tested by several runs of a group is averaged first. Per metric "
        f"and class, the group with the highest mean over cases is chosen and compared with every other group "
        f"on the cases both have: mean difference with a 95% paired bootstrap interval, one-sided Wilcoxon "
        f"signed-rank p (the chosen group higher; zero differences dropped), Holm-corrected over the "
        f"comparisons of that metric and class against the chosen group (pairwise.csv, holm_family).",
        f"Selection: the chosen group was picked on the same cases it is tested on. The selection-adjusted p "
        f"(a permutation test of the leader's lead over the runner-up, group labels exchanged within each case) "
        f"covers all groups of that metric and class (pairwise.csv, select_family). Nothing is corrected across "
        f"{fam}: each is its own family.",
        f"'{AHEAD}': every p_holm < {ALPHA}, every interval above 0 and the selection-adjusted p < {ALPHA}: "
        f"the chosen group is higher on these cases than chance relabelling explains. It does not say by how much "
        f"beyond the interval, nor that it holds on other data.",
        f"'{NOT_SHOWN} X': these cases do not show a difference; it is not evidence that the two are equal "
        f"(too few cases, or a small or inconsistent difference). '{BELOW} X': X is shown higher. "
        f"'{NO_TEST}': with that many non-zero pairs (k pairs give no one-sided p below 1/2^k) or cases, no "
        f"outcome could pass the test; nothing is claimed.",
    ]


def rank_first_frequency(per_case: pd.DataFrame) -> tuple[pd.Series, int]:
    """How often each group ranks first on the mean PRIMARY over classes when the cases are
    resampled with replacement (RANK_RESAMPLES times, fixed SEED); ties split the count.
    Uses the cases every group has; returns (share per group, number of those cases)."""
    mat = case_matrix(per_case, PRIMARY, MEAN).dropna(axis=1, how="all").dropna(axis=0, how="any")
    if mat.shape[1] == 0 or mat.shape[0] == 0:
        return pd.Series(dtype=float), 0
    vals = mat.to_numpy()
    idx = np.random.default_rng(SEED).integers(0, vals.shape[0], size=(RANK_RESAMPLES, vals.shape[0]))
    means = vals[idx].mean(axis=1)  # (resamples, groups)
    top = np.isclose(means, means.max(axis=1, keepdims=True), rtol=0, atol=1e-9)
    share = (top / top.sum(axis=1, keepdims=True)).mean(axis=0)
    return pd.Series(share, index=list(mat.columns)), int(vals.shape[0])


LEAK_COLUMNS = ["backbone", "class", "n_cases", "patient_kfold", "slice_random", "gap", "ci_low",
                "ci_high", "p"]
LEAK_SPLITS = ("patient_kfold", "slice_random")


def leak(groups: Groups, pc: pd.DataFrame) -> pd.DataFrame:
    """The leak of a slice-level split, measured: for every backbone (and schedule) with runs on
    both ``patient_kfold`` and ``slice_random``, the per-case PRIMARY metric under each and their
    paired gap (slice_random - patient_kfold) with a 95% bootstrap CI and a one-sided Wilcoxon
    p-value of a positive gap (the leak's direction),
    per class and for the mean over the classes. A case's value under slice_random is the mean
    over the folds that tested its slices. ``pc``: the groups' per-case table (per_case_table).
    Empty without such pairs."""
    split_of: dict[str, tuple[Any, str]] = {}
    for key, g in groups:
        splits = {s for s in g.get("dataset.split", pd.Series(dtype=object)) if isinstance(s, str)}
        if len(splits) == 1 and (s := splits.pop()) in LEAK_SPLITS:
            split_of[key["label"]] = ((key["backbone"], key.get("schedule"), is_scratch(key)), s)
    pairs: dict[Any, dict[str, str]] = {}
    for label, (bb, s) in split_of.items():
        pairs.setdefault(bb, {})[s] = label
    rows = []
    for (backbone, schedule, scratch), p in pairs.items():
        if set(p) != set(LEAK_SPLITS) or pc.empty:
            continue
        for target in (*CLASS_NAMES, MEAN):
            mat = case_matrix(pc, PRIMARY, target)
            if not {p["patient_kfold"], p["slice_random"]} <= set(mat.columns):
                continue
            both = mat[[p["patient_kfold"], p["slice_random"]]].dropna()
            name = f"{backbone} scratch" if scratch else f"{backbone} {schedule}" if schedule else str(backbone)
            r = {"backbone": name, "class": target,
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
