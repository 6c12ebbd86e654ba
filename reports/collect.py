"""Collect a sweep's result.json files into one tidy DataFrame (one row per run).

Which runs: when the sweep dir holds ``sweep.json`` (the plan ``benchmark.sweep`` writes),
exactly its runs: a planned run with a result.json is a row (counted as failed when the
result's identity is not the plan's: another config or dataset), one without is MISSING,
and every other result.json under the sweep dir is ignored and listed. Without a plan:
every result.json below the sweep dir.

The DataFrame is the source of truth for every view: nested fields are flattened to
dotted column names (``metrics.segm.per_class.infection.AP``), lists become JSON text,
null stays missing. Runs describe themselves; folder names are never parsed (the run dir
is only recorded, relative to the sweep dir, so a reader can find the run).

Added columns (not in result.json): ``run_dir``, ``result_json`` (relative to the sweep
dir), ``schema_note`` (what best-effort reading had to assume), ``error_reason`` (one line),
and for results without a run identity (schema 1) ``identity.group`` computed from their config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from contracts.fsutil import in_use

from contracts.dataset import fingerprint as dataset_fingerprint
from contracts.identity import identity  # pure: the one rule for "same run"
from contracts.result import validate  # pure (no torch): the writer's own check of schema 1

from .schema import CLASSES, KNOWN_SCHEMAS, backbone_order, schedule_order

RESULT_NAME = "result.json"
#: Separator of the notes inside one ``schema_note`` cell.
NOTE_SEP = " | "
REPORT_DIRNAME = "report"
#: The sweep's plan (benchmark.sweep.SWEEP_FILE) and the owner-marker kind of a sweep dir.
PLAN_NAME = "sweep.json"
SWEEP_KIND = "sweep"
#: error_reason of a planned run whose result.json is another run's.
STALE_REASON = ("StaleResult: result.json is not this sweep's run (another config or dataset); "
                "not counted")
#: error_reason of a run whose dataset changed after it ran (rebuilt, or new source volumes).
CHANGED_DATA_REASON = ("StaleResult: its dataset changed after this run (rebuilt, or its source "
                       "volumes changed): not counted; run the sweep again")
#: error_reason of a run still training when the report was built (its folder's lock is held).
RUNNING_REASON = "Running: still training when this report was built"

#: Columns shown first in runs.csv; every other field follows in first-seen order.
LEAD_COLUMNS = (
    "backbone", "trunk", "head", "schedule", "weights", "dataset.fold", "seed", "status",
    "error_reason", "schema", "schema_note", "run_dir",
    "metrics.segm.AP", "metrics.segm.per_class.left_lung.AP",
    "metrics.segm.per_class.right_lung.AP", "metrics.segm.per_class.infection.AP",
    "metrics.bbox.AP",
)


class PlanError(ValueError):
    """The sweep's sweep.json exists but cannot be read as a plan."""


@dataclass
class SweepRuns:
    """What a report is built from: the runs table and, with a plan, what it left out."""
    df: pd.DataFrame
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
        if RESULT_NAME in files:
            out.append(Path(root) / RESULT_NAME)
    return sorted(out)


def latest_sweep(sweeps_root: Path) -> Path:
    """The sweep dir under ``sweeps_root`` whose newest result.json is the most recent.

    A sweep dir is a direct child of ``sweeps_root`` (or the root itself when it holds
    result.json files directly and has no sweep children).
    """
    sweeps_root = Path(sweeps_root)
    if not sweeps_root.is_dir():
        raise FileNotFoundError(f"sweeps root {sweeps_root} does not exist or is not a directory")
    best: tuple[float, str] | None = None
    for child in sorted(p for p in sweeps_root.iterdir() if p.is_dir()):
        files = find_result_files(child)
        if files:
            newest = max(f.stat().st_mtime for f in files)
            if best is None or newest > best[0]:
                best = (newest, str(child))
    if best is None:
        if find_result_files(sweeps_root):
            return sweeps_root
        raise FileNotFoundError(f"no sweep dir with a {RESULT_NAME} under {sweeps_root}")
    return Path(best[1])


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


def normalize(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Best-effort reading of any schema version; returns (result, notes on what was assumed).

    Schema 1 passes through unchanged apart from derived fields that are missing. For an
    older or unknown schema: backbone/trunk/head are derived from each other, detectron2's
    native per-class keys (``AP-left_lung``) are mapped to ``per_class``, and a missing
    status is inferred from the presence of metrics.
    """
    r = dict(raw)
    notes: list[str] = []
    schema = r.get("schema")
    if schema is None:
        notes.append("no 'schema' field (older than schema 1): read best effort")
    elif schema not in KNOWN_SCHEMAS:
        notes.append(f"schema {schema!r} is not one this report knows {list(KNOWN_SCHEMAS)}: read best effort")
    else:
        problems = validate(r)
        if problems:
            more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
            notes.append(f"does not match schema {schema}: {'; '.join(problems[:2])}{more}")

    trunk, head, backbone = r.get("trunk"), r.get("head"), r.get("backbone")
    if not backbone and trunk and head:
        r["backbone"] = f"{trunk}-{head}"
        notes.append("backbone derived from trunk and head")
    elif backbone and (not trunk or not head) and "-" in str(backbone):
        # The backbone *name* is data in result.json (never the folder name).
        t, h = str(backbone).split("-", 1)
        r["trunk"], r["head"] = trunk or t, head or h
        notes.append("trunk/head derived from the backbone name")
    if not r.get("backbone"):
        r["backbone"] = "unknown"
        notes.append("no backbone, trunk or head: listed as 'unknown'")

    metrics = r.get("metrics")
    if isinstance(metrics, dict):
        metrics = dict(metrics)
        for task in ("segm", "bbox"):
            t = metrics.get(task)
            if isinstance(t, dict) and "per_class" not in t:
                pc = {c: {"AP": t[f"AP-{c}"]} for c in CLASSES if f"AP-{c}" in t}
                if pc:
                    t = {k: v for k, v in t.items() if not k.startswith("AP-")}
                    t["per_class"] = pc
                    metrics[task] = t
                    notes.append(f"{task} per-class AP read from detectron2's 'AP-<class>' keys (no AP50/AP75)")
        r["metrics"] = metrics

    if not isinstance(r.get("identity"), dict) and isinstance(r.get("config"), dict):
        # no run identity recorded: the group from the config alone (the data are unknown)
        r["identity"] = {"hash": None, "group": identity(r["config"], None)["group"], "dataset": None}
        notes.append("no run identity (schema 1 or older): its group computed from its config")

    if "status" not in r:
        has = isinstance(metrics, dict) and isinstance(metrics.get("segm"), dict) and metrics["segm"].get("AP") is not None
        r["status"] = "ok" if has else "failed"
        notes.append(f"no 'status' field: taken as {r['status']!r} from the metrics")
    return r, notes


def load_run(path: Path, sweep_dir: Path) -> dict[str, Any]:
    """One flat row from one result.json. An unreadable file becomes a failed row saying why."""
    path, sweep_dir = Path(path), Path(sweep_dir)
    rel_dir = path.parent.relative_to(sweep_dir).as_posix() if path.is_relative_to(sweep_dir) else str(path.parent)
    meta = {"run_dir": rel_dir or ".", "result_json": (Path(rel_dir) / RESULT_NAME).as_posix()}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"top level is a {type(raw).__name__}, not an object")
    except (OSError, ValueError) as e:
        return {"backbone": "unknown", "status": "failed", "schema": None,
                "error_reason": f"unreadable {path}: {e}", "schema_note": "file could not be read", **meta}
    r, notes = normalize(raw)
    row = flatten(r)
    row.update(meta)
    row["error_reason"] = error_reason(r.get("status"), r.get("error"))
    if row.get("error.type") == "Unfinished" and in_use(path.parent):  # its process holds it
        row["status"], row["error_reason"] = "running", RUNNING_REASON
    row["schema_note"] = NOTE_SEP.join(notes) or None
    return row


def read_plan(sweep_dir: Path) -> list[dict[str, Any]] | None:
    """The runs of ``<sweep_dir>/sweep.json`` (run_dir relative to the sweep dir), or None
    when there is no plan. Raises PlanError when the file is there but is not a plan."""
    path = Path(sweep_dir) / PLAN_NAME
    if not path.exists():
        return None
    try:
        runs = json.loads(path.read_text()).get("runs")
    except (OSError, ValueError, AttributeError) as e:
        raise PlanError(f"{path}: cannot read the sweep's plan: {e}") from e
    if not isinstance(runs, list) or not all(isinstance(r, dict) and r.get("run_dir") for r in runs):
        raise PlanError(f"{path}: 'runs' is not a list of planned runs with a run_dir")
    return [{**r, "label": str(r.get("label") or r["run_dir"])} for r in runs]


def _rel(path: Path, sweep_dir: Path) -> str:
    return path.relative_to(sweep_dir).as_posix() if path.is_relative_to(sweep_dir) else str(path)


def read_sweep(sweep_dir: Path) -> SweepRuns:
    """The runs of a sweep dir (see the module docstring): its plan's when it has one."""
    sweep_dir = Path(sweep_dir)
    files = find_result_files(sweep_dir)
    plan = read_plan(sweep_dir)
    if plan is None:
        return SweepRuns(collect(sweep_dir, files))
    rows, missing, planned = [], [], set()
    fingerprints: dict[tuple, dict | None] = {}
    for run in plan:
        path = sweep_dir / run["run_dir"] / RESULT_NAME
        planned.add(os.path.realpath(path))
        if not path.exists():
            missing.append({"label": run["label"], "run_dir": _rel(sweep_dir / run["run_dir"], sweep_dir),
                            "group": run.get("group"), "backbone": run.get("backbone"),
                            "in_zoo": run.get("in_zoo")})
            continue
        row = load_run(path, sweep_dir)
        got = row.get("identity.hash")
        if run.get("identity") and isinstance(got, str) and got and got != run["identity"]:
            row["status"], row["error_reason"] = "failed", STALE_REASON
        elif row.get("status") == "ok" and data_changed(row, fingerprints):
            row["status"], row["error_reason"] = "failed", CHANGED_DATA_REASON
        rows.append(row)
    ignored = [(_rel(f, sweep_dir), f"not a run of this sweep's plan ({PLAN_NAME})")
               for f in files if os.path.realpath(f) not in planned]
    return SweepRuns(_frame(rows), plan, missing, ignored)


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


def collect(sweep_dir: Path, files: list[Path] | None = None) -> pd.DataFrame:
    """The tidy table, sorted by backbone, schedule, fold, seed: one row per run of the sweep's
    plan that has a result.json (see read_sweep), or, with ``files``, one row per file given."""
    sweep_dir = Path(sweep_dir)
    if files is None:
        return read_sweep(sweep_dir).df
    return _frame([load_run(f, sweep_dir) for f in files])


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
