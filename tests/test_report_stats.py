"""reports.stats: paired case-by-case tests of the report's claims, and how the report shows them."""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports import build, collect, plots, stats, synthetic, tables
from reports.schema import CLASSES

CASES = [f"patient_{i:02d}" for i in range(8)]


def _write(sweep_dir, groups: dict[str, dict[int, dict[str, float]]], cases=CASES) -> pd.DataFrame:
    """groups: backbone -> seed -> case -> AP (every class the same AP); returns the runs table."""
    synthetic.mark_sweep(sweep_dir)
    i = 0
    for backbone, seeds in groups.items():
        for seed, per_case in seeds.items():
            r = synthetic.make_result(backbone, seed=seed, cases=cases)
            synthetic.set_per_case(r, {c: {k: per_case[c] for k in CLASSES} for c in cases})
            synthetic.write_run(sweep_dir / f"run_{i:03d}", r, artifacts=False)
            i += 1
    return collect.collect(sweep_dir)


def _values(offset: float, seed: int, cases=CASES, sd: float = 3.0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {c: 50.0 + offset + float(rng.normal(0, sd)) for c in cases}


def test_better_on_every_case_by_a_wide_margin_is_ahead(tmp_path):
    df = _write(tmp_path, {"R50-FPN": {0: _values(20, 1), 1: _values(20, 2)},
                           "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)},
                           "X101-FPN": {0: _values(0, 5), 1: _values(0, 6)}})
    cmp = stats.compare(df)
    for target in (*CLASSES, stats.MEAN):
        v = cmp.verdict(target)
        assert v["best"] == "R50-FPN 3x" and v["verdict"] == stats.AHEAD and v["winner"] == "R50-FPN 3x"
        assert v["n_cases"] == len(CASES)
    pw = cmp.pairwise[cmp.pairwise["metric"] == "segm_AP"]
    assert set(pw["group"]) == {"R50-FPN 3x"} and set(pw["vs"]) == {"R101-FPN 3x", "X101-FPN 3x"}
    assert pw["significant"].all() and (pw["ci_low"] > 10).all() and (pw["n_cases"] == len(CASES)).all()
    w = {x["what"]: x for x in tables.winners(df, cmp)}
    assert w["infection"]["winner"] == "R50-FPN 3x" and w["infection"]["verdict"] == stats.AHEAD
    assert w["infection"]["significant"]


def test_seeds_are_averaged_per_case_first(tmp_path):
    a0, a1 = _values(5, 1), _values(5, 2)
    df = _write(tmp_path, {"R50-FPN": {0: a0, 1: a1}, "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)}})
    pc = stats.compare(df).per_case
    got = pc[(pc["group"] == "R50-FPN 3x") & (pc["class"] == "infection")].set_index("case")["segm_AP"]
    assert len(got) == len(CASES)
    for c in CASES:
        assert got[c] == pytest.approx((a0[c] + a1[c]) / 2, abs=1e-5)


def test_identical_per_case_values_are_tied(tmp_path):
    same = _values(0, 7)
    df = _write(tmp_path, {"R50-FPN": {0: same, 1: same}, "R101-FPN": {0: same, 1: same}})
    cmp = stats.compare(df)
    v = cmp.verdict(stats.MEAN)
    assert v["verdict"] == "tied with R101-FPN 3x (difference not significant)" and v["winner"] is None
    r = cmp.pairwise[(cmp.pairwise["metric"] == "segm_AP") & (cmp.pairwise["class"] == stats.MEAN)].iloc[0]
    assert r["p"] == 1.0 and r["p_holm"] == 1.0 and not r["significant"]
    assert (r["mean_diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
    w = {x["what"]: x for x in tables.winners(df, cmp)}
    assert not w["mean of 3 classes"]["significant"]


def test_a_tie_at_zero_has_no_winner(tmp_path):
    zero = {c: 0.0 for c in CASES}
    df = _write(tmp_path, {"R50-FPN": {0: zero, 1: zero}, "R101-FPN": {0: zero, 1: zero}})
    v = stats.compare(df).verdict("infection")
    assert v["verdict"] == stats.TIED_ZERO and v["winner"] is None
    # the report names nobody: no card, no terminal line, no Table 3 highlight for a 0.00 "best"
    html = build.build_report(tmp_path).read_text()
    card = html.split("Best per class")[1].split("<h2")[0]
    assert "R50-FPN" not in card and "R101-FPN" not in card and "segm AP 0.00 for every group" in card
    text = tables.winners_text(tables.winners(df))
    assert "R50-FPN" not in text and "R101-FPN" not in text and text.count("tied at 0.00") == 4
    assert "best" not in html.split('id="table3"')[1].split("</table>")[0]


def test_fewer_than_5_cases_is_no_test(tmp_path):
    few = CASES[:4]
    df = _write(tmp_path, {"R50-FPN": {0: _values(30, 1, few), 1: _values(30, 2, few)},
                           "R101-FPN": {0: _values(0, 3, few), 1: _values(0, 4, few)}}, cases=few)
    cmp = stats.compare(df)
    v = cmp.verdict(stats.MEAN)
    assert v["verdict"] == stats.NO_TEST and v["winner"] is None
    assert cmp.pairwise["p"].isna().all() and not cmp.pairwise["significant"].any()
    p = plots.rank_stability(cmp.per_case, build._no_test(cmp))
    assert p.png is None and p.note == stats.NO_TEST


def test_one_run_per_group_over_enough_cases_is_tested(tmp_path):
    # one fold per backbone with >= 5 test cases: the cases pair up, so the test runs
    df = _write(tmp_path, {"R50-FPN": {0: _values(30, 1)}, "R101-FPN": {0: _values(0, 3)}})
    v = stats.compare(df).verdict(stats.MEAN)
    assert v["verdict"] == stats.AHEAD and v["winner"] == "R50-FPN 3x"


def test_intervals_and_p_values_are_scipys(tmp_path):
    a = {0: _values(3, 11), 1: _values(3, 12)}
    b = {0: _values(0, 13), 1: _values(0, 14)}
    df = _write(tmp_path, {"R50-FPN": a, "R101-FPN": b})
    cmp = stats.compare(df)
    xa = np.array([(a[0][c] + a[1][c]) / 2 for c in sorted(CASES)])
    xb = np.array([(b[0][c] + b[1][c]) / 2 for c in sorted(CASES)])
    if xa.mean() < xb.mean():
        xa, xb = xb, xa
    ci = sps.bootstrap((xa, xb), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                       n_resamples=9999, confidence_level=0.95, rng=0).confidence_interval
    p = sps.wilcoxon(xa, xb).pvalue
    r = cmp.pairwise[(cmp.pairwise["metric"] == "segm_AP") & (cmp.pairwise["class"] == "infection")].iloc[0]
    assert r["n_cases"] == len(CASES)
    # result.json rounds the values to 6 decimals: compare to that precision
    assert r["mean_diff"] == pytest.approx((xa - xb).mean(), abs=1e-5)
    assert r["ci_low"] == pytest.approx(ci.low, abs=1e-4) and r["ci_high"] == pytest.approx(ci.high, abs=1e-4)
    assert r["p"] == pytest.approx(p, rel=1e-6) and r["p_holm"] == pytest.approx(p, rel=1e-6)  # one comparison


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.06
    got = stats.holm([0.03, 0.01, 0.04, 0.02])
    assert got == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    got = stats.holm([0.01, np.nan, 0.04])  # NaN: not a test (m = 2)
    assert got[0] == pytest.approx(0.02) and np.isnan(got[1]) and got[2] == pytest.approx(0.04)


def test_rank_stability_counts_first_places(tmp_path):
    df = _write(tmp_path, {"R50-FPN": {0: _values(20, 1), 1: _values(20, 2)},
                           "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)}})
    cmp = stats.compare(df)
    share, n = stats.rank_first_frequency(cmp.per_case)
    assert n == len(CASES) and share["R50-FPN 3x"] == 1.0 and share["R101-FPN 3x"] == 0.0
    p = plots.rank_stability(cmp.per_case, build._no_test(cmp))
    assert p.png is not None and p.png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_pairwise_and_per_case_and_shows_verdicts(tmp_path):
    _write(tmp_path, {"R50-FPN": {0: _values(20, 1), 1: _values(20, 2)},
                      "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)}})
    html = build.build_report(tmp_path, progress=False).read_text()
    out = tmp_path / "report"
    pw = pd.read_csv(out / "pairwise.csv")
    assert list(pw.columns) == stats.PAIRWISE_COLUMNS and len(pw) == 2 * (len(CLASSES) + 1)
    pc = pd.read_csv(out / "per_case.csv")
    assert list(pc.columns) == stats.PER_CASE_COLUMNS and len(pc) == 2 * len(CASES) * len(CLASSES)
    assert (out / "rank_stability.png").is_file()
    assert escape(stats.AHEAD) in html and "pairwise.csv" in html
    t3 = pd.read_csv(out / "table3.csv").set_index("group")
    assert t3.loc["R50-FPN 3x", "mean_verdict"] == stats.AHEAD
    assert t3.loc["R101-FPN 3x", "mean_verdict"].startswith("below R50-FPN 3x")
    assert "Paired test: mean segm AP" in (out / "table3.md").read_text()


def test_runs_without_per_case_results_say_so(tmp_path):
    synthetic.write_sweep(tmp_path, backbones=["R50-FPN", "R101-FPN"], artifacts=False)
    df = collect.collect(tmp_path)
    w = {x["what"]: x for x in tables.winners(df)}
    assert w["infection"]["verdict"] == stats.NO_DATA and not w["infection"]["significant"]


def test_leak_section_measures_the_slice_split_gap(tmp_path):
    """R50-FPN on patient_kfold and slice_random over two folds: the gap is paired per case."""
    synthetic.mark_sweep(tmp_path)
    patient = {c: 40.0 + i for i, c in enumerate(CASES)}
    sliced = {c: v + 15.0 + (i % 3) for i, (c, v) in enumerate(patient.items())}
    i = 0
    for scheme, values in (("patient_kfold", patient), ("slice_random", sliced)):
        for fold in (0, 1):
            r = synthetic.make_result("R50-FPN", fold=fold, cases=CASES)
            r["dataset"]["split"] = r["config"]["split"]["name"] = scheme
            r["config"]["split"]["scheme"] = scheme
            r.pop("identity", None)
            # each fold tests every case's slices once under slice_random; half the cases otherwise
            mine = CASES if scheme == "slice_random" else CASES[fold::2]
            synthetic.set_per_case(r, {c: {k: values[c] for k in CLASSES} for c in mine})
            synthetic.write_run(tmp_path / f"run_{i:03d}", r, artifacts=False)
            i += 1
    df = collect.collect(tmp_path)
    leak = stats.leak(df)
    mean = leak[leak["class"] == stats.MEAN].iloc[0]
    gaps = np.array([sliced[c] - patient[c] for c in CASES])
    assert mean["n_cases"] == len(CASES) and mean["gap"] == pytest.approx(gaps.mean())
    assert mean["p"] == pytest.approx(sps.wilcoxon(list(sliced.values()), list(patient.values())).pvalue)
    assert mean["ci_low"] > 0  # every case gains: the interval excludes 0
    html = (build.build_report(tmp_path)).read_text()
    assert "id='leak'" in html and 'id="leak-table"' in html
    assert (tmp_path / "report" / "leak.csv").read_text().count("\n") == 1 + len(CLASSES) + 1


def test_no_leak_section_without_both_splits(tmp_path):
    df = _write(tmp_path, {"R50-FPN": {0: _values(0, 1)}, "R101-FPN": {0: _values(0, 2)}})
    assert stats.leak(df).empty
    assert "id='leak'" not in build.build_report(tmp_path).read_text()
