"""result.json (schema 5): the contract between benchmark/ (writer) and reports/ (reader).

One file per run at ``<run dir>/result.json``. AP values are COCO AP on a 0-100 scale,
Dice in [0, 1], times in seconds, memory in MiB, params in millions, FLOPs in GFLOPs
(1e9 multiply-adds as fvcore counts them). NaN and infinities are written as null.
docs/reference.md describes the sections; validate() checks what reports/ relies on.

This module is pure (no torch, no detectron2): reports/ and tests may import it.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.catalog import CLASS_NAMES, HEADS, TRUNKS
from contracts.fsutil import write_json

SCHEMA = 5
# 2: adds ``identity`` {hash, group, dataset fingerprint} (contracts.identity)
# 3: adds ``conversion`` (how new volumes are prepared: benchmark.evaluation.apply) and, in an ok
#    result, ``metrics.volume3d`` (3-D Dice and NSD per test case on whole volumes, null when
#    the source volumes were not there) with each case's ``dice3d``/``nsd3d`` in ``per_case``
# 4: 3-D metrics also on the lungs as labelled (``dice3d_labelled``/``nsd3d_labelled``: labels
#    1 / 2 without the infection, as the dataset's benchmark scores them) and the whole-lung
#    Dice from every detection (``dice3d_all``), with ``volume3d.score_thresh_all``; per case,
#    the false positives on a case without that class (``fp_no_gt``, ``fp_no_gt_any``)
# 5: each case's 3-D numbers only in ``metrics.per_case`` (no ``metrics.volume3d.per_case``)
READABLE_SCHEMAS = (1, 2, 3, 4, 5)
FILENAME = "result.json"
STATUSES = ("ok", "failed")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PER_CLASS_KEYS = ("AP", "AP50", "AP75")

# Keys every result has, ok or failed (a failed one may hold null metrics/timing/memory/model).
REQUIRED = (
    "schema", "status", "error", "backbone", "trunk", "head", "in_zoo", "schedule", "weights",
    "experiment", "solver", "dataset", "seed", "metrics", "timing", "memory", "model", "env",
    "artifacts", "config", "started_at", "finished_at",
)


def write_result(run_dir: str | os.PathLike, result: dict) -> Path:
    """Write ``<run_dir>/result.json`` atomically (NaN -> null). Returns its path."""
    return write_json(Path(run_dir) / FILENAME, result)


class ResultUnreadable(ValueError):
    """A result.json that is there but is not a JSON object; the message names the file."""

    def __init__(self, path: Path, why: object):
        self.path = path
        super().__init__(f"unreadable {path}: {why}")


@dataclass(frozen=True)
class Result:
    """One run's result.json as written (``data``), with what ``validate`` found wrong."""

    path: Path
    data: dict[str, Any] = field(repr=False)
    problems: tuple[str, ...] = ()

    def per_case_rows(self) -> list[tuple[str, str, str, float]]:
        """Every per-case number as long rows (case, metric, class, value): result.json's
        ``metrics.per_case.<case>.<metric>.<class>`` for lungbench's classes; null values
        and non-numbers are left out."""
        per_case = (self.data.get("metrics") or {}).get("per_case")
        rows = []
        for case, metrics in (per_case if isinstance(per_case, dict) else {}).items():
            for metric, by_class in (metrics if isinstance(metrics, dict) else {}).items():
                for cls, value in (by_class if isinstance(by_class, dict) else {}).items():
                    if cls in CLASS_NAMES and isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append((str(case), str(metric), cls, float(value)))
        return rows


def load_result(path: str | os.PathLike) -> Result:
    """The result.json at ``path``, parsed once and checked (``Result.problems``). Raises
    ResultUnreadable when it cannot be read as a JSON object (FileNotFoundError when absent)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ResultUnreadable(path, e) from e
    if not isinstance(data, dict):
        raise ResultUnreadable(path, f"top level is a {type(data).__name__}, not an object")
    return Result(path, data, tuple(validate(data)))


def read_result(run_dir: str | os.PathLike) -> Result | None:
    """``<run_dir>/result.json`` (``load_result``), or None when the run has none."""
    try:
        return load_result(Path(run_dir) / FILENAME)
    except FileNotFoundError:
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
        for cls in CLASS_NAMES:
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
