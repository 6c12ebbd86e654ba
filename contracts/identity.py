"""What a run *is*: the one rule for "same run", "stale run" and "same group of runs".

A run is its config minus the keys that change neither what is trained nor what is scored
(HARMLESS), plus the dataset it reads: the manifest's config hash, the sha256 of its
train and test annotation files and the sha256 of every source volume the dataset was
converted from (new CT pixels under the same masks are other data). Two results with the same identity are the same run; a
finished run whose identity differs from what would run now is stale (the run refuses it,
the sweep reports it, the report never counts it). A group (one row of Table 3) is the
identity without the replicate axes, split fold and seed; a group cannot mix configs.

Pure (no torch, no detectron2): the run, the sweep planner and the reports all import it; a
dataset's fingerprint is contracts.dataset's (``Dataset.fingerprint``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Config keys that change neither what is trained nor what is scored: a run folder may be
# resumed or skipped with other values for them. Batched inference changes predictions by
# float round-off only; workers, GPU slots and packing are scheduling, not the run.
HARMLESS = ("keep_checkpoint", "measure", "solver.num_workers", "experiment", "dataset_name",
            "infer_batch_size", "jobs_per_gpu")
# The replicate axes: runs that differ only here are one group (averaged, tested paired).
REPLICATES = ("seed", "split.fold")


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _under(key: str, names: tuple[str, ...]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in names)


def _material(config: Any, drop: tuple[str, ...], prefix: str = "") -> Any:
    """``config`` without the (dotted) keys under ``drop``, keys sorted."""
    if not isinstance(config, dict):
        return config
    return {k: _material(v, drop, f"{prefix}{k}.") for k, v in sorted(config.items())
            if not _under(f"{prefix}{k}", drop)}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(config: dict, fingerprint: dict | None) -> dict:
    """``{"hash", "group", "dataset"}``: the run's identity and its group's (see module)."""
    drop_run = HARMLESS + ("dataset_dir",)  # where the dataset lies is not what it is: its fingerprint says that
    group_fp = {"config_hash": (fingerprint or {}).get("config_hash")}
    return {"hash": _sha({"config": _material(config, drop_run), "dataset": fingerprint}),
            "group": _sha({"config": _material(config, drop_run + REPLICATES), "dataset": group_fp}),
            "dataset": fingerprint}


def stale_reasons(prev: dict, config: dict, fingerprint: dict | None) -> list[str]:
    """Why the recorded result ``prev`` is not the run ``config`` on this dataset ([] = same).

    Config keys that differ (beyond HARMLESS; where the dataset lies does not count), and
    ``dataset`` when the data differ or the result does not record which data it used."""
    diff = [k for k in config_diff(prev.get("config"), config) if not _under(k, HARMLESS + ("dataset_dir",))]
    old_fp = (prev.get("identity") or {}).get("dataset")
    if old_fp is None or old_fp != fingerprint:
        diff.append("dataset (rebuilt or another one)" if old_fp else
                    "dataset (the result does not record which data it used)")
    return diff
