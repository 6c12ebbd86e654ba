"""PNG plots of the report's groups and runs (matplotlib's object API with the Agg canvas: no
pyplot state, no display needed). Every function returns a :class:`Plot`; when the data for a plot is
absent it returns one with ``png=None`` and a note saying why, and the report shows the note."""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from contracts.catalog import CLASS_COLOURS, CLASS_LABELS, CLASS_NAMES, HEADS, TRUNKS
from contracts.fsutil import describe

from . import stats
from .groups import Groups, group_label, ok_rows
from .tables import SEGM_AP, class_col, load_paper, mean_std, paper_table3, training_tflop

DPI = 110
TRUNK_COLORS = {"R50": "#4c72b0", "R101": "#dd8452", "X101": "#55a868"}
HEAD_MARKERS = {"C4": "s", "DC5": "^", "FPN": "o"}


@dataclass
class Plot:
    """One figure of the report: file name, title, a caption, PNG bytes (None: skipped, see note)."""
    name: str
    title: str
    caption: str
    png: bytes | None = None
    note: str | None = None


def to_png(fig: Figure) -> bytes:
    """PNG bytes of a figure laid out by :func:`margins` (no tight bbox: one draw, not three)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def margins(fig: Figure, nrow: int, ncol: int, *, left: float = 0.8, right: float = 0.25, top: float = 0.5,
            bottom: float = 0.6, wspace: float = 0.6, hspace: float = 0.7) -> dict[str, float]:
    """gridspec_kw for ``fig.subplots`` from margins and gaps in inches.

    matplotlib's tight_layout and bbox_inches="tight" each draw the whole figure once more
    to measure text; with 100 runs that was half the report's time, so the plots here are
    laid out by hand with room for their labels."""
    w, h = fig.get_size_inches()
    pw = (w - left - right - (ncol - 1) * wspace) / ncol
    ph = (h - top - bottom - (nrow - 1) * hspace) / nrow
    return {"left": left / w, "right": 1 - right / w, "top": 1 - top / h, "bottom": bottom / h,
            "wspace": wspace / pw, "hspace": hspace / ph}


def bar_axes(ax: Any, ylabel: str, title: str, top: float = 105, fontsize: float = 10) -> None:
    """The frame of a bar panel: y from 0 to ``top``, its label, a left-aligned title, grid lines
    behind the bars."""
    ax.set_ylim(0, top)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=fontsize, loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def summarize(items: list[tuple[str, str]]) -> str:
    """[(who, why)] -> 'why: who, who, ... (+k more)', one clause per distinct reason."""
    by: dict[str, list[str]] = {}
    for who, why in items:
        by.setdefault(why, []).append(who)
    return "; ".join(f"{why}: {describe(who, 6)}" for why, who in by.items())


def per_class_bars(groups: Groups) -> Plot:
    """Grouped bars: segm (top) and bbox (bottom) AP per class for each backbone group,
    error bars = std over folds/seeds, the paper's numbers as markers."""
    p = Plot("per_class_ap.png", "Per-class AP by backbone",
             "COCO AP per class (mean over folds/seeds, error bar = std). Diamonds: the paper's Table 2 "
             "(R50-FPN); black x: the paper's Table 3 value (assumed to be infection AP).")
    shown = [(k, g) for k, g in groups if (g["status"] == "ok").any()]
    if not shown:
        p.note = "no successful run: nothing to plot"
        return p
    labels = [group_label(k) for k, _ in shown]
    x = np.arange(len(shown))
    width = 0.8 / len(CLASS_NAMES)
    fig = Figure(figsize=(max(8.0, 1.15 * len(shown) + 2), 8.6))
    axes = fig.subplots(2, 1, sharex=True, gridspec_kw=margins(fig, 2, 1, top=0.75, bottom=1.3, hspace=0.45))
    paper = load_paper()
    for ax, task in zip(axes, ("segm", "bbox")):
        for j, c in enumerate(CLASS_NAMES):
            st = [mean_std(g, class_col(c, task)) for _, g in shown]
            means = np.array([s[0] for s in st])
            stds = np.array([0.0 if math.isnan(s[1]) else s[1] for s in st])
            xs = x + (j - 1) * width
            ax.bar(xs, np.nan_to_num(means), width, yerr=stds, color=CLASS_COLOURS[c], label=CLASS_LABELS[c],
                   capsize=2, error_kw={"elinewidth": 0.8}, alpha=0.9)
            if len(shown) <= 12:  # beyond that the labels collide; the CSV has the numbers
                for xi, m, sd in zip(xs, means, stds):
                    if not math.isnan(m):
                        ax.text(xi, m + sd + 0.8, f"{m:.0f}", ha="center", va="bottom", fontsize=7)
            if task == "segm":
                for gi, (k, _) in enumerate(shown):
                    if k["backbone"] == "R50-FPN":
                        ax.plot(xs[gi], paper["table2_r50_fpn"][c], "D", color=CLASS_COLOURS[c],
                                markeredgecolor="black", markersize=7, zorder=5)
                    if c == "infection":
                        v, _ = paper_table3(str(k["backbone"]), k["schedule"])
                        if v is not None:
                            ax.plot(xs[gi], v, "x", color="black", markersize=8, mew=2, zorder=6)
        bar_axes(ax, f"{task} AP", "mask (segm) AP" if task == "segm" else "box (bbox) AP", fontsize=11)
    handles = [Patch(color=CLASS_COLOURS[c], label=CLASS_LABELS[c]) for c in CLASS_NAMES] + [
        Line2D([], [], marker="D", ls="", color="grey", markeredgecolor="black", label="paper Table 2 (R50-FPN)"),
        Line2D([], [], marker="x", ls="", color="black", mew=2, label="paper Table 3")]
    axes[0].legend(handles=handles, ncol=5, fontsize=8.5, loc="lower center", bbox_to_anchor=(0.5, 1.07), frameon=False)
    axes[1].set_xticks(x, labels, rotation=30, ha="right")
    p.png = to_png(fig)
    return p


def trunk_head_heatmap(groups: Groups) -> Plot:
    """3x3 trunk x head grid of mean segm AP and infection segm AP, one pair per schedule."""
    p = Plot("heatmap_trunk_head.png", "Trunk x head",
             "Mean over folds/seeds of the segm AP (left: mean of the three classes; right: infection). "
             "Grey: failed (every run failed), missing (no run) or no AP (runs without metrics).")
    df = groups.df
    ok = df[df["status"] == "ok"] if not df.empty else df
    if ok.empty:
        p.note = "no successful run: nothing to plot"
        return p
    scheds = sorted({s if isinstance(s, str) else None for s in ok["schedule"]}, key=lambda s: (s is None, str(s)))
    metrics = [("mean segm AP", SEGM_AP), ("infection segm AP", class_col("infection"))]
    fig = Figure(figsize=(9.0, 3.6 * len(scheds)))
    axes = np.atleast_2d(fig.subplots(len(scheds), 2, squeeze=False, gridspec_kw=margins(
        fig, len(scheds), 2, left=0.6, right=1.3, top=0.35, bottom=0.35, wspace=0.7, hspace=0.5)))
    vals = {}
    cells: dict[tuple, list[str]] = {}  # groups behind each drawn cell
    for key, g in groups.with_ok_runs():
        cells.setdefault((key["schedule"], _first_str(g, "trunk"), _first_str(g, "head")), []).append(group_label(key))
    mixed = sorted(", ".join(v) for v in cells.values() if len(v) > 1)
    if mixed:
        p.note = ("a cell averages several groups (other config or dataset), see Table 3 for each: "
                  + "; ".join(mixed))
    for si, s in enumerate(scheds):
        sub = df[df["schedule"].map(lambda v: (v if isinstance(v, str) else None) == s)]
        for mi, (_, col) in enumerate(metrics):
            for ti, t in enumerate(TRUNKS):
                for hi, h in enumerate(HEADS):
                    cell = sub[(sub["trunk"] == t) & (sub["head"] == h)]
                    vals[si, mi, ti, hi] = (mean_std(cell, col), int((cell["status"] == "ok").sum()), len(cell))
    finite = [v[0][0] for v in vals.values() if v[0][2]]
    vmin, vmax = (min(finite), max(finite)) if finite else (0, 100)
    if vmax - vmin < 1:
        vmin, vmax = vmin - 1, vmax + 1
    for si, s in enumerate(scheds):
        for mi, (mname, _) in enumerate(metrics):
            ax = axes[si, mi]
            grid = np.full((3, 3), np.nan)
            for ti in range(3):
                for hi in range(3):
                    (m, sd, n), _, _ = vals[si, mi, ti, hi]
                    if n:
                        grid[ti, hi] = m
            ax.set_facecolor("#d9d9d9")
            im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax)
            for ti in range(3):
                for hi in range(3):
                    (m, sd, n), n_ok, n_run = vals[si, mi, ti, hi]
                    if n:
                        frac = (m - vmin) / (vmax - vmin)
                        txt = f"{m:.1f}" + (f"\n±{sd:.1f} n={n}" if n > 1 else "")
                        color = "black" if frac > 0.6 else "white"
                    else:
                        txt = "no AP" if n_ok else ("failed" if n_run else "missing")
                        color = "#333333"
                    ax.text(hi, ti, txt, ha="center", va="center", fontsize=9, color=color)
            ax.set_xticks(range(3), HEADS)
            ax.set_yticks(range(3), TRUNKS)
            ax.set_title(f"{mname}" + (f" ({s})" if s else ""), fontsize=10)
    cax = fig.add_axes((1 - 1.0 / 9.0, 0.12, 0.022, 0.76))
    fig.colorbar(im, cax=cax, label="AP")
    p.png = to_png(fig)
    return p


def _first_str(rows: pd.DataFrame, col: str) -> str | None:
    v = [x for x in rows[col] if isinstance(x, str)] if col in rows.columns else []
    return v[0] if v else None


def ap_vs_cost(groups: Groups) -> Plot:
    """Mean segm AP against train s/iter, inference s/image and parameters (one point per group)."""
    p = Plot("ap_vs_cost.png", "AP against cost",
             "Mean segm AP (three classes) against training time per iteration, inference time per image "
             "and parameter count; colour = trunk, marker = head. Up and left is better.")
    xs = [("timing.train_s_per_iter", "train s / iter"), ("timing.infer_s_per_image", "inference s / image"),
          ("model.params_m", "parameters (M)")]
    pts = []
    for k, g in groups:
        ap = mean_std(g, SEGM_AP)
        if ap[2]:
            pts.append((k, ap, [mean_std(g, c) for c, _ in xs], g))
    if not pts:
        p.note = "no successful run with metrics: nothing to plot"
        return p
    fig = Figure(figsize=(13.5, 4.6))
    axes = fig.subplots(1, 3, sharey=True, gridspec_kw=margins(fig, 1, 3, top=0.5, bottom=0.6, wspace=0.3, right=0.6))
    for ax, (col, xlabel), ci in zip(axes, xs, range(3)):
        any_pt = False
        for k, ap, cs, g in pts:
            mx = cs[ci]
            if not mx[2]:
                continue
            any_pt = True
            t, h = g["trunk"].iloc[0], g["head"].iloc[0]
            ax.errorbar(mx[0], ap[0], yerr=0 if math.isnan(ap[1]) else ap[1],
                        xerr=0 if math.isnan(mx[1]) else mx[1], fmt=HEAD_MARKERS.get(h, "o"),
                        color=TRUNK_COLORS.get(t, "grey"), markersize=8, capsize=2)
            ax.annotate(group_label(k), (mx[0], ap[0]), textcoords="offset points", xytext=(5, 4), fontsize=7.5)
        if not any_pt:
            ax.text(0.5, 0.5, f"no {xlabel} recorded", transform=ax.transAxes, ha="center", color="grey")
        ax.set_xlabel(xlabel)
        ax.margins(x=0.2, y=0.1)  # room for the point labels, which sit right of the points
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean segm AP")
    handles = [Line2D([], [], marker="o", ls="", color=c, label=t) for t, c in TRUNK_COLORS.items()] + [
        Line2D([], [], marker=m, ls="", color="grey", label=h) for h, m in HEAD_MARKERS.items()]
    fig.legend(handles=handles, ncol=6, loc="upper center", bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=9)
    p.png = to_png(fig)
    return p


def ap_vs_compute(df: pd.DataFrame) -> Plot:
    """Mean segm AP against training compute (TFLOPs, log scale): a point per run, and a line
    per backbone through its budgets where it was trained at several."""
    p = Plot("ap_vs_compute.png", "AP against training compute",
             "Mean segm AP (three classes) of each run against its training compute (iterations x "
             "training FLOPs per iteration, log scale); a line joins a backbone's runs at different "
             "budgets. Colour = trunk, marker = head.")
    ok = ok_rows(df) if not df.empty else df
    if ok.empty or SEGM_AP not in ok.columns:
        p.note = "no successful run with metrics: nothing to plot"
        return p
    pts = ok.assign(_tf=training_tflop(ok), _ap=pd.to_numeric(ok[SEGM_AP], errors="coerce"))
    pts = pts[pts["_tf"].notna() & pts["_ap"].notna() & (pts["_tf"] > 0)]
    if pts.empty:
        p.note = "no run recorded its training FLOPs per iteration (measure.flops=false?): nothing to plot"
        return p
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots(1, 1, gridspec_kw=margins(fig, 1, 1, top=0.5, bottom=0.6, right=1.6))
    for bb, g in pts.groupby("backbone", sort=False):
        t, h = g["trunk"].iloc[0], g["head"].iloc[0]
        color, marker = TRUNK_COLORS.get(t, "grey"), HEAD_MARKERS.get(h, "o")
        ax.scatter(g["_tf"], g["_ap"], color=color, marker=marker, s=40, label=bb)
        curve = g.groupby("_tf")["_ap"].mean().sort_index()
        if len(curve) > 1:  # a curve only through two budgets or more
            ax.plot(curve.index, curve.values, color=color, lw=1.2, ls="-")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (TFLOPs, log scale)")
    ax.set_ylabel("mean segm AP")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    p.png = to_png(fig)
    return p


def read_metrics_log(path: Path) -> dict[str, np.ndarray]:
    """detectron2's metrics.json (JSON lines) -> {"iteration": array, "total_loss": array, "loss_*": array}.

    Only training rows (with total_loss) count; a torn last line (a run killed mid-write) and
    evaluation-only lines are skipped. Arrays are aligned on iteration (NaN where a row lacks a key),
    sorted by iteration."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:  # a blank or torn line
                continue
            if isinstance(d, dict) and "total_loss" in d and "iteration" in d:
                rows.append(d)
    rows.sort(key=lambda d: d["iteration"])
    keys = ["total_loss"] + sorted({k for d in rows for k in d if k.startswith("loss_")})
    out = {"iteration": np.array([d["iteration"] for d in rows], dtype=float)}
    for k in keys:
        out[k] = np.array([_float(d.get(k)) for d in rows], dtype=float)
    return out


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _smooth(y: np.ndarray) -> np.ndarray:
    """Running median for long logs (detectron2 logs every 20 iterations: 250 points at 5000);
    short smoke logs stay raw."""
    if len(y) <= 40:
        return y
    return pd.Series(y).rolling(max(3, len(y) // 30), min_periods=1, center=True).median().to_numpy()


def loss_curves(groups: Groups, sweep_dir: Path) -> Plot:
    """Training losses against iteration, one colour per backbone group. A group with one or two
    runs shows each run; with more (folds/seeds) its median over runs and the min-max band."""
    p = Plot("loss_curves.png", "Training loss",
             "detectron2's training log (metrics.json): total loss and its parts against iteration. One colour "
             "per backbone; with several folds/seeds: the median over runs and a band from min to max. "
             "Dashed: a failed run's log.")
    shown, missing = [], []
    for k, g in groups:
        logs = []
        for _, r in g.iterrows():
            rel = r.get("artifacts.metrics_log")
            where = f"{group_label(k)} ({r['run_dir']})"
            if not isinstance(rel, str):
                missing.append((where, "no artifacts.metrics_log in result.json"))
                continue
            path = Path(sweep_dir) / r["run_dir"] / rel
            if not path.is_file():
                missing.append((where, f"{rel} not found"))
                continue
            log = read_metrics_log(path)
            if not len(log["iteration"]):
                missing.append((where, f"no training rows in {rel}"))
                continue
            logs.append((r["status"] != "ok", log))
        if logs:
            shown.append((group_label(k), logs))
    if missing:
        p.note = f"{len(missing)} run(s) without a training log: " + summarize(missing)
    if not shown:
        p.note = p.note or "no training logs"
        return p
    most = max(len(log["iteration"]) for _, logs in shown for _, log in logs)
    if most < 3:
        short = (f"every training log has at most {most} point(s) (detectron2 writes one every "
                 "20 iterations): too short a run for a curve")
        p.note = f"{short}; {p.note}" if p.note else short
    found = {key for _, logs in shown for _, log in logs for key in log if key != "iteration"}
    keys = ["total_loss"] + sorted(found - {"total_loss"})
    keys = keys[:6]
    ncol = 3
    nrow = math.ceil(len(keys) / ncol)
    legend_rows = math.ceil(len(shown) / 5)
    top = 0.35 + 0.25 * legend_rows
    fig = Figure(figsize=(13.5, 3.2 * nrow + top))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False, gridspec_kw=margins(
        fig, nrow, ncol, top=top, bottom=0.55, left=0.65, wspace=0.65, hspace=0.75))).ravel()
    for ax, key in zip(axes, keys):
        for gi, (label, logs) in enumerate(shown):
            color = f"C{gi % 10}"
            ok = [log for failed, log in logs if not failed and key in log]
            for failed, log in logs:
                if key in log and (failed or len(ok) <= 2):
                    few = len(log["iteration"]) < 5  # a smoke run logs once or twice: show the points
                    ax.plot(log["iteration"], _smooth(log[key]), color=color, lw=1.3, ls="--" if failed else "-",
                            marker="o" if few else None, ms=5)
            if len(ok) > 2:
                it = np.unique(np.concatenate([log["iteration"] for log in ok]))
                ys = np.vstack([np.interp(it, log["iteration"], _smooth(log[key]), left=np.nan, right=np.nan) for log in ok])
                with warnings.catch_warnings():  # an iteration no run logged is NaN, not a warning
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, hi, med = np.nanmin(ys, 0), np.nanmax(ys, 0), np.nanmedian(ys, 0)
                ax.fill_between(it, lo, hi, color=color, alpha=0.18, lw=0)
                ax.plot(it, med, color=color, lw=1.6)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=f"C{gi % 10}", lw=2, label=f"{label} (n={len(logs)})" if len(logs) > 1 else label)
               for gi, (label, logs) in enumerate(shown)]
    fig.legend(handles=handles, loc="upper center", ncol=min(5, len(handles)), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    p.png = to_png(fig)
    return p


def rank_stability(per_case: pd.DataFrame, no_test: str | None = None) -> Plot:
    """Bars: how often each group ranks first on the mean segm AP (mean over the classes)
    when the test cases are resampled with replacement (reports.stats.rank_first_frequency).
    ``no_test``: the reason no paired test is possible; the plot is skipped with it."""
    p = Plot("rank_stability.png", "Rank stability over cases",
             f"Share of {stats.RANK_RESAMPLES} bootstrap resamples of the test cases (with replacement, fixed seed) "
             "in which each group has the highest mean segm AP (mean of the three classes), on the cases "
             "every group tested; ties split the count.")
    if no_test:
        p.note = no_test
        return p
    share, n_cases = stats.rank_first_frequency(per_case)
    if share.empty or n_cases < stats.MIN_CASES:
        p.note = stats.NO_TEST if share.size else stats.NO_DATA
        return p
    fig = Figure(figsize=(max(5.0, 0.7 * len(share) + 2.5), 4.2))
    ax = fig.subplots(1, 1, gridspec_kw=margins(fig, 1, 1, left=0.8, bottom=1.6, top=0.45))
    x = np.arange(len(share))
    ax.bar(x, 100 * share.to_numpy(), color="#4c72b0", alpha=0.9)
    for xi, v in zip(x, share.to_numpy()):
        ax.text(xi, 100 * v + 1.5, f"{100 * v:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, list(share.index), rotation=30, ha="right")
    bar_axes(ax, "ranked first (% of resamples)", f"{n_cases} cases", top=110)
    p.png = to_png(fig)
    return p


def volume3d_bars(t: pd.DataFrame) -> Plot:
    """Grouped bars: 3-D Dice (top) and NSD (bottom) per class for each backbone group, mean over
    test cases with its 95% bootstrap interval (reports.volume3d table), on the lungs as labelled
    (left, with the published 3-D nnU-Net numbers as horizontal lines per class: they were scored
    on this definition) and on whole lungs (right, no published line)."""
    p = Plot("volume3d.png", "3-D Dice and surface Dice per patient",
             "Whole-volume Dice and NSD (1 mm lungs, 3 mm infection) per backbone: mean over test cases, "
             "bar = 95% bootstrap interval (none under 5 cases). Left: lungs as labelled (without their "
             "infection), the benchmark's definition; solid lines: its nnU-Net trained on 16 cases per fold "
             "(like for like), dotted: its Task 1, 4 training cases. Right: whole lungs (with their "
             "infection), no published line.")
    ours = t[t["source"] == "ours"] if not t.empty else t
    if ours.empty:
        p.note = "no run holds 3-D metrics"
        return p
    groups = list(dict.fromkeys(ours["group"]))
    refs = list(dict.fromkeys(t[t["source"] != "ours"]["group"]))
    panels = [(suffix, name) for suffix, name in (("_labelled", "lungs as labelled"), ("", "whole lungs"))
              if (ours["metric"] == f"dice3d{suffix}").any()]
    x = np.arange(len(groups))
    width = 0.8 / len(CLASS_NAMES)
    fig = Figure(figsize=(max(8.0, 1.15 * len(groups) + 2) * len(panels) * 0.75 + 1, 8.6))
    axes = np.asarray(fig.subplots(2, len(panels), sharex=True, squeeze=False,
                                   gridspec_kw=margins(fig, 2, len(panels), top=0.75, bottom=1.3, hspace=0.45)))
    for col, (suffix, name) in enumerate(panels):
        for row, (metric, title) in enumerate(((f"dice3d{suffix}", "Dice 3-D (%)"), (f"nsd3d{suffix}", "NSD (%)"))):
            ax = axes[row, col]
            for j, c in enumerate(CLASS_NAMES):
                rows = ours[(ours["metric"] == metric) & (ours["class"] == c)].set_index("group").reindex(groups)
                m = rows["mean_pct"].to_numpy(float)
                lo = np.nan_to_num(m - rows["ci_low_pct"].to_numpy(float))
                hi = np.nan_to_num(rows["ci_high_pct"].to_numpy(float) - m)
                ax.bar(x + (j - 1) * width, np.nan_to_num(m), width, yerr=[lo, hi], color=CLASS_COLOURS[c],
                       capsize=2, error_kw={"elinewidth": 0.8}, alpha=0.9)
                for ref, ls in zip(refs, ("-", ":")):
                    r = t[(t["group"] == ref) & (t["metric"] == metric) & (t["class"] == c)]
                    if len(r):
                        ax.axhline(float(r["mean_pct"].iloc[0]), color=CLASS_COLOURS[c], ls=ls, lw=1.2, alpha=0.8)
            bar_axes(ax, title, name)
        axes[1, col].set_xticks(x, groups, rotation=30, ha="right")
    handles = [Patch(color=CLASS_COLOURS[c], label=CLASS_LABELS[c]) for c in CLASS_NAMES] + [
        Line2D([], [], color="grey", ls=ls, label=ref) for ref, ls in zip(refs, ("-", ":"))]
    fig.legend(handles=handles, ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    p.png = to_png(fig)
    return p
