"""``lungbench compare``: the report's paired tests on a hand-made per-case CSV, and bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reports import compare, stats

REPO = Path(__file__).resolve().parent.parent
# the lungbench command's own main (the installed script itself is tests/test_cli.py's)
LUNGBENCH = [sys.executable, "-m", "benchmark.cli"]
N = 12


def _rows() -> list[dict]:
    """3 groups x 12 cases, one class: in segm_AP A is higher than B by 20 and than C by 40 on every
    case; in dice A and B differ by +-0.001 alternately (no difference to show), C is far below;
    in nsd3d every group is 0 everywhere."""
    rows = []
    for i in range(N):
        case = f"p{i:02d}"
        wiggle = 0.001 if i % 2 else -0.001
        for g, ap, dice in (("A", 60 + i, 0.80 + 0.01 * i), ("B", 40 + i, 0.80 + 0.01 * i + wiggle),
                            ("C", 20 + i, 0.30 + 0.01 * i)):
            rows.append({"group": g, "case": case, "class": "infection", "segm_AP": ap, "dice": dice,
                         "nsd3d": 0.0})
    return rows


def _write(path: Path, rows: list[dict], header: list[str] | None = None) -> Path:
    header = header or list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LUNGBENCH, "compare", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_compare_prints_the_expected_verdicts_and_writes_both_tables(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    csv_path = _write(src / "per_case.csv", _rows())
    out = tmp_path / "out"
    p = _run(tmp_path, str(csv_path), "--out", str(out))
    assert p.returncode == 0, p.stderr
    lines = {tuple(line.split()[:2]): line for line in p.stdout.splitlines() if line.split()[:2]}
    assert "ahead of all" in lines[("segm_AP", "infection")] and " A (" in lines[("segm_AP", "infection")]
    # A and B differ by +-0.001: the lead over B is not shown, C is not named as "not shown"
    assert "not shown different from B (p_holm = " in lines[("dice", "infection")]
    assert "C (" not in lines[("dice", "infection")].split("not shown")[1]
    assert "tied at 0.00 (no winner)" in lines[("nsd3d", "infection")]
    assert "holm_family" in p.stdout and "select_family" in p.stdout
    pw = pd.read_csv(out / "pairwise.csv")
    vd = pd.read_csv(out / "verdicts.csv")
    assert list(pw.columns) == stats.PAIRWISE_COLUMNS and list(vd.columns) == stats.VERDICT_COLUMNS
    assert dict(zip(vd["metric"], vd["kind"])) == {"segm_AP": "ahead", "dice": "not_shown", "nsd3d": "zero"}
    ap = pw[pw["metric"] == "segm_AP"].set_index("vs")
    # 12 cases, every difference positive: exact one-sided p 1/4096, Holm over the 2 comparisons
    assert ap.loc["B", "p"] == pytest.approx(1 / 4096) and ap.loc["B", "p_holm"] == pytest.approx(2 / 4096)
    assert ap.loc["C", "mean_diff"] == pytest.approx(40) and (ap["n_cases"] == N).all()
    assert (pw["selection"] == stats.SELECTION).all()


def test_compare_only_metric_and_print_only(tmp_path):
    csv_path = _write(tmp_path / "per_case.csv", _rows())
    p = _run(tmp_path, str(csv_path), "--metric", "dice")
    assert p.returncode == 0, p.stderr
    assert "dice" in p.stdout and "segm_AP" not in p.stdout.split("\n\n")[0]
    assert sorted(os.listdir(tmp_path)) == ["per_case.csv"]  # no --out: nothing written


def test_the_report_per_case_format_reads_back(tmp_path):
    # the report's own columns, counts shown beside the AP included: those are never tested
    rows = [{**r, "fp_no_gt": 1, "dice3d_all": 0.5} for r in _rows()]
    pc, metrics = compare.read_per_case(_write(tmp_path / "pc.csv", rows))
    assert metrics == ["segm_AP", "dice", "nsd3d"] and len(pc) == 3 * N


@pytest.mark.parametrize("mutate, message", [
    (lambda rows, h: (rows, [c for c in h if c != "class"]), "missing column(s) class"),
    (lambda rows, h: (rows + [dict(rows[4])], h), "line 38: case 'p01' of group 'B', class 'infection' appears twice (first on line 6)"),
    (lambda rows, h: ([{**r, "dice": "high"} if i == 7 else r for i, r in enumerate(rows)], h),
     "line 9: column 'dice' is 'high', not a number"),
    (lambda rows, h: ([r for r in rows if r["group"] == "A"], h), "only one group ('A')"),
    (lambda rows, h: (rows, ["group", "case", "class"]), "no metric column"),
    (lambda rows, h: ([{**r, "group": ""} if i == 2 else r for i, r in enumerate(rows)], h), "line 4: empty 'group'"),
])
def test_bad_input_names_the_row(tmp_path, mutate, message):
    rows, header = mutate(_rows(), list(_rows()[0]))
    path = _write(tmp_path / "bad.csv", rows, header)
    with pytest.raises(compare.CompareError) as e:
        compare.read_per_case(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_bad_input_exits_2_and_writes_nothing(tmp_path):
    path = _write(tmp_path / "bad.csv", [r for r in _rows() if r["group"] == "A"])
    p = _run(tmp_path, str(path), "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and "only one group" in p.stderr and "nothing written" in p.stderr
    assert not (tmp_path / "out").exists()
    p = _run(tmp_path, str(_write(tmp_path / "ok.csv", _rows())), "--metric", "fp_no_gt")
    assert p.returncode == 2 and "never tested" in p.stderr


def test_out_inside_the_input_folder_is_refused(tmp_path):
    path = _write(tmp_path / "per_case.csv", _rows())
    p = _run(tmp_path, str(path), "--out", str(tmp_path / "sub"))
    assert p.returncode == 2 and "never writes where it reads" in p.stderr
