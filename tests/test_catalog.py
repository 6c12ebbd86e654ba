"""contracts.catalog: the one definition of the classes and backbone cells, and everything
that must agree with it (backbone configs, the converter's COCO categories, the packaged
dataset facts, the benchmark and the reports). Fast: nothing trains, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from contracts import catalog

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_CONF = ROOT / "conf" / "backbone"
FACTS = ROOT / "converters" / "covid19_ct_seg.json"


def backbone_configs() -> dict[str, dict]:
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted(BACKBONE_CONF.glob("*.yaml"))}


# ----------------------------------------------------------------------------- the module itself
def test_catalog_imports_with_the_standard_library_alone():
    """A fresh interpreter where torch, numpy and detectron2 cannot be imported still reads it."""
    code = ("import sys\n"
            "for m in ('torch', 'numpy', 'detectron2', 'pandas', 'omegaconf'):\n"
            "    sys.modules[m] = None\n"
            "from contracts import catalog\n"
            "print(catalog.CLASS_NAMES, len(catalog.BACKBONES))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('left_lung', 'right_lung', 'infection') 9"


def test_class_contract():
    assert [c.id for c in catalog.CLASSES] == [1, 2, 3]
    assert catalog.CLASS_NAMES == ("left_lung", "right_lung", "infection")
    assert all(c.label_value == c.id for c in catalog.CLASSES)
    assert catalog.LABEL_VALUES == (0, 1, 2, 3) and catalog.BACKGROUND == 0
    assert catalog.NAME_BY_ID == {1: "left_lung", 2: "right_lung", 3: "infection"}
    assert catalog.LUNG_CLASSES == ("left_lung", "right_lung") and catalog.INFECTION_CLASS == "infection"
    assert catalog.CLASS_LABELS == {"left_lung": "left lung", "right_lung": "right lung", "infection": "infection"}
    assert len(set(catalog.CLASS_COLOURS.values())) == 3
    assert all(c.startswith("#") and len(c) == 7 for c in catalog.CLASS_COLOURS.values())
    cats = catalog.coco_categories()
    assert cats == [{"id": 1, "name": "left_lung", "supercategory": "lung"},
                    {"id": 2, "name": "right_lung", "supercategory": "lung"},
                    {"id": 3, "name": "infection", "supercategory": "lung"}]
    cats.clear()  # a fresh list each call: no caller can change another's
    assert len(catalog.coco_categories()) == 3


def test_backbones_in_report_order():
    assert catalog.BACKBONES == ("R50-C4", "R50-DC5", "R50-FPN", "R101-C4", "R101-DC5", "R101-FPN",
                                 "X101-C4", "X101-DC5", "X101-FPN")
    assert catalog.conf_name("X101-DC5") == "x101_dc5"


# ----------------------------------------------------------------------------- backbone configs
def test_backbone_configs_are_the_catalogs_nine_cells():
    confs = backbone_configs()
    assert sorted(confs) == sorted(catalog.conf_name(b) for b in catalog.BACKBONES)
    for b in catalog.BACKBONES:
        c = confs[catalog.conf_name(b)]
        assert c["name"] == b
        assert (c["trunk"], c["head"]) == tuple(b.split("-"))
        assert c["trunk"] in catalog.TRUNKS and c["head"] in catalog.HEADS
        assert isinstance(c["in_zoo"], bool), b


def test_synthetic_results_take_in_zoo_from_the_configs():
    """The synthetic results take in_zoo from conf/backbone; the reports keep no list of their own."""
    import reports.tables
    from tests.synthetic import in_zoo, make_result

    confs = backbone_configs()
    assert not hasattr(reports.tables, "NOT_IN_ZOO")
    for b in catalog.BACKBONES:
        assert in_zoo(b) is confs[catalog.conf_name(b)]["in_zoo"]
        assert make_result(b)["in_zoo"] is confs[catalog.conf_name(b)]["in_zoo"]
    assert in_zoo("R18-FPN") is None  # no config: unknown


# ----------------------------------------------------------------------------- other packages
def test_every_package_uses_the_catalog():
    import benchmark.evaluation.metrics
    import contracts.result
    import converters.case
    import converters.instances
    import reports.groups
    import reports.plots

    names = catalog.CLASS_NAMES
    assert converters.instances.CATEGORIES == catalog.coco_categories()
    assert converters.instances.CLASSES == [{"id": c.id, "name": c.name, "label_value": c.id}
                                            for c in catalog.CLASSES]
    assert converters.case.CLASS_NAMES == catalog.NAME_BY_ID
    assert contracts.result.CLASS_NAMES == reports.plots.CLASS_NAMES == names
    assert (contracts.result.TRUNKS, contracts.result.HEADS) == (catalog.TRUNKS, catalog.HEADS)
    assert (reports.plots.TRUNKS, reports.plots.HEADS) == (catalog.TRUNKS, catalog.HEADS)
    assert reports.groups.BACKBONES == catalog.BACKBONES
    assert reports.plots.CLASS_LABELS == catalog.CLASS_LABELS
    assert reports.plots.CLASS_COLOURS == catalog.CLASS_COLOURS
    assert benchmark.evaluation.metrics.LUNG_CLASSES == catalog.LUNG_CLASSES
    assert benchmark.evaluation.metrics.INFECTION_CLASS == catalog.INFECTION_CLASS


def test_summary_line_names_the_catalogs_classes():
    from benchmark.training.logs import summary_line

    res = {"backbone": "R50-FPN", "status": "ok",
           "metrics": {"segm": {"per_class": {c.name: {"AP": float(c.id)} for c in catalog.CLASSES}}}}
    assert summary_line(res) == "R50-FPN  ok  segm AP  left lung 1.0  right lung 2.0  infection 3.0"


def test_dataset_label_maps_agree_with_the_catalog():
    facts = FACTS
    files = json.loads(facts.read_text())["files"]
    ids = {str(k): v for k, v in catalog.NAME_BY_ID.items()}
    # the combined mask: label value = category id
    assert files["Lung_and_Infection_Mask.zip"]["labels"] == ids
    # the separate masks: the lungs keep their values, infection is 1 in its own file
    assert files["Lung_Mask.zip"]["labels"] == {k: v for k, v in ids.items() if v in catalog.LUNG_CLASSES}
    assert files["Infection_Mask.zip"]["labels"] == {"1": catalog.INFECTION_CLASS}
    refs = json.loads(facts.read_text())["reference_results"]
    assert set(refs["paper_gaikwad_joshi_2020"]["table2_r50_fpn"]) == set(catalog.CLASS_NAMES)
    assert {b for b, _ in refs["paper_gaikwad_joshi_2020"]["table3"]} <= set(catalog.BACKBONES)


def test_converted_dataset_uses_the_catalog(tiny_dataset):
    coco = json.loads((tiny_dataset / "annotations" / "patient_kfold_f0_test.json").read_text())
    assert coco["categories"] == catalog.coco_categories()
    assert {a["category_id"] for a in coco["annotations"]} <= set(catalog.NAME_BY_ID)
    meta = json.loads((tiny_dataset / "dataset.json").read_text())
    for case in meta["cases"]:
        assert tuple(case["instances"]) == catalog.CLASS_NAMES
        assert tuple(case["voxels"]) == catalog.CLASS_NAMES


# ----------------------------------------------------------------------------- in_zoo in reports
def _table3(tmp_path: Path, results: list[dict]):
    from reports import build, tables
    from tests.synthetic import write_run

    for i, r in enumerate(results):
        write_run(tmp_path / f"run_{i:03d}", r, artifacts=False)
    analysis = build.analyse(tmp_path)
    return tables.table3(analysis.groups, analysis.comparison).set_index("backbone")


def test_reports_take_in_zoo_from_result_json(tmp_path):
    """"not in zoo" follows each run's in_zoo field, not a list of backbone names."""
    from tests.synthetic import make_result

    derived = make_result("R50-FPN")
    derived["in_zoo"] = False  # e.g. a cell rebuilt from another config
    zoo_x101 = make_result("X101-C4")
    zoo_x101["in_zoo"] = True
    unknown = make_result("R18-FPN")
    assert unknown["in_zoo"] is None
    t3 = _table3(tmp_path, [derived, zoo_x101, unknown])
    assert t3.at["R50-FPN", "in_zoo"] == False  # noqa: E712 (numpy bool)
    assert "not in zoo" in _note(t3, "R50-FPN")
    assert t3.at["X101-C4", "in_zoo"] == True  # noqa: E712
    assert "not in zoo" not in _note(t3, "X101-C4")
    # unknown: nothing rendered, neither a flag nor a note
    assert pd_isna(t3.at["R18-FPN", "in_zoo"])
    assert "zoo" not in _note(t3, "R18-FPN")
    # no plan: the runs found are what was expected; a cell nobody ran is no MISSING row, and
    # the paper's rows stay as the paper's
    assert "X101-DC5" not in t3.index
    assert bool(t3.at["R101-FPN", "paper_only"]) and "zoo" not in _note(t3, "R101-FPN")
    assert "MISSING" not in " ".join(_note(t3, b) for b in t3.index)


def pd_isna(v) -> bool:
    import pandas as pd

    return bool(pd.isna(v))


def _note(t3, backbone: str) -> str:
    """A Table 3 row's note ('' where it has none: NaN in the frame)."""
    v = t3.at[backbone, "note"]
    return v if isinstance(v, str) else ""
