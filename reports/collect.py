"""Collect every result.json under a sweep dir into one tidy DataFrame (one row per run).

The DataFrame is the source of truth for every view: nested fields are flattened to
dotted column names (``metrics.segm.per_class.infection.AP``), lists become JSON text,
null stays missing. Runs describe themselves; folder names are never parsed (the run dir
is only recorded, relative to the sweep dir, so a reader can find the run).

Added columns (not in result.json): ``run_dir``, ``result_json`` (relative to the sweep
dir), ``schema_note`` (what best-effort reading had to assume), ``error_reason`` (one line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.result import validate  # pure (no torch): the writer's own check of schema 1

from .schema import BACKBONES, CLASSES, KNOWN_SCHEMAS, NOT_IN_ZOO, backbone_order, schedule_order

RESULT_NAME = "result.json"
#: Separator of the notes inside one ``schema_note`` cell.
NOTE_SEP = " | "
REPORT_DIRNAME = "report"

#: Columns shown first in runs.csv; every other field follows in first-seen order.
LEAD_COLUMNS = (
    "backbone", "trunk", "head", "schedule", "weights", "dataset.fold", "seed", "status",
    "error_reason", "schema", "schema_note", "run_dir",
    "metrics.segm.AP", "metrics.segm.per_class.left_lung.AP",
    "metrics.segm.per_class.right_lung.AP", "metrics.segm.per_class.infection.AP",
    "metrics.bbox.AP",
)


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
    if "in_zoo" not in r and r["backbone"] in BACKBONES:
        r["in_zoo"] = r["backbone"] not in NOT_IN_ZOO

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
    row["schema_note"] = NOTE_SEP.join(notes) or None
    return row


def collect(sweep_dir: Path, files: list[Path] | None = None) -> pd.DataFrame:
    """The tidy table: one row per result.json under ``sweep_dir``, sorted by backbone, schedule, fold, seed."""
    sweep_dir = Path(sweep_dir)
    files = find_result_files(sweep_dir) if files is None else files
    rows = [load_run(f, sweep_dir) for f in files]
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
