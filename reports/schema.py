"""What the report builder knows about result.json (written by benchmark/, read here).

Only constants and small pure helpers: no I/O, no heavy imports.
"""

from __future__ import annotations

# Trunks, heads, the nine backbones (report order) and the classes come from
# contracts.catalog, re-exported here under the names the report code uses.
from contracts.catalog import BACKBONES, CLASS_LABELS, HEADS, TRUNKS
from contracts.catalog import CLASS_COLOURS as CLASS_COLORS
from contracts.catalog import CLASS_NAMES as CLASSES

#: result.json schema versions this reader understands fully.
KNOWN_SCHEMAS = (1, 2, 3, 4)

# Whether a cell is in detectron2's model zoo is read from each result.json's ``in_zoo`` (and
# for a planned run without one, from sweep.json), copied there from conf/backbone/<cell>.yaml.
SCHEDULES = ("1x", "3x")

TASKS = ("segm", "bbox")
AP_METRICS = ("AP", "AP50", "AP75")

#: Axes that are replicates (averaged over in the aggregated views).
REPLICATE_KEYS = ("dataset.fold", "seed")
#: Axes that, when they vary inside one sweep, split the aggregated rows further
#: (averaging zoo-initialised with scratch runs would mix two experiments).
VARYING_GROUP_KEYS = ("weights", "solver.name", "solver.amp", "dataset.name", "dataset.split",
                      "experiment")


def backbone_order(name: object) -> tuple[int, str]:
    """Sort key: the nine in canonical order first, anything else after, alphabetically."""
    s = str(name)
    return (BACKBONES.index(s), s) if s in BACKBONES else (len(BACKBONES), s)


def schedule_order(s: object) -> tuple[int, str]:
    """Sort key: 1x, 3x, then anything else (null last)."""
    if isinstance(s, str) and s in SCHEDULES:
        return (SCHEDULES.index(s), s)
    return (len(SCHEDULES) + (0 if isinstance(s, str) else 1), str(s))
