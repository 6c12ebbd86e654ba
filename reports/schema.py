"""What the report builder knows about result.json (written by benchmark/, read here).

Only constants and small pure helpers: no I/O, no heavy imports.
"""

from __future__ import annotations

#: result.json schema versions this reader understands fully.
KNOWN_SCHEMAS = (1, 2)

TRUNKS = ("R50", "R101", "X101")
HEADS = ("C4", "DC5", "FPN")
#: The nine backbones every sweep is expected to cover, in report order.
BACKBONES = tuple(f"{t}-{h}" for t in TRUNKS for h in HEADS)
#: Backbones derived by us, absent from detectron2's model zoo.
NOT_IN_ZOO = ("X101-C4", "X101-DC5")
SCHEDULES = ("1x", "3x")

#: COCO category ids 1..3, in this order.
CLASSES = ("left_lung", "right_lung", "infection")
CLASS_LABELS = {"left_lung": "left lung", "right_lung": "right lung", "infection": "infection"}
#: Colours used in every plot (colour-blind friendly: blue, orange/green, red-purple).
CLASS_COLORS = {"left_lung": "#1f77b4", "right_lung": "#2ca02c", "infection": "#d62728"}
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
