"""Views of the runs table: Table 3 beside the paper, the per-class (Table 2) mirror,
winners, failed and missing runs. Pure functions of the report's groups (reports.groups) and
DataFrames; no I/O except reading ``paper.json`` (packaged next to this file)."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from contracts.catalog import BACKBONES, CLASS_LABELS, CLASS_NAMES

from .groups import (GROUP_COL, REPLICATE_KEYS, VARYING_GROUP_KEYS, Groups, backbone_order, group_label,
                     is_scratch, norm, ok_rows, schedule_order)

PAPER_PATH = Path(__file__).with_name("paper.json")
SEGM_AP = "metrics.segm.AP"
TASKS = ("segm", "bbox")
AP_METRICS = ("AP", "AP50", "AP75")


def class_col(c: str, task: str = "segm", metric: str = "AP") -> str:
    """Column of the runs table holding one per-class metric."""
    return f"metrics.{task}.per_class.{c}.{metric}"


@lru_cache(maxsize=1)
def load_paper() -> dict[str, Any]:
    """The paper's published numbers (Tables 2 and 3) and our reading assumptions."""
    return json.loads(PAPER_PATH.read_text())


def paper_table3(backbone: str, schedule: Any) -> tuple[float | None, str | None]:
    """The paper's Table 3 AP for one backbone+schedule, and a note when it cannot be matched.

    An exact schedule match wins; a paper row without schedule matches any of ours.
    """
    rows = [r for r in load_paper()["table3"] if r["backbone"] == backbone]
    if not rows:
        return None, None
    exact = [r for r in rows if r["schedule"] is not None and r["schedule"] == schedule]
    loose = [r for r in rows if r["schedule"] is None]
    if exact:
        return exact[0]["ap"], f"paper row {exact[0]['row']} ({schedule})"
    if loose:
        return loose[0]["ap"], f"paper row {loose[0]['row']} (schedule unstated)"
    scheds = "/".join(str(r["schedule"]) for r in rows)
    return None, f"paper has {backbone} only for {scheds}"


def _paper_by_schedule(backbone: str) -> list[str]:
    """['paper: 56.43 (1x), 69.3 (3x)'] for a backbone the paper splits by schedule, else []."""
    rows = [r for r in load_paper()["table3"] if r["backbone"] == backbone and r["schedule"]]
    return ["paper: " + ", ".join(f"{r['ap']} ({r['schedule']})" for r in rows)] if rows else []


def paper_table2(backbone: str, task: str, c: str, metric: str) -> float | None:
    """The paper's Table 2 (R50-FPN, mask AP per class); None where it has no number."""
    if backbone == "R50-FPN" and task == "segm" and metric == "AP":
        return load_paper()["table2_r50_fpn"].get(c)
    return None


def mean_std(rows: pd.DataFrame, col: str) -> tuple[float, float, int]:
    """(mean, sample std, n) of a numeric column over the ok runs; NaN where undefined."""
    if col not in rows.columns:
        return math.nan, math.nan, 0
    v = pd.to_numeric(ok_rows(rows)[col], errors="coerce").dropna()
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


def _first(rows: pd.DataFrame, col: str) -> Any:
    if col not in rows.columns:
        return None
    v = [x for x in rows[col] if norm(x) is not None]
    return v[0] if v else None


def _status_note(rows: pd.DataFrame) -> list[str]:
    n, n_ok = len(rows), int((rows["status"] == "ok").sum())
    if n_ok == 0:
        return [f"all {n} run(s) failed"]
    if n_ok < n:
        return [f"{n - n_ok} of {n} run(s) failed"]
    return []


def _learnt_nothing_note(rows: pd.DataFrame) -> list[str]:
    """Said in words where a group's finished runs found nothing: segm AP50 0 for every class."""
    ok = ok_rows(rows)
    cols = [class_col(c, metric="AP50") for c in CLASS_NAMES]
    if ok.empty or not all(c in ok.columns for c in cols):
        return []
    ap50 = ok[cols].apply(pd.to_numeric, errors="coerce")
    if ap50.notna().all().all() and (ap50 == 0).all().all():
        return ["learnt nothing at this training budget: segm AP50 0 for every class in every run"]
    return []


def _in_zoo(value: Any) -> bool | None:
    """A group's ``in_zoo`` (as its result.json files record it): True, False or None (unknown)."""
    v = norm(value)
    return None if v is None else bool(v)


def _zoo_note(in_zoo: bool | None) -> list[str]:
    """"not in zoo" where in_zoo is False; nothing where it is True or unknown."""
    return ["not in zoo"] if in_zoo is False else []


def _missing_row(planned: dict[str, Any], note: list[str]) -> dict[str, Any]:
    """A Table 3 row for a planned run (collect.SweepRuns.missing) without any result.json:
    its backbone and ``in_zoo`` as the sweep's plan recorded them (unknown in older plans)."""
    backbone = str(planned.get("backbone") or planned["label"])
    known = backbone in BACKBONES
    paper, pnote = paper_table3(backbone, None) if known else (None, None)
    t, h = backbone.split("-") if known else (None, None)
    in_zoo = _in_zoo(planned.get("in_zoo"))
    return _runless_row(backbone, None, t, h, in_zoo=in_zoo, group=backbone, paper_AP=paper,
                        paper_source=pnote if paper is not None else None,
                        note="; ".join(_zoo_note(in_zoo) + note + (
                            [] if paper is not None or not known else _paper_by_schedule(backbone))))


def _paper_row(p: dict[str, Any]) -> dict[str, Any]:
    """A Table 3 row of the paper's (paper.json ``table3``) for a backbone this sweep did not
    plan: the paper's number, nothing of ours (not a MISSING run: nobody asked for it)."""
    t, h = str(p["backbone"]).split("-")
    return _runless_row(p["backbone"], p["schedule"], t, h, in_zoo=None, group=None, paper_only=True,
                        paper_AP=p["ap"], paper_source=f"paper row {p['row']}",
                        note="paper only: not in this sweep")


def _runless_row(backbone: Any, schedule: Any, trunk: Any, head: Any, **fields: Any) -> dict[str, Any]:
    """A Table 3 row without any run of ours: no counts, no AP; ``fields`` say the rest."""
    return {"backbone": backbone, "schedule": schedule, "trunk": trunk, "head": head,
            "n_runs": 0, "n_ok": 0, "n_failed": 0,
            "infection_AP": math.nan, "infection_AP_std": math.nan, "infection_AP_n": 0,
            "mean_AP": math.nan, "mean_AP_std": math.nan, "mean_AP_n": 0, "delta_AP": math.nan,
            **fields}


def table3(groups: Groups, comparison: Any, planned_missing: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per backbone group (backbone, schedule, any varying axis, run identity group).

    Ours: segm infection AP (compared with the paper, see paper.json 'assumptions') and the
    segm AP over the three classes, each as mean, std and n over folds/seeds (ok runs only).
    The rows are the groups of the runs found; a planned group without any result.json is a
    MISSING row named by its planned run (``planned_missing``: collect.SweepRuns.missing).
    A paper row (paper.json) for a backbone nobody planned stays, as the paper's:
    ``paper_only`` True, its number and nothing of ours (not a MISSING run of ours).
    ``infection_verdict`` and ``mean_verdict`` say what the paired case-by-case tests
    (``comparison``: reports.stats.compare of these groups) found.
    """
    df, keys = groups.df, groups.keys
    rows = []
    for key, g in groups:
        inf = mean_std(g, class_col("infection"))
        mean_ap = mean_std(g, SEGM_AP)
        paper, pnote = paper_table3(str(key["backbone"]), key["schedule"])
        in_zoo = _in_zoo(_first(g, "in_zoo"))  # what the runs' result.json files say
        notes = _zoo_note(in_zoo) + _status_note(g) + _learnt_nothing_note(g)
        n_miss = sum(m.get("group") is not None and m.get("group") == key.get(GROUP_COL)
                     for m in planned_missing or [])
        if n_miss:
            notes.append(f"{n_miss} planned run(s) MISSING")
        if pnote and paper is None:
            notes.append(pnote)
        if is_scratch(key):
            notes.append(f"trained from scratch: no schedule (solver settings of the {key['schedule']} zoo config)"
                         if key["schedule"] else "trained from scratch: no schedule")
        rows.append({
            **key, "schedule": None if is_scratch(key) else key["schedule"], "trunk": _first(g, "trunk"), "head": _first(g, "head"), "group": key["label"],
            "in_zoo": in_zoo,
            "n_runs": len(g), "n_ok": int((g["status"] == "ok").sum()),
            "n_failed": int((g["status"] != "ok").sum()),
            "infection_AP": inf[0], "infection_AP_std": inf[1], "infection_AP_n": inf[2],
            "mean_AP": mean_ap[0], "mean_AP_std": mean_ap[1], "mean_AP_n": mean_ap[2],
            "paper_AP": paper, "delta_AP": (inf[0] - paper) if paper is not None and inf[2] else math.nan,
            "paper_source": pnote if paper is not None else None, "note": "; ".join(notes) or None,
            "infection_verdict": comparison.row_verdict(key["label"], "infection"),
            "mean_verdict": comparison.row_verdict(key["label"], "mean"),
        })
    # Expected runs are the plan's (without one, the result.json files found): a planned group
    # without any result.json is a MISSING row; a backbone nobody planned is not ours to miss
    present = {norm(v) for v in df[GROUP_COL]} - {None} if GROUP_COL in df.columns else set()
    absent: dict[Any, list[dict[str, Any]]] = {}
    for i, m in enumerate(planned_missing or []):
        if m.get("group") not in present:  # a group with no result.json at all
            absent.setdefault(m.get("group") or f"#{i}", []).append(m)
    for ms in absent.values():
        more = f" (planned: {', '.join(str(m['label']) for m in ms)})" if len(ms) > 1 else ""
        rows.append(_missing_row(ms[0], [f"MISSING: no result.json{more}"]))
    ours = {r["backbone"] for r in rows}
    rows += [_paper_row(p) for p in load_paper()["table3"] if p["backbone"] not in ours]
    for r in rows:
        r.setdefault("paper_only", False)
    cols = ["backbone", "trunk", "head", "schedule", *keys[2:], "group", "in_zoo", "paper_only", "n_runs", "n_ok", "n_failed",
            "infection_AP", "infection_AP_std", "infection_AP_n", "mean_AP", "mean_AP_std", "mean_AP_n",
            "paper_AP", "delta_AP", "paper_source", "note", "infection_verdict", "mean_verdict"]
    out = pd.DataFrame(rows, columns=cols)
    order = sorted(range(len(out)), key=lambda i: (backbone_order(out.at[i, "backbone"]),
                                                   schedule_order(norm(out.at[i, "schedule"]))))
    return out.iloc[order].reset_index(drop=True)


def per_class_ap(groups: Groups) -> pd.DataFrame:
    """Table 2 mirror for every backbone group, long format.

    Columns: backbone, trunk, head, schedule, [varying axes], identity.group, group (its
    label), task (segm|bbox), class,
    metric (AP|AP50|AP75), mean, std, n (ok runs with a value), paper (Table 2), delta.
    """
    rows = []
    for key, g in groups:
        for task in TASKS:
            for c in CLASS_NAMES:
                for m in AP_METRICS:
                    mean, std, n = mean_std(g, class_col(c, task, m))
                    paper = paper_table2(str(key["backbone"]), task, c, m)
                    rows.append({**key, "trunk": _first(g, "trunk"), "head": _first(g, "head"),
                                 "group": key["label"], "task": task, "class": c, "metric": m,
                                 "mean": mean, "std": std, "n": n,
                                 "paper": paper, "delta": mean - paper if paper is not None and n else math.nan})
    cols = ["backbone", "trunk", "head", "schedule", *groups.keys[2:], "group", "task", "class", "metric",
            "mean", "std", "n", "paper", "delta"]
    return pd.DataFrame(rows, columns=cols)


FP_COLUMNS = ["group", "class", "segm_AP", "n_cases_with", "n_cases_without", "fp_instances",
              "cases_with_fp", "fp_instances_any"]


def false_positives(per_case: pd.DataFrame) -> pd.DataFrame:
    """Per group and class, what per-case AP cannot see: on the cases without that class (its AP
    is undefined there, so they drop out of it) the predicted instances of it (``fp_instances``:
    scoring at least the Dice threshold; ``fp_instances_any``: every score; per case the mean
    over the group's runs) and the cases with any (FP_COLUMNS), beside the mean segm AP over the
    cases that have the class. From a per-case table (reports.stats.per_case_table); empty
    where no run counts them (result.json schema < 4)."""
    if per_case.empty or "fp_no_gt" not in per_case.columns or per_case["fp_no_gt"].notna().sum() == 0:
        return pd.DataFrame(columns=FP_COLUMNS)
    rows = []
    for (group, c), g in per_case.groupby(["group", "class"], sort=False):
        without = g[g["fp_no_gt"].notna()]
        ap = pd.to_numeric(g["segm_AP"], errors="coerce").dropna()
        rows.append({"group": group, "class": c, "segm_AP": float(ap.mean()) if len(ap) else math.nan,
                     "n_cases_with": int(len(ap)), "n_cases_without": int(len(without)),
                     "fp_instances": float(without["fp_no_gt"].sum()) if len(without) else math.nan,
                     "cases_with_fp": int((without["fp_no_gt"] > 0).sum()),
                     "fp_instances_any": float(pd.to_numeric(without["fp_no_gt_any"], errors="coerce").sum())
                     if len(without) else math.nan})
    return pd.DataFrame(rows, columns=FP_COLUMNS)


#: runs whose training compute differs by more than this ratio were not trained alike
UNEQUAL_COMPUTE = 1.05


def training_tflop(df: pd.DataFrame) -> pd.Series:
    """Each run's training compute in TFLOPs: iterations x training FLOPs per iteration (NaN
    where the run did not record its FLOPs per iteration)."""
    if df.empty or "solver.train_flops_per_iter" not in df.columns:
        return pd.Series(math.nan, index=df.index, dtype=float)
    return (pd.to_numeric(df["solver.max_iter"], errors="coerce")
            * pd.to_numeric(df["solver.train_flops_per_iter"], errors="coerce") / 1e12)


def compute_remark(df: pd.DataFrame) -> str | None:
    """What a verdict must say when the runs it compares were not trained at one budget: their
    training compute (or, where FLOPs were not recorded, their iterations) differ."""
    ok = ok_rows(df) if not df.empty else df
    if ok.empty:
        return None
    tf = training_tflop(ok)
    if tf.notna().all():
        lo, hi = float(tf.min()), float(tf.max())
        if lo > 0 and hi / lo > UNEQUAL_COMPUTE:
            return (f"unequal budgets: training compute {lo:.3g}-{hi:.3g} TFLOPs ({hi / lo:.1f}x), so this "
                    "compares trainings, not backbones alone (equal compute: solver.budget)")
        return None
    iters = pd.to_numeric(ok.get("solver.max_iter"), errors="coerce") if "solver.max_iter" in ok else None
    if iters is not None and iters.nunique() > 1:
        return (f"unequal budgets: {int(iters.min())}-{int(iters.max())} iterations, training FLOPs not "
                "recorded, so this compares trainings, not backbones alone (equal compute: solver.budget)")
    return None


def winners(groups: Groups, comparison: Any) -> list[dict[str, Any]]:
    """Best backbone group per class (segm AP) and for the mean segm AP, with what the paired
    case-by-case tests say of it (``comparison``: reports.stats.compare of these groups).

    ``winner`` is the leading group: the best by the mean over cases when the runs hold
    per-case results, else by the mean over replicates. ``verdict`` is the test's words
    ('ahead of all (...)', 'not shown different from ...', 'no test possible (...)') and
    ``significant`` whether the leader is ahead of every other group."""
    targets = [(CLASS_LABELS[c], class_col(c), c) for c in CLASS_NAMES] + [("mean of 3 classes", SEGM_AP, "mean")]
    remark = compute_remark(groups.df)
    out = []
    for what, col, target in targets:
        scored = []
        for key, g in groups:
            mean, std, n = mean_std(g, col)
            if n:
                scored.append((mean, std, n, group_label(key)))
        scored.sort(key=lambda s: -s[0])  # stable: ties keep report order
        v = comparison.verdict(target)
        lead = [s for s in scored if s[3] == v["best"]]
        if lead:  # the tests' best (mean over cases) leads
            scored = lead + [s for s in scored if s[3] != v["best"]]
        if scored:
            best = scored[0]
            out.append({"what": what, "winner": best[3], "AP": best[0], "std": best[1], "n": best[2],
                        "runner_up": scored[1][3] if len(scored) > 1 else None,
                        "margin": best[0] - scored[1][0] if len(scored) > 1 else math.nan,
                        "verdict": v["verdict"] + (f"; {remark}" if remark and len(scored) > 1 else ""),
                        "significant": v["winner"] is not None and v["winner"] == best[3]})
        else:
            out.append({"what": what, "winner": None, "AP": math.nan, "std": math.nan, "n": 0,
                        "runner_up": None, "margin": math.nan, "verdict": v["verdict"], "significant": False})
    return out


def winners_text(rows: list[dict[str, Any]]) -> str:
    """The winner table for a terminal: per class, the leading group, its segm AP and what
    the paired tests say of it (never a bare "winner")."""
    lines = [f"{'class':<18} {'best (segm AP)':<34} paired test over cases"]
    for w in rows:
        zero = str(w.get("verdict", "")).startswith("tied at 0.00")
        lead = f"{w['winner']} ({fmt(w['AP'])})" if w["winner"] and not zero else "-"
        lines.append(f"{w['what']:<18} {lead:<34} {w['verdict']}")
    return "\n".join(lines)


def failed_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Runs whose status is not ok, with the one-line reason."""
    cols = ["backbone", "schedule", "dataset.fold", "seed", "status", "error_reason", "run_dir"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    bad = df[df["status"] != "ok"]
    return bad[[c for c in cols if c in bad.columns]].reset_index(drop=True)


def missing_runs(groups: Groups, planned_missing: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Expected runs without a result.json.

    With a plan (``planned_missing``: collect.SweepRuns.missing, [] when none is missing):
    exactly the planned runs that have none, named by their label. Without one, the runs are
    the result.json files found: when they have several folds/seeds, each backbone group
    lacking a fold/seed others have."""
    if planned_missing is not None:
        return [{"backbone": str(m["label"]), "what": f"no result.json in {m['run_dir']} (planned run)"}
                for m in planned_missing]
    out: list[dict[str, Any]] = []
    df = groups.df
    if df.empty:
        return out
    rep = [k for k in REPLICATE_KEYS if k in df.columns]
    combos = {tuple(norm(v) for v in r) for r in df[rep].itertuples(index=False, name=None)}
    if len(combos) > 1:
        for key, g in groups:
            have = {tuple(norm(v) for v in r) for r in g[rep].itertuples(index=False, name=None)}
            for c in sorted(combos - have, key=str):
                what = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in zip(rep, c))
                out.append({"backbone": group_label(key), "what": f"no result.json for {what}"})
    return out


def fmt(v: Any, digits: int = 2) -> str:
    """A number for humans: '-' for missing."""
    v = norm(v)
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_pm(mean: float, std: float, n: int) -> str:
    """'41.20' for one run, '41.20 ± 1.30 (n=5)' for several, '-' for none."""
    if not n or norm(mean) is None:
        return "-"
    if n == 1 or norm(std) is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def fmt_delta(v: Any) -> str:
    v = norm(v)
    return "-" if v is None else f"{v:+.2f}"


def table3_display(t3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 as strings for Markdown/HTML: one column per idea, '-' where there is nothing."""
    extra = [c for c in t3.columns if c in VARYING_GROUP_KEYS]
    # groups told apart by their config only: their labels say how
    base = [group_label({k: norm(r[k]) for k in ["backbone", "schedule", *extra]})
            for _, r in t3.iterrows()]
    named = "group" in t3.columns and any(norm(g) is not None and g != b for g, b in zip(t3["group"], base))
    return pd.DataFrame({
        "Backbone": t3["backbone"],
        "Schedule": [fmt(s) for s in t3["schedule"]],
        **{c: [fmt(v) for v in t3[c]] for c in extra},
        **({"Group": [fmt(v) for v in t3["group"]]} if named else {}),
        "Ours: infection AP (segm)": [fmt_pm(m, s, n) for m, s, n in zip(t3["infection_AP"], t3["infection_AP_std"], t3["infection_AP_n"])],
        "Paper AP": [fmt(v) for v in t3["paper_AP"]],
        "Δ (ours − paper)": [fmt_delta(v) for v in t3["delta_AP"]],
        "Ours: mean segm AP (3 classes)": [fmt_pm(m, s, n) for m, s, n in zip(t3["mean_AP"], t3["mean_AP_std"], t3["mean_AP_n"])],
        "Runs ok/total": [f"{a}/{b}" for a, b in zip(t3["n_ok"], t3["n_runs"])],
        **({"Paired test: infection AP": [fmt(v) for v in t3["infection_verdict"]],
            "Paired test: mean segm AP": [fmt(v) for v in t3["mean_verdict"]]}
           if "mean_verdict" in t3.columns else {}),
        "Note": [fmt(v) for v in t3["note"]],
    })


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (all cells as text, pipes escaped)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    sep = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False, name=None)]
    return "\n".join([head, sep, *body]) + "\n"


def table3_markdown(t3: pd.DataFrame, notes: list[str], method: list[str]) -> str:
    """table3.md: the table, then the assumptions behind the paper comparison, what the paired
    tests do (``method``: reports.stats.method_lines) and any notes."""
    paper = load_paper()
    lines = ["# Table 3: our Mask R-CNN backbones beside Gaikwad & Joshi (2020)", "",
             to_markdown(table3_display(t3)), "Assumptions:", ""]
    lines += [f"- {a}" for a in paper["assumptions"]]
    lines += ["", "Paired tests (columns 'Paired test'; pairwise.csv, verdicts.csv, per_case.csv):", ""]
    lines += [f"- {m}" for m in method]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
