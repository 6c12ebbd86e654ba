"""The classes and backbone cells of lungbench, defined once; every package reads them here.

Classes
-------
A class's COCO category ``id`` *is* its label value in the dataset's combined mask
(``Lung_and_Infection_Mask``): 1 ``left_lung``, 2 ``right_lung``, 3 ``infection``; 0 is
background. Left and right are the **patient's** sides, taken from the label value, never
from the side of the image they appear on (in the displayed slice the patient's left lung
lies on the image's right). The order of ``CLASSES`` is the category-id order; detectron2
sees the classes as the contiguous ids 0, 1, 2 in this order. ``name`` is the key used in
COCO files, result.json and every table; ``label`` is the text shown to readers;
``colour`` is the class's colour in every plot and overlay.

Backbones
---------
Three trunks times three heads: the nine cells ``"<trunk>-<head>"`` (``"R50-C4"`` ...), in
the canonical report order (trunk-major). Each cell's details live in
``conf/backbone/<cell>.yaml`` (``conf_name``), which also says whether detectron2's model
zoo has the cell (``in_zoo``); every run copies that flag into its result.json, so it is
not repeated here.

Standard library only (no numpy, torch or detectron2): converters, benchmark, reports and
tests all import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Class:
    """One class of the dataset (see the module docstring for the contract)."""

    id: int
    name: str
    label: str
    colour: str
    supercategory: str = "lung"

    @property
    def label_value(self) -> int:
        """The class's value in the combined mask: by contract, its category id."""
        return self.id


LEFT_LUNG = Class(1, "left_lung", "left lung", "#1f77b4")
RIGHT_LUNG = Class(2, "right_lung", "right lung", "#2ca02c")
INFECTION = Class(3, "infection", "infection", "#d62728")
#: All classes, in category-id order (1, 2, 3).
CLASSES: tuple[Class, ...] = (LEFT_LUNG, RIGHT_LUNG, INFECTION)
#: Label value of background in every mask.
BACKGROUND = 0

#: Class names in category-id order: ``("left_lung", "right_lung", "infection")``.
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
#: The two lungs (the patient's left, then right).
LUNG_CLASSES: tuple[str, ...] = (LEFT_LUNG.name, RIGHT_LUNG.name)
INFECTION_CLASS: str = INFECTION.name
#: Every value the combined mask may hold: background, then the class ids.
LABEL_VALUES: tuple[int, ...] = (BACKGROUND, *(c.label_value for c in CLASSES))
#: category id -> name, and name -> display text / colour.
NAME_BY_ID: dict[int, str] = {c.id: c.name for c in CLASSES}
CLASS_LABELS: dict[str, str] = {c.name: c.label for c in CLASSES}
CLASS_COLOURS: dict[str, str] = {c.name: c.colour for c in CLASSES}


def coco_categories() -> list[dict]:
    """The ``categories`` list of a COCO instances file (a fresh list each call)."""
    return [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in CLASSES]


TRUNKS: tuple[str, ...] = ("R50", "R101", "X101")
HEADS: tuple[str, ...] = ("C4", "DC5", "FPN")
#: The nine backbone cells every sweep is expected to cover, in report order.
BACKBONES: tuple[str, ...] = tuple(f"{t}-{h}" for t in TRUNKS for h in HEADS)


def conf_name(backbone: str) -> str:
    """Hydra option of a cell: ``"R50-C4"`` -> ``"r50_c4"`` (``conf/backbone/r50_c4.yaml``)."""
    return backbone.replace("-", "_").lower()
