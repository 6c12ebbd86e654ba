"""sweep.json: a sweep's plan and how its runs ended (writer: benchmark.sweeping.runner; read here only).

``<sweep dir>/sweep.json`` lists every run the sweep planned, in order, whether or not it wrote
a result.json: ``label`` (its folder name), ``run_dir`` (relative to the sweep dir), the Hydra
``overrides`` of the job, ``status`` (ok | failed | missing, as the sweep saw it) and ``error``,
the run's ``identity`` and ``group`` hashes (contracts.identity), and its ``backbone`` and
``in_zoo`` (what a report shows for a planned run that never wrote a result.json). The sweep
dir is a lungbench folder of owner-marker kind ``KIND``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from contracts.fsutil import write_text

FILENAME = "sweep.json"
#: 2: each run's identity and group hash; 3: its backbone, in_zoo
SCHEMA = 3
#: the owner-marker kind of a sweep dir
KIND = "sweep"
#: the keys of one planned run, in the order they are written
RUN_KEYS = ("label", "run_dir", "overrides", "status", "error", "identity", "group", "backbone", "in_zoo")


class PlanError(ValueError):
    """The sweep's sweep.json exists but cannot be read as a plan."""


def write_plan(sweep_dir: str | os.PathLike, runs: list[dict[str, Any]], *, overrides: list[str],
               hydra_exit_code: int | None, summary: str) -> Path:
    """``<sweep_dir>/sweep.json`` (temp file, then rename): ``runs`` are dicts with RUN_KEYS
    (``run_dir`` relative to the sweep dir). Returns its path."""
    doc = {"schema": SCHEMA, "sweep_dir": str(sweep_dir), "overrides": list(overrides),
           "hydra_exit_code": hydra_exit_code, "summary": summary,
           "runs": [{k: r.get(k) for k in RUN_KEYS} for r in runs]}
    return write_text(Path(sweep_dir) / FILENAME, json.dumps(doc, indent=1) + "\n")


def read_plan(sweep_dir: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The planned runs of ``<sweep_dir>/sweep.json`` (``label`` filled in from ``run_dir``
    where empty), or None when there is no plan. PlanError when the file is there but is not
    a plan."""
    path = Path(sweep_dir) / FILENAME
    if not path.exists():
        return None
    try:
        runs = json.loads(path.read_text()).get("runs")
    except (OSError, ValueError, AttributeError) as e:
        raise PlanError(f"{path}: cannot read the sweep's plan: {e}") from e
    if not isinstance(runs, list) or not all(isinstance(r, dict) and r.get("run_dir") for r in runs):
        raise PlanError(f"{path}: 'runs' is not a list of planned runs with a run_dir")
    return [{**r, "label": str(r.get("label") or r["run_dir"])} for r in runs]
