"""The CUDA code paths, exercised on any machine: the out-of-memory retry of inference (an injected
OOM), checkpoint pruning in a multi-process run (main rank only), the clear errors for an
``ims_per_batch`` that ``num_gpus`` does not divide and for options that need detectron2's
compiled ops."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmark.training.config import build_d2_cfg, check_num_gpus, compiled_ops_needed, compose, has_compiled_ops
from contracts.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


class OomOnBatches(torch.nn.Module):
    """A stand-in detector: a batch of more than one image allocates its activations, then runs
    out of memory, as a C4 head does on a full GPU; one image at a time succeeds. It records what
    each single-image call could still see of the failed batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.failed_activations: weakref.ref | None = None
        self.seen: list[dict] = []

    def forward(self, inputs):
        if len(inputs) > 1:
            activations = torch.ones(len(inputs), 1000)  # held by this frame until it is freed
            self.failed_activations = weakref.ref(activations)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        gc.disable()  # only reference counting may free the batch's tensors: what CUDA relies on
        try:
            self.seen.append({"handling": sys.exc_info()[0] is not None,
                              "batch_alive": self.failed_activations is not None
                              and self.failed_activations() is not None})
        finally:
            gc.enable()
        return [{"instances": inputs[0]["image_id"]}]


def test_an_oom_batch_runs_again_one_image_at_a_time_after_its_memory_is_freed(monkeypatch):
    from benchmark.training.engine import forward_or_one_by_one

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    model = OomOnBatches()
    inputs = [{"image_id": i} for i in range(3)]
    outputs, oom = forward_or_one_by_one(model, inputs)
    assert oom is True and [o["instances"] for o in outputs] == [0, 1, 2]
    assert emptied == [True]  # the cache is handed back before the retry
    # every retry ran outside the exception handler, with the failed batch's tensors gone
    assert model.seen == [{"handling": False, "batch_alive": False}] * 3
    assert forward_or_one_by_one(model, [{"image_id": 7}]) == ([{"instances": 7}], False)


def test_one_image_that_runs_out_of_memory_raises(monkeypatch):
    from benchmark.training.engine import forward_or_one_by_one

    class Always(torch.nn.Module):
        def forward(self, inputs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        forward_or_one_by_one(Always(), [{"image_id": 0}])


def test_make_predict_retries_an_oom_batch_the_same_way(monkeypatch):
    from benchmark.evaluation.predictor import Predictor

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    model = OomOnBatches()
    p = Predictor(model=model, mapper=None, windows=[(-1000.0, 400.0)], score_thresh=0.5, batch_size=2)
    assert [o["instances"] for o in p._forward([{"image_id": 4}, {"image_id": 5}])] == [4, 5]
    assert model.seen == [{"handling": False, "batch_alive": False}] * 2


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_hook(save_dir: Path, it: int):
    from detectron2.checkpoint import DetectionCheckpointer

    from benchmark.training.engine import LastCheckpointer

    ckpt = DetectionCheckpointer(torch.nn.Linear(1, 1), str(save_dir))  # saves on the main rank only
    hook = LastCheckpointer(ckpt, 5, max_to_keep=1)
    hook.trainer = SimpleNamespace(iter=it, max_iter=100)
    hook.before_train()
    return hook


@pytest.mark.parametrize("rank", [1, 0])
def test_only_the_main_process_prunes_checkpoints(tmp_path, monkeypatch, rank):
    from detectron2.utils import comm

    # what the main process has on disk: an older checkpoint and the latest one
    for it in (4, 9):
        torch.save({"model": {}}, tmp_path / f"model_{it:07d}.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    hook = _checkpoint_hook(tmp_path, 14)
    hook.after_step()  # iteration 14: a checkpoint iteration (period 5)
    left = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    if rank:  # another rank neither writes nor deletes anything
        assert left == ["model_0000004.pth", "model_0000009.pth"]
        assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    else:  # the main process writes iteration 14 and keeps only it
        assert left == ["model_0000014.pth"]
        assert (tmp_path / "last_checkpoint").read_text() == "model_0000014.pth"


# --------------------------------------------------------------------------- config errors


def test_num_gpus_must_divide_ims_per_batch():
    check_num_gpus(1, 2)
    check_num_gpus(2, 2)
    check_num_gpus(4, 16)
    with pytest.raises(ConfigError) as e:
        check_num_gpus(4, 2)
    msg = str(e.value)
    assert "num_gpus=4 does not divide solver.ims_per_batch=2" in msg
    assert "num_gpus=1|2" in msg and "solver.ims_per_batch=4" in msg
    with pytest.raises(ConfigError, match="solver.ims_per_batch=8"):
        check_num_gpus(4, 6)
    for bad in (0, -1, True, "2"):
        with pytest.raises(ConfigError, match="expected an integer >= 1"):
            check_num_gpus(bad, 2)


def test_a_run_with_an_indivisible_batch_fails_clearly_before_training(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "benchmark.train", "solver=smoke", "num_gpus=4",
                        "solver.ims_per_batch=2", "device=cpu", f"dataset_dir={tiny_dataset}",
                        f"hydra.run.dir={run_dir}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    res = json.loads((run_dir / "result.json").read_text())
    assert p.returncode != 0 and res["status"] == "failed"
    assert res["error"]["type"] == "ConfigError" and res["error"]["where"] == "check device"
    assert "num_gpus=4 does not divide solver.ims_per_batch=2" in res["error"]["message"]
    assert not (run_dir / "d2" / "last_checkpoint").exists()  # nothing trained


def _d2cfg(*overrides: str):
    cfg = compose(["dataset_dir=/nonexistent", *overrides])
    return build_d2_cfg(cfg, train_name="tr", test_name="te", output_dir="/tmp/x", image_hw=(64, 64))


@pytest.mark.skipif(has_compiled_ops(), reason="this detectron2 has its compiled ops")
@pytest.mark.parametrize("opts, what", [
    ("[MODEL.RESNETS.DEFORM_ON_PER_STAGE,[false,true,true,true]]", "deformable convolution"),
    ("[MODEL.PROPOSAL_GENERATOR.NAME,RRPN]", "MODEL.PROPOSAL_GENERATOR.NAME=RRPN (rotated boxes)"),
    ("[MODEL.ROI_BOX_HEAD.POOLER_TYPE,ROIAlignRotated]", "ROIAlignRotated"),
])
def test_options_that_need_compiled_ops_are_refused(opts, what):
    with pytest.raises(ConfigError) as e:
        _d2cfg(f"d2_opts={opts}")
    assert what in str(e.value) and "compiled" in str(e.value)


def test_options_without_compiled_ops_pass():
    d = _d2cfg("d2_opts=[MODEL.RESNETS.DEFORM_ON_PER_STAGE,[false,false,false,false],"
               "MODEL.RPN.NMS_THRESH,0.6]")
    assert d.MODEL.RPN.NMS_THRESH == 0.6
    assert compiled_ops_needed(d) == []
    assert compiled_ops_needed(_d2cfg("backbone=x101_dc5")) == []  # none of the nine needs them


# --------------------------------------------------------------------------- memory


def test_training_and_inference_gpu_peaks_are_kept_apart():
    from benchmark.training.worker import gpu_memory_sections

    m = gpu_memory_sections({"allocated": 3000.0, "reserved": 3500.0},
                            {"allocated": 4200.0, "reserved": 6000.0})
    assert m == {"train_peak_gpu_mb": 3000.0, "train_reserved_gpu_mb": 3500.0,
                 "infer_peak_gpu_mb": 4200.0, "infer_reserved_gpu_mb": 6000.0, "peak_gpu_mb": 4200.0}
    assert gpu_memory_sections(None, None) == {  # a run that never used CUDA
        "train_peak_gpu_mb": None, "train_reserved_gpu_mb": None, "infer_peak_gpu_mb": None,
        "infer_reserved_gpu_mb": None, "peak_gpu_mb": None}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_peaks_reset_between_training_and_inference():
    from benchmark.training.engine import gpu_peaks, reset_gpu_peaks

    big = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB
    del big
    assert gpu_peaks()["allocated"] >= 256
    reset_gpu_peaks()
    small = torch.empty(2**20, dtype=torch.uint8, device="cuda")
    assert gpu_peaks()["allocated"] < 256 and gpu_peaks()["reserved"] >= 1
    del small
