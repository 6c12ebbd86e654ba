"""result.json (schema 4): the contract between benchmark/ (writer) and reports/ (reader).

One file per run at ``<run dir>/result.json``. AP values are COCO AP on a 0-100 scale,
Dice in [0, 1], times in seconds, memory in MiB, params in millions, FLOPs in GFLOPs
(1e9 multiply-adds as fvcore counts them). NaN and infinities are written as null.
docs/reference.md describes the sections; validate() checks what reports/ relies on.

This module is pure (no torch, no detectron2): reports/ and tests may import it.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from pathlib import Path
from typing import Any

from converters.catalog import CLASS_NAMES, HEADS, TRUNKS

SCHEMA = 4
# 2: adds ``identity`` {hash, group, dataset fingerprint} (benchmark.identity)
# 3: adds ``conversion`` (how new volumes are prepared: benchmark.predict) and, in an ok
#    result, ``metrics.volume3d`` (3-D Dice and NSD per test case on whole volumes, null when
#    the source volumes were not there) with each case's ``dice3d``/``nsd3d`` in ``per_case``
# 4: 3-D metrics also on the lungs as labelled (``dice3d_labelled``/``nsd3d_labelled``: labels
#    1 / 2 without the infection, as the dataset's benchmark scores them) and the whole-lung
#    Dice from every detection (``dice3d_all``), with ``volume3d.score_thresh_all``; per case,
#    the false positives on a case without that class (``fp_no_gt``, ``fp_no_gt_any``)
READABLE_SCHEMAS = (1, 2, 3, 4)
FILENAME = "result.json"
STATUSES = ("ok", "failed")
# TRUNKS, HEADS and the class names come from converters.catalog (re-exported here)
CLASSES = CLASS_NAMES
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PER_CLASS_KEYS = ("AP", "AP50", "AP75")

# Keys every result has, ok or failed (a failed one may hold null metrics/timing/memory/model).
REQUIRED = (
    "schema", "status", "error", "backbone", "trunk", "head", "in_zoo", "schedule", "weights",
    "experiment", "solver", "dataset", "seed", "metrics", "timing", "memory", "model", "env",
    "artifacts", "config", "started_at", "finished_at",
)


def sanitize(obj: Any) -> Any:
    """Return a JSON-safe copy of ``obj``: NaN/inf -> None, numpy scalars/arrays -> Python,
    tuples -> lists, Paths -> str. Dict keys become str."""
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    # numpy / torch scalars and arrays without importing them
    if hasattr(obj, "tolist"):
        return sanitize(obj.tolist())
    if hasattr(obj, "item"):
        return sanitize(obj.item())
    raise TypeError(f"result.json: cannot serialise {type(obj).__name__}: {obj!r}")


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``sanitize(data)`` as JSON to ``path`` via a temp file + rename (never half-written)."""
    from converters.fsutil import write_text  # pure: the project's one atomic writer

    return write_text(path, json.dumps(sanitize(data), indent=1, allow_nan=False) + "\n", fsync=True)


def write_result(run_dir: str | os.PathLike, result: dict) -> Path:
    """Write ``<run_dir>/result.json`` atomically. Returns its path."""
    return write_json_atomic(Path(run_dir) / FILENAME, result)


def read_result(run_dir: str | os.PathLike) -> dict | None:
    """The run's result.json as a dict, or None if there is none (or it is unreadable)."""
    path = Path(run_dir) / FILENAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def error_info(exc: BaseException, where: str) -> dict:
    """The ``error`` section for a failed run: type, message, where, traceback (text)."""
    return {
        "type": type(exc).__name__,
        "message": str(exc) or repr(exc),
        "where": where,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def validate(result: dict) -> list[str]:
    """Problems with ``result`` against schema 1 (empty list: valid). Checks the keys and
    types a reader relies on; an ``ok`` result must have full bbox/segm metrics per class."""
    problems: list[str] = []
    for key in REQUIRED:
        if key not in result:
            problems.append(f"missing key {key!r}")
    if problems:
        return problems
    if result["schema"] not in READABLE_SCHEMAS:
        problems.append(f"schema is {result['schema']!r}, expected one of {READABLE_SCHEMAS}")
    elif result["schema"] >= 2 and not isinstance(result.get("identity"), dict):
        problems.append("identity is not an object")
    if result["status"] not in STATUSES:
        problems.append(f"status {result['status']!r} not in {STATUSES}")
    if result["trunk"] not in TRUNKS:
        problems.append(f"trunk {result['trunk']!r} not in {TRUNKS}")
    if result["head"] not in HEADS:
        problems.append(f"head {result['head']!r} not in {HEADS}")
    if result["backbone"] != f"{result['trunk']}-{result['head']}":
        problems.append(f"backbone {result['backbone']!r} is not trunk-head")
    if result["schedule"] not in ("1x", "3x", None):
        problems.append(f"schedule {result['schedule']!r} not 1x/3x/null")
    for key in ("solver", "dataset", "config", "env", "artifacts"):
        if not isinstance(result[key], dict):
            problems.append(f"{key} is not an object")
    if result["status"] == "failed":
        err = result["error"]
        if not isinstance(err, dict) or not {"type", "message", "where"} <= set(err):
            problems.append("failed result needs error {type, message, where}")
        return problems
    if result["error"] is not None:
        problems.append("ok result has a non-null error")
    metrics = result["metrics"] or {}
    for task in ("bbox", "segm"):
        sec = metrics.get(task)
        if not isinstance(sec, dict):
            problems.append(f"metrics.{task} missing")
            continue
        for k in AP_KEYS:
            if k not in sec:
                problems.append(f"metrics.{task}.{k} missing")
        per_class = sec.get("per_class") or {}
        for cls in CLASSES:
            row = per_class.get(cls)
            if not isinstance(row, dict) or not set(PER_CLASS_KEYS) <= set(row):
                problems.append(f"metrics.{task}.per_class.{cls} missing AP/AP50/AP75")
                continue
            for k in PER_CLASS_KEYS:
                v = row[k]
                if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 100):
                    problems.append(f"metrics.{task}.per_class.{cls}.{k}={v!r} not in [0, 100]")
    if result["schema"] >= 3 and "volume3d" not in metrics:
        problems.append("metrics.volume3d missing (null when not computed)")
    for key in ("timing", "memory", "model"):
        if not isinstance(result[key], dict):
            problems.append(f"{key} is not an object")
    return problems
