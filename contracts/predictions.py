"""predictions.json: what made a ``make predict`` output folder (writer: benchmark.evaluation.apply).

``<OUT>/predictions.json`` sits beside the label volumes (``<case>.nii.gz``) and volumes.csv:
the run folder and its identity hash, the backbone, the score threshold, the conversion settings
the volumes were prepared with (the run's, from its result.json), the label values (voxel value
-> class name), the rule for overlapping instances and the input files, in order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from contracts.fsutil import write_json

FILENAME = "predictions.json"
SCHEMA = 1


class PredictionsUnreadable(ValueError):
    """A predictions.json that cannot be read as this schema; the message names the file."""


def write_predictions(out_dir: str | os.PathLike, *, run_dir: str, backbone: str | None,
                      identity: str | None, score_thresh: float, conversion: dict,
                      labels: dict[str, str], overlap_rule: str, inputs: list[str]) -> Path:
    """``<out_dir>/predictions.json`` (temp file, then rename). Returns its path."""
    return write_json(Path(out_dir) / FILENAME, {
        "schema": SCHEMA, "run_dir": run_dir, "backbone": backbone, "identity": identity,
        "score_thresh": score_thresh, "conversion": conversion, "labels": labels,
        "overlap_rule": overlap_rule, "inputs": inputs})


def read_predictions(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``<out_dir>/predictions.json`` as written; PredictionsUnreadable names the file."""
    path = Path(out_dir) / FILENAME
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PredictionsUnreadable(f"{path}: unreadable ({e})") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise PredictionsUnreadable(f"{path}: not a predictions.json of schema {SCHEMA}")
    return doc
