"""reports/: only lungbench sweeps are reported on, the report folder is replaced whole (never a
user's file), the runs are the sweep plan's, and a group never mixes configs."""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
import pytest

from contracts import fsutil
from contracts.catalog import CLASS_NAMES
from reports import build, collect, tables
from reports.collect import STALE_REASON
from reports.groups import Groups, group_label
from tests.synthetic import make_result, mark_sweep, write_plan, write_run
from tests.test_reports import Page, section_text


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below ``folder`` (hidden ones too): sha256 of files, 'dir' for folders."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(Path(root) / d, folder)] = "dir"
        for f in files:
            out[os.path.relpath(Path(root) / f, folder)] = fsutil.sha256_file(Path(root) / f)
    return out


def planned_sweep(sweep_dir: Path, runs: dict[str, dict | None], plan_only: tuple[str, ...] = ()) -> Path:
    """A marked sweep whose sweep.json plans ``runs`` (run folder -> result written there, or
    None: planned, no result.json) and the folders of ``plan_only`` (planned, never written)."""
    mark_sweep(sweep_dir)
    for d, r in runs.items():
        if r is not None:
            write_run(sweep_dir / d, r, artifacts=False)
    write_plan(sweep_dir, [(d, r) for d, r in runs.items()] + [(d, None) for d in plan_only])
    return sweep_dir


def bump(r: dict, by: float) -> dict:
    """The same run with every segm AP raised by ``by`` (a difference a mix would show)."""
    segm = r["metrics"]["segm"]
    segm["AP"] += by
    for c in CLASS_NAMES:
        segm["per_class"][c]["AP"] += by
    return r


def infection(r: dict) -> float:
    return r["metrics"]["segm"]["per_class"]["infection"]["AP"]


def test_folder_without_marker_is_refused_untouched(tmp_path, capsys):
    folder = tmp_path / "not_a_sweep"
    write_run(folder / "R50-FPN", make_result("R50-FPN"), artifacts=False)
    (folder / "my_notes.txt").write_text("a user's file\n")
    before = snapshot(folder)
    with pytest.raises(fsutil.NotOwned, match="not a lungbench sweep"):
        build.build_report(folder, progress=False)
    assert build.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder.resolve()) in err and "not a lungbench sweep" in err and "make sweep" in err
    assert snapshot(folder) == before  # byte-identical, nothing added (no report/, no lock, no temp)
    assert not (folder / "report").exists()


def test_folder_of_another_kind_is_refused(tmp_path):
    folder = tmp_path / "run"
    fsutil.claim(folder, "run", "RUN_DIR")
    write_run(folder, make_result("R50-FPN"), artifacts=False)
    with pytest.raises(fsutil.NotOwned, match="'run' folder"):
        build.build_report(folder, progress=False)
    assert not (folder / "report").exists()


def test_user_file_in_report_folder_refuses_rebuild(tmp_path, capsys):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN")})
    report = build.build_report(sweep, progress=False).parent
    assert fsutil.read_marker(report)["kind"] == "report"
    (report / "notes.txt").write_text("my notes on this sweep\n")
    (report / "my_plot.png").write_bytes(b"\x89PNG a user's own figure")
    before = snapshot(report)
    with pytest.raises(fsutil.NotOwned, match="notes.txt") as e:
        build.build_report(sweep, progress=False)
    assert "my_plot.png" in str(e.value)
    assert build.main([str(sweep)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert snapshot(report) == before  # the user's files and the previous report, unchanged
    assert not [p for p in sweep.iterdir() if fsutil.TMP_TAG in p.name or fsutil.LOCK_TAG in p.name]


def test_unmarked_report_folder_with_files_is_refused(tmp_path):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN")})
    (sweep / "report").mkdir()
    (sweep / "report" / "table3.csv").write_text("from an older lungbench\n")
    with pytest.raises(fsutil.NotOwned, match="no .lungbench-owner.json"):
        build.build_report(sweep, progress=False)
    assert (sweep / "report" / "table3.csv").read_text() == "from an older lungbench\n"


def test_report_folder_replaced_whole(tmp_path):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN")})
    first = build.build_report(sweep, progress=False).parent
    built = set(fsutil.read_marker(first)["files"])
    assert {"runs.csv", "per_class_ap.csv", "table3.csv", "table3.md", "ignored.csv", "report.html"} <= built
    assert built == set(fsutil.list_files(first))
    build.build_report(sweep, progress=False)  # its own files: replaced without a question
    assert set(fsutil.list_files(first)) == built


def test_busy_report_exits_2(tmp_path, capsys):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN")})
    with fsutil.output_lock(sweep / "report", "the report folder"):
        assert build.main([str(sweep)]) == 2
    assert "being written" in capsys.readouterr().err
    assert not (sweep / "report").exists()


def test_unreadable_plan_exits_2(tmp_path, capsys):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN")})
    (sweep / "sweep.json").write_text('{"runs": ')
    assert build.main([str(sweep)]) == 2
    assert "sweep.json" in capsys.readouterr().err


def test_rerun_into_folder_with_older_run_counts_the_plan_only(tmp_path):
    """Folds 0, 1 re-run into a folder that holds an older fold-0 run outside the plan."""
    sweep = tmp_path / "sweep"
    runs = {f"{b}_fold={f}": make_result(b, fold=f, schema=2) for b in ("R50-FPN", "R101-FPN") for f in (0, 1)}
    planned_sweep(sweep, runs)
    old = bump(make_result("R50-FPN", fold=0, schema=2), 30.0)
    write_run(sweep / "old" / "R50-FPN", old, artifacts=False)
    build.build_report(sweep, progress=False)
    t3 = pd.read_csv(sweep / "report" / "table3.csv")
    t3 = t3[~t3["paper_only"]].set_index("backbone")
    assert list(t3.index) == ["R50-FPN", "R101-FPN"]
    assert t3.at["R50-FPN", "n_runs"] == t3.at["R50-FPN", "infection_AP_n"] == 2  # not 3
    assert t3.at["R50-FPN", "infection_AP"] == pytest.approx(
        sum(infection(runs[f"R50-FPN_fold={f}"]) for f in (0, 1)) / 2)
    runs_csv = pd.read_csv(sweep / "report" / "runs.csv")
    assert sorted(runs_csv["run_dir"]) == sorted(runs)
    ignored = pd.read_csv(sweep / "report" / "ignored.csv")
    assert list(ignored["path"]) == ["old/R50-FPN/result.json"]
    assert "plan" in ignored.iloc[0]["reason"]
    note = "ignored 1 result.json outside this sweep's plan (sweep.json): old/R50-FPN/result.json"
    assert note in (sweep / "report" / "table3.md").read_text()
    assert html.escape(note) in (sweep / "report" / "report.html").read_text()


def test_without_plan_every_result_counts(tmp_path):
    mark_sweep(tmp_path)
    for f in (0, 1):
        write_run(tmp_path / f"r{f}", make_result("R50-FPN", fold=f), artifacts=False)
    runs = collect.read_sweep(tmp_path)
    assert runs.plan is None and runs.ignored == [] and len(runs.df) == 2
    build.build_report(tmp_path, progress=False)
    assert pd.read_csv(tmp_path / "report" / "ignored.csv").empty
    t3 = pd.read_csv(tmp_path / "report" / "table3.csv")
    # no plan: the runs found are what was expected; the paper's other rows stay as the paper's
    assert list(t3.loc[~t3["paper_only"], "backbone"]) == ["R50-FPN"]
    paper = [r["backbone"] for r in tables.load_paper()["table3"] if r["backbone"] != "R50-FPN"]
    assert sorted(t3.loc[t3["paper_only"], "backbone"]) == sorted(paper)
    assert not t3["note"].fillna("").str.contains("MISSING").any()


@pytest.mark.parametrize("schema", [1, 2])
def test_other_learning_rate_is_another_group(tmp_path, schema):
    """Same backbone, seed and fold, another solver.base_lr: two groups, two labels, no mix."""
    mark_sweep(tmp_path)
    a = make_result("R50-FPN", schema=schema)
    b = bump(make_result("R50-FPN", schema=schema, base_lr=0.01), 10.0)
    write_run(tmp_path / "a", a, artifacts=False)
    write_run(tmp_path / "b", b, artifacts=False)
    analysis = build.analyse(tmp_path)
    assert analysis.df["identity.group"].nunique() == 2
    groups = {group_label(k): g for k, g in analysis.groups}
    assert sorted(groups) == ["R50-FPN 3x (solver.base_lr=0.00025)", "R50-FPN 3x (solver.base_lr=0.01)"]
    assert all(len(g) == 1 for g in groups.values())
    build.build_report(tmp_path, progress=False)
    t3 = pd.read_csv(tmp_path / "report" / "table3.csv")
    rows = t3[t3["backbone"] == "R50-FPN"].set_index("group")
    assert len(rows) == 2 and set(rows["n_runs"]) == {1}
    assert rows.at["R50-FPN 3x (solver.base_lr=0.00025)", "infection_AP"] == pytest.approx(infection(a))
    assert rows.at["R50-FPN 3x (solver.base_lr=0.01)", "infection_AP"] == pytest.approx(infection(b))
    pc = pd.read_csv(tmp_path / "report" / "per_class_ap.csv")
    assert set(pc[pc["backbone"] == "R50-FPN"]["group"]) == set(rows.index)
    w = {x["what"]: x for x in tables.winners(analysis.groups, analysis.comparison)}
    assert w["infection"]["winner"] == "R50-FPN 3x (solver.base_lr=0.01)" and w["infection"]["n"] == 1
    md = (tmp_path / "report" / "table3.md").read_text()
    assert "R50-FPN 3x (solver.base_lr=0.01)" in md and "R50-FPN 3x (solver.base_lr=0.00025)" in md


def test_labels_stay_distinct_when_configs_differ_in_several_keys():
    rs = []
    for lr, it in ((0.01, 100), (0.01, 200), (0.02, 100)):
        r = make_result("R50-FPN", base_lr=lr)
        r["config"]["solver"]["max_iter"] = it
        rs.append(collect.flatten(collect.normalize(r)[0]))
    labels = [group_label(k) for k, _ in Groups.of(pd.DataFrame(rs))]
    assert len(set(labels)) == 3
    assert "R50-FPN 3x (solver.base_lr=0.01, solver.max_iter=200)" in labels


def test_stale_planned_result_is_not_counted(tmp_path):
    sweep = tmp_path / "sweep"
    good = make_result("R101-FPN", schema=2)
    planned_sweep(sweep, {"R50-FPN": make_result("R50-FPN", schema=2), "R101-FPN": good})
    # What stands in the R50-FPN folder now is another run (another learning rate).
    other = bump(make_result("R50-FPN", schema=2, base_lr=0.01), 40.0)
    write_run(sweep / "R50-FPN", other, artifacts=False)
    analysis = build.analyse(sweep)
    row = analysis.df[analysis.df["run_dir"] == "R50-FPN"].iloc[0]
    assert row["status"] == "failed" and row["error_reason"] == STALE_REASON
    page = build.build_report(sweep, progress=False).read_text()
    t3 = pd.read_csv(sweep / "report" / "table3.csv").set_index("backbone")
    assert (t3.at["R50-FPN", "n_runs"], t3.at["R50-FPN", "n_ok"], t3.at["R50-FPN", "infection_AP_n"]) == (1, 0, 0)
    assert pd.isna(t3.at["R50-FPN", "infection_AP"])
    w = {x["what"]: x for x in tables.winners(analysis.groups, analysis.comparison)}
    assert w["infection"]["winner"] == "R101-FPN 3x" and w["infection"]["runner_up"] is None
    shown = Page(page)
    assert [(r["backbone"], r["status"], r["reason"]) for r in shown.table("failed").rows] == [
        ("R50-FPN", "failed", STALE_REASON)]
    assert shown.text("n-failed") == "1 FAILED" and shown.text("n-ok") == "1 ok"


def test_one_backbone_plan_expects_that_backbone_only(tmp_path):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN", schema=2)})
    page = build.build_report(sweep, progress=False).read_text()
    t3 = pd.read_csv(sweep / "report" / "table3.csv")
    assert list(t3.loc[~t3["paper_only"], "backbone"]) == ["R50-FPN"]
    # the paper's eight other rows are the paper's: its number, nothing of ours, no MISSING
    others = t3[t3["paper_only"]]
    assert len(others) == len(tables.load_paper()["table3"]) - 1 and (others["n_runs"] == 0).all()
    assert others["paper_AP"].notna().all() and others["infection_AP"].isna().all()
    assert set(others["note"]) == {"paper only: not in this sweep"}
    assert "of 9 backbones" not in page
    analysis = build.analyse(sweep)
    assert tables.missing_runs(analysis.groups, analysis.runs.missing) == []
    shown = Page(page)
    assert "missing" not in shown.tables and shown.text("n-missing") == "0 MISSING (of 1 planned run(s))"
    assert "failed" not in shown.tables and "problems" not in shown.texts
    assert section_text(shown, "failures") == "None: every expected run has a result and every run succeeded."
    assert "MISSING" not in (sweep / "report" / "table3.md").read_text()


def test_planned_run_without_result_is_missing_by_label(tmp_path):
    sweep = planned_sweep(tmp_path / "sweep", {"R50-FPN": make_result("R50-FPN", schema=2)},
                          plan_only=("R101-FPN", "X101-FPN_fold=1"))
    analysis = build.analyse(sweep)
    assert [m["label"] for m in analysis.runs.missing] == ["R101-FPN", "X101-FPN_fold=1"]
    miss = tables.missing_runs(analysis.groups, analysis.runs.missing)
    assert miss == [{"backbone": "R101-FPN", "what": "no result.json in R101-FPN (planned run)"},
                    {"backbone": "X101-FPN_fold=1", "what": "no result.json in X101-FPN_fold=1 (planned run)"}]
    page = build.build_report(sweep, progress=False).read_text()
    t3 = pd.read_csv(sweep / "report" / "table3.csv")
    t3 = t3[~t3["paper_only"]].set_index("backbone")
    assert list(t3.index) == ["R50-FPN", "R101-FPN", "X101-FPN_fold=1"]
    assert t3.at["R101-FPN", "n_runs"] == 0 and "MISSING" in t3.at["R101-FPN", "note"]
    assert t3.at["R101-FPN", "paper_AP"] == tables.paper_table3("R101-FPN", None)[0]
    assert "R50-C4" not in t3.index
    shown = Page(page)
    assert [(r["backbone"], r["missing"]) for r in shown.table("missing").rows] == [
        ("R101-FPN", "no result.json in R101-FPN (planned run)"),
        ("X101-FPN_fold=1", "no result.json in X101-FPN_fold=1 (planned run)")]
    assert shown.text("n-missing") == "2 MISSING (of 3 planned run(s))"
    assert [r["Backbone"] for r, c in zip(shown.table("table3").rows, shown.table("table3").classes)
            if c == "missing"] == ["R101-FPN", "X101-FPN_fold=1"]
