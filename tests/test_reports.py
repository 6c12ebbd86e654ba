"""reports/: synthetic result.json sweeps -> runs.csv, per_class_ap.csv, table3.csv/.md, PNGs, report.html."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from contracts import fsutil
from contracts.catalog import BACKBONES, CLASS_NAMES
from contracts.result import READABLE_SCHEMAS
from reports import build, collect, overlays, tables
from reports.groups import group_label
from tests import synthetic
from tests.synthetic import make_result, write_plan, write_run

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "covid19_ct_seg.json"


@dataclass
class Table:
    """One <table> of the page: its (last) header row, each body row as {header: cell text}, and
    each body row's class attribute ('' where it has none)."""
    head: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def by(self, col: str) -> dict[str, dict[str, str]]:
        return {r[col]: r for r in self.rows}


class Page(HTMLParser):
    """report.html read back as a reader sees it: the text of each element with an id (``text``),
    each table with an id (``tables``), and each <h2> section, named by the h2's id or else its
    text, up to the next <h2>: its text and the titles of its <h3>s (``sections``)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.texts: dict[str, list[str]] = {}
        self.tables: dict[str, Table] = {}
        self.sections: dict[str, dict] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of every open element
        self._table: Table | None = None
        self._part = ""  # thead | tbody
        self._row: list[str] | None = None
        self._row_class = ""
        self._cell: list[str] | None = None
        self._section: dict | None = None
        self._h: list[str] | None = None  # text of the open h2/h3
        self._h_tag = ""
        self._h_id: str | None = None
        self.feed(html)
        self.close()

    def text(self, element_id: str) -> str:
        """The element's text, whitespace collapsed (KeyError where no element has that id)."""
        return " ".join("".join(self.texts[element_id]).split())

    def table(self, table_id: str) -> Table:
        return self.tables[table_id]

    def section(self, name: str) -> dict:
        return self.sections[name]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self._open.append((tag, a.get("id")))
            if a.get("id"):
                self.texts.setdefault(a["id"], [])
        if tag == "table" and a.get("id"):
            self._table = self.tables[a["id"]] = Table()
        elif self._table is not None and tag in ("thead", "tbody"):
            self._part = tag
        elif self._table is not None and tag == "tr":
            self._row, self._row_class = [], a.get("class") or ""
        elif self._row is not None and tag in ("td", "th"):
            self._cell = []
        elif tag in ("h2", "h3"):
            self._h, self._h_tag, self._h_id = [], tag, a.get("id")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self._open:
            if self._open.pop()[0] == tag:
                break
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            t = self._table
            if self._part == "thead":
                t.head = self._row
            else:
                t.rows.append(dict(zip(t.head, self._row)))
                t.classes.append(self._row_class)
            self._row = None
        elif tag == "table" and self._table is not None:
            self._table = None
        elif tag == "h2" and self._h is not None:
            title = " ".join("".join(self._h).split())
            self._section = self.sections[self._h_id or title] = {"title": title, "h3": [], "text": []}
            self._h, self._h_tag = None, ""
        elif tag == "h3" and self._h is not None:
            if self._section is not None:
                self._section["h3"].append(" ".join("".join(self._h).split()))
            self._h, self._h_tag = None, ""

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.texts[element_id].append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._h is not None:
            self._h.append(data)
        if self._section is not None and self._h_tag != "h2":
            self._section["text"].append(data)


def section_text(page: Page, name: str) -> str:
    """A section's text, its text pieces (cells, headings, paragraphs) joined by one space."""
    return " ".join(" ".join(page.section(name)["text"]).split())


def md_table(md: str) -> list[dict[str, str]]:
    """The first Markdown table of ``md`` as rows of {header: cell}."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    head, body = split[0], [r for r in split[1:] if set(r) != {"---"}]
    return [dict(zip(head, r)) for r in body]


def table3(sweep_dir: Path) -> pd.DataFrame:
    """Table 3 of the runs below ``sweep_dir``."""
    a = build.analyse(sweep_dir)
    return tables.table3(a.groups, a.comparison)


def mark_sweep(folder: Path) -> Path:
    """Make ``folder`` a lungbench sweep (what `make sweep` leaves): the report refuses others."""
    fsutil.claim(folder, "sweep", "SWEEP_DIR")
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_dataset):
    """Nine backbones x folds 0, 1 planned (sweep.json), X101-DC5's never written (MISSING);
    R101-C4 fold 1 failed; X101-FPN fold 1 written without a key of its schema. Run dirs are opaque and
    one is misleadingly named. The test set is the converter's own output (the tiny phantom);
    predictions are its masks, shifted."""
    tmp = tmp_path_factory.mktemp("reports")
    data = tiny_dataset
    test_ann = data / "annotations" / "patient_kfold_f0_test.json"
    sweep_dir = mark_sweep(tmp / "sweep")
    results = {}
    planned = [(f"multirun/X101-DC5_f{fold}", make_result("X101-DC5", fold=fold, dataset_dir=str(data),
                                                          test_annotations=str(test_ann)))
               for fold in (0, 1)]
    i = 0
    for b in BACKBONES:
        if b == "X101-DC5":
            continue
        for fold in (0, 1):
            status = "failed" if (b == "R101-C4" and fold == 1) else "ok"
            r = make_result(b, fold=fold, status=status, dataset_dir=str(data), test_annotations=str(test_ann),
                            error={"type": "RuntimeError", "message": "CUDA out of memory (synthetic)",
                                   "where": "train iter 7"} if status == "failed" else None)
            results[b, fold] = r
            if b == "X101-FPN" and fold == 1:
                r = {k: v for k, v in r.items() if k != "finished_at"}
            # A folder name that lies about its content: the report must not read it.
            name = "R50-C4" if (b, fold) == ("R101-FPN", 0) else f"job{i:02d}"
            write_run(sweep_dir / "multirun" / name, r)
            planned.append((f"multirun/{name}", r))
            i += 1
    write_plan(sweep_dir, planned)
    html = build.build_report(sweep_dir, progress=False)
    return sweep_dir, html, results


def read(sweep_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "report" / name)


def test_runs_csv_one_row_per_result_every_field(sweep):
    sweep_dir, _, results = sweep
    runs = read(sweep_dir, "runs.csv")
    assert len(runs) == len(results) == 16
    for col in ("backbone", "trunk", "head", "schedule", "status", "error_reason", "dataset.fold", "seed",
                "metrics.segm.AP", "metrics.bbox.per_class.infection.AP75", "metrics.dice.mean.infection",
                "metrics.dice.per_case.phantom_000.left_lung", "timing.train_s_per_iter", "model.params_m",
                "env.git_sha", "config.backbone.trunk", "artifacts.predictions", "run_dir"):
        assert col in runs.columns, col
    # The misleading folder "R50-C4" holds R101-FPN fold 0, and is reported as such.
    row = runs[runs["run_dir"] == "multirun/R50-C4"].iloc[0]
    assert (row["backbone"], row["dataset.fold"]) == ("R101-FPN", 0)
    assert row["metrics.segm.AP"] == pytest.approx(results["R101-FPN", 0]["metrics"]["segm"]["AP"])
    failed = runs[runs["status"] == "failed"]
    assert list(failed["backbone"]) == ["R101-C4"]
    assert "CUDA out of memory (synthetic)" in failed.iloc[0]["error_reason"]


def test_table3_nine_rows_with_paper_beside_ours(sweep):
    sweep_dir, _, results = sweep
    t3 = read(sweep_dir, "table3.csv")
    assert list(t3["backbone"]) == list(BACKBONES)
    by = t3.set_index("backbone")
    paper = {(r["backbone"], r["schedule"]): r["ap"] for r in tables.load_paper()["table3"]}
    assert by.at["R50-FPN", "paper_AP"] == paper["R50-FPN", None] == 78.37
    assert by.at["R50-C4", "paper_AP"] == paper["R50-C4", "3x"]  # synthetic runs are 3x
    assert by.at["R50-DC5", "paper_AP"] == paper["R50-DC5", "3x"]
    assert np.isnan(by.at["X101-C4", "paper_AP"]) and "not in zoo" in by.at["X101-C4", "note"]
    assert by.at["X101-DC5", "n_runs"] == 0 and "MISSING" in by.at["X101-DC5", "note"]
    assert "not in zoo" in by.at["X101-DC5", "note"]
    # Two folds: mean, sample std and n computed from the written results.
    vals = [results["R50-FPN", f]["metrics"]["segm"]["per_class"]["infection"]["AP"] for f in (0, 1)]
    assert by.at["R50-FPN", "infection_AP"] == pytest.approx(statistics.mean(vals))
    assert by.at["R50-FPN", "infection_AP_std"] == pytest.approx(statistics.stdev(vals))
    assert by.at["R50-FPN", "infection_AP_n"] == 2
    assert by.at["R50-FPN", "delta_AP"] == pytest.approx(statistics.mean(vals) - 78.37)
    means = [results["R50-FPN", f]["metrics"]["segm"]["AP"] for f in (0, 1)]
    assert by.at["R50-FPN", "mean_AP"] == pytest.approx(statistics.mean(means))
    # One fold failed: n counts the successful run only.
    assert (by.at["R101-C4", "n_runs"], by.at["R101-C4", "n_ok"], by.at["R101-C4", "infection_AP_n"]) == (2, 1, 1)
    assert np.isnan(by.at["R101-C4", "infection_AP_std"])
    # The run that does not match its schema still counts (flagged in its schema note).
    assert by.at["X101-FPN", "infection_AP_n"] == 2


def test_table3_markdown(sweep):
    sweep_dir, _, results = sweep
    md = (sweep_dir / "report" / "table3.md").read_text()
    rows = md_table(md)
    assert [r["Backbone"] for r in rows] == list(BACKBONES)
    by = {r["Backbone"]: r for r in rows}
    # every synthetic run is 3x; X101-DC5 has none, so no schedule
    assert [r["Schedule"] for r in rows] == ["-" if b == "X101-DC5" else "3x" for b in BACKBONES]
    # two folds: mean ± sample std (n=2), from the written results; one ok fold: the number alone
    vals = [results["R50-FPN", f]["metrics"]["segm"]["per_class"]["infection"]["AP"] for f in (0, 1)]
    assert by["R50-FPN"]["Ours: infection AP (segm)"] == \
        f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} (n=2)"
    assert by["R50-FPN"]["Paper AP"] == "78.37"
    assert by["R50-FPN"]["Δ (ours − paper)"] == f"{statistics.mean(vals) - 78.37:+.2f}"
    one = results["R101-C4", 0]["metrics"]["segm"]["per_class"]["infection"]["AP"]
    assert by["R101-C4"]["Ours: infection AP (segm)"] == f"{one:.2f}"
    assert (by["R101-C4"]["Runs ok/total"], by["R101-C4"]["Note"]) == ("1/2", "1 of 2 run(s) failed")
    assert by["X101-DC5"]["Runs ok/total"] == "0/0" and "MISSING" in by["X101-DC5"]["Note"]
    assert [b for b, r in by.items() if "MISSING" in r["Note"]] == ["X101-DC5"]
    assert "infection AP of Table 2" in md  # the stated assumption


def test_per_class_ap_three_classes_per_backbone(sweep):
    sweep_dir, _, results = sweep
    pc = read(sweep_dir, "per_class_ap.csv")
    present = [b for b in BACKBONES if b != "X101-DC5"]
    assert sorted(set(pc["backbone"])) == sorted(present)
    for b in present:
        sub = pc[(pc["backbone"] == b) & (pc["task"] == "segm") & (pc["metric"] == "AP")]
        assert list(sub["class"]) == list(CLASS_NAMES), b
    assert set(pc["task"]) == {"segm", "bbox"} and set(pc["metric"]) == {"AP", "AP50", "AP75"}
    fpn = pc[(pc["backbone"] == "R50-FPN") & (pc["task"] == "segm") & (pc["metric"] == "AP")].set_index("class")
    assert fpn["paper"].to_dict() == tables.load_paper()["table2_r50_fpn"]
    left = [results["R50-FPN", f]["metrics"]["segm"]["per_class"]["left_lung"]["AP"] for f in (0, 1)]
    assert fpn.at["left_lung", "mean"] == pytest.approx(statistics.mean(left))
    assert fpn.at["left_lung", "delta"] == pytest.approx(statistics.mean(left) - 83.56)
    assert fpn.at["left_lung", "n"] == 2


def test_html_self_contained_with_failures_missing_and_smoke(sweep):
    sweep_dir, html_path, _ = sweep
    assert html_path == sweep_dir.resolve() / "report" / "report.html"
    html = html_path.read_text()
    page = Page(html)
    # The summary counts what the sweep holds: 16 results, R101-C4 fold 1 failed, X101-DC5's two
    # planned folds missing.
    assert [page.text(i) for i in ("n-runs", "n-ok", "n-failed", "n-missing")] == [
        "16 run(s)", "15 ok", "1 FAILED", "2 MISSING (of 18 planned run(s))"]
    assert page.text("problems").startswith("1 FAILED, 2 MISSING")
    # The failures section lists that run and those planned runs, nothing else.
    assert page.section("failures")["h3"] == ["FAILED (1)", "MISSING (2)"]
    failed = page.table("failed")
    assert [(r["backbone"], r["fold"], r["status"]) for r in failed.rows] == [("R101-C4", "1", "failed")]
    assert failed.rows[0]["reason"] == "RuntimeError: CUDA out of memory (synthetic) (train iter 7)"
    assert page.table("missing").rows == [
        {"backbone": f"X101-DC5_f{f}", "missing": f"no result.json in multirun/X101-DC5_f{f} (planned run)"}
        for f in (0, 1)]
    assert "NOT comparable" in page.text("smoke-warning")
    # Table 3: the nine rows, X101-DC5 greyed out as missing, the paper's 78.37 beside R50-FPN.
    t3 = page.table("table3")
    assert [r["Backbone"] for r in t3.rows] == list(BACKBONES)
    assert [r["Backbone"] for r, c in zip(t3.rows, t3.classes) if c] == ["X101-DC5"]
    assert dict(zip([r["Backbone"] for r in t3.rows], t3.classes))["X101-DC5"] == "missing"
    assert t3.by("Backbone")["R50-FPN"]["Paper AP"] == "78.37"
    assert t3.by("Backbone")["R101-C4"]["Runs ok/total"] == "1/2"
    # Every run: 16 rows, the failed one marked; the one off its schema (X101-FPN fold 1) flagged.
    runs = page.table("runs")
    assert len(runs.rows) == 16 and sum(r["status"] == "ok" for r in runs.rows) == 15
    assert [(r["backbone"], r["fold"]) for r, c in zip(runs.rows, runs.classes) if c == "failed"] == [("R101-C4", "1")]
    assert [(r["backbone"], r["fold"]) for r in runs.rows if "does not match schema 1" in r["schema note"]] == [
        ("X101-FPN", "1")]
    # Self-contained: images inline, nothing fetched from elsewhere.
    n_img = html.count('src="data:image/png;base64,')
    assert n_img >= 5
    assert "http://" not in html and "https://" not in html and "<link" not in html


def test_pngs_are_real_images(sweep):
    sweep_dir, _, _ = sweep
    out = sweep_dir / "report"
    names = ["per_class_ap.png", "heatmap_trunk_head.png", "ap_vs_cost.png", "loss_curves.png", "overlay_1.png"]
    for name in names:
        with Image.open(out / name) as im:
            a = np.asarray(im.convert("L"), dtype=float)
        assert a.shape[0] > 200 and a.shape[1] > 400, name
        assert a.std() > 5, f"{name} looks blank"
    assert not list(out.glob(".*.tmp")), "temp files left behind"


def test_winners_and_missing(sweep):
    sweep_dir, _, results = sweep
    a = build.analyse(sweep_dir)
    w = {x["what"]: x for x in tables.winners(a.groups, a.comparison)}
    # Expected winner computed from the written results (ok runs, mean over folds).
    best = max((statistics.mean(r["metrics"]["segm"]["per_class"]["infection"]["AP"]
                                for (bb, _), r in results.items() if bb == b and r["status"] == "ok"), b)
               for b in {b for b, _ in results})
    assert w["infection"]["winner"] == f"{best[1]} 3x"
    assert w["infection"]["AP"] == pytest.approx(best[0])
    miss = tables.missing_runs(a.groups, a.runs.missing)
    assert [m["backbone"] for m in miss] == ["X101-DC5_f0", "X101-DC5_f1"]
    assert tables.missing_runs(a.groups) == []  # without the plan nothing says X101-DC5 was expected


def test_partial_fold_reported_missing(tmp_path):
    for i, (b, fold) in enumerate([("R50-FPN", 0), ("R50-FPN", 1), ("R50-C4", 0)]):
        write_run(tmp_path / f"r{i}", make_result(b, fold=fold), artifacts=False)
    miss = tables.missing_runs(build.analyse(tmp_path).groups)
    assert {"backbone": "R50-C4 3x", "what": "no result.json for fold 1, seed 0"} in miss
    # no plan: the runs found are the expected ones; the backbones nobody ran are not missing
    assert miss == [{"backbone": "R50-C4 3x", "what": "no result.json for fold 1, seed 0"}]


def test_a_result_of_a_schema_this_version_does_not_read_is_a_failed_row(tmp_path):
    mark_sweep(tmp_path)
    write_run(tmp_path / "ok", make_result("R50-C4"), artifacts=False)
    old = make_result("R50-FPN")
    del old["schema"]  # older than schema 1
    write_run(tmp_path / "a", old, artifacts=False)
    write_run(tmp_path / "b", make_result("R101-FPN", schema=7), artifacts=False)
    df = collect.read_sweep(tmp_path).df.set_index("run_dir")
    assert list(df.loc[["a", "b"], "status"]) == ["failed", "failed"] and df.at["ok", "status"] == "ok"
    reads = ", ".join(map(str, READABLE_SCHEMAS))
    assert df.at["a", "error_reason"] == f"UnknownSchema: result.json schema None; this version reads schemas {reads}"
    assert df.at["b", "error_reason"].startswith("UnknownSchema: result.json schema 7;")
    assert df.at["b", "backbone"] == "R101-FPN"
    failed = Page(build.build_report(tmp_path, progress=False).read_text()).table("failed").by("run dir")
    assert sorted(failed) == ["a", "b"] and f"this version reads schemas {reads}" in failed["b"]["reason"]


def test_unreadable_result_and_missing_artifacts(tmp_path):
    mark_sweep(tmp_path)
    write_run(tmp_path / "ok", make_result("R50-FPN"), artifacts=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text('{"schema": 1, "status": ')
    build.build_report(tmp_path, progress=False)
    # A plot an earlier build wrote (listed in the report folder's marker), not drawn this time.
    (tmp_path / "report" / "overlay_3.png").write_bytes(b"from an earlier build")
    fsutil.seal(tmp_path / "report", "report")
    html = build.build_report(tmp_path, progress=False).read_text()
    df = pd.read_csv(tmp_path / "report" / "runs.csv")
    bad = df[df["run_dir"] == "broken"].iloc[0]
    assert bad["status"] == "failed" and "unreadable" in bad["error_reason"]
    page = Page(html)
    failed = page.table("failed")
    assert [r["run dir"] for r in failed.rows] == ["broken"] and "unreadable" in failed.rows[0]["reason"]
    assert page.text("n-failed") == "1 FAILED"
    # No metrics.json, no predictions: those plots are skipped with a note, the rest is drawn.
    assert "Skipped: " in html and "d2/metrics.json not found" in html
    assert (tmp_path / "report" / "per_class_ap.png").is_file()
    assert not (tmp_path / "report" / "overlay_1.png").exists()
    assert not (tmp_path / "report" / "overlay_3.png").exists(), "a stale plot survived the rebuild"


def test_pick_slices_most_infection_first():
    coco = {"images": [{"id": i} for i in (1, 2, 3, 4)],
            "annotations": [{"image_id": 1, "category_id": 3, "area": 5}, {"image_id": 2, "category_id": 3, "area": 50},
                            {"image_id": 3, "category_id": 1, "area": 500}, {"image_id": 4, "category_id": 3, "area": 50}]}
    assert overlays.pick_slices(coco, 3) == [2, 4, 1]
    assert overlays.pick_slices(coco, 4) == [2, 4, 1, 3]


def test_latest_and_cli(tmp_path):
    root = tmp_path / "sweeps"
    write_run(mark_sweep(root / "old") / "0", make_result("R50-FPN"), artifacts=False)
    write_run(mark_sweep(root / "new") / "0", make_result("R50-C4"), artifacts=False)
    os.utime(root / "old" / "0" / "result.json", (1e9, 1e9))
    assert collect.latest_sweep(root) == root / "new"
    out = subprocess.run([sys.executable, "-m", "reports.build", "--latest", str(root)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == str((root / "new" / "report" / "report.html").resolve())  # last: the path
    assert lines[0].startswith("class") and lines[2].startswith("right lung  ")  # the winner table
    assert "R50-C4 3x (65.22)" in lines[2] and "no test possible" in lines[2]
    assert (root / "new" / "report" / "table3.csv").is_file()
    with pytest.raises(FileNotFoundError, match="no sweep dir"):
        collect.latest_sweep(tmp_path / "sweeps" / "new" / "report")
    assert build.main(["--latest", str(tmp_path / "nowhere")]) == 2


@pytest.mark.skipif(not SHARED_DATA.is_file(), reason=f"{SHARED_DATA} not present (outside the team checkout)")
def test_paper_json_matches_shared_dataset_facts():
    ref = json.loads(SHARED_DATA.read_text())["reference_results"]["paper_gaikwad_joshi_2020"]
    paper = tables.load_paper()
    assert paper["table2_r50_fpn"] == ref["table2_r50_fpn"]
    assert [[r["backbone"], r["ap"]] for r in paper["table3"]] == ref["table3"]


def test_schema1_problems_and_run_notes_are_shown(tmp_path):
    mark_sweep(tmp_path)
    r = make_result("R50-FPN")
    del r["timing"]
    r["notes"] = ["images of several sizes; image_size is the most common one"]
    write_run(tmp_path / "a", r, artifacts=False)
    df = collect.read_sweep(tmp_path).df
    assert "does not match schema 1: missing key 'timing'" in df.iloc[0]["schema_note"]
    html = build.build_report(tmp_path, progress=False).read_text()
    assert "does not match schema 1: missing key &#x27;timing&#x27;" in html
    assert "images of several sizes; image_size is the most common one (1 run)" in html


def test_synthetic_results_follow_the_writer_schema():
    from contracts.result import validate

    assert validate(make_result("X101-DC5", schedule="1x", fold=3, seed=2)) == []
    assert validate(make_result("R50-C4", status="failed")) == []


def test_table3_experiment_matches_paper_rows_by_schedule(tmp_path):
    """experiment=table3: R50-C4 and R50-DC5 at 1x and 3x, the rest once; paper rows by schedule."""
    rows = [(r["backbone"], r["schedule"] or "3x") for r in tables.load_paper()["table3"]]
    for i, (b, sched) in enumerate(rows):
        write_run(tmp_path / f"r{i}", make_result(b, schedule=sched, experiment="table3"), artifacts=False)
    t3 = table3(tmp_path)
    got = {(b, s): p for b, s, p in zip(t3["backbone"], t3["schedule"], t3["paper_AP"])}
    assert len(t3) == 9 and not t3["paper_only"].any()  # the paper's nine rows, all ours
    assert got["R50-C4", "1x"] == 56.43 and got["R50-C4", "3x"] == 69.3
    assert got["R50-DC5", "1x"] == 54.2 and got["R50-DC5", "3x"] == 68.44
    assert got["R50-FPN", "3x"] == 78.37
    assert "X101-DC5" not in set(t3["backbone"])  # nobody planned it
    # A schedule the paper lacks for a backbone it splits by schedule: no number, and a note.
    write_run(tmp_path / "extra", make_result("R50-C4", schedule=None), artifacts=False)
    t3 = table3(tmp_path)
    row = t3[(t3["backbone"] == "R50-C4") & t3["schedule"].isna()].iloc[0]
    assert np.isnan(row["paper_AP"]) and "paper has R50-C4 only for 1x/3x" in row["note"]


def test_amp_and_fp32_runs_are_reported_side_by_side(tmp_path):
    """experiment=amp_ap: the same cell in fp32 and AMP over seeds -> two groups, each with its
    own mean and spread, labelled so a reader can tell them apart."""
    for amp in (False, True):
        for seed in range(3):
            r = make_result("R50-FPN", seed=seed, experiment="amp_ap")  # same seed, same APs
            r["solver"]["amp"] = amp
            if amp:  # a difference the table must show (COCO AP = the mean of the classes')
                segm = r["metrics"]["segm"]
                segm["AP"] += 5.0
                for c in CLASS_NAMES:
                    segm["per_class"][c]["AP"] += 5.0
            write_run(tmp_path / f"amp{amp}_s{seed}", r, artifacts=False)
    a = build.analyse(tmp_path)
    groups = {group_label(k): g for k, g in a.groups}
    assert sorted(groups) == ["R50-FPN 3x (AMP)", "R50-FPN 3x (fp32)"]
    assert all(len(g) == 3 for g in groups.values())
    t3 = tables.table3(a.groups, a.comparison)
    rows = t3[t3["backbone"] == "R50-FPN"].set_index("solver.amp")
    assert rows.loc[True, "n_ok"] == rows.loc[False, "n_ok"] == 3
    assert rows.loc[True, "mean_AP"] - rows.loc[False, "mean_AP"] == pytest.approx(5.0)
    assert rows.loc[True, "infection_AP"] - rows.loc[False, "infection_AP"] == pytest.approx(5.0)
    assert rows.loc[False, "mean_AP_std"] > 0
    assert rows.loc[True, "mean_AP_std"] == pytest.approx(rows.loc[False, "mean_AP_std"])


def test_scratch_runs_are_labelled_by_their_weights_not_a_schedule(tmp_path):
    synthetic.mark_sweep(tmp_path)
    for i, (backbone, weights) in enumerate((("R50-FPN", "scratch"), ("R101-FPN", "scratch"), ("R50-C4", "zoo"))):
        synthetic.write_run(tmp_path / f"run_{i}", synthetic.make_result(backbone, weights=weights), artifacts=False)
    a = build.analyse(tmp_path)
    labels = [k["label"] for k, _ in a.groups]
    assert labels == ["R50-C4 3x (zoo)", "R50-FPN scratch", "R101-FPN scratch"]
    t3 = tables.table3(a.groups, a.comparison).set_index("group")
    assert pd.isna(t3.loc["R50-FPN scratch", "schedule"]) and t3.loc["R50-C4 3x (zoo)", "schedule"] == "3x"
    assert "trained from scratch: no schedule" in t3.loc["R50-FPN scratch", "note"]
    html = build.build_report(tmp_path, progress=False).read_text()
    assert "R50-FPN scratch" in html and "R50-FPN 3x" not in html


def test_a_sweep_all_from_scratch_names_the_weights_in_every_label(tmp_path):
    synthetic.mark_sweep(tmp_path)
    for i, backbone in enumerate(("R50-FPN", "R101-FPN")):
        synthetic.write_run(tmp_path / f"run_{i}", synthetic.make_result(backbone, weights="scratch"), artifacts=False)
    a = build.analyse(tmp_path)
    assert [k["label"] for k, _ in a.groups] == ["R50-FPN scratch", "R101-FPN scratch"]
    assert "R50-FPN scratch" in tables.winners_text(tables.winners(a.groups, a.comparison))
