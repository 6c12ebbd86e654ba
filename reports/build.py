"""Build ``<sweep>/report/`` from every result.json under a sweep dir.

    python -m reports.build <sweep_dir>
    python -m reports.build --latest <sweeps_root>   # the sweep with the newest result.json

Prints the path of report.html. collect -> DataFrame -> writers; every file is written to a
temp name and renamed, so a report folder never holds a half-written file.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable

import pandas as pd
from tqdm import tqdm

from . import atomic, overlays, plots, render_html, tables
from .collect import NOTE_SEP, REPORT_DIRNAME, collect, latest_sweep


def schema_notes(df: pd.DataFrame) -> list[str]:
    """Report-level notes: best-effort reads (counted), nothing found."""
    if df.empty:
        return ["no result.json found under this sweep dir: every backbone is MISSING"]
    c = Counter(n for v in df["schema_note"] if isinstance(v, str) for n in v.split(NOTE_SEP))
    return [f"{n} ({k} run{'s' if k > 1 else ''})" for n, k in sorted(c.items())]


def make_plots(df: pd.DataFrame, sweep_dir: Path, progress: bool = True) -> list[plots.Plot]:
    """Every figure; one that raises becomes a note instead of sinking the report."""
    steps: list[tuple[str, Callable[[], list[plots.Plot]]]] = [
        ("per-class AP", lambda: [plots.per_class_bars(df)]),
        ("trunk x head", lambda: [plots.trunk_head_heatmap(df)]),
        ("AP vs cost", lambda: [plots.ap_vs_cost(df)]),
        ("loss curves", lambda: [plots.loss_curves(df, sweep_dir)]),
        ("overlays", lambda: overlays.overlays(df, sweep_dir)),
    ]
    out = []
    for name, fn in tqdm(steps, desc="report plots", disable=not progress, leave=False):
        try:
            out += fn()
        except Exception as e:  # noqa: BLE001 - a broken artifact must not cost the whole report
            last = traceback.extract_tb(e.__traceback__)[-1]
            out.append(plots.Plot(f"{name}.png", name, "", note=f"plot failed: {type(e).__name__}: {e} "
                                  f"({Path(last.filename).name}:{last.lineno})"))
    return out


def build_report(sweep_dir: Path, progress: bool = True) -> Path:
    """Write runs.csv, per_class_ap.csv, table3.csv/.md, the PNGs and report.html into
    ``<sweep_dir>/report/``; returns the path of report.html."""
    sweep_dir = Path(sweep_dir).resolve()
    out = sweep_dir / REPORT_DIRNAME
    df = collect(sweep_dir)
    notes = schema_notes(df)
    t3 = tables.table3(df)
    figs = make_plots(df, sweep_dir, progress)
    atomic.write_text(out / "runs.csv", df.to_csv(index=False))
    atomic.write_text(out / "per_class_ap.csv", tables.per_class_ap(df).to_csv(index=False))
    atomic.write_text(out / "table3.csv", t3.to_csv(index=False))
    atomic.write_text(out / "table3.md", tables.table3_markdown(t3, notes))
    for f in figs:
        if f.png is not None:
            atomic.write_bytes(out / f.name, f.png)
    files = ["runs.csv", "per_class_ap.csv", "table3.csv", "table3.md"] + [f.name for f in figs if f.png is not None]
    for old in out.glob("*.png"):  # a plot skipped this time must not survive from an earlier build
        if old.name not in files:
            old.unlink()
    html = render_html.render(sweep_dir=str(sweep_dir), df=df, t3=t3, winners=tables.winners(df),
                              failed=tables.failed_runs(df), missing=tables.missing_runs(df),
                              plots=figs, notes=notes, files=files)
    return atomic.write_text(out / "report.html", html)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", nargs="?", type=Path, help="a sweep dir (every result.json below it is read)")
    ap.add_argument("--latest", type=Path, metavar="SWEEPS_ROOT", help="use the sweep under this root with the newest result.json")
    args = ap.parse_args(argv)
    if (args.sweep_dir is None) == (args.latest is None):
        ap.error("give either a sweep dir or --latest <sweeps_root>")
    try:
        sweep = latest_sweep(args.latest) if args.latest else args.sweep_dir
        print(build_report(sweep))
    except FileNotFoundError as e:
        print(f"reports.build: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
