"""reports.stats: paired case-by-case tests of the report's claims, and how the report shows them."""

from __future__ import annotations

from html import escape

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from contracts.catalog import CLASS_NAMES
from reports import build, plots, stats, tables
from tests import synthetic

CASES = [f"patient_{i:02d}" for i in range(8)]


def _write(sweep_dir, groups: dict[str, dict[int, dict[str, float]]], cases=CASES) -> build.Analysis:
    """groups: backbone -> seed -> case -> AP (every class the same AP); returns the runs, grouped
    and tested."""
    synthetic.mark_sweep(sweep_dir)
    i = 0
    for backbone, seeds in groups.items():
        for seed, per_case in seeds.items():
            r = synthetic.make_result(backbone, seed=seed, cases=cases)
            synthetic.set_per_case(r, {c: {k: per_case[c] for k in CLASS_NAMES} for c in cases})
            synthetic.write_run(sweep_dir / f"run_{i:03d}", r, artifacts=False)
            i += 1
    return build.analyse(sweep_dir)


def _values(offset: float, seed: int, cases=CASES, sd: float = 3.0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {c: 50.0 + offset + float(rng.normal(0, sd)) for c in cases}


def test_better_on_every_case_by_a_wide_margin_is_ahead(tmp_path):
    sweep = _write(tmp_path, {"R50-FPN": {0: _values(20, 1), 1: _values(20, 2)},
                           "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)},
                           "X101-FPN": {0: _values(0, 5), 1: _values(0, 6)}})
    cmp = sweep.comparison
    for target in (*CLASS_NAMES, stats.MEAN):
        v = cmp.verdict(target)
        assert v["best"] == "R50-FPN 3x" and v["kind"] == stats.KIND_AHEAD and v["winner"] == "R50-FPN 3x"
        assert v["verdict"].startswith(stats.AHEAD) and v["n_cases"] == len(CASES)
    pw = cmp.pairwise[cmp.pairwise["metric"] == "segm_AP"]
    assert set(pw["group"]) == {"R50-FPN 3x"} and set(pw["vs"]) == {"R101-FPN 3x", "X101-FPN 3x"}
    assert pw["significant"].all() and (pw["ci_low"] > 10).all() and (pw["n_cases"] == len(CASES)).all()
    # 8 cases, every one higher: the exact one-sided p is 1/2^8, Holm over the 2 comparisons doubles it
    assert pw["p"].tolist() == pytest.approx([1 / 256] * len(pw)) and pw["p_holm"].tolist() == pytest.approx([2 / 256] * len(pw))
    assert (pw["selection"] == stats.SELECTION).all() and (pw["p_select"] < 0.05).all()
    assert pw["holm_family"].str.contains("against each of the 2 other group").all()
    assert pw["select_family"].str.contains("all 3 groups").all()
    w = {x["what"]: x for x in tables.winners(sweep.groups, cmp)}
    assert w["infection"]["winner"] == "R50-FPN 3x" and w["infection"]["verdict"].startswith(stats.AHEAD)
    assert w["infection"]["significant"]


def test_seeds_are_averaged_per_case_first(tmp_path):
    a0, a1 = _values(5, 1), _values(5, 2)
    sweep = _write(tmp_path, {"R50-FPN": {0: a0, 1: a1}, "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)}})
    pc = sweep.comparison.per_case
    got = pc[(pc["group"] == "R50-FPN 3x") & (pc["class"] == "infection")].set_index("case")["segm_AP"]
    assert len(got) == len(CASES)
    for c in CASES:
        assert got[c] == pytest.approx((a0[c] + a1[c]) / 2, abs=1e-5)


def test_per_case_numbers_are_the_results_own_rows(tmp_path):
    """Case ids with dots: the per-case numbers are result.json's rows (contracts.result), carried
    from collect by run dir, never read back out of the runs table's column names."""
    cases = [f"site.{i}.ct" for i in range(6)]
    sweep = _write(tmp_path, {"R50-FPN": {0: dict.fromkeys(cases, 60.0)},
                              "R101-FPN": {0: dict.fromkeys(cases, 40.0)}}, cases=cases)
    rows = sweep.runs.per_case
    assert list(rows.columns) == ["run_dir", "case", "metric", "class", "value"]
    assert set(rows["run_dir"]) == set(sweep.df["run_dir"]) and set(rows["case"]) == set(cases)
    pc = sweep.comparison.per_case.set_index(["group", "case", "class"])
    assert pc.loc[("R50-FPN 3x", "site.3.ct", "infection"), "segm_AP"] == 60.0
    assert pc.loc[("R101-FPN 3x", "site.0.ct", "left_lung"), "segm_AP"] == 40.0


def test_identical_per_case_values_are_tied(tmp_path):
    same = _values(0, 7)
    sweep = _write(tmp_path, {"R50-FPN": {0: same, 1: same}, "R101-FPN": {0: same, 1: same}})
    cmp = sweep.comparison
    v = cmp.verdict(stats.MEAN)
    assert v["kind"] == stats.KIND_NO_TEST and v["winner"] is None  # no non-zero pair: nothing to test
    assert v["verdict"].startswith("no test possible (n non-zero pairs = 0 vs R101-FPN 3x")
    r = cmp.pairwise[(cmp.pairwise["metric"] == "segm_AP") & (cmp.pairwise["class"] == stats.MEAN)].iloc[0]
    assert r["p"] == 1.0 and r["p_holm"] == 1.0 and not r["significant"]
    assert (r["mean_diff"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
    w = {x["what"]: x for x in tables.winners(sweep.groups, cmp)}
    assert not w["mean of 3 classes"]["significant"]


def test_a_tie_at_zero_has_no_winner(tmp_path):
    zero = {c: 0.0 for c in CASES}
    sweep = _write(tmp_path, {"R50-FPN": {0: zero, 1: zero}, "R101-FPN": {0: zero, 1: zero}})
    v = sweep.comparison.verdict("infection")
    assert v["verdict"] == stats.TIED_ZERO and v["winner"] is None
    # the report names nobody: no card, no terminal line, no Table 3 highlight for a 0.00 "best"
    html = build.build_report(tmp_path).read_text()
    card = html.split("Best per class")[1].split("<h2")[0]
    assert "R50-FPN" not in card and "R101-FPN" not in card and "segm AP 0.00 for every group" in card
    text = tables.winners_text(tables.winners(sweep.groups, sweep.comparison))
    assert "R50-FPN" not in text and "R101-FPN" not in text and text.count("tied at 0.00") == 4
    assert "best" not in html.split('id="table3"')[1].split("</table>")[0]


def test_fewer_than_5_cases_is_no_test(tmp_path):
    # 4 cases: no interval, and 4 non-zero pairs cannot give a one-sided p under 1/16 anyway
    few = CASES[:4]
    sweep = _write(tmp_path, {"R50-FPN": {0: _values(30, 1, few), 1: _values(30, 2, few)},
                           "R101-FPN": {0: _values(0, 3, few), 1: _values(0, 4, few)}}, cases=few)
    cmp = sweep.comparison
    v = cmp.verdict(stats.MEAN)
    assert v["kind"] == stats.KIND_NO_TEST and v["verdict"].startswith(stats.NO_TEST) and v["winner"] is None
    assert not cmp.pairwise["significant"].any() and cmp.pairwise["ci_low"].isna().all()
    p = plots.rank_stability(cmp.per_case, build._no_test(cmp))
    assert p.png is None and p.note == v["verdict"]


def test_one_run_per_group_over_enough_cases_is_tested(tmp_path):
    # one fold per backbone with >= 5 test cases: the cases pair up, so the test runs
    sweep = _write(tmp_path, {"R50-FPN": {0: _values(30, 1)}, "R101-FPN": {0: _values(0, 3)}})
    v = sweep.comparison.verdict(stats.MEAN)
    assert v["kind"] == stats.KIND_AHEAD and v["winner"] == "R50-FPN 3x"


def test_intervals_and_p_values_are_scipys(tmp_path):
    a = {0: _values(3, 11), 1: _values(3, 12)}
    b = {0: _values(0, 13), 1: _values(0, 14)}
    sweep = _write(tmp_path, {"R50-FPN": a, "R101-FPN": b})
    cmp = sweep.comparison
    xa = np.array([(a[0][c] + a[1][c]) / 2 for c in sorted(CASES)])
    xb = np.array([(b[0][c] + b[1][c]) / 2 for c in sorted(CASES)])
    if xa.mean() < xb.mean():
        xa, xb = xb, xa
    ci = sps.bootstrap((xa, xb), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                       n_resamples=9999, confidence_level=0.95, rng=0).confidence_interval
    p = sps.wilcoxon(xa, xb, alternative="greater").pvalue
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
    sweep = _write(tmp_path, {"R50-FPN": {0: _values(20, 1), 1: _values(20, 2)},
                           "R101-FPN": {0: _values(0, 3), 1: _values(0, 4)}})
    cmp = sweep.comparison
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
    assert list(pw.columns) == stats.PAIRWISE_COLUMNS and len(pw) == 2 * (len(CLASS_NAMES) + 1)
    pc = pd.read_csv(out / "per_case.csv")
    assert list(pc.columns) == stats.PER_CASE_COLUMNS and len(pc) == 2 * len(CASES) * len(CLASS_NAMES)
    assert (out / "rank_stability.png").is_file()
    assert escape(stats.AHEAD) in html and "pairwise.csv" in html and escape(stats.SELECTION) in html
    vd = pd.read_csv(out / "verdicts.csv")
    assert list(vd.columns) == stats.VERDICT_COLUMNS and (vd["kind"] == stats.KIND_AHEAD).any()
    t3 = pd.read_csv(out / "table3.csv").set_index("group")
    assert t3.loc["R50-FPN 3x", "mean_verdict"].startswith(stats.AHEAD)
    assert t3.loc["R101-FPN 3x", "mean_verdict"].startswith("below R50-FPN 3x")
    assert "Paired test: mean segm AP" in (out / "table3.md").read_text()


def test_runs_without_per_case_results_say_so(tmp_path):
    synthetic.write_sweep(tmp_path, backbones=["R50-FPN", "R101-FPN"], artifacts=False)
    sweep = build.analyse(tmp_path)
    w = {x["what"]: x for x in tables.winners(sweep.groups, sweep.comparison)}
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
            synthetic.set_per_case(r, {c: {k: values[c] for k in CLASS_NAMES} for c in mine})
            synthetic.write_run(tmp_path / f"run_{i:03d}", r, artifacts=False)
            i += 1
    sweep = build.analyse(tmp_path)
    leak = stats.leak(sweep.groups, sweep.comparison.per_case)
    mean = leak[leak["class"] == stats.MEAN].iloc[0]
    gaps = np.array([sliced[c] - patient[c] for c in CASES])
    assert mean["n_cases"] == len(CASES) and mean["gap"] == pytest.approx(gaps.mean())
    assert mean["p"] == pytest.approx(sps.wilcoxon(list(sliced.values()), list(patient.values()),
                                                   alternative="greater").pvalue)
    assert mean["ci_low"] > 0  # every case gains: the interval excludes 0
    html = (build.build_report(tmp_path)).read_text()
    assert "id='leak'" in html and 'id="leak-table"' in html
    assert (tmp_path / "report" / "leak.csv").read_text().count("\n") == 1 + len(CLASS_NAMES) + 1


def test_no_leak_section_without_both_splits(tmp_path):
    sweep = _write(tmp_path, {"R50-FPN": {0: _values(0, 1)}, "R101-FPN": {0: _values(0, 2)}})
    assert stats.leak(sweep.groups, sweep.comparison.per_case).empty
    assert "id='leak'" not in build.build_report(tmp_path).read_text()


# ---------------------------------------------------------------- known answers (by hand, not scipy)

def _pc(groups: dict[str, list[float]], target: str = "infection") -> pd.DataFrame:
    """A per-case table: one class, group -> values per case."""
    rows = [{"group": g, "case": f"case_{i:02d}", "class": target, "segm_AP": v}
            for g, vals in groups.items() for i, v in enumerate(vals)]
    return pd.DataFrame(rows)


def test_eight_positive_differences_give_exact_one_sided_p_1_over_256():
    b = [10.0, 20, 30, 40, 50, 60, 70, 80]
    a = [x + 1 + i for i, x in enumerate(b)]  # every difference positive, distinct
    cmp = stats.compare_per_case(_pc({"A": a, "B": b}), ["segm_AP"])
    r = cmp.pairwise.iloc[0]
    # one of the 2^8 equally likely sign patterns is all-positive: p = 1/256
    assert r["p"] == 1 / 256 and r["p_holm"] == 1 / 256 and r["n_nonzero"] == 8 and r["n_higher"] == 8
    # two groups: the leader is either one, so the selection-adjusted p counts both all-same-sign patterns
    assert r["p_select"] == pytest.approx(2 / 256)
    assert cmp.verdict("infection")["kind"] == stats.KIND_AHEAD


def test_the_loses_most_cases_trap_is_not_ahead():
    # 20 cases: "A" loses 18 by about 1 point and wins 2 by 30: mean difference +2, but B is higher on 18
    b = [50.0 + i for i in range(20)]
    a = [x - 1.1 for x in b[:18]] + [x + 30 for x in b[18:]]
    cmp = stats.compare_per_case(_pc({"A": a, "B": b}), ["segm_AP"])
    v = cmp.verdict("infection")
    r = cmp.pairwise.iloc[0]
    assert v["best"] == "A" and r["mean_diff"] == pytest.approx((2 * 30 - 18 * 1.1) / 20)
    assert v["kind"] == stats.KIND_NOT_SHOWN and v["winner"] is None and not r["significant"]
    assert v["verdict"].startswith("not shown different from B (p_holm = ")
    assert r["p"] > 0.5 and r["n_higher"] == 2 and r["n_lower"] == 18
    assert "ahead" not in cmp.row_verdict("B", "infection", "segm_AP")


def test_six_zero_differences_of_ten_is_no_test_possible():
    b = [0.0] * 10
    a = [0.0] * 6 + [5.0, 6.0, 7.0, 8.0]
    cmp = stats.compare_per_case(_pc({"A": a, "B": b}), ["segm_AP"])
    v = cmp.verdict("infection")
    r = cmp.pairwise.iloc[0]
    # 4 non-zero pairs: the smallest one-sided p is 1/2^4 = 0.0625 >= 0.05 whatever they are
    assert r["n_cases"] == 10 and r["n_nonzero"] == 4 and r["p_min_holm"] == 1 / 16
    assert v["kind"] == stats.KIND_NO_TEST and v["winner"] is None
    assert v["verdict"] == ("no test possible (n non-zero pairs = 4 vs B; the smallest attainable p after Holm "
                            "is 0.0625)")


def test_holm_over_eight_with_ten_cases_reproduces_2_over_1024_times_8():
    # best vs 8 others, 10 cases each: 9 differences positive, the smallest one negative; the exact
    # one-sided p is 2/1024 (all positive, or only rank 1 negative), Holm multiplies the smallest by 8
    base = np.arange(10, dtype=float) * 10
    groups = {"best": list(base + np.arange(1, 11))}
    for j in range(8):
        d = np.arange(1, 11, dtype=float) + 0.01 * j
        d[0] = -d[0]
        groups[f"g{j}"] = list(base + np.arange(1, 11) - d)
    cmp = stats.compare_per_case(_pc(groups), ["segm_AP"])
    pw = cmp.pairwise
    assert len(pw) == 8 and (pw["group"] == "best").all()
    assert pw["p"].tolist() == pytest.approx([2 / 1024] * 8)
    assert pw["p_holm"].tolist() == pytest.approx([2 / 1024 * 8] * 8)
    assert pw["p_min_holm"].tolist() == pytest.approx([8 / 1024] * 8)  # the bound: 1/2^10, times 8
    assert cmp.verdict("infection")["kind"] == stats.KIND_AHEAD


def test_too_few_non_zero_pairs_for_holm_over_eight_is_said_before_any_p():
    # 5 cases against each of 8 groups: every one-sided p is at least 1/2^5, so Holm's smallest attainable
    # adjusted p is 8/32 = 0.25 however large the differences are
    groups = {"best": [10.0 + i for i in range(5)]}
    for j in range(8):
        groups[f"g{j}"] = [float(i) - 0.1 * j for i in range(5)]
    v = stats.compare_per_case(_pc(groups), ["segm_AP"]).verdict("infection")
    assert v["kind"] == stats.KIND_NO_TEST and "smallest attainable p after Holm is 0.25" in v["verdict"]


def test_method_lines_name_each_family():
    text = " ".join(stats.method_lines())
    assert "holm_family" in text and "select_family" in text and "Nothing is corrected across" in text


def test_false_positives_on_cases_without_the_class_are_shown_beside_the_ap(tmp_path):
    """Infection absent from half the cases: its AP is None there; R50-FPN paints 3 false instances
    on each such case (2 of them confident), R101-FPN none. The report counts them per backbone."""
    synthetic.mark_sweep(tmp_path)
    without = set(CASES[::2])
    for i, (backbone, n_fp) in enumerate((("R50-FPN", 3), ("R101-FPN", 0))):
        r = synthetic.make_result(backbone, cases=CASES)
        synthetic.set_per_case(r, {c: {k: (None if k == "infection" and c in without else 50.0 + i) for k in CLASS_NAMES}
                                   for c in CASES})
        for c in CASES:
            absent = c in without
            r["metrics"]["per_case"][c]["fp_no_gt"] = {k: (max(0, n_fp - 1) if absent and k == "infection" else None)
                                                      for k in CLASS_NAMES}
            r["metrics"]["per_case"][c]["fp_no_gt_any"] = {k: (n_fp if absent and k == "infection" else None)
                                                          for k in CLASS_NAMES}
        synthetic.write_run(tmp_path / f"run_{i}", r, artifacts=False)
    html = build.build_report(tmp_path, progress=False).read_text()
    fp = pd.read_csv(tmp_path / "report" / "false_positives.csv").set_index(["group", "class"])
    a = fp.loc[("R50-FPN 3x", "infection")]
    assert a["n_cases_without"] == len(without) and a["n_cases_with"] == len(CASES) - len(without)
    assert a["fp_instances"] == 2 * len(without) and a["fp_instances_any"] == 3 * len(without)
    assert a["cases_with_fp"] == len(without) and a["segm_AP"] == pytest.approx(50.0)
    assert fp.loc[("R101-FPN 3x", "infection"), "fp_instances"] == 0
    assert fp.loc[("R50-FPN 3x", "left_lung"), "n_cases_without"] == 0  # every case has lungs
    assert "id='false-positives'" in html and 'id="false-positives-table"' in html
    pc = pd.read_csv(tmp_path / "report" / "per_case.csv")
    assert {"segm_AP", "fp_no_gt", "fp_no_gt_any"} <= set(pc.columns)
