"""Collect a sweep's result.json files into one tidy DataFrame (one row per run).

Which runs: when the sweep dir holds ``sweep.json`` (the plan a sweep writes: contracts.sweep),
exactly its runs: a planned run with a result.json is a row (counted as failed when the
result's identity is not the plan's: another config or dataset), one without is MISSING,
and every other result.json under the sweep dir is ignored and listed. Without a plan:
every result.json below the sweep dir.

Every result.json is read once (contracts.result). The DataFrame is the source of truth for
every view: nested fields are flattened to dotted column names
(``metrics.segm.per_class.infection.AP``), lists become JSON text, null stays missing. Runs
describe themselves; folder names are never parsed (the run dir is only recorded, relative to
the sweep dir, so a reader can find the run). A result of a schema this version does not read
(contracts.result.READABLE_SCHEMAS) is a failed row saying so.

Added columns (not in result.json): ``run_dir``, ``result_json`` (relative to the sweep
dir), ``schema_note`` (how the result does not match its schema), ``error_reason`` (one line),
and for results without a run identity (schema 1) ``identity.group`` computed from their config.
Beside the table, ``SweepRuns.per_case``: every run's per-case numbers as long rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from contracts import result, sweep
from contracts.dataset import fingerprint as dataset_fingerprint
from contracts.fsutil import describe, in_use
from contracts.identity import identity

from .groups import backbone_order, schedule_order

#: Separator of the notes inside one ``schema_note`` cell.
NOTE_SEP = " | "
REPORT_DIRNAME = "report"
#: error_reason of a planned run whose result.json is another run's.
STALE_REASON = ("StaleResult: result.json is not this sweep's run (another config or dataset); "
                "not counted")
#: error_reason of a run whose dataset changed after it ran (rebuilt, or new source volumes).
CHANGED_DATA_REASON = ("StaleResult: its dataset changed after this run (rebuilt, or its source "
                       "volumes changed): not counted; run the sweep again")
#: error_reason of a run still training when the report was built (its folder's lock is held).
RUNNING_REASON = "Running: still training when this report was built"
#: error_reason of a result.json of a schema this version does not read.
UNKNOWN_SCHEMA_REASON = ("UnknownSchema: result.json schema {schema!r}; this version reads schemas "
                         + ", ".join(map(str, result.READABLE_SCHEMAS)))
#: The columns of ``SweepRuns.per_case`` (contracts.result.Result.per_case_rows, by run dir).
PER_CASE_COLUMNS = ("run_dir", "case", "metric", "class", "value")

#: Columns shown first in runs.csv; every other field follows in first-seen order.
LEAD_COLUMNS = (
    "backbone", "trunk", "head", "schedule", "weights", "dataset.fold", "seed", "status",
    "error_reason", "schema", "schema_note", "run_dir",
    "metrics.segm.AP", "metrics.segm.per_class.left_lung.AP",
    "metrics.segm.per_class.right_lung.AP", "metrics.segm.per_class.infection.AP",
    "metrics.bbox.AP",
)


@dataclass
class SweepRuns:
    """What a report is built from: the runs table, their per-case numbers and, with a plan,
    what it left out."""
    df: pd.DataFrame
    #: every run's per-case numbers, long (PER_CASE_COLUMNS), ``run_dir`` as in ``df``
    per_case: pd.DataFrame
    #: sweep.json's runs (dicts: label, run_dir, identity, group, ...), None without a plan
    plan: list[dict[str, Any]] | None = None
    #: planned runs without a result.json: {"label", "run_dir", "group"}
    missing: list[dict[str, Any]] = field(default_factory=list)
    #: result.json files not in the plan: (path relative to the sweep dir, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)


def find_result_files(sweep_dir: Path) -> list[Path]:
    """Every result.json below ``sweep_dir`` (sorted), ignoring the report output folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist or is not a directory")
    report_dir = sweep_dir / REPORT_DIRNAME
    out = []
    for root, dirs, files in os.walk(sweep_dir):
        if Path(root) == report_dir:
            dirs[:] = []
            continue
        dirs.sort()
        if result.FILENAME in files:
            out.append(Path(root) / result.FILENAME)
    return sorted(out)


def latest_sweep(sweeps_root: Path) -> Path:
    """The sweep dir under ``sweeps_root`` whose newest result.json is the most recent.

    A sweep dir is a direct child of ``sweeps_root`` (or the root itself when it holds
    result.json files directly and has no sweep children).
    """
    sweeps_root = Path(sweeps_root)
    if not sweeps_root.is_dir():
        raise FileNotFoundError(f"sweeps root {sweeps_root} does not exist or is not a directory")
    newest = [(max(f.stat().st_mtime for f in files), child)
              for child in sorted(p for p in sweeps_root.iterdir() if p.is_dir()) if (files := find_result_files(child))]
    if newest:
        return max(newest, key=lambda t: t[0])[1]  # the first of equal times, in name order
    if find_result_files(sweeps_root):
        return sweeps_root
    raise FileNotFoundError(f"no sweep dir with a {result.FILENAME} under {sweeps_root}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b.c': value}; lists -> JSON text; an empty dict -> None."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        if not obj and prefix:
            out[prefix] = None
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj
    return out


def error_reason(status: Any, error: Any) -> str | None:
    """One line saying why a run failed (None for a run that did not fail)."""
    if status == "ok":
        return None
    if isinstance(error, dict):
        head = ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))
        where = error.get("where")
        text = head or "failed (error without type or message)"
        return f"{text} ({where})" if where else text
    if error:
        return str(error).strip().splitlines()[0] if str(error).strip() else "failed"
    return f"status {status!r} (no error recorded)"


def normalize(raw: dict[str, Any], problems: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """A result of a readable schema as the report reads it, and notes on it: how it does not
    match its schema (``problems``: contracts.result.validate's), and what had to be filled in
    (a schema-1 result's group, from its config; 'unknown' for a result naming no backbone)."""
    r = dict(raw)
    notes: list[str] = []
    if problems:
        notes.append(f"does not match schema {r['schema']}: {describe(problems, 2, '; ')}")
    if not r.get("backbone"):
        r["backbone"] = "unknown"
        notes.append("no backbone: listed as 'unknown'")
    if not isinstance(r.get("identity"), dict) and isinstance(r.get("config"), dict):
        # no run identity recorded: the group from the config alone (the data are unknown)
        r["identity"] = {"hash": None, "group": identity(r["config"], None)["group"], "dataset": None}
        notes.append("no run identity (schema 1): its group computed from its config")
    return r, notes


def read_run(path: Path, sweep_dir: Path) -> tuple[dict[str, Any], list[tuple[str, str, str, float]]]:
    """One flat row from one result.json, and its per-case numbers (case, metric, class,
    value). An unreadable file, or one of a schema this version does not read, becomes a
    failed row saying why."""
    path, sweep_dir = Path(path), Path(sweep_dir)
    rel_dir = _rel(path.parent, sweep_dir)
    meta = {"run_dir": rel_dir or ".", "result_json": (Path(rel_dir) / result.FILENAME).as_posix()}
    try:
        res = result.load_result(path)
    except (result.ResultUnreadable, OSError) as e:
        why = e if isinstance(e, result.ResultUnreadable) else result.ResultUnreadable(path, e)
        return {"backbone": "unknown", "status": "failed", "schema": None, "error_reason": str(why),
                "schema_note": "file could not be read", **meta}, []
    schema = res.data.get("schema")
    if schema not in result.READABLE_SCHEMAS:
        backbone = res.data.get("backbone")
        return {"backbone": backbone if isinstance(backbone, str) and backbone else "unknown",
                "status": "failed", "schema": schema, "error_reason": UNKNOWN_SCHEMA_REASON.format(schema=schema),
                "schema_note": "not read: unknown schema", **meta}, []
    r, notes = normalize(res.data, res.problems)
    row = flatten(r)
    row.update(meta)
    row["error_reason"] = error_reason(r.get("status"), r.get("error"))
    if row.get("error.type") == "Unfinished" and in_use(path.parent):  # its process holds it
        row["status"], row["error_reason"] = "running", RUNNING_REASON
    row["schema_note"] = NOTE_SEP.join(notes) or None
    return row, res.per_case_rows()


def _rel(path: Path, sweep_dir: Path) -> str:
    return path.relative_to(sweep_dir).as_posix() if path.is_relative_to(sweep_dir) else str(path)


def read_sweep(sweep_dir: Path) -> SweepRuns:
    """The runs of a sweep dir (see the module docstring): its plan's when it has one."""
    sweep_dir = Path(sweep_dir)
    files = find_result_files(sweep_dir)
    plan = sweep.read_plan(sweep_dir)
    if plan is None:
        return _runs([read_run(f, sweep_dir) for f in files])
    loaded, missing, planned = [], [], set()
    fingerprints: dict[tuple, dict | None] = {}
    for run in plan:
        path = sweep_dir / run["run_dir"] / result.FILENAME
        planned.add(os.path.realpath(path))
        if not path.exists():
            missing.append({"label": run["label"], "run_dir": _rel(sweep_dir / run["run_dir"], sweep_dir),
                            "group": run.get("group"), "backbone": run.get("backbone"),
                            "in_zoo": run.get("in_zoo")})
            continue
        row, per_case = read_run(path, sweep_dir)
        got = row.get("identity.hash")
        if run.get("identity") and isinstance(got, str) and got and got != run["identity"]:
            row["status"], row["error_reason"] = "failed", STALE_REASON
        elif row.get("status") == "ok" and data_changed(row, fingerprints):
            row["status"], row["error_reason"] = "failed", CHANGED_DATA_REASON
        loaded.append((row, per_case))
    ignored = [(_rel(f, sweep_dir), f"not a run of this sweep's plan ({sweep.FILENAME})")
               for f in files if os.path.realpath(f) not in planned]
    return _runs(loaded, plan, missing, ignored)


def data_changed(row: dict[str, Any], cache: dict[tuple, dict | None]) -> bool:
    """True when the dataset a finished run recorded is not the one at its dataset_dir now
    (checked against the folder as it is, not against the sweep's plan of earlier)."""
    recorded = {k.removeprefix("identity.dataset."): v for k, v in row.items()
                if k.startswith("identity.dataset.")}
    where = (row.get("config.dataset_dir"), row.get("config.split.scheme"), row.get("config.split.fold"))
    if not recorded or any(v is None or v != v for v in where):
        return False  # an old result without the record: the plan's identity check stands
    if where not in cache:
        cache[where] = dataset_fingerprint(where[0], where[1], int(where[2]))
    now = cache[where]
    return now is None or any(now.get(k) != v for k, v in recorded.items()) or set(now) != set(recorded)


def _runs(loaded: list[tuple[dict[str, Any], list[tuple]]], plan: list[dict[str, Any]] | None = None,
          missing: list[dict[str, Any]] | None = None, ignored: list[tuple[str, str]] | None = None) -> SweepRuns:
    """SweepRuns of the runs read_run read, their table sorted by backbone, schedule, fold, seed."""
    per_case = [(row["run_dir"], *r) for row, rows in loaded for r in rows]
    return SweepRuns(_frame([row for row, _ in loaded]), pd.DataFrame(per_case, columns=list(PER_CASE_COLUMNS)),
                     plan, missing or [], ignored or [])


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(LEAD_COLUMNS))
    for c in LEAD_COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = df[list(LEAD_COLUMNS) + [c for c in df.columns if c not in LEAD_COLUMNS]]
    keys = pd.DataFrame({
        "b": df["backbone"].map(backbone_order),
        "s": df["schedule"].map(schedule_order),
        "f": pd.to_numeric(df["dataset.fold"], errors="coerce").fillna(-1),
        "seed": pd.to_numeric(df["seed"], errors="coerce").fillna(-1),
        "d": df["run_dir"],
    })
    order = sorted(range(len(df)), key=lambda i: tuple(keys.iloc[i]))
    return df.iloc[order].reset_index(drop=True)
