"""The backbone groups of a runs table: which runs are averaged, and tested paired, together.

A group is backbone, schedule, every non-replicate axis that varies within the sweep
(VARYING_GROUP_KEYS) and the run identity's group hash (contracts.identity: runs of another
config or dataset are another group); its runs differ only in fold and seed. ``Groups.of``
computes them once per report, in report order (the nine backbones first, 1x before 3x), each
with a label distinct within the table; every table, plot and test takes that one ``Groups``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import pandas as pd

from contracts.catalog import BACKBONES
from contracts.identity import HARMLESS, REPLICATES

#: The run identity's group hash (contracts.identity): runs of one group differ only in fold/seed.
GROUP_COL = "identity.group"
#: The schedules of detectron2's zoo, in report order.
SCHEDULES = ("1x", "3x")
#: Axes that are replicates (averaged over in the aggregated views).
REPLICATE_KEYS = ("dataset.fold", "seed")
#: Axes that, when they vary inside one sweep, split the aggregated rows further
#: (averaging zoo-initialised with scratch runs would mix two experiments).
VARYING_GROUP_KEYS = ("weights", "solver.name", "solver.amp", "dataset.name", "dataset.split",
                      "experiment")
#: result.json's ``weights`` of a run trained from random init
SCRATCH = "scratch"
#: Config keys that never tell two groups apart in a label (not what is trained or scored,
#: or the replicate axes, which every group spans).
_LABEL_SKIP = HARMLESS + REPLICATES + ("dataset_dir",)
#: At most this many differing config keys are spelled out in a label.
_LABEL_KEYS = 3


def backbone_order(name: object) -> tuple[int, str]:
    """Sort key: the nine in canonical order first, anything else after, alphabetically."""
    s = str(name)
    return (BACKBONES.index(s), s) if s in BACKBONES else (len(BACKBONES), s)


def schedule_order(s: object) -> tuple[int, str]:
    """Sort key: 1x, 3x, then anything else (null last)."""
    if isinstance(s, str) and s in SCHEDULES:
        return (SCHEDULES.index(s), s)
    return (len(SCHEDULES) + (0 if isinstance(s, str) else 1), str(s))


def norm(v: Any) -> Any:
    """Grouping value: NaN and None both become None."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"]


def group_keys(df: pd.DataFrame) -> list[str]:
    """backbone, schedule, every non-replicate axis that varies within this sweep, and the
    run identity's group hash (runs of another config or dataset are another group)."""
    keys = ["backbone", "schedule"]
    for k in VARYING_GROUP_KEYS:
        # null does not count as a value: a run that failed early may lack e.g. dataset.name
        if k in df.columns and len({norm(v) for v in df[k]} - {None}) > 1:
            keys.append(k)
    if GROUP_COL in df.columns:
        keys.append(GROUP_COL)
    return keys


@dataclass(frozen=True)
class Groups:
    """The groups of one runs table ``df``: ``items`` are (key, rows) in report order; a key
    holds the ``keys`` columns' values (NaN as None), ``weights`` for a group trained from
    scratch, and ``label``: the group's name for readers, distinct within ``df``."""
    df: pd.DataFrame
    keys: list[str]
    items: list[tuple[dict[str, Any], pd.DataFrame]]

    @classmethod
    def of(cls, df: pd.DataFrame) -> Groups:
        keys = group_keys(df)
        if df.empty:
            return cls(df, keys, [])
        tuples = [tuple(norm(v) for v in row) for row in df[keys].itertuples(index=False, name=None)]
        index: dict[tuple, list[int]] = {}
        for i, t in enumerate(tuples):
            index.setdefault(t, []).append(i)
        groups = [(dict(zip(keys, t)), df.iloc[rows]) for t, rows in index.items()]
        for key, rows in groups:
            # a group trained from scratch has no schedule: its label names the weights instead
            if "weights" not in key and "weights" in rows.columns and {
                    w for w in rows["weights"] if isinstance(w, str)} == {SCRATCH}:
                key["weights"] = SCRATCH
        for (key, _), label in zip(groups, _distinct_labels(groups)):
            key["label"] = label

        def order(item: tuple[dict[str, Any], pd.DataFrame]) -> tuple:
            key = item[0]
            rest = [str(v) for k, v in key.items() if k not in ("backbone", "schedule", GROUP_COL, "label")]
            return (backbone_order(key["backbone"]), schedule_order(key["schedule"]), *rest, key["label"])

        return cls(df, keys, sorted(groups, key=order))

    def __iter__(self) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
        return iter(self.items)

    def with_ok_runs(self) -> list[tuple[dict[str, Any], pd.DataFrame]]:
        """(key, ok rows) of the groups with at least one ok run, in report order."""
        return [(key, ok) for key, rows in self.items if not (ok := ok_rows(rows)).empty]


def is_scratch(key: dict[str, Any]) -> bool:
    """Whether a group key (Groups) is of runs trained from scratch (no zoo schedule)."""
    return key.get("weights") == SCRATCH


def _label_parts(key: dict[str, Any]) -> tuple[str, list[str]]:
    """('R50-FPN 3x', ['AMP', 'imagenet']): the backbone+schedule and the varying axes' values;
    ('R50-FPN scratch', [...]) for runs trained from scratch: a schedule names a zoo checkpoint's
    training, which such a run does not have."""
    scratch = is_scratch(key)
    head = str(key["backbone"]) + (f" {SCRATCH}" if scratch else f" {key['schedule']}" if key.get("schedule") else "")
    extra = [("AMP" if v else "fp32") if k == "solver.amp" else str(v) for k, v in key.items()
             if k not in ("backbone", "schedule", GROUP_COL, "label") and v is not None
             and not (k == "weights" and scratch)]
    return head, extra


def _label(head: str, extra: list[str]) -> str:
    return head + (f" ({', '.join(extra)})" if extra else "")


def _value(v: Any) -> str:
    v = norm(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "null" if v is None else str(v)


def _group_value(rows: pd.DataFrame, col: str) -> str:
    vals = sorted({_value(v) for v in rows[col]} - {"null"}) if col in rows.columns else []
    return "|".join(vals) or "null"


def _config_diff(frames: list[pd.DataFrame]) -> list[list[str]]:
    """Per group, ``key=value`` of the config keys whose values differ between the groups
    (flattened ``config.*`` columns; then the dataset, which the group hash also covers)."""
    cols = sorted({c for g in frames for c in g.columns if c.startswith("config.")
                   and not any(c[7:] == k or c[7:].startswith(k + ".") for k in _LABEL_SKIP)})
    cols.append("identity.dataset.config_hash")
    values = {c: [_group_value(g, c) for g in frames] for c in cols}
    differ = [c for c in cols if len(set(values[c])) > 1]
    shown = differ[:_LABEL_KEYS]
    more = [f"+{len(differ) - len(shown)} more"] if len(differ) > len(shown) else []
    name = {c: "dataset" if c == "identity.dataset.config_hash" else c.removeprefix("config.") for c in shown}
    def val(c: str, i: int) -> str:
        return values[c][i][:8] if name[c] == "dataset" and values[c][i] != "null" else values[c][i]
    return [[f"{name[c]}={val(c, i)}" for c in shown] + more for i in range(len(frames))]


def _distinct_labels(groups: list[tuple[dict[str, Any], pd.DataFrame]]) -> list[str]:
    """Today's labels ('R50-FPN 3x (imagenet)', 'R50-FPN scratch'); groups that would share one get the config
    keys that differ between them appended ('R50-FPN 3x (solver.base_lr=0.01)'), and, should
    that not tell them apart, their group hash."""
    parts = [_label_parts(k) for k, _ in groups]
    labels = [_label(h, e) for h, e in parts]
    for base in {x for x in labels if labels.count(x) > 1}:
        idx = [i for i, x in enumerate(labels) if x == base]
        for i, diff in zip(idx, _config_diff([groups[i][1] for i in idx])):
            labels[i] = _label(parts[i][0], parts[i][1] + diff)
    for dup in {x for x in labels if labels.count(x) > 1}:
        for i in [i for i, x in enumerate(labels) if x == dup]:
            h = groups[i][0].get(GROUP_COL)
            labels[i] = _label(parts[i][0], parts[i][1] + [f"group {str(h)[:8] if h else 'unknown'}"])
    return labels


def group_label(key: dict[str, Any]) -> str:
    """'R50-FPN 3x' plus the values of any other varying axis, e.g. 'R50-FPN 3x (AMP)', and
    'R50-FPN scratch' for runs trained from scratch;
    for a key from Groups, the label it chose (distinct within its table)."""
    return key.get("label") or _label(*_label_parts(key))
