"""``lungbench compare``: the report's paired tests on per-case scores from anywhere.

    python -m reports.compare PER_CASE.csv [--metric M] [--out DIR]

PER_CASE.csv has the report's own per_case.csv format: columns ``group``, ``case`` and
``class``, then one column per metric (higher is better; an empty cell is a value the case
does not define, e.g. AP of a class absent from it). Your own nnU-Net, another detector or a
report's per_case.csv: each (group, case, class) once. The verdicts are exactly the report's
(``reports.stats.compare_per_case``); they are printed, and with ``--out`` pairwise.csv and
verdicts.csv are written into DIR (a folder made whole, as every lungbench output).

Bad input is refused with the file, the line and the problem (exit 2); nothing is written then.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import pandas as pd

from contracts import fsutil
from contracts.fsutil import write_text

from . import stats

KEYS = ("group", "case", "class")
COMPARE_KIND = "compare"
PAIRWISE_NAME = "pairwise.csv"
VERDICTS_NAME = "verdicts.csv"


class CompareError(ValueError):
    """Unusable input: ``str()`` names the file (and line) and the problem."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def read_per_case(path: str | Path, metric: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(per-case table, metric columns) of a PER_CASE.csv, checked (module doc). ``metric``: test
    that column only. Columns the report shows beside the scores but never tests
    (``stats.SHOWN``: counts of false positives, Dice without a threshold) are left out."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CompareError(path, f"cannot be read ({e})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(c.strip() for c in rows[0]):
        raise CompareError(path, "is empty: the header needs group, case, class and one column per metric")
    header = [c.strip() for c in rows[0]]
    missing = [k for k in KEYS if k not in header]
    if missing:
        raise CompareError(path, f"missing column(s) {', '.join(missing)}: the header needs group, case, class "
                           "and one column per metric", 1)
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise CompareError(path, f"column(s) {', '.join(dup)} appear more than once in the header", 1)
    metrics = [c for c in header if c not in KEYS and c not in stats.SHOWN and c]
    if metric is not None:
        if metric in stats.SHOWN:
            raise CompareError(path, f"{metric!r} is shown beside the scores, never tested (not a score where "
                               "higher is better); choose one of: " + ", ".join(metrics))
        if metric not in header:
            raise CompareError(path, f"no column {metric!r} (--metric); the metric columns are: "
                               + (", ".join(metrics) or "none"), 1)
        metrics = [metric]
    if not metrics:
        raise CompareError(path, "no metric column: after group, case and class, one column per metric", 1)
    idx = {c: header.index(c) for c in (*KEYS, *metrics)}
    seen: dict[tuple[str, str, str], int] = {}
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue  # a blank line
        if len(row) != len(header):
            raise CompareError(path, f"{len(row)} field(s), the header has {len(header)}", line)
        key = tuple(row[idx[k]].strip() for k in KEYS)
        for k, v in zip(KEYS, key):
            if not v:
                raise CompareError(path, f"empty {k!r}", line)
        if key in seen:
            raise CompareError(path, f"case {key[1]!r} of group {key[0]!r}, class {key[2]!r} appears twice "
                               f"(first on line {seen[key]}): each case once per group and class", line)
        seen[key] = line
        rec: dict[str, object] = dict(zip(KEYS, key))
        for m in metrics:
            cell = row[idx[m]].strip()
            try:
                v = float(cell) if cell else math.nan
            except ValueError:
                raise CompareError(path, f"column {m!r} is {cell!r}, not a number (leave it empty where the "
                                   "case has no value)", line) from None
            if cell and not math.isfinite(v):
                raise CompareError(path, f"column {m!r} is {cell!r}, not a finite number", line)
            rec[m] = v
        records.append(rec)
    if not records:
        raise CompareError(path, "no data rows under the header")
    groups = list(dict.fromkeys(r["group"] for r in records))
    if len(groups) < 2:
        raise CompareError(path, f"only one group ({groups[0]!r}): nothing to compare it with; the paired tests "
                           "need at least two groups tested on the same cases")
    df = pd.DataFrame(records, columns=[*KEYS, *metrics])
    metrics = [m for m in metrics if df[m].notna().any()]
    if not metrics:
        raise CompareError(path, "every metric cell is empty")
    return df, metrics


def verdict_text(comparison: stats.Comparison) -> str:
    """The verdicts for a terminal: per metric and class the highest mean and what the tests say."""
    lines = [f"{'metric':<16} {'class':<18} {'highest mean':<28} verdict"]
    for (metric, target), v in comparison.verdicts.items():
        lead = f"{v['best']} ({v['best_mean']:.4g})" if v["best"] is not None else "-"
        lines.append(f"{metric:<16} {stats.target_label(target):<18} {lead:<28} {v['verdict']}")
    return "\n".join(lines)


def compare_csv(path: str | Path, metric: str | None = None, out: str | Path | None = None) -> stats.Comparison:
    """The paired tests of a PER_CASE.csv; with ``out``, pairwise.csv and verdicts.csv written there
    (the folder built whole, then put in place). CompareError for bad input, fsutil.NotOwned /
    OutputBusy for an output lungbench may not write."""
    path = Path(path)
    pc, metrics = read_per_case(path, metric)
    comparison = stats.compare_per_case(pc, metrics)
    if out is not None:
        out = fsutil.resolve_output(out)
        src = path.resolve().parent
        if fsutil.overlaps(out, src):
            raise fsutil.NotOwned(out, f"overlaps the folder of the input ({src})",
                                  "lungbench never writes where it reads: choose another --out")
        with fsutil.output_lock(out, "--out"), fsutil.atomic_dir(out, COMPARE_KIND, "--out") as tmp:
            write_text(tmp / PAIRWISE_NAME, comparison.pairwise.to_csv(index=False))
            write_text(tmp / VERDICTS_NAME, comparison.verdict_table().to_csv(index=False))
    return comparison


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lungbench compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("per_case", type=Path, metavar="PER_CASE.csv",
                    help="columns group, case, class and one column per metric (the report's per_case.csv format)")
    ap.add_argument("--metric", help="test this metric column only (default: every metric column)")
    ap.add_argument("--out", type=Path, metavar="DIR",
                    help="write pairwise.csv and verdicts.csv into DIR (default: print only, write nothing)")
    a = ap.parse_args(argv)
    try:
        comparison = compare_csv(a.per_case, a.metric, a.out)
    except (CompareError, fsutil.NotOwned, fsutil.OutputBusy) as e:
        print(f"lungbench compare: {e}; nothing written.", file=sys.stderr)
        return 2
    print(verdict_text(comparison))
    print()
    print("\n".join(f"- {m}" for m in stats.method_lines(comparison)))
    if a.out is not None:
        print(f"\nwrote {PAIRWISE_NAME} and {VERDICTS_NAME} to {fsutil.resolve_output(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
