"""Repeatable runs: a seed repeats a run exactly (CPU); batched inference predicts what one
image at a time does."""

from __future__ import annotations

import json

import pytest

from contracts.result import read_result
from benchmark.training.config import compose
from benchmark.training.run import run
from benchmark.training.worker import PREDICTIONS

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMOKE = ["solver=smoke", "solver.max_iter=3", "solver.checkpoint_period=100",
         "measure.warmup_iters=1", "measure.flops=false", "device=cpu",
         "score_thresh=0.0"]  # keep every detection: a 3-iteration model scores all low


def _predictions(run_dir):
    return json.loads((run_dir / PREDICTIONS).read_text())


def _key(p):
    return (p["image_id"], p["category_id"], p["segmentation"]["counts"], round(p["score"], 4))


@pytest.mark.slow
def test_same_seed_same_run_other_seed_other_run(tiny_dataset, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = compose([f"dataset_dir={tiny_dataset}", *SMOKE, f"seed={seed}"])
        assert run(cfg, tmp_path / name) == 0
        runs[name] = (read_result(tmp_path / name).data, _predictions(tmp_path / name))
    (ra, pa), (rb, pb), (rc, pc) = runs["a"], runs["b"], runs["c"]
    assert pa, "with score_thresh 0 every test slice has detections"
    # same seed: the same weights, hence the same detections and the same AP
    assert [_key(p) for p in pa] == [_key(p) for p in pb]
    assert [p["score"] for p in pa] == pytest.approx([p["score"] for p in pb], abs=1e-6)
    assert ra["metrics"] == rb["metrics"]
    # another seed: other init and data order, other detections
    assert [_key(p) for p in pa] != [_key(p) for p in pc]


def _model_and_cfg(dataset, tmp_path):
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    from benchmark.training.config import build_d2_cfg
    from benchmark.training.data import register_split
    from contracts.dataset import read_dataset

    data = read_dataset(dataset)
    train = register_split(data, "patient_kfold", 0, "train")
    test = register_split(data, "patient_kfold", 0, "test")
    cfg = compose([f"dataset_dir={dataset}", *SMOKE])
    d2cfg = build_d2_cfg(cfg, train_name=train.name, test_name=test.name,
                         output_dir=str(tmp_path), device="cpu", image_hw=train.image_hw)
    seed_all_rng(0)
    return build_model(d2cfg), d2cfg, test


def test_batched_inference_predicts_as_one_at_a_time(tiny_dataset, tmp_path):
    from benchmark.training.engine import Progress, predict_split

    model, d2cfg, test = _model_and_cfg(tiny_dataset, tmp_path)
    one = predict_split(model, d2cfg, test.name, tmp_path / "b1.json", Progress(), batch_size=1)
    four = predict_split(model, d2cfg, test.name, tmp_path / "b4.json", Progress(), batch_size=4)
    assert len(one["infer_times"]) == test.n_images
    assert len(four["infer_times"]) == -(-test.n_images // 4)  # ceil: the last batch is short
    a, b = one["predictions"], four["predictions"]
    assert a and len(a) == len(b)
    assert [(p["image_id"], p["category_id"]) for p in a] == [(p["image_id"], p["category_id"]) for p in b]
    assert [p["score"] for p in a] == pytest.approx([p["score"] for p in b], abs=1e-4)
    assert [x for p in a for x in p["bbox"]] == pytest.approx([x for p in b for x in p["bbox"]], abs=1e-2)
    assert json.loads((tmp_path / "b4.json").read_text()) == b


def test_a_batch_out_of_gpu_memory_runs_again_one_image_at_a_time(tiny_dataset, tmp_path):
    """A GPU OOM cannot be produced here: the model raises torch's own OOM error for batches."""
    import torch

    from benchmark.training.engine import Progress, predict_split

    class OutOfMemoryOnBatches(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inputs):
            if len(inputs) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
            return self.model(inputs)

    model, d2cfg, test = _model_and_cfg(tiny_dataset, tmp_path)
    one = predict_split(model, d2cfg, test.name, tmp_path / "b1.json", Progress(), batch_size=1)
    out = predict_split(OutOfMemoryOnBatches(model), d2cfg, test.name, tmp_path / "b4.json", Progress(),
                        batch_size=4)
    assert out["oom_batches"] == sum(1 for k in out["infer_batches"] if k > 1) > 0
    assert one["oom_batches"] == 0
    assert [(p["image_id"], p["category_id"], p["score"]) for p in out["predictions"]] == \
        [(p["image_id"], p["category_id"], p["score"]) for p in one["predictions"]]


def test_inference_batches_never_mix_image_sizes():
    import torch

    from benchmark.training.engine import same_size_batches

    sizes = [(8, 8), (8, 8), (8, 8), (6, 8), (6, 8), (8, 8)]
    loader = [[{"image": torch.zeros(3, *hw), "i": i}] for i, hw in enumerate(sizes)]
    batches = [[x["i"] for x in b] for b in same_size_batches(loader, 2)]
    assert batches == [[0, 1], [2], [3, 4], [5]]


def test_infer_batch_size_option():
    from benchmark.training.config import resolve_infer_batch
    from contracts.errors import ConfigError

    assert resolve_infer_batch("auto", "cuda") == 8
    assert resolve_infer_batch("auto", "cpu") == 1
    assert resolve_infer_batch(3, "cpu") == 3
    for bad in (0, -1, "eight", True, 2.5):
        with pytest.raises(ConfigError, match="infer_batch_size"):
            resolve_infer_batch(bad, "cpu")
