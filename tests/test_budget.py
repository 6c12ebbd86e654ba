"""A training budget in compute: the same iterations for the same budget on any machine."""
from __future__ import annotations

import json

import pytest

from benchmark.training.budget import cache_file, iterations, train_flops_per_iter


def _d2(backbone: str, device: str = "cpu", **extra):
    from benchmark.training.config import build_d2_cfg
    from benchmark.training.config import compose

    overrides = [f"backbone={backbone}", "dataset_dir=/nonexistent", *[f"{k}={v}" for k, v in extra.items()]]
    cfg = compose(overrides)
    return build_d2_cfg(cfg, train_name="a", test_name="b", output_dir="/tmp/x", device=device,
                        image_hw=(64, 64))


def test_iterations_are_the_same_on_two_calls_and_for_two_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGBENCH_CACHE", str(tmp_path))
    first = train_flops_per_iter(_d2("r50_fpn"), (64, 64))  # counted
    assert json.loads(cache_file().read_text())  # and cached
    again = train_flops_per_iter(_d2("r50_fpn"), (64, 64))  # from the cache
    cuda = train_flops_per_iter(_d2("r50_fpn", device="cuda"), (64, 64))  # another device
    cache_file().unlink()
    fresh = train_flops_per_iter(_d2("r50_fpn", device="cuda"), (64, 64))  # counted again
    assert first == again == cuda == fresh
    n = iterations(1.0, first["train_flops_per_iter"])
    assert n == iterations(1.0, fresh["train_flops_per_iter"]) and n >= 1
    # 3 x forward x images per batch, and a budget that buys the FLOPs of k iterations buys k
    assert first["train_flops_per_iter"] == 3 * first["forward_flops_per_image"] * 2
    assert iterations(7 * first["train_flops_per_iter"] / 1e12, first["train_flops_per_iter"]) == 7


def test_a_costlier_head_buys_fewer_iterations(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGBENCH_CACHE", str(tmp_path))
    fpn = train_flops_per_iter(_d2("r50_fpn"), (64, 64))["train_flops_per_iter"]
    c4 = train_flops_per_iter(_d2("r50_c4"), (64, 64))["train_flops_per_iter"]
    assert c4 > fpn and iterations(10, c4) < iterations(10, fpn)
    # more RoIs per image through the C4 head (res5 per RoI) cost more
    more = train_flops_per_iter(_d2("r50_c4", **{"solver.roi_batch_size_per_image": 32}), (64, 64))
    assert more["train_flops_per_iter"] > c4


def test_a_budget_is_positive():
    with pytest.raises(ValueError, match="positive"):
        iterations(0, 1e9)


@pytest.mark.slow
def test_a_run_records_its_budget_and_trains_what_it_buys(tmp_path, tiny_dataset, monkeypatch):
    from contracts.result import read_result
    from benchmark.training.config import compose
    from benchmark.training.run import run

    monkeypatch.setenv("LUNGBENCH_CACHE", str(tmp_path / "cache"))
    cfg = compose([f"dataset_dir={tiny_dataset}", "solver.budget=0.08", "measure.flops=false",
                   "infer_batch_size=1"])
    assert run(cfg, tmp_path / "run") == 0
    res = read_result(tmp_path / "run").data
    s = res["solver"]
    assert s["budget_tflop"] == 0.08 and s["max_iter"] == iterations(0.08, s["train_flops_per_iter"])
    assert 1 < s["max_iter"] < 20  # the smoke solver's 20 iterations are not what ran
    logged = [json.loads(line) for line in (tmp_path / "run" / "d2" / "metrics.json").read_text().splitlines()]
    assert max(r["iteration"] for r in logged if "total_loss" in r) == s["max_iter"] - 1


def _sweep_df(tmp_path, iters: dict[str, int], flops: dict[str, float] | None):
    from reports.build import analyse
    from tests import synthetic

    sweep = tmp_path / "sweep"
    paths = synthetic.write_sweep(sweep, backbones=list(iters), folds=(0, 1, 2), artifacts=False)
    for p in paths:
        doc = json.loads(p.read_text())
        doc["solver"]["max_iter"] = iters[doc["backbone"]]
        if flops is not None:
            doc["solver"]["train_flops_per_iter"] = flops[doc["backbone"]]
        p.write_text(json.dumps(doc))
    return analyse(sweep)


@pytest.mark.parametrize("iters,flops,unequal", [
    ({"R50-FPN": 100, "R50-C4": 40}, {"R50-FPN": 2e10, "R50-C4": 5e10}, False),   # 2 TFLOPs each
    ({"R50-FPN": 100, "R50-C4": 100}, {"R50-FPN": 2e10, "R50-C4": 5e10}, True),   # same iterations
    ({"R50-FPN": 100, "R50-C4": 40}, None, True),                                 # iterations only
    ({"R50-FPN": 100, "R50-C4": 100}, None, False),
])
def test_verdicts_say_when_the_runs_were_trained_at_unequal_budgets(tmp_path, iters, flops, unequal):
    from reports import plots, tables

    analysis = _sweep_df(tmp_path, iters, flops)
    ws = tables.winners(analysis.groups, analysis.comparison)
    assert ws and all(("unequal budgets" in w["verdict"]) == unequal for w in ws), [w["verdict"] for w in ws]
    fig = plots.ap_vs_compute(analysis.df)
    assert (fig.png is not None) == (flops is not None), fig.note


def test_a_backbone_that_learnt_nothing_is_said_in_words(tmp_path):
    from reports import tables

    sweep = tmp_path / "sweep"
    from reports.build import analyse
    from tests import synthetic

    for p in synthetic.write_sweep(sweep, backbones=["R50-FPN", "X101-C4"], folds=(0, 1), artifacts=False):
        doc = json.loads(p.read_text())
        if doc["backbone"] == "X101-C4":
            for c in doc["metrics"]["segm"]["per_class"].values():
                c.update(AP=0.0, AP50=0.0, AP75=0.0)
        p.write_text(json.dumps(doc))
    analysis = analyse(sweep)
    t3 = tables.table3(analysis.groups, analysis.comparison).set_index("backbone")  # Table 3 rows carry the note
    assert "learnt nothing" in str(t3.loc["X101-C4", "note"])
    assert "learnt nothing" not in str(t3.loc["R50-FPN", "note"])
