"""Build ``<sweep>/report/`` from a sweep's runs (its sweep.json plan, else every result.json).

    python -m reports.build <sweep_dir>
    python -m reports.build --latest <sweeps_root>   # the sweep with the newest result.json

Prints the path of report.html. collect -> runs table -> groups (once) -> paired tests
(once) -> tables, plots, report.html. Only a lungbench sweep
(owner marker of kind "sweep", as `make sweep` leaves it) is reported on; the report folder
is built whole in a temp folder that then replaces the previous one (contracts.fsutil), so
it never holds a half-written file, and a report folder holding files lungbench did not
write there is refused, not overwritten. Exit 2 when the build is refused.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
from tqdm import tqdm

from contracts import fsutil, sweep
from contracts.fsutil import write_bytes, write_text

from . import overlays, plots, render_html, stats, tables, volume3d
from .collect import NOTE_SEP, REPORT_DIRNAME, SweepRuns, latest_sweep, read_sweep
from .groups import Groups

REPORT_KIND = "report"
IGNORED_NAME = "ignored.csv"
#: Every group against the best, per metric and class (reports.stats), and the per-case numbers.
PAIRWISE_NAME = "pairwise.csv"
LEAK_NAME = "leak.csv"
PER_CASE_NAME = "per_case.csv"
#: One verdict per metric and class (reports.stats.Comparison.verdict_table).
VERDICTS_NAME = "verdicts.csv"
VOLUME3D_NAME = "volume3d.csv"
#: False positives on cases without that class, per group and class (reports.tables.false_positives).
FALSE_POSITIVES_NAME = "false_positives.csv"


def schema_notes(df: pd.DataFrame, planned: int | None = None) -> list[str]:
    """Report-level notes: how results do not match their schema (counted), nothing found (``planned``: the
    number of runs in the sweep's plan, None without one)."""
    if df.empty:
        if planned is not None:
            return [f"no result.json for any of the {planned} run(s) in {sweep.FILENAME}: every one is MISSING"]
        return ["no result.json found under this sweep dir (and no sweep.json saying what was planned)"]
    c = Counter(n for v in df["schema_note"] if isinstance(v, str) for n in v.split(NOTE_SEP))
    return [f"{n} ({k} run{'s' if k > 1 else ''})" for n, k in sorted(c.items())]


def plan_notes(runs: SweepRuns) -> list[str]:
    """What the plan left out: the result.json files outside it (ignored, listed)."""
    if not runs.ignored:
        return []
    paths = [p for p, _ in runs.ignored]
    return [f"ignored {len(paths)} result.json outside this sweep's plan ({sweep.FILENAME}): "
            f"{fsutil.describe(paths)}; listed in {IGNORED_NAME}"]


def require_sweep(sweep_dir: Path) -> None:
    """Raise unless ``sweep_dir`` is a lungbench sweep (FileNotFoundError: no such folder;
    fsutil.NotOwned: no owner marker of kind "sweep")."""
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist or is not a directory")
    marker = fsutil.read_marker(sweep_dir)
    if marker is None or marker.get("kind") != sweep.KIND:
        what = "no owner marker" if marker is None else f"a lungbench {marker.get('kind')!r} folder"
        raise fsutil.NotOwned(sweep_dir, f"not a lungbench sweep ({what})",
                              "pass the folder a `make sweep` wrote (SWEEP_DIR)")


def _no_test(comparison: stats.Comparison) -> str | None:
    """Why the primary metric cannot be tested (None when it can)."""
    v = comparison.verdict(stats.MEAN)
    return v["verdict"] if v["verdict"].startswith("no test possible") else None


@dataclass(frozen=True)
class Analysis:
    """What every view of one sweep is made from, computed once: its runs (collect), their
    groups and the paired case-by-case tests of those groups."""
    runs: SweepRuns
    groups: Groups
    comparison: stats.Comparison

    @classmethod
    def of(cls, runs: SweepRuns) -> Analysis:
        groups = Groups.of(runs.df)
        return cls(runs, groups, stats.compare(groups, runs.per_case))

    @property
    def df(self) -> pd.DataFrame:
        return self.runs.df


def analyse(sweep_dir: Path) -> Analysis:
    """The runs of a sweep dir (collect.read_sweep), grouped and tested."""
    return Analysis.of(read_sweep(sweep_dir))


def make_plots(analysis: Analysis, sweep_dir: Path, v3d: pd.DataFrame, progress: bool = True) -> list[plots.Plot]:
    """Every figure; one that raises becomes a note instead of sinking the report. ``v3d``:
    reports.volume3d.table of the analysis."""
    groups, comparison = analysis.groups, analysis.comparison
    steps: list[tuple[str, Callable[[], list[plots.Plot]]]] = [
        ("per-class AP", lambda: [plots.per_class_bars(groups)]),
        ("rank stability", lambda: [plots.rank_stability(comparison.per_case, _no_test(comparison))]),
        ("trunk x head", lambda: [plots.trunk_head_heatmap(groups)]),
        ("AP vs cost", lambda: [plots.ap_vs_cost(groups)]),
        ("AP vs compute", lambda: [plots.ap_vs_compute(analysis.df)]),
        ("3-D metrics", lambda: [plots.volume3d_bars(v3d)]),
        ("loss curves", lambda: [plots.loss_curves(groups, sweep_dir)]),
        ("overlays", lambda: overlays.overlays(groups, sweep_dir)),
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


@contextmanager
def reading_sweep(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep folder as a reader (make clean waits its turn). A sweep still running holds
    it as its writer: the report is then a snapshot, its running runs shown as running."""
    held = ExitStack()
    try:
        held.enter_context(fsutil.output_lock(sweep_dir, "the sweep folder", shared=True))
    except fsutil.OutputBusy:
        pass
    with held:
        yield


def build_report(sweep_dir: Path, progress: bool = True, winners_out: list | None = None) -> Path:
    """Write runs.csv, per_class_ap.csv, table3.csv/.md, pairwise.csv, per_case.csv, verdicts.csv, leak.csv,
    volume3d.csv, false_positives.csv, ignored.csv,
    the PNGs and report.html into ``<sweep_dir>/report/``; returns the path of report.html.

    Raises, before writing anything: FileNotFoundError (no such folder), fsutil.NotOwned (not
    a lungbench sweep, or a report folder holding files lungbench did not write there),
    fsutil.OutputBusy (another build of this report is running), contracts.sweep.PlanError
    (unreadable sweep.json)."""
    sweep_dir = Path(sweep_dir).resolve()
    require_sweep(sweep_dir)
    out = sweep_dir / REPORT_DIRNAME
    with reading_sweep(sweep_dir), fsutil.output_lock(out, "the report folder"), \
            fsutil.atomic_dir(out, REPORT_KIND, "the report folder") as tmp:
        analysis = analyse(sweep_dir)  # reads only
        runs, groups, comparison = analysis.runs, analysis.groups, analysis.comparison
        planned_missing = runs.missing if runs.plan is not None else None
        planned = None if runs.plan is None else len(runs.plan)
        notes = schema_notes(runs.df, planned) + plan_notes(runs)
        t3 = tables.table3(groups, comparison, planned_missing)
        v3d = volume3d.table(comparison)
        leak = stats.leak(groups, comparison.per_case)
        fp = tables.false_positives(comparison.per_case)
        figs = make_plots(analysis, sweep_dir, v3d, progress)
        written = {"runs.csv": runs.df, "per_class_ap.csv": tables.per_class_ap(groups), "table3.csv": t3,
                   "table3.md": tables.table3_markdown(t3, notes, stats.method_lines(comparison)),
                   PAIRWISE_NAME: comparison.pairwise, PER_CASE_NAME: comparison.per_case,
                   VERDICTS_NAME: comparison.verdict_table(), LEAK_NAME: leak, VOLUME3D_NAME: v3d,
                   FALSE_POSITIVES_NAME: fp, IGNORED_NAME: pd.DataFrame(runs.ignored, columns=["path", "reason"])}
        for name, content in written.items():
            write_text(tmp / name, content if isinstance(content, str) else content.to_csv(index=False))
        for f in figs:
            if f.png is not None:
                write_bytes(tmp / f.name, f.png)
        files = list(written) + [f.name for f in figs if f.png is not None]
        winners = tables.winners(groups, comparison)
        if winners_out is not None:  # the CLI prints them: no second read and test of the runs
            winners_out.extend(winners)
        html = render_html.render(sweep_dir=str(sweep_dir), groups=groups, t3=t3, winners=winners,
                                  failed=tables.failed_runs(runs.df),
                                  missing=tables.missing_runs(groups, planned_missing),
                                  plots=figs, notes=notes, files=files, planned=planned, leak=leak,
                                  volume3d=v3d, volume3d_verdicts=volume3d.verdict_lines(comparison),
                                  method=stats.method_lines(comparison),
                                  volume3d_settings=volume3d.setting_lines(runs.df), false_positives=fp)
        write_text(tmp / "report.html", html)
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", nargs="?", type=Path,
                    help="a sweep dir (the runs of its sweep.json, else every result.json below it)")
    ap.add_argument("--latest", type=Path, metavar="SWEEPS_ROOT", help="use the sweep under this root with the newest result.json")
    args = ap.parse_args(argv)
    if (args.sweep_dir is None) == (args.latest is None):
        ap.error("give either a sweep dir or --latest <sweeps_root>")
    try:
        sweep_dir = latest_sweep(args.latest) if args.latest else args.sweep_dir
        winners: list = []
        html = build_report(sweep_dir, winners_out=winners)
        print(tables.winners_text(winners))
        print(html)
    except (FileNotFoundError, fsutil.NotOwned, fsutil.OutputBusy, sweep.PlanError) as e:
        print(f"reports.build: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
